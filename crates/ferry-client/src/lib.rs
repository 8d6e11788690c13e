//! ferry's client library: connect, log in, then a `Session` has the file operations.

pub mod udp;
