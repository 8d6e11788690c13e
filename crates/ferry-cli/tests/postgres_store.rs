//! Issue 16: many ferry servers as one, through PostgreSQL. Two real
//! `ferry serve` processes with `[users] kind = "postgres"` share users and
//! login failure counts: a user added once through the CLI logs in on both,
//! and a wrong-password flood through one bans the address on the other. A
//! database that cannot be reached stops the start, named, password unsaid.
//!
//! PostgreSQL comes from `scripts/postgres.sh` (or `FERRY_TEST_DATABASE_URL`);
//! without it the tests print why and skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_testkit::{Postgres, ServerProcess};

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ferry login USER@127.0.0.1:PORT` with the password in the environment.
fn login(port: u16, user: &str, password: &str, kh: &Path) -> Output {
    Command::new(ferry())
        .args(["login", &format!("{user}@127.0.0.1:{port}"), "--accept-new", "--known-hosts"])
        .arg(kh)
        .env("FERRY_PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry login")
}

/// A configuration on PostgreSQL with a small ban threshold, so that a
/// flood is a handful of tries.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        "[users]\nkind = \"postgres\"\n\n[auth]\nscram_iterations = 4096\nfree_failures = 2\nban_after = 5\nmax_delay_ms = 300\n",
    )
    .unwrap();
    path
}

/// `ferry user ARGS --config CONFIG --data DATA`, with `stdin` as input.
fn user_cmd(args: &[&str], config: &Path, data: &Path, url: &str, stdin: &str) -> Output {
    let mut child = Command::new(ferry())
        .arg("user")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("FERRY_DATABASE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry user");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn two_servers_share_users_and_a_flood_through_one_bans_on_the_other() {
    let Some(pg) = Postgres::start().unwrap() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let cfg = config.to_str().unwrap();
    let env = [("FERRY_DATABASE_URL", pg.url.as_str())];
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = ServerProcess::spawn_env(&ferry(), &data_a, &["--config", cfg, "--no-sftp"], &env).unwrap();
    let b = ServerProcess::spawn_env(&ferry(), &data_b, &["--config", cfg, "--no-sftp"], &env).unwrap();
    assert!(!data_a.join("users.db").exists(), "no SQLite store with kind = postgres");

    // One user, added through the CLI beside server A while both run.
    let added = user_cmd(&["add", "alice", "--password-stdin"], &config, &data_a, &pg.url, "s3cret horse\n");
    assert!(added.status.success(), "{}", stderr(&added));
    let listed = user_cmd(&["list"], &config, &data_b, &pg.url, "");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("alice"), "{}", stderr(&listed));

    let kh = tmp.path().join("known_hosts");
    for server in [&a, &b] {
        let ok = login(server.port(), "alice", "s3cret horse", &kh);
        assert!(ok.status.success(), "port {}: {}", server.port(), stderr(&ok));
        assert!(String::from_utf8_lossy(&ok.stdout).contains("logged in as alice"));
    }

    // A wrong-password flood through A only (bounded: the ban comes at 5).
    let mut refused_on_a = None;
    for i in 0..10 {
        let out = login(a.port(), "alice", "guess", &kh);
        assert!(!out.status.success());
        if stderr(&out).contains("too many failed logins") {
            refused_on_a = Some(i);
            break;
        }
    }
    assert_eq!(refused_on_a, Some(5), "A bans after ban_after = 5 failures");
    // B never saw a failure, and refuses the right password from the address.
    let on_b = login(b.port(), "alice", "s3cret horse", &kh);
    assert!(!on_b.status.success(), "B let a banned address in");
    assert!(stderr(&on_b).contains("too many failed logins"), "{}", stderr(&on_b));
}

#[test]
fn an_unreachable_or_missing_database_stops_the_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = |url: Option<&str>| {
        let mut cmd = Command::new(ferry());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-sftp", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(tmp.path().join("data"))
            .env_remove("FERRY_DATABASE_URL")
            .stdin(Stdio::null());
        if let Some(url) = url {
            cmd.env("FERRY_DATABASE_URL", url);
        }
        cmd.output().expect("run ferry serve")
    };
    let out = serve(Some(&format!("postgres://ferry:hunter2-pw@127.0.0.1:{closed}/site")));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot reach the user database"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{closed}")) && err.contains("\"site\""), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    let out = serve(None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("FERRY_DATABASE_URL"), "{}", stderr(&out));
}
