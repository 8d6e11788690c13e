//! The bodies of successful answers (the fields beside `id` and `ok` in a
//! response header), one type per answer, shared by the server that writes
//! them and the client that reads them. docs/PROTOCOL.md describes each.

use serde::{Deserialize, Serialize};

use crate::hash::HashAlgo;
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
    /// The file hashes the server offers.
    pub hashes: Vec<String>,
    pub max_header: usize,
    /// The session's hash, picked from the client's `hashes`; absent from
    /// a server before negotiation, which means SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A file hash as answers carry it: `algo` and `hash`, and for SHA-256 also
/// `sha256`, the field clients before negotiation read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algo: Option<HashAlgo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Digest {
    pub fn new(algo: HashAlgo, hex: String) -> Digest {
        let sha256 = (algo == HashAlgo::Sha256).then(|| hex.clone());
        Digest { algo: Some(algo), hash: Some(hex), sha256 }
    }

    /// The hex digest in `want`, if the answer carries one in it. An answer
    /// without `algo` comes from a server before negotiation: SHA-256.
    pub fn get(&self, want: HashAlgo) -> Option<&str> {
        match self.algo.unwrap_or(HashAlgo::Sha256) {
            algo if algo != want => None,
            HashAlgo::Sha256 => self.hash.as_deref().or(self.sha256.as_deref()),
            HashAlgo::Blake3 => self.hash.as_deref(),
        }
    }
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
    #[serde(flatten)]
    pub digest: Digest,
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
    /// The prefix's SHA-256, when that is the hash asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_sha256: Option<String>,
    /// The hash of `prefix_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algo: Option<HashAlgo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_hash: Option<String>,
}

impl UploadStatus {
    /// The prefix's hex digest in `want`, if the answer carries one in it.
    pub fn prefix(&self, want: HashAlgo) -> Option<&str> {
        match self.algo.unwrap_or(HashAlgo::Sha256) {
            algo if algo != want => None,
            HashAlgo::Sha256 => self.prefix_hash.as_deref().or(self.prefix_sha256.as_deref()),
            HashAlgo::Blake3 => self.prefix_hash.as_deref(),
        }
    }
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
    #[serde(flatten)]
    pub digest: Digest,
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
    #[serde(flatten)]
    pub digest: Digest,
}
