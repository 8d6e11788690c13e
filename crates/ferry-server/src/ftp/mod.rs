//! The FTP and FTPS front end (issue 15), on libunftp: its control and data
//! channels, our storage (`storage.rs`: every command a `Home` call) and our
//! login (`auth.rs`: the core's `verify_password`, throttle shared).
//!
//! Safe by default:
//! - explicit FTPS (`AUTH TLS`) with the server's own certificate, required
//!   on the control and the data channel; plaintext only with
//!   `ftp.allow_plaintext = true`, logged as a warning at start;
//! - passive mode only (PORT/EPRT refused: no FTP bounce);
//! - admission as on every front end (`admission.rs`): a seat from the
//!   core's gate for each control connection, refused with `421` and the
//!   reason, and a login deadline (`limits.login_timeout_secs`) after which
//!   a connection that has not logged in is closed;
//! - libunftp's `SITE MD5` off (it reads whole files on demand); `SITE
//!   SHA256 PATH` answers from the home instead.
//!
//! Connections are accepted here, not by libunftp's listener: each admitted
//! one is handed to `Server::service`, libunftp's entry for sockets accepted
//! by the embedder, with a server of its own (so that its login can be seen,
//! through `auth::FtpUsers`). A second descriptor of the socket lets us cut
//! the connection at the deadline or at shutdown; libunftp has no call for it.
//!
//! Passive ports: `service` serves PASV/EPSV in libunftp's per-session
//! mode: each binds one port of `ftp.passive_ports` (our [`PassivePorts`]
//! walks the whole range from a random port) and takes the first connection
//! to it within 15 s; one from any address but the control connection's is
//! closed and gets nothing. Such a stranger also spends that PASV (the
//! client's transfer fails and a retry gets a new port), as with vsftpd.
//! libunftp's pooled listener, which ignores strangers, owns its accept
//! loop and could not be given admission.
//!
//! libunftp logs through `slog-stdlog` into the `log` crate, which
//! tracing-subscriber's default `tracing-log` bridge turns into tracing
//! events (target `libunftp`).

mod auth;
mod storage;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use libunftp::options::{
    ActivePassiveMode, Binder, FtpsRequired, PassiveHost, Reply, ReplyCode, SiteCommandContext, SiteCommandHandler,
    SiteMd5,
};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::config::ConfigError;
use crate::core::Core;
use crate::home::HashAlgo;
pub use storage::{FtpUser, HomeStorage};

/// `[ftp]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtpConfig {
    /// Serve FTP/FTPS (also turned on by `ferry serve --ftp-listen`).
    pub enabled: bool,
    /// The control connection's address (IPv4: libunftp's passive mode
    /// speaks PASV, IPv4 only). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Passive data ports, `FIRST-LAST`; one is bound for each PASV/EPSV
    /// until its data connection arrives (or 15 s).
    pub passive_ports: String,
    /// The address announced in PASV replies (IPv4 or a DNS name), for a
    /// server behind NAT; default: the address the client connected to.
    pub passive_host: Option<String>,
    /// Accept FTP without TLS: passwords and files travel in the clear.
    pub allow_plaintext: bool,
}

impl Default for FtpConfig {
    fn default() -> Self {
        FtpConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7721)),
            passive_ports: "50000-50100".into(),
            passive_host: None,
            allow_plaintext: false,
        }
    }
}

impl FtpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.passive_range()?;
        if !self.listen.is_ipv4() {
            return Err(ConfigError::Invalid { key: "ftp.listen", problem: "must be an IPv4 address".into() });
        }
        if self.passive_host.as_deref().is_some_and(|h| h.is_empty() || h.parse::<std::net::Ipv6Addr>().is_ok()) {
            return Err(ConfigError::Invalid {
                key: "ftp.passive_host",
                problem: "must be an IPv4 address or a DNS name".into(),
            });
        }
        Ok(())
    }

    /// `passive_ports` parsed: `FIRST-LAST`, 1024 and above.
    pub fn passive_range(&self) -> Result<RangeInclusive<u16>, ConfigError> {
        let bad = |problem: &str| ConfigError::Invalid { key: "ftp.passive_ports", problem: problem.into() };
        let text = self.passive_ports.trim();
        let (a, b) = text.split_once('-').ok_or_else(|| bad("expected FIRST-LAST, e.g. 50000-50100"))?;
        let first: u16 = a.trim().parse().map_err(|_| bad("expected FIRST-LAST, e.g. 50000-50100"))?;
        let last: u16 = b.trim().parse().map_err(|_| bad("expected FIRST-LAST, e.g. 50000-50100"))?;
        // Two ports at least, so that a client's second PASV never waits
        // for its first; a bounded walk (`PassivePorts`) per PASV.
        if first < 1024 || last <= first {
            return Err(bad("must be FIRST-LAST with 1024 <= FIRST < LAST"));
        }
        if last - first >= 4096 {
            return Err(bad("at most 4096 ports"));
        }
        Ok(first..=last)
    }
}

/// The front end's state, shared by its connections.
struct Ftp {
    core: Arc<Core>,
    tls: Option<Arc<rustls::ServerConfig>>,
    passive: RangeInclusive<u16>,
    passive_host: Option<String>,
    authenticator: Arc<auth::FtpAuthenticator>,
}

/// Starts the FTP front end when enabled; returns the control address.
/// Its tasks run on the core's tracker and stop with the core's token.
pub async fn start(core: Arc<Core>) -> Result<Option<SocketAddr>> {
    let config = core.config.ftp.clone();
    if !config.enabled {
        return Ok(None);
    }
    let passive = config.passive_range()?;
    let tls = match (&core.tls, config.allow_plaintext) {
        (Some((tls, _)), false) => {
            // The server's certificate, but no TLS 1.3 session tickets: a
            // client that sends an upload and closes without reading the
            // tickets the server wrote after the handshake (curl does, under
            // load) makes its kernel answer with a reset, which cuts the
            // upload's last bytes on the server (seen with 4 parallel
            // uploads: 3 failed with 426). FTPS gains little from tickets.
            let mut tls = rustls::ServerConfig::clone(tls);
            tls.send_tls13_tickets = 0;
            Some(Arc::new(tls))
        }
        (None, false) => bail!(
            "FTP needs the server's TLS certificate for FTPS; with --insecure-plaintext set ftp.allow_plaintext = true"
        ),
        (_, true) => {
            warn!("ftp.allow_plaintext: FTP without TLS is accepted; passwords, names and data travel unencrypted");
            None
        }
    };
    let listener = crate::listener::bind_tcp(config.listen)
        .with_context(|| format!("cannot listen for FTP on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let authenticator = Arc::new(auth::FtpAuthenticator { core: Arc::clone(&core), require_tls: tls.is_some() });
    let front =
        Arc::new(Ftp { core: Arc::clone(&core), tls, passive, passive_host: config.passive_host, authenticator });
    core.tracker.spawn(accept_loop(front, listener));
    info!(%addr, "ftp: listening");
    Ok(Some(addr))
}

async fn accept_loop(front: Arc<Ftp>, listener: TcpListener) {
    let core = &front.core;
    while let Some((socket, peer)) = crate::listener::next_connection(core, &listener, "ftp").await {
        match core.admission.admit(peer.ip()) {
            Ok(admission) => {
                core.tracker.spawn(serve(Arc::clone(&front), socket, peer, admission));
            }
            Err(refusal) => refuse(&socket, peer, refusal),
        }
    }
}

/// `421` and the reason, then the close (RFC 959: "service not available,
/// closing control connection"). One non-blocking write into a fresh
/// socket's empty buffer: no task, no wait, whatever the peer does.
fn refuse(socket: &TcpStream, peer: SocketAddr, refusal: Refusal) {
    debug!(%peer, reason = refusal.message(), "ftp: connection refused");
    let _ = socket.try_write(format!("421 {}\r\n", refusal.message()).as_bytes());
}

/// How long a control loop may take to end once its connection is cut.
const END_WITHIN: Duration = Duration::from_secs(5);

/// One control connection: libunftp serves it; we hold its seat, watch for
/// its login, and cut it at the login deadline or at shutdown.
async fn serve(front: Arc<Ftp>, socket: TcpStream, peer: SocketAddr, mut admission: Admission) {
    let _open = front.core.metrics.session(crate::metrics::Frontend::Ftp);
    // Replies are small writes that follow one another (`150`, then `226`
    // after the data): with Nagle on, the second waits for the client's
    // delayed ACK of the first, 40 ms per file transferred.
    if let Err(e) = socket.set_nodelay(true) {
        debug!(%peer, error = %e, "ftp: cannot set TCP_NODELAY");
    }
    let (socket, cut) = match second_descriptor(socket) {
        Ok(x) => x,
        Err(e) => {
            warn!(%peer, error = %e, "ftp: cannot serve the connection");
            return;
        }
    };
    let (logged_in, mut login) = oneshot::channel();
    let server = match front.server(logged_in) {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, error = %e, "ftp: cannot serve the connection");
            return;
        }
    };
    let session = server.service(socket);
    tokio::pin!(session);
    let deadline = tokio::time::sleep(front.core.config.login_timeout());
    tokio::pin!(deadline);
    let (mut waiting, mut authenticated) = (true, false);
    loop {
        tokio::select! {
            _ = &mut session => return,
            r = &mut login, if waiting => {
                waiting = false;
                if r.is_ok() {
                    authenticated = true;
                    admission.authenticated();
                }
            }
            _ = &mut deadline, if !authenticated => {
                info!(%peer, "ftp: login timed out; closing");
                break;
            }
            _ = front.core.shutdown.cancelled() => break,
        }
    }
    // libunftp's control loop sees its connection end and stops.
    let _ = cut.shutdown(std::net::Shutdown::Both);
    if tokio::time::timeout(END_WITHIN, session).await.is_err() {
        debug!(%peer, "ftp: the control loop did not end after its connection was cut");
    }
}

/// The socket for libunftp, and a second descriptor of it to shut it down
/// from here.
fn second_descriptor(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = socket.into_std()?;
    let cut = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, cut))
}

impl Ftp {
    /// A libunftp server for one connection; `logged_in` fires at its login.
    fn server(&self, logged_in: oneshot::Sender<()>) -> Result<libunftp::Server<HomeStorage, FtpUser>> {
        let users = Arc::new(auth::FtpUsers::new(Arc::clone(&self.core), logged_in));
        let mut builder = libunftp::ServerBuilder::with_user_detail_provider(Box::new(|| HomeStorage), users)
            .authenticator(Arc::clone(&self.authenticator) as _)
            .greeting("ferry FTP server ready")
            .passive_ports(self.passive.clone())
            .binder(PassivePorts)
            .active_passive_mode(ActivePassiveMode::PassiveOnly)
            .idle_session_timeout(self.core.config.limits.idle_timeout_secs)
            .sitemd5(SiteMd5::None)
            .site_command("SHA256", Sha256Site);
        if let Some(host) = &self.passive_host {
            builder = builder.passive_host(PassiveHost::from(host.as_str()));
        }
        // Data channels: libunftp 0.24 ran a data connection's TLS handshake
        // with no timeout and `unwrap`ped its result (upstream
        // bolcom/libunftp#375). Our patched copy (vendor/libunftp,
        // FERRY-PATCHES.md) bounds it to 30 s and answers a failure with
        // 426; the session goes on (test
        // `issue15_failed_data_tls_handshakes_harm_no_other_session`).
        if let Some(tls) = &self.tls {
            builder = builder
                .ftps_manual::<std::path::PathBuf>(Arc::clone(tls))
                .ftps_required(FtpsRequired::All, FtpsRequired::All);
        }
        builder.build().context("configuring the FTP server")
    }
}

/// Binds a passive port for one PASV/EPSV: every port of the range in turn
/// from a random one, so a busy range fails only when it is full. Bound
/// and listening here: with `SO_REUSEADDR` (needed to reuse a port whose
/// last transfer is in TIME_WAIT) two sockets may bind one port until one
/// listens, and a port taken between a bind and a listen would fail the
/// PASV. libunftp's own `listen` on it again only sets the backlog.
#[derive(Debug)]
struct PassivePorts;

#[async_trait]
impl Binder for PassivePorts {
    async fn bind(&mut self, ip: IpAddr, ports: RangeInclusive<u16>) -> std::io::Result<TcpSocket> {
        let (first, last) = (*ports.start(), *ports.end());
        let span = u32::from(last.saturating_sub(first)) + 1;
        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        let from = u32::from_ne_bytes(seed) % span;
        for i in 0..span {
            let port = first + ((from + i) % span) as u16;
            let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            if socket.bind(SocketAddr::new(ip, port)).is_err() {
                continue;
            }
            let Ok(listening) = socket.listen(16) else { continue };
            // Back to a `TcpSocket`, still listening, for libunftp.
            let fd: std::os::fd::OwnedFd = listening.into_std()?.into();
            return Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)));
        }
        Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "every FTP passive port is in use"))
    }
}

/// `SITE SHA256 PATH`: the file's SHA-256 (the hash kept with the file when
/// it still describes it), as `213 HEX  PATH`. PATH starts at the home
/// (libunftp gives SITE handlers no working directory).
#[derive(Debug)]
struct Sha256Site;

#[async_trait]
impl SiteCommandHandler<HomeStorage, FtpUser> for Sha256Site {
    async fn handle(&self, ctx: &SiteCommandContext<HomeStorage, FtpUser>) -> Reply {
        let Some(user) = ctx.user.as_ref().as_ref() else {
            return Reply::new(ReplyCode::NotLoggedIn, "log in first");
        };
        let arg = ctx.arguments.trim();
        let vp = match crate::vfs::VirtualPath::root().join_user_input(arg) {
            Ok(vp) => vp,
            Err(e) => return Reply::new(ReplyCode::FileError, &e.to_string()),
        };
        match user.home.hash(&vp, None, HashAlgo::Sha256).await {
            Ok((sha256, _, _)) => Reply::new(ReplyCode::FileStatus, &format!("{sha256}  {vp}")),
            Err(e) => Reply::new(ReplyCode::FileError, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ports_parse_and_bad_ones_name_their_key() {
        let mut c = FtpConfig::default();
        assert_eq!(c.passive_range().unwrap(), 50000..=50100);
        for bad in ["", "50000", "50100-50000", "80-90", "a-b", "50000-50000", "1024-9000"] {
            c.passive_ports = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("ftp.passive_ports"), "{bad}: {e}");
        }
        c.passive_ports = "50000-50100".into();
        c.listen = "[::1]:7721".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("ftp.listen"));
    }
}
