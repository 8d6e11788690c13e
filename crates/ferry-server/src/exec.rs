//! Remote command execution policy: who may run what, how many at once, the
//! environment a command gets and the kernel boundary around it. The
//! streaming itself is in `cmd/exec.rs`.
//!
//! The allowlist is a convenience, not a boundary: an allowed program can
//! run others (`tar --checkpoint-action=exec=...`). The boundary is
//! [`confine`]: namespaces, Landlock, no capabilities, rlimits (issue 12).
//! Where the kernel lacks them, commands are refused unless the operator set
//! `exec.unconfined = true`.

mod confine;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::process::Command;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ExecConfig;
pub use confine::Identity;

/// Caps on concurrent commands, in total and per user.
pub struct ExecLimits {
    total: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

/// A seat for one running command; released on drop.
pub struct ExecPermit {
    _total: OwnedSemaphorePermit,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for ExecPermit {
    fn drop(&mut self) {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl ExecLimits {
    pub fn new(max_total: usize) -> Self {
        ExecLimits { total: Arc::new(Semaphore::new(max_total)), per_user: Arc::default() }
    }

    /// A seat for `user`, or `None` when either cap is reached.
    pub fn try_acquire(&self, user: &str, max_per_user: usize) -> Option<ExecPermit> {
        let total = Arc::clone(&self.total).try_acquire_owned().ok()?;
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(user.to_string()).or_insert(0);
        if *n >= max_per_user {
            return None;
        }
        *n += 1;
        Some(ExecPermit { _total: total, per_user: Arc::clone(&self.per_user), user: user.to_string() })
    }
}

/// Whether `program` passes the allowlist (empty = everything allowed).
/// Entries match the program name as given or its final path component.
pub fn allowed(allowlist: &[String], program: &str) -> bool {
    if allowlist.is_empty() {
        return true;
    }
    let base = Path::new(program).file_name().and_then(|s| s.to_str()).unwrap_or(program);
    allowlist.iter().any(|a| a == program || a == base)
}

/// How commands run under a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Inside the kernel confinement, as this identity.
    Confined(Identity),
    /// `exec.unconfined = true`: as the server's user, with only a process group.
    Unconfined,
}

/// The boundary commands get, or why none can be had (then commands are
/// refused: fail closed).
pub fn boundary(cfg: &ExecConfig) -> Result<Boundary, String> {
    if cfg.unconfined {
        return Ok(Boundary::Unconfined);
    }
    let id = confine::identity(cfg)?;
    confine::available(id)?;
    Ok(Boundary::Confined(id))
}

/// Says at start how commands will run; loudly when they are not confined.
pub fn log_startup(cfg: &ExecConfig) {
    match boundary(cfg) {
        Ok(Boundary::Unconfined) => tracing::warn!(
            "WARNING: exec.unconfined = true: remote commands run WITHOUT the kernel confinement, as the \
             server's own OS user: they can read its secret, its user database and every home, and signal it"
        ),
        Ok(Boundary::Confined(id)) => tracing::info!(
            uid = id.uid,
            gid = id.gid,
            network = cfg.network,
            "remote commands are confined (Landlock, user/PID/network namespaces, no capabilities, rlimits)"
        ),
        Err(why) => tracing::warn!("remote commands will be refused: {why}"),
    }
}

/// The command, confined (see [`boundary`]), in its own process group, with
/// a cleared environment but for a safe set. `Err` says why commands are
/// refused.
pub fn command(cfg: &ExecConfig, argv: &[String], cwd: &Path, home: &Path, user: &str) -> Result<Command, String> {
    let boundary = boundary(cfg).map_err(|why| {
        format!(
            "remote commands are refused because they cannot be confined: {why} \
             (the operator may set exec.unconfined = true)"
        )
    })?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("USER", user)
        .env("LOGNAME", user)
        .env("LANG", "C.UTF-8")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Boundary::Confined(id) = boundary {
        confine::apply(cmd.as_std_mut(), cfg, id, home)?;
    }
    Ok(cmd)
}

/// Kills the whole process group led by `pid`.
pub fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The process group of one running command. Dropping it kills the group,
/// so no path out of the handler (an early return, a client that vanished,
/// a session task dropped at shutdown) leaves the command's children
/// running: `kill_on_drop` alone reaches only the group leader.
///
/// The kill at drop also takes background processes that closed their
/// output and would otherwise outlive the command, its time limit and its
/// seat under `max_per_user`.
pub struct ProcessGroup {
    pid: u32,
}

impl ProcessGroup {
    /// Takes charge of the group led by `pid` (`0`: no process, no-op).
    pub fn new(pid: u32) -> Self {
        ProcessGroup { pid }
    }

    pub fn kill(&self) {
        if self.pid != 0 {
            kill_group(self.pid);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_name_or_basename() {
        let list = vec!["ls".to_string(), "/usr/bin/wc".to_string()];
        assert!(allowed(&list, "ls"));
        assert!(allowed(&list, "/bin/ls"));
        assert!(allowed(&list, "/usr/bin/wc"));
        assert!(!allowed(&list, "sh"));
        assert!(allowed(&[], "anything"));
    }

    #[test]
    fn per_user_cap() {
        let limits = ExecLimits::new(10);
        let a = limits.try_acquire("a", 2);
        let b = limits.try_acquire("a", 2);
        assert!(a.is_some() && b.is_some());
        assert!(limits.try_acquire("a", 2).is_none());
        assert!(limits.try_acquire("b", 2).is_some());
        drop(a);
        assert!(limits.try_acquire("a", 2).is_some());
    }
}
