//! The bodies of successful answers (the fields beside `id` and `ok` in a
//! response header), one type per answer, shared by the server that writes
//! them and the client that reads them. docs/PROTOCOL.md describes each.

use serde::{Deserialize, Serialize};

use crate::msg::Entry;

/// An answer with no fields (`mkdir`, `rmdir`, `mv`, `bye`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub server: String,
    pub mechanisms: Vec<String>,
    pub hashes: Vec<String>,
    pub max_header: usize,
}

/// `auth_start`, and `auth_finish` (which adds the user and the cwd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `pwd` and `cd`: the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathAnswer {
    pub path: String,
}

/// One page of `ls`; `more` says whether further pages follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsPage {
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub more: bool,
}

/// `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatAnswer {
    pub entry: Entry,
}

/// `rm`: what was freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub bytes: u64,
    pub files: u64,
}

/// `df`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DfAnswer {
    pub used: u64,
    #[serde(default)]
    pub reserved: u64,
    pub quota: Option<u64>,
    pub free: Option<u64>,
    /// Files and directories in the home, partial uploads included.
    #[serde(default)]
    pub files: u64,
    /// The most files and directories allowed; `None`: unlimited.
    #[serde(default)]
    pub max_files: Option<u64>,
}

/// `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashAnswer {
    pub sha256: String,
    pub length: u64,
    pub size: u64,
}

/// `upload_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(default)]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_sha256: Option<String>,
}

/// A `put` with `wait` is ready for its `put_data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
    pub upload_id: String,
    pub offset: u64,
}

/// A committed `put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAnswer {
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// The header of a `get` answer (the body follows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAnswer {
    pub size: u64,
    pub offset: u64,
    #[serde(default)]
    pub mtime: i64,
}

/// The trailer after a `get` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTrailer {
    pub done: bool,
    pub sha256: String,
}
