//! ferry's server: the listener and sessions, and the cores they drive.
//!
//! The cores (`auth`, `vfs`, `quota`, `transfer`) take no wire types, so that
//! other front ends (SFTP, FTP) can reuse them.

pub mod auth;
pub mod udp;
pub mod vfs;
