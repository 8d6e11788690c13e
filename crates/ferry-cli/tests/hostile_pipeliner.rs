//! Issue 12, item 1: memory per session is bounded whatever the client does.
//!
//! Through real sockets against the real `ferry serve` binary: a logged-in
//! client that pipelines requests with large answers (`pwd` in a deep folder,
//! `ls` of a big one, `stat` of long names) and never reads is held to the
//! unsent cap: the server stops reading its requests, its memory stays flat,
//! and the session is closed once the peer has taken nothing for the idle
//! timeout. So is a client that reads nothing of a `get` body (streamed, or
//! by sendfile) or of a command's output, or that pipelines requests at a
//! quiet command. Another user is served all along.
//!
//! How the close is seen without reading: the server closes a socket with
//! unread requests in it, so the kernel answers with a reset, and the
//! attacker's next (or blocked) write fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_client::{Client, ConnectOptions, KnownHosts, NoProgress, PutOptions, Remote, Session};
use ferry_proto::{Connection, FrameCodec, Request};
use ferry_testkit::{ServerProcess, add_user_cli, login_raw_at, write_random_file};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PW: &str = "pipeliner pw";
const IDLE_SECS: u64 = 3;
const IDLE: Duration = Duration::from_secs(IDLE_SECS);
/// How much later than the idle timeout a stalled session may be seen closed
/// (the reset, a loaded machine).
const SLACK: Duration = Duration::from_secs(4);
/// Every attack gives up after this: a server that never closes fails.
const GIVE_UP: Duration = Duration::from_secs(20);
/// Time the attacks of the second test take to fill the socket buffers of
/// both ends, after which the server's writes stall.
const FILL: Duration = Duration::from_secs(2);
/// A server past this RSS is killed at once (the test has failed anyway):
/// a server without the cap must not take the machine's memory.
const RUNAWAY_KIB: u64 = 2 << 20;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry serve` with a short idle timeout, plaintext (raw frames), the
/// default unsent cap, and users alice (exec) and bob.
struct Bin {
    tmp: tempfile::TempDir,
    data: PathBuf,
    server: ServerProcess,
}

impl Bin {
    fn start() -> Bin {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        add_user_cli(&ferry(), &data, "alice", PW, &["--allow-exec"]).unwrap();
        add_user_cli(&ferry(), &data, "bob", PW, &[]).unwrap();
        let cfg = tmp.path().join("ferry.toml");
        // A long command limit: only the idle timeout may close the sessions below.
        let text = format!("[limits]\nidle_timeout_secs = {IDLE_SECS}\n[exec]\ntimeout_secs = 120\n");
        std::fs::write(&cfg, text).unwrap();
        let args = ["--config", cfg.to_str().unwrap(), "--insecure-plaintext"];
        let server = ServerProcess::spawn(&ferry(), &data, &args).unwrap();
        Bin { tmp, data, server }
    }

    /// The server's log lines about sessions that ended (for a failure's message).
    fn ends(&self) -> String {
        let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("session end")).collect::<Vec<_>>().join("\n")
    }

    fn home(&self, user: &str) -> PathBuf {
        self.data.join("homes").join(user)
    }

    /// The server's resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        rss_kib(self.server.child.id())
    }

    /// A logged-in raw connection.
    async fn raw(&self, user: &str) -> TcpStream {
        login_raw_at(self.server.addr, user, PW).await.unwrap().into_inner()
    }

    async fn session(&self, user: &str) -> Session {
        let remote = Remote { user: user.into(), host: "127.0.0.1".into(), port: self.server.port(), path: None };
        let opts = ConnectOptions {
            insecure_plaintext: true,
            known_hosts: KnownHosts::new(self.tmp.path().join("known_hosts")),
            ..ConnectOptions::default()
        };
        Client::connect(&remote, &opts).await.unwrap().login(PW).await.unwrap()
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Samples the server's RSS every 20 ms until stopped; returns the peak.
/// Kills a server that passes `RUNAWAY_KIB`.
fn sample_peak_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            if peak > RUNAWAY_KIB {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// The frames of `reqs`, as bytes on the wire.
async fn frames(reqs: &[Request]) -> Vec<u8> {
    let mut conn = Connection::new(Vec::new(), FrameCodec::default());
    for (i, r) in reqs.iter().enumerate() {
        conn.queue_header(&r.to_header(100 + i as u64, 0)).unwrap();
    }
    conn.flush().await.unwrap();
    conn.into_inner()
}

/// What a never-reading peer saw.
#[derive(Debug)]
struct Outcome {
    what: &'static str,
    /// Request bytes the server let it write.
    written: u64,
    started: Instant,
    /// When its last write went through.
    last_progress: Instant,
    /// When a write failed: the server had closed.
    closed_at: Option<Instant>,
}

impl Outcome {
    /// From the last write that went through to the close.
    fn stalled_for(&self) -> Option<Duration> {
        self.closed_at.map(|c| c - self.last_progress)
    }
}

/// Writes `batch` again and again, reading nothing, until a write fails (the
/// server closed) or `GIVE_UP` passes. With `pace`, one batch per pace (a
/// probe); without, as fast as the server reads.
async fn never_reading(what: &'static str, mut s: TcpStream, batch: Vec<u8>, pace: Option<Duration>) -> Outcome {
    let started = Instant::now();
    let give_up = started + GIVE_UP;
    let mut out = Outcome { what, written: 0, started, last_progress: started, closed_at: None };
    while Instant::now() < give_up {
        let left = give_up.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.write_all(&batch)).await {
            Ok(Ok(())) => {
                out.written += batch.len() as u64;
                out.last_progress = Instant::now();
            }
            Ok(Err(_)) => {
                out.closed_at = Some(Instant::now());
                break;
            }
            Err(_) => break,
        }
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    out
}

/// Bob's ordinary work until `stop`: (operations done, failures).
async fn bob_works(mut s: Session, stop: Arc<AtomicBool>) -> (u32, Vec<String>) {
    let (mut done, mut failed) = (0, Vec::new());
    // Bounded by the attacks (each gives up after GIVE_UP) that set `stop`.
    while !stop.load(Ordering::Relaxed) {
        let step = tokio::time::timeout(Duration::from_secs(5), async {
            s.pwd().await?;
            s.ls(Some("/")).await?;
            s.df().await?;
            Ok::<_, ferry_client::ClientError>(())
        })
        .await;
        match step {
            Ok(Ok(())) => done += 1,
            Ok(Err(e)) => failed.push(e.to_string()),
            Err(_) => failed.push("bob waited over 5 s".into()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (done, failed)
}

fn check_closed(o: &Outcome, from: Instant) {
    let Some(closed) = o.closed_at else {
        panic!("{}: the server never closed the session within {GIVE_UP:?}: {o:?}", o.what)
    };
    let took = closed.saturating_duration_since(from);
    assert!(took <= IDLE + SLACK, "{}: closed {took:?} after the peer stopped taking bytes: {o:?}", o.what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_reading_pipeliner_is_held_to_the_unsent_cap_and_closed() {
    let bin = Bin::start();
    let home = bin.home("alice");
    // A folder as deep as paths go here (about 3.8 KB: PATH_MAX is 4096), and
    // a big folder of long names (an `ls` answer of about 600 KB).
    let deep: PathBuf = (0..15).map(|i| format!("{i:02}{}", "d".repeat(250))).collect();
    std::fs::create_dir_all(home.join(&deep)).unwrap();
    let long = "n".repeat(240);
    std::fs::create_dir(home.join("big")).unwrap();
    for i in 0..2000 {
        std::fs::write(home.join("big").join(format!("{i:05}{long}")), b"").unwrap();
    }
    let deep_path = format!("/{}", deep.display());

    // Three ways to make large answers out of small requests.
    let cd = frames(&[Request::Cd { path: deep_path.clone() }]).await;
    let pwds = frames(&vec![Request::Pwd; 100]).await;
    let lss = frames(&vec![Request::Ls { path: Some("/big".into()) }; 100]).await;
    let mut mixed = Vec::new();
    for i in 0..25 {
        mixed.push(Request::Pwd);
        mixed.push(Request::Stat { path: format!("/big/{i:05}{long}") });
        mixed.push(Request::Ls { path: Some("/big".into()) });
        mixed.push(Request::Stat { path: deep_path.clone() });
    }
    let mixed = frames(&mixed).await;

    let bob = bin.session("bob").await;
    let before = bin.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak_rss(bin.server.child.id(), stop.clone());
    let bob = tokio::spawn(bob_works(bob, stop.clone()));
    let mut tasks = Vec::new();
    for (what, first, batch) in [
        ("pwd in a deep folder", &cd[..], pwds),
        ("ls of a big folder", &[][..], lss),
        ("pwd, stat and ls mixed", &cd[..], mixed),
    ] {
        // Logged in right before the attack: the idle timeout is short.
        let mut s = bin.raw("alice").await;
        s.write_all(first).await.unwrap();
        tasks.push(tokio::spawn(never_reading(what, s, batch, None)));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let (bob_done, bob_failed) = bob.await.unwrap();
    eprintln!("RSS before {before} KiB, peak {peak} KiB; bob {bob_done} rounds; {outcomes:#?}\n{}", bin.ends());

    for o in &outcomes {
        check_closed(o, o.last_progress);
        // Backpressure: the server stopped reading its requests long before
        // the close (its writes stalled for about the idle timeout).
        let stalled = o.stalled_for().unwrap_or_default();
        assert!(
            stalled + Duration::from_secs(1) >= IDLE,
            "{}: writes went on until {stalled:?} before the close",
            o.what
        );
    }
    // Three sessions, each at most the 1 MiB cap plus one `ls` listing in
    // memory: far from the hundreds of MiB they queued before.
    let grew = peak.saturating_sub(before);
    assert!(grew < 40 * 1024, "server RSS grew by {grew} KiB (before {before}, peak {peak})");
    assert!(bob_failed.is_empty(), "bob was not served during the attack: {bob_failed:?}");
    assert!(bob_done >= 5, "bob got only {bob_done} rounds done");
    // The server still serves alice afterwards.
    let mut s = bin.session("alice").await;
    assert_eq!(s.ls(Some("/big")).await.unwrap().len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_of_nothing_during_a_get_body_or_command_output_is_closed_after_the_idle_timeout() {
    let bin = Bin::start();
    let home = bin.home("alice");
    // Far more than the socket buffers of both ends hold.
    const SIZE: u64 = 32 << 20;
    // Written behind the server's back: no recorded hash, streamed in blocks.
    write_random_file(&home.join("disk.bin"), SIZE, 1).unwrap();
    // Uploaded: its hash is recorded, so it goes out by sendfile(2).
    let local = bin.tmp.path().join("up.bin");
    write_random_file(&local, SIZE, 2).unwrap();
    let mut alice = bin.session("alice").await;
    alice.put_file(&local, "up.bin", &PutOptions::default(), &NoProgress).await.unwrap();
    alice.close().await.unwrap();

    let bob = bin.session("bob").await;
    let stop = Arc::new(AtomicBool::new(false));
    let bob = tokio::spawn(bob_works(bob, stop.clone()));

    // After the request, a `pwd` now and then: the write that fails shows the close.
    let probe = frames(&[Request::Pwd]).await;
    const PROBE: Duration = Duration::from_millis(100);
    // Requests pipelined at a quiet command: each is refused (`busy`), and
    // the refusals are answers too; 3 MB/s of them fill the socket buffers
    // in moments.
    let pwds = frames(&vec![Request::Pwd; 100]).await;
    const FLOOD: Duration = Duration::from_millis(1);
    let attacks = [
        ("get streamed, body unread", Request::Get { path: "disk.bin".into(), offset: 0, algo: None }, &probe, PROBE),
        ("get by sendfile, body unread", Request::Get { path: "up.bin".into(), offset: 0, algo: None }, &probe, PROBE),
        ("exec output unread", Request::Exec { argv: vec!["yes".into(), "x".repeat(200)] }, &probe, PROBE),
        (
            "requests pipelined at a quiet command",
            Request::Exec { argv: vec!["sleep".into(), "60".into()] },
            &pwds,
            FLOOD,
        ),
    ];
    let mut tasks = Vec::new();
    for (what, req, batch, pace) in attacks {
        let mut s = bin.raw("alice").await;
        s.write_all(&frames(&[req]).await).await.unwrap();
        tasks.push(tokio::spawn(never_reading(what, s, batch.clone(), Some(pace))));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (bob_done, bob_failed) = bob.await.unwrap();
    eprintln!("bob {bob_done} rounds; {outcomes:#?}\n{}", bin.ends());
    for o in &outcomes {
        // The server's writes stall within moments of the request (the
        // socket buffers fill at once): closed within the idle timeout of
        // it, give or take those moments.
        check_closed(o, o.started + FILL);
    }
    assert!(bob_failed.is_empty(), "bob was not served during the attack: {bob_failed:?}");
    assert!(bob_done >= 5, "bob got only {bob_done} rounds done");
}
