//! Issue 5: remote commands through the real server and client, at the
//! library level (`Session::exec` against an in-process server) and through
//! the `ferry` binary (exit codes, stdin, signals, memory).
//!
//! Every command that outlives a test step carries a unique marker argument
//! (`sleep 1000.<pid><n>`) so that parallel runs never confuse each other's
//! processes; `/proc/*/cmdline` is scanned for it with a bounded wait.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry_client::{ClientError, ErrorCode, ExecOutcome, ExecStreams, Session};
use ferry_server::ServerConfig;
use ferry_testkit::{ServerProcess, TestServer, add_user_cli, write_random_file};
use tokio::io::AsyncWrite;

const PW: &str = "exec pw";

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A `sleep` argument no other process on the machine carries.
fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("1000.{}{:03}", std::process::id(), N.fetch_add(1, Ordering::Relaxed) + 100)
}

/// Pids of processes whose command line contains `marker` as one argument,
/// the local `ferry exec` clients (which carry it too) left out.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let mut args = cmdline.split(|b| *b == 0);
        if args.next().is_some_and(|a| a.ends_with(b"/ferry")) {
            continue;
        }
        if args.any(|arg| arg == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits (bounded) until `n` processes carry `marker`.
fn wait_for_marker(marker: &str, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if pids_with(marker).len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits (bounded) until no process carries `marker`; the survivors otherwise.
fn wait_marker_gone(marker: &str, within: Duration) -> Result<(), Vec<u32>> {
    let deadline = Instant::now() + within;
    loop {
        let left = pids_with(marker);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The children of `pid` (all threads) and their states, e.g. `(1234, 'Z')`.
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(t.path().join("children")) else { continue };
        for child in list.split_whitespace().filter_map(|s| s.parse::<u32>().ok()) {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?');
            out.push((child, state));
        }
    }
    out
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> Vec<String> {
    argv(&["sh", "-c", script])
}

// ---------------------------------------------------------------------------
// Library level: Session::exec against an in-process server.

async fn server_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let server = TestServer::start_with(tweak).await.unwrap();
    server.add_user("alice", PW, None, true).unwrap();
    server
}

async fn run(session: &mut Session, argv: &[String], stdin: Option<&[u8]>) -> (ExecOutcome, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let streams = ExecStreams { stdin, stdout: &mut out, stderr: &mut err };
    let outcome = session.exec(argv, streams, std::future::pending()).await.unwrap();
    (outcome, out, err)
}

fn wire_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server(w) => Some(w.code),
        _ => None,
    }
}

/// Output pieces with the time each arrived.
type Pieces = Arc<Mutex<Vec<(Duration, Vec<u8>)>>>;

/// Records when each piece of output arrived.
#[derive(Clone, Default)]
struct Stamped {
    start: Option<Instant>,
    pieces: Pieces,
    first: Arc<tokio::sync::Notify>,
}

impl AsyncWrite for Stamped {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let at = self.start.map(|s| s.elapsed()).unwrap_or_default();
        self.pieces.lock().unwrap().push((at, buf.to_vec()));
        self.first.notify_one();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn output_streams_as_it_comes_not_at_the_end() {
    let server = server_with(|_| {}).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let out = Stamped { start: Some(Instant::now()), ..Stamped::default() };
    let pieces = Arc::clone(&out.pieces);
    let started = Instant::now();
    let streams = ExecStreams { stdin: None::<&[u8]>, stdout: out, stderr: tokio::io::sink() };
    let script = sh("echo first; sleep 1.5; echo second");
    let outcome = s.exec(&script, streams, std::future::pending()).await.unwrap();
    let ended = started.elapsed();
    assert_eq!(outcome.exit_code, Some(0));
    let pieces = pieces.lock().unwrap().clone();
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_eq!(pieces[0].1, b"first\n");
    assert_eq!(pieces[1].1, b"second\n");
    assert!(ended - pieces[0].0 >= Duration::from_millis(1000), "first piece at {:?}, end at {ended:?}", pieces[0].0);
}

#[tokio::test]
async fn stdout_and_stderr_land_in_their_own_streams() {
    let server = server_with(|_| {}).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let (o, out, err) = run(&mut s, &sh("echo to-out; echo to-err >&2; echo more-out"), None).await;
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(out, b"to-out\nmore-out\n");
    assert_eq!(err, b"to-err\n");
}

#[tokio::test]
async fn exit_codes_and_death_by_signal_come_back() {
    let server = server_with(|_| {}).await;
    let mut s = server.login("alice", PW).await.unwrap();
    for code in [0, 1, 42] {
        let (o, _, _) = run(&mut s, &sh(&format!("exit {code}")), None).await;
        assert_eq!(o, ExecOutcome { exit_code: Some(code), signal: None, timed_out: false });
        assert_eq!(o.shell_code(), code);
    }
    let (o, _, _) = run(&mut s, &sh("kill -9 $$"), None).await;
    assert_eq!(o, ExecOutcome { exit_code: None, signal: Some(9), timed_out: false });
    assert_eq!(o.shell_code(), 137);
    // The session is still usable afterwards.
    assert!(s.pwd().await.is_ok());
}

#[tokio::test]
async fn timeout_kills_the_command_and_its_children() {
    let server = server_with(|c| c.exec.timeout_secs = 2).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let m = marker();
    let started = Instant::now();
    let (o, out, _) = run(&mut s, &sh(&format!("sleep {m} & sleep {m} & echo $!; wait")), None).await;
    assert!(o.timed_out, "{o:?}");
    assert_eq!(o.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(!out.is_empty(), "the command printed its child's pid before the timeout");
    wait_marker_gone(&m, Duration::from_secs(5)).expect("children of a timed-out command survived");
}

#[tokio::test]
async fn user_without_permission_is_refused() {
    let server = server_with(|_| {}).await;
    server.add_user("bob", PW, None, false).unwrap();
    let mut s = server.login("bob", PW).await.unwrap();
    let streams = ExecStreams { stdin: None::<&[u8]>, stdout: tokio::io::sink(), stderr: tokio::io::sink() };
    let e = s.exec(&argv(&["true"]), streams, std::future::pending()).await.unwrap_err();
    assert_eq!(wire_code(&e), Some(ErrorCode::NotPermitted), "{e}");
    assert!(s.pwd().await.is_ok());
}

#[tokio::test]
async fn allowlist_refuses_a_command_not_in_it() {
    let server = server_with(|c| c.exec.allowlist = vec!["echo".into()]).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let streams = ExecStreams { stdin: None::<&[u8]>, stdout: tokio::io::sink(), stderr: tokio::io::sink() };
    let e = s.exec(&sh("echo sneaky"), streams, std::future::pending()).await.unwrap_err();
    assert_eq!(wire_code(&e), Some(ErrorCode::NotPermitted), "{e}");
    assert!(e.to_string().contains("allowlist"), "{e}");
    let (o, out, _) = run(&mut s, &argv(&["echo", "allowed"]), None).await;
    assert_eq!((o.exit_code, out.as_slice()), (Some(0), &b"allowed\n"[..]));
}

#[tokio::test]
async fn concurrent_command_cap_per_user_gives_busy() {
    let server = server_with(|c| c.exec.max_per_user = 1).await;
    server.add_user("carol", PW, None, true).unwrap();
    let mut first = server.login("alice", PW).await.unwrap();
    let mut second = server.login("alice", PW).await.unwrap();
    let mut other = server.login("carol", PW).await.unwrap();
    let m = marker();
    let out = Stamped::default();
    let ready = Arc::clone(&out.first);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let script = sh(&format!("echo ready; exec sleep {m}"));
    let running = tokio::spawn(async move {
        let streams = ExecStreams { stdin: None::<&[u8]>, stdout: out, stderr: tokio::io::sink() };
        let cancel = async {
            let _ = stop_rx.await;
        };
        first.exec(&script, streams, cancel).await
    });
    tokio::time::timeout(Duration::from_secs(10), ready.notified()).await.expect("first command started");
    let streams = ExecStreams { stdin: None::<&[u8]>, stdout: tokio::io::sink(), stderr: tokio::io::sink() };
    let e = second.exec(&argv(&["true"]), streams, std::future::pending()).await.unwrap_err();
    assert_eq!(wire_code(&e), Some(ErrorCode::Busy), "{e}");
    // The cap is per user: carol is not affected.
    let (o, _, _) = run(&mut other, &argv(&["true"]), None).await;
    assert_eq!(o.exit_code, Some(0));
    // Cancelling frees the seat and kills the command.
    stop_tx.send(()).unwrap();
    let o = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();
    assert_eq!(o.signal, Some(9));
    wait_marker_gone(&m, Duration::from_secs(5)).expect("cancelled command survived");
    let (o, _, _) = run(&mut second, &argv(&["true"]), None).await;
    assert_eq!(o.exit_code, Some(0));
}

/// Regression: a stdin write interrupted by output was restarted from the
/// start of its chunk, so `cat` echoed some input twice.
#[tokio::test]
async fn stdin_is_forwarded_intact_while_output_flows_back() {
    let server = server_with(|_| {}).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let mut data = vec![0u8; 5 * 1024 * 1024 + 17];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (o, out, _) = tokio::time::timeout(Duration::from_secs(60), run(&mut s, &argv(&["cat"]), Some(&data)))
        .await
        .expect("cat deadlocked");
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "echoed stdin differs from what was sent");
    let (o, out, _) = run(&mut s, &argv(&["wc", "-l"]), Some(b"a\nb\nc\n")).await;
    assert_eq!((o.exit_code, String::from_utf8_lossy(&out).trim()), (Some(0), "3"));
}

/// Accepts one write, then fails like a closed pipe (`ferry exec ... | head -1`).
struct ClosesAfterOneWrite(bool);

impl AsyncWrite for ClosesAfterOneWrite {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Regression: a failing local output returned at once, leaving the command
/// running and the session in the middle of the exec's frames.
#[tokio::test]
async fn closed_local_output_cancels_the_command_and_keeps_the_session() {
    let server = server_with(|_| {}).await;
    let mut s = server.login("alice", PW).await.unwrap();
    let m = marker();
    let streams = ExecStreams { stdin: None::<&[u8]>, stdout: ClosesAfterOneWrite(false), stderr: tokio::io::sink() };
    let r = tokio::time::timeout(Duration::from_secs(20), s.exec(&argv(&["yes", &m]), streams, std::future::pending()))
        .await
        .expect("exec did not end after its output closed");
    match r {
        Err(ClientError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("expected a broken pipe, got {other:?}"),
    }
    wait_marker_gone(&m, Duration::from_secs(5)).expect("the command outlived its closed output");
    assert!(s.pwd().await.is_ok(), "the session is out of step after the exec");
    let (o, out, _) = run(&mut s, &argv(&["echo", "next"]), None).await;
    assert_eq!((o.exit_code, out.as_slice()), (Some(0), &b"next\n"[..]));
}

// ---------------------------------------------------------------------------
// Through the binary.

struct Bin {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    kh: PathBuf,
    server: ServerProcess,
}

impl Bin {
    /// A `ferry serve` process with `config` as its TOML and alice (exec) and bob (no exec).
    fn start(config: &str) -> Bin {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let kh = tmp.path().join("known_hosts");
        add_user_cli(&ferry(), &data, "alice", PW, &["--allow-exec"]).unwrap();
        add_user_cli(&ferry(), &data, "bob", PW, &[]).unwrap();
        let cfg = tmp.path().join("ferry.toml");
        std::fs::write(&cfg, config).unwrap();
        let server = ServerProcess::spawn(&ferry(), &data, &["--config", cfg.to_str().unwrap()]).unwrap();
        Bin { _tmp: tmp, data, kh, server }
    }

    fn remote(&self, user: &str) -> String {
        format!("{user}@127.0.0.1:{}", self.server.port())
    }

    fn exec_cmd(&self, user: &str, extra: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new(ferry());
        cmd.args(["exec", &self.remote(user)])
            .args(extra)
            .arg("--known-hosts")
            .arg(&self.kh)
            .arg("--accept-new")
            .arg("--")
            .args(command)
            .env("FERRY_PASSWORD", PW);
        cmd
    }

    fn exec(&self, user: &str, command: &[&str]) -> Output {
        self.exec_cmd(user, &["-n"], command).stdin(Stdio::null()).output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (bounded) for a child process to exit.
fn wait_child(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

#[test]
fn binary_exit_codes_streams_and_signal_death() {
    let b = Bin::start("");
    for code in [0, 1, 42] {
        let o = b.exec("alice", &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(o.status.code(), Some(code), "{}", text(&o.stderr));
    }
    let o = b.exec("alice", &["sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("signal 9"), "{}", text(&o.stderr));
    let o = b.exec("alice", &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "to-out\n");
    assert_eq!(text(&o.stderr), "to-err\n");
}

#[test]
fn binary_refuses_a_user_without_permission_and_logs_it() {
    let b = Bin::start("");
    let o = b.exec("bob", &["echo", "hi"]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    assert!(text(&o.stderr).contains("not permitted"), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log().contains("exec refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = b.log();
    let line = log.lines().find(|l| l.contains("exec refused")).unwrap_or_else(|| panic!("not logged: {log}"));
    assert!(line.contains("bob") && line.contains("echo"), "{line}");
}

#[test]
fn binary_allowlist_refuses_a_command_not_in_it() {
    let b = Bin::start("[exec]\nallowlist = [\"echo\"]\n");
    let o = b.exec("alice", &["sh", "-c", "echo sneaky"]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    assert!(text(&o.stderr).contains("allowlist"), "{}", text(&o.stderr));
    let o = b.exec("alice", &["echo", "fine"]);
    assert_eq!((o.status.code(), text(&o.stdout).as_str()), (Some(0), "fine\n"));
}

#[test]
fn binary_timeout_leaves_no_process_and_no_zombie() {
    let b = Bin::start("[exec]\ntimeout_secs = 2\n");
    let m = marker();
    let started = Instant::now();
    let o = b.exec("alice", &["sh", "-c", &format!("sleep {m} & sleep {m} & echo $!; wait")]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("time limit"), "{}", text(&o.stderr));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    wait_marker_gone(&m, Duration::from_secs(5)).expect("children of a timed-out command survived");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(b.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children_of(b.pid()), vec![], "the server kept children (zombies?)");
}

#[test]
fn binary_forwards_stdin() {
    let b = Bin::start("");
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("lines.txt");
    let body: String = (0..1234).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&lines, body).unwrap();
    let o = b.exec_cmd("alice", &[], &["wc", "-l"]).stdin(std::fs::File::open(&lines).unwrap()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "1234");

    // 5 MB echoed back by cat: input and output flow at once, no deadlock.
    let big = dir.path().join("big.bin");
    write_random_file(&big, 5 * 1024 * 1024 + 3, 7).unwrap();
    let mut child = b
        .exec_cmd("alice", &[], &["cat"])
        .stdin(std::fs::File::open(&big).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    let status = wait_child(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "cat through ferry exec did not finish");
    let echoed = reader.join().unwrap().unwrap();
    assert_eq!(echoed.len() as u64, std::fs::metadata(&big).unwrap().len());
    assert!(echoed == std::fs::read(&big).unwrap(), "echoed stdin differs");
}

/// Starts `ferry exec alice -- sleep MARKER` and waits until the command runs.
fn start_sleeper(b: &Bin, m: &str) -> Child {
    let mut child = b
        .exec_cmd("alice", &[], &["sleep", m])
        .stdin(Stdio::piped()) // open and silent, like a terminal nobody types in
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_for_marker(m, 1, Duration::from_secs(20)) {
        let _ = child.kill();
        panic!("the remote sleep never started");
    }
    child
}

#[test]
fn binary_killing_the_client_kills_the_remote_command() {
    let b = Bin::start("");
    let m = marker();
    let mut child = start_sleeper(&b, &m);
    signal(child.id(), "KILL");
    let _ = child.wait();
    wait_marker_gone(&m, Duration::from_secs(10)).expect("the remote command outlived its killed client");
}

#[test]
fn binary_ctrl_c_cancels_the_remote_command_and_the_client_exits() {
    let b = Bin::start("");
    let m = marker();
    let mut child = start_sleeper(&b, &m);
    // The client catches Ctrl-C before it asks for the command, so a
    // running marker means the signal is caught. (It used to be caught only
    // once the exec future was first polled: a race that killed the client.)
    signal(child.id(), "INT");
    let status = wait_child(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("the client did not exit after Ctrl-C");
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert_eq!(status.code(), Some(137), "killed by SIGKILL remotely: 128+9; {status:?}; stderr: {err}");
    wait_marker_gone(&m, Duration::from_secs(10)).expect("the remote command survived Ctrl-C");
}

/// (VmHWM, VmRSS) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn binary_one_gib_of_output_streams_with_bounded_server_memory() {
    let b = Bin::start("");
    // Warm up: the first session allocates TLS state and buffers once.
    let o = b.exec("alice", &["head", "-c", "1M", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(0));
    let (hwm0, rss0) = memory_kib(b.pid());
    let started = Instant::now();
    let mut child = b
        .exec_cmd("alice", &["-n"], &["head", "-c", "1G", "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    let mut nonzero = false;
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        nonzero |= buf[..n].iter().any(|b| *b != 0);
        total += n as u64;
    }
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("client did not exit");
    let secs = started.elapsed().as_secs_f64();
    let (hwm1, rss1) = memory_kib(b.pid());
    let mib_s = total as f64 / (1024.0 * 1024.0) / secs;
    eprintln!(
        "1 GiB exec: {total} bytes in {secs:.2} s = {mib_s:.0} MiB/s; server VmHWM {hwm0} -> {hwm1} KiB, \
         VmRSS {rss0} -> {rss1} KiB"
    );
    assert_eq!(status.code(), Some(0));
    assert_eq!(total, 1 << 30);
    assert!(!nonzero);
    assert!(hwm1.saturating_sub(hwm0) < 64 * 1024, "server peak memory grew by {} KiB", hwm1 - hwm0);
    let _ = std::io::stderr().flush();
}

/// Issue 12 (quota): what a command writes counts. Written through exec past
/// the quota, it gets uploads refused until the user is back under; a sparse
/// file counts by its length when added and when removed, so removing it
/// never frees more than was counted (usage cannot go negative).
#[tokio::test]
async fn what_a_command_writes_counts_against_the_quota() {
    let server = TestServer::start_with(|_| {}).await.unwrap();
    server.add_user("quota", PW, Some(1 << 20), true).unwrap();
    let mut s = server.login("quota", PW).await.unwrap();
    // A root server runs commands as `exec.run_as` (nobody): let it write the home.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(server.home("quota"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (o, _, err) = run(&mut s, &sh("head -c 1500000 /dev/zero > big"), None).await;
    assert_eq!(o.exit_code, Some(0), "{}", String::from_utf8_lossy(&err));
    let df = s.df().await.unwrap();
    assert_eq!(df.used, 1_500_000, "{df:?}");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("small.bin");
    write_random_file(&local, 10, 1).unwrap();
    let opts = ferry_client::PutOptions::default();
    let refused = s.put_file(&local, "small.bin", &opts, &ferry_client::NoProgress).await.unwrap_err();
    assert_eq!(wire_code(&refused), Some(ErrorCode::QuotaExceeded), "{refused}");
    s.rm("big", false).await.unwrap();
    assert_eq!(s.df().await.unwrap().used, 0);
    s.put_file(&local, "small.bin", &opts, &ferry_client::NoProgress).await.unwrap();
    // A sparse file: counted by its length, freed by the same length.
    let (o, _, _) = run(&mut s, &sh("truncate -s 100M sparse"), None).await;
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(s.df().await.unwrap().used, 10 + (100 << 20));
    s.rm("sparse", false).await.unwrap();
    assert_eq!(s.df().await.unwrap().used, 10, "rm freed exactly what was counted");
    s.rm("sparse", false).await.unwrap_err();
    assert_eq!(s.df().await.unwrap().used, 10);
}
