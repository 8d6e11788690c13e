//! Regression tests for issue 13 (client and CLI items), through the real
//! binary against a real server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_testkit::{ServerProcess, add_user_cli};

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry SUBCOMMAND --known-hosts TMP/known_hosts ARGS...`
fn run(args: &[&str], tmp: &Path) -> Output {
    Command::new(ferry())
        .arg(args[0])
        .arg("--known-hosts")
        .arg(tmp.join("known_hosts"))
        .args(&args[1..])
        .env("FERRY_PASSWORD", "pw")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A plaintext server (plus `extra` flags) with users alice and bob.
fn server(tmp: &Path, extra: &[&str]) -> (ServerProcess, PathBuf) {
    let data = tmp.join("data");
    add_user_cli(&ferry(), &data, "alice", "pw", &["--allow-exec"]).unwrap();
    add_user_cli(&ferry(), &data, "bob", "pw", &[]).unwrap();
    let mut args = vec!["--insecure-plaintext"];
    args.extend_from_slice(extra);
    let server = ServerProcess::spawn(&ferry(), &data, &args).unwrap();
    (server, data.join("homes/alice"))
}

/// Item 2: `ferry mv u@h/docs/a u@h/docs/b` failed with
/// "/u@h/docs: no such file or directory".
#[test]
fn issue13_item2_mv_takes_a_remote_target_on_the_same_server_and_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, home) = server(tmp.path(), &[]);
    std::fs::create_dir_all(home.join("docs")).unwrap();
    std::fs::write(home.join("docs/a"), b"A").unwrap();
    let at = |user: &str, path: &str| format!("{user}@127.0.0.1:{}{path}", server.port());
    let plain = "--insecure-plaintext";

    let o = run(&["mv", &at("alice", "/docs/a"), &at("alice", "/docs/b"), plain], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!home.join("docs/a").exists());
    assert_eq!(std::fs::read(home.join("docs/b")).unwrap(), b"A");

    // The ferry:// form, and a plain path, work too.
    let o = run(&["mv", &at("alice", "/docs/b"), &format!("ferry://{}", at("alice", "/docs/c")), plain], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["mv", &at("alice", "/docs/c"), "docs/d", plain], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(home.join("docs/d")).unwrap(), b"A");

    // Another user, host or port is a clear error, and nothing moves.
    let elsewhere = [
        at("bob", "/docs/e"),
        format!("alice@localhost:{}/docs/e", server.port()),
        "alice@127.0.0.1:1/docs/e".to_string(),
    ];
    for target in &elsewhere {
        let o = run(&["mv", &at("alice", "/docs/d"), target, plain], tmp.path());
        assert!(!o.status.success(), "{target}");
        let err = stderr(&o);
        assert!(err.contains("a move stays on one server and account"), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(home.join("docs/d").exists());
    }
}

/// Item 7: the client reaches the server's Unix-domain socket.
#[test]
fn issue13_item7_client_works_over_the_servers_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("ferry.sock");
    let sock_arg = sock.to_str().unwrap();
    let (_server, home) = server(tmp.path(), &["--unix-socket", sock_arg]);
    let remote = |path: &str| format!("alice@unix:{sock_arg}{path}");

    let o = run(&["login", &remote("")], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("logged in as alice on unix:{sock_arg}")), "{}", stdout(&o));

    let local = tmp.path().join("up.txt");
    std::fs::write(&local, b"through the socket").unwrap();
    let o = run(&["mkdir", &remote(":/docs")], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["put", local.to_str().unwrap(), &remote(":/docs/")], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(home.join("docs/up.txt")).unwrap(), b"through the socket");

    let o = run(&["ls", &remote(":/docs")], tmp.path());
    assert_eq!(stdout(&o), "up.txt\n", "{}", stderr(&o));
    let down = tmp.path().join("down.txt");
    let o = run(&["get", &remote(":/docs/up.txt"), down.to_str().unwrap()], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&down).unwrap(), b"through the socket");
    let o = run(&["mv", &remote(":/docs/up.txt"), &remote(":/docs/moved.txt")], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(home.join("docs/moved.txt").exists());

    // No TLS on the socket: nothing was pinned.
    assert!(!tmp.path().join("known_hosts").exists());
    // A socket that is not there: one clear line.
    let missing = tmp.path().join("missing.sock");
    let o = run(&["ls", &format!("alice@unix:{}", missing.display())], tmp.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("cannot connect to unix:{}", missing.display())), "{}", stderr(&o));
}

/// Item 8: "Connection refused (os error 111): Connection refused (os error 111)".
#[test]
fn issue13_item8_connection_refused_names_its_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = run(&["ls", &format!("alice@127.0.0.1:{port}")], tmp.path());
    assert!(!o.status.success());
    let err = stderr(&o);
    let cause = std::io::Error::from_raw_os_error(111).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    assert_eq!(err.trim_end(), format!("ferry: cannot connect to 127.0.0.1:{port}: {cause}"));
}

/// Item 8: `ferry chat-server --help` listed the time service's `--utc`.
#[test]
fn issue13_item8_each_udp_service_lists_only_its_own_flags() {
    let help = |cmd: &str| {
        let o = Command::new(ferry()).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success());
        stdout(&o)
    };
    let chat = help("chat-server");
    assert!(!chat.contains("--utc"), "{chat}");
    assert!(chat.contains("--listen"), "{chat}");
    let time = help("time-server");
    assert!(time.contains("--utc") && time.contains("--listen"), "{time}");
    let o = Command::new(ferry()).args(["chat-server", "--utc"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
}

/// Item 8: the README named PATH, HOME, USER and LANG as a command's whole
/// environment, but LOGNAME is set too. The README's list is checked
/// against what a command really sees.
#[test]
fn issue13_item8_readme_lists_the_exact_environment_of_a_remote_command() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let start = flat.find("cleared environment (").expect("the README describes the environment");
    let listed = &flat[start..];
    let listed = &listed[..listed.find(')').unwrap()];
    let documented: BTreeSet<String> = listed.split('`').skip(1).step_by(2).map(str::to_string).collect();

    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = server(tmp.path(), &[]);
    let remote = format!("alice@127.0.0.1:{}", server.port());
    let o = run(&["exec", &remote, "--insecure-plaintext", "--", "env"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let actual: BTreeSet<String> =
        stdout(&o).lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k.to_string()).collect();
    assert_eq!(documented, actual);
}
