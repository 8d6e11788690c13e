//! Issue 16 through the real `ferry serve` binary with `[storage] kind =
//! "s3"`: a user uploads and downloads through the framed client; an upload
//! cut on one server resumes on another server (a different process and
//! data folder, the same bucket); a missing bucket, a wrong key or missing
//! credentials stop the start with a message naming which; `/healthz` checks
//! the bucket and the storage metrics cover S3 calls.
//!
//! Needs a real S3 server (`eval "$(scripts/garage.sh start)"`); the tests
//! that do say why they skip when its environment is not set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_client::{Client, ConnectOptions, GetOptions, NoProgress, PutOptions, Remote, Session};
use ferry_testkit::{Fault, FaultProxy, ServerProcess, add_user_cli, http_get, metric, sha256_file, write_random_file};

const MIB: u64 = 1 << 20;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

struct S3Env {
    endpoint: String,
    bucket: String,
    region: String,
}

fn s3_env() -> Option<S3Env> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let missing: Vec<&str> =
        ["FERRY_TEST_S3_ENDPOINT", "FERRY_TEST_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .into_iter()
            .filter(|n| var(n).is_none())
            .collect();
    if !missing.is_empty() {
        eprintln!("skipped: {} not set (eval \"$(scripts/garage.sh start)\")", missing.join(", "));
        return None;
    }
    Some(S3Env {
        endpoint: var("FERRY_TEST_S3_ENDPOINT")?,
        bucket: var("FERRY_TEST_S3_BUCKET")?,
        region: var("FERRY_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
    })
}

fn random_prefix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!("serve-{}/", hex::encode(b))
}

/// A configuration file keeping homes in `bucket` under `prefix`.
fn s3_config(dir: &Path, endpoint: &str, bucket: &str, region: &str, prefix: &str) -> PathBuf {
    let path = dir.join(format!("ferry-{}.toml", prefix.trim_end_matches('/')));
    let text = format!(
        "[storage]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"{region}\"\n\
         path_style = true\nprefix = \"{prefix}\"\npart_size = {}\n",
        5 * MIB
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn login(port: u16) -> Session {
    let remote = Remote { user: "alice".into(), host: "127.0.0.1".into(), port, path: None };
    let opts = ConnectOptions { insecure_plaintext: true, ..ConnectOptions::default() };
    Client::connect(&remote, &opts).await.unwrap().login("pw").await.unwrap()
}

fn start(tmp: &Path, name: &str, config: &Path) -> ServerProcess {
    let data = tmp.join(name);
    add_user_cli(&ferry(), &data, "alice", "pw", &[]).unwrap();
    let config = config.to_str().unwrap();
    let args = ["--config", config, "--insecure-plaintext", "--no-sftp", "--metrics-listen", "127.0.0.1:0"];
    ServerProcess::spawn(&ferry(), &data, &args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_uploads_and_downloads_with_s3_storage() {
    let Some(env) = s3_env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), &env.endpoint, &env.bucket, &env.region, &random_prefix());
    let server = start(tmp.path(), "data", &config);
    let mut s = login(server.port()).await;

    let big = tmp.path().join("big.bin");
    write_random_file(&big, 12 * MIB + 5, 21).unwrap();
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, b"hello from S3\n").unwrap();
    s.mkdir("d", false).await.unwrap();
    s.put_file(&big, "d/big.bin", &PutOptions::default(), &NoProgress).await.unwrap();
    s.put_file(&small, "small.txt", &PutOptions::default(), &NoProgress).await.unwrap();
    let names: Vec<String> = s.ls(Some("/")).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["d", "small.txt"], "no bookkeeping of the backend is listed");

    let get = GetOptions { overwrite: true, resume: false };
    let back = tmp.path().join("back.bin");
    let summary = s.get_file("d/big.bin", &back, &get, &NoProgress).await.unwrap();
    assert_eq!(summary.hash, sha256_file(&big).unwrap());
    assert_eq!(sha256_file(&back).unwrap(), sha256_file(&big).unwrap());
    let back = tmp.path().join("back.txt");
    s.get_file("small.txt", &back, &get, &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), b"hello from S3\n");
    s.close().await.unwrap();

    // Issue 16, item 4: the bucket answers, and its calls were measured.
    let addr = server.metrics_addr.expect("the banner names the metrics address");
    let (health, text) =
        tokio::task::spawn_blocking(move || (http_get(addr, "/healthz"), http_get(addr, "/metrics"))).await.unwrap();
    assert_eq!(health.unwrap(), (200, "ok\n".to_string()));
    let text = text.unwrap().1;
    let commits = metric(&text, "ferry_storage_operation_duration_seconds_count", &[("operation", "commit")]);
    assert!(commits.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(metric(&text, "ferry_storage_errors_total", &[("operation", "commit")]), Some(0.0), "{text}");
}

/// `ferry put` cut mid-way on server A; A stops; `ferry put -c` on server B
/// (another process, another data folder, the same bucket) resumes it.
#[test]
fn an_upload_cut_on_one_server_resumes_on_another() {
    let Some(env) = s3_env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), &env.endpoint, &env.bucket, &env.region, &random_prefix());
    let local = tmp.path().join("f.bin");
    write_random_file(&local, 17 * MIB + 3, 22).unwrap();
    let put = |resume: bool, port: u16| {
        let mut cmd = Command::new(ferry());
        cmd.arg("put");
        if resume {
            cmd.arg("-c");
        }
        cmd.arg(&local)
            .arg(format!("alice@127.0.0.1:{port}/f.bin"))
            .args(["-q", "--insecure-plaintext", "--known-hosts"])
            .arg(tmp.path().join("known_hosts"))
            .env("FERRY_PASSWORD", "pw")
            .env("FERRY_STATE_DIR", tmp.path().join("state"))
            .stdin(Stdio::null());
        cmd.output().unwrap()
    };

    let mut a = start(tmp.path(), "a", &config);
    let proxy = FaultProxy::start(a.addr, Fault::CutUp(9 * MIB)).unwrap();
    let cut = put(false, proxy.addr.port());
    assert!(!cut.status.success(), "the cut upload fails");
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(30)).unwrap().success());

    let b = start(tmp.path(), "b", &config);
    let resumed = put(true, b.port());
    let err = String::from_utf8_lossy(&resumed.stderr).into_owned();
    assert!(resumed.status.success(), "put -c on server B: {err}");
    assert!(!err.contains("starting over"), "resumed, not restarted: {err}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut s = login(b.port()).await;
        let back = tmp.path().join("back.bin");
        let summary =
            s.get_file("f.bin", &back, &GetOptions { overwrite: true, resume: false }, &NoProgress).await.unwrap();
        assert_eq!(summary.hash, sha256_file(&local).unwrap());
    });
}

/// Runs `ferry serve` expecting it to stop at start; its stderr.
fn failed_start(tmp: &Path, config: &Path, env: &[(&str, &str)], remove: &[&str]) -> String {
    let data = tmp.join("refused");
    let mut cmd = Command::new(ferry());
    cmd.args(["serve", "--insecure-plaintext", "--no-sftp", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        let started = rx.try_iter().any(|l| l.starts_with("ferry listening"));
        if started || Instant::now() > deadline {
            let _ = child.kill();
            let out: Output = child.wait_with_output().unwrap();
            panic!("ferry serve did not stop (started: {started}): {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out: Output = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the start must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_credentials_stop_the_start_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = s3_config(tmp.path(), "http://127.0.0.1:9", "b", "garage", "p/");
    let err = failed_start(tmp.path(), &config, &[], &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    let err = failed_start(tmp.path(), &config, &[("AWS_ACCESS_KEY_ID", "GK00")], &["AWS_SECRET_ACCESS_KEY"]);
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

/// (moto, the quick S3 mock, accepts any key: the key half needs a real
/// S3 server such as Garage, and skips on moto with the reason.)
#[test]
fn a_missing_bucket_or_a_wrong_key_stops_the_start_naming_which() {
    let Some(env) = s3_env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let nope = format!("no-such-bucket-{}", random_prefix().trim_end_matches('/'));
    let config = s3_config(tmp.path(), &env.endpoint, &nope, &env.region, "p/");
    let err = failed_start(tmp.path(), &config, &[], &[]);
    assert!(err.contains(&format!("S3 bucket \"{nope}\" does not exist")), "{err}");

    if std::env::var("FERRY_TEST_S3_CHECKS_KEYS").is_ok_and(|v| v == "0") {
        eprintln!("skipped the key half: FERRY_TEST_S3_CHECKS_KEYS=0 (an S3 mock that accepts any key)");
        return;
    }
    let config = s3_config(tmp.path(), &env.endpoint, &env.bucket, &env.region, "p/");
    let wrong = [("AWS_ACCESS_KEY_ID", "GK000000000000000000000000"), ("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    let err = failed_start(tmp.path(), &config, &wrong, &[]);
    assert!(err.contains("refused the access key \"GK000000000000000000000000\""), "{err}");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    let key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    let bad_secret = [("AWS_ACCESS_KEY_ID", key_id.as_str()), ("AWS_SECRET_ACCESS_KEY", "0000")];
    let err = failed_start(tmp.path(), &config, &bad_secret, &[]);
    assert!(err.contains("refused the access key") && err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    assert!(!err.contains(&secret), "the secret never appears");
}
