//! Issue 3: hostile paths against the `Jail` core directly, table-driven.
//!
//! Every case runs on a fresh fixture: a home with planted symlinks that point
//! out (to `/etc`, `/`, a sentinel folder, another user's home, relative
//! `../..` chains), and sentinel files outside it. Each case is asserted
//! refused (with its error code) or confined (the effect stays in the home),
//! and after every case the whole world outside the home must be byte for byte
//! what it was, and nothing a case returned may carry a sentinel.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_server::vfs::{Jail, VfsError, VirtualPath};
use tempfile::TempDir;

const SENTINEL: &[u8] = b"SENTINEL-outside-the-home-never-read";
const BOB_SENTINEL: &[u8] = b"SENTINEL-bob-private";

/// Names that only exist outside alice's home.
const OUTSIDE_NAMES: &[&str] = &["secret.txt", "inner.txt", "bob.txt", "passwd", "shadow"];

struct Fixture {
    tmp: TempDir,
    home: PathBuf,
    outside: PathBuf,
    jail: Jail,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let outside = t.join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret.txt"), SENTINEL).unwrap();
        std::fs::write(outside.join("dir/inner.txt"), SENTINEL).unwrap();
        let bob = t.join("homes/bob");
        std::fs::create_dir_all(&bob).unwrap();
        std::fs::write(bob.join("bob.txt"), BOB_SENTINEL).unwrap();

        let home = t.join("homes/alice");
        std::fs::create_dir_all(home.join("a/sub")).unwrap();
        std::fs::write(home.join("file.txt"), b"hello").unwrap();
        std::fs::write(home.join("a/f.txt"), b"in a").unwrap();
        std::fs::create_dir_all(home.join("tree/deep")).unwrap();
        std::fs::write(home.join("tree/x.txt"), b"x").unwrap();
        std::fs::write(home.join("tree/deep/y.txt"), b"y").unwrap();
        // Planted by the server's owner (absolute) ...
        symlink("/etc", home.join("link_etc")).unwrap();
        symlink("/", home.join("link_root")).unwrap();
        symlink(&outside, home.join("link_out")).unwrap();
        symlink(outside.join("secret.txt"), home.join("link_secret")).unwrap();
        symlink(&home, home.join("link_abs_home")).unwrap();
        symlink(outside.join("dir"), home.join("tree/deep/out")).unwrap();
        // ... and relative ones, as a user with a shell could make them.
        symlink("../bob", home.join("link_bob")).unwrap();
        symlink("../../..", home.join("a/up")).unwrap();
        symlink("../../../outside", home.join("a/up2")).unwrap();
        symlink("../../../outside", home.join("tree/rel")).unwrap();
        symlink("a", home.join("alias")).unwrap();
        symlink("loop2", home.join("loop1")).unwrap();
        symlink("loop1", home.join("loop2")).unwrap();

        let jail = Jail::open(&home).unwrap();
        let partial = jail.internal_dir(".ferry-partial").unwrap();
        partial.write("x.part", b"partial").unwrap();
        Fixture { tmp, home, outside, jail }
    }

    /// Everything under the temporary folder except alice's home, without
    /// following links: kind, target or content of every entry.
    fn world(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.tmp.path().to_path_buf()];
        let mut budget = 10_000;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                budget -= 1;
                assert!(budget > 0, "fixture grew without bound");
                let p = e.unwrap().path();
                if p == self.home {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                let v = if m.file_type().is_symlink() {
                    format!("link {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else {
                    format!("file {}", String::from_utf8_lossy(&std::fs::read(&p).unwrap()))
                };
                out.insert(p, v);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Stat(&'static str),
    Ls(&'static str),
    Cd(&'static str),
    Read(&'static str),
    /// `Jail::stat_cached`: refused (not answered) when it gives nothing.
    StatCached(&'static str),
    /// `Jail::read_cached`: refused (not answered) when it gives nothing.
    ReadCached(&'static str),
    Mkdir(&'static str),
    MkdirP(&'static str),
    Rm(&'static str),
    RmR(&'static str),
    Rmdir(&'static str),
    Mv(&'static str, &'static str),
    MvForce(&'static str, &'static str),
}

#[derive(Debug)]
enum Want {
    /// Refused with this error code.
    Err(&'static str),
    /// Refused, whatever the code.
    AnyErr,
    /// Succeeds (confined: the world outside is checked after every case).
    Ok,
    /// Succeeds and creates this directory inside the home.
    Creates(&'static str),
    /// Succeeds and removes this entry (not its target) from the home.
    Removes(&'static str),
    /// Succeeds and reads exactly these bytes.
    Reads(&'static [u8]),
}

/// What a successful case gave back to the "client".
#[derive(Default, Debug)]
struct Out {
    names: Vec<String>,
    data: Vec<u8>,
}

fn vp(s: &str) -> Result<VirtualPath, VfsError> {
    VirtualPath::root().join_user_input(s)
}

fn run(j: &Jail, op: Op) -> Result<Out, VfsError> {
    let mut out = Out::default();
    match op {
        Op::Stat(p) => out.names.push(j.stat(&vp(p)?)?.name),
        Op::Ls(p) => {
            let target = vp(p)?;
            let meta = j.stat(&target)?;
            let entries = if meta.kind == ferry_server::vfs::EntryKind::Dir { j.list(&target)? } else { vec![meta] };
            out.names = entries.into_iter().map(|e| e.name).collect();
        }
        Op::Cd(p) => j.ensure_dir(&vp(p)?)?,
        Op::Read(p) => {
            let (f, e) = j.open_read(&vp(p)?)?;
            out.names.push(e.name);
            f.take(1 << 20).read_to_end(&mut out.data).map_err(VfsError::Io)?;
        }
        Op::StatCached(p) => out.names.push(j.stat_cached(&vp(p)?).ok_or_else(not_answered)?.name),
        Op::ReadCached(p) => {
            let (e, data) = j.read_cached(&vp(p)?, 1 << 20).ok_or_else(not_answered)?;
            out.names.push(e.name);
            out.data = data.ok_or_else(not_answered)?;
        }
        Op::Mkdir(p) => j.mkdir(&vp(p)?, false)?,
        Op::MkdirP(p) => j.mkdir(&vp(p)?, true)?,
        Op::Rm(p) => drop(j.remove_file(&vp(p)?)?),
        Op::RmR(p) => drop(j.remove_tree(&vp(p)?)?),
        Op::Rmdir(p) => j.remove_dir(&vp(p)?)?,
        Op::Mv(a, b) => drop(j.rename(&vp(a)?, &vp(b)?, false)?),
        Op::MvForce(a, b) => drop(j.rename(&vp(a)?, &vp(b)?, true)?),
    }
    Ok(out)
}

fn not_answered() -> VfsError {
    VfsError::Io(std::io::Error::other("not answered from the kernel's caches"))
}

fn long(n: usize) -> &'static str {
    Box::leak("n".repeat(n).into_boxed_str())
}

fn cases() -> Vec<(&'static str, Op, Want)> {
    use Op::*;
    use Want::*;
    let path_5000: &'static str = Box::leak("a/".repeat(2500).into_boxed_str());
    let deep_255s: &'static str = Box::leak([long(255); 17].join("/").into_boxed_str());
    let wide_256: &'static str = Box::leak("é".repeat(128).into_boxed_str());
    vec![
        // Dot-dot in every spelling.
        ("dotdot slash", Stat("../"), Err("outside_home")),
        ("dotdot backslash", Stat("..\\"), Err("invalid_name")),
        ("absolute dotdot to /etc/passwd", Read("/../../etc/passwd"), Err("outside_home")),
        ("dot a dotdot dotdot dotdot", Read("./a/../../.."), Err("outside_home")),
        ("dotdot through a real dir", Read("a/../../outside/secret.txt"), Err("outside_home")),
        ("ls dotdot", Ls(".."), Err("outside_home")),
        ("cd to another home", Cd("../bob"), Err("outside_home")),
        ("ls from a subdir up three", Ls("a/sub/../../../"), Err("outside_home")),
        ("windows separators", Read("..\\..\\etc\\passwd"), Err("invalid_name")),
        ("tilde then dotdot", Read("~/../../etc/passwd"), Err("outside_home")),
        ("mkdir -p through dotdot", MkdirP("a/b/../../../x"), Err("outside_home")),
        // Encoded or look-alike dots are literal names: confined.
        ("percent-encoded dots", Read("%2e%2e/%2e%2e/etc/passwd"), Err("not_found")),
        ("percent-encoded slashes", Read("%2e%2e%2f%2e%2e%2fetc%2fpasswd"), Err("not_found")),
        ("mkdir -p percent-encoded dots", MkdirP("%2e%2e/%2e%2e/x"), Creates("%2e%2e/%2e%2e/x")),
        ("mkdir dotdot percent slash", Mkdir("..%2f"), Creates("..%2f")),
        ("three dots is a name", Mkdir("..."), Creates("...")),
        ("fullwidth dots are a name", Mkdir("．．"), Creates("．．")),
        ("double slash is the home", Read("//etc/passwd"), Err("not_found")),
        ("proc self root", Read("/proc/self/root/etc/passwd"), Err("not_found")),
        // NUL bytes.
        ("nul in a name", Read("a\0b"), Err("invalid_name")),
        ("nul before an extension", Read("file.txt\0.jpg"), Err("invalid_name")),
        ("nul after dotdot", Mkdir("../\0"), Err("invalid_name")),
        // Symlink to /etc planted by the server's owner.
        ("read through link to /etc", Read("link_etc/passwd"), Err("outside_home")),
        ("stat through link to /etc", Stat("link_etc/passwd"), Err("outside_home")),
        ("cd into link to /etc", Cd("link_etc"), Err("outside_home")),
        ("read the link to /etc itself", Read("link_etc"), Err("outside_home")),
        ("ls the link to /etc shows only the link", Ls("link_etc"), Ok),
        ("mkdir through link to /etc", Mkdir("link_etc/ferry_was_here"), Err("outside_home")),
        ("read through link to /", Read("link_root/etc/passwd"), Err("outside_home")),
        ("read link to an outside file", Read("link_secret"), Err("outside_home")),
        ("read through link to outside folder", Read("link_out/secret.txt"), Err("outside_home")),
        ("rm through link to outside folder", Rm("link_out/secret.txt"), Err("outside_home")),
        ("rm -r through link to outside folder", RmR("link_out/dir"), Err("outside_home")),
        ("rmdir through link to outside folder", Rmdir("link_out/dir"), Err("outside_home")),
        ("mv out of a link to outside", Mv("link_out/secret.txt", "stolen.txt"), Err("outside_home")),
        ("absolute link to the home itself", Read("link_abs_home/file.txt"), Err("outside_home")),
        // Symlink to another user's home.
        ("read another home through a link", Read("link_bob/bob.txt"), Err("outside_home")),
        ("cd into another home through a link", Cd("link_bob"), Err("outside_home")),
        ("mkdir in another home through a link", Mkdir("link_bob/x"), Err("outside_home")),
        // Relative links made inside the home that point out.
        ("relative up link", Read("a/up/outside/secret.txt"), Err("outside_home")),
        ("cd into relative up link", Cd("a/up"), Err("outside_home")),
        ("mkdir -p through relative up link", MkdirP("a/up/outside/newdir"), Err("outside_home")),
        ("relative link to outside", Read("a/up2/secret.txt"), Err("outside_home")),
        ("rm through relative link", Rm("a/up2/secret.txt"), Err("outside_home")),
        ("symlink loop", Read("loop1"), AnyErr),
        ("link inside the home is followed", Read("alias/f.txt"), Reads(b"in a")),
        // mv out of the home.
        ("mv to dotdot", Mv("file.txt", "../file.txt"), Err("outside_home")),
        ("mv into a link to outside", Mv("file.txt", "link_out/file.txt"), Err("outside_home")),
        ("mv through relative up link", Mv("file.txt", "a/up/outside/x"), Err("outside_home")),
        ("mv a dir into another home", Mv("a", "link_bob/a"), Err("outside_home")),
        ("mv to absolute dotdot", Mv("file.txt", "/../../tmp/x"), Err("outside_home")),
        ("mv onto a link without force", Mv("file.txt", "link_etc"), Err("already_exists")),
        ("mv -f replaces the link, not /etc", MvForce("file.txt", "link_etc"), Ok),
        // mv of a directory into itself.
        ("mv dir into itself", Mv("a", "a/inside"), Err("invalid_move")),
        ("mv dir into a descendant", Mv("a", "a/sub/deeper"), Err("invalid_move")),
        ("mv dir into itself through an alias", Mv("a", "alias/sub/x"), Err("invalid_move")),
        ("mv dir onto itself", Mv("a", "a"), Err("invalid_move")),
        ("mv the home", Mv("/", "x"), Err("permission_denied")),
        ("mv onto the home", MvForce("file.txt", "/"), Err("permission_denied")),
        // Long names and paths.
        ("256-byte name", Mkdir(long(256)), Err("invalid_name")),
        ("255-byte name is fine", Mkdir(long(255)), Creates(long(255))),
        ("256-byte multibyte name", Mkdir(wide_256), Err("invalid_name")),
        ("5000-byte path", Read(path_5000), Err("invalid_name")),
        ("4351-byte path of valid names", MkdirP(deep_255s), Err("invalid_name")),
        // Control characters.
        ("newline", Mkdir("a\nb"), Err("invalid_name")),
        ("escape sequence", Mkdir("\x1b[2J"), Err("invalid_name")),
        ("delete", Mkdir("del\x7f"), Err("invalid_name")),
        ("carriage return", Mkdir("a\rb"), Err("invalid_name")),
        ("C1 next line", Mkdir("\u{85}next"), Err("invalid_name")),
        // The server's reserved names.
        ("ls reserved", Ls(".ferry-partial"), Err("invalid_name")),
        ("read a partial", Read(".ferry-partial/x.part"), Err("invalid_name")),
        ("mkdir reserved", Mkdir(".ferry-partial"), Err("invalid_name")),
        ("rm -r reserved", RmR(".ferry-partial"), Err("invalid_name")),
        ("mv into reserved", Mv("file.txt", ".ferry-partial/evil"), Err("invalid_name")),
        ("reserved below the root", Mkdir("a/.ferry-x"), Err("invalid_name")),
        ("ls / hides reserved", Ls("/"), Ok),
        // rm -r never follows links; / is never removed.
        ("rm -r a tree with links to outside", RmR("tree"), Removes("tree")),
        ("rm -r /", RmR("/"), Err("permission_denied")),
        ("rm -r dot", RmR("."), Err("permission_denied")),
        ("rm -r a/..", RmR("a/.."), Err("permission_denied")),
        ("rmdir /", Rmdir("/"), Err("permission_denied")),
        ("rm /", Rm("/"), Err("permission_denied")),
        ("rm a link to outside removes the link", Rm("link_out"), Removes("link_out")),
        ("rm -r a link to outside removes the link", RmR("link_out"), Removes("link_out")),
        ("rm -r a link to /etc removes the link", RmR("link_etc"), Removes("link_etc")),
        ("rmdir a link to outside", Rmdir("link_out"), Err("not_a_directory")),
        ("rm a dir", Rm("a"), Err("is_a_directory")),
    ]
}

fn check_out(name: &str, out: &Out) {
    for n in &out.names {
        assert!(!OUTSIDE_NAMES.contains(&n.as_str()), "{name}: returned an outside name {n}");
        assert!(!n.starts_with(".ferry"), "{name}: returned a reserved name {n}");
    }
    let data = String::from_utf8_lossy(&out.data);
    assert!(!data.contains("SENTINEL") && !data.contains("root:"), "{name}: returned outside data");
}

#[test]
fn hostile_paths_are_refused_or_confined() {
    let cases = cases();
    assert!(cases.len() >= 40, "issue 3 asks for at least 40 hostile cases");
    let mut failures = Vec::new();
    for (name, op, want) in &cases {
        let fx = Fixture::new();
        let before = fx.world();
        let got = run(&fx.jail, *op);
        let ok = match (&got, want) {
            (Err(e), Want::Err(code)) => e.code() == *code,
            (Err(_), Want::AnyErr) => true,
            (Ok(_), Want::Ok) => true,
            (Ok(_), Want::Creates(rel)) => fx.home.join(rel).is_dir(),
            (Ok(_), Want::Removes(rel)) => std::fs::symlink_metadata(fx.home.join(rel)).is_err(),
            (Ok(out), Want::Reads(bytes)) => out.data == *bytes,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: {op:?} wanted {want:?}, got {got:?}"));
        }
        if let Ok(out) = &got {
            check_out(name, out);
        }
        assert_eq!(fx.world(), before, "{name}: the world outside the home changed");
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The non-blocking paths (`stat_cached`, `read_cached`), which the server
/// tries on its async workers before the blocking ones, never answer what
/// the jail refuses, and when they answer, they answer the same.
#[test]
fn cached_stat_and_read_answer_as_the_jail_or_not_at_all() {
    let fx = Fixture::new();
    let fifo = fx.home.join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, 0o644.into(), 0).unwrap();
    let before = fx.world();
    let mut paths: Vec<&str> = cases()
        .into_iter()
        .filter_map(|(_, op, _)| match op {
            Op::Stat(p) | Op::Read(p) | Op::Ls(p) | Op::Cd(p) => Some(p),
            _ => None,
        })
        .collect();
    paths.extend(["file.txt", "a", "a/f.txt", "alias", "link_etc", "link_secret", "loop1", "fifo", "missing"]);
    let (mut stats, mut reads) = (0, 0);
    for p in paths {
        let Ok(v) = vp(p) else { continue };
        let name = format!("{p:?}");
        // Twice: the first blocking call fills the kernel's caches.
        for _ in 0..2 {
            match (fx.jail.stat_cached(&v), fx.jail.stat(&v)) {
                (None, _) => {}
                (Some(cached), Ok(entry)) => {
                    assert_eq!(cached, entry, "{name}: stat");
                    stats += 1;
                }
                (Some(cached), Err(e)) => panic!("{name}: cached stat gave {cached:?}, the jail refuses: {e}"),
            }
            let blocking = run(&fx.jail, Op::Read(p));
            match (fx.jail.read_cached(&v, 1 << 20), blocking) {
                (None, _) => {}
                (Some((entry, Some(data))), Ok(out)) => {
                    assert_eq!((vec![entry.name.clone()], &data), (out.names, &out.data), "{name}: read");
                    check_out(&name, &Out { names: vec![entry.name], data });
                    reads += 1;
                }
                (Some(got), blocking) => panic!("{name}: cached read gave {got:?}, the jail {blocking:?}"),
            }
        }
    }
    assert_eq!(fx.world(), before, "the world outside the home changed");
    eprintln!("answered from the caches: {stats} stats, {reads} reads");
    // Linux 5.12 or later answers these from its caches (RESOLVE_CACHED):
    // file.txt, a/f.txt, alias/f.txt (read and stat), a, alias, the links.
    assert!(stats >= 16 && reads >= 6, "the cached paths answered only {stats} stats and {reads} reads");
    // Too big for the read: the entry, no data.
    let (entry, data) = fx.jail.read_cached(&vp("file.txt").unwrap(), 4).unwrap();
    assert_eq!((entry.size, data), (5, None));
}

/// tmpfs has no `RWF_NOWAIT`; its pages are memory, so it is read anyway.
#[test]
fn cached_read_works_on_tmpfs() {
    let Ok(tmp) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here; skipped");
        return;
    };
    std::fs::write(tmp.path().join("f"), b"in memory").unwrap();
    let jail = Jail::open(tmp.path()).unwrap();
    let v = vp("f").unwrap();
    jail.stat(&v).unwrap();
    let (entry, data) = jail.read_cached(&v, 1 << 20).expect("a tmpfs file is read from memory");
    assert_eq!((entry.size, data.as_deref()), (9, Some(&b"in memory"[..])));
}

#[test]
fn ls_of_a_link_to_etc_lists_the_link_not_etc() {
    let fx = Fixture::new();
    let out = run(&fx.jail, Op::Ls("link_etc")).unwrap();
    assert_eq!(out.names, ["link_etc"]);
    let root = run(&fx.jail, Op::Ls("/")).unwrap();
    assert!(root.names.iter().all(|n| !n.starts_with(".ferry")), "{:?}", root.names);
    assert!(root.names.contains(&"file.txt".to_string()));
}

#[test]
fn mv_force_onto_a_link_replaces_the_link_only() {
    let fx = Fixture::new();
    run(&fx.jail, Op::MvForce("file.txt", "link_etc")).unwrap();
    let m = std::fs::symlink_metadata(fx.home.join("link_etc")).unwrap();
    assert!(m.is_file());
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[test]
fn rm_r_of_a_tree_with_links_out_keeps_their_targets() {
    let fx = Fixture::new();
    let (bytes, files) = fx.jail.remove_tree(&vp("tree").unwrap()).unwrap();
    // x.txt, y.txt and the two links; links count as entries, not bytes.
    assert_eq!((bytes, files), (2, 4));
    assert_eq!(std::fs::read(fx.outside.join("secret.txt")).unwrap(), SENTINEL);
    assert_eq!(std::fs::read(fx.outside.join("dir/inner.txt")).unwrap(), SENTINEL);
}

/// Regression: `mv -f f f` renamed a file onto itself (a no-op for the
/// kernel) but reported its size as replaced, so the server released quota
/// for bytes still on disk; repeated, a user could write past the quota.
#[test]
fn mv_force_onto_itself_frees_no_quota() {
    let fx = Fixture::new();
    for (from, to) in [("file.txt", "file.txt"), ("alias/f.txt", "a/f.txt")] {
        let got = fx.jail.rename(&vp(from).unwrap(), &vp(to).unwrap(), true);
        assert!(!matches!(got, Ok(Some(_))), "{from} -> {to}: reported a replaced file: {got:?}");
    }
    assert_eq!(std::fs::read(fx.home.join("file.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(fx.home.join("a/f.txt")).unwrap(), b"in a");
}

/// A thread swaps a directory and a symlink to an outside folder under the
/// same name, in a bounded loop, while requests run through that name. Every
/// request either works inside the home or is refused; the outside folder is
/// never read nor changed.
#[test]
fn dir_swapped_for_a_symlink_mid_request_never_escapes() {
    let fx = Fixture::new();
    let home = fx.home.clone();
    let outside_dir = fx.outside.join("dir");
    std::fs::write(outside_dir.join("f"), SENTINEL).unwrap();
    let before = fx.world();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        let home = home.clone();
        let outside_dir = outside_dir.clone();
        std::thread::spawn(move || swap_loop(&home, &outside_dir, &stop))
    };

    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut refused, mut inside) = (0u32, 0u32);
    for i in 0..200_000u32 {
        if Instant::now() > deadline {
            break;
        }
        let op = match i % 10 {
            0 if i % 20 == 0 => Op::Read("swap/f"),
            0 => Op::ReadCached("swap/f"),
            1 => Op::Ls("swap"),
            2 if i % 20 == 2 => Op::Stat("swap/f"),
            2 => Op::StatCached("swap/f"),
            3 => Op::Cd("swap"),
            4 => Op::Mkdir("swap/new"),
            5 => Op::Rm("swap/f"),
            6 => Op::Mv("swap/f", "moved"),
            7 => Op::Mv("file.txt", "swap/f2"),
            8 => Op::RmR("swap/new"),
            _ => Op::Ls("swap/"),
        };
        match run(&fx.jail, op) {
            Ok(out) => {
                inside += 1;
                check_out("swap", &out);
                assert_ne!(out.data, SENTINEL, "read the outside sentinel through a swapped directory");
            }
            Err(_) => refused += 1,
        }
        // Put back what the requests moved away, so that they keep trying.
        let _ = std::fs::rename(home.join("swap/f2"), home.join("file.txt"));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("swap race: {swaps} swaps, {inside} requests served inside, {refused} refused");
    assert!(swaps > 10, "the swapper barely ran");
    assert_eq!(fx.world(), before, "the outside folder changed during the swap race");
}

/// Swaps `home/swap` between a real directory and a link to `outside` until
/// told to stop (bounded anyway); returns the number of swaps.
fn swap_loop(home: &Path, outside: &Path, stop: &AtomicBool) -> u64 {
    let real = home.join("swap_real");
    let link = home.join("swap_link");
    let swap = home.join("swap");
    let mut swaps = 0;
    for _ in 0..5_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Recreate whatever the requests removed.
        if std::fs::symlink_metadata(&real).is_err() && std::fs::symlink_metadata(&swap).is_err() {
            let _ = std::fs::create_dir(&real);
        }
        if std::fs::symlink_metadata(&link).is_err() && std::fs::symlink_metadata(&swap).is_err() {
            let _ = symlink(outside, &link);
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

/// Regression: the usage walk behind `rm -r` (and the quota rescan at login)
/// kept one open handle per subdirectory it had found but not yet walked, so
/// a directory with more subdirectories than the descriptor limit could not
/// be removed. It must now need only one listing per level of depth.
#[test]
fn rm_r_of_a_wide_tree_does_not_run_out_of_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let fx = Fixture::new();
    let wide = fx.home.join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..1500 {
        let d = wide.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), b"1").unwrap();
    }
    // Far below 1500, far above what the other tests of this binary need.
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(limit.current.unwrap_or(1024).min(1024));
    setrlimit(Resource::Nofile, limit).unwrap();
    let (_, files) = fx.jail.disk_usage().unwrap();
    assert!(files >= 1500, "{files}");
    assert_eq!(fx.jail.remove_tree(&vp("wide").unwrap()).unwrap(), (1500, 1500));
    assert!(!wide.exists());
}
