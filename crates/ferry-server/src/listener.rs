//! The framed protocol's listener: bind with `SO_REUSEADDR`, admit a
//! connection only with a permit, refuse the rest cleanly, run the TLS
//! handshake under the login timeout, and drain sessions on shutdown within a
//! grace period. Admission and the TLS acceptor are this front end's own
//! state ([`Framed`]); everything shared with other front ends is in `Core`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_proto::msg::error_header;
use ferry_proto::{Connection, ErrorCode, FrameCodec, WireError};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::Core;
use crate::stream::Stream;

/// The framed-protocol front end's state: the core, and its own admission
/// counters and TLS acceptor.
pub struct Framed {
    pub core: Arc<Core>,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    unauth: Arc<UnauthCounts>,
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
        connections: Arc::new(Semaphore::new(core.config.limits.max_connections)),
        refusals: Arc::new(Semaphore::new(64)),
        unauth: Arc::new(UnauthCounts::default()),
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
    Ok(Running { tcp_addrs, fingerprint, ssh: None, ftp_addr: None, shutdown, done })
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server binds at once even with connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_tcp(shared: Arc<Framed>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.core.shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match shared.admit(peer.ip()) {
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
        let Ok(admission) = shared.admit_local() else { continue };
        let shared2 = Arc::clone(&shared);
        shared.core.tracker.spawn(async move {
            crate::session::run(shared2, Stream::Unix(socket), "unix".into(), None, admission).await
        });
    }
}

/// Tells a refused peer why, then closes. Bounded: when even the refusal
/// budget is spent, the socket is simply dropped.
fn refuse(shared: &Arc<Framed>, socket: TcpStream, peer: SocketAddr, err: WireError) {
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

/// A connection's seat: the global permit and, until login, its place in the
/// per-address count of unauthenticated connections.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    unauth: Option<(Arc<UnauthCounts>, IpAddr)>,
}

impl Admission {
    /// The connection logged in: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        if let Some((counts, ip)) = self.unauth.take() {
            counts.leave(ip);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
    }
}

/// The key a peer is counted under for the unauthenticated-connection cap,
/// as the login throttle keys it (auth/throttle.rs): IPv4 as is (IPv4-mapped
/// IPv6 included, so a dual-stack listener does not lump every IPv4 peer
/// together), IPv6 cut to its /64, the usual size of one site's network, so
/// one host cannot multiply the cap by walking its own prefix (issue 12, item 7).
fn unauth_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

/// Unauthenticated connections per [`unauth_key`].
#[derive(Default)]
pub struct UnauthCounts(Mutex<HashMap<IpAddr, usize>>);

impl UnauthCounts {
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

impl Framed {
    fn admit(&self, ip: IpAddr) -> Result<Admission, WireError> {
        let permit = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| WireError::new(ErrorCode::TooManyConnections, "server is at its connection limit"))?;
        let key = unauth_key(ip);
        if !self.unauth.enter(key, self.core.config.limits.max_unauthenticated_per_ip) {
            return Err(WireError::new(
                ErrorCode::TooManyConnections,
                "too many connections from your address that have not logged in",
            ));
        }
        Ok(Admission { _permit: permit, unauth: Some((Arc::clone(&self.unauth), key)) })
    }

    fn admit_local(&self) -> Result<Admission, WireError> {
        let permit = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| WireError::new(ErrorCode::TooManyConnections, "server is at its connection limit"))?;
        Ok(Admission { _permit: permit, unauth: None })
    }

    pub fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauth_key_groups_ipv6_by_64_and_keeps_ipv4_apart() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(unauth_key(a), unauth_key(b));
        assert_eq!(unauth_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(unauth_key(a), unauth_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v4_other: IpAddr = "192.0.2.8".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let mapped_other: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        assert_eq!(unauth_key(v4), v4);
        assert_eq!(unauth_key(mapped), v4, "IPv4-mapped counts as IPv4");
        assert_ne!(unauth_key(mapped), unauth_key(mapped_other), "not one /64 for all of IPv4");
        assert_ne!(unauth_key(v4), unauth_key(v4_other));
        let loopback: IpAddr = "::1".parse().unwrap();
        assert_eq!(unauth_key(loopback), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn one_64_shares_one_count() {
        let counts = UnauthCounts::default();
        let first = unauth_key("2001:db8::1".parse().unwrap());
        let second = unauth_key("2001:db8::2:3:4".parse().unwrap());
        assert!(counts.enter(first, 2));
        assert!(counts.enter(second, 2));
        assert!(!counts.enter(first, 2), "the third from the same /64 is over the cap");
        counts.leave(second);
        assert!(counts.enter(first, 2), "a seat freed in the /64 is usable by any of it");
    }

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
        let (running, _) = crate::start(config).await.unwrap();
        let addr = running.tcp_addrs[0];
        let within = Duration::from_secs(10);
        let mut admitted = Vec::new();
        for id in 1..=2 {
            let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::default());
            conn.send(&Request::Hello { version: 1, client: "test".into() }.to_header(id, 0)).await.unwrap();
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
            conn.send(&Request::Hello { version: 1, client: "test".into() }.to_header(3, 0)).await.unwrap();
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
