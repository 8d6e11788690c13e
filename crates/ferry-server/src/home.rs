//! `Home`: one per logged-in user, shared by all of that user's sessions on
//! every front end. Every operation a front end needs, each settling the
//! quota itself, over a [`Storage`] backend. No wire types: the framed
//! protocol, SFTP and FTP translate to and from these calls.
//!
//! What makes transfers trustworthy lives here, once:
//! - uploads reserve their room before a byte lands, and count bytes as they
//!   land, so many sessions never together pass the quota and a cut upload is
//!   counted exactly;
//! - an upload is bound to an id claimed by one writer at a time; a resume
//!   takes the claim over from a session that went silent (its writes stop
//!   before the new writer starts);
//! - a commit is verified against the hash the client sent, in the
//!   algorithm the front end asked for (SHA-256 or BLAKE3), and the verified
//!   hash is kept for downloads, one per algorithm.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
pub use ferry_proto::hash::HashAlgo;
use ferry_proto::hash::Hasher;
use tokio::sync::mpsc;

use crate::claims::{CHECK_EVERY, ClaimGuard, ClaimLedger, Claims};
use crate::metrics::HomeMetrics;
use crate::quota::{
    FileLimitReached, FileReservation, FilesRefused, QuotaExceeded, QuotaRefused, QuotaUnavailable, Reservation, Usage,
    UserQuota,
};
use crate::storage::{
    Amount, Entry, EntryKind, FileRead, PartialMeta, PartialWrite, SmallFile, SmallWrite, Storage, VfsError,
    VirtualPath,
};

/// What went wrong, named by outcome. Messages name virtual paths only, and
/// no front end's operation or flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    #[error(transparent)]
    Vfs(#[from] VfsError),
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    FileLimit(#[from] FileLimitReached),
    #[error(transparent)]
    QuotaUnavailable(#[from] QuotaUnavailable),
    #[error("no partial upload {0} for this path and size")]
    UploadNotFound(String),
    #[error("partial upload holds {have} bytes, not {asked}")]
    OffsetMismatch { have: u64, asked: u64 },
    #[error("checksum mismatch: expected {algo} {expected}, received data hashes to {actual}; nothing was committed")]
    ChecksumMismatch { algo: HashAlgo, expected: String, actual: String },
    #[error("upload {0} is being written by another session")]
    Busy(String),
    #[error("upload {0} was taken over by a newer session")]
    TakenOver(String),
    #[error("invalid hash {0:?}: expected 64 hex digits")]
    BadHash(String),
    #[error("{0} changed while it was being read")]
    FileChanged(String),
    #[error("upload incomplete: {have} of {size} bytes")]
    Incomplete { have: u64, size: u64 },
    #[error("{0}")]
    BadRange(String),
}

impl From<QuotaRefused> for HomeError {
    fn from(e: QuotaRefused) -> Self {
        match e {
            QuotaRefused::Exceeded(e) => e.into(),
            QuotaRefused::Unavailable(e) => e.into(),
        }
    }
}

impl From<FilesRefused> for HomeError {
    fn from(e: FilesRefused) -> Self {
        match e {
            FilesRefused::Limit(e) => e.into(),
            FilesRefused::Unavailable(e) => e.into(),
        }
    }
}

/// A hash in `algo` as 64 hex digits, lowercased.
pub fn validate_hash(algo: HashAlgo, hex: &str) -> Result<String, HomeError> {
    algo.parse_hex(hex).ok_or_else(|| HomeError::BadHash(hex.chars().take(80).collect()))
}

fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
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

/// Settings a home takes from the server's configuration.
#[derive(Debug, Clone)]
pub struct HomeSettings {
    /// Sync uploads to stable storage before they are committed.
    pub fsync: bool,
    /// Partial uploads untouched for longer are removed.
    pub partial_expiry: Duration,
    /// The hash of uploads whose front end negotiates none (SFTP, FTP): the
    /// server's first offered one, kept with the file for later downloads.
    pub upload_algo: HashAlgo,
}

/// What `remove` may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remove {
    File,
    EmptyDir,
    Tree,
}

/// How an upload starts.
#[derive(Debug, Clone, Default)]
pub struct UploadSpec {
    /// The final size, when known (SFTP and FTP do not say).
    pub size: Option<u64>,
    /// Bytes already held by the partial `upload_id` to resume from; 0 for
    /// a fresh start.
    pub offset: u64,
    /// The partial to resume, or (with offset 0) the one to start over from.
    pub upload_id: Option<String>,
    /// The algorithm the upload is verified with (and its hash kept in).
    pub algo: HashAlgo,
    /// The hash promised up front, in `algo`; a commit hash that differs is
    /// a mismatch.
    pub hash: Option<String>,
    pub overwrite: bool,
    /// Keep the partial when the upload is dropped unfinished, for a resume.
    pub resumable: bool,
}

/// Where a partial upload stands: its id, length and the hash of its bytes
/// (in the algorithm asked for).
#[derive(Debug, Clone)]
pub struct PartialStatus {
    pub upload_id: String,
    pub offset: u64,
    pub prefix_hash: String,
}

/// A committed upload.
#[derive(Debug, Clone)]
pub struct Committed {
    pub upload_id: String,
    pub size: u64,
    /// The verified hash in the upload's algorithm, when the data was
    /// hashed (always with a client hash).
    pub hash: Option<String>,
}

/// A small file to upload whole in a batch.
#[derive(Debug)]
pub struct SmallPut {
    pub target: VirtualPath,
    pub data: Vec<u8>,
    /// The algorithm of `hash` and `promised`.
    pub algo: HashAlgo,
    /// The hash the client sent with the data.
    pub hash: String,
    /// The hash the client promised up front, if any.
    pub promised: Option<String>,
    pub overwrite: bool,
}

/// A user's home: storage, quota and upload claims.
#[derive(Debug)]
pub struct Home {
    storage: Arc<dyn Storage>,
    quota: Arc<UserQuota>,
    claims: Arc<Claims>,
    settings: HomeSettings,
    metrics: HomeMetrics,
}

impl Home {
    pub fn new(storage: Arc<dyn Storage>, quota: Arc<UserQuota>, settings: HomeSettings) -> Home {
        Home { storage, quota, claims: Arc::default(), settings, metrics: HomeMetrics::default() }
    }

    /// Counts this home's quota refusals and upload takeovers in `metrics`
    /// (the server's; a home made without it counts nowhere).
    pub fn with_metrics(mut self, metrics: HomeMetrics) -> Home {
        // A home being built: its claims are not shared with anyone yet.
        if let Some(claims) = Arc::get_mut(&mut self.claims) {
            claims.count_takeovers_in(metrics.clone());
        }
        self.metrics = metrics;
        self
    }

    /// Upload claims shared through `ledger` with the other servers that
    /// hold `user`'s home.
    #[must_use]
    pub fn with_shared_claims(mut self, ledger: Arc<dyn ClaimLedger>, user: &str) -> Home {
        if let Some(claims) = Arc::get_mut(&mut self.claims) {
            claims.share(ledger, user);
        }
        self
    }

    pub fn usage(&self) -> Usage {
        self.quota.usage()
    }

    /// The hash to verify and keep an upload with when the client named none.
    pub fn upload_algo(&self) -> HashAlgo {
        self.settings.upload_algo
    }

    /// Brings usage back in line with what the storage holds, after
    /// something wrote to it outside `Home` (a remote command). A user over
    /// quota then has uploads refused until back under.
    pub async fn reconcile(&self) {
        match self.storage.usage().await {
            Ok(held) => self.quota.set_measured(held.bytes, held.entries()),
            Err(e) => tracing::warn!(error = %e, "cannot measure the home after a command"),
        }
    }

    pub async fn stat(&self, path: &VirtualPath) -> Result<Entry, HomeError> {
        Ok(self.storage.stat(path).await?)
    }

    /// Succeeds when `path` is a directory one can enter.
    pub async fn enter(&self, path: &VirtualPath) -> Result<(), HomeError> {
        Ok(self.storage.enter(path).await?)
    }

    /// A directory's entries, sorted by name; a path that is not a directory
    /// lists as itself (a link to a directory inside the home lists that
    /// directory), as `ls` does.
    pub async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, HomeError> {
        let meta = self.storage.stat(path).await?;
        let is_dir = match meta.kind {
            EntryKind::Dir => true,
            EntryKind::Symlink => self.storage.enter(path).await.is_ok(),
            _ => false,
        };
        if is_dir { Ok(self.storage.list(path).await?) } else { Ok(vec![meta]) }
    }

    /// Lists a directory known to be one (a session's working directory).
    pub async fn list_dir(&self, path: &VirtualPath) -> Result<Vec<Entry>, HomeError> {
        Ok(self.storage.list(path).await?)
    }

    pub async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<(), HomeError> {
        // Each missing component may become a directory.
        let most = if parents { path.components().count().max(1) as u64 } else { 1 };
        let entries = self.quota.reserve_files(most).inspect_err(|_| self.metrics.quota_refused())?;
        let made = self.storage.mkdir(path, parents).await?;
        entries.settle(made.dirs);
        Ok(())
    }

    /// Counts what left the home.
    fn freed(&self, freed: Amount) {
        self.quota.release(freed.bytes);
        self.quota.release_files(freed.entries());
    }

    /// Removes what `how` allows; returns what was freed (and released).
    pub async fn remove(&self, path: &VirtualPath, how: Remove) -> Result<Amount, HomeError> {
        if path.is_root() {
            return Err(VfsError::PermissionDenied("the home directory itself cannot be removed".into()).into());
        }
        let freed = match how {
            Remove::File => self.storage.remove_file(path).await?,
            Remove::EmptyDir => self.storage.remove_dir(path).await?,
            Remove::Tree => self.storage.remove_tree(path).await?,
        };
        self.freed(freed);
        Ok(freed)
    }

    /// Renames within the home (see [`Storage::rename`]).
    pub async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<(), HomeError> {
        let replaced = self.storage.rename(from, to, overwrite).await?;
        self.freed(replaced);
        Ok(())
    }

    /// Renames as mv(1) does: onto an existing directory moves into it.
    pub async fn move_to(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<(), HomeError> {
        let mut to = to.clone();
        if from != &to
            && let Some(name) = from.file_name()
            && self.storage.stat(&to).await.is_ok_and(|m| m.kind == EntryKind::Dir)
        {
            to = to.join_name(name)?;
        }
        self.rename(from, &to, overwrite).await
    }

    /// The hex hash in `algo` of the first `length` bytes (the whole file
    /// without), the bytes hashed and the file's size.
    pub async fn hash(
        &self,
        path: &VirtualPath,
        length: Option<u64>,
        algo: HashAlgo,
    ) -> Result<(String, u64, u64), HomeError> {
        let file = self.open_regular(path).await?;
        let size = file.entry().size;
        let want = length.unwrap_or(size).min(size);
        let (hash, got) = file.hash_prefix(want, algo).await.map_err(VfsError::from)?;
        Ok((hash, got, size))
    }

    async fn open_regular(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, HomeError> {
        let file = self.storage.open_read(path).await?;
        if file.entry().kind != EntryKind::File {
            return Err(VfsError::IsADirectory(format!("{path}: not a regular file")).into());
        }
        Ok(file)
    }

    /// Opens a file to download from `offset`.
    pub async fn open_download(&self, path: &VirtualPath, offset: u64) -> Result<Download, HomeError> {
        let file = self.open_regular(path).await?;
        let size = file.entry().size;
        if offset > size {
            return Err(HomeError::BadRange(format!("offset {offset} is past the end ({size} bytes)")));
        }
        Ok(Download { file, offset, path: path.clone() })
    }

    /// Reads whole small files in one step, each hashed in `algo` (see
    /// [`Storage::read_small`]).
    pub async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, HomeError>> {
        let read = self.storage.read_small(paths, max_each, budget, algo).await;
        read.into_iter().map(|r| r.map_err(HomeError::from)).collect()
    }

    /// Uploads small files whole, each on its own (verified, within the
    /// quota, atomic), in two steps for the whole batch: hash, then write.
    /// One result per file, in order: the verified hash.
    pub async fn put_small(&self, puts: Vec<SmallPut>) -> Vec<Result<String, HomeError>> {
        let mut results: Vec<Option<Result<String, HomeError>>> = Vec::with_capacity(puts.len());
        let mut accepted = Vec::new();
        for put in puts {
            let checked = (|| {
                let expected = validate_hash(put.algo, &put.hash)?;
                if let Some(p) = &put.promised
                    && !p.eq_ignore_ascii_case(&expected)
                {
                    return Err(HomeError::ChecksumMismatch { algo: put.algo, expected: p.clone(), actual: expected });
                }
                if put.target.is_root() {
                    return Err(VfsError::IsADirectory("/".into()).into());
                }
                let entry = self.quota.reserve_files(1).inspect_err(|_| self.metrics.quota_refused())?;
                let room = self.quota.reserve(put.data.len() as u64).inspect_err(|_| self.metrics.quota_refused())?;
                Ok((expected, (room, entry)))
            })();
            match checked {
                Ok((expected, reservation)) => {
                    accepted.push((results.len(), put, expected, reservation));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        // One blocking step hashes the whole batch.
        let (meta, data): (Vec<_>, Vec<_>) = accepted
            .into_iter()
            .map(|(i, put, expected, reservation)| {
                ((i, put.target, expected, put.overwrite, reservation), (put.algo, put.data))
            })
            .unzip();
        let hashed = tokio::task::spawn_blocking(move || {
            let sums: Vec<String> = data.iter().map(|(algo, d)| algo.digest_hex(d)).collect();
            (data, sums)
        })
        .await;
        let Ok((data, sums)) = hashed else {
            return results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(VfsError::Io(std::io::Error::other("hashing failed")).into())))
                .collect();
        };
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        for (((i, target, expected, overwrite, reservation), (algo, data)), actual) in
            meta.into_iter().zip(data).zip(sums)
        {
            if actual != expected {
                results[i] = Some(Err(HomeError::ChecksumMismatch { algo, expected, actual }));
                continue;
            }
            pending.push((i, reservation, data.len() as u64, actual.clone()));
            writes.push(SmallWrite { target, data, algo, hash: actual, overwrite });
        }
        let written = self.storage.write_small(writes, self.settings.fsync).await;
        for ((i, reservation, size, hash), outcome) in pending.into_iter().zip(written) {
            results[i] = Some(match outcome {
                Ok(replaced) => {
                    let (bytes, entry) = reservation;
                    bytes.settle(size);
                    entry.settle(1);
                    self.freed(replaced);
                    Ok(hash)
                }
                Err(e) => Err(e.into()),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(VfsError::Io(std::io::Error::other("lost outcome")).into())))
            .collect()
    }

    /// Stores a whole small upload in one step: verified against the hash
    /// given or promised, written and renamed into place. Its bytes and
    /// entry were counted as it arrived; a failure gives them back.
    async fn commit_whole(
        &self,
        target: &VirtualPath,
        mut b: Buffered,
        hash: Option<&str>,
    ) -> Result<Committed, HomeError> {
        let algo = b.spec.algo;
        let given = hash.map(|h| validate_hash(algo, h)).transpose()?;
        let promised = b.spec.hash.as_deref().map(|h| validate_hash(algo, h)).transpose()?;
        // Small (at most SMALL_BUFFER): hashed in place.
        let actual = algo.digest_hex(&b.data);
        for expected in [promised, given].into_iter().flatten() {
            if expected != actual {
                return Err(HomeError::ChecksumMismatch { algo, expected, actual });
            }
        }
        let size = b.data.len() as u64;
        let data = std::mem::take(&mut b.data);
        let write =
            SmallWrite { target: target.clone(), data, algo, hash: actual.clone(), overwrite: b.spec.overwrite };
        let outcome = self.storage.write_small(vec![write], self.settings.fsync).await.pop();
        let replaced = outcome.unwrap_or_else(|| Err(VfsError::Io(std::io::Error::other("lost outcome"))))?;
        // Stored: what was counted stays counted.
        b.counted = 0;
        if let Some(entry) = b.entry.take() {
            entry.settle(1);
        }
        self.freed(replaced);
        Ok(Committed { upload_id: String::new(), size, hash: Some(actual) })
    }

    /// Refuses a target that is the home, a directory, or that exists
    /// without `overwrite`.
    async fn check_target(&self, target: &VirtualPath, overwrite: bool) -> Result<(), HomeError> {
        if target.is_root() {
            return Err(VfsError::IsADirectory("/".into()).into());
        }
        match self.storage.stat(target).await {
            Ok(e) if e.kind == EntryKind::Dir => Err(VfsError::IsADirectory(target.to_string()).into()),
            Ok(_) if !overwrite => Err(VfsError::AlreadyExists(format!("{target} already exists")).into()),
            Ok(_) | Err(VfsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts (or resumes) an upload to `target`.
    pub async fn begin_upload(self: &Arc<Self>, target: &VirtualPath, spec: UploadSpec) -> Result<Upload, HomeError> {
        if let Some(size) = spec.size
            && spec.offset > size
        {
            return Err(HomeError::BadRange(format!("offset {} is past the size {size}", spec.offset)));
        }
        let algo = spec.algo;
        spec.hash.as_deref().map(|h| validate_hash(algo, h)).transpose()?;
        self.check_target(target, spec.overwrite).await?;
        if spec.offset == 0
            && spec.size.is_none()
            && !spec.resumable
            && spec.upload_id.is_none()
            && let Ok(seat) = SMALL_SEATS.try_acquire()
        {
            // Counted as a partial would be: an entry from the start, bytes as they come.
            let entry = self.quota.reserve_files(1)?;
            let quota = Arc::clone(&self.quota);
            let buffered = Buffered { spec, data: Vec::new(), counted: 0, quota, entry: Some(entry), _seat: seat };
            return Ok(Upload { home: Arc::clone(self), target: target.clone(), state: State::Buffered(buffered) });
        }
        let staged = self.begin_staged(target, spec).await?;
        Ok(Upload { home: Arc::clone(self), target: target.clone(), state: State::Staged(Box::new(staged)) })
    }

    /// Starts (or resumes) an upload into a partial, committed by rename.
    async fn begin_staged(self: &Arc<Self>, target: &VirtualPath, spec: UploadSpec) -> Result<Staged, HomeError> {
        let algo = spec.algo;
        let promised = spec.hash.as_deref().map(|h| validate_hash(algo, h)).transpose()?;
        let path = target.to_string();
        if spec.offset == 0 {
            // A fresh start over old partials of this path: free them before
            // reserving, so that starting over near the quota fits when the
            // end result would.
            self.discard_for_fresh_start(&path, spec.upload_id.as_deref()).await;
        }
        // Room for the rest of a known size, reserved before a byte lands.
        let reserve = || -> Result<Option<Reservation>, HomeError> {
            let reserved = spec.size.map(|size| self.quota.reserve(size - spec.offset)).transpose();
            Ok(reserved.inspect_err(|_| self.metrics.quota_refused())?)
        };
        let mut meta = PartialMeta { path, size: spec.size, ..PartialMeta::default() };
        if let Some(p) = &promised {
            meta.promise(algo, p.clone());
        }
        let (id, claim, writer, hasher, meta) = if spec.offset == 0 {
            let reservation = reserve()?;
            // The partial is an entry from its creation (a scan counts it).
            let entry = self.quota.reserve_files(1).inspect_err(|_| self.metrics.quota_refused())?;
            let id = new_upload_id();
            let claim = self.claims.claim(&id, false).await?;
            *claim.claim.reservation() = reservation;
            let writer = self.storage.partial_create(&id, &meta).await?;
            entry.settle(1);
            (id, claim, writer, Some(Hasher::new(algo)), meta)
        } else {
            let id = spec.upload_id.clone().filter(|id| is_upload_id(id));
            let id = id.ok_or_else(|| HomeError::UploadNotFound("(none)".into()))?;
            // A resume by the same user takes the upload over from a session
            // that may be gone without having said so.
            let claim = self.claims.claim(&id, true).await?;
            let info = self.storage.partial_info(&id).await?.ok_or_else(|| HomeError::UploadNotFound(id.clone()))?;
            // A promise in another algorithm cannot be compared: both stay bound.
            let hash_conflict = matches!((info.meta.promised(algo), &promised), (Some(a), Some(b)) if a != b);
            if info.meta.path != meta.path || info.meta.size != meta.size || hash_conflict {
                return Err(HomeError::UploadNotFound(id));
            }
            if info.len != spec.offset {
                return Err(HomeError::OffsetMismatch { have: info.len, asked: spec.offset });
            }
            // Reserved once the claim is ours: a writer taken over has
            // withdrawn its reservation by now.
            *claim.claim.reservation() = reserve()?;
            let mut meta = PartialMeta { path: meta.path, size: meta.size, ..info.meta };
            if let Some(p) = promised {
                meta.promise(algo, p);
            }
            let (hasher, hashed) = self.storage.partial_hash(&id, spec.offset, algo).await?;
            if hashed != spec.offset {
                return Err(HomeError::OffsetMismatch { have: hashed, asked: spec.offset });
            }
            let writer = self.storage.partial_open(&id, &meta).await?;
            (id, claim, writer, Some(hasher), meta)
        };
        let offset = spec.offset;
        Ok(Staged {
            home: Arc::clone(self),
            id,
            target: target.clone(),
            meta,
            spec,
            writer: Some(writer),
            claim,
            len: offset,
            hasher,
            hashed: offset,
            unchecked: 0,
            finished: false,
        })
    }

    /// Removes the partial the client starts over from, and every other
    /// partial of the same path no session is writing (left by a client that
    /// was cut and did not resume), as a new `put` in sftp truncates what a
    /// failed one left.
    async fn discard_for_fresh_start(&self, path: &str, upload_id: Option<&str>) {
        let mut ids: Vec<String> = upload_id.filter(|id| is_upload_id(id)).map(str::to_string).into_iter().collect();
        if let Ok(all) = self.storage.partial_list().await {
            ids.extend(all.into_iter().filter(|p| p.meta.path == path).map(|p| p.id));
        }
        for id in ids {
            // Held while removing, so that a resume cannot start on it meanwhile.
            if let Ok(_claim) = self.claims.claim(&id, false).await {
                let freed = self.storage.partial_remove(&id).await.unwrap_or_default();
                self.freed(freed);
            }
        }
    }

    /// Where a partial upload to `target` of `size` bytes stands, if one
    /// exists (by id, or else the most recent one bound to the same path
    /// and size).
    pub async fn upload_status(
        &self,
        target: &VirtualPath,
        size: Option<u64>,
        upload_id: Option<&str>,
        algo: HashAlgo,
    ) -> Result<Option<PartialStatus>, HomeError> {
        let path = target.to_string();
        let candidates = match upload_id.filter(|id| is_upload_id(id)) {
            Some(id) => self.storage.partial_info(id).await?.into_iter().collect(),
            None => self.storage.partial_list().await?,
        };
        let best =
            candidates.into_iter().filter(|p| p.meta.path == path && p.meta.size == size).max_by_key(|p| p.modified);
        let Some(best) = best else { return Ok(None) };
        let (hasher, len) = self.storage.partial_hash(&best.id, best.len, algo).await?;
        Ok(Some(PartialStatus { upload_id: best.id, offset: len, prefix_hash: hasher.finalize_hex() }))
    }

    /// Removes partial uploads untouched for longer than the expiry (ones no
    /// session is writing).
    pub async fn expire_partials(&self) {
        let Ok(all) = self.storage.partial_list().await else { return };
        let now = SystemTime::now();
        for p in all {
            if now.duration_since(p.modified).unwrap_or_default() <= self.settings.partial_expiry {
                continue;
            }
            if let Ok(_claim) = self.claims.claim(&p.id, false).await {
                let freed = self.storage.partial_remove(&p.id).await.unwrap_or_default();
                self.freed(freed);
            }
        }
    }
}

/// An upload in progress. Writes may come at any offset and in any order.
///
/// A small upload of untold size (SFTP and FTP do not say) is first held in
/// memory and stored whole at its commit, in one step of the storage: no
/// partial, claim or reservation for a file of a few kilobytes, which made
/// such files cost several storage round trips each. It moves into a
/// partial, as any other upload, once it outgrows [`SMALL_BUFFER`] or is
/// written out of order. Memory is bounded by [`SMALL_SEATS`]: without a
/// seat free, an upload starts in a partial.
pub struct Upload {
    home: Arc<Home>,
    target: VirtualPath,
    state: State,
}

enum State {
    Buffered(Buffered),
    Staged(Box<Staged>),
}

/// The bytes of a small upload, in order from offset 0, counted in the
/// quota as they arrive (as a partial's are), so that a refusal comes at
/// the write that passes the limit.
struct Buffered {
    spec: UploadSpec,
    data: Vec<u8>,
    /// Bytes counted in usage; given back unless committed.
    counted: u64,
    quota: Arc<UserQuota>,
    /// The file's entry, promised at the start.
    entry: Option<FileReservation>,
    _seat: tokio::sync::SemaphorePermit<'static>,
}

impl Buffered {
    /// Gives back what the upload counted; returns its bytes.
    fn release(&mut self) -> Vec<u8> {
        self.quota.release(std::mem::take(&mut self.counted));
        self.entry = None;
        std::mem::take(&mut self.data)
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.release();
    }
}

/// The most bytes an upload is held in memory before it moves to a partial.
pub const SMALL_BUFFER: usize = 64 * 1024;

/// Uploads held in memory at once, server-wide (at most 32 MiB).
static SMALL_SEATS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(512);

impl Upload {
    /// The partial's id; empty while the upload is held in memory.
    pub fn id(&self) -> &str {
        match &self.state {
            State::Buffered(_) => "",
            State::Staged(s) => s.id(),
        }
    }

    /// Bytes held when the upload (re)started.
    pub fn offset(&self) -> u64 {
        match &self.state {
            State::Buffered(b) => b.spec.offset,
            State::Staged(s) => s.offset(),
        }
    }

    /// Bytes the upload holds now.
    pub fn len(&self) -> u64 {
        match &self.state {
            State::Buffered(b) => b.data.len() as u64,
            State::Staged(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn target(&self) -> &VirtualPath {
        &self.target
    }

    /// The algorithm this upload is verified with.
    pub fn algo(&self) -> HashAlgo {
        match &self.state {
            State::Buffered(b) => b.spec.algo,
            State::Staged(s) => s.algo(),
        }
    }

    /// Writes `data` at `offset`.
    pub async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<(), HomeError> {
        self.write_at_on(offset, data, WriteOn::Task).await
    }

    async fn write_at_on(&mut self, offset: u64, data: Bytes, on: WriteOn) -> Result<(), HomeError> {
        if let State::Buffered(b) = &mut self.state {
            let in_order = offset == b.data.len() as u64;
            if in_order && b.data.len() + data.len() <= SMALL_BUFFER {
                b.quota.try_add(data.len() as u64)?;
                b.counted += data.len() as u64;
                b.data.extend_from_slice(&data);
                return Ok(());
            }
            // Into a partial, which counts the held bytes again as they land.
            let held = b.release();
            let staged = self.home.begin_staged(&self.target, b.spec.clone()).await?;
            self.state = State::Staged(Box::new(staged));
            if !held.is_empty() {
                self.staged()?.write_at(0, Bytes::from(held), on).await?;
            }
        }
        self.staged()?.write_at(offset, data, on).await
    }

    fn staged(&mut self) -> Result<&mut Staged, HomeError> {
        match &mut self.state {
            State::Staged(s) => Ok(s),
            State::Buffered(_) => Err(VfsError::Io(std::io::Error::other("upload not staged")).into()),
        }
    }

    /// Appends `data` at the end of what the upload holds.
    pub async fn write(&mut self, data: Bytes) -> Result<(), HomeError> {
        self.write_at(self.len(), data).await
    }

    /// Hands the upload to a writer of its own that appends the blocks sent
    /// to it, at most `depth` waiting: the network side receives the next
    /// blocks while the last ones are hashed and written, and never waits
    /// for each write in turn (that lock-step cost FTP a third of its
    /// upload speed).
    ///
    /// The writer is a blocking thread that hashes and writes each block
    /// itself, so a block costs one hand-over between threads. A task that
    /// sent each hash and each write to the blocking pool cost about ten
    /// context switches per 256 KiB block, a fifth of the server's CPU.
    /// Threads are bounded by [`FEED_THREADS`]; past that, the writer is a
    /// task.
    pub fn feed(self, depth: usize) -> UploadFeed {
        let (tx, mut rx) = mpsc::channel::<Bytes>(depth);
        let task = match FEED_THREADS.try_acquire() {
            Ok(seat) => {
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let _seat = seat;
                    let mut upload = self;
                    while let Some(block) = rx.blocking_recv() {
                        let end = upload.len();
                        if let Err(e) = runtime.block_on(upload.write_at_on(end, block, WriteOn::OwnThread)) {
                            // Sends fail from now on: the sender learns it failed.
                            return (upload, Err(e));
                        }
                    }
                    (upload, Ok(()))
                })
            }
            Err(_) => tokio::spawn(async move {
                let mut upload = self;
                while let Some(block) = rx.recv().await {
                    if let Err(e) = upload.write(block).await {
                        return (upload, Err(e));
                    }
                }
                (upload, Ok(()))
            }),
        };
        UploadFeed { tx, task }
    }

    /// Verifies and commits. `hash` is the hash (in the upload's algorithm)
    /// the client sent at the end, if any; a promised hash that differs from
    /// it, or data that does not hash to it, is a mismatch and nothing is
    /// committed.
    pub async fn commit(self, hash: Option<&str>) -> Result<Committed, HomeError> {
        match self.state {
            State::Buffered(b) => self.home.commit_whole(&self.target, b, hash).await,
            State::Staged(s) => s.commit(hash).await,
        }
    }

    /// Gives the upload up (and removes its partial, if it has one).
    pub async fn abort(self) {
        if let State::Staged(s) = self.state {
            s.abort().await;
        }
    }
}

/// An upload being appended to by its own task; see [`Upload::feed`].
pub struct UploadFeed {
    tx: mpsc::Sender<Bytes>,
    task: tokio::task::JoinHandle<(Upload, Result<(), HomeError>)>,
}

/// Uploads that may each hold a blocking thread for their writer at once.
/// Below tokio's blocking pool (512 threads), so that other storage calls
/// always find a thread; an upload past the bound writes from a task.
const FEED_THREAD_LIMIT: usize = 64;
static FEED_THREADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FEED_THREAD_LIMIT);

/// Where [`Staged::write_at`] runs: on an async task, which sends the hash
/// and the write to the blocking pool, or on the feed's own blocking
/// thread, which does both in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteOn {
    Task,
    OwnThread,
}

impl UploadFeed {
    /// Queues `block`. False once a write failed: what is sent after is
    /// dropped, and [`finish`](Self::finish) says why.
    pub async fn send(&self, block: Bytes) -> bool {
        self.tx.send(block).await.is_ok()
    }

    /// Waits for every queued block to be written; gives the upload back
    /// with the first write error, if any. Err only if the writer task died.
    pub async fn finish(self) -> Result<(Upload, Result<(), HomeError>), HomeError> {
        drop(self.tx);
        self.task.await.map_err(|_| VfsError::Io(std::io::Error::other("upload writer failed")).into())
    }
}

/// An upload into a partial. Bytes count against the quota as they extend
/// the partial. Dropped unfinished, a resumable upload keeps its partial for
/// a resume.
struct Staged {
    home: Arc<Home>,
    id: String,
    target: VirtualPath,
    meta: PartialMeta,
    spec: UploadSpec,
    writer: Option<Box<dyn PartialWrite>>,
    /// Holds the reservation too (see [`Claim`]).
    claim: ClaimGuard,
    /// Bytes held by the partial (the high-water mark), all counted in usage.
    len: u64,
    /// The hash (in `spec.algo`) of the first `hashed` bytes, while writes
    /// came in order.
    hasher: Option<Hasher>,
    hashed: u64,
    /// Bytes written since the shared claim was last asked about.
    unchecked: u64,
    finished: bool,
}

/// What an upload of untold size reserves at once from a shared quota.
const GROWTH_AHEAD: u64 = 8 << 20;

/// Writes smaller than this are hashed in place rather than beside the write.
const HASH_INLINE: usize = 64 * 1024;

impl Staged {
    fn id(&self) -> &str {
        &self.id
    }

    /// Bytes held when the upload (re)started.
    fn offset(&self) -> u64 {
        self.spec.offset
    }

    /// Bytes the partial holds now.
    fn len(&self) -> u64 {
        self.len
    }

    /// Fails once a newer writer took the upload over. A claim shared with
    /// other servers is asked of the ledger every [`CHECK_EVERY`] bytes and
    /// before a commit (`always`).
    fn check_claim(&mut self, always: bool) -> Result<(), HomeError> {
        let ask = always || self.unchecked >= CHECK_EVERY;
        self.claim.check(ask)?;
        if ask {
            self.unchecked = 0;
        }
        Ok(())
    }

    /// Writes `data` at `offset`.
    async fn write_at(&mut self, offset: u64, data: Bytes, on: WriteOn) -> Result<(), HomeError> {
        let claim = Arc::clone(&self.claim.claim);
        let _busy = claim.busy.lock().await;
        self.check_claim(false)?;
        self.unchecked += data.len() as u64;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| HomeError::BadRange("write past the largest offset".into()))?;
        if let Some(size) = self.spec.size
            && end > size
        {
            return Err(HomeError::BadRange(format!("write to {end} is past the size {size}")));
        }
        if let Some(w) = &self.writer {
            w.check_range(offset, end)?;
        }
        if end > self.len {
            let mut growth = end - self.len;
            let mut reservation = self.claim.claim.reservation();
            if let Some(r) = reservation.as_mut() {
                growth -= r.take(growth);
            }
            if growth > 0 && self.home.quota.is_shared() {
                // Growth past what was reserved (a size not told): reserve
                // ahead, so that a shared quota is asked once per chunk,
                // not once per write.
                if let Ok(mut ahead) = self.home.quota.reserve(growth.max(GROWTH_AHEAD)) {
                    growth -= ahead.take(growth);
                    *reservation = Some(ahead);
                }
            }
            drop(reservation);
            if growth > 0 {
                self.home.quota.try_add(growth).inspect_err(|_| self.home.metrics.quota_refused())?;
            }
            self.len = end;
        }
        // Hashing keeps up only while writes come in order.
        let in_order = self.hasher.is_some() && offset == self.hashed;
        if !in_order {
            self.hasher = None;
        }
        let writer = self.writer.as_mut().ok_or_else(|| HomeError::TakenOver(self.id.clone()))?;
        if on == WriteOn::OwnThread {
            // Already off the runtime: hash and write right here.
            if let Some(h) = self.hasher.as_mut().filter(|_| in_order) {
                h.update(&data);
            }
            match writer.write_at_blocking(offset, &data) {
                Some(written) => written?,
                None => writer.write_at(offset, data).await?,
            }
            if in_order {
                self.hashed = end;
            }
            return Ok(());
        }
        match self.hasher.take().filter(|_| in_order) {
            Some(mut hasher) if data.len() < HASH_INLINE => {
                hasher.update(&data);
                writer.write_at(offset, data).await?;
                self.hasher = Some(hasher);
            }
            Some(mut hasher) => {
                // Hash on one thread while the write runs on another.
                let d = data.clone();
                let hashing = tokio::task::spawn_blocking(move || {
                    hasher.update(&d);
                    hasher
                });
                let written = writer.write_at(offset, data).await;
                self.hasher = hashing.await.ok();
                written?;
            }
            None => writer.write_at(offset, data).await?,
        }
        if in_order {
            self.hashed = end;
        }
        Ok(())
    }

    /// The algorithm this upload is verified with.
    fn algo(&self) -> HashAlgo {
        self.spec.algo
    }

    /// Verifies and commits. `hash` is the hash (in the upload's algorithm)
    /// the client sent at the end, if any; a promised hash that differs from
    /// it, or data that does not hash to it, is a mismatch and the partial
    /// is discarded.
    async fn commit(mut self, hash: Option<&str>) -> Result<Committed, HomeError> {
        self.check_claim(true)?;
        if let Some(size) = self.spec.size
            && self.len != size
        {
            return Err(HomeError::Incomplete { have: self.len, size });
        }
        let algo = self.spec.algo;
        let expected = hash.map(|h| validate_hash(algo, h)).transpose()?;
        let promised = self.meta.promised(algo).cloned();
        if let (Some(p), Some(e)) = (&promised, &expected)
            && p != e
        {
            let err = HomeError::ChecksumMismatch { algo, expected: p.clone(), actual: e.clone() };
            return Err(self.fail(err).await);
        }
        let expected = expected.or(promised);
        let actual = match self.hasher.take() {
            Some(h) if self.hashed == self.len => Some(h.finalize_hex()),
            // Written out of order: hash what landed when the client gave a hash to check.
            _ if expected.is_some() => match self.home.storage.partial_hash(&self.id, self.len, algo).await {
                Ok((h, _)) => Some(h.finalize_hex()),
                Err(e) => return Err(self.fail(e.into()).await),
            },
            _ => None,
        };
        if let (Some(e), Some(a)) = (&expected, &actual)
            && e != a
        {
            let err = HomeError::ChecksumMismatch { algo, expected: e.clone(), actual: a.clone() };
            return Err(self.fail(err).await);
        }
        let Some(writer) = self.writer.take() else { return Err(HomeError::TakenOver(self.id.clone())) };
        let keep = actual.as_deref().map(|hex| (algo, hex));
        match writer.commit(&self.target, self.spec.overwrite, self.home.settings.fsync, keep).await {
            Ok(replaced) => {
                self.finished = true;
                self.home.freed(replaced);
                Ok(Committed { upload_id: self.id.clone(), size: self.len, hash: actual })
            }
            // A failed commit must not leave a half-trusted partial behind.
            Err(e) => Err(self.fail(e.into()).await),
        }
    }

    /// Discards the partial; returns `err`.
    async fn fail(&mut self, err: HomeError) -> HomeError {
        self.discard().await;
        err
    }

    async fn discard(&mut self) {
        self.writer = None;
        self.finished = true;
        let freed = self.home.storage.partial_remove(&self.id).await.unwrap_or_default();
        self.home.freed(freed);
    }

    /// Gives the upload up and removes its partial.
    async fn abort(mut self) {
        self.discard().await;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Whatever landed stays counted: the partial holds it. A partial no
        // one can resume is removed in the background.
        if self.finished || self.spec.resumable || self.claim.claim.revoked.load(Ordering::SeqCst) {
            return;
        }
        let (home, id) = (Arc::clone(&self.home), self.id.clone());
        self.writer = None;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let freed = home.storage.partial_remove(&id).await.unwrap_or_default();
                home.freed(freed);
            });
        }
    }
}

/// A file being downloaded.
pub struct Download {
    file: Box<dyn FileRead>,
    offset: u64,
    path: VirtualPath,
}

impl Download {
    pub fn entry(&self) -> &Entry {
        self.file.entry()
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the download sends.
    pub fn len(&self) -> u64 {
        self.entry().size - self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash in `algo` kept with the file, if it still describes it.
    pub fn recorded_hash(&self, algo: HashAlgo) -> Option<String> {
        self.file.recorded_hash(algo)
    }

    /// Up to `len` bytes at `offset` of the file as it was opened (fewer
    /// at its end), for front ends that read at random offsets (SFTP).
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, HomeError> {
        // Never more than the opened file holds: a read-ahead past a small
        // file's end costs no buffer, and one at the end no storage call.
        let left = self.entry().size.saturating_sub(offset);
        let len = len.min(usize::try_from(left).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(Bytes::new());
        }
        Ok(self.file.read_at(offset, len).await.map_err(|e| VfsError::from_io(e, &self.path))?)
    }

    /// The local file, where the backend has one.
    pub fn local_file(&self) -> Option<&std::fs::File> {
        self.file.local_file()
    }

    /// Sends the bytes into `tx` in blocks, unhashed: for front ends whose
    /// clients check nothing (FTP). A file that shrank while being read is
    /// `FileChanged`.
    pub async fn send(self, tx: mpsc::Sender<Bytes>) -> Result<(), HomeError> {
        let path = self.path.to_string();
        match self.file.stream(self.offset, None, tx).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(VfsError::Io(e).into()),
            Err(_) => Err(HomeError::FileChanged(path)),
        }
    }

    /// Sends the bytes into `tx` in blocks and returns the whole file's
    /// hash in `algo` (the recorded one when there is one). A file that
    /// shrank or changed while being read is `FileChanged`.
    pub async fn stream(self, tx: mpsc::Sender<Bytes>, algo: HashAlgo) -> Result<String, HomeError> {
        let recorded = self.file.recorded_hash(algo);
        let path = self.path.to_string();
        let hash = recorded.is_none().then_some(algo);
        match self.file.stream(self.offset, hash, tx).await {
            Ok(hash) => hash.or(recorded).ok_or(HomeError::FileChanged(path)),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(VfsError::Io(e).into()),
            Err(_) => Err(HomeError::FileChanged(path)),
        }
    }
}
