//! Issue 12, item 5: the client trusts no server. A crafted server (the test
//! kit's [`HostileServer`], which logs in with a real SCRAM exchange as a
//! server whose key was stolen would) lists names with `..`, `/`, NUL and
//! escape sequences; the real `ferry` binary must write nothing outside its
//! target and print no raw control character.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::hostile::entry;
use ferry_testkit::{HostileFs, HostileServer};

const PASSWORD: &str = "pw";
const PAYLOAD: &[u8] = b"written by a hostile server\n";

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn command(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ferry());
    cmd.current_dir(cwd)
        .args(args)
        .arg("--insecure-plaintext")
        .arg("--known-hosts")
        .arg(cwd.join("known_hosts"))
        .env("FERRY_PASSWORD", PASSWORD);
    cmd
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    command(cwd, args).stdin(Stdio::null()).output().expect("run ferry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Control characters other than the newline that ends each line.
fn raw_controls(b: &[u8]) -> Vec<char> {
    text(b).chars().filter(|c| c.is_control() && *c != '\n').collect()
}

/// Every file and folder under `root`, relative, sorted (the known-hosts
/// file excepted).
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "known_hosts" {
                continue;
            }
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(rel);
        }
    }
    out
}

/// `get -r` of a folder listing `hostile` (a file, or a folder holding a
/// file): only the honest entries arrive, nothing lands anywhere else, and
/// the refusal names the hostile entry, escaped.
fn get_r_refuses(tmp: &Path, hostile: &str, kind: &str) {
    let work = tmp.join("work");
    std::fs::create_dir_all(work.join("out")).unwrap();
    let listing = vec![entry(hostile, kind, 28), entry("good.txt", "file", 5), entry("sub", "dir", 0)];
    let mut fs = HostileFs::new();
    if kind == "dir" && !hostile.is_empty() {
        // What a folder of that name would hold, for a client that descended.
        fs = fs.dir(&format!("tree/{hostile}"), vec![entry("planted", "file", 28)]);
    }
    let fs = fs
        .dir("tree", listing)
        .dir("tree/sub", vec![entry("inner.txt", "file", 2)])
        .file("tree/good.txt", b"good\n")
        .file("tree/sub/inner.txt", b"in")
        .serve_any(PAYLOAD);
    let server = HostileServer::start(PASSWORD, fs).unwrap();

    let before = tree(tmp);
    let o = run(&work, &["get", "-r", &server.remote("alice", "/tree"), "out"]);
    let stderr = text(&o.stderr);
    let context = format!("{hostile:?} as a {kind}\nstderr: {stderr}\nrequests: {:?}", server.requests());
    assert!(!o.status.success(), "a refused name is a failure: {context}");
    let mut expected = before;
    for p in ["work/out/tree", "work/out/tree/good.txt", "work/out/tree/sub", "work/out/tree/sub/inner.txt"] {
        expected.insert(p.into());
    }
    assert_eq!(tree(tmp), expected, "{context}");
    assert_eq!(std::fs::read(work.join("out/tree/good.txt")).unwrap(), b"good\n");
    let shown = ferry_client::names::escape_controls(hostile);
    assert!(stderr.contains(&format!("refusing the server's name \"{shown}\"")), "{context}");
    assert!(raw_controls(&o.stderr).is_empty(), "{context}");
    let asked_for_it = |r: &String| r.contains("planted") || (!hostile.is_empty() && r.ends_with(hostile));
    assert!(!server.requests().iter().any(asked_for_it), "{context}");
}

#[test]
fn hostile_server_listing_dotdot_cannot_escape_get_r_target() {
    for name in ["..", "../evil", "../../evil", "sub/../../evil", "x/.."] {
        for kind in ["file", "dir"] {
            get_r_refuses(tempfile::tempdir().unwrap().path(), name, kind);
        }
    }
}

#[test]
fn hostile_server_listing_absolute_or_slashed_names_cannot_escape_get_r_target() {
    // An absolute name replaces the target in `Path::join`. It points into
    // the temporary folder, so that a failing client cannot touch the system.
    for kind in ["file", "dir"] {
        let tmp = tempfile::tempdir().unwrap();
        let absolute = tmp.path().join("abs-evil").to_string_lossy().into_owned();
        get_r_refuses(tmp.path(), &absolute, kind);
        get_r_refuses(tempfile::tempdir().unwrap().path(), "a/b", kind);
        get_r_refuses(tempfile::tempdir().unwrap().path(), "a/b/", kind);
    }
}

#[test]
fn hostile_server_listing_nul_dot_and_empty_names_are_refused_by_get_r() {
    for name in ["nul\0evil", ".", ""] {
        for kind in ["file", "dir"] {
            get_r_refuses(tempfile::tempdir().unwrap().path(), name, kind);
        }
    }
}

#[test]
fn hostile_server_dotdot_as_the_typed_source_name_cannot_escape_get_r_target() {
    // `get -r USER@HOST/dir/.. out` would name the copy `out/..`.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("work/out")).unwrap();
    let fs = HostileFs::new().dir("dir/..", vec![entry("evil", "file", 28)]).serve_any(PAYLOAD);
    let server = HostileServer::start(PASSWORD, fs).unwrap();
    let before = tree(tmp.path());
    let o = run(&tmp.path().join("work"), &["get", "-r", &server.remote("alice", "/dir/.."), "out"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("cannot name the local copy"), "{}", text(&o.stderr));
    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn hostile_server_endless_tree_stops_get_r_instead_of_growing_forever() {
    // Every folder lists a folder `d` inside itself: a plan without a bound
    // would grow until memory ran out.
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = HostileFs::new();
    let mut path = String::from("top");
    for _ in 0..2100 {
        fs = fs.dir(&path, vec![entry("d", "dir", 0)]);
        path.push_str("/d");
    }
    let server = HostileServer::start(PASSWORD, fs).unwrap();
    let started = Instant::now();
    let o = run(tmp.path(), &["get", "-r", &server.remote("alice", "/top"), "."]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("path too long"), "{}", text(&o.stderr));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!tmp.path().join("top").exists(), "nothing is created before the plan is complete");
}

#[test]
fn hostile_server_escape_sequences_in_ls_names_and_errors_are_shown_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["\x1b[31mred", "title\x1b]0;pwned\x07", "bell\x07", "new\nline", "csi\u{9b}2J", "rtl\u{202e}txt.exe"];
    let listing = names.iter().map(|n| entry(n, "file", 1)).collect();
    let fs = HostileFs::new()
        .dir("", listing)
        .error("boom", "no such file \x1b[2J\x1b]0;pwned\x07 (really)")
        .file("ok", b"1")
        .serve_any(PAYLOAD);
    let server = HostileServer::start(PASSWORD, fs).unwrap();
    let remote = server.remote("alice", "");

    for args in [vec!["ls", remote.as_str()], vec!["ls", "-l", remote.as_str()]] {
        let o = run(tmp.path(), &args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let stdout = text(&o.stdout);
        assert!(raw_controls(&o.stdout).is_empty(), "{args:?}: {stdout:?}");
        assert_eq!(stdout.lines().count(), names.len(), "one line per name, even `new\\nline`: {stdout:?}");
        for shown in ["\\x1b[31mred", "title\\x1b]0;pwned\\x07", "new\\nline", "csi\\x9b2J", "rtl\\u{202e}txt.exe"] {
            assert!(stdout.contains(shown), "{shown}: {stdout:?}");
        }
    }

    // The server's error message, through one-shot commands and main's report.
    let boom = server.remote("alice", "/boom");
    for args in [vec!["stat", boom.as_str()], vec!["ls", boom.as_str()], vec!["get", boom.as_str(), "x"]] {
        let o = run(tmp.path(), &args);
        assert!(!o.status.success());
        assert!(raw_controls(&o.stderr).is_empty(), "{args:?}: {:?}", text(&o.stderr));
        assert!(text(&o.stderr).contains("no such file \\x1b[2J\\x1b]0;pwned\\x07 (really)"), "{}", text(&o.stderr));
    }
}

#[test]
fn hostile_server_names_in_the_shell_cannot_escape_mget_or_reach_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // `mget .*` (dot files) matches `..` and `../evil`; `mget *` matches `a/b`.
    let listing = vec![
        entry("..", "file", 28),
        entry("../evil", "file", 28),
        entry(".hidden", "file", 28),
        entry("a/b", "file", 28),
        entry("\x1b[31mred", "file", 28),
        entry("ok.txt", "file", 28),
    ];
    // The current directory the server claims, with an escape sequence.
    let fs = HostileFs::new()
        .dir("", listing)
        .file("ok.txt", PAYLOAD)
        .file(".hidden", PAYLOAD)
        .file("\x1b[31mred", PAYLOAD)
        .pwd("/\x1b]0;pwned\x07")
        .serve_any(PAYLOAD);
    let server = HostileServer::start(PASSWORD, fs).unwrap();
    let before = tree(tmp.path());
    let state = tempfile::tempdir().unwrap();

    let mut child = command(&work, &["shell", &server.remote("alice", "")])
        .env("FERRY_STATE_DIR", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ls -a\npwd\nmget *\nmget .*\nexit\n").unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(raw_controls(&o.stdout).is_empty(), "{stdout:?}");
    assert!(raw_controls(&o.stderr).is_empty(), "{stderr:?}");
    assert!(stdout.contains("\\x1b[31mred") && stdout.contains("/\\x1b]0;pwned\\x07"), "{stdout:?}");
    for name in ["..", "../evil", "a/b"] {
        let refusal = format!("refusing the server's name \"{name}\"");
        assert!(stderr.contains(&refusal), "{name}: {stderr}\nrequests: {:?}", server.requests());
    }

    let mut expected = before;
    expected.insert("work/ok.txt".into());
    expected.insert("work/.hidden".into());
    expected.insert("work/\x1b[31mred".into());
    assert_eq!(tree(tmp.path()), expected, "stdout: {stdout}\nstderr: {stderr}\nrequests: {:?}", server.requests());
}

/// Waits (bounded) for a child and collects its output.
fn wait_output(mut child: std::process::Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn hostile_server_escape_sequences_in_names_never_reach_the_progress_bar_raw() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{Winsize, tcsetwinsize};

    let tmp = tempfile::tempdir().unwrap();
    let big = vec![7u8; 3 * 1024 * 1024];
    let name = "\x1b]0;pwned\x07\x1b[31mbig";
    let fs = HostileFs::new()
        .dir("tree", vec![entry(name, "file", big.len() as u64)])
        .file(&format!("tree/{name}"), &big)
        .slow_bodies(Duration::from_millis(40));
    let server = HostileServer::start(PASSWORD, fs).unwrap();

    // stderr on a terminal, so that the progress bar is drawn.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    tcsetwinsize(&master, Winsize { ws_row: 40, ws_col: 200, ws_xpixel: 0, ws_ypixel: 0 }).unwrap();
    let slave = PathBuf::from(ptsname(&master, Vec::new()).unwrap().to_str().unwrap());
    let open = || std::fs::OpenOptions::new().read(true).write(true).open(&slave).unwrap();
    let mut cmd = command(tmp.path(), &["get", "-r", &server.remote("alice", "/tree"), "."]);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(open())).stderr(Stdio::from(open()));
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let mut reader = File::from(master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let o = wait_output(child, Duration::from_secs(60));
    let mut raw = Vec::new();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        raw.extend(chunk);
    }
    let shown = text(&raw);
    assert!(o.status.success(), "{shown:?}");
    assert!(shown.contains("download /tree/\\x1b]0;pwned\\x07\\x1b[31mbig"), "the bar was drawn, escaped: {shown:?}");
    assert!(!shown.contains("\x1b]0;pwned"), "raw OSC: {shown:?}");
    assert!(!shown.contains("\x1b[31m"), "raw colour: {shown:?}");
    assert_eq!(std::fs::read(tmp.path().join("tree").join(name)).unwrap().len(), big.len());
}
