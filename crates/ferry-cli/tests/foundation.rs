//! Issue 2 through the real binary and real sockets: user administration,
//! login, identical failures, fingerprint pinning, throttling, and a
//! plaintext login that never shows the password.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{ServerProcess, TestServer, add_user_cli};

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// Runs the ferry binary with a password and a private known-hosts file.
fn run_client(args: &[&str], password: &str, kh: &Path) -> Output {
    let mut cmd = Command::new(ferry());
    cmd.args(args).arg("--known-hosts").arg(kh).env("FERRY_PASSWORD", password).stdin(Stdio::null());
    cmd.output().expect("run ferry")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fresh_data_folder_add_user_login_and_identical_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let kh = tmp.path().join("known_hosts");
    let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
    assert!(server.banner.iter().any(|l| l.contains("no users yet")), "{:?}", server.banner);
    assert!(server.fingerprint.as_deref().unwrap_or("").starts_with("SHA256:"));
    assert!(data.join("cert.pem").exists() && data.join("users.db").exists());

    add_user_cli(&ferry(), &data, "alice", "correct horse", &[]).unwrap();
    let remote = format!("alice@127.0.0.1:{}", server.port());
    let ok = run_client(&["login", &remote, "--accept-new"], "correct horse", &kh);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("logged in as alice"));

    let wrong = run_client(&["login", &remote], "wrong", &kh);
    let unknown = run_client(&["login", &format!("mallory@127.0.0.1:{}", server.port())], "wrong", &kh);
    assert!(!wrong.status.success() && !unknown.status.success());
    assert_eq!(stderr(&wrong), stderr(&unknown), "unknown user and wrong password must look alike");
    assert!(stderr(&wrong).contains("authentication failed"), "{}", stderr(&wrong));
    assert_eq!(stderr(&wrong).lines().count(), 1);
}

#[test]
fn pinning_accept_new_then_changed_key_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let kh = tmp.path().join("known_hosts");
    add_user_cli(&ferry(), &data, "alice", "pw", &[]).unwrap();
    let first_fp;
    let port;
    {
        let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
        port = server.port();
        first_fp = server.fingerprint.clone().unwrap();
        let remote = format!("alice@127.0.0.1:{port}");
        // Without a terminal and without --accept-new, an unknown server is refused.
        let refused = run_client(&["login", &remote], "pw", &kh);
        assert!(!refused.status.success());
        assert!(stderr(&refused).contains(&first_fp), "{}", stderr(&refused));
        let pinned = run_client(&["login", &remote, "--accept-new"], "pw", &kh);
        assert!(pinned.status.success(), "{}", stderr(&pinned));
        assert!(std::fs::read_to_string(&kh).unwrap().contains(&first_fp));
        let again = run_client(&["login", &remote], "pw", &kh);
        assert!(again.status.success(), "{}", stderr(&again));
    }
    // Regenerate the server's key, restart on the same port.
    std::fs::remove_file(data.join("cert.pem")).unwrap();
    std::fs::remove_file(data.join("key.pem")).unwrap();
    let server = restart_on_port(&data, port);
    let new_fp = server.fingerprint.clone().unwrap();
    assert_ne!(new_fp, first_fp);
    let remote = format!("alice@127.0.0.1:{port}");
    let changed = run_client(&["login", &remote, "--accept-new"], "pw", &kh);
    assert!(!changed.status.success());
    let msg = stderr(&changed);
    assert!(msg.contains(&first_fp) && msg.contains(&new_fp), "{msg}");
    assert!(msg.contains("CHANGED"), "{msg}");
    // An explicit --fingerprint of the wrong value is refused too.
    let wrong_fp = run_client(&["login", &remote, "--fingerprint", &first_fp], "pw", &kh);
    assert!(!wrong_fp.status.success());
}

/// Restarts `ferry serve` on a given port (SO_REUSEADDR makes the bind immediate).
fn restart_on_port(data: &Path, port: u16) -> ServerProcess {
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(ferry())
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", &addr, "--no-sftp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut fingerprint = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(f) = l.strip_prefix("certificate fingerprint: ") {
                    fingerprint = Some(f.trim().to_string());
                    break;
                }
            }
            _ => break,
        }
    }
    std::thread::spawn(move || for _ in lines {});
    ServerProcess {
        child,
        addr: addr.parse().unwrap(),
        sftp_addr: None,
        ssh_fingerprint: None,
        fingerprint,
        metrics_addr: None,
        banner: vec![],
    }
}

#[test]
fn user_admin_commands_work_and_report_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    add_user_cli(&ferry(), &data, "bob", "pw", &["--quota", "10MiB", "--allow-exec"]).unwrap();
    let list = Command::new(ferry()).args(["user", "list", "--data", d]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("bob") && text.contains("10") && text.contains("yes"), "{text}");
    let set = Command::new(ferry())
        .args(["user", "set", "bob", "--quota", "unlimited", "--deny-exec", "--data", d])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", stderr(&set));
    let list = Command::new(ferry()).args(["user", "list", "--data", d]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("unlimited") && !text.contains("yes"), "{text}");
    // Duplicates, bad names, bad sizes and unknown users fail with one clear line.
    assert!(add_user_cli(&ferry(), &data, "bob", "pw", &[]).is_err());
    assert!(add_user_cli(&ferry(), &data, "Bad Name", "pw", &[]).is_err());
    assert!(add_user_cli(&ferry(), &data, "carol", "pw", &["--quota", "lots"]).is_err());
    let del = Command::new(ferry()).args(["user", "del", "nobody", "--data", d]).output().unwrap();
    assert!(!del.status.success() && stderr(&del).contains("nobody"));
    let del = Command::new(ferry()).args(["user", "del", "bob", "--data", d]).output().unwrap();
    assert!(del.status.success());
}

#[test]
fn passwd_changes_the_password_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let kh = tmp.path().join("kh");
    add_user_cli(&ferry(), &data, "alice", "old-pass", &[]).unwrap();
    let server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
    let remote = format!("alice@127.0.0.1:{}", server.port());
    assert!(run_client(&["login", &remote, "--accept-new"], "old-pass", &kh).status.success());
    let mut child = Command::new(ferry())
        .args(["user", "passwd", "alice", "--password-stdin", "--data"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"new-pass\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!run_client(&["login", &remote], "old-pass", &kh).status.success());
    assert!(run_client(&["login", &remote], "new-pass", &kh).status.success());
}

#[test]
fn bad_configuration_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ferry.toml");
    std::fs::write(&cfg, "[limits]\nidle_timeout_secs = 0\n").unwrap();
    let out = Command::new(ferry()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("limits.idle_timeout_secs"), "{}", stderr(&out));
}

/// A recording proxy between client and server: every byte the client sends
/// during a plaintext login is kept, and the password must not be among them.
#[tokio::test]
async fn plaintext_login_never_sends_the_password() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_plaintext().await.unwrap();
    let password = "s3cret-Pa55word-that-is-long";
    server.add_user("alice", password, None, false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let upstream = server.addr;
    let recorder = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = up.split();
        let mut seen = Vec::new();
        let c2s = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    let _ = uw.shutdown().await;
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                uw.write_all(&buf[..n]).await.unwrap();
            }
        };
        let s2c = async {
            let _ = tokio::io::copy(&mut ur, &mut cw).await;
        };
        tokio::join!(c2s, s2c);
        seen
    });
    let mut remote = server.remote("alice");
    remote.port = proxy_addr.port();
    let session =
        ferry_client::Client::connect(&remote, &server.connect_options()).await.unwrap().login(password).await.unwrap();
    session.close().await.unwrap();
    let seen = recorder.await.unwrap();
    assert!(seen.len() > 100, "the proxy saw the login ({} bytes)", seen.len());
    let needle = password.as_bytes();
    assert!(!seen.windows(needle.len()).any(|w| w == needle), "password crossed the wire");
    // Nor in base64, as a careless client might encode it.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(password);
    assert!(!seen.windows(b64.len()).any(|w| w == b64.as_bytes()));
}

/// A hundred wrong passwords from 127.0.0.1 are throttled (slower and slower,
/// then refused) and logged; the right password from 127.0.0.2 still works.
#[tokio::test]
async fn wrong_password_flood_is_throttled_and_others_still_log_in() {
    let server = TestServer::start_with(|c| {
        c.auth.ban_after = 20;
        c.auth.max_delay_ms = 200;
    })
    .await
    .unwrap();
    server.add_user("alice", "right", None, false).unwrap();
    let started = Instant::now();
    let mut refused = 0;
    let mut first_ten = Duration::ZERO;
    for i in 0..100 {
        let t = Instant::now();
        let res = async { server.connect("alice").await?.login("wrong").await.map_err(anyhow::Error::from) }.await;
        let err = res.err().expect("wrong password must fail").to_string();
        if err.contains("too many failed logins") {
            refused += 1;
        } else {
            assert!(err.contains("authentication failed"), "{err}");
        }
        if i < 10 {
            first_ten += t.elapsed();
        }
    }
    let total = started.elapsed();
    assert!(refused >= 50, "the address must end up banned ({refused} refusals)");
    assert!(total > first_ten * 2, "later failures must cost more ({total:?} vs {first_ten:?} for the first ten)");
    // Another address: the right password still gets through.
    let mut opts = server.connect_options();
    opts.bind = Some("127.0.0.2".parse().unwrap());
    let client = ferry_client::Client::connect(&server.remote("alice"), &opts).await.unwrap();
    let session = client.login("right").await.expect("legitimate login from another address");
    session.close().await.unwrap();
}

#[test]
fn unauthenticated_connection_is_closed_after_the_login_timeout() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::spawn(&ferry(), &data, &["--insecure-plaintext", "--login-timeout-secs", "1"]).unwrap();
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(8), "closed after the login timeout");
    assert!(String::from_utf8_lossy(&buf).contains("timeout"), "told why: {:?}", String::from_utf8_lossy(&buf));
}

/// SIGTERM sent the moment the banner appears: the handler must already be
/// in place (CI once caught the server dying of the default action).
#[test]
fn sigterm_stops_the_server_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let data = tmp.path().join(format!("data{round}"));
        let mut server = ServerProcess::spawn(&ferry(), &data, &[]).unwrap();
        server.signal("TERM");
        let status = server.wait_exit(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "round {round}: {status}");
        let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
        assert!(log.contains("server stopped"), "round {round}: {log}");
    }
}
