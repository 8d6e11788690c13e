//! `ferry-load pipe`: the floor a verified transfer is measured against
//! (issue 17, item 3). One process copies a file through a loopback TCP
//! connection, optionally inside TLS 1.3 with AES-128-GCM (the cipher ferry
//! negotiates on this CPU) and optionally hashing on both ends, and writes it
//! to the output path. No protocol, no login, no storage policy: whatever a
//! ferry transfer costs beyond this pipe is ferry's own overhead.
//!
//! Blocking std sockets and `rustls::StreamOwned` on two threads, so both
//! cores can work, as a client and a server would.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// Read and write size: what ferry's transfer loop uses per block.
const BLOCK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PipeHash {
    None,
    Sha256,
    Blake3,
}

#[derive(Args, Debug)]
pub struct PipeArgs {
    /// The file to send.
    #[arg(long)]
    input: PathBuf,
    /// Where the receiver writes it (truncated first).
    #[arg(long)]
    output: PathBuf,
    /// Wrap the connection in TLS 1.3, AES-128-GCM (else plaintext TCP).
    #[arg(long)]
    tls: bool,
    /// Hash the bytes on both ends and compare the digests.
    #[arg(long, value_enum, default_value = "none")]
    hash: PipeHash,
}

/// The pipe's hash on one end: ferry's own streaming hasher, or none.
struct Hasher(Option<ferry_proto::hash::Hasher>);

impl Hasher {
    fn new(kind: PipeHash) -> Self {
        use ferry_proto::hash::{HashAlgo, Hasher as H};
        Self(match kind {
            PipeHash::None => None,
            PipeHash::Sha256 => Some(H::new(HashAlgo::Sha256)),
            PipeHash::Blake3 => Some(H::new(HashAlgo::Blake3)),
        })
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.0 {
            h.update(data);
        }
    }

    fn finish(self) -> String {
        self.0.map(|h| h.finalize_hex()).unwrap_or_default()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(p)
}

/// A throwaway self-signed certificate for `localhost`, trusted by the sender only.
fn tls_configs() -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    // The sender never reads: a ticket left unread in its socket would turn its close into a reset.
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

fn receive(mut conn: impl Read, output: &Path, mut hasher: Hasher) -> Result<(u64, String)> {
    let mut out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = fill(&mut conn, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hasher.finish()))
}

/// Reads until `buf` is full or the stream ends; returns how much it holds.
/// A TLS stream gives one 16 KiB record per read: hashing and writing each
/// on its own would make the pipe slower than ferry, which writes whole
/// blocks, and no longer the least work a verified transfer can do.
fn fill(conn: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match conn.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn send(conn: &mut impl Write, input: &Path, mut hasher: Hasher) -> Result<(u64, String)> {
    let mut file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        conn.write_all(&buf[..n])?;
        total += n as u64;
    }
    conn.flush()?;
    Ok((total, hasher.finish()))
}

pub fn run(args: &PipeArgs) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let configs = if args.tls { Some(tls_configs()?) } else { None };
    let server_config = configs.as_ref().map(|(s, _)| s.clone());
    let (output, kind) = (args.output.clone(), args.hash);
    let started = Instant::now();
    let receiver = std::thread::spawn(move || -> Result<(u64, String)> {
        let (sock, _) = listener.accept()?;
        match server_config {
            Some(cfg) => {
                let tls = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg)?, sock);
                receive(tls, &output, Hasher::new(kind))
            }
            None => receive(sock, &output, Hasher::new(kind)),
        }
    });
    let sock = TcpStream::connect(addr)?;
    let sent = (|| -> Result<(u64, String)> {
        match &configs {
            Some((_, client)) => {
                let conn = rustls::ClientConnection::new(client.clone(), ServerName::try_from("localhost")?)?;
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let sent = send(&mut tls, &args.input, Hasher::new(kind))?;
                tls.conn.send_close_notify();
                tls.flush()?;
                tls.sock.shutdown(Shutdown::Write)?;
                Ok(sent)
            }
            None => {
                let mut sock = sock;
                let sent = send(&mut sock, &args.input, Hasher::new(kind))?;
                sock.shutdown(Shutdown::Write)?;
                Ok(sent)
            }
        }
    })()
    .context("sender");
    let received = receiver.join().map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?.context("receiver")?;
    let sent: (u64, String) = sent?;
    let secs = started.elapsed().as_secs_f64();
    if sent != received {
        bail!("sent {} bytes ({}), received {} ({})", sent.0, sent.1, received.0, received.1);
    }
    println!(
        "pipe {} hash={:?}: {} bytes in {:.3} s = {:.1} MB/s{}",
        if args.tls { "tls13-aes128gcm" } else { "plaintext" },
        kind,
        sent.0,
        secs,
        sent.0 as f64 / secs / 1e6,
        if sent.1.is_empty() { String::new() } else { format!(", digest {} on both ends", sent.1) }
    );
    Ok(())
}
