//! Normal behaviour and plain errors of every `Jail` operation.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use ferry_server::vfs::{EntryKind, Jail, PARTIAL_DIR, VfsError, VirtualPath};
use tempfile::TempDir;

fn vp(s: &str) -> VirtualPath {
    VirtualPath::parse(s).expect("test path parses")
}

fn setup() -> (TempDir, Jail) {
    let tmp = TempDir::new().unwrap();
    let home = tmp.path();
    fs::write(home.join("f.txt"), b"hello").unwrap();
    fs::create_dir_all(home.join("d/e")).unwrap();
    fs::write(home.join("d/e/g.bin"), vec![7u8; 1000]).unwrap();
    let jail = Jail::open(home).unwrap();
    (tmp, jail)
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, VfsError>, code: &str) {
    match r {
        Err(e) => assert_eq!(e.code(), code, "error was {e}"),
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
    }
}

#[test]
fn open_missing_home() {
    let tmp = TempDir::new().unwrap();
    assert_code(Jail::open(&tmp.path().join("nope")), "not_found");
    fs::write(tmp.path().join("file"), b"").unwrap();
    assert_code(Jail::open(&tmp.path().join("file")), "not_a_directory");
}

#[test]
fn stat_kinds() {
    let (tmp, jail) = setup();
    symlink("f.txt", tmp.path().join("link")).unwrap();
    let f = jail.stat(&vp("/f.txt")).unwrap();
    assert_eq!((f.name.as_str(), f.kind, f.size), ("f.txt", EntryKind::File, 5));
    assert!(f.mtime > 1_600_000_000);
    assert_eq!(f.mode & 0o600, 0o600);
    assert_eq!(jail.stat(&vp("d")).unwrap().kind, EntryKind::Dir);
    let root = jail.stat(&VirtualPath::root()).unwrap();
    assert_eq!((root.name.as_str(), root.kind), ("/", EntryKind::Dir));
    let l = jail.stat(&vp("link")).unwrap();
    assert_eq!((l.kind, l.size), (EntryKind::Symlink, 5));
    assert_code(jail.stat(&vp("missing")), "not_found");
    assert_code(jail.stat(&vp("f.txt/x")), "not_a_directory");
}

#[test]
fn list_sorted_and_hides_reserved() {
    let (tmp, jail) = setup();
    jail.internal_dir(PARTIAL_DIR).unwrap();
    fs::write(tmp.path().join("B"), b"").unwrap();
    fs::write(tmp.path().join("a"), b"").unwrap();
    fs::write(tmp.path().join("d/.ferry-x"), b"").unwrap();
    fs::write(tmp.path().join("bad\nname"), b"").unwrap();
    symlink("/etc", tmp.path().join("zz")).unwrap();
    let names: Vec<_> = jail.list(&VirtualPath::root()).unwrap().into_iter().map(|e| (e.name, e.kind)).collect();
    assert_eq!(
        names,
        [
            ("B".to_owned(), EntryKind::File),
            ("a".to_owned(), EntryKind::File),
            // Issue 13: listed in its escaped form, no longer left out.
            ("bad\\x0aname".to_owned(), EntryKind::File),
            ("d".to_owned(), EntryKind::Dir),
            ("f.txt".to_owned(), EntryKind::File),
            ("zz".to_owned(), EntryKind::Symlink),
        ]
    );
    let d: Vec<_> = jail.list(&vp("d")).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(d, ["e"]);
    assert!(jail.list(&vp("d/e")).unwrap()[0].size == 1000);
    jail.mkdir(&vp("empty"), false).unwrap();
    assert!(jail.list(&vp("empty")).unwrap().is_empty());
    assert_code(jail.list(&vp("f.txt")), "not_a_directory");
    assert_code(jail.list(&vp("missing")), "not_found");
}

#[test]
fn list_100k_entries() {
    let tmp = TempDir::new().unwrap();
    let big = tmp.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in (0..100_000u32).rev() {
        fs::File::create(big.join(format!("f{i:06}"))).unwrap();
    }
    let jail = Jail::open(tmp.path()).unwrap();
    let start = std::time::Instant::now();
    let entries = jail.list(&vp("big")).unwrap();
    assert_eq!(entries.len(), 100_000);
    assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
    assert_eq!(entries[0].name, "f000000");
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    assert_eq!(jail.remove_tree(&vp("big")).unwrap(), (0, 100_000));
}

#[test]
fn ensure_dir() {
    let (tmp, jail) = setup();
    symlink("d/e", tmp.path().join("elink")).unwrap();
    jail.ensure_dir(&VirtualPath::root()).unwrap();
    jail.ensure_dir(&vp("d/e")).unwrap();
    jail.ensure_dir(&vp("elink")).unwrap();
    assert_code(jail.ensure_dir(&vp("f.txt")), "not_a_directory");
    assert_code(jail.ensure_dir(&vp("nope")), "not_found");
}

#[test]
fn mkdir() {
    let (tmp, jail) = setup();
    jail.mkdir(&vp("new"), false).unwrap();
    assert!(tmp.path().join("new").is_dir());
    assert_code(jail.mkdir(&vp("new"), false), "already_exists");
    assert_code(jail.mkdir(&vp("f.txt"), false), "already_exists");
    assert_code(jail.mkdir(&vp("x/y"), false), "not_found");
    assert_code(jail.mkdir(&vp("f.txt/y"), false), "not_a_directory");
    assert_code(jail.mkdir(&VirtualPath::root(), false), "already_exists");
    jail.mkdir(&VirtualPath::root(), true).unwrap();
    jail.mkdir(&vp("x/y/z"), true).unwrap();
    assert!(tmp.path().join("x/y/z").is_dir());
    jail.mkdir(&vp("x/y/z"), true).unwrap();
    jail.mkdir(&vp("d/e/new"), true).unwrap();
    assert_code(jail.mkdir(&vp("f.txt/y"), true), "not_a_directory");
    // As GNU `mkdir -p`: an existing file in the way is "already exists".
    assert_code(jail.mkdir(&vp("f.txt"), true), "already_exists");
}

#[test]
fn remove_file_and_dir() {
    let (tmp, jail) = setup();
    symlink("f.txt", tmp.path().join("link")).unwrap();
    assert_eq!(jail.remove_file(&vp("link")).unwrap(), 0);
    assert!(tmp.path().join("f.txt").exists());
    assert_eq!(jail.remove_file(&vp("f.txt")).unwrap(), 5);
    assert!(!tmp.path().join("f.txt").exists());
    assert_code(jail.remove_file(&vp("f.txt")), "not_found");
    assert_code(jail.remove_file(&vp("d")), "is_a_directory");
    assert_code(jail.remove_dir(&vp("d")), "directory_not_empty");
    assert_code(jail.remove_dir(&vp("d/e/g.bin")), "not_a_directory");
    assert_code(jail.remove_dir(&vp("nope")), "not_found");
    jail.mkdir(&vp("empty"), false).unwrap();
    jail.remove_dir(&vp("empty")).unwrap();
    assert!(!tmp.path().join("empty").exists());
    assert_code(jail.remove_file(&VirtualPath::root()), "permission_denied");
    assert_code(jail.remove_dir(&VirtualPath::root()), "permission_denied");
}

#[test]
fn remove_tree() {
    let (tmp, jail) = setup();
    fs::write(tmp.path().join("d/h.txt"), b"12345678").unwrap();
    symlink("../../f.txt", tmp.path().join("d/e/link")).unwrap();
    // 1000 + 8 bytes; g.bin, h.txt and the symlink.
    assert_eq!(jail.remove_tree(&vp("d")).unwrap(), (1008, 3));
    assert!(!tmp.path().join("d").exists());
    assert!(tmp.path().join("f.txt").exists());
    assert_eq!(jail.remove_tree(&vp("f.txt")).unwrap(), (5, 1));
    assert_code(jail.remove_tree(&vp("nope")), "not_found");
    assert_code(jail.remove_tree(&VirtualPath::root()), "permission_denied");
}

#[test]
fn remove_tree_deep() {
    let (tmp, jail) = setup();
    let mut p = tmp.path().join("deep");
    for _ in 0..300 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("leaf"), b"xy").unwrap();
    assert_eq!(jail.remove_tree(&vp("deep")).unwrap(), (2, 1));
    assert!(!tmp.path().join("deep").exists());
}

#[test]
fn rename() {
    let (tmp, jail) = setup();
    let h = tmp.path();
    assert_eq!(jail.rename(&vp("f.txt"), &vp("g.txt"), false).unwrap(), None);
    assert_eq!(fs::read(h.join("g.txt")).unwrap(), b"hello");
    fs::write(h.join("other.txt"), b"abc").unwrap();
    assert_code(jail.rename(&vp("g.txt"), &vp("other.txt"), false), "already_exists");
    assert_eq!(fs::read(h.join("other.txt")).unwrap(), b"abc");
    assert_eq!(jail.rename(&vp("g.txt"), &vp("other.txt"), true).unwrap(), Some(3));
    assert_eq!(fs::read(h.join("other.txt")).unwrap(), b"hello");
    assert!(!h.join("g.txt").exists());
    // Into another directory, and a directory rename.
    jail.rename(&vp("other.txt"), &vp("d/e/o.txt"), false).unwrap();
    assert!(h.join("d/e/o.txt").exists());
    jail.rename(&vp("d/e"), &vp("e2"), false).unwrap();
    assert!(h.join("e2/o.txt").exists());
    // Kernel rules when overwriting.
    fs::write(h.join("file"), b"1").unwrap();
    fs::create_dir(h.join("emptydir")).unwrap();
    assert_code(jail.rename(&vp("file"), &vp("e2"), true), "is_a_directory");
    assert_code(jail.rename(&vp("emptydir"), &vp("file"), true), "not_a_directory");
    assert_code(jail.rename(&vp("emptydir"), &vp("e2"), true), "directory_not_empty");
    assert_code(jail.rename(&vp("file"), &vp("e2"), false), "already_exists");
    // Missing source or target parent.
    assert_code(jail.rename(&vp("nope"), &vp("x"), false), "not_found");
    assert_code(jail.rename(&vp("file"), &vp("nodir/x"), false), "not_found");
    assert_code(jail.rename(&vp("file"), &vp("file/x"), false), "not_a_directory");
    // Onto itself is refused, as mv(1) does.
    assert_code(jail.rename(&vp("file"), &vp("file"), false), "invalid_move");
    // A symlink moves itself.
    symlink("file", h.join("ln")).unwrap();
    jail.rename(&vp("ln"), &vp("ln2"), false).unwrap();
    assert!(fs::symlink_metadata(h.join("ln2")).unwrap().is_symlink());
    assert_eq!(jail.rename(&vp("ln2"), &vp("file2"), true).unwrap(), None);
    fs::write(h.join("file3"), b"").unwrap();
    assert_eq!(jail.rename(&vp("file3"), &vp("file2"), true).unwrap(), Some(0));
    // Into itself or a descendant.
    assert_code(jail.rename(&vp("e2"), &vp("e2/x"), false), "invalid_move");
    assert_code(jail.rename(&vp("/"), &vp("x"), false), "permission_denied");
    assert_code(jail.rename(&vp("file"), &vp("/"), true), "permission_denied");
}

#[test]
fn file_io() {
    let (tmp, jail) = setup();
    let h = tmp.path();
    let (mut f, entry) = jail.open_read(&vp("/f.txt")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    assert_eq!((entry.name.as_str(), entry.size, entry.kind), ("f.txt", 5, EntryKind::File));
    assert_code(jail.open_read(&vp("d")), "is_a_directory");
    assert_code(jail.open_read(&VirtualPath::root()), "is_a_directory");
    assert_code(jail.open_read(&vp("nope")), "not_found");

    let mut n = jail.create_new_file(&vp("d/new.txt")).unwrap();
    n.write_all(b"abc").unwrap();
    drop(n);
    assert_eq!(fs::read(h.join("d/new.txt")).unwrap(), b"abc");
    assert_code(jail.create_new_file(&vp("d/new.txt")), "already_exists");
    assert_code(jail.create_new_file(&vp("d")), "already_exists");
    assert_code(jail.create_new_file(&vp("nodir/x")), "not_found");
    symlink("dangling-target", h.join("dangling")).unwrap();
    assert_code(jail.create_new_file(&vp("dangling")), "already_exists");
    assert!(!h.join("dangling-target").exists());

    let mut w = jail.open_write(&vp("d/new.txt")).unwrap();
    w.seek(SeekFrom::Start(1)).unwrap();
    w.write_all(b"X").unwrap();
    drop(w);
    assert_eq!(fs::read(h.join("d/new.txt")).unwrap(), b"aXc");
    drop(jail.open_write(&vp("created")).unwrap());
    assert!(h.join("created").is_file());
    assert_code(jail.open_write(&vp("d")), "is_a_directory");

    let mut a = jail.open_append(&vp("d/new.txt")).unwrap();
    a.write_all(b"def").unwrap();
    drop(a);
    assert_eq!(fs::read(h.join("d/new.txt")).unwrap(), b"aXcdef");
    assert_code(jail.open_append(&vp("missing")), "not_found");
}

#[test]
fn fifo_is_refused_without_blocking() {
    let (tmp, jail) = setup();
    let status = std::process::Command::new("mkfifo").arg(tmp.path().join("fifo")).status();
    if !status.is_ok_and(|s| s.success()) {
        return; // mkfifo unavailable
    }
    assert_code(jail.open_read(&vp("fifo")), "permission_denied");
    assert_eq!(jail.stat(&vp("fifo")).unwrap().kind, EntryKind::Other);
}

#[test]
fn internal_dir_and_commit() {
    let (tmp, jail) = setup();
    let h = tmp.path();
    let partial = jail.internal_dir(PARTIAL_DIR).unwrap();
    let md = fs::metadata(h.join(PARTIAL_DIR)).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    // Opening again is fine.
    jail.internal_dir(PARTIAL_DIR).unwrap();
    partial.write("upload-1", b"payload").unwrap();
    assert_eq!(jail.rename_from_internal(partial, "upload-1", &vp("d/final.bin"), false).unwrap(), None);
    assert_eq!(fs::read(h.join("d/final.bin")).unwrap(), b"payload");
    partial.write("upload-2", b"second!!").unwrap();
    assert_code(jail.rename_from_internal(partial, "upload-2", &vp("d/final.bin"), false), "already_exists");
    assert_eq!(jail.rename_from_internal(partial, "upload-2", &vp("d/final.bin"), true).unwrap(), Some(7));
    assert_eq!(fs::read(h.join("d/final.bin")).unwrap(), b"second!!");
    assert_code(jail.rename_from_internal(partial, "missing", &vp("x"), false), "not_found");
    assert_code(jail.rename_from_internal(partial, "../f.txt", &vp("x"), false), "invalid_name");
    assert_code(jail.rename_from_internal(partial, "a/b", &vp("x"), false), "invalid_name");
    assert_code(jail.internal_dir("not-reserved"), "invalid_name");
    assert_code(jail.internal_dir(".ferry/x"), "invalid_name");
    assert_code(jail.internal_dir(".."), "invalid_name");
    // Hidden from users.
    assert!(jail.list(&VirtualPath::root()).unwrap().iter().all(|e| e.name != PARTIAL_DIR));
    assert_code(VirtualPath::parse(PARTIAL_DIR), "invalid_name");
}

#[test]
fn disk_usage() {
    let (tmp, jail) = setup();
    let h = tmp.path();
    assert_eq!(jail.disk_usage().unwrap(), (1005, 2));
    let partial = jail.internal_dir(PARTIAL_DIR).unwrap();
    partial.write("p", b"123").unwrap();
    symlink("/etc", h.join("etc")).unwrap();
    symlink("d", h.join("dlink")).unwrap();
    // The two symlinks count as entries, not their targets' contents.
    assert_eq!(jail.disk_usage().unwrap(), (1008, 5));
}

#[test]
fn jail_is_shared_across_threads() {
    let (_tmp, jail) = setup();
    let jail = std::sync::Arc::new(jail);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let jail = std::sync::Arc::clone(&jail);
            std::thread::spawn(move || {
                for j in 0..50 {
                    let p = vp(&format!("t{i}-{j}"));
                    jail.mkdir(&p, false).unwrap();
                    assert!(jail.list(&VirtualPath::root()).unwrap().len() > 2);
                    jail.remove_dir(&p).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn messages_hold_no_host_path() {
    let (tmp, jail) = setup();
    symlink(tmp.path().parent().unwrap(), tmp.path().join("up")).unwrap();
    let host = tmp.path().to_string_lossy().into_owned();
    let errors = [
        jail.stat(&vp("missing")).unwrap_err(),
        jail.open_read(&vp("up/x")).unwrap_err(),
        jail.list(&vp("up")).unwrap_err(),
        jail.mkdir(&vp("f.txt"), false).unwrap_err(),
        jail.rename(&vp("d"), &vp("d/x"), false).unwrap_err(),
        VirtualPath::parse("a\0").unwrap_err(),
    ];
    for e in errors {
        let msg = format!("{e} {e:?}");
        assert!(!msg.contains(&host), "{msg}");
        assert!(!msg.contains(Path::new("/tmp").to_str().unwrap()), "{msg}");
    }
}

/// A tree deeper than PATH_MAX (built by moving a deep directory into another
/// deep directory) is still measured and removed: the walks go from handle to
/// handle, never through a whole path.
#[test]
fn walks_beyond_path_max_still_work() {
    let (tmp, jail) = setup();
    let before = jail.disk_usage().unwrap().1;
    let before_files = |_: &tempfile::TempDir| before;
    let name = "x".repeat(255);
    let chain = [name.as_str(); 12].join("/");
    jail.mkdir(&vp(&format!("/p/{chain}")), true).unwrap();
    jail.mkdir(&vp(&format!("/q/{chain}")), true).unwrap();
    let leaf = vp(&format!("/q/{chain}/f"));
    drop(jail.create_new_file(&leaf).unwrap());
    // /p/<12 names>/moved/<12 names>/f: over 6000 bytes on disk.
    jail.rename(&vp("/q"), &vp(&format!("/p/{chain}/moved")), false).unwrap();
    let (bytes, files) = jail.disk_usage().unwrap();
    assert!(files >= 1, "{bytes} {files}");
    assert_eq!(jail.remove_tree(&vp("/p")).unwrap().1, files - before_files(&tmp));
    assert!(!tmp.path().join("p").exists());
}
