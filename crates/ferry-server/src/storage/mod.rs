//! What a backend must do to hold homes. `Home` (one per user) is the only
//! caller: it keeps the quota, the upload claims and the hashes; a backend
//! only stores. Every path is a [`VirtualPath`], already unable to name
//! anything outside the home; a backend must still refuse what its medium
//! could be tricked into (the disk backend: symlinks out, FIFOs).
//!
//! How partial uploads and per-file metadata are kept is the backend's
//! business (a folder and xattrs on disk, maps in memory, multipart uploads
//! and object metadata on S3): the trait speaks of ids, bytes and hashes,
//! never of renaming a partial file.
//!
//! Accounting contract: every operation that changes what the home holds
//! returns exactly what it added or freed, measured in the same step as the
//! change (so two sessions never both count one removed file). Partial data
//! counts; a backend's own bookkeeping (sidecars, metadata) does not.

mod fs;
mod mem;
mod metered;
pub mod s3;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_proto::hash::{HashAlgo, Hasher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::vfs::{Entry, EntryKind, VfsError, VirtualPath};
pub use fs::FsStorage;
pub use mem::MemStorage;
pub use metered::Metered;
pub use s3::{S3Bucket, S3Credentials, S3Storage};

/// Bytes, files (and links) and directories held or freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
}

impl Amount {
    pub fn file(bytes: u64) -> Amount {
        Amount { bytes, files: 1, dirs: 0 }
    }

    pub fn dirs(dirs: u64) -> Amount {
        Amount { bytes: 0, files: 0, dirs }
    }

    /// Entries, as the per-user limit on files counts them.
    pub fn entries(&self) -> u64 {
        self.files + self.dirs
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, o: Amount) -> Amount {
        Amount { bytes: self.bytes + o.bytes, files: self.files + o.files, dirs: self.dirs + o.dirs }
    }
}

/// What a partial upload is bound to, kept by the backend with the partial.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartialMeta {
    /// The target, as a virtual path.
    pub path: String,
    /// The final size, when the client said it.
    pub size: Option<u64>,
    /// The SHA-256 the client promised up front, if it did.
    pub sha256: Option<String>,
    /// The BLAKE3 the client promised up front, if it did. A resume may use
    /// another algorithm than the start, so both may be bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl PartialMeta {
    /// The hash promised in `algo`, if any.
    pub fn promised(&self, algo: HashAlgo) -> Option<&String> {
        match algo {
            HashAlgo::Sha256 => self.sha256.as_ref(),
            HashAlgo::Blake3 => self.blake3.as_ref(),
        }
    }

    /// Binds the partial to `hex`, promised in `algo`.
    pub fn promise(&mut self, algo: HashAlgo, hex: String) {
        match algo {
            HashAlgo::Sha256 => self.sha256 = Some(hex),
            HashAlgo::Blake3 => self.blake3 = Some(hex),
        }
    }
}

/// A partial upload as the backend holds it.
#[derive(Debug, Clone)]
pub struct PartialInfo {
    pub id: String,
    pub meta: PartialMeta,
    /// Bytes of data held (the high-water mark of writes).
    pub len: u64,
    pub modified: SystemTime,
}

/// A whole small file read in one step.
#[derive(Debug, Clone)]
pub struct SmallFile {
    pub entry: Entry,
    pub data: Vec<u8>,
    /// The hex hash of `data`, in the algorithm asked for.
    pub hash: String,
}

/// A small file to write whole and commit at once, already verified.
#[derive(Debug)]
pub struct SmallWrite {
    pub target: VirtualPath,
    pub data: Vec<u8>,
    /// The verified hash to keep with the file, and its algorithm.
    pub algo: HashAlgo,
    pub hash: String,
    pub overwrite: bool,
}

/// A home's storage. Object-safe, so `Home` holds `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// What the home holds, partial data included: measured once, at the
    /// user's first login after a start.
    async fn usage(&self) -> Result<Amount, VfsError>;

    async fn stat(&self, path: &VirtualPath) -> Result<Entry, VfsError>;

    /// Succeeds when `path` is a directory one can enter.
    async fn enter(&self, path: &VirtualPath) -> Result<(), VfsError>;

    /// A directory's entries, sorted by name.
    async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, VfsError>;

    /// Creates a directory (with `parents`, the missing ones above it too;
    /// an existing directory is then no error). Returns the entries created.
    async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<Amount, VfsError>;

    /// Removes a file or a link (never a directory, never a link's target).
    async fn remove_file(&self, path: &VirtualPath) -> Result<Amount, VfsError>;

    /// Removes an empty directory.
    async fn remove_dir(&self, path: &VirtualPath) -> Result<Amount, VfsError>;

    /// Removes a file or a whole tree, never following links.
    async fn remove_tree(&self, path: &VirtualPath) -> Result<Amount, VfsError>;

    /// Renames within the home. Without `overwrite` an existing target is
    /// refused atomically; with it, only a file replaces a file (and a
    /// directory an empty directory). Returns what a replacement freed.
    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Amount, VfsError>;

    /// Opens a regular file for reading.
    async fn open_read(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, VfsError>;

    /// Reads whole files of at most `max_each` bytes, within `budget` bytes
    /// in all, in one step, each hashed in `algo`; `None` for a regular file
    /// too large for either (the caller streams it). One result per path,
    /// in order.
    async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, VfsError>>;

    /// Writes whole files, each atomically (never visible unless complete),
    /// in one step; each refuses a directory, and an existing target unless
    /// `overwrite`. One result per file, in order: what a replacement freed.
    async fn write_small(&self, files: Vec<SmallWrite>, fsync: bool) -> Vec<Result<Amount, VfsError>>;

    /// Starts a partial upload under a fresh `id` (an upload id: 32 hex).
    async fn partial_create(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError>;

    /// Reopens a partial upload, replacing its meta with `meta`.
    async fn partial_open(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError>;

    /// The partial `id`, if it exists.
    async fn partial_info(&self, id: &str) -> Result<Option<PartialInfo>, VfsError>;

    /// Every partial upload of the home.
    async fn partial_list(&self) -> Result<Vec<PartialInfo>, VfsError>;

    /// A hasher of `algo` fed with the partial's first `len` bytes (fewer
    /// if it holds fewer: the count is returned).
    async fn partial_hash(&self, id: &str, len: u64, algo: HashAlgo) -> Result<(Hasher, u64), VfsError>;

    /// Removes a partial upload; returns what it freed (its data bytes, and
    /// one file if it existed).
    async fn partial_remove(&self, id: &str) -> Result<Amount, VfsError>;

    /// Where a partial upload may be written (the contract suite checks
    /// what each backend declares).
    fn partial_writes(&self) -> PartialWrites {
        PartialWrites::Anywhere
    }

    /// Whether `partial_hash` can give a partial's prefix in `algo` (an
    /// object store keeps only the hasher states it can serialise; the
    /// server then offers only those algorithms).
    fn resumes_in(&self, algo: HashAlgo) -> bool {
        let _ = algo;
        true
    }
}

/// How freely a backend lets a partial upload be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialWrites {
    /// At any offset, any number of times (a file on disk, memory).
    Anywhere,
    /// In a window: bytes are sent in parts of `part_size` as soon as they
    /// are contiguous, and a sent part can be neither rewritten nor read
    /// back (S3 multipart uploads). A write below the sent parts, or more
    /// than `max_buffer` bytes past them, is refused.
    Window { part_size: u64, max_buffer: u64 },
}

/// An open partial upload.
#[async_trait]
pub trait PartialWrite: Send + Sync {
    /// Refuses a write of `offset..end` the backend could not take, before
    /// anything is counted (see [`PartialWrites`]).
    fn check_range(&self, _offset: u64, _end: u64) -> Result<(), VfsError> {
        Ok(())
    }

    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<(), VfsError>;

    /// Writes `data` at `offset` on the calling thread, for a caller that
    /// runs on a blocking thread of its own (`Upload::feed`): one thread hop
    /// less per block than [`write_at`](Self::write_at). `None` for a
    /// backend that writes only asynchronously; the caller then uses
    /// `write_at`.
    fn write_at_blocking(&mut self, _offset: u64, _data: &[u8]) -> Option<Result<(), VfsError>> {
        None
    }

    /// Makes the partial the file at `target`, atomically: the target
    /// appears whole or not at all. `hash`, when given, is the verified
    /// hash to keep with the file. Returns what a replacement freed.
    async fn commit(
        self: Box<Self>,
        target: &VirtualPath,
        overwrite: bool,
        fsync: bool,
        hash: Option<(HashAlgo, &str)>,
    ) -> Result<Amount, VfsError>;
}

/// A file open for reading.
#[async_trait]
pub trait FileRead: Send + Sync {
    fn entry(&self) -> &Entry;

    /// The hash in `algo` kept with the file, if it still describes it
    /// (one is kept per algorithm).
    fn recorded_hash(&self, algo: HashAlgo) -> Option<String>;

    /// The local file, where there is one (so the framed front end can
    /// `sendfile` it on plaintext connections).
    fn local_file(&self) -> Option<&std::fs::File>;

    /// Sends bytes `offset..size` into `tx` in blocks. With `hash`, hashes
    /// the whole file (the prefix too) in that algorithm and returns the
    /// hex digest (and records it when the file did not change during the
    /// read). Fails with `UnexpectedEof` if the file shrank, `BrokenPipe`
    /// if `tx` closed.
    async fn stream(
        self: Box<Self>,
        offset: u64,
        hash: Option<HashAlgo>,
        tx: mpsc::Sender<Bytes>,
    ) -> std::io::Result<Option<String>>;

    /// Up to `len` bytes at `offset`: fewer at the end of the file, none
    /// past it. For front ends that read at random offsets (SFTP).
    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;

    /// The hex hash in `algo` of the first `len` bytes, and how many there were.
    async fn hash_prefix(self: Box<Self>, len: u64, algo: HashAlgo) -> std::io::Result<(String, u64)>;
}

/// Blocks of file data, read and sent in this size.
pub const READ_BLOCK: usize = 256 * 1024;

/// Reads `len` bytes from the start of `r` into the hasher; returns how many there were.
pub(crate) fn hash_reader(r: &mut impl std::io::Read, len: u64, hasher: &mut Hasher) -> std::io::Result<u64> {
    let mut buf = vec![0u8; READ_BLOCK.min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(len - left)
}
