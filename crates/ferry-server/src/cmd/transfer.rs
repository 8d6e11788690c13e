//! put, get, hash and upload_status: the wire side of the transfer core.
//!
//! File data moves between the socket and a blocking thread through a small
//! bounded channel, so network I/O (and TLS) runs on the async side while
//! disk I/O and hashing run beside it, and memory stays bounded by the
//! channel (a few MiB) whatever the file size.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Instant;

use bytes::Bytes;
use ferry_proto::msg::{error_header, ok_header};
use ferry_proto::{ErrorCode, FrameError, Request, WireError};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::fs::resolve;
use super::{Reply, blocking};
use crate::quota::Reservation;
use crate::session::{Conn, Session};
use crate::stream::Stream;
use crate::transfer::{self, PartialUpload, READ_BLOCK, TransferError};
use crate::vfs::{Entry, EntryKind, Jail, VirtualPath};

/// File blocks in flight between the socket and the disk thread (a few, so
/// that memory stays small and blocks stay in cache).
const PIPE_DEPTH: usize = 4;

impl From<TransferError> for WireError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Vfs(v) => v.into(),
            TransferError::UploadNotFound(_) | TransferError::OffsetMismatch { .. } => {
                WireError::new(ErrorCode::UploadNotFound, e.to_string())
            }
            TransferError::ChecksumMismatch { .. } => WireError::new(ErrorCode::ChecksumMismatch, e.to_string()),
            TransferError::Busy(_) => WireError::new(ErrorCode::Busy, e.to_string()),
            TransferError::BadHash(_) => WireError::new(ErrorCode::BadRequest, e.to_string()),
        }
    }
}

impl From<TransferError> for Reply {
    fn from(e: TransferError) -> Self {
        Reply::Wire(e.into())
    }
}

pub struct PutArgs {
    pub path: String,
    pub size: u64,
    pub offset: u64,
    pub upload_id: Option<String>,
    pub sha256: Option<String>,
    pub overwrite: bool,
    pub wait: bool,
    pub body_len: u64,
}

/// Uploads up to this size that ask for no `ready` take the small-file path:
/// one blocking call does the checks, the write, the sync and the rename.
const SMALL_PUT: u64 = 256 * 1024;

pub async fn put(session: &mut Session, conn: &mut Conn, id: u64, a: PutArgs) -> Result<(), Reply> {
    if is_small_put(&a) {
        return put_small(session, conn, id, a).await;
    }
    let started = Instant::now();
    let prepared = prepare_put(session, &a).await;
    let (upload, reservation, guard) = match prepared {
        Ok(p) => p,
        Err(e) => {
            // Without `wait` the client sends the body and put_end anyway:
            // consume both so that exactly one answer goes back. With `wait`
            // nothing was sent yet: the refusal is the whole answer.
            if !a.wait {
                conn.skip_body().await?;
                let _ = read_put_end(conn, id).await?;
            }
            return Err(e.into());
        }
    };
    // The sidecar landed with the partial; it is settled with the data, or
    // alone when the upload ends before its body.
    let meta_len = upload.meta_len;
    if a.wait
        && let Err(e) = exchange_ready(conn, id, &upload, a.size - a.offset).await
    {
        reservation.settle(meta_len);
        return Err(e);
    }
    let target = resolve(session, &a.path)?;
    let upload_id = upload.id.clone();

    // Disk side: hash what is already there (a resume), then write and hash each block.
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut result = if upload.offset > 0 { upload.hash_prefix(&mut hasher) } else { Ok(()) };
        while let Some(block) = rx.blocking_recv() {
            if result.is_ok() {
                match upload.file.write_all(&block) {
                    Ok(()) => {
                        hasher.update(&block);
                        written += block.len() as u64;
                    }
                    Err(e) => result = Err(e.into()),
                }
            }
        }
        (upload, hasher, written, result)
    });

    // Network side. A peer silent for the idle timeout in the middle of a
    // body is gone: the partial stays for a resume.
    let idle = session.shared.config.idle_timeout();
    let mut stream_err = None;
    loop {
        let chunk = tokio::time::timeout(idle, conn.read_body_chunk()).await.unwrap_or_else(|_| Err(stalled()));
        match chunk {
            Ok(Some(chunk)) => {
                // A failed disk thread stops receiving; keep draining the body.
                let _ = tx.send(chunk).await;
            }
            Ok(None) => break,
            Err(e) => {
                stream_err = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let (upload, hasher, written, disk_result) =
        writer.await.map_err(|_| WireError::new(ErrorCode::Internal, "upload writer failed"))?;
    // What reached the partial counts from here on, whatever happens next
    // (a commit or a discard then releases what leaves the disk).
    reservation.settle(written + meta_len);

    if let Some(e) = stream_err {
        // Cut mid-body: the partial stays for a resume and counts against the quota.
        warn!(path = %target, bytes = written, "upload cut; partial kept for resume");
        drop(guard);
        return Err(Reply::Stream(e));
    }
    let end_hash = read_put_end(conn, id).await?;
    disk_result?;
    let expected = end_hash.and_then(|h| transfer::validate_sha256(&h).map_err(WireError::from))?;
    let actual = hex::encode(hasher.finalize());
    let header_hash = upload.meta.sha256.clone();
    let fsync = session.shared.config.transfer.fsync;
    let overwrite = a.overwrite;
    let t = target.clone();
    let actual_hash = actual.clone();
    let committed = blocking(&session.jail, move |j| {
        if let Some(h) = header_hash.filter(|h| !h.eq_ignore_ascii_case(&expected)) {
            let freed = upload.discard();
            return Ok(Err((TransferError::ChecksumMismatch { expected: h, actual: expected }, freed)));
        }
        match upload.commit(j, &t, &actual_hash, &expected, overwrite, fsync) {
            Ok(replaced) => Ok(Ok(replaced)),
            Err(e) => Ok(Err((e, 0))),
        }
    })
    .await?;
    drop(guard);
    match committed {
        Ok((replaced, meta_freed)) => {
            session.quota.release(replaced.unwrap_or(0) + meta_freed);
            let elapsed = started.elapsed();
            info!(path = %target, bytes = a.size, sent = written, ms = elapsed.as_millis() as u64, "upload committed");
            conn.queue_header(&ok_header(id, &json!({ "size": a.size, "sha256": actual, "upload_id": upload_id }), 0))?;
            Ok(())
        }
        Err((e, freed)) => {
            // A failed commit must not leave a half-trusted partial behind.
            let freed = if freed == 0 { discard_by_id(session, &upload_id).await } else { freed };
            session.quota.release(freed);
            warn!(path = %target, error = %e, "upload not committed");
            Err(e.into())
        }
    }
}

/// True for a put that takes the small-file path: the whole file in one
/// body, no `ready` asked, no resume.
fn is_small_put(a: &PutArgs) -> bool {
    !a.wait && a.offset == 0 && a.upload_id.is_none() && a.body_len <= SMALL_PUT && a.body_len == a.size
}

/// Small puts committed by one blocking call, at most (a pipelining client
/// has many in the buffer at once).
const SMALL_BATCH_FILES: usize = 64;
const SMALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A small put read off the wire, checked and with its room reserved.
struct SmallPut {
    id: u64,
    target: VirtualPath,
    data: Vec<u8>,
    expected: String,
    overwrite: bool,
    reservation: Reservation,
}

/// The small-file path. The body is held in memory, and the small puts that
/// follow it already in the read buffer join it: one blocking call checks,
/// writes, syncs and renames them all, so a pipelining client pays one thread
/// hop per batch instead of one per file. Each file still commits on its own
/// and gets its own answer, in order.
async fn put_small(session: &mut Session, conn: &mut Conn, id: u64, a: PutArgs) -> Result<(), Reply> {
    let mut batch: Vec<Result<SmallPut, (u64, WireError)>> = vec![read_small(session, conn, id, a).await?];
    let mut bytes = 0;
    while batch.len() < SMALL_BATCH_FILES && bytes < SMALL_BATCH_BYTES {
        let Some(next) = conn.peek_header().and_then(|h| small_put_args(&h)) else { break };
        let (id, a) = next;
        let _ = conn.read_header().await?;
        let item = read_small(session, conn, id, a).await?;
        bytes += item.as_ref().map_or(0, |p| p.data.len());
        batch.push(item);
    }
    let fsync = session.shared.config.transfer.fsync;
    let jobs: Vec<_> = batch
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|p| (p.target.clone(), p.overwrite, p.expected.clone()))
        .collect();
    let data: Vec<Vec<u8>> =
        batch.iter_mut().filter_map(|r| r.as_mut().ok()).map(|p| std::mem::take(&mut p.data)).collect();
    let mut outcomes = blocking(&session.jail, move |j| {
        Ok(jobs
            .into_iter()
            .zip(data)
            .map(|((t, overwrite, expected), data)| commit_small(j, &t, &data, expected, overwrite, fsync))
            .collect::<Vec<_>>())
    })
    .await?
    .into_iter();
    for item in batch {
        match item {
            Ok(p) => {
                match outcomes.next().unwrap_or_else(|| Err(WireError::new(ErrorCode::Internal, "lost outcome"))) {
                    Ok((actual, replaced, size)) => {
                        p.reservation.settle(size);
                        session.quota.release(replaced.unwrap_or(0));
                        info!(path = %p.target, bytes = size, "upload committed");
                        conn.queue_header(&ok_header(p.id, &json!({ "size": size, "sha256": actual }), 0))?;
                    }
                    Err(e) => conn.queue_header(&error_header(p.id, &e))?,
                }
            }
            Err((id, e)) => conn.queue_header(&error_header(id, &e))?,
        }
    }
    Ok(())
}

/// The arguments of a header that is a small put, else `None`.
fn small_put_args(h: &ferry_proto::Header) -> Option<(u64, PutArgs)> {
    let (id, req) = Request::from_header(h);
    let Ok(Request::Put { path, size, offset, upload_id, sha256, overwrite, wait }) = req else { return None };
    let a = PutArgs { path, size, offset, upload_id, sha256, overwrite, wait, body_len: h.body_len };
    is_small_put(&a).then_some((id, a))
}

/// Reads a small put's body and `put_end`, checks them and reserves room.
/// The outer error is the stream's; the inner one is this put's answer.
async fn read_small(
    session: &Session,
    conn: &mut Conn,
    id: u64,
    a: PutArgs,
) -> Result<Result<SmallPut, (u64, WireError)>, FrameError> {
    let idle = session.shared.config.idle_timeout();
    let data = tokio::time::timeout(idle, conn.read_body_to_vec(SMALL_PUT)).await.unwrap_or_else(|_| Err(stalled()))?;
    let end = read_put_end(conn, id).await?;
    let checked = (|| {
        let expected = transfer::validate_sha256(&end?)?;
        if let Some(h) = a.sha256.as_deref().filter(|h| !h.eq_ignore_ascii_case(&expected)) {
            return Err(WireError::new(ErrorCode::BadRequest, format!("put sha256 {h} differs from put_end")));
        }
        let target = resolve(session, &a.path)?;
        if target.is_root() {
            return Err(WireError::new(ErrorCode::IsADirectory, "/ is a directory"));
        }
        let reservation = session.quota.reserve(a.size)?;
        Ok(SmallPut { id, target, data, expected, overwrite: a.overwrite, reservation })
    })();
    Ok(checked.map_err(|e| (id, e)))
}

/// Verifies and commits one small file; its hash, the size of a file it
/// replaced, and its size.
fn commit_small(
    j: &crate::vfs::Jail,
    target: &VirtualPath,
    data: &[u8],
    expected: String,
    overwrite: bool,
    fsync: bool,
) -> Result<(String, Option<u64>, u64), WireError> {
    check_target(j, target, overwrite)?;
    let actual = hex::encode(Sha256::digest(data));
    if actual != expected {
        return Err(TransferError::ChecksumMismatch { expected, actual }.into());
    }
    let replaced = transfer::write_small(j, target, data, &actual, overwrite, fsync)?;
    Ok((actual, replaced, data.len() as u64))
}

/// Refuses a target that is a directory, or that exists without `overwrite`.
fn check_target(j: &Jail, target: &VirtualPath, overwrite: bool) -> Result<(), WireError> {
    match j.stat(target) {
        Ok(e) if e.kind == EntryKind::Dir => {
            Err(WireError::new(ErrorCode::IsADirectory, format!("{target} is a directory")))
        }
        Ok(_) if !overwrite => {
            Err(WireError::new(ErrorCode::AlreadyExists, format!("{target} already exists (use --force to overwrite)")))
        }
        Ok(_) => Ok(()),
        Err(e) if e.code() == "not_found" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn discard_by_id(session: &Session, upload_id: &str) -> u64 {
    let id = upload_id.to_string();
    blocking(&session.jail, move |j| Ok(transfer::discard(j, &id))).await.unwrap_or(0)
}

/// Tells a `wait` client that its upload is ready, then reads the `put_data`
/// header that must follow with the rest of the file as its body.
async fn exchange_ready(conn: &mut Conn, id: u64, upload: &PartialUpload, rest: u64) -> Result<(), Reply> {
    let ready = json!({ "ready": true, "upload_id": upload.id, "offset": upload.offset });
    conn.send(&ok_header(id, &ready, 0)).await?;
    let header = conn.read_header().await?.ok_or(FrameError::Truncated)?;
    let (data_id, req) = Request::from_header(&header);
    if data_id != id || !matches!(req, Ok(Request::PutData)) || header.body_len != rest {
        return Err(
            WireError::new(ErrorCode::BadRequest, "after ready, send put_data with body_len = size - offset").into()
        );
    }
    Ok(())
}

type Prepared = (PartialUpload, crate::quota::Reservation, transfer::ActiveGuard);

async fn prepare_put(session: &mut Session, a: &PutArgs) -> Result<Prepared, WireError> {
    if a.offset > a.size {
        return Err(WireError::new(ErrorCode::BadRequest, "offset is past size"));
    }
    let expected_body = if a.wait { 0 } else { a.size - a.offset };
    if a.body_len != expected_body {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "body_len must equal size - offset (0 with wait: the body follows ready in put_data)",
        ));
    }
    if let Some(h) = &a.sha256 {
        transfer::validate_sha256(h)?;
    }
    let target = resolve(session, &a.path)?;
    if target.is_root() {
        return Err(WireError::new(ErrorCode::IsADirectory, "/ is a directory"));
    }
    let t = target.clone();
    let overwrite = a.overwrite;
    blocking(&session.jail, move |j| check_target(j, &t, overwrite)).await?;
    let guard = match &a.upload_id {
        Some(uid) => Some(session.shared.uploads.claim(&session.user.name, uid)?),
        None => None,
    };
    let claims = transfer::Claims::new(&session.shared.uploads, &session.user.name);
    if a.offset == 0 {
        // A fresh start over old partials of this path: free them before
        // reserving, so that starting over near the quota fits when the end
        // result would.
        let (t, uid, claims) = (target.clone(), a.upload_id.clone(), claims.clone());
        let freed =
            blocking(&session.jail, move |j| Ok(transfer::discard_for_fresh_start(j, &t, uid.as_deref(), &claims)))
                .await?;
        session.quota.release(freed);
    }
    // Only the bytes not yet on disk need a reservation (a partial's bytes
    // are already counted), plus room for the sidecar.
    let need = (a.size - a.offset).saturating_add(transfer::meta_len_bound(&target, a.size));
    let reservation = session.quota.reserve(need)?;
    let (size, offset, uid, sha) = (a.size, a.offset, a.upload_id.clone(), a.sha256.clone());
    let (upload, new_guard, released) = blocking(&session.jail, move |j| {
        Ok(transfer::open_upload(j, &target, size, offset, uid.as_deref(), sha, &claims)?)
    })
    .await?;
    session.quota.release(released);
    // A fresh upload holds the claim on its new id; a resume keeps the one it took.
    let guard = new_guard.or(guard).ok_or_else(|| WireError::new(ErrorCode::Internal, "upload not claimed"))?;
    Ok((upload, reservation, guard))
}

/// Reads the `put_end` frame that follows a put's body; its hash, or an error
/// answer when the client sent something else.
async fn read_put_end(conn: &mut Conn, id: u64) -> Result<Result<String, WireError>, FrameError> {
    let Some(header) = conn.read_header().await? else { return Err(FrameError::Truncated) };
    conn.skip_body().await?;
    match Request::from_header(&header) {
        (end_id, Ok(Request::PutEnd { sha256 })) if end_id == id => Ok(Ok(sha256)),
        _ => Ok(Err(WireError::new(ErrorCode::BadRequest, "a put body must be followed by its put_end"))),
    }
}

pub async fn upload_status(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    path: String,
    size: u64,
    upload_id: Option<String>,
) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    let status =
        blocking(&session.jail, move |j| Ok(transfer::upload_status(j, &target, size, upload_id.as_deref())?)).await?;
    let body = match status {
        Some(s) => {
            json!({ "found": true, "upload_id": s.upload_id, "offset": s.offset, "prefix_sha256": s.prefix_sha256 })
        }
        None => json!({ "found": false, "offset": 0 }),
    };
    conn.queue_header(&ok_header(id, &body, 0))?;
    Ok(())
}

/// A whole small file read by a download's blocking step: data, mtime and
/// hash, so the answer goes out without another thread hop.
struct SmallRead {
    data: Vec<u8>,
    mtime: i64,
    sha256: String,
}

/// `get`. Whole-file gets already in the read buffer behind this one join it
/// (a pipelining client sends many): one blocking call opens and reads every
/// small file of the run, as `put_small` does for uploads, and the others
/// take the streaming path. Answers go out in request order.
pub async fn get(session: &mut Session, conn: &mut Conn, id: u64, path: String, offset: u64) -> Result<(), Reply> {
    if offset != 0 || conn.peek_header().and_then(|h| whole_get_args(&h)).is_none() {
        return get_one(session, conn, id, path, offset).await;
    }
    let mut batch = vec![(id, path)];
    while batch.len() < SMALL_BATCH_FILES {
        let Some(next) = conn.peek_header().and_then(|h| whole_get_args(&h)) else { break };
        let _ = conn.read_header().await?;
        batch.push(next);
    }
    let targets: Vec<_> = batch.iter().map(|(_, p)| resolve(session, p)).collect();
    let jobs: Vec<_> = targets.iter().filter_map(|t| t.as_ref().ok().cloned()).collect();
    let count = jobs.len();
    let read = blocking(&session.jail, move |j| {
        let mut budget = SMALL_BATCH_BYTES;
        // A file to stream is closed here and opened again by `get_one`, so a
        // batch never holds more than one descriptor at a time.
        let small = |t| open_for_get(j, t, 0, &mut budget).map(Opened::into_small);
        Ok(jobs.iter().map(small).collect::<Vec<_>>())
    })
    .await
    // A lost blocking task still answers every request of the batch.
    .unwrap_or_else(|e| (0..count).map(|_| Err(e.clone())).collect());
    let mut reads = read.into_iter();
    for ((id, path), target) in batch.into_iter().zip(targets) {
        let step = match target {
            Err(e) => Err(e),
            Ok(_) => reads.next().unwrap_or_else(|| Err(WireError::new(ErrorCode::Internal, "lost outcome"))),
        };
        let answered = match step {
            Ok(Some(small)) => send_small(conn, id, small).await.map_err(Reply::from),
            Ok(None) => get_one(session, conn, id, path, 0).await,
            Err(e) => Err(e.into()),
        };
        match answered {
            Ok(()) => {}
            Err(Reply::Wire(e)) => conn.queue_header(&error_header(id, &e))?,
            Err(Reply::Stream(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The id and path of a header that is a whole-file get without a body,
/// else `None`.
fn whole_get_args(h: &ferry_proto::Header) -> Option<(u64, String)> {
    if h.body_len != 0 {
        return None;
    }
    match Request::from_header(h) {
        (id, Ok(Request::Get { path, offset: 0 })) => Some((id, path)),
        _ => None,
    }
}

/// A download's first blocking step: a small file already read whole, or
/// a file to stream.
enum Opened {
    Small(SmallRead),
    Stream(std::fs::File, Entry),
}

impl Opened {
    fn into_small(self) -> Option<SmallRead> {
        match self {
            Opened::Small(s) => Some(s),
            Opened::Stream(..) => None,
        }
    }
}

/// Opens `t` for a download from `offset`. A whole regular file within the
/// small-file size and what is left of `budget` is read and hashed at once.
fn open_for_get(j: &Jail, t: &VirtualPath, offset: u64, budget: &mut usize) -> Result<Opened, WireError> {
    let (file, entry) = j.open_read(t)?;
    if entry.kind != EntryKind::File {
        return Err(not_a_file(t));
    }
    if offset != 0 || entry.size > SMALL_PUT || entry.size as usize > *budget {
        return Ok(Opened::Stream(file, entry));
    }
    let mut data = Vec::with_capacity(entry.size as usize);
    file.take(entry.size).read_to_end(&mut data).map_err(crate::vfs::VfsError::from)?;
    *budget -= data.len();
    let sha256 = hex::encode(Sha256::digest(&data));
    Ok(Opened::Small(SmallRead { data, mtime: entry.mtime, sha256 }))
}

fn not_a_file(t: &VirtualPath) -> WireError {
    WireError::new(ErrorCode::IsADirectory, format!("{t} is not a regular file"))
}

/// Answers a get with a small file read whole: header, body, trailer.
async fn send_small(conn: &mut Conn, id: u64, small: SmallRead) -> Result<(), FrameError> {
    let len = small.data.len();
    conn.queue_header(&ok_header(id, &json!({ "size": len, "offset": 0, "mtime": small.mtime }), len as u64))?;
    conn.write_body(&small.data).await?;
    conn.queue_header(&ok_header(id, &json!({ "done": true, "sha256": small.sha256 }), 0))
}

/// One get: a small whole file in one blocking step, anything else streamed.
async fn get_one(session: &mut Session, conn: &mut Conn, id: u64, path: String, offset: u64) -> Result<(), Reply> {
    let started = Instant::now();
    let target = resolve(session, &path)?;
    let t = target.clone();
    let opened = blocking(&session.jail, move |j| {
        let mut budget = SMALL_BATCH_BYTES;
        Ok(match open_for_get(j, &t, offset, &mut budget)? {
            Opened::Small(small) => (Opened::Small(small), None),
            Opened::Stream(file, entry) => {
                let cached = transfer::cached_hash(&file);
                (Opened::Stream(file, entry), cached)
            }
        })
    })
    .await?;
    let (file, entry, cached) = match opened {
        (Opened::Small(small), _) => return Ok(send_small(conn, id, small).await?),
        (Opened::Stream(file, entry), cached) => (file, entry, cached),
    };
    let size = entry.size;
    if offset > size {
        return Err(
            WireError::new(ErrorCode::BadRequest, format!("offset {offset} is past the end ({size} bytes)")).into()
        );
    }
    let mtime = entry.mtime;
    let body_len = size - offset;
    conn.queue_header(&ok_header(id, &json!({ "size": size, "offset": offset, "mtime": mtime }), body_len))?;

    let mut sent = 0u64;
    // With the hash recorded at commit, plaintext bodies go out by sendfile:
    // no copy through user space.
    let outcome = match (&cached, plain_tcp(conn)) {
        (Some(sha256), true) => {
            conn.flush().await?;
            sent = send_file(conn, &file, offset, body_len).await?;
            Ok(sha256.clone())
        }
        _ => {
            let hash = cached.is_none();
            let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
            let reader = tokio::task::spawn_blocking(move || read_blocks(file, offset, size, hash, tx));
            let idle = session.shared.config.idle_timeout();
            while let Some(block) = rx.recv().await {
                sent += block.len() as u64;
                // A client that stops reading for the idle timeout is gone.
                tokio::time::timeout(idle, conn.write_body(&block)).await.unwrap_or_else(|_| Err(stalled()))?;
            }
            let read = reader.await.map_err(|_| WireError::new(ErrorCode::Internal, "download reader failed"))?;
            read.map(|h| h.or(cached).unwrap_or_default())
        }
    };
    // The header promised `body_len` bytes: if the file shrank, keep the
    // stream framed with zeros and say so in the trailer rather than lie.
    if sent < body_len {
        let zeros = vec![0u8; READ_BLOCK];
        while sent < body_len {
            let n = (body_len - sent).min(READ_BLOCK as u64) as usize;
            conn.write_body(&zeros[..n]).await?;
            sent += n as u64;
        }
    }
    match outcome {
        Ok(sha256) if sent == body_len => {
            conn.queue_header(&ok_header(id, &json!({ "done": true, "sha256": sha256 }), 0))?;
            info!(path = %target, bytes = body_len, ms = started.elapsed().as_millis() as u64, "download sent");
        }
        _ => {
            let e = WireError::new(ErrorCode::FileChanged, format!("{target} changed while it was being read"));
            conn.queue_header(&ferry_proto::msg::error_header(id, &e))?;
        }
    }
    Ok(())
}

/// Reads `offset..size` of the file in blocks into the channel, hashing the
/// whole file (the prefix too). Returns the hex SHA-256, or an error if the
/// file ended early.
fn read_blocks(
    mut file: std::fs::File,
    offset: u64,
    size: u64,
    hash: bool,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<Option<String>> {
    let mut hasher = Sha256::new();
    let before = file.metadata()?;
    if hash && offset > 0 && transfer::hash_range(&mut file, offset, &mut hasher)? < offset {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut left = size - offset;
    while left > 0 {
        let want = left.min(READ_BLOCK as u64) as usize;
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(want);
        let filled = (&mut file).take(want as u64).read_to_end(&mut buf)?;
        if hash {
            hasher.update(&buf);
        }
        left -= filled as u64;
        if tx.blocking_send(Bytes::from(buf)).is_err() {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        }
        if filled < want {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
    }
    if !hash {
        return Ok(None);
    }
    let sha256 = hex::encode(hasher.finalize());
    // Every byte was read: later downloads can skip the hashing.
    if before.len() == size {
        transfer::record_hash_if_unchanged(&file, &sha256, &before);
    }
    Ok(Some(sha256))
}

/// The error of a transfer whose peer went silent past the idle timeout.
fn stalled() -> FrameError {
    FrameError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer silent past the idle timeout mid-transfer"))
}

fn plain_tcp(conn: &Conn) -> bool {
    matches!(conn.get_ref(), Stream::Tcp(_))
}

/// Writes `len` bytes of `file` from `offset` straight to a plaintext TCP
/// socket with sendfile(2). Returns the bytes sent (fewer if the file shrank).
async fn send_file(conn: &mut Conn, file: &std::fs::File, offset: u64, len: u64) -> Result<u64, FrameError> {
    let Stream::Tcp(tcp) = conn.get_mut() else { return Ok(0) };
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        tcp.writable().await?;
        let want = (end - pos).min(1 << 30) as usize;
        match tcp.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(&*tcp, file, Some(&mut pos), want).map_err(std::io::Error::from)
        }) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    let sent = pos - offset;
    conn.note_body_written(sent)?;
    Ok(sent)
}

pub async fn hash(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    path: String,
    length: Option<u64>,
) -> Result<(), Reply> {
    let target = resolve(session, &path)?;
    let (sha256, length, size) = blocking(&session.jail, move |j| {
        let (mut file, entry) = j.open_read(&target)?;
        if entry.kind != EntryKind::File {
            return Err(WireError::new(ErrorCode::IsADirectory, format!("{target} is not a regular file")));
        }
        let want = length.unwrap_or(entry.size).min(entry.size);
        let mut hasher = Sha256::new();
        let got = transfer::hash_range(&mut file, want, &mut hasher).map_err(crate::vfs::VfsError::from)?;
        Ok((hex::encode(hasher.finalize()), got, entry.size))
    })
    .await?;
    conn.queue_header(&ok_header(id, &json!({ "sha256": sha256, "length": length, "size": size }), 0))?;
    Ok(())
}
