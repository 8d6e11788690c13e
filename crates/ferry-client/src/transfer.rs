//! Uploads and downloads: verified end to end with the hash negotiated at
//! hello (BLAKE3 when both sides have it, else SHA-256), atomic on both
//! sides, resumable after any cut, and pipelined for many small files.
//!
//! File data moves between the disk and the socket through a small bounded
//! channel: a blocking thread reads (or writes) and hashes while the async
//! side does network I/O, so both cores work and memory stays bounded.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_proto::msg::parse_response;
use ferry_proto::{ErrorCode, HashAlgo, Hasher, Request};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::session::{read_answer, wrong_hash};
use crate::{ClientError, Session};

/// Files up to this size are pipelined without waiting for the server's `ready`.
pub const SMALL_FILE: u64 = 1024 * 1024;
/// Blocks between the file thread and the network. Each block costs a
/// hand-over between threads, so 128 KiB blocks cost the plaintext upload
/// a tenth of its speed against 512 KiB; larger still loses the cache when
/// TLS copies a block into records (1 MiB blocks, 8 deep, made that copy
/// cost twice the encryption).
const BLOCK: usize = 512 * 1024;
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
    /// The whole file's hash, verified on both sides, in `algo`.
    pub hash: String,
    pub algo: HashAlgo,
    /// True when a resume was asked for but the data there did not match.
    pub restarted: bool,
}

use ferry_proto::resp::{GetAnswer, GetTrailer, PutAnswer, Ready as ReadyAnswer, UploadStatus as StatusAnswer};

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

/// The hash fields of a `put` or `put_end` carrying `hex` in `algo`:
/// `sha256` for SHA-256 (what every server reads), `algo` and `hash` for
/// BLAKE3.
fn put_hash_fields(algo: HashAlgo, hex: Option<String>) -> (Option<String>, Option<HashAlgo>, Option<String>) {
    match algo {
        HashAlgo::Sha256 => (hex, None, None),
        HashAlgo::Blake3 => (None, Some(algo), hex),
    }
}

fn put_end(algo: HashAlgo, hex: String) -> Request {
    let (sha256, algo, hash) = put_hash_fields(algo, Some(hex));
    Request::PutEnd { sha256, algo, hash }
}

/// Hashes a local file in `algo`: returns the hash of its first `prefix`
/// bytes and of the whole file, and the bytes read.
pub fn hash_local(
    path: &Path,
    prefix: u64,
    algo: HashAlgo,
    progress: &dyn Progress,
) -> Result<(String, String, u64), ClientError> {
    let mut f = std::fs::File::open(path).map_err(|e| local_err("cannot open", path, e))?;
    let size = f.metadata().map_err(|e| local_err("cannot stat", path, e))?.len();
    progress.begin(&path.display().to_string(), "hashing", size);
    let mut hasher = Hasher::new(algo);
    let mut prefix_hash = if prefix == 0 { Some(Hasher::new(algo).finalize_hex()) } else { None };
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
            prefix_hash = Some(hasher.clone().finalize_hex());
        }
    }
    progress.end();
    let full = hasher.finalize_hex();
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
        let algo = self.hash_algo();
        let state = resume_path(opts, self, local, remote);
        let mut summary = TransferSummary { size, algo, ..Default::default() };
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
                let named = self.name_algo(algo);
                let req = Request::UploadStatus { path: remote.into(), size, upload_id: saved_id, algo: named };
                let status: StatusAnswer = self.request(&req).await?.decode()?;
                if status.found && status.offset > 0 {
                    let theirs = status.prefix(algo).ok_or_else(|| wrong_hash("upload_status", algo))?.to_string();
                    let (prefix, full, _) = hash_local(local, status.offset, algo, progress)?;
                    if prefix == theirs && status.offset <= size {
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
        let (sha256, named, hash) = put_hash_fields(algo, full_hash.clone());
        let req = Request::Put {
            path: remote.into(),
            size,
            offset,
            upload_id,
            sha256,
            overwrite: opts.overwrite,
            wait,
            algo: named,
            hash,
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
        let hashing = hash_while_reading.then_some(algo);
        let reader = tokio::task::spawn_blocking(move || read_blocks(&path, offset, size, hashing, tx));
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
        let hash = full_hash.or(hashed).unwrap_or_default();
        self.wr.send(&put_end(algo, hash.clone()).to_header(id, 0)).await?;
        let answer = self.read_answer(id).await;
        progress.end();
        let answer: PutAnswer = answer?.decode()?;
        let stored = answer.digest.get(algo).ok_or_else(|| wrong_hash("put", algo))?;
        if stored != hash {
            return Err(ClientError::Checksum { what: remote.into(), expected: hash, actual: stored.to_string() });
        }
        let _ = std::fs::remove_file(&state);
        summary.transferred = sent;
        summary.hash = hash;
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
        let algo = self.hash_algo();
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
                let hash = algo.digest_hex(&data);
                let req = Request::Put {
                    path: remote.clone(),
                    size: data.len() as u64,
                    offset: 0,
                    upload_id: None,
                    sha256: None,
                    overwrite,
                    wait: false,
                    algo: None,
                    hash: None,
                };
                wr.queue_header(&req.to_header(id, data.len() as u64))?;
                wr.write_body(&data).await?;
                wr.queue_header(&put_end(algo, hash).to_header(id, 0))?;
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
        let algo = self.hash_algo();
        let mut summary = TransferSummary { algo, ..Default::default() };
        let mut offset = 0u64;
        let mut prefix_hasher = Hasher::new(algo);
        if opts.resume
            && let Ok(m) = std::fs::metadata(&part)
            && m.len() > 0
        {
            let have = m.len();
            let (theirs, length) = self.hash_as(remote, Some(have), algo).await?;
            let mut hasher = Hasher::new(algo);
            let mut f = std::fs::File::open(&part).map_err(|e| local_err("cannot open", &part, e))?;
            progress.begin(&part.display().to_string(), "hashing", have);
            hash_reader(&mut f, have, &mut hasher, progress).map_err(|e| local_err("cannot read", &part, e))?;
            progress.end();
            if length == have && hasher.clone().finalize_hex() == theirs {
                offset = have;
                prefix_hasher = hasher;
            } else {
                progress.note("the partial download does not match the server's file; starting over");
                summary.restarted = true;
            }
        }
        let id = self.next_id();
        let named = self.name_algo(algo);
        self.wr.send(&Request::Get { path: remote.into(), offset, algo: named }.to_header(id, 0)).await?;
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
            result.and_then(|_| file.sync_all()).map(|_| hasher.finalize_hex())
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
        let expected = match trailer.and_then(|t| trailer_hash(&t, algo)) {
            Ok(hex) => hex,
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
        summary.hash = actual;
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
        let (algo, named) = (self.hash_algo(), self.name_algo(self.hash_algo()));
        let (rd, wr) = (&mut self.rd, &mut self.wr);
        let writer = async {
            for (i, (remote, _)) in files.iter().enumerate() {
                let get = Request::Get { path: remote.clone(), offset: 0, algo: named };
                wr.queue_header(&get.to_header(first + i as u64, 0))?;
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
                    let expected = trailer_hash(&trailer, algo)?;
                    let actual = algo.digest_hex(&data);
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

/// The whole file's hash in `algo` from a `get` trailer.
fn trailer_hash(trailer: &ferry_proto::Header, algo: HashAlgo) -> Result<String, ClientError> {
    let t: GetTrailer = trailer.decode()?;
    t.digest.get(algo).map(str::to_string).ok_or_else(|| wrong_hash("get", algo))
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

fn hash_reader(f: &mut std::fs::File, len: u64, hasher: &mut Hasher, progress: &dyn Progress) -> std::io::Result<()> {
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
/// whole file in `hash` when given (the prefix included).
fn read_blocks(
    path: &Path,
    offset: u64,
    size: u64,
    hash: Option<HashAlgo>,
    tx: mpsc::Sender<Bytes>,
) -> Result<Option<String>, ClientError> {
    let mut f = std::fs::File::open(path).map_err(|e| local_err("cannot open", path, e))?;
    let mut hasher = hash.map(Hasher::new);
    if let Some(h) = hasher.as_mut()
        && offset > 0
    {
        hash_reader(&mut f, offset, h, &NoProgress).map_err(|e| local_err("cannot read", path, e))?;
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| local_err("cannot seek", path, e))?;
    let mut left = size - offset;
    while left > 0 {
        let want = left.min(BLOCK as u64) as usize;
        // One read per block: `read_to_end` into spare capacity starts at
        // 8 KiB reads and cost five read calls per block.
        let mut buf = vec![0u8; want];
        let filled = read_full(&mut f, &mut buf).map_err(|e| local_err("cannot read", path, e))?;
        buf.truncate(filled);
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        left -= filled as u64;
        if filled == 0 || tx.blocking_send(Bytes::from(buf)).is_err() {
            break;
        }
    }
    Ok(hasher.map(Hasher::finalize_hex))
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// True for errors that a later `-c` may overcome (the connection broke).
pub fn is_resumable(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Frame(_) => true,
        ClientError::Server(w) => w.code.is_retryable() && w.code != ErrorCode::QuotaExceeded,
        _ => false,
    }
}
