//! One SFTP session over the user's `Home`: the only layer that sees both
//! SFTP packets and the core (as `cmd/` is for the framed protocol). No
//! filesystem call and no quota counter here: every operation is a `Home`
//! call, which settles the quota itself.
//!
//! Requests are answered in order, one at a time (as OpenSSH's sftp-server
//! does); a reader task parses the next packets meanwhile, at most
//! `QUEUED_BYTES` ahead (each request weighing at least `MIN_WEIGHT`), so a
//! client that pipelines is never read without bound. The bound is in bytes,
//! not requests: a client may keep thousands of small reads in flight
//! (`sftp -R 256`); had the reader stopped at a count below that, russh
//! would block delivering the next request and never read the window
//! update our answers wait for.
//! Answers are written in batches: flushed when no parsed request waits.
//!
//! A client that pipelines and never reads (issue 14) is held, then cut:
//! answers wait in at most one batch (`FLUSH_AT` plus one answer) and in
//! the client's SSH window, which russh never overfills; while a write
//! waits, no request is answered, so the reader stops at `QUEUED_BYTES` and
//! russh stops reading the connection (its channel queue is bounded too).
//! A write that waits longer than the idle timeout ends the session.
//!
//! Open handles are capped per session (`sftp.max_handles`) and per user
//! across all their sessions (`sftp.max_handles_per_user`): each may hold a
//! file open, so one user cannot spend the server's file descriptors.
//! Directory handles hold their listing; past the first, a session holds at
//! most `HELD_ENTRIES` entries in them.
//!
//! Uploads are atomic: a file opened for writing is a `Home` upload, staged
//! and committed at close. Opening an existing file for writing without
//! `SSH_FXF_TRUNC` (what `reput` and editors do) stages a copy of it first,
//! so the file under its name changes only at close, whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::proto::{self, Attrs, Encoder, Request, Status};
use crate::home::{Download, Home, HomeError, Remove, Upload, UploadSpec};
use crate::metrics::{Direction, Frontend, Metrics, Transfer};
use crate::pool::Pool;
use crate::vfs::{Entry, EntryKind, VfsError, VirtualPath};

/// Bytes of parsed requests waiting to be answered, at most; each request
/// weighs its length, and at least `MIN_WEIGHT` (8,192 small requests).
/// An upload's writes wait here (OpenSSH sends 255 KiB each) when the home
/// falls behind: 8 MiB bounds that; 16 MiB bought no speed (bench/run.sh).
const QUEUED_BYTES: usize = 8 << 20;
const MIN_WEIGHT: usize = 1024;
/// Packets this long or longer (an upload's writes) are read into the
/// session's recycled buffers (`crate::pool`): they are freed on the thread
/// that writes them to the home, and the allocator held 15-25 MiB more
/// than the queue during a 1 GiB upload.
const POOLED: usize = 16 * 1024;
/// Bytes read from the home at once for a file being read; later reads are
/// served from this block while they fall inside it.
const READ_AHEAD: usize = 256 * 1024;
/// Answers buffered before a flush, at most.
const FLUSH_AT: usize = 256 * 1024;
/// Entries per NAME answer of a directory listing.
const NAMES_PER_ANSWER: usize = 128;
/// Directory entries a session may hold in open directory handles beyond
/// its first listing (which may be any size, as a framed `ls` may):
/// roughly 10-20 MiB of names.
const HELD_ENTRIES: usize = 1 << 17;
/// How long the channel's last words (exit status, end of data) may take
/// once the session is over.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// What the session knows of its server.
pub struct Settings {
    pub user: String,
    pub max_handles: usize,
    /// The user's open handles across all their sessions.
    pub user_handles: Arc<Semaphore>,
    pub keep_cut_uploads: bool,
    /// Longest wait for the client to take an answer (the idle timeout).
    pub write_timeout: Duration,
    /// The server's metrics: each file handle is a transfer.
    pub metrics: Arc<Metrics>,
}

enum Handle {
    Dir { entries: Vec<Entry>, next: usize },
    Read { download: Download, cache: (u64, Bytes), transfer: Transfer },
    Write(Box<Writing>),
}

struct Writing {
    upload: Option<Upload>,
    target: VirtualPath,
    /// Bytes of the existing file to copy into the upload before the first
    /// write (opened without truncation); copied at most once.
    base: Option<u64>,
    append: bool,
    written: bool,
    /// The first failed write: the upload is discarded at close.
    failed: Option<String>,
    transfer: Transfer,
}

/// Serves SFTP on `stream` until the client closes it or the server stops;
/// then runs `finish` (the channel's exit status) before the stream closes
/// the channel.
pub async fn run<S>(
    stream: S,
    home: Arc<Home>,
    settings: Settings,
    shutdown: CancellationToken,
    finish: impl std::future::Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel(QUEUED_BYTES / MIN_WEIGHT);
    let budget = Arc::new(Semaphore::new(QUEUED_BYTES));
    let read_task = tokio::spawn(read_packets(reader, tx, budget));
    let mut s = Sftp {
        home,
        settings,
        handles: HashMap::new(),
        seats: HashMap::new(),
        held_entries: 0,
        next_handle: 0,
        out: Encoder::default(),
    };
    let mut requests = 0u64;
    loop {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.cancelled() => None,
        };
        // The request's weight goes back to the reader once it is answered.
        let Some((packet, _weight)) = next else { break };
        let keep_going = match packet {
            Ok(req) => {
                requests += 1;
                s.answer(req).await
            }
            Err(e) => {
                // A packet that parsed badly but framed well gets an answer;
                // one without even an id ends the session.
                match e.id {
                    Some(id) => {
                        s.out.status(id, Status::BadMessage, e.message);
                        true
                    }
                    None => {
                        warn!(user = %s.settings.user, error = e.message, "sftp: malformed packet; closing");
                        false
                    }
                }
            }
        };
        if s.out.buf.len() >= FLUSH_AT || rx.is_empty() || !keep_going {
            let out = std::mem::take(&mut s.out.buf);
            let written = async {
                writer.write_all(&out).await?;
                writer.flush().await
            };
            match tokio::time::timeout(s.settings.write_timeout, written).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    warn!(
                        user = %s.settings.user,
                        secs = s.settings.write_timeout.as_secs(),
                        "sftp: the client took no answer for the idle timeout; closing"
                    );
                    break;
                }
            }
            // Keep the allocation for the next batch.
            s.out.buf = reuse(out);
        }
        if !keep_going {
            break;
        }
    }
    // Nothing more is read: the reader and its queue go now, so that what
    // they held is freed whatever the client still sends.
    drop(rx);
    read_task.abort();
    s.end().await;
    // Before the stream goes: dropping it closes the channel, and a close
    // before the exit status makes scp fail. Bounded, as the client may be
    // taking nothing.
    let _ = tokio::time::timeout(LAST_WORDS, finish).await;
    let _ = tokio::time::timeout(LAST_WORDS, writer.shutdown()).await;
    debug!(user = %s.settings.user, requests, "sftp session ended");
}

fn reuse(mut b: BytesMut) -> BytesMut {
    b.clear();
    b
}

/// Reads length-prefixed packets and parses them. A length over the cap is
/// a protocol violation: the session ends (answering would mean reading it).
type Parsed = (Result<Request, proto::DecodeError>, Option<OwnedSemaphorePermit>);

async fn read_packets<R: AsyncRead>(reader: R, tx: mpsc::Sender<Parsed>, budget: Arc<Semaphore>) {
    tokio::pin!(reader);
    // Buffers kept for a queue full of the largest writes, the packet being
    // read and the one being written.
    let pool = Pool::new(proto::MAX_PACKET as usize, QUEUED_BYTES / proto::MAX_READ as usize + 2);
    loop {
        let Ok(len) = reader.read_u32().await else { return };
        if len == 0 || len > proto::MAX_PACKET {
            warn!(len, "sftp: packet length out of bounds; closing");
            let _ = tx.send((Err(proto::DecodeError { id: None, message: "packet too large" }), None)).await;
            return;
        }
        let weight = (len as usize).max(MIN_WEIGHT) as u32;
        let Ok(permit) = Arc::clone(&budget).acquire_many_owned(weight).await else { return };
        let len = len as usize;
        let body = if len >= POOLED {
            let mut buf = pool.take();
            reader.read_exact(buf.fill(len)).await.map(|_| buf.freeze())
        } else {
            let mut buf = BytesMut::zeroed(len);
            reader.read_exact(&mut buf).await.map(|_| buf.freeze())
        };
        let Ok(body) = body else { return };
        if tx.send((proto::decode(body), Some(permit))).await.is_err() {
            return;
        }
    }
}

struct Sftp {
    home: Arc<Home>,
    settings: Settings,
    handles: HashMap<Bytes, Handle>,
    /// Each open handle's place in the user's budget, freed at its close.
    seats: HashMap<Bytes, OwnedSemaphorePermit>,
    /// Entries held by the open directory handles.
    held_entries: usize,
    next_handle: u64,
    out: Encoder,
}

/// An answer that is a status.
struct Fail(Status, String);

impl From<HomeError> for Fail {
    fn from(e: HomeError) -> Self {
        let status = match &e {
            HomeError::Vfs(VfsError::NotFound(_)) => Status::NoSuchFile,
            HomeError::Vfs(VfsError::PermissionDenied(_)) | HomeError::Vfs(VfsError::OutsideHome(_)) => {
                Status::PermissionDenied
            }
            _ => Status::Failure,
        };
        Fail(status, e.to_string())
    }
}

impl From<VfsError> for Fail {
    fn from(e: VfsError) -> Self {
        HomeError::from(e).into()
    }
}

fn fail(status: Status, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

/// A client path as a path in the home (relative paths start at the home:
/// SFTP has no working directory on the server).
fn path(p: &str) -> Result<VirtualPath, Fail> {
    Ok(VirtualPath::parse(p)?)
}

/// `realpath`: as a chroot does, `..` at the top stays at the top.
fn canonical(p: &str) -> Result<VirtualPath, Fail> {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    path(&format!("/{}", parts.join("/")))
}

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn attrs_of(e: &Entry) -> Attrs {
    let kind = match e.kind {
        EntryKind::File => S_IFREG,
        EntryKind::Dir => S_IFDIR,
        EntryKind::Symlink => S_IFLNK,
        EntryKind::Other => 0,
    };
    let mtime = e.mtime.clamp(0, u32::MAX as i64) as u32;
    Attrs {
        size: Some(e.size),
        uid_gid: None,
        permissions: Some((e.mode & 0o7777) | kind),
        atime_mtime: Some((mtime, mtime)),
    }
}

/// The `ls -l` line clients print for an entry.
fn long_name(e: &Entry, user: &str) -> String {
    let mut mode = String::with_capacity(10);
    mode.push(match e.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File => '-',
        EntryKind::Other => '?',
    });
    for shift in [6u32, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let when = jiff::Timestamp::from_second(e.mtime)
        .ok()
        .and_then(|t| jiff::fmt::strtime::format("%b %d %H:%M", t).ok())
        .unwrap_or_else(|| "Jan 01  1970".into());
    format!("{mode} 1 {user:<8} {user:<8} {:>8} {when} {}", e.size, e.name)
}

impl Sftp {
    /// Answers one request; false ends the session.
    async fn answer(&mut self, req: Request) -> bool {
        let id = match &req {
            Request::Init { .. } => None,
            Request::Open { id, .. }
            | Request::Close { id, .. }
            | Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::Lstat { id, .. }
            | Request::Fstat { id, .. }
            | Request::SetStat { id, .. }
            | Request::FSetStat { id, .. }
            | Request::OpenDir { id, .. }
            | Request::ReadDir { id, .. }
            | Request::Remove { id, .. }
            | Request::MkDir { id, .. }
            | Request::RmDir { id, .. }
            | Request::RealPath { id, .. }
            | Request::Stat { id, .. }
            | Request::Rename { id, .. }
            | Request::ReadLink { id, .. }
            | Request::Symlink { id }
            | Request::PosixRename { id, .. }
            | Request::StatVfs { id, .. }
            | Request::FStatVfs { id, .. }
            | Request::Fsync { id, .. }
            | Request::Limits { id }
            | Request::Hardlink { id }
            | Request::ExpandPath { id, .. }
            | Request::Extended { id, .. } => Some(*id),
        };
        let Some(id) = id else {
            // SSH_FXP_INIT: we speak version 3 whatever the client offers
            // above it (section 4).
            self.out.version(&[
                ("posix-rename@openssh.com", "1"),
                ("statvfs@openssh.com", "2"),
                ("fstatvfs@openssh.com", "2"),
                ("fsync@openssh.com", "1"),
                ("limits@openssh.com", "1"),
                ("expand-path@openssh.com", "1"),
            ]);
            return true;
        };
        if let Err(Fail(status, message)) = self.dispatch(id, req).await {
            self.out.status(id, status, &message);
        }
        true
    }

    async fn dispatch(&mut self, id: u32, req: Request) -> Result<(), Fail> {
        match req {
            Request::Init { .. } => {}
            Request::Open { path: p, flags, .. } => self.open(id, &p, flags).await?,
            Request::Close { handle, .. } => self.close(id, &handle).await?,
            Request::Read { handle, offset, len, .. } => self.read(id, &handle, offset, len).await?,
            Request::Write { handle, offset, data, .. } => self.write(id, &handle, offset, data).await?,
            Request::Stat { path: p, .. } | Request::Lstat { path: p, .. } => {
                let e = self.home.stat(&path(&p)?).await?;
                self.out.attrs_reply(id, &attrs_of(&e));
            }
            Request::Fstat { handle, .. } => {
                let attrs = match self.handles.get(&handle) {
                    Some(Handle::Read { download, .. }) => attrs_of(download.entry()),
                    Some(Handle::Write(w)) => {
                        let len = w.upload.as_ref().map_or(0, |u| u.len()).max(w.base.unwrap_or(0));
                        Attrs { size: Some(len), permissions: Some(S_IFREG | 0o644), ..Attrs::default() }
                    }
                    Some(Handle::Dir { .. }) => Attrs { permissions: Some(S_IFDIR | 0o755), ..Attrs::default() },
                    None => return Err(bad_handle()),
                };
                self.out.attrs_reply(id, &attrs);
            }
            Request::SetStat { path: p, attrs, .. } => {
                let e = self.home.stat(&path(&p)?).await?;
                check_setstat(&attrs, Some(e.size))?;
                self.out.status(id, Status::Ok, "");
            }
            Request::FSetStat { handle, attrs, .. } => {
                let size = match self.handles.get(&handle) {
                    Some(Handle::Read { download, .. }) => Some(download.entry().size),
                    Some(Handle::Write(w)) => Some(w.upload.as_ref().map_or(0, |u| u.len()).max(w.base.unwrap_or(0))),
                    Some(Handle::Dir { .. }) => None,
                    None => return Err(bad_handle()),
                };
                check_setstat(&attrs, size)?;
                self.out.status(id, Status::Ok, "");
            }
            Request::OpenDir { path: p, .. } => {
                let p = path(&p)?;
                self.check_handles()?;
                self.home.enter(&p).await?;
                let entries = self.home.list_dir(&p).await?;
                let count = entries.len();
                if self.held_entries > 0 && self.held_entries + count > HELD_ENTRIES {
                    return Err(fail(
                        Status::Failure,
                        format!(
                            "too many directory entries held open in this session; close a directory first ({count} more would pass {HELD_ENTRIES})"
                        ),
                    ));
                }
                let h = self.add_handle(Handle::Dir { entries, next: 0 })?;
                self.held_entries += count;
                self.out.handle(id, &h);
            }
            Request::ReadDir { handle, .. } => {
                let user = self.settings.user.clone();
                let Some(Handle::Dir { entries, next }) = self.handles.get_mut(&handle) else {
                    return Err(bad_handle());
                };
                if *next >= entries.len() {
                    return Err(fail(Status::Eof, "end of directory"));
                }
                let end = (*next + NAMES_PER_ANSWER).min(entries.len());
                let names: Vec<_> =
                    entries[*next..end].iter().map(|e| (e.name.clone(), long_name(e, &user), attrs_of(e))).collect();
                *next = end;
                self.out.name(id, &names);
            }
            Request::Remove { path: p, .. } => {
                self.home.remove(&path(&p)?, Remove::File).await?;
                self.out.status(id, Status::Ok, "");
            }
            Request::MkDir { path: p, .. } => {
                self.home.mkdir(&path(&p)?, false).await?;
                self.out.status(id, Status::Ok, "");
            }
            Request::RmDir { path: p, .. } => {
                self.home.remove(&path(&p)?, Remove::EmptyDir).await?;
                self.out.status(id, Status::Ok, "");
            }
            Request::RealPath { path: p, .. } => {
                let vp = canonical(&p)?;
                let name = vp.to_string();
                self.out.name(id, &[(name.clone(), name, Attrs::default())]);
            }
            Request::ExpandPath { path: p, .. } => {
                let rest = p.strip_prefix('~').map(|r| r.to_string()).unwrap_or(p);
                let vp = canonical(&rest)?;
                let name = vp.to_string();
                self.out.name(id, &[(name.clone(), name, Attrs::default())]);
            }
            Request::Rename { from, to, .. } => {
                // SFTP v3 rename never replaces (as OpenSSH's sftp-server).
                self.home.rename(&path(&from)?, &path(&to)?, false).await?;
                self.out.status(id, Status::Ok, "");
            }
            Request::PosixRename { from, to, .. } => {
                self.home.rename(&path(&from)?, &path(&to)?, true).await?;
                self.out.status(id, Status::Ok, "");
            }
            Request::ReadLink { .. } => {
                return Err(fail(Status::OpUnsupported, "links are not read through SFTP"));
            }
            Request::Symlink { .. } | Request::Hardlink { .. } => {
                return Err(fail(Status::PermissionDenied, "symbolic and hard links are refused"));
            }
            Request::StatVfs { path: p, .. } => {
                self.home.stat(&path(&p)?).await?;
                self.statvfs(id);
            }
            Request::FStatVfs { handle, .. } => {
                if !self.handles.contains_key(&handle) {
                    return Err(bad_handle());
                }
                self.statvfs(id);
            }
            Request::Fsync { handle, .. } => {
                // Uploads are synced at commit (close) when `transfer.fsync`
                // is on; before that they are not the file yet.
                if !self.handles.contains_key(&handle) {
                    return Err(bad_handle());
                }
                self.out.status(id, Status::Ok, "");
            }
            Request::Limits { .. } => {
                let fields = [
                    proto::MAX_PACKET as u64,
                    proto::MAX_READ as u64,
                    proto::MAX_WRITE as u64,
                    self.settings.max_handles as u64,
                ];
                self.out.extended_u64s(id, &fields);
            }
            Request::Extended { name, .. } => {
                return Err(fail(Status::OpUnsupported, format!("{name} is not supported")));
            }
        }
        Ok(())
    }

    /// `df` in sftp: the user's quota as a filesystem of 4 KiB blocks.
    fn statvfs(&mut self, id: u32) {
        const BLOCK: u64 = 4096;
        let u = self.home.usage();
        let used = u.used + u.reserved;
        // Unlimited shows as a petabyte more than what is used.
        let total = u.limit.unwrap_or(used + (1 << 50));
        let free = total.saturating_sub(used);
        let (blocks, bfree) = (total / BLOCK, free / BLOCK);
        let names = crate::vfs::MAX_NAME as u64;
        // f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_fsid f_flag f_namemax
        self.out.extended_u64s(id, &[BLOCK, BLOCK, blocks, bfree, bfree, 0, 0, 0, 0, 0, names]);
    }

    /// Refuses a new handle over either cap, before any work is done for it.
    fn check_handles(&self) -> Result<(), Fail> {
        if self.handles.len() >= self.settings.max_handles {
            return Err(fail(
                Status::Failure,
                format!(
                    "too many open files in this session (at most {}); close some first",
                    self.settings.max_handles
                ),
            ));
        }
        if self.settings.user_handles.available_permits() == 0 {
            return Err(too_many_for_user());
        }
        Ok(())
    }

    fn add_handle(&mut self, h: Handle) -> Result<Bytes, Fail> {
        self.check_handles()?;
        let seat = Arc::clone(&self.settings.user_handles).try_acquire_owned().map_err(|_| too_many_for_user())?;
        self.next_handle += 1;
        let key = Bytes::from(self.next_handle.to_string());
        self.handles.insert(key.clone(), h);
        self.seats.insert(key.clone(), seat);
        Ok(key)
    }

    /// Forgets a handle, freeing its seat and what it held.
    fn remove_handle(&mut self, key: &Bytes) -> Option<Handle> {
        self.seats.remove(key);
        let h = self.handles.remove(key)?;
        if let Handle::Dir { entries, .. } = &h {
            self.held_entries = self.held_entries.saturating_sub(entries.len());
        }
        Some(h)
    }

    async fn open(&mut self, id: u32, p: &str, flags: u32) -> Result<(), Fail> {
        let target = path(p)?;
        self.check_handles()?;
        if flags & proto::SSH_FXF_WRITE == 0 && flags & proto::SSH_FXF_APPEND == 0 {
            let download = self.home.open_download(&target, 0).await?;
            let transfer = self.settings.metrics.transfer(Frontend::Sftp, Direction::Download);
            let h = self.add_handle(Handle::Read { download, cache: (0, Bytes::new()), transfer })?;
            self.out.handle(id, &h);
            return Ok(());
        }
        let existing = match self.home.stat(&target).await {
            Ok(e) => Some(e),
            Err(HomeError::Vfs(VfsError::NotFound(_))) => None,
            Err(e) => return Err(e.into()),
        };
        let excl = flags & proto::SSH_FXF_EXCL != 0;
        match &existing {
            None if flags & proto::SSH_FXF_CREAT == 0 => {
                return Err(fail(Status::NoSuchFile, format!("{target}: no such file")));
            }
            Some(_) if excl => return Err(fail(Status::Failure, format!("{target} already exists"))),
            Some(e) if e.kind == EntryKind::Dir => {
                return Err(fail(Status::Failure, format!("{target}: is a directory")));
            }
            _ => {}
        }
        let base = match &existing {
            Some(e) if flags & proto::SSH_FXF_TRUNC == 0 => Some(e.size),
            _ => None,
        };
        let spec = UploadSpec {
            size: None,
            overwrite: !excl,
            resumable: false,
            algo: self.home.upload_algo(),
            ..UploadSpec::default()
        };
        let upload = self.home.begin_upload(&target, spec).await?;
        let w = Writing {
            upload: Some(upload),
            target,
            base,
            append: flags & proto::SSH_FXF_APPEND != 0,
            written: false,
            failed: None,
            transfer: self.settings.metrics.transfer(Frontend::Sftp, Direction::Upload),
        };
        let h = self.add_handle(Handle::Write(Box::new(w)))?;
        self.out.handle(id, &h);
        Ok(())
    }

    async fn read(&mut self, id: u32, handle: &Bytes, offset: u64, len: u32) -> Result<(), Fail> {
        let Some(Handle::Read { download, cache, transfer }) = self.handles.get_mut(handle) else {
            return match self.handles.get(handle) {
                Some(_) => Err(fail(Status::Failure, "this handle is not open for reading")),
                None => Err(bad_handle()),
            };
        };
        let len = len.min(proto::MAX_READ) as usize;
        let (start, block) = cache;
        let inside = offset >= *start && offset < *start + block.len() as u64;
        let covers = inside && (offset + len as u64 <= *start + block.len() as u64 || block.len() < READ_AHEAD);
        if !covers {
            let fresh = download.read_at(offset, len.max(READ_AHEAD)).await?;
            *cache = (offset, fresh);
        }
        let (start, block) = &*cache;
        let from = (offset - start) as usize;
        if from >= block.len() {
            return Err(fail(Status::Eof, "end of file"));
        }
        let to = (from + len).min(block.len());
        transfer.add((to - from) as u64);
        self.out.data(id, &block[from..to]);
        Ok(())
    }

    async fn write(&mut self, id: u32, handle: &Bytes, offset: u64, data: Bytes) -> Result<(), Fail> {
        let Some(Handle::Write(w)) = self.handles.get_mut(handle) else {
            return match self.handles.get(handle) {
                Some(_) => Err(fail(Status::PermissionDenied, "this handle is not open for writing")),
                None => Err(bad_handle()),
            };
        };
        if let Some(e) = &w.failed {
            return Err(fail(Status::Failure, format!("an earlier write failed: {e}")));
        }
        let len = data.len() as u64;
        let result = write_into(&self.home, w, offset, data).await;
        if result.is_ok() {
            w.transfer.add(len);
        }
        if let Err(Fail(_, message)) = &result {
            warn!(user = %self.settings.user, path = %w.target, error = %message, "sftp write refused; upload discarded at close");
            w.failed = Some(message.clone());
        }
        result?;
        self.out.status(id, Status::Ok, "");
        Ok(())
    }

    async fn close(&mut self, id: u32, handle: &Bytes) -> Result<(), Fail> {
        let Some(h) = self.remove_handle(handle) else { return Err(bad_handle()) };
        if let Handle::Read { transfer, .. } = h {
            transfer.finish();
        } else if let Handle::Write(mut w) = h {
            let Some(upload) = w.upload.take() else { return Err(bad_handle()) };
            if let Some(e) = w.failed {
                upload.abort().await;
                return Err(fail(Status::Failure, format!("{}: not saved: {e}", w.target)));
            }
            if w.base.is_some() && !w.written {
                // Opened without truncation and never written: unchanged.
                upload.abort().await;
            } else {
                let committed = upload.commit(None).await?;
                info!(user = %self.settings.user, path = %w.target, bytes = committed.size, "sftp upload committed");
                w.transfer.finish();
            }
        }
        self.out.status(id, Status::Ok, "");
        Ok(())
    }

    /// At the end of the session: uploads never closed are discarded, or
    /// committed as they are with `keep_cut_uploads` (for `reput`).
    async fn end(&mut self) {
        self.seats.clear();
        for (_, h) in self.handles.drain() {
            let Handle::Write(mut w) = h else { continue };
            let Some(upload) = w.upload.take() else { continue };
            if self.settings.keep_cut_uploads && w.failed.is_none() && (w.base.is_none() || w.written) {
                match upload.commit(None).await {
                    Ok(c) => info!(path = %w.target, bytes = c.size, "sftp: cut upload kept under its name"),
                    Err(e) => warn!(path = %w.target, error = %e, "sftp: cut upload lost"),
                }
            } else {
                info!(path = %w.target, "sftp: upload not closed; discarded");
                upload.abort().await;
            }
        }
    }
}

fn too_many_for_user() -> Fail {
    fail(Status::Failure, "too many open files for this user across sessions; close some first")
}

fn bad_handle() -> Fail {
    fail(Status::Failure, "invalid handle")
}

/// Accepts what a client sends with `put -p`, `chmod` and `touch`-like
/// calls, within reason: permission bits and times are taken without being
/// stored (files keep the server's own mode); setuid, setgid and sticky
/// bits, owners and size changes are refused.
fn check_setstat(attrs: &Attrs, size: Option<u64>) -> Result<(), Fail> {
    if attrs.permissions.is_some_and(|p| p & 0o7000 != 0) {
        return Err(fail(Status::PermissionDenied, "setuid, setgid and sticky bits are refused"));
    }
    if attrs.uid_gid.is_some() {
        return Err(fail(Status::PermissionDenied, "changing the owner is refused"));
    }
    if let Some(want) = attrs.size
        && Some(want) != size
    {
        return Err(fail(Status::OpUnsupported, "changing a file's size is not supported"));
    }
    Ok(())
}

/// One write into an upload, copying the existing file first when it was
/// opened without truncation.
async fn write_into(home: &Arc<Home>, w: &mut Writing, offset: u64, data: Bytes) -> Result<(), Fail> {
    let upload = w.upload.as_mut().ok_or_else(bad_handle)?;
    if let Some(size) = w.base
        && !w.written
    {
        copy_existing(home, &w.target, size, upload).await?;
    }
    w.written = true;
    let at = if w.append { upload.len() } else { offset };
    upload.write_at(at, data).await?;
    Ok(())
}

/// Stages the first `size` bytes of `target` into `upload`, through the home.
async fn copy_existing(home: &Arc<Home>, target: &VirtualPath, size: u64, upload: &mut Upload) -> Result<(), Fail> {
    let download = home.open_download(target, 0).await?;
    let mut at = 0u64;
    // Bounded: each pass moves at least one byte or ends.
    while at < size {
        let want = (size - at).min(READ_AHEAD as u64) as usize;
        let block = download.read_at(at, want).await?;
        if block.is_empty() {
            break;
        }
        let n = block.len() as u64;
        upload.write_at(at, block).await?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realpath_stays_in_the_home() {
        assert_eq!(canonical("/..").ok().map(|p| p.to_string()), Some("/".to_string()));
        assert_eq!(canonical("a/../../b").ok().map(|p| p.to_string()), Some("/b".to_string()));
        assert_eq!(canonical(".").ok().map(|p| p.to_string()), Some("/".to_string()));
        assert!(path("/../etc/passwd").is_err());
    }

    /// Raw packets over an in-memory stream, to a session on a home in memory.
    struct Client(tokio::io::DuplexStream);

    impl Client {
        async fn send(&mut self, kind: u8, id: Option<u32>, fields: &[&[u8]]) {
            let mut body = vec![kind];
            if let Some(id) = id {
                body.extend_from_slice(&id.to_be_bytes());
            }
            for f in fields {
                body.extend_from_slice(f);
            }
            let mut packet = (body.len() as u32).to_be_bytes().to_vec();
            packet.extend_from_slice(&body);
            self.0.write_all(&packet).await.unwrap();
        }

        /// The next answer: its type and what follows its id.
        async fn answer(&mut self) -> (u8, Vec<u8>) {
            let len = self.0.read_u32().await.unwrap() as usize;
            let mut body = vec![0u8; len];
            self.0.read_exact(&mut body).await.unwrap();
            (body[0], body[5..].to_vec())
        }

        async fn open_dir(&mut self, id: u32, dir: &str) -> (u8, Vec<u8>) {
            self.send(11, Some(id), &[&string(dir.as_bytes())]).await;
            self.answer().await
        }
    }

    fn string(b: &[u8]) -> Vec<u8> {
        let mut s = (b.len() as u32).to_be_bytes().to_vec();
        s.extend_from_slice(b);
        s
    }

    /// Issue 14: directory handles hold their listings; past the first, a
    /// session holds at most `HELD_ENTRIES` entries in them.
    #[tokio::test]
    async fn listings_held_in_open_directories_are_bounded() {
        use crate::home::{HashAlgo, HomeSettings};
        use crate::quota::UserQuota;
        let storage: Arc<dyn crate::storage::Storage> = Arc::new(crate::storage::MemStorage::new());
        let quota = Arc::new(UserQuota::new(0, None));
        let settings =
            HomeSettings { fsync: false, partial_expiry: Duration::from_secs(3600), upload_algo: HashAlgo::Sha256 };
        let home = Arc::new(Home::new(storage, quota, settings));
        let vp = |s: &str| VirtualPath::parse(s).unwrap();
        home.mkdir(&vp("/small/one"), true).await.unwrap();
        home.mkdir(&vp("/big"), false).await.unwrap();
        for i in 0..HELD_ENTRIES {
            home.mkdir(&vp(&format!("/big/{i}")), false).await.unwrap();
        }
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let settings = Settings {
            user: "u".into(),
            max_handles: 16,
            user_handles: Arc::new(Semaphore::new(16)),
            keep_cut_uploads: false,
            write_timeout: Duration::from_secs(30),
            metrics: Arc::new(Metrics::new()),
        };
        let session = tokio::spawn(run(theirs, home, settings, CancellationToken::new(), async {}));
        let mut c = Client(ours);
        c.send(proto::SSH_FXP_INIT, None, &[&3u32.to_be_bytes()]).await;
        assert_eq!(c.answer().await.0, proto::SSH_FXP_VERSION);
        let (kind, small) = c.open_dir(1, "/small").await;
        assert_eq!(kind, 102, "a handle");
        let (kind, refused) = c.open_dir(2, "/big").await;
        assert_eq!(kind, 101, "a status");
        assert!(String::from_utf8_lossy(&refused).contains("too many directory entries held open"));
        // Closing the small one frees its entries: any one listing fits.
        c.send(4, Some(3), &[&small]).await;
        assert_eq!(c.answer().await.0, 101);
        assert_eq!(c.open_dir(4, "/big").await.0, 102);
        drop(c);
        session.await.unwrap();
    }

    #[test]
    fn setuid_is_refused() {
        let a = Attrs { permissions: Some(0o4755), ..Attrs::default() };
        assert!(check_setstat(&a, None).is_err());
        let a = Attrs { permissions: Some(0o644), atime_mtime: Some((1, 2)), ..Attrs::default() };
        assert!(check_setstat(&a, None).is_ok());
    }
}
