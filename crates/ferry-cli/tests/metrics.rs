//! Issue 16, item 4: `/metrics` and `/healthz` of the real `ferry serve`
//! (`--metrics-listen 127.0.0.1:0`), read over real TCP after real
//! transfers: the framed protocol through the `ferry` client, SFTP through
//! OpenSSH's `sftp` when it (and `sshpass`) is installed, FTPS through curl
//! when it is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_testkit::{
    Postgres, ServerProcess, add_user_cli, free_port_range, http_get, metric, sha256_file, write_random_file,
};
use tempfile::TempDir;

const USER: &str = "alice";
const PASSWORD: &str = "metrics-pw";
/// Past the small-file path (256 KiB): the streamed upload and download.
const SIZE: u64 = 3 * 1024 * 1024 + 17;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Site {
    tmp: TempDir,
    server: ServerProcess,
}

impl Site {
    /// A server with one user and the metrics endpoint on port 0; `toml`
    /// is its configuration file.
    fn start(toml: &str) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        add_user_cli(&ferry(), &data, USER, PASSWORD, &[]).unwrap();
        let config = tmp.path().join("ferry.toml");
        std::fs::write(&config, toml).unwrap();
        let args = ["--metrics-listen", "127.0.0.1:0", "--config", config.to_str().unwrap()];
        let server = ServerProcess::spawn(&ferry(), &data, &args).unwrap();
        Site { tmp, server }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `ferry ARGS` with `password`, a private known-hosts file and state folder.
    fn ferry(&self, args: &[&str], password: &str) -> Output {
        Command::new(ferry())
            .args(args)
            .arg("-q")
            .arg("--known-hosts")
            .arg(self.path("known_hosts"))
            .arg("--accept-new")
            .env("FERRY_PASSWORD", password)
            .env("FERRY_STATE_DIR", self.path("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn remote(&self, path: &str) -> String {
        format!("{USER}@127.0.0.1:{}/{path}", self.server.port())
    }

    fn scrape(&self) -> String {
        let addr = self.server.metrics_addr.expect("the banner names the metrics address");
        let (status, body) = http_get(addr, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

fn same(a: &Path, b: &Path) {
    assert_eq!(sha256_file(a).unwrap(), sha256_file(b).unwrap(), "{} and {} differ", a.display(), b.display());
}

#[test]
fn issue16_framed_logins_and_transfers_show_in_metrics_and_healthz_is_ok() {
    let mut site = Site::start("");
    let addr = site.server.metrics_addr.expect("the banner names the metrics address");
    assert_eq!(http_get(addr, "/healthz").unwrap(), (200, "ok\n".to_string()));
    assert_eq!(http_get(addr, "/nothing").unwrap().0, 404);

    let src = site.path("up.bin");
    write_random_file(&src, SIZE, 16).unwrap();
    ok(&site.ferry(&["put", src.to_str().unwrap(), &site.remote("up.bin")], PASSWORD), "ferry put");
    let back = site.path("back.bin");
    ok(&site.ferry(&["get", &site.remote("up.bin"), back.to_str().unwrap()], PASSWORD), "ferry get");
    same(&src, &back);
    let refused = site.ferry(&["ls", &site.remote("")], "not-the-password");
    assert!(!refused.status.success(), "a wrong password must fail");

    let text = site.scrape();
    let framed = [("frontend", "framed")];
    assert!(value(&text, "ferry_logins_total", &[("frontend", "framed"), ("outcome", "ok")]) >= 2.0, "{text}");
    assert!(value(&text, "ferry_logins_total", &[("frontend", "framed"), ("outcome", "failed")]) >= 1.0, "{text}");
    assert!(value(&text, "ferry_sessions_total", &framed) >= 3.0, "{text}");
    assert!(value(&text, "ferry_received_bytes_total", &framed) >= SIZE as f64, "{text}");
    assert!(value(&text, "ferry_sent_bytes_total", &framed) >= SIZE as f64, "{text}");
    for direction in ["upload", "download"] {
        let labels = [("frontend", "framed"), ("direction", direction)];
        assert!(value(&text, "ferry_transfer_duration_seconds_count", &labels) >= 1.0, "{direction}: {text}");
    }
    // The storage under the home was timed: the upload's commit among others.
    assert!(value(&text, "ferry_storage_operation_duration_seconds_count", &[("operation", "commit")]) >= 1.0);
    assert!(value(&text, "ferry_storage_operation_duration_seconds_sum", &[("operation", "partial_write")]) > 0.0);
    assert_eq!(value(&text, "ferry_storage_errors_total", &[("operation", "commit")]), 0.0, "{text}");
    assert_eq!(value(&text, "ferry_quota_refusals_total", &[]), 0.0);
    // Nothing of SFTP or FTP happened; their series are there at 0.
    assert_eq!(value(&text, "ferry_received_bytes_total", &[("frontend", "sftp")]), 0.0);

    // The endpoint stops with the rest of the server.
    site.server.signal("TERM");
    assert!(site.server.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(std::net::TcpStream::connect(addr).is_err(), "the metrics port must be closed after shutdown");
}

#[test]
fn issue16_an_sftp_transfer_shows_under_its_frontend_label() {
    for program in ["sftp", "sshpass"] {
        if !have(program) {
            eprintln!("SKIPPED: {program} is not installed (.ci/run installs it)");
            return;
        }
    }
    let site = Site::start("");
    let sftp_port = site.server.sftp_addr.expect("SSH front end").port().to_string();
    let src = site.path("s.bin");
    write_random_file(&src, SIZE, 17).unwrap();
    let mut child = Command::new("sshpass")
        .args(["-p", PASSWORD, "sftp", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "PubkeyAuthentication=no", "-o", "LogLevel=ERROR", "-o", "BatchMode=no"])
        .args(["-P", &sftp_port, "-b", "-"])
        .arg(format!("{USER}@127.0.0.1"))
        .current_dir(site.tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"put s.bin s.bin\nget s.bin s_back.bin\n").unwrap();
    ok(&child.wait_with_output().unwrap(), "sftp put and get");
    same(&src, &site.path("s_back.bin"));

    let text = site.scrape();
    let sftp = [("frontend", "sftp")];
    assert!(value(&text, "ferry_logins_total", &[("frontend", "sftp"), ("outcome", "ok")]) >= 1.0, "{text}");
    assert!(value(&text, "ferry_sessions_total", &sftp) >= 1.0, "{text}");
    assert!(value(&text, "ferry_received_bytes_total", &sftp) >= SIZE as f64, "{text}");
    assert!(value(&text, "ferry_sent_bytes_total", &sftp) >= SIZE as f64, "{text}");
    for direction in ["upload", "download"] {
        let labels = [("frontend", "sftp"), ("direction", direction)];
        assert!(value(&text, "ferry_transfer_duration_seconds_count", &labels) >= 1.0, "{direction}: {text}");
    }
    assert_eq!(value(&text, "ferry_received_bytes_total", &[("frontend", "framed")]), 0.0);
}

#[test]
fn issue16_an_ftps_transfer_shows_under_its_frontend_label() {
    if !have("curl") {
        eprintln!("SKIPPED: curl is not installed (.ci/run installs it)");
        return;
    }
    let base = free_port_range(4);
    let site = Site::start(&format!(
        "[ftp]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassive_ports = \"{base}-{}\"\n",
        base + 3
    ));
    let ftp = site
        .server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("ferry FTP listening on "))
        .unwrap_or_else(|| panic!("no FTP address in the banner: {:?}", site.server.banner))
        .trim()
        .to_string();
    let src = site.path("f.bin");
    write_random_file(&src, SIZE, 18).unwrap();
    let back = site.path("f_back.bin");
    let url = format!("ftp://{ftp}/f.bin");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--ssl-reqd", "-k", "--user", &format!("{USER}:{PASSWORD}")])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    ok(&curl(&["-T", src.to_str().unwrap(), &url]), "curl upload");
    ok(&curl(&["-o", back.to_str().unwrap(), &url]), "curl download");
    same(&src, &back);

    let text = site.scrape();
    let ftp = [("frontend", "ftp")];
    assert!(value(&text, "ferry_logins_total", &[("frontend", "ftp"), ("outcome", "ok")]) >= 2.0, "{text}");
    assert!(value(&text, "ferry_sessions_total", &ftp) >= 2.0, "{text}");
    assert!(value(&text, "ferry_received_bytes_total", &ftp) >= SIZE as f64, "{text}");
    assert!(value(&text, "ferry_sent_bytes_total", &ftp) >= SIZE as f64, "{text}");
    for direction in ["upload", "download"] {
        let labels = [("frontend", "ftp"), ("direction", direction)];
        assert!(value(&text, "ferry_transfer_duration_seconds_count", &labels) >= 1.0, "{direction}: {text}");
    }
}

/// `/healthz` until its status is `want`, asked every 200 ms for at most 30 s.
fn healthz_until(addr: std::net::SocketAddr, want: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/healthz").unwrap();
        if status == want {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/healthz stayed {status} {body:?}, not {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With the users in PostgreSQL: a database that stops taking connections
/// makes `/healthz` a 503 that names the user store (and never the
/// password); once it takes them again, 200.
#[test]
fn issue16_healthz_names_the_user_database_when_it_refuses_connections() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("ferry.toml");
    std::fs::write(&config, "[users]\nkind = \"postgres\"\n").unwrap();
    let args = ["--metrics-listen", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--no-sftp"];
    let server =
        ServerProcess::spawn_env(&ferry(), &tmp.path().join("data"), &args, &[("FERRY_DATABASE_URL", &pg.url)])
            .unwrap();
    let addr = server.metrics_addr.expect("the banner names the metrics address");
    assert_eq!(healthz_until(addr, 200), "ok\n");

    let db = pg.database().to_string();
    pg.execute_outside(&format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid();"
    ))
    .unwrap();
    let body = healthz_until(addr, 503);
    eprintln!("/healthz with the database refusing connections: 503 {body}");
    assert!(body.starts_with("users: "), "{body}");
    assert!(!body.contains("storage"), "the homes folder is fine: {body}");
    let password = pg.url.split_once("://").and_then(|(_, r)| r.split_once('@')).and_then(|(c, _)| c.split_once(':'));
    if let Some((_, password)) = password {
        assert!(!body.contains(password), "the password must not show: {body}");
    }

    pg.execute_outside(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).unwrap();
    assert_eq!(healthz_until(addr, 200), "ok\n");
}
