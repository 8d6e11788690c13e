//! ferry's wire protocol, sans I/O policy: frames, headers, request and
//! response types, error codes, the file hashes (SHA-256, BLAKE3), the
//! SCRAM-SHA-256 math and UDP datagram formats.
//!
//! Nothing in here opens a socket, touches a file, reads a clock or decides a
//! limit on its own: the server and the client bring those. [`conn`] is generic
//! over any async byte stream.

pub mod conn;
pub mod fingerprint;
pub mod frame;
pub mod hash;
pub mod msg;
pub mod resp;
pub mod scram;
pub mod udp;

pub use conn::Connection;
pub use fingerprint::fingerprint;
pub use frame::{FrameCodec, FrameError, FrameItem, Header};
pub use hash::{HashAlgo, Hasher};
pub use msg::{Entry, ErrorCode, Request, WireError};
