//! The framed protocol's listener: bind with `SO_REUSEADDR`, admit a
//! connection only with a permit, refuse the rest cleanly, run the TLS
//! handshake under the login timeout, and drain sessions on shutdown within a
//! grace period. The TLS acceptor is this front end's own state
//! ([`Framed`]); admission (`admission.rs`) and everything else shared with
//! other front ends is in `Core`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::msg::error_header;
use ferry_proto::{Connection, ErrorCode, FrameCodec, WireError};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::core::Core;
use crate::stream::Stream;

/// The framed-protocol front end's state: the core, its TLS acceptor and
/// the budget of refusals being told.
pub struct Framed {
    pub core: Arc<Core>,
    tls: Option<TlsAcceptor>,
    refusals: Arc<Semaphore>,
    session_ids: AtomicU64,
}

/// A running server: its bound addresses and the handle to stop it.
pub struct Running {
    pub tcp_addrs: Vec<SocketAddr>,
    pub fingerprint: Option<String>,
    /// The SSH front end, when enabled.
    pub ssh: Option<crate::sftp::SshRunning>,
    /// The FTP front end's control address, when it runs.
    pub ftp_addr: Option<SocketAddr>,
    /// The metrics and health endpoint's address, when it runs.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a graceful shutdown: stop accepting, let sessions finish.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every listener and session has ended.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds every configured address and starts serving in the background.
pub async fn start(core: Arc<Core>) -> Result<Running> {
    let shared = Arc::new(Framed {
        tls: core.tls.as_ref().map(|(config, _)| TlsAcceptor::from(Arc::clone(config))),
        refusals: Arc::new(Semaphore::new(64)),
        session_ids: AtomicU64::new(0),
        core,
    });
    let config = &shared.core.config;
    let mut tcp = Vec::new();
    for addr in &config.listen {
        tcp.push(bind_tcp(*addr).with_context(|| format!("cannot listen on {addr}"))?);
    }
    let unix = match &config.unix_socket {
        Some(path) => {
            // A stale socket file from a crashed run would make bind fail.
            let _ = std::fs::remove_file(path);
            Some(UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?)
        }
        None => None,
    };
    let tcp_addrs = tcp.iter().filter_map(|l| l.local_addr().ok()).collect();
    let shutdown = shared.core.shutdown.clone();
    let tracker = shared.core.tracker.clone();

    let mut accept_loops = Vec::new();
    for listener in tcp {
        accept_loops.push(tokio::spawn(accept_tcp(Arc::clone(&shared), listener)));
    }
    if let Some(listener) = unix {
        accept_loops.push(tokio::spawn(accept_unix(Arc::clone(&shared), listener)));
    }
    let udp = crate::services::start_udp(&shared.core).await?;

    let grace = Duration::from_secs(shared.core.config.limits.shutdown_grace_secs);
    let token = shutdown.clone();
    let core = Arc::clone(&shared.core);
    let done = tokio::spawn(async move {
        token.cancelled().await;
        for l in accept_loops {
            let _ = l.await;
        }
        tracker.close();
        info!(sessions = tracker.len(), grace_secs = grace.as_secs(), "shutting down: draining sessions");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(sessions = tracker.len(), "grace period over: cutting remaining sessions");
        }
        // Unfinished uploads of the sessions that ended are stored for a resume.
        core.drain_storage(grace).await;
        for u in udp {
            let _ = u.await;
        }
        info!("server stopped");
    });
    let fingerprint = shared.core.tls.as_ref().map(|t| t.1.clone());
    Ok(Running { tcp_addrs, fingerprint, ssh: None, ftp_addr: None, metrics_addr: None, shutdown, done })
}

pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server binds at once even with connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The next connection on `listener`, or `None` at shutdown: what every
/// front end's accept loop waits for. A failed accept (EMFILE and friends)
/// is logged and retried after a pause instead of spinning.
pub(crate) async fn next_connection(
    core: &Core,
    listener: &TcpListener,
    front: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = core.shutdown.cancelled() => return None,
        };
        match accepted {
            Ok(x) => return Some(x),
            Err(e) => {
                warn!(error = %e, front, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_tcp(shared: Arc<Framed>, listener: TcpListener) {
    while let Some((socket, peer)) = next_connection(&shared.core, &listener, "framed").await {
        let _ = socket.set_nodelay(true);
        match shared.core.admission.admit(peer.ip()) {
            Ok(admission) => {
                let shared2 = Arc::clone(&shared);
                shared.core.tracker.spawn(async move { serve_tcp(shared2, socket, peer, admission).await });
            }
            Err(err) => refuse(&shared, socket, peer, err),
        }
    }
}

async fn serve_tcp(shared: Arc<Framed>, socket: TcpStream, peer: SocketAddr, admission: Admission) {
    let stream = match &shared.tls {
        None => Stream::Tcp(socket),
        Some(acceptor) => {
            match tokio::time::timeout(
                shared.core.config.login_timeout(),
                acceptor.accept(crate::stream::tls_socket(socket)),
            )
            .await
            {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    crate::session::run(shared, stream, peer.to_string(), Some(peer.ip()), admission).await;
}

async fn accept_unix(shared: Arc<Framed>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.core.shutdown.cancelled() => return,
        };
        let socket = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept failed on unix socket");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(admission) = shared.core.admission.admit_local() else { continue };
        let shared2 = Arc::clone(&shared);
        shared.core.tracker.spawn(async move {
            crate::session::run(shared2, Stream::Unix(socket), "unix".into(), None, admission).await
        });
    }
}

/// Tells a refused peer why, then closes. Bounded: when even the refusal
/// budget is spent, the socket is simply dropped.
fn refuse(shared: &Arc<Framed>, socket: TcpStream, peer: SocketAddr, refusal: Refusal) {
    let err = WireError::new(ErrorCode::TooManyConnections, refusal.message());
    let Ok(permit) = Arc::clone(&shared.refusals).try_acquire_owned() else {
        return;
    };
    debug!(%peer, code = %err.code, "connection refused");
    let tls = shared.tls.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(Duration::from_secs(2), async move {
            match tls {
                None => send_refusal(Stream::Tcp(socket), &err).await,
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(crate::stream::tls_socket(socket)).await {
                        send_refusal(Stream::Tls(Box::new(s)), &err).await;
                    }
                }
            }
        })
        .await;
    });
}

async fn send_refusal(stream: Stream, err: &WireError) {
    let mut conn = Connection::new(stream, FrameCodec::default());
    let _ = conn.send(&error_header(0, err)).await;
    let _ = conn.shutdown().await;
}

impl Framed {
    pub fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over real sockets on ::1 (the only IPv6 address loopback has, so the
    /// /64 grouping itself is covered by the tests above): the cap holds for
    /// IPv6 peers, and the refused one is told why.
    #[tokio::test]
    async fn unauthenticated_cap_applies_to_ipv6_peers_over_real_sockets() {
        use ferry_proto::Request;
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::ServerConfig {
            data_dir: dir.path().join("data"),
            listen: vec!["[::1]:0".parse().unwrap()],
            insecure_plaintext: true,
            ..crate::ServerConfig::default()
        };
        config.limits.max_unauthenticated_per_ip = 2;
        config.auth.scram_iterations = 4096;
        // Not the default 7722: a server already running there must not fail this test.
        config.sftp.listen = "[::1]:0".parse().unwrap();
        let (running, _) = crate::start(config).await.unwrap();
        let addr = running.tcp_addrs[0];
        let within = Duration::from_secs(10);
        let mut admitted = Vec::new();
        for id in 1..=2 {
            let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::default());
            conn.send(&Request::Hello { version: 1, client: "test".into(), hashes: None }.to_header(id, 0))
                .await
                .unwrap();
            let hello = tokio::time::timeout(within, conn.read_header()).await.unwrap().unwrap().unwrap();
            assert_eq!(hello.fields["ok"], true, "{hello:?}");
            admitted.push(conn);
        }
        let mut third = Connection::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::default());
        let refusal = tokio::time::timeout(within, third.read_header()).await.unwrap().unwrap().unwrap();
        let (_, answer) = ferry_proto::msg::parse_response(&refusal);
        assert_eq!(answer.unwrap_err().code, ErrorCode::TooManyConnections);
        // A seat freed is usable again.
        drop(admitted.pop());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::default());
            conn.send(&Request::Hello { version: 1, client: "test".into(), hashes: None }.to_header(3, 0))
                .await
                .unwrap();
            let answer = tokio::time::timeout(within, conn.read_header()).await.unwrap().unwrap().unwrap();
            if answer.fields["ok"] == true {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the freed seat never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.shutdown();
    }
}
