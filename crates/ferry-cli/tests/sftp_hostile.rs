//! Issue 14: hostile SFTP clients against the real `ferry serve`, through
//! raw SFTP packets on paramiko channels (`clients/python/hostile_sftp.py`):
//!
//! - 10,000 opens over ten sessions of one user: each session is held to
//!   `sftp.max_handles`, the user to `sftp.max_handles_per_user`, every
//!   refusal says why, the server's descriptors and memory stay bounded,
//!   another user is served meanwhile, and closing gives the budget back;
//! - sessions that pipeline READs and never read an answer: the server
//!   stops reading them (bounded memory), serves another user meanwhile,
//!   and cuts them once a write has waited for the idle timeout.
//!
//! They skip, saying why, without a python3 that has paramiko.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_testkit::{ServerProcess, add_user_cli, sha256_file, write_random_file};

const PW: &str = "hostile sftp 14";

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// The first python3 that has paramiko (Debian's python3-paramiko is for
/// /usr/bin/python3, which a pyenv on PATH may hide).
fn python() -> Option<&'static str> {
    let found = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import paramiko"]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("SKIPPED: python3 with paramiko is not installed (.ci/run installs python3-paramiko)");
    }
    found
}

/// `ferry serve` with users alice (the attacker) and bob.
struct Site {
    tmp: tempfile::TempDir,
    data: PathBuf,
    server: ServerProcess,
}

impl Site {
    fn start(config: &str) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        add_user_cli(&ferry(), &data, "alice", PW, &[]).unwrap();
        add_user_cli(&ferry(), &data, "bob", PW, &[]).unwrap();
        let cfg = tmp.path().join("ferry.toml");
        std::fs::write(&cfg, config).unwrap();
        let server = ServerProcess::spawn(&ferry(), &data, &["--config", cfg.to_str().unwrap()]).unwrap();
        Site { tmp, data, server }
    }

    fn home(&self, user: &str) -> PathBuf {
        self.data.join("homes").join(user)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// `clients/python/hostile_sftp.py ARGS` as `user`, stdin and stdout piped.
    fn script(&self, python: &str, user: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python/hostile_sftp.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .env("FERRY_SFTP_PORT", self.server.sftp_addr.expect("sftp enabled").port().to_string())
            .env("FERRY_SFTP_USER", user)
            .env("FERRY_SFTP_PASSWORD", PW)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        (child, out)
    }

    /// bob fetches his file through the framed protocol, byte for byte.
    fn bob_is_served(&self) {
        let src = self.home("bob").join("b.bin");
        let back = self.tmp.path().join(format!("b-{}.bin", std::process::id()));
        let _ = std::fs::remove_file(&back);
        let out = Command::new(ferry())
            .arg("get")
            .arg(format!("bob@127.0.0.1:{}/b.bin", self.server.port()))
            .arg(&back)
            .args(["-q", "--accept-new", "--known-hosts"])
            .arg(self.tmp.path().join("known_hosts"))
            .env("FERRY_PASSWORD", PW)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "bob was not served: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sha256_file(&src).unwrap(), sha256_file(&back).unwrap());
    }
}

/// The next JSON line the script prints (bounded by its own timeouts).
fn step(out: &mut BufReader<ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a step ({e}): {line:?}"))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Samples the server's RSS every 20 ms until stopped; returns the peak.
fn sample_peak_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        // Bounded by the test, which stops it; a dead server reads as 0.
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

#[test]
fn issue14_ten_thousand_open_handles_are_refused_past_the_caps() {
    const PER_SESSION: u64 = 256;
    const PER_USER: u64 = 1024;
    let Some(python) = python() else { return };
    let site = Site::start(&format!("[sftp]\nmax_handles = {PER_SESSION}\nmax_handles_per_user = {PER_USER}\n"));
    std::fs::write(site.home("alice").join("f.txt"), "open me").unwrap();
    write_random_file(&site.home("bob").join("b.bin"), 300_000, 5).unwrap();
    site.bob_is_served();
    let (rss_before, fds_before) = (rss_kib(site.pid()), open_fds(site.pid()));

    // Two connections of five SFTP sessions, 1,000 opens each.
    let (mut child, mut out) = site.script(python, "alice", &["handles", "2", "5", "1000", "f.txt"]);
    let held = step(&mut out);
    let opened = held["opened"].as_u64().unwrap();
    let per_session: Vec<u64> = held["per_session"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let refused = held["refused"].as_object().unwrap();
    let (rss_held, fds_held) = (rss_kib(site.pid()), open_fds(site.pid()));
    eprintln!(
        "10,000 opens: {opened} held {per_session:?}; refused {refused:?}; \
         server RSS {rss_before} -> {rss_held} KiB, descriptors {fds_before} -> {fds_held}"
    );
    assert_eq!(opened, PER_USER, "the user's cap across sessions");
    assert!(per_session.iter().all(|&n| n <= PER_SESSION), "a session passed its cap: {per_session:?}");
    assert_eq!(per_session.iter().filter(|&&n| n == PER_SESSION).count(), 4);
    let refusals: u64 = refused.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(refusals, 10_000 - PER_USER);
    for why in refused.keys() {
        // SSH_FX_FAILURE, and a message that says what to do.
        assert!(why.starts_with("4: too many open files"), "unclear refusal: {why}");
        assert!(why.contains("close some first"), "unclear refusal: {why}");
    }
    assert!(refused.keys().any(|k| k.contains("in this session")), "{refused:?}");
    assert!(refused.keys().any(|k| k.contains("for this user across sessions")), "{refused:?}");
    // Bounded: a descriptor per handle at most, and little memory.
    assert!(fds_held <= fds_before + PER_USER as usize + 64, "descriptors {fds_before} -> {fds_held}");
    assert!(rss_held < rss_before + 64 * 1024, "RSS {rss_before} -> {rss_held} KiB");
    // Another user is served while all that is held.
    site.bob_is_served();

    // Closing gives the budget back.
    child.stdin.as_mut().unwrap().write_all(b"close\n").unwrap();
    let reopened = step(&mut out);
    assert_eq!(reopened["opened"], 10, "{reopened}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn issue14_pipelined_reads_never_read_are_held_then_cut() {
    const IDLE_SECS: u64 = 3;
    let Some(python) = python() else { return };
    let site = Site::start(&format!("[limits]\nidle_timeout_secs = {IDLE_SECS}\n"));
    write_random_file(&site.home("alice").join("big.bin"), 2 * 1024 * 1024, 9).unwrap();
    write_random_file(&site.home("bob").join("b.bin"), 300_000, 5).unwrap();
    site.bob_is_served();
    let rss_before = rss_kib(site.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak_rss(site.pid(), Arc::clone(&stop));

    // Eight sessions on one connection, each pipelining 32 KiB READs.
    let (mut child, mut out) = site.script(python, "alice", &["pipeline", "8", "big.bin", "60"]);
    let stalled = step(&mut out);
    // The server stopped reading: the senders are blocked, not done.
    let sent: Vec<u64> = stalled["sent"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // Another user is served while the attack holds its buffers full.
    site.bob_is_served();
    let cut = step(&mut out);
    assert!(child.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let after = rss_kib(site.pid());
    eprintln!(
        "never-reading pipeliners: READs sent before the server stopped reading {sent:?}; \
         cut {cut}; server RSS {rss_before} KiB before, {peak} KiB peak, {after} KiB after"
    );
    assert!(
        cut["closed"].as_array().unwrap().iter().all(|c| c == true),
        "the server kept never-reading sessions open: {cut}"
    );
    assert!(site.log().contains("took no answer for the idle timeout"), "no cut in the log");
    // Each session is held to a few MiB, whatever the client sends.
    assert!(peak < rss_before + 256 * 1024, "RSS {rss_before} -> {peak} KiB");
    site.bob_is_served();
}
