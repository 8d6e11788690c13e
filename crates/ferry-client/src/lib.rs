//! ferry's client library, shared by the CLI, the tests and the benchmarks.
//!
//! [`Client::connect`] opens the connection (TLS with a pinned fingerprint,
//! unless plaintext was asked for) and does the version handshake;
//! [`Client::login`] runs SCRAM-SHA-256 and returns a [`Session`], whose
//! transfers are verified with the file hash negotiated at hello
//! ([`Session::hash_algo`]: BLAKE3 when the server has it). Only a
//! session has file operations. Progress is a callback ([`Progress`]) so that
//! drawing stays in the CLI.

mod connect;
pub mod copy_tuning;
mod error;
mod exec;
pub mod known_hosts;
pub mod names;
pub mod remote;
mod session;
mod transfer;
pub mod udp;

pub use connect::{Client, ConnectOptions};
pub use error::ClientError;
pub use exec::{ExecOutcome, ExecStreams};
pub use known_hosts::{HostKeyPolicy, KnownHosts};
pub use remote::Remote;
pub use session::{DfInfo, Session};
pub use transfer::{
    GetOptions, NoProgress, Progress, PutOptions, SMALL_FILE, TransferSummary, hash_local, is_resumable, part_path,
};

pub use ferry_proto::{Entry, ErrorCode, HashAlgo, WireError};
