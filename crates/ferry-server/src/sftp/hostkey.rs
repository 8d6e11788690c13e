//! The server's SSH host key: ed25519, made in the data folder on first
//! start (OpenSSH's private-key format, mode 0600), and its fingerprint as
//! `ssh-keygen -l` prints it.

use std::path::Path;

use anyhow::{Context, Result};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

/// The host key and whether it was just made.
pub struct HostKey {
    pub key: PrivateKey,
    pub generated: bool,
}

impl HostKey {
    /// `SHA256:<base64 without padding>`, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint(HashAlg::Sha256).to_string()
    }
}

/// Loads the key at `path`, or makes one there. A key that exists but does
/// not parse is an error, never silently replaced: clients pinned it.
pub fn load_or_generate(path: &Path) -> Result<HostKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display()))?;
        return Ok(HostKey { key, generated: false });
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for the host key: {e}"))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("ferry host key");
    let text = key.to_openssh(LineEnding::LF).map_err(|e| anyhow::anyhow!("encoding the host key: {e}"))?;
    crate::tls::write_private(path, text.as_bytes())?;
    Ok(HostKey { key, generated: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_host_ed25519_key");
        let a = load_or_generate(&path).unwrap();
        assert!(a.generated);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = load_or_generate(&path).unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(a.fingerprint().starts_with("SHA256:") && !a.fingerprint().ends_with('='));
    }
}
