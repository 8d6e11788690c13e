use ferry_proto::{ErrorCode, FrameError, WireError};

/// Everything that can go wrong on the client side, each with a message fit
/// for one line on stderr.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .0.message)]
    Server(WireError),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "the server's certificate for {host} has CHANGED: pinned {pinned}, presented {presented}. \
         Someone may be intercepting the connection, or the server's key was regenerated. \
         If you trust the change, remove the line for {host} from {known_hosts}."
    )]
    HostKeyChanged { host: String, pinned: String, presented: String, known_hosts: String },
    #[error(
        "the server {host} is not known (fingerprint {presented}); run again with --accept-new to pin it, \
         or with --fingerprint {presented} after checking it against the server's output"
    )]
    HostKeyUnknown { host: String, presented: String },
    #[error("the server's fingerprint {presented} is not the expected {expected}")]
    HostKeyMismatch { expected: String, presented: String },
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Usage(String),
    /// The server listed a name that cannot be a local file name (issue 12,
    /// item 5); `name` is already escaped for printing.
    #[error("refusing the server's name \"{name}\": {why}")]
    UnsafeName { name: String, why: &'static str },
    #[error("checksum mismatch for {what}: expected {expected}, got {actual}; nothing was committed")]
    Checksum { what: String, expected: String, actual: String },
}

impl ClientError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        ClientError::Protocol(msg.into())
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Server(e)
    }
}
