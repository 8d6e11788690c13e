//! The kernel boundary around a remote command (issue 12, item 3). The
//! allowlist only matches a program name; this is what actually confines.
//!
//! Each command runs as three processes:
//!
//! ```text
//! server ─ P (the pid the server waits on and kills; outside the namespaces)
//!            ├ I  PID 1 of a fresh PID namespace: reaps orphans, never exits on its own
//!            └ C  PID 2: the command itself, confined, then exec'd
//! ```
//!
//! * P creates a user namespace, a PID namespace and (unless `exec.network`)
//!   an empty network namespace, maps only the command's own uid and gid,
//!   forks I and C, waits for C and then kills I. When I dies the kernel
//!   kills every process left in the namespace: `setsid`, double forks and
//!   daemons included. P then dies the way C did (same exit code or same
//!   signal), so the server reports what the command did. I has
//!   `PR_SET_PDEATHSIG = SIGKILL`: killing P (time limit, cancel, client gone)
//!   takes the namespace down too.
//! * C drops every capability (effective, permitted, inheritable, ambient,
//!   bounding set; securebits locked), sets rlimits (processes, address
//!   space, CPU, file size, open files, no core files) and enters a Landlock
//!   domain with `no_new_privs`: read-write beneath the home, read and execute
//!   beneath `/usr`, `/bin`, `/sbin`, `/lib*`, a few `/etc` files and
//!   `/dev/{null,zero,full,random,urandom}`; no TCP bind or connect unless
//!   `exec.network`; signals and abstract Unix sockets scoped to the domain
//!   (so no signal to the server or to another command), and ptrace limited
//!   to the domain (Landlock's default).
//! * When the server runs as root, P switches to `exec.run_as` (default
//!   `nobody`) before forking, so the command never has root's uid.
//!
//! RLIMIT_NPROC is counted per user *namespace* since Linux 5.14, so with a
//! namespace per command it caps that command alone, not every command of
//! the same OS user.
//!
//! The user namespace matters for three things: it lets an unprivileged
//! server create the PID and network namespaces, it scopes RLIMIT_NPROC,
//! and it is where C's capabilities live before C drops them.
//!
//! Between `fork` and `exec` only async-signal-safe system calls are made:
//! the server is multi-threaded, so a lock (malloc's) may be held by a thread
//! that does not exist in the child. Everything that allocates (the Landlock
//! ruleset, paths, the id maps) is built in the server before the fork.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::config::ExecConfig;

/// The Landlock ABI the confinement needs: 4 brought TCP bind/connect, 6 the
/// signal and abstract-socket scopes. (This machine's kernel reports 7.)
const NEEDED_ABI: ABI = ABI::V6;

/// Read and execute: the system's programs and libraries.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Single files under `/etc` that programs read to start: no directory of it.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/inputrc",
];
/// Only read when `exec.network` lets commands use the network.
const ETC_NETWORK: &[&str] = &["/etc/hosts", "/etc/resolv.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/ssl"];
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// The OS identity a command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The server is root and must switch to `uid`/`gid` before the command.
    pub switch: bool,
}

/// Resolves `exec.run_as` against the server's own identity.
pub fn identity(cfg: &ExecConfig) -> Result<Identity, String> {
    let (euid, egid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    if euid != 0 {
        return match cfg.run_as.as_deref() {
            None => Ok(Identity { uid: euid, gid: egid, switch: false }),
            Some(name) => match lookup_user(name)? {
                (uid, _) if uid == euid => Ok(Identity { uid: euid, gid: egid, switch: false }),
                _ => Err(format!(
                    "exec.run_as = {name:?} needs the server to run as root (it runs as uid {euid}); \
                     remove it to run commands as the server's own user"
                )),
            },
        };
    }
    let name = cfg.run_as.as_deref().unwrap_or("nobody");
    let (uid, gid) = lookup_user(name)?;
    if uid == 0 || gid == 0 {
        return Err(format!("exec.run_as = {name:?} is root: commands must run as an unprivileged user"));
    }
    Ok(Identity { uid, gid, switch: true })
}

/// `NAME` from `/etc/passwd`, or `UID` / `UID:GID` (GID defaults to UID).
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    if let Some((u, g)) = name.split_once(':') {
        if let (Ok(u), Ok(g)) = (u.parse(), g.parse()) {
            return Ok((u, g));
        }
    } else if let Ok(u) = name.parse() {
        return Ok((u, u));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| format!("exec.run_as: no user {name:?} in /etc/passwd"))
}

/// Whether this kernel can confine commands run as `id`, measured once per
/// identity (a real confined `true` is spawned): `Err` says what is missing.
pub fn available(id: Identity) -> Result<(), String> {
    static SEEN: Mutex<Vec<(Identity, Result<(), String>)>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = seen.iter().find(|(i, _)| *i == id) {
        return r.clone();
    }
    let r = probe(id);
    seen.push((id, r.clone()));
    r
}

fn probe(id: Identity) -> Result<(), String> {
    ruleset(Path::new("/nonexistent-ferry-probe"), false)
        .map_err(|e| format!("the kernel lacks Landlock ABI {} or newer: {e}", NEEDED_ABI as i32))?;
    let Some(truth) = ["/usr/bin/true", "/bin/true"].into_iter().find(|p| Path::new(p).exists()) else {
        return Err("cannot probe the confinement: no /usr/bin/true".into());
    };
    let limits = ExecConfig { max_processes: 4, ..ExecConfig::default() };
    let mut cmd = std::process::Command::new(truth);
    cmd.current_dir("/").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::null());
    apply(&mut cmd, &limits, id, Path::new("/nonexistent-ferry-probe"))?;
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a confined probe command failed ({s})")),
        Err(e) => Err(format!(
            "cannot create a confined command ({e}): it needs user namespaces (user.max_user_namespaces > 0 \
             and, for a server not run as root, unprivileged user namespaces allowed), PID and network \
             namespaces, and Landlock ABI {} or newer",
            NEEDED_ABI as i32
        )),
    }
}

/// The Landlock ruleset for a command whose home is `home`, built in the
/// server. Fails if the kernel cannot enforce all of it.
fn ruleset(home: &Path, network: bool) -> Result<RulesetCreated, landlock::RulesetError> {
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(NEEDED_ABI))?
        .scope(Scope::from_all(NEEDED_ABI))?;
    if !network {
        // Handled and no rule: every TCP bind and connect is denied.
        rs = rs.handle_access(AccessNet::from_all(NEEDED_ABI))?;
    }
    let mut created = rs.create()?;
    let read = AccessFs::from_read(NEEDED_ABI);
    let mut paths: Vec<(&str, _)> = SYSTEM_DIRS.iter().chain(ETC_FILES).map(|p| (*p, read)).collect();
    if network {
        paths.extend(ETC_NETWORK.iter().map(|p| (*p, read)));
    }
    paths.extend(DEVICES.iter().map(|p| (*p, AccessFs::ReadFile | AccessFs::WriteFile)));
    if let Some(home) = home.to_str() {
        paths.push((home, AccessFs::from_all(NEEDED_ABI)));
    }
    for (path, access) in paths {
        // A path that does not exist here cannot be reached anyway.
        if let Ok(fd) = PathFd::new(path) {
            // Directory-only rights (ReadDir, MakeDir, ...) are refused on a file.
            let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
            let access = if is_dir { access } else { access & AccessFs::from_file(NEEDED_ABI) };
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
    }
    Ok(created)
}

/// What the child needs, all of it computed before the fork.
struct Plan {
    id: Identity,
    unshare: libc::c_int,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// (resource, soft = hard limit)
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
}

/// Makes `cmd` run confined: namespaces, identity, capabilities, rlimits
/// and Landlock, as the module comment describes.
pub fn apply(cmd: &mut std::process::Command, cfg: &ExecConfig, id: Identity, home: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let ruleset = ruleset(home, cfg.network).map_err(|e| format!("cannot build the Landlock rules: {e}"))?;
    let mut unshare = libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
    if !cfg.network {
        unshare |= libc::CLONE_NEWNET;
    }
    let plan = Plan {
        id,
        unshare,
        uid_map: format!("{0} {0} 1\n", id.uid).into_bytes(),
        gid_map: format!("{0} {0} 1\n", id.gid).into_bytes(),
        rlimits: vec![
            // P and I are counted too: they share C's uid and user namespace.
            (libc::RLIMIT_NPROC, cfg.max_processes.saturating_add(2)),
            (libc::RLIMIT_AS, cfg.max_memory_bytes),
            (libc::RLIMIT_CPU, cfg.max_cpu_secs),
            (libc::RLIMIT_FSIZE, cfg.max_file_bytes),
            (libc::RLIMIT_NOFILE, cfg.max_open_files),
            (libc::RLIMIT_CORE, 0),
        ],
    };
    let mut ruleset = Some(ruleset);
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls through libc (see `child`). It
    // allocates nothing: `plan` was built before the fork and the ruleset's
    // `restrict_self` only makes prctl and landlock system calls.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || child(&plan, &mut ruleset));
    }
    Ok(())
}

/// Runs in P, the child of `fork`. Returns only in C, to exec the command.
#[allow(unsafe_code)]
fn child(plan: &Plan, ruleset: &mut Option<RulesetCreated>) -> io::Result<()> {
    // SAFETY (whole function): raw system calls on values owned here, in a
    // single-threaded child; nothing allocates or takes a lock.
    unsafe {
        if plan.id.switch {
            // Root maps the unprivileged id from *outside* the new user
            // namespace (the kernel wants CAP_SETUID in the parent namespace
            // from the writer), through a helper forked before the unshare,
            // like newuidmap(1). P then switches to that id inside the
            // namespace, which also makes P non-dumpable at once.
            map_from_outside(plan)?;
            check(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) as libc::c_int)?;
            let (u, g) = (plan.id.uid, plan.id.gid);
            check(libc::syscall(libc::SYS_setresgid, g, g, g) as libc::c_int)?;
            check(libc::syscall(libc::SYS_setresuid, u, u, u) as libc::c_int)?;
        } else {
            // Unprivileged: only one's own ids, and setgroups off first.
            check(libc::unshare(plan.unshare))?;
            write_fd(&open_wo(c"/proc/self/setgroups")?, b"deny")?;
            write_fd(&open_wo(c"/proc/self/uid_map")?, &plan.uid_map)?;
            write_fd(&open_wo(c"/proc/self/gid_map")?, &plan.gid_map)?;
        }
        // P and I are copies of the server's memory: no ptrace, no /proc/PID/mem.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;

        let init = fork()?;
        if init == 0 {
            run_init();
        }
        let cmd = fork()?;
        if cmd == 0 {
            return confine_self(plan, ruleset);
        }
        // P holds nothing of the command's: its pipes, and the pipe through
        // which std learns that exec succeeded, close with C's copies.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status: libc::c_int = 0;
        while libc::waitpid(cmd, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                status = libc::SIGKILL; // cannot happen: C is our child
                break;
            }
        }
        // The namespace goes with its init: every process the command left.
        libc::kill(init, libc::SIGKILL);
        while libc::waitpid(init, std::ptr::null_mut(), 0) < 0 && *libc::__errno_location() == libc::EINTR {}
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// For a root server, in P: unshares and has a helper still in the initial
/// user namespace write P's id maps.
#[allow(unsafe_code)]
unsafe fn map_from_outside(plan: &Plan) -> io::Result<()> {
    // SAFETY: raw system calls in a single-threaded child, on fds owned here.
    unsafe {
        let mut fds = [0 as libc::c_int; 2];
        check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
        let (ready_r, ready_w) = (fds[0], fds[1]);
        let p = libc::getpid();
        let helper = fork()?;
        if helper == 0 {
            libc::close(ready_w);
            let mut byte = 0u8;
            // EOF instead of a byte: P failed to unshare; write nothing.
            let ok = libc::read(ready_r, (&raw mut byte).cast(), 1) == 1
                && write_proc(p, b"gid_map\0", &plan.gid_map)
                && write_proc(p, b"uid_map\0", &plan.uid_map);
            libc::_exit(if ok { 0 } else { 1 });
        }
        libc::close(ready_r);
        let unshared = check(libc::unshare(plan.unshare));
        if unshared.is_ok() {
            libc::write(ready_w, b"1".as_ptr().cast(), 1);
        }
        libc::close(ready_w);
        let mut status = 0;
        while libc::waitpid(helper, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
        unshared?;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

/// Writes `data` to `/proc/PID/FILE` (`file` NUL-terminated), without allocating.
#[allow(unsafe_code)]
unsafe fn write_proc(pid: libc::pid_t, file: &[u8], data: &[u8]) -> bool {
    let mut path = [0u8; 64];
    let mut n = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            path[n] = b;
            n += 1;
        }
    };
    push(b"/proc/");
    let mut digits = [0u8; 12];
    let (mut d, mut v) = (0, pid as u32);
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    digits[..d].reverse();
    push(&digits[..d]);
    push(b"/");
    push(file);
    // SAFETY: `path` is NUL-terminated (`file` ends in NUL; the rest is zeros).
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
        libc::close(fd);
        ok
    }
}

/// PID 1 of the namespace: reaps whatever is reparented to it until P
/// kills it (or P dies: the death signal).
#[allow(unsafe_code)]
unsafe fn run_init() -> ! {
    // SAFETY: raw system calls in a single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        loop {
            if libc::waitpid(-1, std::ptr::null_mut(), 0) < 0 && *libc::__errno_location() == libc::ECHILD {
                libc::pause();
            }
        }
    }
}

/// In C: gives up every capability, sets the rlimits, enters the Landlock
/// domain. Exec follows when this returns `Ok`.
#[allow(unsafe_code)]
unsafe fn confine_self(plan: &Plan, ruleset: &mut Option<RulesetCreated>) -> io::Result<()> {
    // SAFETY: raw system calls in a single-threaded child.
    unsafe {
        // Lock root's special treatment away, then empty every capability set.
        // SECBIT_NOROOT, _NO_SETUID_FIXUP, _NO_CAP_AMBIENT_RAISE and the locks
        // of those and of _KEEP_CAPS (left off).
        let bits = 0xef;
        check(libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0))?;
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))?;
        let mut header = CapHeader { version: 0x2008_0522, pid: 0 }; // _LINUX_CAPABILITY_VERSION_3
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int)?;
        for &(resource, value) in &plan.rlimits {
            let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
            check(libc::setrlimit(resource, &lim))?;
        }
        let status = match ruleset.take().map(RulesetCreated::restrict_self) {
            Some(Ok(s)) => s,
            _ => return Err(io::Error::from_raw_os_error(libc::EPERM)),
        };
        if status.ruleset != RulesetStatus::FullyEnforced || !status.no_new_privs {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `fork` as a raw system call: glibc's wrapper runs atfork handlers that
/// take malloc's locks, which a forked child of a threaded server must not.
#[allow(unsafe_code)]
unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: clone without CLONE_VM behaves like fork; the child gets a copy
    // of this stack and returns here with 0.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(pid as libc::pid_t) }
}

#[allow(unsafe_code)]
fn open_wo(path: &CStr) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: `path` is NUL-terminated; a non-negative result is a fresh fd we own.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[allow(unsafe_code)]
fn write_fd(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is valid for its length; the id map files take one write.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n == data.len() as isize { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
