//! Small shared pieces: a seeded generator, latency statistics, content
//! derived from a seed, the client options every scenario uses, and a raw
//! TLS connector for hostile peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_client::{Client, ClientError, ConnectOptions, HostKeyPolicy, KnownHosts, Remote, Session};
use sha2::{Digest, Sha256};
use tokio::net::{TcpSocket, TcpStream};

/// splitmix64: tiny, seedable, good enough to pick operations and fill files.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// The bytes of an upload, re-derivable from `(seed, size)`.
pub fn content(seed: u64, size: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(size as usize + 8);
    while (out.len() as u64) < size {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Latency samples with percentiles.
#[derive(Default, Clone)]
pub struct Lat(pub Vec<Duration>);

impl Lat {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Lat) {
        self.0.extend(other.0);
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// `n=.. p50=..ms p99=..ms max=..ms`
    pub fn summary(&self) -> String {
        format!("n={} p50={} p99={} max={}", self.0.len(), ms(self.pct(0.50)), ms(self.pct(0.99)), ms(self.pct(1.0)))
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 127.0.0.(1 + i % n): spreads connections over loopback source addresses.
pub fn loopback(i: usize, first: u8, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + (i % n.max(1)) as u8))
}

/// Where and how to reach the server under test.
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    pub fingerprint: String,
    pub known_hosts: PathBuf,
}

impl Target {
    pub fn options(&self, bind: Option<IpAddr>) -> ConnectOptions {
        ConnectOptions {
            policy: HostKeyPolicy::Expect(self.fingerprint.clone()),
            known_hosts: KnownHosts::new(self.known_hosts.clone()),
            bind,
            connect_timeout: Duration::from_secs(20),
            ..Default::default()
        }
    }

    pub fn remote(&self, user: &str, port: Option<u16>) -> Remote {
        Remote { user: user.into(), host: "127.0.0.1".into(), port: port.unwrap_or(self.port), path: None }
    }

    pub async fn login(&self, user: &str, password: &str, bind: Option<IpAddr>) -> Result<Session, ClientError> {
        self.login_via(user, password, bind, None).await
    }

    /// Logs in through another port (a cutting proxy).
    pub async fn login_via(
        &self,
        user: &str,
        password: &str,
        bind: Option<IpAddr>,
        port: Option<u16>,
    ) -> Result<Session, ClientError> {
        Client::connect(&self.remote(user, port), &self.options(bind)).await?.login(password).await
    }
}

/// A TCP connection from a chosen loopback source address.
pub async fn tcp_from(bind: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(bind, 0))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// A TLS connector that trusts any certificate: hostile peers only, never
/// for data the harness checks.
pub fn insecure_tls_connector() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Raises this process's open-file limit as far as allowed; returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    // Root may raise the hard limit too; everyone else stops at it.
    let target = Rlimit { current: Some(want.max(cur.current.unwrap_or(0))), maximum: Some(want.max(hard)) };
    if setrlimit(Resource::Nofile, target).is_err() {
        let soft = Rlimit { current: Some(hard.min(want.max(cur.current.unwrap_or(0)))), maximum: cur.maximum };
        setrlimit(Resource::Nofile, soft).context("cannot raise RLIMIT_NOFILE")?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Every regular file under `dir`: relative path, size and inode number.
pub fn walk_files(dir: &Path) -> Vec<(PathBuf, u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap_or(&e.path()).to_path_buf();
                out.push((rel, m.len(), std::os::unix::fs::MetadataExt::ino(&m)));
            }
        }
    }
    out
}
