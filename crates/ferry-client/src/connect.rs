//! Connecting: TCP, TLS 1.3 with a pinned fingerprint, the version
//! handshake, then SCRAM-SHA-256 login. A server's Unix-domain socket is
//! always plaintext (docs/PROTOCOL.md, "Transport"): the socket file's
//! permissions decide who may connect, and SCRAM still proves both sides.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::msg::{MECHANISM, PROTOCOL_VERSION, parse_response};
use ferry_proto::scram::ScramClient;
use ferry_proto::{Connection, FrameCodec, HashAlgo, Header, Request};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use crate::known_hosts::{HostKeyPolicy, KnownHosts, Lookup};
use crate::{ClientError, Remote, Session};

pub type ClientStream = Either<PlainStream, tokio_rustls::client::TlsStream<TlsSocket>>;
/// A plaintext transport: TCP (with `--insecure-plaintext`) or a Unix socket.
pub type PlainStream = Either<TcpStream, UnixStream>;

/// The socket beneath TLS with a large read buffer: rustls reads 4 KiB at a
/// time, which would otherwise be one system call each.
type TlsSocket = tokio::io::BufReader<TcpStream>;
const TLS_READ_BUFFER: usize = 32 * 1024;

/// A callback that asks a person whether to trust an unknown fingerprint.
pub type AskFn = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

pub struct ConnectOptions {
    /// Speak plaintext (the server must run with `--insecure-plaintext`).
    pub insecure_plaintext: bool,
    pub policy: HostKeyPolicy,
    pub known_hosts: KnownHosts,
    /// Used with [`HostKeyPolicy::Ask`].
    pub ask: Option<AskFn>,
    pub connect_timeout: Duration,
    /// Local address to connect from (tests and load harnesses use 127.0.0.x).
    pub bind: Option<std::net::IpAddr>,
    /// The file hashes offered at hello, in order of preference (default:
    /// BLAKE3, then SHA-256). Empty: none is named, as a client before
    /// negotiation; the server then uses SHA-256.
    pub hashes: Vec<HashAlgo>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            insecure_plaintext: false,
            policy: HostKeyPolicy::Strict,
            known_hosts: KnownHosts::new(KnownHosts::default_path()),
            ask: None,
            connect_timeout: Duration::from_secs(15),
            bind: None,
            hashes: HashAlgo::ALL.to_vec(),
        }
    }
}

/// A connected, not yet authenticated client: it has no file operations.
pub struct Client {
    conn: Connection<ClientStream>,
    remote: Remote,
    /// The server's certificate fingerprint (TLS only).
    pub fingerprint: Option<String>,
    /// The file hash negotiated at hello.
    hash: HashAlgo,
}

impl Client {
    /// Connects, shakes hands (TLS, pin, hello) within `opts.connect_timeout`:
    /// a server that accepts and then never speaks is an error, not a hang.
    pub async fn connect(remote: &Remote, opts: &ConnectOptions) -> Result<Client, ClientError> {
        tokio::time::timeout(opts.connect_timeout, Self::connect_untimed(remote, opts)).await.map_err(|_| {
            ClientError::Connect { addr: remote.host_port(), source: std::io::ErrorKind::TimedOut.into() }
        })?
    }

    async fn connect_untimed(remote: &Remote, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let addr = remote.host_port();
        if let Some(path) = remote.unix_socket() {
            let unix = UnixStream::connect(path).await.map_err(|source| ClientError::Connect { addr, source })?;
            let stream = Either::Left(Either::Right(unix));
            let mut client = Client {
                conn: Connection::new(stream, FrameCodec::default()),
                remote: remote.clone(),
                fingerprint: None,
                hash: HashAlgo::Sha256,
            };
            client.hello(&opts.hashes).await?;
            return Ok(client);
        }
        let tcp = tcp_connect(remote, opts.bind)
            .await
            .map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let (stream, fingerprint) = if opts.insecure_plaintext {
            (Either::Left(Either::Left(tcp)), None)
        } else {
            let tls = tls_connect(tcp, remote).await?;
            let fp = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ferry_proto::fingerprint(c))
                .ok_or_else(|| ClientError::Tls("the server presented no certificate".into()))?;
            // Nothing but the TLS handshake has been sent yet: check the pin first.
            check_pin(&addr, &fp, opts)?;
            (Either::Right(tls), Some(fp))
        };
        let mut client = Client {
            conn: Connection::new(stream, FrameCodec::default()),
            remote: remote.clone(),
            fingerprint,
            hash: HashAlgo::Sha256,
        };
        client.hello(&opts.hashes).await?;
        Ok(client)
    }

    /// The version handshake, offering `hashes`; keeps the one the server picked.
    async fn hello(&mut self, hashes: &[HashAlgo]) -> Result<(), ClientError> {
        let offered = (!hashes.is_empty()).then(|| hashes.iter().map(|h| h.to_string()).collect());
        let req = Request::Hello {
            version: PROTOCOL_VERSION,
            client: concat!("ferry/", env!("CARGO_PKG_VERSION")).into(),
            hashes: offered,
        };
        let answer = round_trip(&mut self.conn, &req, 1).await?;
        self.hash = picked_hash(answer.get_str("hash"), hashes)?;
        Ok(())
    }

    /// The file hash negotiated at hello.
    pub fn hash_algo(&self) -> HashAlgo {
        self.hash
    }

    /// Logs in with SCRAM-SHA-256: the password never leaves this process.
    pub async fn login(mut self, password: &str) -> Result<Session, ClientError> {
        let nonce = random_nonce()?;
        let scram = ScramClient::new(&self.remote.user, password, &nonce)
            .map_err(|e| ClientError::Usage(format!("cannot log in as {:?}: {e}", self.remote.user)))?;
        let start = Request::AuthStart { mechanism: MECHANISM.into(), data: scram.client_first() };
        let server_first = round_trip(&mut self.conn, &start, 2).await?;
        let server_first = server_first.get_str("data").ok_or_else(|| ClientError::protocol("auth_start: no data"))?;
        let scram =
            scram.handle_server_first(server_first).map_err(|e| ClientError::protocol(format!("login: {e}")))?;
        let finish = Request::AuthFinish { data: scram.client_final().to_string() };
        let done = round_trip(&mut self.conn, &finish, 3).await?;
        let server_final = done.get_str("data").ok_or_else(|| ClientError::protocol("auth_finish: no data"))?;
        // The server proves it knows the verifier too: a fake server fails here.
        scram
            .verify_server_final(server_final)
            .map_err(|_| ClientError::protocol("the server failed to prove its identity (SCRAM server signature)"))?;
        Ok(Session::new(self.conn, self.remote, self.fingerprint, self.hash))
    }
}

/// The hash a hello answer names: absent (a server before negotiation)
/// means SHA-256; one this client did not offer is a server bug, refused
/// rather than used.
fn picked_hash(named: Option<&str>, offered: &[HashAlgo]) -> Result<HashAlgo, ClientError> {
    let Some(name) = named else { return Ok(HashAlgo::Sha256) };
    match HashAlgo::from_name(name) {
        Some(algo) if offered.contains(&algo) || algo == HashAlgo::Sha256 => Ok(algo),
        _ => Err(ClientError::protocol(format!(
            "hello: the server picked the file hash {:?}, which this client did not offer",
            crate::names::escape_controls(name)
        ))),
    }
}

async fn tcp_connect(remote: &Remote, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect((remote.host.as_str(), remote.port)).await;
    };
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
    for addr in tokio::net::lookup_host((remote.host.as_str(), remote.port)).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends one request and reads its single answer.
pub(crate) async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    req: &Request,
    id: u64,
) -> Result<Header, ClientError> {
    conn.send(&req.to_header(id, 0)).await?;
    let header = conn.read_header().await?.ok_or_else(|| ClientError::protocol("the server closed the connection"))?;
    let (got, result) = parse_response(&header);
    result?;
    if got != id {
        return Err(ClientError::protocol(format!("answer for request {got}, expected {id}")));
    }
    Ok(header)
}

fn random_nonce() -> Result<String, ClientError> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| ClientError::Local(format!("no randomness: {e}")))?;
    Ok(base64_nonce(&b))
}

fn base64_nonce(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn check_pin(host: &str, presented: &str, opts: &ConnectOptions) -> Result<(), ClientError> {
    if let HostKeyPolicy::Expect(expected) = &opts.policy {
        if expected != presented {
            return Err(ClientError::HostKeyMismatch { expected: expected.clone(), presented: presented.into() });
        }
        if opts.known_hosts.lookup(host, presented)? == Lookup::Unknown {
            opts.known_hosts.pin(host, presented)?;
        }
        return Ok(());
    }
    match opts.known_hosts.lookup(host, presented)? {
        Lookup::Match => Ok(()),
        Lookup::Changed { pinned } => Err(ClientError::HostKeyChanged {
            host: host.into(),
            pinned,
            presented: presented.into(),
            known_hosts: opts.known_hosts.path().display().to_string(),
        }),
        Lookup::Unknown => {
            let accept = match (&opts.policy, &opts.ask) {
                (HostKeyPolicy::AcceptNew, _) => true,
                (HostKeyPolicy::Ask, Some(ask)) => ask(host, presented),
                _ => false,
            };
            if !accept {
                return Err(ClientError::HostKeyUnknown { host: host.into(), presented: presented.into() });
            }
            opts.known_hosts.pin(host, presented)
        }
    }
}

async fn tls_connect(
    tcp: TcpStream,
    remote: &Remote,
) -> Result<tokio_rustls::client::TlsStream<TlsSocket>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinningVerifier { provider: Arc::clone(&provider) });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from(remote.host.clone())
        .unwrap_or_else(|_| ServerName::try_from("ferry").expect("static name is valid"));
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp))
        .await
        .map_err(|e| ClientError::Tls(format!("handshake with {} failed: {e}", remote.host_port())))
}

/// Trusts no certificate authority: the certificate is checked against the
/// pinned fingerprint right after the handshake (`check_pin`). The handshake
/// signature is still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinningVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
