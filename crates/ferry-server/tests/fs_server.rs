//! Issue 3 through the real server and the client library: every navigation
//! and file-management operation and its errors as codes on the wire, a
//! subset of the hostile paths of `vfs_traversal.rs`, isolation between users
//! and between sessions of one user, and a directory swapped for a symlink
//! while requests run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferry_client::{ClientError, ErrorCode, Session};
use ferry_testkit::TestServer;

const SENTINEL: &[u8] = b"SENTINEL-outside-the-home-never-read";

struct World {
    server: TestServer,
    home: PathBuf,
    outside: PathBuf,
}

/// A server with alice (home with planted links) and bob, and a sentinel
/// folder outside every home.
async fn world() -> World {
    let server = TestServer::start().await.unwrap();
    server.add_user("alice", "pw-a", None, false).unwrap();
    server.add_user("bob", "pw-b", None, false).unwrap();
    let home = server.home("alice");
    let outside = server.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("secret.txt"), SENTINEL).unwrap();
    std::fs::write(outside.join("dir/inner.txt"), SENTINEL).unwrap();
    std::fs::write(server.home("bob").join("bob.txt"), SENTINEL).unwrap();
    std::fs::create_dir_all(home.join("a/sub")).unwrap();
    std::fs::create_dir_all(home.join("tree/deep")).unwrap();
    std::fs::write(home.join("file.txt"), b"hello").unwrap();
    std::fs::write(home.join("tree/deep/y.txt"), b"y").unwrap();
    std::os::unix::fs::symlink("/etc", home.join("link_etc")).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("link_out")).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("tree/deep/out")).unwrap();
    std::os::unix::fs::symlink("../bob", home.join("link_bob")).unwrap();
    std::os::unix::fs::symlink("../../../outside", home.join("a/up")).unwrap();
    std::fs::create_dir_all(home.join(".ferry-partial")).unwrap();
    World { server, home, outside }
}

impl World {
    async fn alice(&self) -> Session {
        self.server.login("alice", "pw-a").await.unwrap()
    }

    fn assert_sentinels_intact(&self, case: &str) {
        assert_eq!(std::fs::read(self.outside.join("secret.txt")).unwrap(), SENTINEL, "{case}");
        assert_eq!(std::fs::read(self.outside.join("dir/inner.txt")).unwrap(), SENTINEL, "{case}");
        assert_eq!(std::fs::read(self.server.home("bob").join("bob.txt")).unwrap(), SENTINEL, "{case}");
        let names: Vec<_> = std::fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{case}: something appeared outside: {names:?}");
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a server refusal: {e}")),
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Ls(&'static str),
    Cd(&'static str),
    Stat(&'static str),
    Hash(&'static str),
    Mkdir(&'static str, bool),
    Rm(&'static str, bool),
    Rmdir(&'static str),
    Mv(&'static str, &'static str, bool),
}

async fn apply(s: &mut Session, op: Op) -> Result<String, ClientError> {
    match op {
        Op::Ls(p) => Ok(format!("{:?}", s.ls(Some(p)).await?.into_iter().map(|e| e.name).collect::<Vec<_>>())),
        Op::Cd(p) => s.cd(p).await,
        Op::Stat(p) => Ok(s.stat(p).await?.name),
        Op::Hash(p) => s.hash(p, None).await,
        Op::Mkdir(p, parents) => s.mkdir(p, parents).await.map(|_| String::new()),
        Op::Rm(p, r) => s.rm(p, r).await.map(|_| String::new()),
        Op::Rmdir(p) => s.rmdir(p).await.map(|_| String::new()),
        Op::Mv(a, b, f) => s.mv(a, b, f).await.map(|_| String::new()),
    }
}

#[tokio::test]
async fn hostile_paths_over_the_wire_are_refused_with_their_code() {
    use ErrorCode::*;
    use Op::*;
    let w = world().await;
    let mut s = w.alice().await;
    let path_5000: &'static str = Box::leak("a/".repeat(2500).into_boxed_str());
    let name_256: &'static str = Box::leak("n".repeat(256).into_boxed_str());
    let cases: Vec<(Op, ErrorCode)> = vec![
        (Ls("../"), OutsideHome),
        (Stat("..\\"), InvalidName),
        (Stat("/../../etc/passwd"), OutsideHome),
        (Ls("./a/../../.."), OutsideHome),
        (Cd("../bob"), OutsideHome),
        (Stat("%2e%2e/%2e%2e/etc/passwd"), NotFound),
        (Stat("a\0b"), InvalidName),
        (Mkdir("x\0", false), InvalidName),
        (Hash("link_etc/passwd"), OutsideHome),
        (Cd("link_etc"), OutsideHome),
        (Hash("link_out/secret.txt"), OutsideHome),
        (Hash("link_bob/bob.txt"), OutsideHome),
        (Cd("link_bob"), OutsideHome),
        (Hash("a/up/secret.txt"), OutsideHome),
        (Mkdir("a/up/new", false), OutsideHome),
        (Mkdir("a/up/new/deeper", true), OutsideHome),
        (Rm("link_out/secret.txt", false), OutsideHome),
        (Rm("link_out/dir", true), OutsideHome),
        (Mv("file.txt", "../file.txt", false), OutsideHome),
        (Mv("file.txt", "link_out/file.txt", false), OutsideHome),
        (Mv("link_out/secret.txt", "mine.txt", false), OutsideHome),
        (Mv("a", "a/sub", false), InvalidMove),
        (Mv("a", "a/sub/deeper", false), InvalidMove),
        (Mv("a", "a", false), InvalidMove),
        (Mkdir(name_256, false), InvalidName),
        (Stat(path_5000), InvalidName),
        (Mkdir("a\nb", false), InvalidName),
        (Mkdir("\x1b[31mred", false), InvalidName),
        (Ls(".ferry-partial"), InvalidName),
        (Mkdir(".ferry-partial", false), InvalidName),
        (Rm(".ferry-partial", true), InvalidName),
        (Rm("/", true), PermissionDenied),
        (Rm("a/..", true), PermissionDenied),
        (Rmdir("/"), PermissionDenied),
        (Mv("/", "x", false), PermissionDenied),
    ];
    let mut failures = Vec::new();
    for (op, want) in cases {
        match apply(&mut s, op).await {
            Ok(v) => failures.push(format!("{op:?}: wanted {want:?}, succeeded with {v:?}")),
            Err(e) if e.code() == Some(want) => {}
            Err(e) => failures.push(format!("{op:?}: wanted {want:?}, got {:?}: {e}", e.code())),
        }
        // The session survives every refusal and stays where it was.
        assert_eq!(s.pwd().await.unwrap(), "/", "{op:?}");
        w.assert_sentinels_intact(&format!("{op:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Confined successes: literal names, links removed rather than followed.
    s.mkdir("%2e%2e", false).await.unwrap();
    assert!(w.home.join("%2e%2e").is_dir());
    let root: Vec<_> = s.ls(Some("/")).await.unwrap().into_iter().map(|e| e.name).collect();
    assert!(root.iter().all(|n| !n.starts_with(".ferry")), "{root:?}");
    assert_eq!(s.ls(Some("link_etc")).await.unwrap().len(), 1, "ls of a link lists the link, not /etc");
    s.rm("tree", true).await.unwrap();
    assert!(!w.home.join("tree").exists());
    s.rm("link_out", false).await.unwrap();
    w.assert_sentinels_intact("after rm -r of a tree with a link out");
}

#[tokio::test]
async fn pwd_and_cd_keep_the_cwd_on_failure() {
    let w = world().await;
    let mut s = w.alice().await;
    assert_eq!(s.pwd().await.unwrap(), "/");
    assert_eq!(s.cd("a").await.unwrap(), "/a");
    assert_eq!(code(s.cd("missing").await), ErrorCode::NotFound);
    assert_eq!(s.pwd().await.unwrap(), "/a");
    assert_eq!(code(s.cd("/file.txt").await), ErrorCode::NotADirectory);
    assert_eq!(code(s.cd("../..").await), ErrorCode::OutsideHome);
    assert_eq!(s.pwd().await.unwrap(), "/a");
    assert_eq!(s.cd("sub").await.unwrap(), "/a/sub");
    // Relative paths resolve against the cwd, absolute ones against the home.
    assert_eq!(s.stat("../../file.txt").await.unwrap().name, "file.txt");
    assert_eq!(s.stat("/file.txt").await.unwrap().size, 5);
    assert_eq!(s.cd("..").await.unwrap(), "/a");
    assert_eq!(s.cd("/").await.unwrap(), "/");
}

#[tokio::test]
async fn ls_is_sorted_with_kind_size_and_mtime() {
    let w = world().await;
    let d = w.home.join("list");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("b.txt"), b"bbb").unwrap();
    std::fs::write(d.join("a.txt"), b"a").unwrap();
    std::fs::create_dir(d.join("c")).unwrap();
    std::fs::write(d.join(".hidden"), b"").unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options().write(true).open(d.join("b.txt")).unwrap().set_modified(when).unwrap();
    let mut s = w.alice().await;
    let entries = s.ls(Some("list")).await.unwrap();
    let got: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind.as_str(), e.size)).collect();
    assert_eq!(got, [(".hidden", "file", 0), ("a.txt", "file", 1), ("b.txt", "file", 3), ("c", "dir", 0)]);
    assert_eq!(entries[2].mtime, 1_600_000_000);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((entries[1].mtime - now).abs() < 60);
    // ls of a file is that file; of nothing, not_found; with no path, the cwd.
    let one = s.ls(Some("list/b.txt")).await.unwrap();
    assert_eq!((one.len(), one[0].name.as_str()), (1, "b.txt"));
    assert_eq!(code(s.ls(Some("list/zzz")).await), ErrorCode::NotFound);
    s.cd("list").await.unwrap();
    assert_eq!(s.ls(None).await.unwrap().len(), 4);
    // An empty directory lists as empty.
    assert!(s.ls(Some("c")).await.unwrap().is_empty());
    // Links show as links.
    let root = s.ls(Some("/")).await.unwrap();
    let link = root.iter().find(|e| e.name == "link_etc").unwrap();
    assert_eq!(link.kind, "symlink");
}

#[tokio::test]
async fn stat_of_file_dir_root_and_missing() {
    let w = world().await;
    let mut s = w.alice().await;
    let f = s.stat("file.txt").await.unwrap();
    assert_eq!((f.name.as_str(), f.kind.as_str(), f.size), ("file.txt", "file", 5));
    assert_eq!(s.stat("a").await.unwrap().kind, "dir");
    assert_eq!(s.stat("/").await.unwrap().kind, "dir");
    assert_eq!(s.stat("link_etc").await.unwrap().kind, "symlink");
    assert_eq!(code(s.stat("nope").await), ErrorCode::NotFound);
    assert_eq!(code(s.stat("file.txt/x").await), ErrorCode::NotADirectory);
}

#[tokio::test]
async fn mkdir_and_mkdir_p() {
    let w = world().await;
    let mut s = w.alice().await;
    s.mkdir("x", false).await.unwrap();
    assert!(w.home.join("x").is_dir());
    assert_eq!(code(s.mkdir("x", false).await), ErrorCode::AlreadyExists);
    assert_eq!(code(s.mkdir("file.txt", false).await), ErrorCode::AlreadyExists);
    assert_eq!(code(s.mkdir("missing/child", false).await), ErrorCode::NotFound);
    assert_eq!(code(s.mkdir("file.txt/child", false).await), ErrorCode::NotADirectory);
    assert_eq!(code(s.mkdir("/", false).await), ErrorCode::AlreadyExists);
    s.mkdir("p/q/r", true).await.unwrap();
    assert!(w.home.join("p/q/r").is_dir());
    s.mkdir("p/q/r", true).await.unwrap();
    s.mkdir("/", true).await.unwrap();
    assert!(s.mkdir("file.txt/deeper", true).await.is_err());
    assert!(s.mkdir("file.txt", true).await.is_err(), "mkdir -p over a file must fail");
}

#[tokio::test]
async fn rm_rmdir_and_rm_r() {
    let w = world().await;
    std::fs::create_dir_all(w.home.join("full/inner")).unwrap();
    std::fs::write(w.home.join("full/inner/z"), b"zz").unwrap();
    std::fs::create_dir(w.home.join("empty")).unwrap();
    let mut s = w.alice().await;
    s.rm("file.txt", false).await.unwrap();
    assert!(!w.home.join("file.txt").exists());
    assert_eq!(code(s.rm("file.txt", false).await), ErrorCode::NotFound);
    assert_eq!(code(s.rm("a", false).await), ErrorCode::IsADirectory);
    assert_eq!(code(s.rmdir("full").await), ErrorCode::DirectoryNotEmpty);
    assert_eq!(code(s.rmdir("link_out").await), ErrorCode::NotADirectory);
    assert_eq!(code(s.rmdir("nothing").await), ErrorCode::NotFound);
    s.rmdir("empty").await.unwrap();
    assert!(!w.home.join("empty").exists());
    s.rm("full", true).await.unwrap();
    assert!(!w.home.join("full").exists());
    assert_eq!(code(s.rm("full", true).await), ErrorCode::NotFound);
    assert_eq!(code(s.rm("/", false).await), ErrorCode::PermissionDenied);
    w.assert_sentinels_intact("rm");
}

#[tokio::test]
async fn mv_rename_move_refuse_and_force() {
    let w = world().await;
    std::fs::write(w.home.join("other.txt"), b"other").unwrap();
    let mut s = w.alice().await;
    s.mv("file.txt", "renamed.txt", false).await.unwrap();
    assert_eq!(std::fs::read(w.home.join("renamed.txt")).unwrap(), b"hello");
    // Onto an existing directory: into it.
    s.mv("renamed.txt", "a", false).await.unwrap();
    assert!(w.home.join("a/renamed.txt").is_file());
    s.mv("a/renamed.txt", "/a/sub/deep.txt", false).await.unwrap();
    assert!(w.home.join("a/sub/deep.txt").is_file());
    // Refuses to overwrite without --force; replaces with it.
    assert_eq!(code(s.mv("other.txt", "a/sub/deep.txt", false).await), ErrorCode::AlreadyExists);
    assert_eq!(std::fs::read(w.home.join("a/sub/deep.txt")).unwrap(), b"hello");
    s.mv("other.txt", "a/sub/deep.txt", true).await.unwrap();
    assert_eq!(std::fs::read(w.home.join("a/sub/deep.txt")).unwrap(), b"other");
    assert!(!w.home.join("other.txt").exists());
    // As mv(1) and rename(2): a directory replaces only an empty directory.
    std::fs::create_dir(w.home.join("d2")).unwrap();
    std::fs::create_dir(w.home.join("d2/sub")).unwrap();
    std::fs::write(w.home.join("d2/sub/keep"), b"k").unwrap();
    assert_eq!(code(s.mv("a/sub", "d2", true).await), ErrorCode::DirectoryNotEmpty);
    assert!(w.home.join("d2/sub/keep").exists());
    assert_eq!(code(s.mv("ghost", "x", false).await), ErrorCode::NotFound);
    assert_eq!(code(s.mv("a", "tree/deep/y.txt", true).await), ErrorCode::NotADirectory);
    // A directory moves with its content.
    s.mv("a", "tree/moved", false).await.unwrap();
    assert!(w.home.join("tree/moved/sub/deep.txt").is_file());
}

/// Regression: `mv -f f f` reported the file as replaced, and the server
/// released its size from the quota while the file stayed on disk.
#[tokio::test]
async fn mv_force_onto_itself_keeps_the_quota() {
    let w = world().await;
    let mut s = w.alice().await;
    let before = s.df().await.unwrap().used;
    assert!(before >= 5);
    for _ in 0..3 {
        let _ = s.mv("file.txt", "file.txt", true).await;
    }
    assert_eq!(s.df().await.unwrap().used, before);
    assert_eq!(std::fs::read(w.home.join("file.txt")).unwrap(), b"hello");
}

#[tokio::test]
async fn users_are_isolated() {
    let w = world().await;
    let mut alice = w.alice().await;
    let mut bob = w.server.login("bob", "pw-b").await.unwrap();
    alice.mkdir("alice_only", false).await.unwrap();
    let bobs: Vec<_> = bob.ls(None).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(bobs, ["bob.txt"]);
    assert_eq!(code(bob.stat("/alice_only").await), ErrorCode::NotFound);
    assert_eq!(code(bob.ls(Some("../alice")).await), ErrorCode::OutsideHome);
    assert_eq!(code(bob.rm("../alice/file.txt", false).await), ErrorCode::OutsideHome);
    assert_eq!(code(alice.stat("/bob.txt").await), ErrorCode::NotFound);
    assert_eq!(code(alice.hash("../bob/bob.txt", None).await), ErrorCode::OutsideHome);
    bob.mkdir("alice_only", false).await.unwrap();
    assert!(w.server.home("bob").join("alice_only").is_dir());
    w.assert_sentinels_intact("isolation");
}

#[tokio::test]
async fn two_sessions_of_one_user_see_each_other_at_once() {
    let w = world().await;
    let mut s1 = w.alice().await;
    let mut s2 = w.alice().await;
    s1.mkdir("shared", false).await.unwrap();
    assert_eq!(s2.stat("shared").await.unwrap().kind, "dir");
    s2.cd("shared").await.unwrap();
    s1.mv("file.txt", "shared/f.txt", false).await.unwrap();
    let names: Vec<_> = s2.ls(None).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["f.txt"]);
    s2.rm("f.txt", false).await.unwrap();
    assert_eq!(code(s1.stat("shared/f.txt").await), ErrorCode::NotFound);
    // s1 removes the cwd of s2: s2 is refused, not lost.
    s1.rmdir("shared").await.unwrap();
    assert_eq!(code(s2.ls(None).await), ErrorCode::NotFound);
    assert_eq!(s2.pwd().await.unwrap(), "/shared");
    assert_eq!(s2.cd("/").await.unwrap(), "/");
}

/// Regression: after `cd` into a link to a directory inside the home, `ls`
/// showed the link itself instead of the directory it had entered.
#[tokio::test]
async fn ls_in_a_cwd_reached_through_a_link_lists_the_directory() {
    let w = world().await;
    std::os::unix::fs::symlink("a", w.home.join("alias")).unwrap();
    let mut s = w.alice().await;
    let names = |v: Vec<ferry_client::Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(s.ls(Some("alias")).await.unwrap()), ["sub", "up"]);
    assert_eq!(s.cd("alias").await.unwrap(), "/alias");
    assert_eq!(names(s.ls(None).await.unwrap()), ["sub", "up"]);
    // Links to outside, to a file or to nothing still show as themselves.
    std::os::unix::fs::symlink("file.txt", w.home.join("to_file")).unwrap();
    std::os::unix::fs::symlink("nowhere", w.home.join("dangling")).unwrap();
    for link in ["/link_etc", "/link_out", "/to_file", "/dangling"] {
        let got = s.ls(Some(link)).await.unwrap();
        assert_eq!((got.len(), got[0].kind.as_str()), (1, "symlink"), "{link}");
    }
    w.assert_sentinels_intact("ls through links");
}

#[tokio::test]
async fn cwd_replaced_by_a_link_to_outside_is_refused() {
    let w = world().await;
    let mut s = w.alice().await;
    s.cd("a/sub").await.unwrap();
    std::fs::rename(w.home.join("a"), w.home.join("a_old")).unwrap();
    std::fs::create_dir(w.home.join("a")).unwrap();
    std::os::unix::fs::symlink(&w.outside, w.home.join("a/sub")).unwrap();
    assert_eq!(code(s.ls(None).await), ErrorCode::OutsideHome);
    assert_eq!(code(s.hash("secret.txt", None).await), ErrorCode::OutsideHome);
    assert_eq!(code(s.mkdir("planted", false).await), ErrorCode::OutsideHome);
    assert_eq!(code(s.rm("secret.txt", false).await), ErrorCode::OutsideHome);
    assert_eq!(code(s.mv("/file.txt", "dropped.txt", false).await), ErrorCode::OutsideHome);
    w.assert_sentinels_intact("cwd swapped");
}

/// The race of `vfs_traversal.rs` through the whole server: a thread swaps a
/// directory and a link to outside while a session sends requests through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_swapped_for_a_link_while_requests_run_never_escapes() {
    let w = world().await;
    std::fs::write(w.outside.join("dir/f"), SENTINEL).unwrap();
    let sentinel_hash = sha256_hex(SENTINEL);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, home, out) = (Arc::clone(&stop), w.home.clone(), w.outside.join("dir"));
        std::thread::spawn(move || swap_loop(&home, &out, &stop))
    };
    let mut s = w.alice().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut served, mut refused) = (0u32, 0u32);
    for i in 0..100_000u32 {
        if Instant::now() > deadline {
            break;
        }
        let r = match i % 6 {
            0 => s.hash_as("swap/f", None, ferry_client::HashAlgo::Sha256).await.map(|(h, _)| h),
            1 => s.ls(Some("swap")).await.map(|v| format!("{:?}", v.iter().map(|e| &e.name).collect::<Vec<_>>())),
            2 => s.mkdir("swap/new", false).await.map(|_| String::new()),
            3 => s.rm("swap/f", false).await.map(|_| String::new()),
            4 => s.rm("swap/new", true).await.map(|_| String::new()),
            _ => s.mv("swap/f", "moved", true).await.map(|_| String::new()),
        };
        match r {
            Ok(v) => {
                served += 1;
                assert_ne!(v, sentinel_hash, "hashed the outside sentinel");
                assert!(!v.contains("inner.txt"), "listed the outside folder: {v}");
            }
            Err(e) => {
                assert!(e.code().is_some(), "the session broke: {e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("server swap race: {swaps} swaps, {served} served, {refused} refused");
    assert_eq!(std::fs::read(w.outside.join("dir/f")).unwrap(), SENTINEL);
    let mut names: Vec<_> = std::fs::read_dir(w.outside.join("dir")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["f", "inner.txt"]);
    w.assert_sentinels_intact("swap race");
}

fn sha256_hex(data: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    ferry_testkit::sha256_file(tmp.path()).unwrap()
}

/// Swaps `home/swap` between a real directory and a link to `outside` until
/// told to stop (bounded anyway); returns the number of swaps.
fn swap_loop(home: &Path, outside: &Path, stop: &AtomicBool) -> u64 {
    let (real, link, swap) = (home.join("swap_real"), home.join("swap_link"), home.join("swap"));
    let mut swaps = 0;
    for _ in 0..5_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if std::fs::symlink_metadata(&swap).is_err() {
            if std::fs::symlink_metadata(&real).is_err() {
                let _ = std::fs::create_dir(&real);
            }
            if std::fs::symlink_metadata(&link).is_err() {
                let _ = std::os::unix::fs::symlink(outside, &link);
            }
        }
        let _ = std::fs::write(real.join("f"), b"inside");
        if std::fs::rename(&real, &swap).is_ok() {
            swaps += 1;
            std::thread::yield_now();
            let _ = std::fs::rename(&swap, &real);
        }
        if std::fs::rename(&link, &swap).is_ok() {
            swaps += 1;
            std::thread::yield_now();
            let _ = std::fs::rename(&swap, &link);
        }
    }
    swaps
}
