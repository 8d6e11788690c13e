//! put, get, hash and upload_status: translation between frames and the
//! home's uploads and downloads.
//!
//! Each of them hashes in the algorithm the request names (`algo`), or else
//! the one negotiated at hello; answers carry `algo` and `hash`, and for
//! SHA-256 also the `sha256` fields that clients before negotiation read.
//!
//! File data moves between the socket and the home through a small bounded
//! channel, so network I/O (and TLS) runs beside the disk work and hashing,
//! and memory stays bounded by the channel whatever the file size.

use std::time::Instant;

use bytes::Bytes;
use ferry_proto::hash::HashAlgo;
use ferry_proto::msg::{error_header, ok_header};
use ferry_proto::resp::{self, Digest};
use ferry_proto::{ErrorCode, FrameError, Request, WireError};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Reply;
use super::fs::resolve;
use crate::home::{Download, HomeError, SmallPut, Upload, UploadSpec};
use crate::session::{Conn, Session, stalled, write_within};
use crate::storage::{READ_BLOCK, SmallFile};
use crate::stream::Stream;
use crate::vfs::VfsError;

/// File blocks in flight between the socket and the home (a few, so that
/// memory stays small and blocks stay in cache).
const PIPE_DEPTH: usize = 4;

pub struct PutArgs {
    pub path: String,
    pub size: u64,
    pub offset: u64,
    pub upload_id: Option<String>,
    pub sha256: Option<String>,
    pub overwrite: bool,
    pub wait: bool,
    pub algo: Option<HashAlgo>,
    pub hash: Option<String>,
    pub body_len: u64,
}

impl PutArgs {
    /// The algorithm this upload is verified with, and the hash promised
    /// up front in it.
    fn hashing(&self, session: &Session) -> Result<(HashAlgo, Option<String>), WireError> {
        let algo = algo_for(session, self.algo)?;
        Ok((algo, claimed(algo, self.hash.clone(), self.sha256.clone())?))
    }
}

/// The hash a request names (`algo`), or else the session's. One the
/// server does not offer is refused: nothing is hashed in it.
fn algo_for(session: &Session, asked: Option<HashAlgo>) -> Result<HashAlgo, WireError> {
    let offered = &session.core.config.transfer.hashes;
    match asked {
        None => Ok(session.hash),
        Some(a) if offered.contains(&a) => Ok(a),
        Some(a) => {
            let names: Vec<&str> = offered.iter().map(|o| o.as_str()).collect();
            Err(WireError::new(
                ErrorCode::BadRequest,
                format!("this server does not offer {a}; it offers {}", names.join(", ")),
            ))
        }
    }
}

/// The hash a request carries for an upload verified with `algo`: `hash`,
/// or `sha256` when that is the algorithm. A `sha256` for a BLAKE3 upload
/// (a client that negotiated BLAKE3 but hashed with SHA-256) is refused
/// rather than compared, so that the error says what went wrong.
fn claimed(algo: HashAlgo, hash: Option<String>, sha256: Option<String>) -> Result<Option<String>, WireError> {
    match (hash, sha256) {
        (hash, None) => Ok(hash),
        (None, Some(s)) if algo == HashAlgo::Sha256 => Ok(Some(s)),
        (Some(h), Some(s)) if algo == HashAlgo::Sha256 && h.eq_ignore_ascii_case(&s) => Ok(Some(h)),
        (Some(_), Some(_)) if algo == HashAlgo::Sha256 => {
            Err(WireError::new(ErrorCode::BadRequest, "`hash` and `sha256` differ; nothing was committed"))
        }
        (_, Some(_)) => Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "this upload is verified with {algo} (the session's hash, or the put's `algo`), \
                 but a `sha256` was sent: send the {algo} hash as `hash`; nothing was committed"
            ),
        )),
    }
}

/// The hash fields of a `put_end`, read before the upload's algorithm is
/// applied to them.
struct PutEnd {
    sha256: Option<String>,
    algo: Option<HashAlgo>,
    hash: Option<String>,
}

impl PutEnd {
    /// The whole file's hash for an upload verified with `algo`.
    fn hash_for(self, algo: HashAlgo) -> Result<String, WireError> {
        if let Some(named) = self.algo.filter(|named| *named != algo) {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "put_end carries a {named} hash, but this upload is verified with {algo}; nothing was committed"
                ),
            ));
        }
        claimed(algo, self.hash, self.sha256)?
            .ok_or_else(|| WireError::new(ErrorCode::BadRequest, "put_end carries no hash (`hash` or `sha256`)"))
    }
}

/// Uploads up to this size that ask for no `ready` take the small-file path
/// (and downloads up to it are read whole).
const SMALL_PUT: u64 = 256 * 1024;

/// Small puts (and gets) handled in one step, at most (a pipelining client
/// has many in the buffer at once).
const SMALL_BATCH_FILES: usize = 64;
const SMALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub async fn put(session: &mut Session, conn: &mut Conn, id: u64, a: PutArgs) -> Result<(), Reply> {
    if is_small_put(&a) {
        return put_small(session, conn, id, a).await;
    }
    let started = Instant::now();
    let upload = match begin_put(session, &a).await {
        Ok(u) => u,
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
    if a.wait {
        exchange_ready(session, conn, id, &upload, a.size - a.offset).await?;
    }
    let target = upload.target().clone();

    // The home's side: each block written (and hashed) as it comes.
    let feed = upload.feed(PIPE_DEPTH);

    // Network side. A peer silent for the idle timeout in the middle of a
    // body is gone: the partial stays for a resume.
    let idle = session.core.config.idle_timeout();
    let mut stream_err = None;
    loop {
        let chunk = tokio::time::timeout(idle, conn.read_body_chunk()).await.unwrap_or_else(|_| Err(stalled()));
        match chunk {
            Ok(Some(chunk)) => {
                // A failed writer takes no more; keep draining the body.
                feed.send(chunk).await;
            }
            Ok(None) => break,
            Err(e) => {
                stream_err = Some(e);
                break;
            }
        }
    }
    let (upload, written) = feed.finish().await?;
    if let Some(e) = stream_err {
        warn!(path = %target, bytes = upload.len(), "upload cut; partial kept for resume");
        return Err(Reply::Stream(e));
    }
    let end = read_put_end(conn, id).await?;
    written?;
    let algo = upload.algo();
    let committed = upload.commit(Some(&end.and_then(|e| e.hash_for(algo))?)).await?;
    let ms = started.elapsed().as_millis() as u64;
    info!(path = %target, bytes = committed.size, ms, %algo, "upload committed");
    let body = resp::PutAnswer {
        size: committed.size,
        // Always there: a framed put sends its hash, so the data was verified.
        digest: Digest::new(algo, committed.hash.unwrap_or_default()),
        upload_id: Some(committed.upload_id),
    };
    conn.queue_header(&ok_header(id, &body, 0))?;
    Ok(())
}

/// True for a put that takes the small-file path: the whole file in one
/// body, no `ready` asked, no resume.
fn is_small_put(a: &PutArgs) -> bool {
    !a.wait && a.offset == 0 && a.upload_id.is_none() && a.body_len <= SMALL_PUT && a.body_len == a.size
}

/// The small-file path. The body is held in memory, and the small puts that
/// follow it already in the read buffer join it: the home hashes and commits
/// the batch in one step each, so a pipelining client pays two thread hops
/// per batch instead of per file. Each file still commits on its own and
/// gets its own answer, in order.
async fn put_small(session: &mut Session, conn: &mut Conn, id: u64, a: PutArgs) -> Result<(), Reply> {
    let mut batch = vec![read_small(session, conn, id, a).await?];
    let mut bytes = 0;
    while batch.len() < SMALL_BATCH_FILES && bytes < SMALL_BATCH_BYTES {
        let Some((id, a)) = conn.peek_header().and_then(|h| small_put_args(&h)) else { break };
        let _ = conn.read_header().await?;
        let item = read_small(session, conn, id, a).await?;
        bytes += item.1.as_ref().map_or(0, |p| p.data.len());
        batch.push(item);
    }
    let mut answers: Vec<(u64, Option<SmallAnswer>)> = Vec::with_capacity(batch.len());
    let mut slots = Vec::new();
    let mut puts = Vec::new();
    for (id, item) in batch {
        match item {
            Ok(put) => {
                slots.push((answers.len(), put.data.len() as u64, put.target.clone(), put.algo));
                answers.push((id, None));
                puts.push(put);
            }
            Err(e) => answers.push((id, Some(Err(e)))),
        }
    }
    let outcomes = session.home.put_small(puts).await;
    for ((i, size, target, algo), outcome) in slots.into_iter().zip(outcomes) {
        answers[i].1 = Some(match outcome {
            Ok(hash) => {
                info!(path = %target, bytes = size, %algo, "upload committed");
                Ok((size, Digest::new(algo, hash)))
            }
            Err(e) => Err(e.into()),
        });
    }
    for (id, answer) in answers {
        match answer.unwrap_or_else(|| Err(WireError::new(ErrorCode::Internal, "lost outcome"))) {
            Ok((size, digest)) => {
                conn.queue_header(&ok_header(id, &resp::PutAnswer { size, digest, upload_id: None }, 0))?
            }
            Err(e) => conn.queue_header(&error_header(id, &e))?,
        }
    }
    Ok(())
}

/// A small put's answer: its size and hash, or the error.
type SmallAnswer = Result<(u64, Digest), WireError>;

/// The arguments of a header that is a small put, else `None`.
fn small_put_args(h: &ferry_proto::Header) -> Option<(u64, PutArgs)> {
    let (id, req) = Request::from_header(h);
    let Ok(Request::Put { path, size, offset, upload_id, sha256, overwrite, wait, algo, hash }) = req else {
        return None;
    };
    let a = PutArgs { path, size, offset, upload_id, sha256, overwrite, wait, algo, hash, body_len: h.body_len };
    is_small_put(&a).then_some((id, a))
}

/// Reads a small put's body and `put_end`. The outer error is the stream's;
/// the inner one is this put's answer.
async fn read_small(
    session: &Session,
    conn: &mut Conn,
    id: u64,
    a: PutArgs,
) -> Result<(u64, Result<SmallPut, WireError>), FrameError> {
    let idle = session.core.config.idle_timeout();
    let data = tokio::time::timeout(idle, conn.read_body_to_vec(SMALL_PUT)).await.unwrap_or_else(|_| Err(stalled()))?;
    let end = read_put_end(conn, id).await?;
    let put = end.and_then(|end| {
        let (algo, promised) = a.hashing(session)?;
        let hash = end.hash_for(algo)?;
        let target = resolve(session, &a.path)?;
        Ok(SmallPut { target, data, algo, hash, promised, overwrite: a.overwrite })
    });
    Ok((id, put))
}

/// Tells a `wait` client that its upload is ready, then reads the `put_data`
/// header that must follow with the rest of the file as its body.
async fn exchange_ready(session: &Session, conn: &mut Conn, id: u64, upload: &Upload, rest: u64) -> Result<(), Reply> {
    let ready = resp::Ready { ready: true, upload_id: upload.id().to_string(), offset: upload.offset() };
    write_within(session.core.config.idle_timeout(), conn.send(&ok_header(id, &ready, 0))).await?;
    let header = conn.read_header().await?.ok_or(FrameError::Truncated)?;
    let (data_id, req) = Request::from_header(&header);
    if data_id != id || !matches!(req, Ok(Request::PutData)) || header.body_len != rest {
        return Err(
            WireError::new(ErrorCode::BadRequest, "after ready, send put_data with body_len = size - offset").into()
        );
    }
    Ok(())
}

async fn begin_put(session: &mut Session, a: &PutArgs) -> Result<Upload, WireError> {
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
    let (algo, promised) = a.hashing(session)?;
    let target = resolve(session, &a.path)?;
    let spec = UploadSpec {
        size: Some(a.size),
        offset: a.offset,
        upload_id: a.upload_id.clone(),
        algo,
        hash: promised,
        overwrite: a.overwrite,
        resumable: true,
    };
    Ok(session.home.begin_upload(&target, spec).await?)
}

/// Reads the `put_end` frame that follows a put's body; its hash fields, or
/// an error answer when the client sent something else.
async fn read_put_end(conn: &mut Conn, id: u64) -> Result<Result<PutEnd, WireError>, FrameError> {
    let Some(header) = conn.read_header().await? else { return Err(FrameError::Truncated) };
    conn.skip_body().await?;
    match Request::from_header(&header) {
        (end_id, Ok(Request::PutEnd { sha256, algo, hash })) if end_id == id => Ok(Ok(PutEnd { sha256, algo, hash })),
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
    algo: Option<HashAlgo>,
) -> Result<(), Reply> {
    let algo = algo_for(session, algo)?;
    let target = resolve(session, &path)?;
    let body = match session.home.upload_status(&target, Some(size), upload_id.as_deref(), algo).await? {
        Some(s) => resp::UploadStatus {
            found: true,
            upload_id: Some(s.upload_id),
            offset: s.offset,
            prefix_sha256: (algo == HashAlgo::Sha256).then(|| s.prefix_hash.clone()),
            algo: Some(algo),
            prefix_hash: Some(s.prefix_hash),
        },
        None => resp::UploadStatus {
            found: false,
            upload_id: None,
            offset: 0,
            prefix_sha256: None,
            algo: None,
            prefix_hash: None,
        },
    };
    conn.queue_header(&ok_header(id, &body, 0))?;
    Ok(())
}

/// `get`. Whole-file gets already in the read buffer behind this one join it
/// (a pipelining client sends many): one step reads a run of small files, as
/// `put_small` does for uploads, and the others take the streaming path.
/// Answers go out in request order.
pub async fn get(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    path: String,
    offset: u64,
    algo: Option<HashAlgo>,
) -> Result<(), Reply> {
    // A batch holds gets that ask for the same hash.
    let joins = |h: ferry_proto::Header| whole_get_args(&h).filter(|(_, _, a)| *a == algo);
    let resolved = algo_for(session, algo);
    let Ok(hashed_in) = resolved else { return get_one(session, conn, id, path, offset, algo).await };
    if offset != 0 || conn.peek_header().and_then(&joins).is_none() {
        return get_one(session, conn, id, path, offset, algo).await;
    }
    let mut batch = vec![(id, path, algo)];
    while batch.len() < SMALL_BATCH_FILES {
        let Some(next) = conn.peek_header().and_then(&joins) else { break };
        let _ = conn.read_header().await?;
        batch.push(next);
    }
    let targets: Vec<_> = batch.iter().map(|(_, p, _)| resolve(session, p)).collect();
    let paths: Vec<_> = targets.iter().filter_map(|t| t.as_ref().ok().cloned()).collect();
    let mut reads = session.home.read_small(paths, SMALL_PUT, SMALL_BATCH_BYTES as u64, hashed_in).await.into_iter();
    let idle = session.core.config.idle_timeout();
    for ((id, path, _), target) in batch.into_iter().zip(targets) {
        let step = match target {
            Err(e) => Err(e),
            Ok(_) => reads.next().unwrap_or_else(|| Err(lost())).map_err(WireError::from),
        };
        let answered = match step {
            Ok(Some(small)) => write_within(idle, send_small(conn, id, small, hashed_in)).await.map_err(Reply::from),
            // Too large for the batch: streamed on its own turn.
            Ok(None) => get_one(session, conn, id, path, 0, algo).await,
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

fn lost() -> HomeError {
    VfsError::Io(std::io::Error::other("lost outcome")).into()
}

/// The id, path and asked hash of a header that is a whole-file get
/// without a body, else `None`.
fn whole_get_args(h: &ferry_proto::Header) -> Option<(u64, String, Option<HashAlgo>)> {
    if h.body_len != 0 {
        return None;
    }
    match Request::from_header(h) {
        (id, Ok(Request::Get { path, offset: 0, algo })) => Some((id, path, algo)),
        _ => None,
    }
}

/// Answers a get with a small file read whole: header, body, trailer.
async fn send_small(conn: &mut Conn, id: u64, small: SmallFile, algo: HashAlgo) -> Result<(), FrameError> {
    let len = small.data.len();
    let mtime = small.entry.mtime;
    conn.queue_header(&ok_header(id, &resp::GetAnswer { size: len as u64, offset: 0, mtime }, len as u64))?;
    conn.write_body(&small.data).await?;
    let trailer = resp::GetTrailer { done: true, digest: Digest::new(algo, small.hash) };
    conn.queue_header(&ok_header(id, &trailer, 0))
}

/// One get: a small whole file in one step, anything else streamed.
async fn get_one(
    session: &mut Session,
    conn: &mut Conn,
    id: u64,
    path: String,
    offset: u64,
    algo: Option<HashAlgo>,
) -> Result<(), Reply> {
    let started = Instant::now();
    let algo = algo_for(session, algo)?;
    let target = resolve(session, &path)?;
    let idle = session.core.config.idle_timeout();
    if offset == 0 {
        let small = session.home.read_small(vec![target.clone()], SMALL_PUT, SMALL_BATCH_BYTES as u64, algo).await;
        match small.into_iter().next() {
            Some(Ok(Some(small))) => return Ok(write_within(idle, send_small(conn, id, small, algo)).await?),
            Some(Err(e)) => return Err(e.into()),
            _ => {}
        }
    }
    let download = session.home.open_download(&target, offset).await?;
    let (size, mtime, body_len) = (download.entry().size, download.entry().mtime, download.len());
    conn.queue_header(&ok_header(id, &resp::GetAnswer { size, offset, mtime }, body_len))?;
    let (mut sent, outcome) = send_download(session, conn, download, algo).await?;
    // The header promised `body_len` bytes: if the file shrank, keep the
    // stream framed with zeros and say so in the trailer rather than lie.
    if sent < body_len {
        let zeros = vec![0u8; READ_BLOCK];
        while sent < body_len {
            let n = (body_len - sent).min(READ_BLOCK as u64) as usize;
            write_within(idle, conn.write_body(&zeros[..n])).await?;
            sent += n as u64;
        }
    }
    match outcome {
        Ok(hash) if sent == body_len => {
            conn.queue_header(&ok_header(id, &resp::GetTrailer { done: true, digest: Digest::new(algo, hash) }, 0))?;
            info!(path = %target, bytes = body_len, ms = started.elapsed().as_millis() as u64, "download sent");
        }
        _ => {
            let e = WireError::new(ErrorCode::FileChanged, format!("{target} changed while it was being read"));
            conn.queue_header(&error_header(id, &e))?;
        }
    }
    Ok(())
}

/// Sends a download's body: by sendfile(2) when the file is local, its hash
/// in `algo` is recorded and the connection is plaintext TCP (no copy
/// through user space); else block by block from the home. Returns the
/// bytes sent and the whole file's hash in `algo`.
async fn send_download(
    session: &Session,
    conn: &mut Conn,
    download: Download,
    algo: HashAlgo,
) -> Result<(u64, Result<String, HomeError>), FrameError> {
    let body_len = download.len();
    let idle = session.core.config.idle_timeout();
    if plain_tcp(conn)
        && let (Some(hash), Some(file)) = (download.recorded_hash(algo), download.local_file())
    {
        write_within(idle, conn.flush()).await?;
        let sent = send_file(conn, file, download.offset(), body_len, idle).await?;
        return Ok((sent, Ok(hash)));
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
    let reader = tokio::spawn(download.stream(tx, algo));
    let mut sent = 0u64;
    while let Some(block) = rx.recv().await {
        sent += block.len() as u64;
        // A client that stops reading for the idle timeout is gone.
        write_within(idle, conn.write_body(&block)).await?;
    }
    let outcome = reader.await.unwrap_or_else(|_| Err(lost()));
    Ok((sent, outcome))
}

fn plain_tcp(conn: &Conn) -> bool {
    matches!(conn.get_ref(), Stream::Tcp(_))
}

/// Writes `len` bytes of `file` from `offset` straight to a plaintext TCP
/// socket with sendfile(2). Returns the bytes sent (fewer if the file shrank).
/// A socket that stays unwritable for `idle` (the peer takes nothing) ends
/// the session.
async fn send_file(
    conn: &mut Conn,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    idle: std::time::Duration,
) -> Result<u64, FrameError> {
    let Stream::Tcp(tcp) = conn.get_mut() else { return Ok(0) };
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        tokio::time::timeout(idle, tcp.writable()).await.map_err(|_| stalled())??;
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
    algo: Option<HashAlgo>,
) -> Result<(), Reply> {
    let algo = algo_for(session, algo)?;
    let target = resolve(session, &path)?;
    let (hash, length, size) = session.home.hash(&target, length, algo).await?;
    conn.queue_header(&ok_header(id, &resp::HashAnswer { digest: Digest::new(algo, hash), length, size }, 0))?;
    Ok(())
}
