//! Requests, responses and error codes: the typed layer between a frame's
//! JSON header and what a session does with it. Client and server share these.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::frame::Header;
use crate::hash::HashAlgo;

/// The protocol version spoken by this crate (see docs/PROTOCOL.md, "Handshake").
pub const PROTOCOL_VERSION: u32 = 1;
/// The only SASL mechanism ferry offers.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A request, as named by the header's `op` field. Every request header also
/// carries a client-chosen `id` that the responses echo, so a client may send
/// many requests before reading any answer (pipelining).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
        #[serde(default)]
        client: String,
        /// The file hashes the client has, in its order of preference;
        /// absent: SHA-256 only (docs/PROTOCOL.md, "Handshake"). Names, not
        /// [`HashAlgo`], so that a newer client's unknown names are skipped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hashes: Option<Vec<String>>,
    },
    AuthStart {
        mechanism: String,
        data: String,
    },
    AuthFinish {
        data: String,
    },
    Pwd,
    Cd {
        path: String,
    },
    Ls {
        #[serde(default)]
        path: Option<String>,
    },
    Stat {
        path: String,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        parents: bool,
    },
    Rm {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    Rmdir {
        path: String,
    },
    Mv {
        from: String,
        to: String,
        #[serde(default)]
        overwrite: bool,
    },
    /// Upload: `size` is the whole file; the body carries bytes `offset..size`.
    Put {
        path: String,
        size: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        upload_id: Option<String>,
        /// The whole file's SHA-256 promised up front (an upload verified
        /// with SHA-256 only).
        #[serde(default)]
        sha256: Option<String>,
        #[serde(default)]
        overwrite: bool,
        /// Ask for a `ready` answer before sending the body, so a refusal
        /// (quota, exists) costs no bytes on the wire.
        #[serde(default)]
        wait: bool,
        /// The hash this upload is verified with; absent: the session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
        /// The whole file's hash in `algo`, promised up front.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
    },
    /// After a `ready` answer to a `put` with `wait`: carries the body.
    PutData,
    /// Follows a `put` body: the whole file's hash, as `hash` (in `algo`,
    /// which must be the put's) or, for an upload verified with SHA-256,
    /// as `sha256`.
    PutEnd {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
    },
    /// Where a partial upload stands, to resume it.
    UploadStatus {
        path: String,
        size: u64,
        #[serde(default)]
        upload_id: Option<String>,
        /// The hash of the prefix in the answer; absent: the session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
    },
    Get {
        path: String,
        #[serde(default)]
        offset: u64,
        /// The hash of the trailer; absent: the session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
    },
    Hash {
        path: String,
        #[serde(default)]
        length: Option<u64>,
        /// Absent: the session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
    },
    Df,
    Exec {
        argv: Vec<String>,
    },
    /// Bytes for the standard input of the running `exec` named by `target`.
    Stdin {
        target: u64,
    },
    StdinEof {
        target: u64,
    },
    Cancel {
        target: u64,
    },
    Bye,
}

/// Every `op` this version knows, to tell "unknown operation" from "bad fields".
pub const KNOWN_OPS: &[&str] = &[
    "hello",
    "auth_start",
    "auth_finish",
    "pwd",
    "cd",
    "ls",
    "stat",
    "mkdir",
    "rm",
    "rmdir",
    "mv",
    "put",
    "put_data",
    "put_end",
    "upload_status",
    "get",
    "hash",
    "df",
    "exec",
    "stdin",
    "stdin_eof",
    "cancel",
    "bye",
];

impl Request {
    /// Reads the request id and the typed request out of a header. The id is
    /// returned even when the request is bad, so the error can be answered.
    pub fn from_header(header: &Header) -> (u64, Result<Request, WireError>) {
        let id = header.get_u64("id").unwrap_or(0);
        if !header.fields.get("id").is_some_and(Value::is_u64) {
            return (id, Err(WireError::new(ErrorCode::BadRequest, "missing or invalid field `id`")));
        }
        if id == 0 {
            // Id 0 is the server speaking about the whole session (PROTOCOL.md).
            let e = WireError::new(ErrorCode::BadRequest, "id 0 is reserved for the session: use ids from 1 up");
            return (0, Err(e));
        }
        let op = match header.get_str("op") {
            Some(op) => op,
            None => return (id, Err(WireError::new(ErrorCode::BadRequest, "missing or invalid field `op`"))),
        };
        if !KNOWN_OPS.contains(&op) {
            let shown: String = op.chars().take(64).collect();
            return (id, Err(WireError::new(ErrorCode::UnknownOp, format!("unknown operation `{shown}`"))));
        }
        let mut fields = header.fields.clone();
        fields.remove("id");
        match serde_json::from_value::<Request>(Value::Object(fields)) {
            Ok(req) => (id, Ok(req)),
            Err(e) => (id, Err(WireError::new(ErrorCode::BadRequest, format!("{op}: {e}")))),
        }
    }

    /// The header for this request with the given id and body length.
    pub fn to_header(&self, id: u64, body_len: u64) -> Header {
        let mut fields = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // A tagged enum of plain fields always serializes to an object.
            _ => Map::new(),
        };
        fields.insert("id".into(), id.into());
        Header::new(fields, body_len)
    }
}

/// Stable, machine-readable error codes. Clients match on these; the message
/// next to them is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded; the connection is closed after this.
    BadFrame,
    BadRequest,
    UnknownOp,
    UnsupportedVersion,
    AuthRequired,
    AuthFailed,
    Throttled,
    NotFound,
    NotADirectory,
    IsADirectory,
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidName,
    PermissionDenied,
    OutsideHome,
    InvalidMove,
    QuotaExceeded,
    ChecksumMismatch,
    UploadNotFound,
    FileChanged,
    NotPermitted,
    Busy,
    TooManyConnections,
    Timeout,
    ShuttingDown,
    Internal,
    /// A code this client does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Throttled
                | ErrorCode::Busy
                | ErrorCode::TooManyConnections
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Throttled => "throttled",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::DirectoryNotEmpty => "directory_not_empty",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::OutsideHome => "outside_home",
            ErrorCode::InvalidMove => "invalid_move",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::UploadNotFound => "upload_not_found",
            ErrorCode::FileChanged => "file_changed",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::Busy => "busy",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object of a response: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}

/// A directory entry as listed and stat'ed on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    #[serde(default)]
    pub mode: u32,
}

/// Builds a success response header: `{"id": id, "ok": true, ...fields}`.
pub fn ok_header<T: Serialize>(id: u64, fields: &T, body_len: u64) -> Header {
    let mut map = match serde_json::to_value(fields) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    map.insert("id".into(), id.into());
    map.insert("ok".into(), true.into());
    Header::new(map, 0).with_body_len(body_len)
}

/// Builds an error response header: `{"id": id, "ok": false, "error": {...}}`.
pub fn error_header(id: u64, err: &WireError) -> Header {
    let mut map = Map::new();
    map.insert("id".into(), id.into());
    map.insert("ok".into(), false.into());
    map.insert("error".into(), serde_json::json!({"code": err.code.as_str(), "message": err.message}));
    Header::new(map, 0)
}

/// A response header read back: its id, and the error if `ok` is false.
pub fn parse_response(header: &Header) -> (u64, Result<(), WireError>) {
    let id = header.get_u64("id").unwrap_or(0);
    if header.fields.get("ok").and_then(Value::as_bool) == Some(true) {
        return (id, Ok(()));
    }
    let err = header
        .fields
        .get("error")
        .cloned()
        .and_then(|v| serde_json::from_value::<WireError>(v).ok())
        .unwrap_or_else(|| WireError::new(ErrorCode::BadFrame, "response without ok or error"));
    (id, Err(err))
}

impl Header {
    pub fn with_body_len(mut self, body_len: u64) -> Self {
        self.body_len = body_len;
        self
    }

    /// Deserializes the header's fields into a typed response.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, WireError> {
        serde_json::from_value(Value::Object(self.fields.clone()))
            .map_err(|e| WireError::new(ErrorCode::BadFrame, format!("unexpected response: {e}")))
    }
}

/// Fuzzing entry point: header bytes through the header parser and the
/// typed request layer, which must answer every input with a value or an error.
pub fn fuzz_parse_request(data: &[u8]) {
    if let Ok(header) = crate::frame::parse_header(data) {
        let (id, req) = Request::from_header(&header);
        if let Ok(req) = req {
            let _ = req.to_header(id, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hdr(v: Value) -> Header {
        Header::from_serialize(&v, 0).unwrap()
    }

    #[test]
    fn request_round_trip() {
        let req = Request::Mv { from: "a".into(), to: "b c".into(), overwrite: true };
        let (id, parsed) = Request::from_header(&req.to_header(7, 0));
        assert_eq!(id, 7);
        assert_eq!(parsed.unwrap(), req);
    }

    #[test]
    fn unknown_op_and_missing_field_are_distinct() {
        let (id, r) = Request::from_header(&hdr(json!({"id": 3, "op": "format_disk"})));
        assert_eq!(id, 3);
        assert_eq!(r.unwrap_err().code, ErrorCode::UnknownOp);
        let (_, r) = Request::from_header(&hdr(json!({"id": 4, "op": "cd"})));
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("path"), "{}", e.message);
        let (_, r) = Request::from_header(&hdr(json!({"op": "pwd"})));
        assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn unknown_error_codes_survive() {
        let h = hdr(json!({"id": 1, "ok": false, "error": {"code": "from_the_future", "message": "m"}}));
        let (_, r) = parse_response(&h);
        assert_eq!(r.unwrap_err().code, ErrorCode::Unknown);
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in [ErrorCode::QuotaExceeded, ErrorCode::DirectoryNotEmpty, ErrorCode::AuthFailed] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
