//! `FsStorage`: a home on the local disk. Every call goes through the
//! cap-std [`Jail`] (openat2 `RESOLVE_BENEATH`, renameat2 NOREPLACE, no
//! following of links out, FIFOs refused) on the blocking pool.
//!
//! Partial uploads live in the hidden `/.ferry-partial` folder of the home
//! (same filesystem, so the commit is an atomic rename), as `<id>.part` with
//! a `<id>.json` sidecar holding its [`PartialMeta`]. The hash verified at
//! commit is kept in an xattr bound to the file's size and mtime, one xattr
//! per algorithm (`user.ferry.sha256`, `user.ferry.blake3`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::fs::Dir;
use ferry_proto::hash::{HashAlgo, Hasher};
use tokio::sync::mpsc;

use super::{
    Amount, Entry, EntryKind, FileRead, PartialInfo, PartialMeta, PartialWrite, READ_BLOCK, SmallFile, SmallWrite,
    Storage, VfsError, VirtualPath, hash_reader,
};
use crate::pool::Pool;
use crate::vfs::{Jail, PARTIAL_DIR};

/// A home folder on the local disk.
#[derive(Debug, Clone)]
pub struct FsStorage {
    jail: Arc<Jail>,
}

impl FsStorage {
    /// Opens (creating if missing) the home folder; everything afterwards
    /// is relative to the handle opened here.
    pub fn open(home: &Path) -> Result<FsStorage, VfsError> {
        std::fs::create_dir_all(home).map_err(VfsError::from)?;
        Ok(FsStorage { jail: Arc::new(Jail::open(home)?) })
    }

    /// Runs a jail operation on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Jail) -> Result<T, VfsError> + Send + 'static,
    ) -> Result<T, VfsError> {
        let jail = Arc::clone(&self.jail);
        tokio::task::spawn_blocking(move || f(&jail))
            .await
            .unwrap_or_else(|_| Err(VfsError::Io(std::io::Error::other("file operation failed"))))
    }
}

fn partials(jail: &Jail) -> Result<&Dir, VfsError> {
    jail.internal_dir(PARTIAL_DIR)
}

/// Upload ids name files in the partial folder: only 32 hex digits pass.
fn check_id(id: &str) -> Result<(), VfsError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(VfsError::NotFound(format!("upload {id:?}")))
    }
}

fn read_meta(dir: &Dir, id: &str) -> Option<PartialMeta> {
    serde_json::from_str(&dir.read_to_string(format!("{id}.json")).ok()?).ok()
}

fn write_meta(dir: &Dir, id: &str, meta: &PartialMeta) -> Result<(), VfsError> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    dir.write(format!("{id}.json"), &json)?;
    Ok(())
}

fn partial_info(dir: &Dir, id: &str) -> Option<PartialInfo> {
    let meta = read_meta(dir, id)?;
    let m = dir.metadata(format!("{id}.part")).ok()?;
    let modified = m.modified().map(|t| t.into_std()).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(PartialInfo { id: id.to_string(), meta, len: m.len(), modified })
}

/// Removes a partial and its sidecar; returns what the partial freed.
fn remove_partial(dir: &Dir, id: &str) -> Amount {
    let part = format!("{id}.part");
    let size = dir.metadata(&part).map(|m| m.len()).unwrap_or(0);
    let freed = if dir.remove_file(&part).is_ok() { Amount::file(size) } else { Amount::default() };
    let _ = dir.remove_file(format!("{id}.json"));
    freed
}

/// Bytes and entries of the sidecars, which the quota does not count.
fn sidecars(dir: &Dir) -> Amount {
    let mut total = Amount::default();
    let Ok(entries) = dir.entries() else { return total };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(".json"))
            && let Ok(m) = entry.metadata()
        {
            total = total + Amount::file(m.len());
        }
    }
    total
}

/// The extended attribute holding a file's hash in `algo` as verified, with
/// the size and modification time it belongs to. One per algorithm, so that
/// SHA-256 and BLAKE3 clients of the same file are each served from cache.
fn hash_xattr(algo: HashAlgo) -> &'static str {
    match algo {
        HashAlgo::Sha256 => "user.ferry.sha256",
        HashAlgo::Blake3 => "user.ferry.blake3",
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Records a verified hash. Best effort: a filesystem without user xattrs
/// simply has no cache.
fn record_hash(file: &std::fs::File, algo: HashAlgo, hex: &str) {
    let Ok(m) = file.metadata() else { return };
    let value = format!("{hex} {} {}", m.len(), mtime_ns(&m));
    let _ = rustix::fs::fsetxattr(file, hash_xattr(algo), value.as_bytes(), rustix::fs::XattrFlags::empty());
}

/// The recorded hash in `algo`, if the file still has the size and mtime it
/// had then. The client verifies every byte against it, so a file changed
/// behind our back is caught, never passed off.
fn recorded_hash(file: &std::fs::File, m: &std::fs::Metadata, algo: HashAlgo) -> Option<String> {
    let mut buf = [0u8; 160];
    let n = rustix::fs::fgetxattr(file, hash_xattr(algo), &mut buf[..]).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut parts = text.split(' ');
    let (hash, size, mtime) = (parts.next()?, parts.next()?.parse::<u64>().ok()?, parts.next()?.parse::<i128>().ok()?);
    let hash = algo.parse_hex(hash)?;
    (size == m.len() && mtime == mtime_ns(m)).then_some(hash)
}

/// The recorded hashes of a file just opened, one slot per algorithm.
#[derive(Debug, Default)]
struct Recorded {
    sha256: Option<String>,
    blake3: Option<String>,
}

impl Recorded {
    fn read(file: &std::fs::File) -> Recorded {
        let Ok(m) = file.metadata() else { return Recorded::default() };
        Recorded {
            sha256: recorded_hash(file, &m, HashAlgo::Sha256),
            blake3: recorded_hash(file, &m, HashAlgo::Blake3),
        }
    }

    fn get(&self, algo: HashAlgo) -> Option<String> {
        match algo {
            HashAlgo::Sha256 => self.sha256.clone(),
            HashAlgo::Blake3 => self.blake3.clone(),
        }
    }
}

/// Refuses a target that is a directory, or that exists without `overwrite`.
fn check_target(jail: &Jail, target: &VirtualPath, overwrite: bool) -> Result<(), VfsError> {
    match jail.stat(target) {
        Ok(e) if e.kind == EntryKind::Dir => Err(VfsError::IsADirectory(target.to_string())),
        Ok(_) if !overwrite => Err(VfsError::AlreadyExists(format!("{target} already exists"))),
        Ok(_) => Ok(()),
        Err(VfsError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn replaced(bytes: Option<u64>) -> Amount {
    bytes.map_or(Amount::default(), Amount::file)
}

/// A name in the partial folder for a small write: never an upload id's.
fn scratch_name() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("small-{}.part", hex::encode(b))
}

fn write_one(jail: &Jail, w: &SmallWrite, fsync: bool) -> Result<Amount, VfsError> {
    check_target(jail, &w.target, w.overwrite)?;
    let dir = partials(jail)?;
    let name = scratch_name();
    let result = (|| {
        let mut file = dir.open_with(&name, cap_std::fs::OpenOptions::new().write(true).create_new(true))?.into_std();
        file.write_all(&w.data)?;
        if fsync {
            file.sync_all()?;
        }
        record_hash(&file, w.algo, &w.hash);
        Ok(replaced(jail.rename_from_internal(dir, &name, &w.target, w.overwrite)?))
    })();
    if result.is_err() {
        let _ = dir.remove_file(&name);
    }
    result
}

fn read_one(
    jail: &Jail,
    path: &VirtualPath,
    max_each: u64,
    budget: &mut u64,
    algo: HashAlgo,
) -> Result<Option<SmallFile>, VfsError> {
    let (file, entry) = jail.open_read(path)?;
    if entry.size > max_each || entry.size > *budget {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(entry.size as usize);
    file.take(entry.size).read_to_end(&mut data)?;
    Ok(Some(small_file(entry, data, budget, algo)))
}

/// `read_one` on the async worker, for files the kernel has in memory
/// (`Jail::read_cached`) and only while `room` lasts; `None` leaves the
/// file to `read_one` on the blocking pool.
fn read_one_cached(
    jail: &Jail,
    path: &VirtualPath,
    max_each: u64,
    budget: &mut u64,
    room: &mut u64,
    algo: HashAlgo,
) -> Option<Result<Option<SmallFile>, VfsError>> {
    let (entry, data) = jail.read_cached(path, max_each.min(*budget).min(*room))?;
    let Some(data) = data else {
        // Too big for the read: the answer. Too big only for the room left
        // here: the blocking pool reads it.
        return (entry.size > max_each || entry.size > *budget).then_some(Ok(None));
    };
    *room -= data.len() as u64;
    Some(Ok(Some(small_file(entry, data, budget, algo))))
}

/// A file read whole, hashed, its bytes taken from `budget`: shared by the
/// blocking and the cached read so that both count alike.
fn small_file(entry: Entry, data: Vec<u8>, budget: &mut u64, algo: HashAlgo) -> SmallFile {
    *budget -= data.len() as u64;
    let hash = algo.digest_hex(&data);
    SmallFile { entry: Entry { size: data.len() as u64, ..entry }, data, hash }
}

/// How many bytes one `read_small` reads and hashes on the async worker
/// (files already in memory) before it hands the rest to the blocking pool:
/// some 10-20 µs of copying and hashing, less than the hand-off itself.
const READ_SMALL_INLINE: u64 = 64 * 1024;

#[async_trait]
impl Storage for FsStorage {
    async fn usage(&self) -> Result<Amount, VfsError> {
        self.run(|j| {
            let (bytes, files, dirs) = j.disk_usage_counted()?;
            let side = partials(j).map(sidecars).unwrap_or_default();
            // The partial folder itself is the server's, not the user's.
            let own_dirs = u64::from(partials(j).is_ok());
            Ok(Amount {
                bytes: bytes.saturating_sub(side.bytes),
                files: files.saturating_sub(side.files),
                dirs: dirs.saturating_sub(own_dirs),
            })
        })
        .await
    }

    async fn stat(&self, path: &VirtualPath) -> Result<Entry, VfsError> {
        // What the kernel has cached is answered here: a hand-off to the
        // blocking pool and back costs more than the lookup.
        if let Some(entry) = self.jail.stat_cached(path) {
            return Ok(entry);
        }
        let p = path.clone();
        self.run(move |j| j.stat(&p)).await
    }

    async fn enter(&self, path: &VirtualPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.run(move |j| j.ensure_dir(&p)).await
    }

    async fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, VfsError> {
        let p = path.clone();
        self.run(move |j| j.list(&p)).await
    }

    async fn mkdir(&self, path: &VirtualPath, parents: bool) -> Result<Amount, VfsError> {
        let p = path.clone();
        self.run(move |j| {
            if !parents {
                return j.mkdir(&p, false).map(|()| Amount::dirs(1));
            }
            // Count the directories that did not exist, for the entry count.
            let mut missing = 0;
            let mut at = Some(p.clone());
            while let Some(q) = at.filter(|q| !q.is_root()) {
                if j.stat(&q).is_err() {
                    missing += 1;
                }
                at = q.parent();
            }
            j.mkdir(&p, true)?;
            Ok(Amount::dirs(missing))
        })
        .await
    }

    async fn remove_file(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let p = path.clone();
        self.run(move |j| j.remove_file(&p).map(Amount::file)).await
    }

    async fn remove_dir(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let p = path.clone();
        self.run(move |j| j.remove_dir(&p).map(|()| Amount::dirs(1))).await
    }

    async fn remove_tree(&self, path: &VirtualPath) -> Result<Amount, VfsError> {
        let p = path.clone();
        self.run(move |j| j.remove_tree_counted(&p).map(|(bytes, files, dirs)| Amount { bytes, files, dirs })).await
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> Result<Amount, VfsError> {
        let (f, t) = (from.clone(), to.clone());
        self.run(move |j| j.rename(&f, &t, overwrite).map(replaced)).await
    }

    async fn open_read(&self, path: &VirtualPath) -> Result<Box<dyn FileRead>, VfsError> {
        let p = path.clone();
        self.run(move |j| {
            let (file, entry) = j.open_read(&p)?;
            let recorded = Recorded::read(&file);
            Ok(Box::new(FsRead { file, entry, recorded, pool: Pool::new(READ_AT_POOLED, 2) }) as Box<dyn FileRead>)
        })
        .await
    }

    async fn read_small(
        &self,
        paths: Vec<VirtualPath>,
        max_each: u64,
        budget: u64,
        algo: HashAlgo,
    ) -> Vec<Result<Option<SmallFile>, VfsError>> {
        let (mut budget, mut room) = (budget, READ_SMALL_INLINE);
        let mut done = Vec::with_capacity(paths.len());
        for p in &paths {
            match read_one_cached(&self.jail, p, max_each, &mut budget, &mut room, algo) {
                Some(r) => done.push(r),
                None => break,
            }
        }
        if done.len() == paths.len() {
            return done;
        }
        let rest = paths[done.len()..].to_vec();
        let count = rest.len();
        let read = self
            .run(move |j| Ok(rest.iter().map(|p| read_one(j, p, max_each, &mut budget, algo)).collect::<Vec<_>>()))
            .await;
        done.extend(
            read.unwrap_or_else(|e| {
                (0..count).map(|_| Err(VfsError::Io(std::io::Error::other(e.to_string())))).collect()
            }),
        );
        done
    }

    async fn write_small(&self, files: Vec<SmallWrite>, fsync: bool) -> Vec<Result<Amount, VfsError>> {
        let count = files.len();
        let written = self.run(move |j| Ok(files.iter().map(|w| write_one(j, w, fsync)).collect::<Vec<_>>())).await;
        written
            .unwrap_or_else(|e| (0..count).map(|_| Err(VfsError::Io(std::io::Error::other(e.to_string())))).collect())
    }

    async fn partial_create(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        check_id(id)?;
        let (id, meta) = (id.to_string(), meta.clone());
        let jail = Arc::clone(&self.jail);
        self.run(move |j| {
            let dir = partials(j)?;
            // The data file first, created new: an id that is taken fails
            // here, before its partial's sidecar could be overwritten.
            let file = dir.open_with(
                format!("{id}.part"),
                cap_std::fs::OpenOptions::new().read(true).write(true).create_new(true),
            )?;
            if let Err(e) = write_meta(dir, &id, &meta) {
                let _ = dir.remove_file(format!("{id}.part"));
                return Err(e);
            }
            Ok(Box::new(FsPartial { jail, id, file: Some(file.into_std()) }) as Box<dyn PartialWrite>)
        })
        .await
    }

    async fn partial_open(&self, id: &str, meta: &PartialMeta) -> Result<Box<dyn PartialWrite>, VfsError> {
        check_id(id)?;
        let (id, meta) = (id.to_string(), meta.clone());
        let jail = Arc::clone(&self.jail);
        self.run(move |j| {
            let dir = partials(j)?;
            let file = dir.open_with(format!("{id}.part"), cap_std::fs::OpenOptions::new().read(true).write(true))?;
            write_meta(dir, &id, &meta)?;
            Ok(Box::new(FsPartial { jail, id, file: Some(file.into_std()) }) as Box<dyn PartialWrite>)
        })
        .await
    }

    async fn partial_info(&self, id: &str) -> Result<Option<PartialInfo>, VfsError> {
        if check_id(id).is_err() {
            return Ok(None);
        }
        let id = id.to_string();
        self.run(move |j| Ok(partial_info(partials(j)?, &id))).await
    }

    async fn partial_list(&self) -> Result<Vec<PartialInfo>, VfsError> {
        self.run(|j| {
            let dir = partials(j)?;
            let mut out = Vec::new();
            for entry in dir.entries()?.flatten() {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".part")) else { continue };
                if check_id(id).is_err() {
                    continue;
                }
                match partial_info(dir, id) {
                    Some(info) => out.push(info),
                    // A partial without its sidecar (cut between the two
                    // files): listed so that expiry can remove it.
                    None => {
                        let Ok(m) = entry.metadata() else { continue };
                        let modified = m.modified().map(|t| t.into_std()).unwrap_or(SystemTime::UNIX_EPOCH);
                        let meta = PartialMeta::default();
                        out.push(PartialInfo { id: id.to_string(), meta, len: m.len(), modified });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn partial_hash(&self, id: &str, len: u64, algo: HashAlgo) -> Result<(Hasher, u64), VfsError> {
        check_id(id)?;
        let id = id.to_string();
        self.run(move |j| {
            let mut file = partials(j)?.open(format!("{id}.part"))?.into_std();
            let mut hasher = Hasher::new(algo);
            let got = hash_reader(&mut file, len, &mut hasher)?;
            Ok((hasher, got))
        })
        .await
    }

    async fn partial_remove(&self, id: &str) -> Result<Amount, VfsError> {
        if check_id(id).is_err() {
            return Ok(Amount::default());
        }
        let id = id.to_string();
        self.run(move |j| Ok(remove_partial(partials(j)?, &id))).await
    }
}

struct FsPartial {
    jail: Arc<Jail>,
    id: String,
    /// `None` once handed to a blocking call that failed to give it back.
    file: Option<std::fs::File>,
}

impl FsPartial {
    fn file(&self) -> Result<&std::fs::File, VfsError> {
        self.file.as_ref().ok_or_else(|| VfsError::Io(std::io::Error::other("partial upload file lost")))
    }
}

#[async_trait]
impl PartialWrite for FsPartial {
    async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<(), VfsError> {
        let file = self.file.take().ok_or_else(|| VfsError::Io(std::io::Error::other("partial upload file lost")))?;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = file.write_all_at(&data, offset);
            (file, r)
        })
        .await
        .map_err(|_| VfsError::Io(std::io::Error::other("upload writer failed")))?;
        self.file = Some(file);
        result.map_err(VfsError::from)
    }

    fn write_at_blocking(&mut self, offset: u64, data: &[u8]) -> Option<Result<(), VfsError>> {
        Some(self.file().and_then(|f| f.write_all_at(data, offset).map_err(VfsError::from)))
    }

    async fn commit(
        self: Box<Self>,
        target: &VirtualPath,
        overwrite: bool,
        fsync: bool,
        hash: Option<(HashAlgo, &str)>,
    ) -> Result<Amount, VfsError> {
        let target = target.clone();
        let hash = hash.map(|(algo, hex)| (algo, hex.to_string()));
        let file = self.file()?.try_clone()?;
        let FsPartial { jail, id, .. } = *self;
        tokio::task::spawn_blocking(move || {
            check_target(&jail, &target, overwrite)?;
            let mut file = file;
            file.flush()?;
            if fsync {
                file.sync_all()?;
            }
            if let Some((algo, hex)) = &hash {
                record_hash(&file, *algo, hex);
            }
            let dir = partials(&jail)?;
            let freed = jail.rename_from_internal(dir, &format!("{id}.part"), &target, overwrite)?;
            let _ = dir.remove_file(format!("{id}.json"));
            Ok(replaced(freed))
        })
        .await
        .unwrap_or_else(|_| Err(VfsError::Io(std::io::Error::other("commit failed"))))
    }
}

/// Reads into all of `buf` from `offset`, or up to the end of the file:
/// the bytes read.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    // Bounded: each pass reads at least one byte or ends.
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

struct FsRead {
    file: std::fs::File,
    entry: Entry,
    recorded: Recorded,
    /// Buffers for `read_at` (an SFTP download's blocks), handed round
    /// while the file is read: see `crate::pool`.
    pool: Arc<Pool>,
}

/// `read_at`s of `READ_AT_POOLED_MIN` to `READ_AT_POOLED` bytes (SFTP's
/// read-ahead block) are read into the file's recycled buffers; two of
/// them: the block a session serves from and the next. A shorter read (a
/// small file whole) is not worth a mapping of its own.
const READ_AT_POOLED: usize = 256 * 1024;
const READ_AT_POOLED_MIN: usize = 64 * 1024;

#[async_trait]
impl FileRead for FsRead {
    fn entry(&self) -> &Entry {
        &self.entry
    }

    fn recorded_hash(&self, algo: HashAlgo) -> Option<String> {
        self.recorded.get(algo)
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }

    async fn stream(
        self: Box<Self>,
        offset: u64,
        hash: Option<HashAlgo>,
        tx: mpsc::Sender<Bytes>,
    ) -> std::io::Result<Option<String>> {
        let size = self.entry.size;
        tokio::task::spawn_blocking(move || read_blocks(self.file, offset, size, hash, tx))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("download reader failed")))
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        // A second descriptor on the same open file: the blocking read
        // needs one it owns, and pread leaves the shared offset alone.
        let file = self.file.try_clone()?;
        let pool = (READ_AT_POOLED_MIN..=READ_AT_POOLED).contains(&len).then(|| Arc::clone(&self.pool));
        tokio::task::spawn_blocking(move || match pool {
            Some(pool) => {
                let mut buf = pool.take();
                let n = read_full_at(&file, buf.fill(len), offset)?;
                buf.fill(n);
                Ok(buf.freeze())
            }
            None => {
                let mut buf = vec![0u8; len];
                let n = read_full_at(&file, &mut buf, offset)?;
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("read failed")))
    }

    async fn hash_prefix(self: Box<Self>, len: u64, algo: HashAlgo) -> std::io::Result<(String, u64)> {
        let mut file = self.file;
        tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::new(algo);
            let got = hash_reader(&mut file, len, &mut hasher)?;
            Ok((hasher.finalize_hex(), got))
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("hashing failed")))
    }
}

/// Reads `offset..size` of the file in blocks into the channel, hashing the
/// whole file (the prefix too) in `hash` when asked.
fn read_blocks(
    mut file: std::fs::File,
    offset: u64,
    size: u64,
    hash: Option<HashAlgo>,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<Option<String>> {
    let mut hasher = hash.map(Hasher::new);
    let before = file.metadata()?;
    file.seek(SeekFrom::Start(0))?;
    if let Some(h) = hasher.as_mut()
        && offset > 0
        && hash_reader(&mut file, offset, h)? < offset
    {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut left = size - offset.min(size);
    while left > 0 {
        let want = left.min(READ_BLOCK as u64) as usize;
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(want);
        let filled = (&mut file).take(want as u64).read_to_end(&mut buf)?;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        left -= filled as u64;
        if tx.blocking_send(Bytes::from(buf)).is_err() {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        }
        if filled < want {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
    }
    let Some(hasher) = hasher else { return Ok(None) };
    let algo = hasher.algo();
    let hex = hasher.finalize_hex();
    // Every byte was read: later downloads can skip the hashing, unless the
    // file changed during the read.
    if before.len() == size
        && let Ok(now) = file.metadata()
        && now.len() == before.len()
        && mtime_ns(&now) == mtime_ns(&before)
    {
        record_hash(&file, algo, &hex);
    }
    Ok(Some(hex))
}
