//! A hostile ferry server, for testing that the client trusts no server
//! (issue 12, item 5). It speaks just enough of the protocol: plaintext
//! `hello`, a real SCRAM-SHA-256 login against one known password (so the
//! client's check of the server's signature passes, as it would for a server
//! whose key was stolen), then `pwd`, `cd`, `ls`, `stat`, `get`, `hash` and
//! `bye`, answered from a crafted [`HostileFs`]: names with `..`, `/`, NUL or
//! escape sequences, and error messages that carry escape sequences.
//!
//! The server runs on its own thread and runtime, so synchronous tests that
//! run the real `ferry` binary can use it. It listens on 127.0.0.1:0, serves
//! at most [`HostileServer::MAX_CONNECTIONS`] connections, and gives up on a
//! silent peer after [`HostileServer::IDLE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::msg::{error_header, ok_header};
use ferry_proto::scram::{ScramServer, Verifier};
use ferry_proto::{Connection, Entry, ErrorCode, FrameCodec, Request, WireError};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

/// The crafted tree a [`HostileServer`] serves. Paths are looked up as the
/// client sends them, without leading or trailing slashes (`""` is the home).
#[derive(Debug, Clone, Default)]
pub struct HostileFs {
    dirs: HashMap<String, Vec<Entry>>,
    files: HashMap<String, Vec<u8>>,
    errors: HashMap<String, String>,
    /// Served for a `get` of any path not in `files` (so that a client that
    /// did ask for a hostile name would get data to write).
    fallback: Option<Vec<u8>>,
    pwd: Option<String>,
    /// Sleep between body chunks of files over 1 MiB (progress bars draw).
    slow: Option<Duration>,
}

/// An entry as the server lists it.
pub fn entry(name: &str, kind: &str, size: u64) -> Entry {
    Entry { name: name.into(), kind: kind.into(), size, mtime: 1_732_390_000, mode: 0o644 }
}

fn key(path: &str) -> String {
    path.trim_matches('/').to_string()
}

impl HostileFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory at `path` that lists exactly `entries`.
    pub fn dir(mut self, path: &str, entries: Vec<Entry>) -> Self {
        self.dirs.insert(key(path), entries);
        self
    }

    /// A file at `path` with `data`.
    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.files.insert(key(path), data.to_vec());
        self
    }

    /// Every request about `path` is refused with this message (code `not_found`).
    pub fn error(mut self, path: &str, message: &str) -> Self {
        self.errors.insert(key(path), message.into());
        self
    }

    /// A `get` of any unknown path answers `data`.
    pub fn serve_any(mut self, data: &[u8]) -> Self {
        self.fallback = Some(data.to_vec());
        self
    }

    /// What `pwd` and `cd` answer (default `/`).
    pub fn pwd(mut self, path: &str) -> Self {
        self.pwd = Some(path.into());
        self
    }

    /// Files over 1 MiB are sent in 128 KiB chunks with this pause between them.
    pub fn slow_bodies(mut self, pause: Duration) -> Self {
        self.slow = Some(pause);
        self
    }

    fn stat(&self, path: &str) -> Result<Entry, WireError> {
        let k = key(path);
        if let Some(msg) = self.errors.get(&k) {
            return Err(WireError::new(ErrorCode::NotFound, msg.clone()));
        }
        let name = k.rsplit('/').next().unwrap_or("").to_string();
        if self.dirs.contains_key(&k) {
            return Ok(entry(&name, "dir", 0));
        }
        match self.files.get(&k) {
            Some(data) => Ok(entry(&name, "file", data.len() as u64)),
            None => Err(WireError::new(ErrorCode::NotFound, format!("{path}: no such file or directory"))),
        }
    }

    fn ls(&self, path: &str) -> Result<Vec<Entry>, WireError> {
        match self.dirs.get(&key(path)) {
            Some(entries) => Ok(entries.clone()),
            None => self.stat(path).map(|e| vec![e]),
        }
    }

    fn data(&self, path: &str) -> Result<&[u8], WireError> {
        let k = key(path);
        if let Some(msg) = self.errors.get(&k) {
            return Err(WireError::new(ErrorCode::NotFound, msg.clone()));
        }
        if let Some(d) = self.files.get(&k) {
            return Ok(d);
        }
        if self.dirs.contains_key(&k) {
            return Err(WireError::new(ErrorCode::IsADirectory, format!("{path}: is a directory")));
        }
        self.fallback.as_deref().ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("{path}: not found")))
    }
}

/// The hostile server; stops when dropped (after its current connections).
pub struct HostileServer {
    pub addr: SocketAddr,
    /// Every request's `op` and path, in order, for assertion messages.
    pub log: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HostileServer {
    pub const MAX_CONNECTIONS: usize = 64;
    pub const IDLE: Duration = Duration::from_secs(30);

    /// Serves `fs` to any user who logs in with `password`.
    pub fn start(password: &str, fs: HostileFs) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let verifier = Verifier::new(password, b"hostile-test-salt", crate::TEST_ITERATIONS)
            .map_err(|e| anyhow::anyhow!("verifier: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let fs = Arc::new(fs);
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                for _ in 0..Self::MAX_CONNECTIONS {
                    let accepted = tokio::select! {
                        r = listener.accept() => r,
                        _ = stopped.changed() => return,
                    };
                    let Ok((socket, _)) = accepted else { return };
                    let (fs, verifier, log) = (Arc::clone(&fs), verifier.clone(), Arc::clone(&log2));
                    tokio::spawn(async move {
                        let _ = serve(socket, &fs, verifier, &log).await;
                    });
                }
            });
        });
        Ok(HostileServer { addr, log, stop })
    }

    /// `USER@127.0.0.1:PORT` followed by `path`.
    pub fn remote(&self, user: &str, path: &str) -> String {
        format!("{user}@{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn serve(socket: TcpStream, fs: &HostileFs, verifier: Verifier, log: &Mutex<Vec<String>>) -> Result<()> {
    let mut conn = Connection::new(socket, FrameCodec::default());
    let mut scram: Option<ScramServer> = None;
    loop {
        let header = match tokio::time::timeout(HostileServer::IDLE, conn.read_header()).await {
            Ok(Ok(Some(h))) => h,
            _ => return Ok(()),
        };
        let (id, req) = Request::from_header(&header);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                conn.send(&error_header(id, &e)).await?;
                continue;
            }
        };
        let path = match &req {
            Request::Ls { path } => path.clone().unwrap_or_default(),
            Request::Stat { path } | Request::Get { path, .. } | Request::Hash { path, .. } => path.clone(),
            _ => String::new(),
        };
        if let Ok(mut l) = log.lock() {
            l.push(format!("{} {path}", header.get_str("op").unwrap_or("?")));
        }
        let answer = match req {
            Request::Hello { .. } => Ok(ok_header(id, &json!({"version": 1, "server": "hostile"}), 0)),
            Request::AuthStart { data, .. } => {
                match ScramServer::start(&data, |_| verifier.clone(), "hostileservernonce") {
                    Ok((s, _user)) => {
                        let first = s.server_first().to_string();
                        scram = Some(s);
                        Ok(ok_header(id, &json!({"data": first}), 0))
                    }
                    Err(e) => Err(WireError::new(ErrorCode::AuthFailed, format!("scram: {e}"))),
                }
            }
            Request::AuthFinish { data } => match scram.take().map(|s| s.finish(&data)) {
                Some(Ok(fin)) => Ok(ok_header(id, &json!({"data": fin}), 0)),
                _ => Err(WireError::new(ErrorCode::AuthFailed, "authentication failed")),
            },
            Request::Pwd | Request::Cd { .. } => {
                Ok(ok_header(id, &json!({"path": fs.pwd.as_deref().unwrap_or("/")}), 0))
            }
            Request::Ls { .. } => fs.ls(&path).map(|e| ok_header(id, &json!({"entries": e, "more": false}), 0)),
            Request::Stat { .. } => fs.stat(&path).map(|e| ok_header(id, &json!({"entry": e}), 0)),
            Request::Hash { .. } => fs.data(&path).map(|d| {
                let sha = hex::encode(Sha256::digest(d));
                ok_header(id, &json!({"sha256": sha, "length": d.len(), "size": d.len()}), 0)
            }),
            Request::Get { offset: 0, .. } => match fs.data(&path) {
                Ok(d) => {
                    send_file(&mut conn, id, d, fs.slow).await?;
                    continue;
                }
                Err(e) => Err(e),
            },
            Request::Bye => {
                conn.send(&ok_header(id, &json!({}), 0)).await?;
                let _ = conn.shutdown().await;
                return Ok(());
            }
            _ => Err(WireError::new(ErrorCode::NotPermitted, "not supported by the hostile test server")),
        };
        let header = answer.unwrap_or_else(|e| error_header(id, &e));
        conn.send(&header).await.context("answering")?;
    }
}

async fn send_file(conn: &mut Connection<TcpStream>, id: u64, data: &[u8], slow: Option<Duration>) -> Result<()> {
    let size = data.len() as u64;
    conn.queue_header(&ok_header(id, &json!({"size": size, "offset": 0, "mtime": 0}), size))?;
    let pause = slow.filter(|_| data.len() > 1024 * 1024);
    for chunk in data.chunks(128 * 1024) {
        conn.write_body(chunk).await?;
        if let Some(p) = pause {
            conn.flush().await?;
            tokio::time::sleep(p).await;
        }
    }
    let sha = hex::encode(Sha256::digest(data));
    conn.send(&ok_header(id, &json!({"done": true, "sha256": sha}), 0)).await?;
    Ok(())
}
