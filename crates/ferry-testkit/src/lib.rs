//! Test-only helpers shared by every test suite: a real ferry server on
//! 127.0.0.1:0 with a temporary data folder and users, in-process
//! ([`TestServer`]) or as the real binary ([`ServerProcess`]). Readiness is
//! signalled (the bound address), never guessed with sleeps.

pub mod hostile;
pub use hostile::{HostileFs, HostileServer};

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_client::{Client, ConnectOptions, HostKeyPolicy, KnownHosts, Remote, Session};
use ferry_server::users::Admin;
use ferry_server::{Running, ServerConfig};
use tempfile::TempDir;

/// PBKDF2 iterations in tests: the RFC 7677 minimum keeps logins fast.
pub const TEST_ITERATIONS: u32 = 4096;

/// A server running inside the test process.
pub struct TestServer {
    pub dir: TempDir,
    pub config: ServerConfig,
    pub addr: SocketAddr,
    pub fingerprint: Option<String>,
    /// The SSH front end's address, when enabled.
    pub sftp_addr: Option<SocketAddr>,
    /// The metrics endpoint's address, with `[metrics] listen`.
    pub metrics_addr: Option<SocketAddr>,
    running: Option<Running>,
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_plaintext() -> Result<Self> {
        Self::start_with(|c| c.insecure_plaintext = true).await
    }

    /// Starts with a configuration adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = ServerConfig {
            data_dir: dir.path().join("data"),
            listen: vec!["127.0.0.1:0".parse()?],
            ..ServerConfig::default()
        };
        config.auth.scram_iterations = TEST_ITERATIONS;
        config.transfer.fsync = false;
        config.sftp.listen = "127.0.0.1:0".parse()?;
        tweak(&mut config);
        let (running, _) = ferry_server::start(config.clone()).await?;
        let addr = running.tcp_addrs[0];
        let fingerprint = running.fingerprint.clone();
        let sftp_addr = running.ssh.as_ref().map(|s| s.addr);
        let metrics_addr = running.metrics_addr;
        Ok(TestServer { dir, config, addr, fingerprint, sftp_addr, metrics_addr, running: Some(running) })
    }

    pub fn admin(&self) -> Result<Admin> {
        Admin::open(self.config.clone())
    }

    pub fn add_user(&self, name: &str, password: &str, quota: Option<u64>, allow_exec: bool) -> Result<()> {
        self.admin()?.add(name, password, quota, allow_exec, None)?;
        Ok(())
    }

    /// The host folder of a user's home.
    pub fn home(&self, name: &str) -> PathBuf {
        self.config.homes_dir().join(name)
    }

    pub fn remote(&self, user: &str) -> Remote {
        Remote { user: user.into(), host: self.addr.ip().to_string(), port: self.addr.port(), path: None }
    }

    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            insecure_plaintext: self.config.insecure_plaintext,
            policy: match &self.fingerprint {
                Some(fp) => HostKeyPolicy::Expect(fp.clone()),
                None => HostKeyPolicy::Strict,
            },
            known_hosts: KnownHosts::new(self.dir.path().join("known_hosts")),
            ..ConnectOptions::default()
        }
    }

    pub async fn connect(&self, user: &str) -> Result<Client> {
        Ok(Client::connect(&self.remote(user), &self.connect_options()).await?)
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<Session> {
        Ok(self.connect(user).await?.login(password).await?)
    }

    /// Logs in offering only `hashes` at hello (`[Sha256]`: a client without BLAKE3).
    pub async fn login_offering(
        &self,
        user: &str,
        password: &str,
        hashes: &[ferry_client::HashAlgo],
    ) -> Result<Session> {
        let opts = ConnectOptions { hashes: hashes.to_vec(), ..self.connect_options() };
        Ok(Client::connect(&self.remote(user), &opts).await?.login(password).await?)
    }

    /// A logged-in plaintext connection that speaks raw frames, for what the
    /// client library never sends (the server must run with
    /// `insecure_plaintext`).
    pub async fn login_raw(
        &self,
        user: &str,
        password: &str,
    ) -> Result<ferry_proto::Connection<tokio::net::TcpStream>> {
        login_raw_at(self.addr, user, password).await
    }

    /// Starts a graceful shutdown and waits for it.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.wait().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }
}

/// The real `ferry serve` binary, for tests that must see what a user sees.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The SSH front end's address, unless started with `--no-sftp`.
    pub sftp_addr: Option<SocketAddr>,
    /// `SHA256:...` of the SSH host key.
    pub ssh_fingerprint: Option<String>,
    pub fingerprint: Option<String>,
    /// The metrics endpoint's address, with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// Everything the server printed on stdout before it was ready.
    pub banner: Vec<String>,
}

impl ServerProcess {
    /// Runs `ferry serve --data DATA --listen 127.0.0.1:0 EXTRA...` and waits
    /// (bounded) for its "listening" line. Logs go to `DATA/../server.log`.
    pub fn spawn(ferry: &Path, data: &Path, extra: &[&str]) -> Result<Self> {
        Self::spawn_env(ferry, data, extra, &[])
    }

    /// [`Self::spawn`] with environment variables set for the server (such
    /// as `FERRY_DATABASE_URL`).
    pub fn spawn_env(ferry: &Path, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let log_path = data.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = Command::new(ferry)
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(sftp_default(extra))
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting ferry serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut banner = Vec::new();
        let mut addr = None;
        let mut fingerprint = None;
        let (mut sftp_addr, mut ssh_fingerprint, mut metrics_addr) = (None, None, None);
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "ferry serve exited early with {status}; log: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                continue;
            };
            if let Some(a) = line.strip_prefix("ferry listening on ") {
                addr = Some(a.trim().parse()?);
            }
            if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            }
            if let Some(a) = line.strip_prefix("sftp listening on ") {
                sftp_addr = a.trim().parse().ok();
            }
            if let Some(f) = line.strip_prefix("ssh host key fingerprint: ") {
                ssh_fingerprint = f.split_whitespace().next().map(str::to_string);
            }
            if let Some(a) = metrics_address(&line) {
                metrics_addr = Some(a);
            }
            let done = line.starts_with("certificate fingerprint") || line.starts_with("WARNING");
            banner.push(line);
            if addr.is_some() && done {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let addr = addr.context("ferry serve did not report its address in time")?;
        Ok(ServerProcess { child, addr, sftp_addr, ssh_fingerprint, fingerprint, metrics_addr, banner })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends a signal (SIGTERM = graceful, SIGKILL = crash).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("server did not exit within {within:?}")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `metrics listening on http://ADDR/metrics ...`.
fn metrics_address(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("metrics listening on http://")?;
    rest.split('/').next()?.parse().ok()
}

/// Tests run in parallel: the SSH front end listens on port 0 unless the
/// test chose an address or turned it off.
fn sftp_default(extra: &[&str]) -> &'static [&'static str] {
    if extra.iter().any(|a| *a == "--sftp-listen" || *a == "--no-sftp") {
        &[]
    } else {
        &["--sftp-listen", "127.0.0.1:0"]
    }
}

/// A logged-in plaintext connection to the server at `addr` that speaks raw
/// frames (the server must run with `insecure_plaintext`).
pub async fn login_raw_at(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<ferry_proto::Connection<tokio::net::TcpStream>> {
    Ok(login_raw_offering(addr, user, password, None).await?.0)
}

/// Like [`login_raw_at`], offering `hashes` at hello (`None`: the field is
/// left out); also returns the hello answer, which names the session's hash.
pub async fn login_raw_offering(
    addr: SocketAddr,
    user: &str,
    password: &str,
    hashes: Option<&[&str]>,
) -> Result<(ferry_proto::Connection<tokio::net::TcpStream>, ferry_proto::Header)> {
    use ferry_proto::scram::ScramClient;
    use ferry_proto::{Connection, FrameCodec, Header, Request};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut conn = Connection::new(tcp, FrameCodec::default());
    async fn ask(conn: &mut Connection<tokio::net::TcpStream>, req: Request, id: u64) -> Result<Header> {
        conn.send(&req.to_header(id, 0)).await?;
        conn.read_header().await?.context("the server closed the connection during login")
    }
    let hashes = hashes.map(|h| h.iter().map(|n| n.to_string()).collect());
    let hello = ask(&mut conn, Request::Hello { version: 1, client: "testkit".into(), hashes }, 1).await?;
    if hello.fields["ok"] != true {
        bail!("hello refused: {hello:?}");
    }
    let scram = ScramClient::new(user, password, "abcdefghijklmnop")?;
    let first =
        ask(&mut conn, Request::AuthStart { mechanism: "SCRAM-SHA-256".into(), data: scram.client_first() }, 2).await?;
    let fin = scram.handle_server_first(first.get_str("data").context("no SCRAM data")?)?;
    let done = ask(&mut conn, Request::AuthFinish { data: fin.client_final().to_string() }, 3).await?;
    if done.fields["ok"] != true {
        bail!("login refused: {done:?}");
    }
    Ok((conn, hello))
}

/// `ferry user add NAME --data DATA --password-stdin [extra]` through the binary.
pub fn add_user_cli(ferry: &Path, data: &Path, name: &str, password: &str, extra: &[&str]) -> Result<()> {
    let mut child = Command::new(ferry)
        .args(["user", "add", name, "--password-stdin", "--data"])
        .arg(data)
        .args(extra)
        .env("FERRY_SCRAM_ITERATIONS", TEST_ITERATIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("user add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift) to `path`.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = [0u8; 8192];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// A blocking TCP connection to `to` from the local address `from` (on
/// Linux all of 127.0.0.0/8 is loopback: 127.0.0.2 is another peer to the
/// server). std has no bind-before-connect; a tokio socket does.
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stream = rt.block_on(async {
        let s = if from.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        s.bind(SocketAddr::new(from, 0))?;
        s.connect(to).await?.into_std()
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file(path, ferry_client::HashAlgo::Sha256)
}

/// The hex hash of a local file in `algo`.
pub fn hash_file(path: &Path, algo: ferry_client::HashAlgo) -> Result<String> {
    let (_, full, _) = ferry_client::hash_local(path, 0, algo, &ferry_client::NoProgress)?;
    Ok(full)
}

impl ServerProcess {
    /// Like [`ServerProcess::spawn`], but listening on `listen` (for a restart
    /// on the port a killed server had; `SO_REUSEADDR` makes the bind immediate).
    pub fn spawn_at(ferry: &Path, data: &Path, listen: SocketAddr, extra: &[&str]) -> Result<Self> {
        let log_path = data.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = Command::new(ferry)
            .args(["serve", "--data"])
            .arg(data)
            .arg("--listen")
            .arg(listen.to_string())
            .args(sftp_default(extra))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting ferry serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint, mut banner) = (None, None, Vec::new());
        let (mut sftp_addr, mut ssh_fingerprint, mut metrics_addr) = (None, None, None);
        // `lines` ends when the server exits, so this loop is bounded by the
        // server's banner (a few lines) or its death.
        for line in lines.by_ref() {
            let line = line?;
            if let Some(a) = line.strip_prefix("ferry listening on ") {
                addr = Some(a.trim().parse()?);
            }
            if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            }
            if let Some(a) = line.strip_prefix("sftp listening on ") {
                sftp_addr = a.trim().parse().ok();
            }
            if let Some(f) = line.strip_prefix("ssh host key fingerprint: ") {
                ssh_fingerprint = f.split_whitespace().next().map(str::to_string);
            }
            if let Some(a) = metrics_address(&line) {
                metrics_addr = Some(a);
            }
            let done = line.starts_with("certificate fingerprint") || line.starts_with("WARNING");
            banner.push(line);
            if addr.is_some() && done {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ferry serve did not start; log: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        };
        Ok(ServerProcess { child, addr, sftp_addr, ssh_fingerprint, fingerprint, metrics_addr, banner })
    }
}

/// What a [`FaultProxy`] does to the one connection it relays.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Flip the byte at this offset of the client→server stream.
    FlipUp(u64),
    /// Flip the byte at this offset of the server→client stream.
    FlipDown(u64),
    /// Cut both directions once this many client→server bytes have passed.
    CutUp(u64),
    /// Stop relaying in both directions once this many client→server bytes
    /// have passed, keeping both sockets open: a half-open connection, as a
    /// network drop leaves it. Held until [`FaultProxy::thaw`], or closed
    /// when the proxy is dropped (at most [`FaultProxy::FREEZE_HOLD`]).
    FreezeUp(u64),
}

/// A TCP relay on 127.0.0.1:0 that damages the first connection as told and
/// relays up to [`FaultProxy::MAX_CONNECTIONS`] later ones faithfully (so that a
/// resume can reach the server through the same address as the cut upload).
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// The fault has happened (the cut, flip or freeze point was reached).
    tripped: AtomicBool,
    /// The proxy was dropped: frozen connections may close.
    released: AtomicBool,
    /// A frozen connection may relay again.
    thawed: AtomicBool,
}

impl FaultProxy {
    pub const MAX_CONNECTIONS: usize = 16;
    pub const FREEZE_HOLD: Duration = Duration::from_secs(120);

    pub fn start(upstream: SocketAddr, fault: Fault) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let state = Arc::new(ProxyState::default());
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            // Each connection is awaited for at most a minute.
            for n in 0..Self::MAX_CONNECTIONS {
                let deadline = Instant::now() + Duration::from_secs(60);
                let client = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => return,
                    }
                };
                let fault = if n == 0 { Some(fault) } else { None };
                let st = Arc::clone(&st);
                std::thread::spawn(move || relay_pair(client, upstream, fault, st));
            }
        });
        Ok(FaultProxy { addr, state })
    }

    /// Waits (bounded) until the fault has happened; false on timeout.
    pub fn wait_tripped(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.state.tripped.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl FaultProxy {
    /// Lets a frozen connection relay again (the network came back).
    pub fn thaw(&self) {
        self.state.thawed.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.released.store(true, Ordering::SeqCst);
    }
}

fn relay_pair(client: std::net::TcpStream, upstream: SocketAddr, fault: Option<Fault>, state: Arc<ProxyState>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = std::net::TcpStream::connect(upstream) else { return };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let pick = |f: fn(Fault) -> Option<u64>| fault.and_then(f);
    let frozen = Arc::new(AtomicBool::new(false));
    let up = Relay {
        flip: pick(|f| if let Fault::FlipUp(n) = f { Some(n) } else { None }),
        cut: pick(|f| if let Fault::CutUp(n) = f { Some(n) } else { None }),
        freeze: pick(|f| if let Fault::FreezeUp(n) = f { Some(n) } else { None }),
        frozen: Arc::clone(&frozen),
        state: Arc::clone(&state),
    };
    let down = Relay {
        flip: pick(|f| if let Fault::FlipDown(n) = f { Some(n) } else { None }),
        cut: None,
        freeze: None,
        frozen,
        state,
    };
    let down = std::thread::spawn(move || relay(s2, c2, down));
    relay(client, server, up);
    let _ = down.join();
}

/// What one direction of a relay does to its stream.
struct Relay {
    flip: Option<u64>,
    cut: Option<u64>,
    freeze: Option<u64>,
    /// This connection is frozen (shared by its two directions).
    frozen: Arc<AtomicBool>,
    state: Arc<ProxyState>,
}

/// Copies `from` → `to` until either side ends, flipping the byte at `flip`,
/// cutting both sockets at `cut`, or from `freeze` on relaying nothing more
/// in either direction, with both sockets open, until thawed or released.
fn relay(mut from: std::net::TcpStream, mut to: std::net::TcpStream, how: Relay) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0u64;
    let mut stop = how.cut.or(how.freeze);
    loop {
        let want = match stop {
            Some(c) => (c - seen).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            how.state.tripped.store(true, Ordering::SeqCst);
            if how.freeze.is_some() {
                how.frozen.store(true, Ordering::SeqCst);
                if how.hold() {
                    stop = None;
                    continue;
                }
            }
            break;
        }
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if how.frozen.load(Ordering::SeqCst) && !how.hold() {
            break;
        }
        if let Some(at) = how.flip.filter(|at| (seen..seen + n as u64).contains(at)) {
            buf[(at - seen) as usize] ^= 0x55;
            how.state.tripped.store(true, Ordering::SeqCst);
        }
        seen += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Relay {
    /// Holds a frozen connection: true once thawed, false once the proxy is
    /// released (dropped) or [`FaultProxy::FREEZE_HOLD`] has passed.
    fn hold(&self) -> bool {
        let deadline = Instant::now() + FaultProxy::FREEZE_HOLD;
        while !self.state.thawed.load(Ordering::SeqCst) {
            if self.state.released.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// The environment variable naming a PostgreSQL server the tests may use
/// (`.ci/run` starts one with `scripts/postgres.sh`): each [`Postgres`]
/// then gets a fresh database of its own in it. Its role needs CREATEDB.
pub const TEST_DATABASE_URL_ENV: &str = "FERRY_TEST_DATABASE_URL";

/// A PostgreSQL database of the test's own, dropped (or its whole throwaway
/// server stopped) at the end: a fresh database in the server named by
/// `FERRY_TEST_DATABASE_URL`, else a server of its own from
/// `scripts/postgres.sh`.
pub struct Postgres {
    /// `postgres://ferry:PASSWORD@127.0.0.1:PORT/DB`: set it as `FERRY_DATABASE_URL`.
    pub url: String,
    owned: PostgresOwned,
}

enum PostgresOwned {
    /// A server of our own: its state folder for `postgres.sh stop`.
    Server(TempDir),
    /// A database in a shared server: the server's URL and the database's name.
    Database { admin_url: String, name: String },
}

/// `scripts/postgres.sh`, from the workspace root.
pub fn postgres_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
}

/// Runs one statement on `url`, on a runtime of its own (callable from
/// async tests and plain ones alike).
fn pg_execute(url: &str, sql: &str) -> Result<()> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(conn);
            client.batch_execute(&sql).await?;
            drop(client);
            let _ = driver.await;
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the PostgreSQL helper thread panicked"))?
}

impl Postgres {
    /// A fresh database, or `None` (with the reason printed) when no
    /// PostgreSQL is installed: the caller skips.
    pub fn start() -> Result<Option<Self>> {
        if let Ok(admin_url) = std::env::var(TEST_DATABASE_URL_ENV) {
            let mut random = [0u8; 8];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
            let name = format!("ferry_test_{}", hex::encode(random));
            pg_execute(&admin_url, &format!("CREATE DATABASE {name}"))
                .with_context(|| format!("creating a database in {TEST_DATABASE_URL_ENV}"))?;
            let (base, _) = admin_url.rsplit_once('/').context("no database name in the URL")?;
            let url = format!("{base}/{name}");
            return Ok(Some(Postgres { url, owned: PostgresOwned::Database { admin_url, name } }));
        }
        let state = tempfile::tempdir()?;
        let out = Command::new("bash")
            .arg(postgres_script())
            .arg("start")
            .arg(state.path().join("pg"))
            .stdin(Stdio::null())
            .output()
            .context("running scripts/postgres.sh")?;
        match out.status.code() {
            Some(0) => {}
            Some(3) => {
                eprintln!("SKIP: PostgreSQL is not installed (apt-get install postgresql)");
                return Ok(None);
            }
            _ => bail!("scripts/postgres.sh start failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
        let url = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(Some(Postgres { url, owned: PostgresOwned::Server(state) }))
    }
}

impl Postgres {
    /// The database's name: the URL's last path segment.
    pub fn database(&self) -> &str {
        let path = self.url.rsplit_once('/').map_or("", |(_, db)| db);
        path.split('?').next().unwrap_or(path)
    }

    /// Runs `sql` from outside the database, with rights over it (from the
    /// server's `postgres` database as its owner, or through
    /// `FERRY_TEST_DATABASE_URL`): for tests that take it away and give it
    /// back (`ALTER DATABASE ... ALLOW_CONNECTIONS false`).
    pub fn execute_outside(&self, sql: &str) -> Result<()> {
        let url = match &self.owned {
            PostgresOwned::Database { admin_url, .. } => admin_url.clone(),
            PostgresOwned::Server(_) => {
                let (base, _) = self.url.rsplit_once('/').context("no database name in the URL")?;
                format!("{base}/postgres")
            }
        };
        pg_execute(&url, sql)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        match &self.owned {
            PostgresOwned::Server(state) => {
                let _ = Command::new("bash")
                    .arg(postgres_script())
                    .arg("stop")
                    .arg(state.path().join("pg"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            PostgresOwned::Database { admin_url, name } => {
                let _ = pg_execute(admin_url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// `GET path` over a fresh TCP connection (HTTP/1.1, `Connection: close`),
/// as a scraper or a load balancer sends it: the status code and the body.
/// Bounded: 10 s per read or write.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.split_whitespace().nth(1).context("no status line")?.parse()?;
    Ok((status, body.to_string()))
}

/// The value of the sample `name` whose labels are exactly `labels` (in
/// any order) in Prometheus text; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (sample, got) = match series.split_once('{') {
            Some((sample, rest)) => {
                let inner = rest.strip_suffix('}')?;
                let mut got: Vec<(String, String)> = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=')?;
                        Some((k.to_string(), v.trim_matches('"').to_string()))
                    })
                    .collect::<Option<_>>()?;
                got.sort();
                (sample, got)
            }
            None => (series, Vec::new()),
        };
        (sample == name && got == want).then(|| value.parse().ok()).flatten()
    })
}

/// `count` consecutive free ports on 127.0.0.1 for the passive range
/// (checked by binding each; another process may still take one later).
pub fn free_port_range(count: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20_000 + (x % 30_000) as u16;
        let held: Vec<_> =
            (base..base + count).map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if held.len() == count as usize {
            return base;
        }
    }
    panic!("no free port range");
}
