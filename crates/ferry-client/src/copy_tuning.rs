//! Keeps glibc's `memcpy` off `rep movsb` on AMD processors, where it can be
//! twenty times slower than the vector loop.
//!
//! rustls copies every 16 KiB record between buffers (into the record it
//! encrypts, out of the record it decrypted). On AMD Zen, glibc before 2.39
//! copies blocks of that size with `rep movsb`, which runs at about 3 GB/s
//! instead of 60+ GB/s when the destination sits a few bytes after the
//! source modulo 4 KiB (glibc bug 30994). A record's payload starts 5 bytes
//! into its buffer, so whether a process hits that case depends on where its
//! allocator happened to put things: measured on this project's 2-core AMD
//! EPYC machine, a 1 GiB TLS download cost the server 0.87-1.06 CPU-seconds
//! with the default and 0.44-0.76 with the vector loop. glibc reads its
//! tunables only when a process starts, so the binary starts itself again,
//! once, with `glibc.cpu.x86_rep_movsb_threshold` raised past any copy it
//! makes (what glibc 2.39 chose for these processors).

use std::ffi::OsString;

const TUNABLES: &str = "GLIBC_TUNABLES";
const THRESHOLD: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Set in the restarted process: it never restarts again, even if glibc
/// dropped the tunable (as it does for set-user-ID programs).
const RESTARTED: &str = "FERRY_COPY_TUNED";

/// Restarts this process with the copy tunable when it would help (x86-64
/// Linux with glibc, an AMD processor, the tunable not already set by the
/// caller). Returns only if no restart was needed or it failed, in which
/// case the process goes on with glibc's default, as before.
pub fn restart_with_fast_copies() {
    if !cfg!(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")) {
        return;
    }
    let Some(tunables) = tunables_to_set(std::env::var_os(TUNABLES), std::env::var_os(RESTARTED).is_some()) else {
        return;
    };
    if !is_amd() {
        return;
    }
    exec_self(tunables);
}

/// The `GLIBC_TUNABLES` value to restart with (the caller's settings
/// kept), or `None` when there is nothing to do.
fn tunables_to_set(current: Option<OsString>, restarted: bool) -> Option<OsString> {
    if restarted {
        return None;
    }
    let ours = format!("{THRESHOLD}=0xffffffffff");
    match current {
        // The caller chose a value (or cannot be read as text): theirs stands.
        Some(c) => match c.to_str() {
            Some(s) if s.contains(THRESHOLD) => None,
            Some("") => Some(ours.into()),
            Some(s) => Some(format!("{s}:{ours}").into()),
            None => None,
        },
        None => Some(ours.into()),
    }
}

/// The processor's vendor string is "AuthenticAMD" (CPUID leaf 0: no file
/// to read and parse at every start).
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    [r.ebx, r.edx, r.ecx].map(u32::to_le_bytes).concat() == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn is_amd() -> bool {
    false
}

#[cfg(unix)]
fn exec_self(tunables: OsString) {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "ferry".into());
    // /proc/self/exe still runs this binary if its file was replaced since.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, tunables)
        .env(RESTARTED, "1")
        .exec();
    // Only reached if exec failed (no /proc, say): go on untuned.
    let _ = err;
}

#[cfg(not(unix))]
fn exec_self(_: OsString) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_threshold_when_absent() {
        assert_eq!(tunables_to_set(None, false), Some("glibc.cpu.x86_rep_movsb_threshold=0xffffffffff".into()));
        assert_eq!(
            tunables_to_set(Some("".into()), false),
            Some("glibc.cpu.x86_rep_movsb_threshold=0xffffffffff".into())
        );
    }

    #[test]
    fn keeps_the_callers_tunables() {
        assert_eq!(
            tunables_to_set(Some("glibc.malloc.arena_max=2".into()), false),
            Some("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=0xffffffffff".into())
        );
        assert_eq!(tunables_to_set(Some("glibc.cpu.x86_rep_movsb_threshold=4096".into()), false), None);
    }

    #[test]
    fn never_restarts_twice() {
        assert_eq!(tunables_to_set(None, true), None);
    }
}
