//! Issue 17, item 1: BLAKE3 by negotiation. Through the real server binary
//! and real clients: a BLAKE3 client, a SHA-256-only client (the client
//! library offering only SHA-256), a client that names no hash (as before
//! negotiation) and the stdlib Python client share one server and its
//! files; uploads and downloads resume under each algorithm (and across
//! them); the recorded hash is kept per algorithm; `ferry hash --algo`; and
//! a client that claims one algorithm but sends the other's digest, or asks
//! for one the server does not offer, is refused with nothing committed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_client::{
    Client, ClientError, ConnectOptions, ErrorCode, GetOptions, HashAlgo, HostKeyPolicy, KnownHosts, NoProgress,
    PutOptions, Remote, Session, part_path,
};
use ferry_proto::{Connection, Header};
use ferry_testkit::{Fault, FaultProxy, ServerProcess, add_user_cli, hash_file, login_raw_offering, write_random_file};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;

const USER: &str = "alice";
const PASSWORD: &str = "pw";
const MIB: u64 = 1024 * 1024;
const SHA: HashAlgo = HashAlgo::Sha256;
const B3: HashAlgo = HashAlgo::Blake3;

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A `ferry serve` process with one user.
struct Site {
    tmp: TempDir,
    data: PathBuf,
    plaintext: bool,
    server: ServerProcess,
}

impl Site {
    /// `hashes`, a TOML list, restricts what the server offers (`transfer.hashes`).
    fn start(plaintext: bool, hashes: Option<&str>) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        add_user_cli(&ferry(), &data, USER, PASSWORD, &[]).unwrap();
        let mut extra = Vec::new();
        if plaintext {
            extra.push("--insecure-plaintext".to_string());
        }
        if let Some(list) = hashes {
            let config = tmp.path().join("ferry.toml");
            std::fs::write(&config, format!("[transfer]\nhashes = {list}\n")).unwrap();
            extra.extend(["--config".to_string(), config.display().to_string()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let server = ServerProcess::spawn(&ferry(), &data, &extra).unwrap();
        Site { tmp, data, plaintext, server }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn home(&self) -> PathBuf {
        self.data.join("homes").join(USER)
    }

    /// A session through `port` (the server's, or a proxy's) offering
    /// `hashes` at hello; none: the field is left out, as before negotiation.
    async fn login_at(&self, port: u16, hashes: &[HashAlgo]) -> Result<Session, ClientError> {
        let opts = ConnectOptions {
            insecure_plaintext: self.plaintext,
            policy: match &self.server.fingerprint {
                Some(fp) => HostKeyPolicy::Expect(fp.clone()),
                None => HostKeyPolicy::Strict,
            },
            known_hosts: KnownHosts::new(self.dir().join("known_hosts")),
            hashes: hashes.to_vec(),
            ..ConnectOptions::default()
        };
        let remote = Remote { user: USER.into(), host: "127.0.0.1".into(), port, path: None };
        Client::connect(&remote, &opts).await?.login(PASSWORD).await
    }

    async fn login(&self, hashes: &[HashAlgo]) -> Session {
        self.login_at(self.server.port(), hashes).await.unwrap()
    }

    /// A raw plaintext session offering `hashes`, and the hello answer.
    async fn raw(&self, hashes: Option<&[&str]>) -> (Connection<TcpStream>, Header) {
        login_raw_offering(self.server.addr, USER, PASSWORD, hashes).await.unwrap()
    }

    /// The `ferry` binary with `args`, the password and a private known-hosts file.
    fn ferry(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(ferry());
        cmd.args(args).arg("-q").arg("--known-hosts").arg(self.dir().join("known_hosts"));
        match &self.server.fingerprint {
            Some(fp) => cmd.args(["--fingerprint", fp]),
            None => cmd.arg("--insecure-plaintext"),
        };
        cmd.env("FERRY_PASSWORD", PASSWORD).stdin(Stdio::null()).output().expect("run ferry")
    }

    fn remote(&self, path: &str) -> String {
        format!("{USER}@127.0.0.1:{}/{path}", self.server.port())
    }

    /// The server's log (its stderr).
    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn partials(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(self.home().join(".ferry-partial")) else { return 0 };
        rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).count()
    }
}

/// Polls (bounded) until `cond` holds.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// A put without `wait`: header (with `put` fields), body, then a `put_end`
/// with `end` fields; returns the one answer.
async fn raw_put(conn: &mut Connection<TcpStream>, id: u64, path: &str, data: &[u8], put: Value, end: Value) -> Header {
    let mut header = json!({"op": "put", "id": id, "path": path, "size": data.len()});
    header.as_object_mut().unwrap().extend(put.as_object().unwrap().clone());
    conn.queue_header(&Header::from_serialize(&header, data.len() as u64).unwrap()).unwrap();
    conn.write_body(data).await.unwrap();
    let mut put_end = json!({"op": "put_end", "id": id});
    put_end.as_object_mut().unwrap().extend(end.as_object().unwrap().clone());
    conn.send(&Header::from_serialize(&put_end, 0).unwrap()).await.unwrap();
    conn.read_header().await.unwrap().expect("an answer")
}

/// One request without a body, and its (first) answer.
async fn raw_ask(conn: &mut Connection<TcpStream>, request: Value) -> Header {
    conn.send(&Header::from_serialize(&request, 0).unwrap()).await.unwrap();
    conn.read_header().await.unwrap().expect("an answer")
}

fn code(answer: &Header) -> &str {
    answer.fields["error"]["code"].as_str().unwrap_or("(no error)")
}

fn message(answer: &Header) -> &str {
    answer.fields["error"]["message"].as_str().unwrap_or("")
}

/// The first python3 on PATH, or `None` with the reason printed.
fn python3() -> Option<&'static str> {
    let found = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: python3 is not installed (.ci/run installs it)");
    }
    found.then_some("python3")
}

/// The stdlib Python client (clients/python/ferry_client.py), unchanged.
fn python_client(site: &Site, args: &[&str]) -> Option<Output> {
    let python = python3()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python/ferry_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script);
    match &site.server.fingerprint {
        Some(fp) => cmd.args(["--fingerprint", fp]),
        None => cmd.arg("--plaintext"),
    };
    cmd.args(["127.0.0.1", &site.server.port().to_string(), USER]).args(args);
    Some(cmd.env("FERRY_PASSWORD", PASSWORD).stdin(Stdio::null()).output().unwrap())
}

/// The issue's test: a BLAKE3 client and a SHA-256-only client (and one
/// that names no hash, and the Python client) against the same server (TLS)
/// and the same files, each verifying with its own algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_and_sha256_only_clients_share_one_server_and_its_files() {
    let site = Site::start(false, None);
    let dir = site.dir().to_path_buf();
    let mut b3 = site.login(&HashAlgo::ALL).await;
    let mut sha = site.login(&[SHA]).await;
    let mut legacy = site.login(&[]).await;
    assert_eq!((b3.hash_algo(), sha.hash_algo(), legacy.hash_algo()), (B3, SHA, SHA));

    // Each uploads a large file (streamed, with `ready`) and two small ones
    // (pipelined, one step each on the server).
    let mut uploaded = Vec::new();
    for (s, who, seed) in [(&mut b3, "b3", 1u64), (&mut sha, "sha", 2)] {
        let algo = s.hash_algo();
        let big = dir.join(format!("{who}-big.bin"));
        write_random_file(&big, 3 * MIB + seed, seed).unwrap();
        let sum = s.put_file(&big, &format!("{who}-big.bin"), &PutOptions::default(), &NoProgress).await.unwrap();
        assert_eq!((sum.algo, sum.hash), (algo, hash_file(&big, algo).unwrap()), "{who}");
        uploaded.push(big);
        let mut pairs = Vec::new();
        for i in 0..2u64 {
            let small = dir.join(format!("{who}-small{i}.bin"));
            write_random_file(&small, 1000 + i * 70_000, seed * 10 + i).unwrap();
            pairs.push((small.clone(), format!("{who}-small{i}.bin")));
            uploaded.push(small);
        }
        for r in s.put_many(&pairs, false, &NoProgress).await.unwrap() {
            r.unwrap();
        }
    }
    for src in &uploaded {
        let name = src.file_name().unwrap().to_str().unwrap();
        assert!(same_bytes(src, &site.home().join(name)), "{name} stored as sent");
    }

    // Every client downloads every file, verified in its own algorithm,
    // and asks the server for both hashes of it.
    for (s, who) in [(&mut b3, "b3"), (&mut sha, "sha"), (&mut legacy, "legacy")] {
        let algo = s.hash_algo();
        let out = dir.join(format!("by-{who}"));
        std::fs::create_dir(&out).unwrap();
        let mut small = Vec::new();
        for src in &uploaded {
            let name = src.file_name().unwrap().to_str().unwrap();
            let local = out.join(name);
            if name.contains("small") {
                small.push((name.to_string(), local));
                continue;
            }
            let sum = s.get_file(name, &local, &GetOptions::default(), &NoProgress).await.unwrap();
            assert_eq!((sum.algo, &sum.hash), (algo, &hash_file(src, algo).unwrap()), "{who} {name}");
            assert!(same_bytes(src, &local), "{who} {name}");
        }
        for r in s.get_many(&small, false, &NoProgress).await.unwrap() {
            r.unwrap();
        }
        for src in &uploaded {
            let name = src.file_name().unwrap().to_str().unwrap();
            assert!(same_bytes(src, &out.join(name)), "{who} {name}");
            for asked in [SHA, B3] {
                let (hex, _) = s.hash_as(name, None, asked).await.unwrap();
                assert_eq!(hex, hash_file(src, asked).unwrap(), "{who} asked {asked} of {name}");
            }
            assert_eq!(s.hash(name, None).await.unwrap(), hash_file(src, algo).unwrap(), "the session's hash");
        }
    }

    // The stdlib Python client, unchanged: it reads a file a BLAKE3 client
    // wrote, and writes one the BLAKE3 client then reads.
    if let Some(out) = python_client(&site, &["get", "b3-big.bin", dir.join("py-got.bin").to_str().unwrap()]) {
        assert!(out.status.success(), "python get: {}", String::from_utf8_lossy(&out.stderr));
        assert!(same_bytes(&uploaded[0], &dir.join("py-got.bin")));
        let mine = dir.join("py-put.bin");
        write_random_file(&mine, 2 * MIB + 9, 77).unwrap();
        let out = python_client(&site, &["put", mine.to_str().unwrap(), "py-put.bin"]).unwrap();
        assert!(out.status.success(), "python put: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash_file(&mine, SHA).unwrap(), "it prints the sha256");
        let back = dir.join("py-back.bin");
        let sum = b3.get_file("py-put.bin", &back, &GetOptions::default(), &NoProgress).await.unwrap();
        assert_eq!((sum.algo, sum.hash), (B3, hash_file(&mine, B3).unwrap()));
        assert!(same_bytes(&mine, &back));
    }
    for s in [b3, sha, legacy] {
        s.close().await.unwrap();
    }
}

/// Uploads cut by the network and downloads cut short resume under each
/// algorithm, and across them: the server hashes the partial's prefix in
/// whatever the resuming session asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_resume_under_each_algorithm_and_across_them() {
    let site = Site::start(true, None);
    let dir = site.dir().to_path_buf();
    let size = 4 * MIB + 123;
    let opts = PutOptions { resume: true, state_dir: Some(dir.join("state")), ..PutOptions::default() };
    for (i, (cut_under, resume_under)) in [(B3, B3), (SHA, SHA), (B3, SHA), (SHA, B3)].into_iter().enumerate() {
        let case = format!("cut under {cut_under}, resumed under {resume_under}");
        let local = dir.join(format!("up{i}.bin"));
        write_random_file(&local, size, 100 + i as u64).unwrap();
        let name = format!("up{i}.bin");

        // Cut 2 MiB into the upload, through a proxy.
        let proxy = FaultProxy::start(site.server.addr, Fault::CutUp(2 * MIB)).unwrap();
        let mut s = site.login_at(proxy.addr.port(), &[cut_under]).await.unwrap();
        assert_eq!(s.hash_algo(), cut_under);
        let err = s.put_file(&local, &name, &opts, &NoProgress).await.expect_err("cut by the proxy");
        // A cut, not a refusal (as the body fits in socket buffers, the
        // client may only see the connection close while awaiting the answer).
        assert!(!matches!(err, ClientError::Server(_) | ClientError::Checksum { .. }), "{case}: {err}");
        drop(s);
        // The server has written all it received once it logs the cut.
        let cuts = i + 1;
        wait_until("the server to keep the cut partial", Duration::from_secs(60), || {
            site.log().matches("upload cut; partial kept for resume").count() >= cuts
        });
        assert_eq!(site.partials(), 1, "{case}");

        let mut s = site.login(&[resume_under]).await;
        let sum = s.put_file(&local, &name, &opts, &NoProgress).await.unwrap();
        assert!(sum.resumed_from > 0 && !sum.restarted, "{case}: resumed from {}", sum.resumed_from);
        assert_eq!(sum.transferred, size - sum.resumed_from, "{case}: only the rest crossed");
        assert_eq!((sum.algo, &sum.hash), (resume_under, &hash_file(&local, resume_under).unwrap()), "{case}");
        assert!(same_bytes(&local, &site.home().join(&name)), "{case}");
        assert_eq!(site.partials(), 0, "{case}");

        // A download with a matching `.part` continues after it; a foreign
        // one starts over; both end verified in the session's algorithm.
        let out = dir.join(format!("down{i}.bin"));
        let have = 1_500_000 + i;
        std::fs::write(part_path(&out), &std::fs::read(&local).unwrap()[..have]).unwrap();
        let get = GetOptions { overwrite: true, resume: true };
        let sum = s.get_file(&name, &out, &get, &NoProgress).await.unwrap();
        assert_eq!((sum.resumed_from, sum.restarted), (have as u64, false), "{case}");
        assert_eq!((sum.algo, &sum.hash), (resume_under, &hash_file(&local, resume_under).unwrap()));
        assert!(same_bytes(&local, &out), "{case}");
        std::fs::write(part_path(&out), vec![0x5a; have]).unwrap();
        let sum = s.get_file(&name, &out, &get, &NoProgress).await.unwrap();
        assert_eq!((sum.resumed_from, sum.restarted), (0, true), "{case}: a foreign .part");
        assert!(same_bytes(&local, &out), "{case}");
        s.close().await.unwrap();
    }
}

/// The value of a user xattr of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::getxattr(path, name, &mut buf[..]).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The verified hash is kept per algorithm (`user.ferry.blake3` beside
/// `user.ferry.sha256`), and each is used: a file changed behind the
/// server's back (same size and mtime) is served with the kept hash of the
/// client's algorithm, so that both kinds of client refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_hash_is_kept_and_used_per_algorithm() {
    let site = Site::start(true, None);
    let dir = site.dir().to_path_buf();
    let src = dir.join("f.bin");
    write_random_file(&src, 3 * MIB + 1, 5).unwrap();
    let mut b3 = site.login(&[B3, SHA]).await;
    let mut sha = site.login(&[SHA]).await;
    b3.put_file(&src, "f.bin", &PutOptions::default(), &NoProgress).await.unwrap();
    let stored = site.home().join("f.bin");
    let Some(kept_b3) = xattr(&stored, "user.ferry.blake3") else {
        eprintln!("SKIPPED: the filesystem under {} keeps no user xattrs", dir.display());
        return;
    };
    assert!(kept_b3.starts_with(&format!("{} ", hash_file(&src, B3).unwrap())), "{kept_b3}");
    assert_eq!(xattr(&stored, "user.ferry.sha256"), None, "a BLAKE3 upload records no SHA-256");

    // The first SHA-256 download hashes the file and keeps that too.
    let get = GetOptions { overwrite: true, resume: false };
    let sum = sha.get_file("f.bin", &dir.join("a"), &get, &NoProgress).await.unwrap();
    assert_eq!(sum.hash, hash_file(&src, SHA).unwrap());
    let kept_sha = xattr(&stored, "user.ferry.sha256").expect("recorded by the first whole download");
    assert!(kept_sha.starts_with(&format!("{} ", sum.hash)), "{kept_sha}");
    assert_eq!(xattr(&stored, "user.ferry.blake3"), Some(kept_b3), "the other slot is untouched");

    // Change a byte and put the mtime back: only a kept hash can still
    // claim the old content, and each client refuses what it receives.
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&stored).unwrap();
        f.seek(SeekFrom::Start(2 * MIB)).unwrap();
        f.write_all(b"\x00\xff\x00").unwrap();
        f.set_modified(mtime).unwrap();
    }
    for (s, who) in [(&mut b3, "blake3"), (&mut sha, "sha256")] {
        let local = dir.join(format!("changed-{who}"));
        let err = s.get_file("f.bin", &local, &get, &NoProgress).await.expect_err("served from the kept hash");
        assert!(matches!(err, ClientError::Checksum { .. }), "{who}: {err}");
        assert!(!local.exists(), "{who}: nothing kept locally");
    }

    // A visible change (new mtime) invalidates both: each hashes again.
    std::fs::File::options().write(true).open(&stored).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    for (s, algo) in [(&mut b3, B3), (&mut sha, SHA)] {
        let local = dir.join(format!("fresh-{algo}"));
        let sum = s.get_file("f.bin", &local, &get, &NoProgress).await.unwrap();
        assert_eq!(sum.hash, hash_file(&stored, algo).unwrap());
        assert!(same_bytes(&stored, &local));
    }
}

/// `ferry hash` prints SHA-256 (what `sha256sum -c` checks) whatever the
/// session negotiated, and BLAKE3 with `--algo blake3` (what `b3sum -c`
/// checks), also from a client that offered only SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_hash_prints_the_algorithm_asked_for() {
    let site = Site::start(true, None);
    let src = site.dir().join("h.bin");
    write_random_file(&src, 2 * MIB + 3, 8).unwrap();
    let mut s = site.login(&[B3]).await;
    s.put_file(&src, "h.bin", &PutOptions::default(), &NoProgress).await.unwrap();
    s.close().await.unwrap();
    let first_word =
        |o: &Output| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string();
    for (args, algo) in [
        (vec!["hash"], SHA),
        (vec!["hash", "--algo", "sha256"], SHA),
        (vec!["hash", "--algo", "blake3"], B3),
        (vec!["hash", "--algo", "blake3", "--no-blake3"], B3),
        (vec!["hash", "--no-blake3"], SHA),
    ] {
        let remote = site.remote("h.bin");
        let out = site.ferry(&[args.as_slice(), &[remote.as_str()]].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(first_word(&out), hash_file(&src, algo).unwrap(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("  h.bin\n"), "{args:?}");
    }
    let out = site.ferry(&["hash", "--algo", "md5", &site.remote("h.bin")]);
    assert!(!out.status.success());

    // Put and get through the binary under each algorithm.
    for (extra, name) in [(None, "via-b3.bin"), (Some("--no-blake3"), "via-sha.bin")] {
        let remote = site.remote(name);
        let mut put = vec!["put", src.to_str().unwrap(), remote.as_str()];
        put.extend(extra);
        let out = site.ferry(&put);
        assert!(out.status.success(), "{put:?}: {}", String::from_utf8_lossy(&out.stderr));
        let back = site.dir().join(format!("back-{name}"));
        let mut get = vec!["get", remote.as_str(), back.to_str().unwrap()];
        get.extend(extra);
        let out = site.ferry(&get);
        assert!(out.status.success(), "{get:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(same_bytes(&src, &back));
    }
}

/// Forced mismatches, through raw frames: a client that negotiated BLAKE3
/// but sends a SHA-256 trailer (as `sha256`, or as a `hash` it labels
/// BLAKE3), or names another algorithm in its `put_end`, is refused and
/// nothing is committed, on both the small-file and the streamed path. The
/// right BLAKE3 digest commits, and answers carry `algo` and `hash` (and
/// `sha256` only for SHA-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_mismatch_is_refused_and_commits_nothing() {
    let site = Site::start(true, None);
    let (mut conn, hello) = site.raw(Some(&["blake3", "sha256"])).await;
    assert_eq!(hello.get_str("hash"), Some("blake3"), "{hello:?}");
    assert_eq!(hello.fields["hashes"], json!(["blake3", "sha256"]));
    let sha = |d: &[u8]| SHA.digest_hex(d);
    let b3 = |d: &[u8]| B3.digest_hex(d);

    let mut id = 10;
    for size in [1000usize, 600_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let path = format!("m{size}.bin");
        let refused: [(&str, Value, Value, &str); 5] = [
            ("a sha256 trailer in a BLAKE3 session", json!({}), json!({"sha256": sha(&data)}), "bad_request"),
            (
                "a sha256 digest labelled blake3",
                json!({}),
                json!({"algo": "blake3", "hash": sha(&data)}),
                "checksum_mismatch",
            ),
            ("a put_end naming sha256", json!({}), json!({"algo": "sha256", "hash": sha(&data)}), "bad_request"),
            (
                "a sha256 promised in the header",
                json!({"sha256": sha(&data)}),
                json!({"hash": b3(&data)}),
                "bad_request",
            ),
            ("no hash at all", json!({}), json!({}), "bad_request"),
        ];
        for (what, put, end, want) in refused {
            id += 1;
            let answer = raw_put(&mut conn, id, &path, &data, put, end).await;
            assert_eq!(code(&answer), want, "{size} bytes, {what}: {answer:?}");
            assert!(!message(&answer).is_empty());
            assert!(!site.home().join(&path).exists(), "{size} bytes, {what}: nothing committed");
        }
        if size > 256 * 1024 {
            // The message says what went wrong.
            id += 1;
            let answer = raw_put(&mut conn, id, &path, &data, json!({}), json!({"sha256": sha(&data)})).await;
            assert!(message(&answer).contains("blake3"), "{answer:?}");
        }
        id += 1;
        let answer =
            raw_put(&mut conn, id, &path, &data, json!({}), json!({"algo": "blake3", "hash": b3(&data)})).await;
        assert_eq!(answer.fields["ok"], true, "{answer:?}");
        assert_eq!((answer.get_str("algo"), answer.get_str("hash")), (Some("blake3"), Some(b3(&data).as_str())));
        assert!(answer.fields.get("sha256").is_none(), "{answer:?}");
        assert_eq!(std::fs::read(site.home().join(&path)).unwrap(), data);

        // hash: the session's algorithm, or the one asked for.
        id += 1;
        let answer = raw_ask(&mut conn, json!({"op": "hash", "id": id, "path": path})).await;
        assert_eq!((answer.get_str("algo"), answer.get_str("hash")), (Some("blake3"), Some(b3(&data).as_str())));
        id += 1;
        let answer = raw_ask(&mut conn, json!({"op": "hash", "id": id, "path": path, "algo": "sha256"})).await;
        assert_eq!(
            (answer.get_str("sha256"), answer.get_str("hash")),
            (Some(sha(&data).as_str()), Some(sha(&data).as_str()))
        );
        id += 1;
        let answer = raw_ask(&mut conn, json!({"op": "hash", "id": id, "path": path, "algo": "md5"})).await;
        assert_eq!(code(&answer), "bad_request", "{answer:?}");
    }
    // Partials of the refused streamed uploads may stay for a resume; none was committed.
    drop(conn);

    // A session that named no hash is SHA-256, and its old fields work.
    let (mut old, hello) = site.raw(None).await;
    assert_eq!(hello.get_str("hash"), Some("sha256"));
    let data = b"an old client's file".to_vec();
    let answer = raw_put(&mut old, 1, "old.txt", &data, json!({}), json!({"sha256": sha(&data)})).await;
    assert_eq!(answer.get_str("sha256"), Some(sha(&data).as_str()), "{answer:?}");
    // ...and a BLAKE3 digest sent as its sha256 is a mismatch.
    let answer = raw_put(&mut old, 2, "old2.txt", &data, json!({}), json!({"sha256": b3(&data)})).await;
    assert_eq!(code(&answer), "checksum_mismatch", "{answer:?}");
    assert!(!site.home().join("old2.txt").exists());
    let answer = raw_ask(&mut old, json!({"op": "get", "id": 3, "path": "old.txt"})).await;
    assert_eq!(answer.fields["ok"], true);
    assert_eq!(old.read_body_to_vec(1 << 20).await.unwrap(), data);
    let trailer = old.read_header().await.unwrap().unwrap();
    assert_eq!(trailer.get_str("sha256"), Some(sha(&data).as_str()), "{trailer:?}");
}

/// A server that offers only SHA-256 (`transfer.hashes = ["sha256"]`): a
/// BLAKE3 client falls back to SHA-256 and works; a client that names only
/// BLAKE3 is refused at hello; a request for BLAKE3 is refused, nothing
/// committed; `ferry hash --algo blake3` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_the_server_does_not_offer_is_refused() {
    let site = Site::start(true, Some(r#"["sha256"]"#));
    let mut s = site.login(&HashAlgo::ALL).await;
    assert_eq!(s.hash_algo(), SHA, "BLAKE3 offered, SHA-256 picked");
    let src = site.dir().join("s.bin");
    write_random_file(&src, 2 * MIB + 11, 9).unwrap();
    let sum = s.put_file(&src, "s.bin", &PutOptions::default(), &NoProgress).await.unwrap();
    assert_eq!((sum.algo, sum.hash), (SHA, hash_file(&src, SHA).unwrap()));
    let err = s.hash_as("s.bin", None, B3).await.expect_err("not offered");
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("does not offer blake3"), "{err}");
    s.close().await.unwrap();

    let err = site.login_at(site.server.port(), &[B3]).await.err().expect("nothing in common");
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("no file hash in common"), "{err}");

    let (mut conn, hello) = site.raw(Some(&["blake3", "sha256"])).await;
    assert_eq!((hello.get_str("hash"), &hello.fields["hashes"]), (Some("sha256"), &json!(["sha256"])));
    let data = vec![3u8; 5000];
    let b3 = B3.digest_hex(&data);
    let answer = raw_put(&mut conn, 5, "x.bin", &data, json!({"algo": "blake3"}), json!({"hash": b3})).await;
    assert_eq!(code(&answer), "bad_request", "{answer:?}");
    assert!(message(&answer).contains("does not offer blake3"), "{answer:?}");
    assert!(!site.home().join("x.bin").exists());
    let answer = raw_ask(&mut conn, json!({"op": "get", "id": 6, "path": "s.bin", "algo": "blake3"})).await;
    assert_eq!(code(&answer), "bad_request", "{answer:?}");
    let answer =
        raw_ask(&mut conn, json!({"op": "upload_status", "id": 7, "path": "s.bin", "size": 1, "algo": "blake3"})).await;
    assert_eq!(code(&answer), "bad_request", "{answer:?}");
    // The session goes on.
    let answer = raw_ask(&mut conn, json!({"op": "hash", "id": 8, "path": "s.bin"})).await;
    assert_eq!(answer.get_str("sha256"), Some(hash_file(&src, SHA).unwrap().as_str()));

    let out = site.ferry(&["hash", "--algo", "blake3", &site.remote("s.bin")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not offer blake3"), "{out:?}");
    let out = site.ferry(&["hash", &site.remote("s.bin")]);
    assert!(out.status.success(), "{out:?}");
}
