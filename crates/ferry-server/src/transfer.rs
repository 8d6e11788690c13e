//! The transfer core: partial uploads that are never visible under their
//! final name, bound to an upload id, verified by SHA-256, fsynced and renamed
//! into place; and hashed reads for downloads. No wire types here.
//!
//! Partials live in the hidden `/.ferry-partial` folder of the user's own
//! home (same filesystem, so the final rename is atomic), as `<id>.part` with
//! a `<id>.json` sidecar naming the target path, size and expected hash.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TransferConfig;
use crate::vfs::{Jail, VfsError, VirtualPath};

pub use crate::vfs::PARTIAL_DIR;

/// Blocking reads of file data happen in blocks of this size. With 1 MiB
/// blocks a download's server peaked at 69 MiB resident (target: 64).
pub const READ_BLOCK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error(transparent)]
    Vfs(#[from] VfsError),
    #[error("no partial upload {0} for this path and size")]
    UploadNotFound(String),
    #[error("partial upload holds {have} bytes, not {asked}: ask upload_status for the offset")]
    OffsetMismatch { have: u64, asked: u64 },
    #[error("checksum mismatch: expected {expected}, received data hashes to {actual}; nothing was committed")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("upload {0} is in progress in another session")]
    Busy(String),
    #[error("invalid sha256 {0:?}: expected 64 hex digits")]
    BadHash(String),
}

impl From<std::io::Error> for TransferError {
    fn from(e: std::io::Error) -> Self {
        TransferError::Vfs(e.into())
    }
}

/// What a partial upload is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartialMeta {
    pub path: String,
    pub size: u64,
    pub sha256: Option<String>,
}

/// The extended attribute holding a file's SHA-256 as verified at commit,
/// with the size and modification time it belongs to.
const HASH_XATTR: &str = "user.ferry.sha256";

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Records the hash verified at commit, so a download need not hash the file
/// again. Best effort: a filesystem without user xattrs simply has no cache.
pub fn record_hash(file: &std::fs::File, sha256: &str) {
    let Ok(m) = file.metadata() else { return };
    let value = format!("{sha256} {} {}", m.len(), mtime_ns(&m));
    let _ = rustix::fs::fsetxattr(file, HASH_XATTR, value.as_bytes(), rustix::fs::XattrFlags::empty());
}

/// Records a hash computed by reading the whole file, unless the file
/// changed (size or modification time) since `before`, taken when the read
/// began. So a file put in the home by other means is hashed at its first
/// download only.
pub fn record_hash_if_unchanged(file: &std::fs::File, sha256: &str, before: &std::fs::Metadata) {
    if let Ok(now) = file.metadata()
        && now.len() == before.len()
        && mtime_ns(&now) == mtime_ns(before)
    {
        record_hash(file, sha256);
    }
}

/// The hash recorded at commit, if the file still has the size and
/// modification time it had then. The client verifies every byte against
/// it, so a file changed behind our back is caught, never passed off.
pub fn cached_hash(file: &std::fs::File) -> Option<String> {
    let m = file.metadata().ok()?;
    let mut buf = [0u8; 160];
    let n = rustix::fs::fgetxattr(file, HASH_XATTR, &mut buf[..]).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut parts = text.split(' ');
    let (hash, size, mtime) = (parts.next()?, parts.next()?.parse::<u64>().ok()?, parts.next()?.parse::<i128>().ok()?);
    (size == m.len() && mtime == mtime_ns(&m) && validate_sha256(hash).is_ok()).then(|| hash.to_string())
}

/// Upload ids currently being written, so two sessions never append to one partial.
#[derive(Debug, Default)]
pub struct ActiveUploads(Mutex<HashSet<(String, String)>>);

impl ActiveUploads {
    pub fn claim(self: &Arc<Self>, user: &str, id: &str) -> Result<ActiveGuard, TransferError> {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), id.to_string());
        if !set.insert(key.clone()) {
            return Err(TransferError::Busy(id.to_string()));
        }
        Ok(ActiveGuard { set: Arc::clone(self), key })
    }
}

/// One user's claims on the active uploads (ids are unique per home only).
#[derive(Clone)]
pub struct Claims {
    active: Arc<ActiveUploads>,
    user: String,
}

impl Claims {
    pub fn new(active: &Arc<ActiveUploads>, user: &str) -> Self {
        Claims { active: Arc::clone(active), user: user.to_string() }
    }

    pub fn claim(&self, id: &str) -> Result<ActiveGuard, TransferError> {
        self.active.claim(&self.user, id)
    }
}

pub struct ActiveGuard {
    set: Arc<ActiveUploads>,
    key: (String, String),
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

pub fn validate_sha256(hex: &str) -> Result<String, TransferError> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(TransferError::BadHash(hex.chars().take(80).collect()))
    }
}

fn new_upload_id() -> String {
    let mut b = [0u8; 16];
    // Without randomness, fall back to the clock: ids only need to be unique per home.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b.copy_from_slice(&t.to_le_bytes());
    }
    hex::encode(b)
}

fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn partial_dir(jail: &Jail) -> Result<&Dir, TransferError> {
    Ok(jail.internal_dir(PARTIAL_DIR)?)
}

/// The most bytes the sidecar of an upload to `target` of `size` bytes takes.
/// Sidecars are files in the home, so the quota counts them like any other
/// (a rescan after a restart sees them): uploads reserve room for them too.
pub fn meta_len_bound(target: &VirtualPath, size: u64) -> u64 {
    let meta = PartialMeta { path: target.to_string(), size, sha256: Some("0".repeat(64)) };
    serde_json::to_vec(&meta).map_or(0, |v| v.len() as u64)
}

fn read_meta(dir: &Dir, id: &str) -> Option<PartialMeta> {
    let text = dir.read_to_string(format!("{id}.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// An upload being written to its partial file.
pub struct PartialUpload {
    pub id: String,
    pub meta: PartialMeta,
    dir: Dir,
    pub file: std::fs::File,
    /// Bytes in the partial file when the upload (re)started.
    pub offset: u64,
    /// Bytes of the sidecar this open wrote (to be counted as landed).
    pub meta_len: u64,
}

/// Where a partial upload stands: its id, length and the hash of its bytes.
#[derive(Debug, Clone)]
pub struct PartialStatus {
    pub upload_id: String,
    pub offset: u64,
    pub prefix_sha256: String,
}

/// Before a fresh upload of `target`: removes the partial `upload_id` the
/// client started over from, and every other partial of the same path that
/// no session is writing (left by a client that was cut and did not resume),
/// as a new `put` in sftp truncates what a failed one left. Returns the bytes
/// freed.
pub fn discard_for_fresh_start(jail: &Jail, target: &VirtualPath, upload_id: Option<&str>, claims: &Claims) -> u64 {
    let Ok(dir) = partial_dir(jail) else { return 0 };
    let mut freed = upload_id.filter(|id| is_upload_id(id)).map_or(0, |id| remove_partial(dir, id));
    let Ok(entries) = dir.entries() else { return freed };
    let path = target.to_string();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|id| is_upload_id(id)) else {
            continue;
        };
        if read_meta(dir, id).is_some_and(|m| m.path == path) {
            // Held while removing, so that a resume cannot start on it meanwhile.
            if let Ok(_claim) = claims.claim(id) {
                freed += remove_partial(dir, id);
            }
        }
    }
    freed
}

/// Opens the partial for an upload of `size` bytes to `target`: a new one,
/// claimed for this upload before it exists, when `offset` is 0; else the
/// existing partial `upload_id` (which the caller has claimed), bound to the
/// same path, size and hash and holding exactly `offset` bytes. Also returns
/// the bytes it freed: the old sidecar (rewritten, and counted anew in
/// `meta_len`) on a resume.
pub fn open_upload(
    jail: &Jail,
    target: &VirtualPath,
    size: u64,
    offset: u64,
    upload_id: Option<&str>,
    sha256: Option<String>,
    claims: &Claims,
) -> Result<(PartialUpload, Option<ActiveGuard>, u64), TransferError> {
    let dir = partial_dir(jail)?;
    let path = target.to_string();
    if offset == 0 {
        let id = new_upload_id();
        let guard = claims.claim(&id)?;
        let meta = PartialMeta { path, size, sha256 };
        let (file, meta_len) = create_partial(dir, &id, &meta)?;
        return Ok((PartialUpload { id, meta, dir: dir.try_clone()?, file, offset: 0, meta_len }, Some(guard), 0));
    }
    let id = upload_id.filter(|id| is_upload_id(id)).ok_or_else(|| TransferError::UploadNotFound("(none)".into()))?;
    let meta = read_meta(dir, id).ok_or_else(|| TransferError::UploadNotFound(id.to_string()))?;
    let hash_conflict = matches!((&meta.sha256, &sha256), (Some(a), Some(b)) if a != b);
    if meta.path != path || meta.size != size || hash_conflict {
        return Err(TransferError::UploadNotFound(id.to_string()));
    }
    let file = dir.open_with(format!("{id}.part"), cap_std::fs::OpenOptions::new().read(true).write(true))?;
    let mut file = file.into_std();
    let have = file.metadata()?.len();
    if have != offset || offset > size {
        return Err(TransferError::OffsetMismatch { have, asked: offset });
    }
    file.seek(SeekFrom::Start(offset))?;
    let meta = PartialMeta { sha256: meta.sha256.or(sha256), ..meta };
    let released = meta_file_len(dir, id);
    let meta_len = write_meta(dir, id, &meta)?;
    Ok((PartialUpload { id: id.to_string(), meta, dir: dir.try_clone()?, file, offset, meta_len }, None, released))
}

fn create_partial(dir: &Dir, id: &str, meta: &PartialMeta) -> Result<(std::fs::File, u64), TransferError> {
    let meta_len = write_meta(dir, id, meta)?;
    let file =
        dir.open_with(format!("{id}.part"), cap_std::fs::OpenOptions::new().read(true).write(true).create_new(true))?;
    Ok((file.into_std(), meta_len))
}

/// Writes the sidecar; returns its length.
fn write_meta(dir: &Dir, id: &str, meta: &PartialMeta) -> Result<u64, TransferError> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    dir.write(format!("{id}.json"), &json)?;
    Ok(json.len() as u64)
}

fn meta_file_len(dir: &Dir, id: &str) -> u64 {
    dir.metadata(format!("{id}.json")).map_or(0, |m| m.len())
}

/// Commits a small upload held whole in memory (already verified by the
/// caller): written to a partial, synced, renamed into place. Never visible
/// under `target` unless complete. Returns the size of a replaced file.
pub fn write_small(
    jail: &Jail,
    target: &VirtualPath,
    data: &[u8],
    sha256: &str,
    overwrite: bool,
    fsync: bool,
) -> Result<Option<u64>, TransferError> {
    let dir = partial_dir(jail)?;
    let name = format!("{}.part", new_upload_id());
    let result = (|| {
        let mut file = dir.open_with(&name, cap_std::fs::OpenOptions::new().write(true).create_new(true))?.into_std();
        file.write_all(data)?;
        if fsync {
            file.sync_all()?;
        }
        record_hash(&file, sha256);
        Ok(jail.rename_from_internal(dir, &name, target, overwrite)?)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&name);
    }
    result
}

/// Removes the partial upload `id`, if any; returns the bytes freed.
pub fn discard(jail: &Jail, id: &str) -> u64 {
    match partial_dir(jail) {
        Ok(dir) if is_upload_id(id) => remove_partial(dir, id),
        _ => 0,
    }
}

/// Removes a partial and its sidecar; returns the bytes freed (both files).
fn remove_partial(dir: &Dir, id: &str) -> u64 {
    let part = format!("{id}.part");
    let size = dir.metadata(&part).map(|m| m.len()).unwrap_or(0);
    let freed = if dir.remove_file(&part).is_ok() { size } else { 0 };
    freed + remove_meta(dir, id)
}

fn remove_meta(dir: &Dir, id: &str) -> u64 {
    let len = meta_file_len(dir, id);
    if dir.remove_file(format!("{id}.json")).is_ok() { len } else { 0 }
}

impl PartialUpload {
    /// Hashes the bytes already in the partial (for a resumed upload).
    pub fn hash_prefix(&mut self, hasher: &mut Sha256) -> Result<(), TransferError> {
        hash_range(&mut self.file, self.offset, hasher)?;
        self.file.seek(SeekFrom::Start(self.offset))?;
        Ok(())
    }

    /// Verifies, syncs and renames the partial into place. Returns the size of
    /// a file it replaced (when `overwrite`) and the sidecar bytes it removed,
    /// for quota accounting.
    pub fn commit(
        mut self,
        jail: &Jail,
        target: &VirtualPath,
        actual_sha256: &str,
        expected_sha256: &str,
        overwrite: bool,
        fsync: bool,
    ) -> Result<(Option<u64>, u64), TransferError> {
        if !actual_sha256.eq_ignore_ascii_case(expected_sha256) {
            return Err(TransferError::ChecksumMismatch {
                expected: expected_sha256.to_string(),
                actual: actual_sha256.to_string(),
            });
        }
        self.file.flush()?;
        if fsync {
            self.file.sync_all()?;
        }
        record_hash(&self.file, expected_sha256);
        let replaced = jail.rename_from_internal(&self.dir, &format!("{}.part", self.id), target, overwrite)?;
        Ok((replaced, remove_meta(&self.dir, &self.id)))
    }

    /// Drops the partial entirely (checksum mismatch, quota). Returns bytes freed.
    pub fn discard(self) -> u64 {
        remove_partial(&self.dir, &self.id)
    }
}

/// Reads `len` bytes from the start of `file` into the hasher.
pub fn hash_range(file: &mut std::fs::File, len: u64, hasher: &mut Sha256) -> Result<u64, std::io::Error> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; READ_BLOCK];
    let mut left = len;
    while left > 0 {
        let want = left.min(READ_BLOCK as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(len - left)
}

/// Where a partial upload to `target` of `size` bytes stands, if one exists
/// (by id, or else the most recent one bound to the same path and size).
pub fn upload_status(
    jail: &Jail,
    target: &VirtualPath,
    size: u64,
    upload_id: Option<&str>,
) -> Result<Option<PartialStatus>, TransferError> {
    let dir = partial_dir(jail)?;
    let path = target.to_string();
    let mut candidates = Vec::new();
    match upload_id.filter(|id| is_upload_id(id)) {
        Some(id) => candidates.push(id.to_string()),
        None => {
            for entry in dir.entries()? {
                let name = entry?.file_name();
                if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                    candidates.push(id.to_string());
                }
            }
        }
    }
    let mut best: Option<(SystemTime, String)> = None;
    for id in candidates {
        let Some(meta) = read_meta(dir, &id) else { continue };
        if meta.path != path || meta.size != size {
            continue;
        }
        let Ok(m) = dir.metadata(format!("{id}.part")) else { continue };
        let mtime = m.modified().map(|t| t.into_std()).unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, id));
        }
    }
    let Some((_, id)) = best else { return Ok(None) };
    let mut file = dir.open(format!("{id}.part"))?.into_std();
    let len = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hash_range(&mut file, len, &mut hasher)?;
    Ok(Some(PartialStatus { upload_id: id, offset: len, prefix_sha256: hex::encode(hasher.finalize()) }))
}

/// Removes partial uploads untouched for longer than the configured expiry.
/// Returns the bytes freed, for the quota.
pub fn expire_partials(jail: &Jail, config: &TransferConfig) -> u64 {
    let Ok(dir) = partial_dir(jail) else { return 0 };
    let Ok(entries) = dir.entries() else { return 0 };
    let expiry = Duration::from_secs(config.partial_expiry_secs);
    let now = SystemTime::now();
    let mut freed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".part")) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let mtime = meta.modified().map(|t| t.into_std()).unwrap_or(now);
        if now.duration_since(mtime).unwrap_or_default() > expiry {
            freed += remove_partial(dir, id);
        }
    }
    freed
}
