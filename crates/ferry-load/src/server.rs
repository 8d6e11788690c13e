//! The server under test: the real `ferry` binary as a child process on
//! 127.0.0.1, with its open-file limit raised through `prlimit(1)`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::Target;

/// Open files we ask for the server (`prlimit --nofile=N:N`).
const WANT_NOFILE: u64 = 65536;

/// The server's open-file limit: 65536, or this process's hard limit when
/// we may not raise it (no `CAP_SYS_RESOURCE`, as in most containers).
pub fn server_nofile() -> u64 {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX);
    WANT_NOFILE.min(hard)
}

pub struct Server {
    pub ferry: PathBuf,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub fingerprint: String,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Server {
    /// Writes `config_body` (the `[limits]`, `[auth]`... tables) next to a
    /// fresh data folder in `dir` and starts the server on a free port.
    pub fn start(ferry: &Path, dir: &Path, config_body: &str) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let config = dir.join("ferry.toml");
        let text = format!("data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\n{config_body}", data.display().to_string());
        std::fs::write(&config, text)?;
        let mut s = Server {
            ferry: ferry.to_path_buf(),
            dir: dir.to_path_buf(),
            data,
            config,
            port: 0,
            fingerprint: String::new(),
            log: dir.join("server.log"),
            child: None,
            starts: 0,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts the binary (again: same port, same data folder) and waits for its banner.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let listen = format!("127.0.0.1:{}", self.port);
        // prlimit execs the server: the child's PID is the server's.
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={0}:{0}", server_nofile()))
            .arg("--")
            .arg(&self.ferry)
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--listen", &listen, "--no-sftp"])
            .env("FERRY_LOG", std::env::var("FERRY_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} through prlimit", self.ferry.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the banner so the server never blocks on stdout.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut port, mut fp) = (None, None);
        while fp.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                bail!("the server printed no banner; {}: {}", self.log.display(), tail.join(" | "));
            };
            if let Some(a) = line.strip_prefix("ferry listening on ") {
                port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            }
            if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
                fp = Some(f.trim().to_string());
            }
        }
        self.port = port.context("banner without an address")?;
        let fp = fp.context("banner without a fingerprint")?;
        if !self.fingerprint.is_empty() && self.fingerprint != fp {
            bail!("the certificate changed across a restart: {} then {fp}", self.fingerprint);
        }
        self.fingerprint = fp;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn target(&self) -> Target {
        Target { port: self.port, fingerprint: self.fingerprint.clone(), known_hosts: self.dir.join("known_hosts") }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Adds a user with `ferry user add` against the data folder.
    pub fn add_user(&self, name: &str, password: &str, quota: Option<&str>) -> Result<()> {
        let mut cmd = Command::new(&self.ferry);
        cmd.args(["user", "add", name, "--password-stdin", "--config"]).arg(&self.config);
        cmd.arg("--data").arg(&self.data);
        if let Some(q) = quota {
            cmd.args(["--quota", q]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("no stdin")?.write_all(format!("{password}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("ferry user add {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.data.join("homes").join(user)
    }

    /// The server's resident memory in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Open file descriptors of the server.
    pub fn fds(&self) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?.count())
    }

    /// Still running (not exited)?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server: SIGTERM (graceful drain) or SIGKILL. Returns how long it took.
    pub fn stop(&mut self, kill: bool) -> Result<Duration> {
        let Some(mut child) = self.child.take() else { return Ok(Duration::ZERO) };
        let t = Instant::now();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("bad pid")?;
        let sig = if kill { rustix::process::Signal::KILL } else { rustix::process::Signal::TERM };
        let _ = rustix::process::kill_process(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(t.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the server log that look like panics.
    pub fn panics(&self) -> usize {
        std::fs::read_to_string(&self.log).map(|s| s.matches("panicked at").count()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The harness's common server settings: cheap SCRAM for its users.
pub fn base_config(limits: &str, extra: &str) -> String {
    format!("[limits]\n{limits}\n[auth]\nscram_iterations = 4096\n{extra}")
}
