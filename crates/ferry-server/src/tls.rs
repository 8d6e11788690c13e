//! The server's TLS identity: a key and self-signed certificate generated in
//! the data folder on first start, then reused. Clients pin its fingerprint
//! (trust on first use, like ssh's known_hosts), so no CA is involved.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

pub struct TlsIdentity {
    pub config: Arc<ServerConfig>,
    pub fingerprint: String,
    /// True when the key and certificate were made by this start.
    pub generated: bool,
}

/// Loads the identity from `data_dir`, generating it when absent.
pub fn load_or_generate(data_dir: &Path) -> Result<TlsIdentity> {
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    let mut generated = false;
    if !cert_path.exists() || !key_path.exists() {
        generate(&cert_path, &key_path)?;
        generated = true;
    }
    let cert = CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading key {}", key_path.display()))?;
    let fingerprint = ferry_proto::fingerprint(&cert);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("certificate and key do not match")?;
    Ok(TlsIdentity { config: Arc::new(config), fingerprint, generated })
}

fn generate(cert_path: &Path, key_path: &Path) -> Result<()> {
    let names = vec!["localhost".to_string(), "ferry".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, certified.cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// Writes a file only its owner can read, replacing any old one (the
/// certificate's key, the server secret, the SSH host key).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}
