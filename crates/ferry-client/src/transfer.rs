//! Uploads and downloads: SHA-256 verified end to end, atomic on both sides,
//! resumable after any cut, and pipelined for many small files.
//!
//! File data moves between the disk and the socket through a small bounded
//! channel: a blocking thread reads (or writes) and hashes while the async
//! side does network I/O, so both cores work and memory stays bounded.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_proto::msg::parse_response;
use ferry_proto::{ErrorCode, Request};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::session::read_answer;
use crate::{ClientError, Session};

/// Files up to this size are pipelined without waiting for the server's `ready`.
pub const SMALL_FILE: u64 = 1024 * 1024;
/// Blocks between the file thread and the network: small enough that a block
/// is still in cache when TLS copies it into a record (1 MiB blocks, 8 deep,
/// made that copy cost twice the encryption).
const BLOCK: usize = 128 * 1024;
const PIPE_DEPTH: usize = 4;

/// Progress callbacks; drawing is the caller's business. All methods have
/// no-op defaults.
pub trait Progress: Send + Sync {
    /// A new phase for one file: `what` is "hashing", "upload" or "download".
    fn begin(&self, _name: &str, _what: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    /// A remark for the user (for example "starting over").
    fn note(&self, _message: &str) {}
    fn end(&self) {}
}

/// Progress that draws nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub overwrite: bool,
    /// Continue a partial upload after proving it is a prefix of this file.
    pub resume: bool,
    /// Where resume state is kept (`None`: the default state folder).
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub overwrite: bool,
    pub resume: bool,
}

/// What a transfer did.
#[derive(Debug, Clone, Default)]
pub struct TransferSummary {
    pub size: u64,
    /// Bytes that crossed the network (less than `size` after a resume).
    pub transferred: u64,
    pub resumed_from: u64,
    pub sha256: String,
    /// True when a resume was asked for but the data there did not match.
    pub restarted: bool,
}

use ferry_proto::resp::{
    GetAnswer, GetTrailer, HashAnswer, PutAnswer, Ready as ReadyAnswer, UploadStatus as StatusAnswer,
};

/// The client's own record of an upload in progress, so that `put -c` can
/// find its partial after the client restarts.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeRecord {
    upload_id: String,
    local: PathBuf,
    remote: String,
    size: u64,
}

fn default_state_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_STATE_DIR") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ferry")
}

/// Where the resume record of an upload of `local` to `remote` lives. The size
/// is not part of the key: a file that changed size since the cut must still
/// find its record, to start over and free the old partial.
fn resume_path(opts: &PutOptions, session: &Session, local: &Path, remote: &str) -> PathBuf {
    let key = format!("{}|{}|{}", session.remote().host_port(), session.remote().user, remote);
    let local_abs = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
    let digest = Sha256::new().chain_update(key).chain_update(local_abs.as_os_str().as_encoded_bytes()).finalize();
    opts.state_dir
        .clone()
        .unwrap_or_else(default_state_dir)
        .join("uploads")
        .join(format!("{}.json", hex::encode(&digest[..16])))
}

fn local_err(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Local(format!("{what} {}: {e}", path.display()))
}

/// Hashes a local file: returns the hash of its first `prefix` bytes and of the whole file.
pub fn hash_local(path: &Path, prefix: u64, progress: &dyn Progress) -> Result<(String, String, u64), ClientError> {
    let mut f = std::fs::File::open(path).map_err(|e| local_err("cannot open", path, e))?;
    let size = f.metadata().map_err(|e| local_err("cannot stat", path, e))?.len();
    progress.begin(&path.display().to_string(), "hashing", size);
    let mut hasher = Sha256::new();
    let mut prefix_hash = if prefix == 0 { Some(hex::encode(Sha256::new().finalize())) } else { None };
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let want = if prefix_hash.is_none() { ((prefix - done) as usize).min(BLOCK) } else { BLOCK };
        let n = f.read(&mut buf[..want]).map_err(|e| local_err("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.advance(n as u64);
        if prefix_hash.is_none() && done == prefix {
            prefix_hash = Some(hex::encode(hasher.clone().finalize()));
        }
    }
    progress.end();
    let full = hex::encode(hasher.finalize());
    Ok((prefix_hash.unwrap_or_default(), full, done))
}

impl Session {
    /// Uploads one file. With `opts.resume`, continues a partial upload
    /// after proving the partial is a prefix of this file.
    pub async fn put_file(
        &mut self,
        local: &Path,
        remote: &str,
        opts: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<TransferSummary, ClientError> {
        let meta = std::fs::metadata(local).map_err(|e| local_err("cannot read", local, e))?;
        if !meta.is_file() {
            return Err(ClientError::Local(format!("{} is not a regular file", local.display())));
        }
        let size = meta.len();
        let state = resume_path(opts, self, local, remote);
        let mut summary = TransferSummary { size, ..Default::default() };
        let (mut offset, mut upload_id, mut full_hash) = (0u64, None, None);
        if opts.resume {
            let saved: Option<ResumeRecord> = std::fs::read(&state).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let saved_id = saved.as_ref().map(|r| r.upload_id.clone());
            if saved.as_ref().is_some_and(|r| r.size != size) {
                // The server looks partials up by size, so it would not find
                // this one: name it, so that starting over discards it.
                progress.note("the file changed size since the upload was cut; starting over");
                summary.restarted = true;
                upload_id = saved_id;
            } else {
                let req = Request::UploadStatus { path: remote.into(), size, upload_id: saved_id };
                let status: StatusAnswer = self.request(&req).await?.decode()?;
                if status.found && status.offset > 0 {
                    let (prefix, full, _) = hash_local(local, status.offset, progress)?;
                    if Some(&prefix) == status.prefix_sha256.as_ref() && status.offset <= size {
                        offset = status.offset;
                        full_hash = Some(full);
                    } else {
                        progress.note("the partial upload on the server does not match this file; starting over");
                        summary.restarted = true;
                    }
                }
                // Named even when empty or foreign, so that starting over discards it.
                if status.found {
                    upload_id = status.upload_id;
                }
            }
        }
        summary.resumed_from = offset;
        let id = self.next_id();
        let wait = size - offset > SMALL_FILE || offset > 0 || opts.resume;
        let req = Request::Put {
            path: remote.into(),
            size,
            offset,
            upload_id,
            sha256: full_hash.clone(),
            overwrite: opts.overwrite,
            wait,
        };
        // With `wait`, the body follows the server's `ready` in a put_data
        // frame, so a refusal costs no bytes and leaves the stream framed.
        self.wr.send(&req.to_header(id, if wait { 0 } else { size - offset })).await?;
        if wait {
            let ready: ReadyAnswer = self.read_answer(id).await?.decode()?;
            let record =
                ResumeRecord { upload_id: ready.upload_id, local: local.to_path_buf(), remote: remote.into(), size };
            if let Some(dir) = state.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&state, serde_json::to_vec(&record).unwrap_or_default());
            self.wr.queue_header(&Request::PutData.to_header(id, size - offset))?;
        }

        progress.begin(remote, "upload", size);
        progress.advance(offset);
        let hash_while_reading = full_hash.is_none();
        let path = local.to_path_buf();
        let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
        let reader = tokio::task::spawn_blocking(move || read_blocks(&path, offset, size, hash_while_reading, tx));
        let mut sent = 0u64;
        while let Some(block) = rx.recv().await {
            self.wr.write_body(&block).await?;
            sent += block.len() as u64;
            progress.advance(block.len() as u64);
        }
        let hashed = reader.await.map_err(|_| ClientError::Local("file reader failed".into()))??;
        if sent != size - offset {
            return Err(ClientError::Local(format!("{} changed size while being sent", local.display())));
        }
        let sha256 = full_hash.or(hashed).unwrap_or_default();
        self.wr.send(&Request::PutEnd { sha256: sha256.clone() }.to_header(id, 0)).await?;
        let answer = self.read_answer(id).await;
        progress.end();
        let answer: PutAnswer = answer?.decode()?;
        if answer.sha256 != sha256 {
            return Err(ClientError::Checksum { what: remote.into(), expected: sha256, actual: answer.sha256 });
        }
        let _ = std::fs::remove_file(&state);
        summary.transferred = sent;
        summary.sha256 = sha256;
        Ok(summary)
    }

    /// Uploads many small files without a round trip per file: requests and
    /// bodies stream out while answers are read concurrently. Returns one
    /// result per file, in order.
    pub async fn put_many(
        &mut self,
        files: &[(PathBuf, String)],
        overwrite: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let first = self.reserve_ids(files.len() as u64);
        let (rd, wr) = (&mut self.rd, &mut self.wr);
        let (ids_tx, mut ids_rx) = mpsc::unbounded_channel::<Option<u64>>();
        let writer = async {
            for (i, (local, remote)) in files.iter().enumerate() {
                let id = first + i as u64;
                let data = match std::fs::read(local) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ids_tx.send(None);
                        progress.note(&format!("cannot read {}: {e}", local.display()));
                        continue;
                    }
                };
                let sha256 = hex::encode(Sha256::digest(&data));
                let req = Request::Put {
                    path: remote.clone(),
                    size: data.len() as u64,
                    offset: 0,
                    upload_id: None,
                    sha256: None,
                    overwrite,
                    wait: false,
                };
                wr.queue_header(&req.to_header(id, data.len() as u64))?;
                wr.write_body(&data).await?;
                wr.queue_header(&Request::PutEnd { sha256 }.to_header(id, 0))?;
                if wr.queued() > 256 * 1024 {
                    wr.flush().await?;
                }
                let _ = ids_tx.send(Some(id));
            }
            drop(ids_tx);
            wr.flush().await?;
            Ok::<(), ClientError>(())
        };
        let reader = async {
            let mut results = Vec::with_capacity(files.len());
            while let Some(id) = ids_rx.recv().await {
                let Some(id) = id else {
                    results.push(Err(ClientError::Local("unreadable local file".into())));
                    continue;
                };
                match read_answer(rd, id).await {
                    Ok(_) => {
                        progress.advance(1);
                        results.push(Ok(()));
                    }
                    Err(e @ ClientError::Server(_)) => results.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            Ok(results)
        };
        let (w, r) = tokio::join!(writer, reader);
        w?;
        r
    }

    /// Downloads one file into `local`, through `local.part`, verified before
    /// it is renamed into place.
    pub async fn get_file(
        &mut self,
        remote: &str,
        local: &Path,
        opts: &GetOptions,
        progress: &dyn Progress,
    ) -> Result<TransferSummary, ClientError> {
        if !opts.overwrite && std::fs::symlink_metadata(local).is_ok() {
            return Err(ClientError::Local(format!("{} already exists (use --force to overwrite)", local.display())));
        }
        let part = part_path(local);
        let mut summary = TransferSummary::default();
        let mut offset = 0u64;
        let mut prefix_hasher = Sha256::new();
        if opts.resume
            && let Ok(m) = std::fs::metadata(&part)
            && m.len() > 0
        {
            let have = m.len();
            let server: HashAnswer =
                self.request(&Request::Hash { path: remote.into(), length: Some(have) }).await?.decode()?;
            let mut hasher = Sha256::new();
            let mut f = std::fs::File::open(&part).map_err(|e| local_err("cannot open", &part, e))?;
            progress.begin(&part.display().to_string(), "hashing", have);
            hash_reader(&mut f, have, &mut hasher, progress).map_err(|e| local_err("cannot read", &part, e))?;
            progress.end();
            if server.length == have && hex::encode(hasher.clone().finalize()) == server.sha256 {
                offset = have;
                prefix_hasher = hasher;
            } else {
                progress.note("the partial download does not match the server's file; starting over");
                summary.restarted = true;
            }
        }
        let id = self.next_id();
        self.wr.send(&Request::Get { path: remote.into(), offset }.to_header(id, 0)).await?;
        let head = self.read_answer(id).await?;
        let body_len = head.body_len;
        let info: GetAnswer = head.decode()?;
        if info.offset != offset || info.size < offset || body_len != info.size - offset {
            return Err(ClientError::protocol("get: the server's answer does not match the request"));
        }
        summary.size = info.size;
        summary.resumed_from = offset;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(&part)
            .map_err(|e| local_err("cannot create", &part, e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| local_err("cannot seek", &part, e))?;
        file.set_len(offset).map_err(|e| local_err("cannot truncate", &part, e))?;

        progress.begin(remote, "download", info.size);
        progress.advance(offset);
        let (tx, mut rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
        let writer = tokio::task::spawn_blocking(move || {
            let mut hasher = prefix_hasher;
            let mut result = Ok(());
            while let Some(block) = rx.blocking_recv() {
                hasher.update(&block);
                if result.is_ok() {
                    result = file.write_all(&block);
                }
            }
            result.and_then(|_| file.sync_all()).map(|_| hex::encode(hasher.finalize()))
        });
        let mut received = 0u64;
        let mut stream_err = None;
        loop {
            match self.rd.read_body_chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    progress.advance(chunk.len() as u64);
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
        let written = writer.await.map_err(|_| ClientError::Local("file writer failed".into()));
        progress.end();
        if let Some(e) = stream_err {
            return Err(e.into());
        }
        let actual = written?.map_err(|e| local_err("cannot write", &part, e))?;
        let trailer = self.read_answer(id).await;
        let expected = match trailer {
            Ok(t) => t.decode::<GetTrailer>()?.sha256,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        if actual != expected {
            let _ = std::fs::remove_file(&part);
            return Err(ClientError::Checksum { what: remote.into(), expected, actual });
        }
        std::fs::rename(&part, local).map_err(|e| local_err("cannot rename into", local, e))?;
        summary.transferred = received;
        summary.sha256 = actual;
        Ok(summary)
    }

    /// Downloads many small files with all requests sent up front.
    pub async fn get_many(
        &mut self,
        files: &[(String, PathBuf)],
        overwrite: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let first = self.reserve_ids(files.len() as u64);
        let (rd, wr) = (&mut self.rd, &mut self.wr);
        let writer = async {
            for (i, (remote, _)) in files.iter().enumerate() {
                wr.queue_header(&Request::Get { path: remote.clone(), offset: 0 }.to_header(first + i as u64, 0))?;
                if wr.queued() > 64 * 1024 {
                    wr.flush().await?;
                }
            }
            wr.flush().await?;
            Ok::<(), ClientError>(())
        };
        let reader = async {
            let mut results = Vec::with_capacity(files.len());
            for (i, (remote, local)) in files.iter().enumerate() {
                let id = first + i as u64;
                let head = match read_answer(rd, id).await {
                    Ok(h) => h,
                    Err(e @ ClientError::Server(_)) => {
                        results.push(Err(e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut data = Vec::with_capacity(head.body_len.min(SMALL_FILE * 4) as usize);
                while let Some(chunk) = rd.read_body_chunk().await? {
                    data.extend_from_slice(&chunk);
                }
                let trailer = rd.read_header().await?.ok_or_else(|| ClientError::protocol("connection closed"))?;
                let (_, ok) = parse_response(&trailer);
                let result = ok.map_err(ClientError::from).and_then(|_| {
                    let expected = trailer.decode::<GetTrailer>()?.sha256;
                    let actual = hex::encode(Sha256::digest(&data));
                    if actual != expected {
                        return Err(ClientError::Checksum { what: remote.clone(), expected, actual });
                    }
                    write_atomically(local, &data, overwrite)
                });
                progress.advance(1);
                results.push(result);
            }
            Ok(results)
        };
        let (w, r) = tokio::join!(writer, reader);
        w?;
        r
    }
}

/// `name` → `name.part`, beside it.
pub fn part_path(local: &Path) -> PathBuf {
    let mut s = local.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn write_atomically(local: &Path, data: &[u8], overwrite: bool) -> Result<(), ClientError> {
    if !overwrite && std::fs::symlink_metadata(local).is_ok() {
        return Err(ClientError::Local(format!("{} already exists (use --force to overwrite)", local.display())));
    }
    let part = part_path(local);
    std::fs::write(&part, data).map_err(|e| local_err("cannot write", &part, e))?;
    std::fs::rename(&part, local).map_err(|e| local_err("cannot rename into", local, e))
}

fn hash_reader(f: &mut std::fs::File, len: u64, hasher: &mut Sha256, progress: &dyn Progress) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(BLOCK as u64) as usize])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
        left -= n as u64;
    }
    Ok(())
}

/// Reads `offset..size` of a file into the channel in blocks; hashes the
/// whole file when `hash` (the prefix included).
fn read_blocks(
    path: &Path,
    offset: u64,
    size: u64,
    hash: bool,
    tx: mpsc::Sender<Bytes>,
) -> Result<Option<String>, ClientError> {
    let mut f = std::fs::File::open(path).map_err(|e| local_err("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    if hash && offset > 0 {
        hash_reader(&mut f, offset, &mut hasher, &NoProgress).map_err(|e| local_err("cannot read", path, e))?;
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| local_err("cannot seek", path, e))?;
    let mut left = size - offset;
    while left > 0 {
        let want = left.min(BLOCK as u64) as usize;
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(want);
        let filled = (&mut f).take(want as u64).read_to_end(&mut buf).map_err(|e| local_err("cannot read", path, e))?;
        if hash {
            hasher.update(&buf);
        }
        left -= filled as u64;
        if filled == 0 || tx.blocking_send(Bytes::from(buf)).is_err() {
            break;
        }
    }
    Ok(hash.then(|| hex::encode(hasher.finalize())))
}

/// True for errors that a later `-c` may overcome (the connection broke).
pub fn is_resumable(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Frame(_) => true,
        ClientError::Server(w) => w.code.is_retryable() && w.code != ErrorCode::QuotaExceeded,
        _ => false,
    }
}
