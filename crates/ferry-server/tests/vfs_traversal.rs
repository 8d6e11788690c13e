//! Hostile paths against the jail: each case is refused with a specific error
//! or stays confined, and nothing outside the home is read or changed.
//!
//! Layout of each fixture (a fresh temporary directory per case):
//!
//! ```text
//! base/home/                 the jailed user's home
//!   f.txt  d/e/f/  d/file.txt  d/e/inside.txt
//!   etc_link -> /etc               out -> base/outside (absolute)
//!   other_rel -> ../other          other_abs -> base/other
//!   a/b/c/link -> ../../../../outside
//!   secret_link -> base/outside/SENTINEL_OUTSIDE.txt
//!   dlink -> d (inside)            loop -> loop
//!   rmme/{x.txt, out -> base/outside}
//! base/outside/SENTINEL_OUTSIDE.txt  base/outside/emptydir/
//! base/other/SENTINEL_OTHER.txt      (another user's home)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_server::vfs::{Jail, PARTIAL_DIR, VfsError, VirtualPath};
use tempfile::TempDir;

const OUTSIDE_CONTENT: &[u8] = b"SENTINEL-OUTSIDE-CONTENT";
const OTHER_CONTENT: &[u8] = b"SENTINEL-OTHER-CONTENT";
/// Bytes that must never appear in anything an operation returns.
const MARKERS: &[&str] = &["SENTINEL", "root:"];

struct Fx {
    _tmp: TempDir,
    base: PathBuf,
    home: PathBuf,
    jail: Jail,
}

impl Fx {
    fn new() -> Fx {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let home = base.join("home");
        let outside = base.join("outside");
        let other = base.join("other");
        fs::create_dir_all(home.join("d/e/f")).unwrap();
        fs::create_dir_all(home.join("a/b/c")).unwrap();
        fs::create_dir_all(home.join("rmme")).unwrap();
        fs::create_dir_all(outside.join("emptydir")).unwrap();
        fs::create_dir_all(&other).unwrap();
        fs::write(home.join("f.txt"), b"inside").unwrap();
        fs::write(home.join("d/file.txt"), b"inside").unwrap();
        fs::write(home.join("d/e/inside.txt"), b"inside").unwrap();
        fs::write(home.join("rmme/x.txt"), b"inside").unwrap();
        fs::write(outside.join("SENTINEL_OUTSIDE.txt"), OUTSIDE_CONTENT).unwrap();
        fs::write(other.join("SENTINEL_OTHER.txt"), OTHER_CONTENT).unwrap();
        symlink("/etc", home.join("etc_link")).unwrap();
        symlink(&outside, home.join("out")).unwrap();
        symlink("../other", home.join("other_rel")).unwrap();
        symlink(&other, home.join("other_abs")).unwrap();
        symlink("../../../../outside", home.join("a/b/c/link")).unwrap();
        symlink(outside.join("SENTINEL_OUTSIDE.txt"), home.join("secret_link")).unwrap();
        symlink("d", home.join("dlink")).unwrap();
        symlink("loop", home.join("loop")).unwrap();
        symlink(&outside, home.join("rmme/out")).unwrap();
        let jail = Jail::open(&home).unwrap();
        Fx { _tmp: tmp, base, home, jail }
    }

    /// Everything under `base` except the home: names, kinds, file contents
    /// and symlink targets.
    fn snapshot_outside(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == self.home {
                    continue;
                }
                let md = fs::symlink_metadata(&path).unwrap();
                let value = if md.is_dir() {
                    stack.push(path.clone());
                    b"<dir>".to_vec()
                } else if md.is_symlink() {
                    fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
                } else {
                    fs::read(&path).unwrap()
                };
                out.insert(path.strip_prefix(&self.base).unwrap().to_path_buf(), value);
            }
        }
        out
    }
}

fn vp(s: &str) -> Result<VirtualPath, VfsError> {
    VirtualPath::parse(s)
}

fn read_all(jail: &Jail, p: &VirtualPath) -> Result<Vec<u8>, VfsError> {
    let (mut f, _) = jail.open_read(p)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(VfsError::from)?;
    Ok(buf)
}

fn names(jail: &Jail, p: &VirtualPath) -> Result<Vec<u8>, VfsError> {
    let list = jail.list(p)?;
    Ok(list.into_iter().map(|e| e.name).collect::<Vec<_>>().join("\n").into_bytes())
}

/// What an operation returned: any bytes it read or listed.
type Out = Result<Vec<u8>, VfsError>;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this error code.
    Refused(&'static str),
    /// Succeeded, inside the home.
    Confined,
}

struct Case {
    name: &'static str,
    op: fn(&Fx) -> Out,
    expect: Expect,
    /// Extra check after the operation (e.g. where a confined effect landed).
    check: Option<fn(&Fx)>,
}

fn refused(name: &'static str, code: &'static str, op: fn(&Fx) -> Out) -> Case {
    Case { name, op, expect: Expect::Refused(code), check: None }
}

fn confined(name: &'static str, op: fn(&Fx) -> Out, check: Option<fn(&Fx)>) -> Case {
    Case { name, op, expect: Expect::Confined, check }
}

fn stat(fx: &Fx, s: &str) -> Out {
    fx.jail.stat(&vp(s)?).map(|e| e.name.into_bytes())
}

fn from_cwd(cwd: &str, input: &str) -> Result<VirtualPath, VfsError> {
    vp(cwd)?.join_user_input(input)
}

fn cases() -> Vec<Case> {
    vec![
        // ---- parsing: dot-dot, backslashes, encodings ----
        refused("../", "outside_home", |fx| stat(fx, "../")),
        refused("..", "outside_home", |fx| stat(fx, "..")),
        refused("/..", "outside_home", |fx| stat(fx, "/..")),
        refused("////..", "outside_home", |fx| stat(fx, "////..")),
        refused("..\\", "invalid_name", |fx| stat(fx, "..\\")),
        refused("..\\..\\etc\\passwd", "invalid_name", |fx| stat(fx, "..\\..\\etc\\passwd")),
        refused("/../../etc/passwd", "outside_home", |fx| read_all(&fx.jail, &vp("/../../etc/passwd")?)),
        refused("./a/../../..", "outside_home", |fx| stat(fx, "./a/../../..")),
        refused("a/b/c/../../../..", "outside_home", |fx| stat(fx, "a/b/c/../../../..")),
        refused("cwd /d/e then ../../..", "outside_home", |fx| {
            fx.jail.list(&from_cwd("/d/e", "../../..")?).map(|_| vec![])
        }),
        refused("cwd /d then ../../other/SENTINEL_OTHER.txt", "outside_home", |fx| {
            read_all(&fx.jail, &from_cwd("/d", "../../other/SENTINEL_OTHER.txt")?)
        }),
        confined("cwd /d/e then ../.. is the root", |fx| names(&fx.jail, &from_cwd("/d/e", "../..")?), None),
        refused("/etc/passwd is home-relative", "not_found", |fx| read_all(&fx.jail, &vp("/etc/passwd")?)),
        refused("%2e%2e/%2e%2e/etc/passwd literal", "not_found", |fx| {
            read_all(&fx.jail, &vp("%2e%2e/%2e%2e/etc/passwd")?)
        }),
        confined(
            "mkdir -p %2e%2e/%2e%2e/etc stays inside",
            |fx| {
                fx.jail.mkdir(&vp("%2e%2e/%2e%2e/etc")?, true)?;
                Ok(vec![])
            },
            Some(|fx| assert!(fx.home.join("%2e%2e/%2e%2e/etc").is_dir())),
        ),
        refused("%2e%2e%2f%2e%2e%2fetc%2fpasswd literal", "not_found", |fx| stat(fx, "%2e%2e%2f%2e%2e%2fetc%2fpasswd")),
        refused("..%2f..%2fother literal", "not_found", |fx| stat(fx, "..%2f..%2fother")),
        refused(".../... literal", "not_found", |fx| stat(fx, ".../...")),
        refused("fullwidth dots and slash literal", "not_found", |fx| stat(fx, "\u{ff0e}\u{ff0e}\u{ff0f}other")),
        confined("~/.. is the root", |fx| names(&fx.jail, &vp("~/..")?), None),
        refused("~/../..", "outside_home", |fx| stat(fx, "~/../..")),
        // ---- NUL, control characters, lengths ----
        refused("NUL in name", "invalid_name", |fx| stat(fx, "f.txt\0")),
        refused("NUL then ../", "invalid_name", |fx| stat(fx, "../\0")),
        refused("NUL hiding ../../", "invalid_name", |fx| stat(fx, "foo\0/../../etc/passwd")),
        refused("newline in name", "invalid_name", |fx| fx.jail.mkdir(&vp("a\nb")?, false).map(|()| vec![])),
        refused("escape sequence in name", "invalid_name", |fx| {
            fx.jail.create_new_file(&vp("\x1b[31mred")?).map(|_| vec![])
        }),
        refused("256-byte name", "invalid_name", |fx| fx.jail.create_new_file(&vp(&"n".repeat(256))?).map(|_| vec![])),
        refused("5000-byte path", "invalid_name", |fx| {
            fx.jail.mkdir(&vp(&"abcd/".repeat(1000))?, true).map(|()| vec![])
        }),
        refused("normalized path over 4096 bytes", "invalid_name", |fx| {
            let p = vec!["x".repeat(255); 17].join("/");
            fx.jail.mkdir(&vp(&p)?, true).map(|()| vec![])
        }),
        // ---- the reserved partial directory ----
        refused(".ferry-partial stat", "invalid_name", |fx| {
            fx.jail.internal_dir(PARTIAL_DIR)?;
            stat(fx, ".ferry-partial")
        }),
        refused("/.ferry-partial/x create", "invalid_name", |fx| {
            fx.jail.create_new_file(&vp("/.ferry-partial/x")?).map(|_| vec![])
        }),
        refused("d/../.ferry-partial list", "invalid_name", |fx| names(&fx.jail, &vp("d/../.ferry-partial")?)),
        refused(".ferryX mkdir", "invalid_name", |fx| fx.jail.mkdir(&vp(".ferryX")?, false).map(|()| vec![])),
        refused("rename onto .ferry-partial", "invalid_name", |fx| {
            fx.jail.rename(&vp("f.txt")?, &vp(".ferry-partial")?, true).map(|_| vec![])
        }),
        confined(
            "root listing hides .ferry-partial",
            |fx| {
                fx.jail.internal_dir(PARTIAL_DIR)?.write("p", b"x").map_err(VfsError::from)?;
                let listed = names(&fx.jail, &VirtualPath::root())?;
                assert!(!String::from_utf8_lossy(&listed).contains(".ferry"));
                Ok(listed)
            },
            None,
        ),
        refused("internal_dir with ..", "invalid_name", |fx| fx.jail.internal_dir("../outside").map(|_| vec![])),
        refused("internal_dir planted as symlink out", "outside_home", |fx| {
            symlink(fx.base.join("outside"), fx.home.join(".ferry-partial")).unwrap();
            let d = fx.jail.internal_dir(PARTIAL_DIR)?;
            d.write("planted", b"x").map_err(VfsError::from)?;
            Ok(vec![])
        }),
        refused("rename_from_internal with ../ name", "invalid_name", |fx| {
            let d = fx.jail.internal_dir(PARTIAL_DIR)?;
            fx.jail.rename_from_internal(d, "../f.txt", &vp("g")?, false).map(|_| vec![])
        }),
        refused("rename_from_internal to escaping target", "outside_home", |fx| {
            let d = fx.jail.internal_dir(PARTIAL_DIR)?;
            d.write("p", b"x").map_err(VfsError::from)?;
            fx.jail.rename_from_internal(d, "p", &vp("out/planted")?, true).map(|_| vec![])
        }),
        // ---- removing the root ----
        refused("rm -r /", "permission_denied", |fx| fx.jail.remove_tree(&vp("/")?).map(|_| vec![])),
        refused("rmdir /", "permission_denied", |fx| fx.jail.remove_dir(&VirtualPath::root()).map(|()| vec![])),
        refused("rm /", "permission_denied", |fx| fx.jail.remove_file(&VirtualPath::root()).map(|_| vec![])),
        refused("mv / x", "permission_denied", |fx| {
            fx.jail.rename(&VirtualPath::root(), &vp("x")?, false).map(|_| vec![])
        }),
        refused("rm -r ..", "outside_home", |fx| fx.jail.remove_tree(&vp("..")?).map(|_| vec![])),
        // ---- owner-planted symlinks leading out ----
        confined("stat of a symlink to /etc reports the link", |fx| stat(fx, "etc_link"), None),
        refused("read etc_link/passwd", "outside_home", |fx| read_all(&fx.jail, &vp("etc_link/passwd")?)),
        refused("list etc_link", "outside_home", |fx| names(&fx.jail, &vp("etc_link")?)),
        refused("cd etc_link", "outside_home", |fx| fx.jail.ensure_dir(&vp("etc_link")?).map(|()| vec![])),
        refused("stat through abs symlink", "outside_home", |fx| stat(fx, "out/SENTINEL_OUTSIDE.txt")),
        refused("read through abs symlink", "outside_home", |fx| read_all(&fx.jail, &vp("out/SENTINEL_OUTSIDE.txt")?)),
        refused("read other home via ../other symlink", "outside_home", |fx| {
            read_all(&fx.jail, &vp("other_rel/SENTINEL_OTHER.txt")?)
        }),
        refused("list other home via abs symlink", "outside_home", |fx| names(&fx.jail, &vp("other_abs")?)),
        refused("read via symlink deep in a/b/c", "outside_home", |fx| {
            read_all(&fx.jail, &vp("a/b/c/link/SENTINEL_OUTSIDE.txt")?)
        }),
        refused("list via symlink deep in a/b/c", "outside_home", |fx| names(&fx.jail, &vp("a/b/c/link")?)),
        refused("read file symlink pointing out", "outside_home", |fx| read_all(&fx.jail, &vp("secret_link")?)),
        refused("open_write file symlink pointing out", "outside_home", |fx| {
            fx.jail.open_write(&vp("secret_link")?).map(|_| vec![])
        }),
        refused("open_append file symlink pointing out", "outside_home", |fx| {
            fx.jail.open_append(&vp("secret_link")?).map(|_| vec![])
        }),
        refused("symlink loop", "outside_home", |fx| read_all(&fx.jail, &vp("loop")?)),
        refused("mkdir through escaping symlink", "outside_home", |fx| {
            fx.jail.mkdir(&vp("out/newdir")?, false).map(|()| vec![])
        }),
        refused("mkdir -p through escaping symlink", "outside_home", |fx| {
            fx.jail.mkdir(&vp("out/x/y")?, true).map(|()| vec![])
        }),
        refused("create file through escaping symlink", "outside_home", |fx| {
            fx.jail.create_new_file(&vp("other_rel/new.txt")?).map(|_| vec![])
        }),
        refused("rename out of an escaping symlink", "outside_home", |fx| {
            fx.jail.rename(&vp("out/SENTINEL_OUTSIDE.txt")?, &vp("stolen")?, false).map(|_| vec![])
        }),
        refused("rename into an escaping symlink", "outside_home", |fx| {
            fx.jail.rename(&vp("f.txt")?, &vp("out/f.txt")?, false).map(|_| vec![])
        }),
        refused("rename over a file through escaping symlink", "outside_home", |fx| {
            fx.jail.rename(&vp("f.txt")?, &vp("out/SENTINEL_OUTSIDE.txt")?, true).map(|_| vec![])
        }),
        refused("rm through escaping symlink", "outside_home", |fx| {
            fx.jail.remove_file(&vp("out/SENTINEL_OUTSIDE.txt")?).map(|_| vec![])
        }),
        refused("rmdir through escaping symlink", "outside_home", |fx| {
            fx.jail.remove_dir(&vp("out/emptydir")?).map(|()| vec![])
        }),
        refused("rm -r through escaping symlink", "outside_home", |fx| {
            fx.jail.remove_tree(&vp("out/emptydir")?).map(|_| vec![])
        }),
        confined(
            "rm of a file symlink removes only the link",
            |fx| fx.jail.remove_file(&vp("secret_link")?).map(|_| vec![]),
            Some(|fx| assert!(fs::symlink_metadata(fx.home.join("secret_link")).is_err())),
        ),
        confined(
            "rm -r of a dir symlink removes only the link",
            |fx| fx.jail.remove_tree(&vp("out")?).map(|_| vec![]),
            Some(|fx| assert!(fs::symlink_metadata(fx.home.join("out")).is_err())),
        ),
        confined(
            "rm -r of a dir holding a symlink out",
            |fx| {
                let (bytes, files) = fx.jail.remove_tree(&vp("rmme")?)?;
                assert_eq!((bytes, files), (6, 2));
                Ok(vec![])
            },
            Some(|fx| assert!(!fx.home.join("rmme").exists())),
        ),
        confined(
            "mv of an escaping symlink moves the link",
            |fx| fx.jail.rename(&vp("out")?, &vp("d/out2")?, false).map(|_| vec![]),
            Some(|fx| assert!(fs::symlink_metadata(fx.home.join("d/out2")).is_ok())),
        ),
        confined(
            "disk_usage does not follow symlinks",
            |fx| {
                // f.txt, d/file.txt, d/e/inside.txt, rmme/x.txt: 4 × 6 bytes,
                // plus 9 symlinks.
                assert_eq!(fx.jail.disk_usage()?, (24, 13));
                Ok(vec![])
            },
            None,
        ),
        // ---- moves that try to leave or fold into themselves ----
        refused("mv f.txt ../x", "outside_home", |fx| {
            fx.jail.rename(&vp("f.txt")?, &vp("../x")?, false).map(|_| vec![])
        }),
        refused("mv f.txt /../x", "outside_home", |fx| {
            fx.jail.rename(&vp("f.txt")?, &vp("/../x")?, false).map(|_| vec![])
        }),
        refused("mv d into itself", "invalid_move", |fx| fx.jail.rename(&vp("d")?, &vp("d/d")?, false).map(|_| vec![])),
        refused("mv d into its descendant", "invalid_move", |fx| {
            fx.jail.rename(&vp("d")?, &vp("d/e/f/g")?, false).map(|_| vec![])
        }),
        refused("mv d into itself via an in-home symlink", "invalid_move", |fx| {
            fx.jail.rename(&vp("d")?, &vp("dlink/e/moved")?, false).map(|_| vec![])
        }),
        confined("in-home symlink is followed", |fx| read_all(&fx.jail, &vp("dlink/file.txt")?), None),
    ]
}

#[test]
fn hostile_paths_are_refused_or_confined() {
    let cases = cases();
    assert!(cases.len() >= 45, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let fx = Fx::new();
        let before = fx.snapshot_outside();
        let out = (case.op)(&fx);
        let after = fx.snapshot_outside();
        if before != after {
            failures.push(format!("{}: changed files outside the home", case.name));
        }
        if let Ok(bytes) = &out {
            let text = String::from_utf8_lossy(bytes);
            if let Some(m) = MARKERS.iter().find(|m| text.contains(**m)) {
                failures.push(format!("{}: returned outside data ({m})", case.name));
            }
        }
        match (case.expect, &out) {
            (Expect::Refused(code), Err(e)) if e.code() == code => {}
            (Expect::Confined, Ok(_)) => {}
            (expect, out) => failures.push(format!("{}: expected {expect:?}, got {out:?}", case.name)),
        }
        if let Some(check) = case.check {
            check(&fx);
        }
        if let Err(e) = &out {
            let msg = e.to_string();
            if msg.contains(fx.base.to_str().unwrap()) {
                failures.push(format!("{}: message leaks host path: {msg}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A directory swapped for a symlink to the outside while requests are in
/// flight must never let a read reach the outside.
#[test]
fn directory_swapped_for_symlink_mid_request() {
    let fx = Fx::new();
    let outside = fx.base.join("outside");
    fs::create_dir(fx.home.join("race")).unwrap();
    fs::write(fx.home.join("race/secret"), b"inside").unwrap();
    fs::write(outside.join("secret"), OUTSIDE_CONTENT).unwrap();
    symlink(&outside, fx.home.join("race_alt")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let home = fx.home.clone();
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (a, b) = (home.join("race"), home.join("race_alt"));
            for _ in 0..2000 {
                // Atomically exchange the real directory and the symlink.
                rustix::fs::renameat_with(rustix::fs::CWD, &a, rustix::fs::CWD, &b, rustix::fs::RenameFlags::EXCHANGE)
                    .unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let p = VirtualPath::parse("race/secret").unwrap();
    let dir = VirtualPath::parse("race").unwrap();
    let (mut read_ok, mut refused) = (0u32, 0u32);
    while !stop.load(Ordering::SeqCst) {
        match read_all(&fx.jail, &p) {
            Ok(data) => {
                assert_eq!(data, b"inside");
                read_ok += 1;
            }
            Err(e) => {
                assert!(matches!(e.code(), "outside_home" | "not_found" | "not_a_directory"), "{e}");
                refused += 1;
            }
        }
        if let Ok(listed) = names(&fx.jail, &dir) {
            assert_eq!(listed, b"secret");
        }
        if let Ok(entry) = fx.jail.stat(&p) {
            assert_eq!(entry.size, 6);
        }
    }
    swapper.join().unwrap();
    assert_eq!(fs::read(outside.join("secret")).unwrap(), OUTSIDE_CONTENT);
    eprintln!("reads inside: {read_ok}, refused: {refused}");
    assert!(read_ok + refused > 0);
}

/// Writers racing a swap must never create or modify files outside.
#[test]
fn writes_during_swap_stay_inside() {
    let fx = Fx::new();
    let outside = fx.base.join("outside");
    fs::create_dir(fx.home.join("race")).unwrap();
    symlink(&outside, fx.home.join("race_alt")).unwrap();
    let before = fx.snapshot_outside();
    let stop = Arc::new(AtomicBool::new(false));
    let home = fx.home.clone();
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (a, b) = (home.join("race"), home.join("race_alt"));
            for _ in 0..2000 {
                rustix::fs::renameat_with(rustix::fs::CWD, &a, rustix::fs::CWD, &b, rustix::fs::RenameFlags::EXCHANGE)
                    .unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let mut i = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let p = VirtualPath::parse(&format!("race/w{i}")).unwrap();
        if fx.jail.create_new_file(&p).is_ok() {
            let _ = fx.jail.remove_file(&p);
        }
        let _ = fx.jail.mkdir(&VirtualPath::parse("race/sub").unwrap(), false);
        let _ = fx.jail.remove_dir(&VirtualPath::parse("race/sub").unwrap());
        i += 1;
    }
    swapper.join().unwrap();
    assert_eq!(before, fx.snapshot_outside());
}
