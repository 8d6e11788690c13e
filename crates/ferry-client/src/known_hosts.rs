//! Pinned server fingerprints, like ssh's `known_hosts`: one line per server,
//! `HOST:PORT SHA256:...`. Trust on first use; a changed key is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ClientError;

/// How to treat a server whose fingerprint is not pinned yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse unknown servers (no terminal to ask).
    Strict,
    /// Pin an unknown server's fingerprint (ssh's `StrictHostKeyChecking=accept-new`).
    AcceptNew,
    /// Accept exactly this fingerprint (`--fingerprint SHA256:...`) and pin it.
    Expect(String),
    /// Ask on the terminal through the callback.
    Ask,
}

pub struct KnownHosts {
    path: PathBuf,
}

/// What the known-hosts file says about a server.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Match,
    Unknown,
    Changed { pinned: String },
}

impl KnownHosts {
    /// `$FERRY_KNOWN_HOSTS`, else `~/.config/ferry/known_hosts`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("FERRY_KNOWN_HOSTS") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("ferry").join("known_hosts")
    }

    pub fn new(path: impl Into<PathBuf>) -> Self {
        KnownHosts { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lookup(&self, host_port: &str, fingerprint: &str) -> Result<Lookup, ClientError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Unknown),
            Err(e) => return Err(ClientError::Local(format!("cannot read {}: {e}", self.path.display()))),
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(h), Some(fp)) = (parts.next(), parts.next())
                && h == host_port
            {
                return Ok(if fp == fingerprint { Lookup::Match } else { Lookup::Changed { pinned: fp.to_string() } });
            }
        }
        Ok(Lookup::Unknown)
    }

    pub fn pin(&self, host_port: &str, fingerprint: &str) -> Result<(), ClientError> {
        let err = |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(err)?;
        writeln!(f, "{host_port} {fingerprint}").map_err(err)
    }
}
