//! Issue 13, item 1: a resume right after a dead client works, every time.
//! Through the real binary and real sockets: a client killed with SIGKILL at
//! random points, then `ferry put -c` at once; a connection frozen half-open
//! mid-upload, then `ferry put -c` on a new one; and no message that advises
//! the command just run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{Fault, FaultProxy, ServerProcess, add_user_cli, sha256_file, write_random_file};
use tempfile::TempDir;

const USER: &str = "alice";
const MIB: u64 = 1024 * 1024;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A plaintext server process with one user (plaintext: TLS would only add
/// crypto load to a test about takeover on a loaded machine).
struct Site {
    tmp: TempDir,
    data: PathBuf,
    server: ServerProcess,
}

impl Site {
    fn start() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        add_user_cli(&ferry(), &data, USER, "pw", &[]).unwrap();
        let server = ServerProcess::spawn(&ferry(), &data, &["--insecure-plaintext"]).unwrap();
        Site { tmp, data, server }
    }

    fn home(&self) -> PathBuf {
        self.data.join("homes").join(USER)
    }

    /// Bytes held by the partial uploads on the server.
    fn part_len(&self) -> u64 {
        let Ok(rd) = std::fs::read_dir(self.home().join(".ferry-partial")) else { return 0 };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// `ferry put [-c] LOCAL USER@127.0.0.1:PORT/REMOTE` with a private
    /// known-hosts file and resume-state folder.
    fn put(&self, resume: bool, local: &Path, port: u16, remote: &str) -> Command {
        let mut cmd = Command::new(ferry());
        cmd.arg("put");
        if resume {
            cmd.arg("-c");
        }
        cmd.arg(local)
            .arg(format!("{USER}@127.0.0.1:{port}/{remote}"))
            .args(["-q", "--insecure-plaintext", "--known-hosts"])
            .arg(self.tmp.path().join("known_hosts"))
            .env("FERRY_PASSWORD", "pw")
            .env("FERRY_STATE_DIR", self.tmp.path().join("state"))
            .stdin(Stdio::null());
        cmd
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The advice the issue found: a message must never tell the user to run
/// the command they just ran.
fn assert_no_rerun_advice(err: &str) {
    for advice in ["run again", "with -c", "-c to resume"] {
        assert!(!err.contains(advice), "advises the command just run: {err}");
    }
}

/// Waits (bounded) until `cond` holds, polling.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// xorshift64: the kill points are random but the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Kills `child` (SIGKILL) and reaps it.
fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The issue: SIGKILL a fraction of a second into an upload, `put -c` at
/// once, failed with "is in progress in another session" on several tries
/// in a row. Twenty kills at seeded random points (some before any byte
/// landed, most mid-body while the server still drains what the dead client
/// sent), each followed at once by `put -c`: every one succeeds, identical.
#[test]
fn issue13_item1_put_c_right_after_sigkill_succeeds_every_time() {
    const ROUNDS: u64 = 20;
    let site = Site::start();
    let size = 48 * MIB + 4321;
    let local = site.tmp.path().join("big.bin");
    write_random_file(&local, size, 13).unwrap();
    let want = sha256_file(&local).unwrap();
    let port = site.server.port();
    let mut rng = Rng(0x1337_c0ffee);
    let started = Instant::now();
    let (mut resume_times, mut cuts) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let remote = format!("r{round}.bin");
        let child = site.put(false, &local, port, &remote).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // One round in four dies before any byte is sure to have landed; the
        // others once the server holds a random share of the file.
        if round % 4 == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        } else {
            let at = 1 + rng.below(size * 9 / 10);
            wait_until("the partial to grow", Duration::from_secs(30), || site.part_len() >= at);
        }
        let cut = site.part_len();
        kill(child);

        let t = Instant::now();
        let out = site.put(true, &local, port, &remote).output().unwrap();
        let took = t.elapsed();
        let err = stderr(&out);
        assert!(out.status.success(), "round {round} (cut at {cut} bytes): put -c failed: {err}");
        assert_no_rerun_advice(&err);
        let remote_path = site.home().join(&remote);
        assert_eq!(sha256_file(&remote_path).unwrap(), want, "round {round}: the file differs");
        std::fs::remove_file(&remote_path).unwrap();
        resume_times.push(took);
        cuts.push(cut);
    }
    assert_eq!(site.part_len(), 0, "every partial was resumed and committed");
    let max = resume_times.iter().max().unwrap();
    let mean = resume_times.iter().sum::<Duration>() / ROUNDS as u32;
    eprintln!(
        "{ROUNDS} kills of a {size}-byte upload, cut at {:?} MiB; put -c took mean {mean:?}, max {max:?}; total {:?}",
        cuts.iter().map(|c| c / MIB).collect::<Vec<_>>(),
        started.elapsed()
    );
}

/// The issue: after a network drop that leaves a half-open connection, the
/// server refused the resume for the whole idle timeout (15 minutes by
/// default). A proxy freezes the first connection mid-upload (both sockets
/// stay open, nothing more is relayed); `put -c` on a new connection takes
/// the upload over and finishes within seconds, resuming (not restarting).
#[test]
fn issue13_item1_put_c_takes_over_from_a_half_open_connection_within_seconds() {
    let site = Site::start();
    let size = 32 * MIB + 99;
    let local = site.tmp.path().join("big.bin");
    write_random_file(&local, size, 14).unwrap();
    let proxy = FaultProxy::start(site.server.addr, Fault::FreezeUp(8 * MIB)).unwrap();
    let mut frozen = site.put(false, &local, proxy.addr.port(), "f.bin");
    let frozen = frozen.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(proxy.wait_tripped(Duration::from_secs(30)), "the upload never reached the freeze point");
    // What crossed before the freeze lands on the server; then nothing more.
    wait_until("the partial to hold the frozen prefix", Duration::from_secs(10), || site.part_len() >= 7 * MIB);

    let t = Instant::now();
    let out = site.put(true, &local, proxy.addr.port(), "f.bin").output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "put -c failed: {}", stderr(&out));
    assert!(!stderr(&out).contains("starting over"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "the takeover took {took:?} (idle timeout is 900 s)");
    assert_eq!(sha256_file(&site.home().join("f.bin")).unwrap(), sha256_file(&local).unwrap());
    eprintln!("put -c over a frozen connection holding {} bytes took {took:?}", 8 * MIB);
    kill(frozen);
}

/// When the frozen connection comes back after it was taken over, its client
/// is told the upload is being written elsewhere, with no advice to run
/// again what it just ran (it was a `put -c` too), and the file the newer
/// session committed stays intact.
#[test]
fn issue13_item1_client_taken_over_is_not_told_to_run_its_command_again() {
    let site = Site::start();
    let size = 24 * MIB + 7;
    let local = site.tmp.path().join("big.bin");
    write_random_file(&local, size, 15).unwrap();
    let proxy = FaultProxy::start(site.server.addr, Fault::FreezeUp(4 * MIB)).unwrap();
    let mut older = site.put(true, &local, proxy.addr.port(), "t.bin");
    let older = older.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(proxy.wait_tripped(Duration::from_secs(30)), "the upload never reached the freeze point");

    let newer = site.put(true, &local, site.server.port(), "t.bin").output().unwrap();
    assert!(newer.status.success(), "put -c failed: {}", stderr(&newer));
    let want = sha256_file(&local).unwrap();
    assert_eq!(sha256_file(&site.home().join("t.bin")).unwrap(), want);

    proxy.thaw();
    let older = older.wait_with_output().unwrap();
    let err = stderr(&older);
    assert!(!older.status.success(), "the upload taken over cannot also succeed: {err}");
    assert!(err.contains("another session"), "{err}");
    assert_no_rerun_advice(&err);
    assert_eq!(sha256_file(&site.home().join("t.bin")).unwrap(), want, "the older session wrote after takeover");
    assert_eq!(site.part_len(), 0);
}
