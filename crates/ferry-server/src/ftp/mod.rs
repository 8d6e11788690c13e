//! The FTP and FTPS front end (issue 15), on libunftp: its control and data
//! channels, our storage (`storage.rs`: every command a `Home` call) and our
//! login (`auth.rs`: the core's `verify_password`, throttle shared).
//!
//! Safe by default:
//! - explicit FTPS (`AUTH TLS`) with the server's own certificate, required
//!   on the control and the data channel; plaintext only with
//!   `ftp.allow_plaintext = true`, logged as a warning at start;
//! - passive mode only (PORT/EPRT refused: no FTP bounce);
//! - libunftp's pooled listener: every passive port is bound at start and a
//!   data connection is handed to the session whose control connection came
//!   from the same IP address and was given that port; any other is closed;
//! - libunftp's `SITE MD5` off (it reads whole files on demand); `SITE
//!   SHA256 PATH` answers from the home instead.
//!
//! libunftp logs through `slog-stdlog` into the `log` crate, which
//! tracing-subscriber's default `tracing-log` bridge turns into tracing
//! events (target `libunftp`).

mod auth;
mod storage;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use libunftp::options::{
    ActivePassiveMode, FtpsRequired, PassiveHost, Reply, ReplyCode, Shutdown, SiteCommandContext, SiteCommandHandler,
    SiteMd5,
};
use serde::Deserialize;

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
    /// Passive data ports, `FIRST-LAST`; all bound at start.
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
        // libunftp's pooled listener divides by LAST - FIRST and never hands
        // out LAST itself: two ports at least.
        if first < 1024 || last <= first {
            return Err(bad("must be FIRST-LAST with 1024 <= FIRST < LAST"));
        }
        if last - first >= 4096 {
            return Err(bad("at most 4096 ports (each is bound at start)"));
        }
        Ok(first..=last)
    }
}

/// Starts the FTP front end when enabled; returns the control address.
/// Its task runs on the core's tracker and stops with the core's token.
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
            tracing::warn!(
                "ftp.allow_plaintext: FTP without TLS is accepted; passwords, names and data travel unencrypted"
            );
            None
        }
    };
    // libunftp binds the control and passive ports itself. Binding here
    // first turns a busy port into an error at start rather than a dead
    // front end later, and resolves port 0 (a short race with another
    // process taking the port in between is the price).
    let addr = probe_bind(config.listen).with_context(|| format!("cannot listen for FTP on {}", config.listen))?;
    for port in passive.clone() {
        probe_bind(SocketAddr::new(addr.ip(), port))
            .with_context(|| format!("cannot bind FTP passive port {port} (ftp.passive_ports)"))?;
    }

    let token = core.shutdown.clone();
    let grace = Duration::from_secs(core.config.limits.shutdown_grace_secs);
    let require_tls = tls.is_some();
    let authenticator = Arc::new(auth::FtpAuthenticator { core: Arc::clone(&core), require_tls });
    let users = Arc::new(auth::FtpUsers { core: Arc::clone(&core) });
    let mut builder = libunftp::ServerBuilder::with_user_detail_provider(Box::new(|| HomeStorage), users)
        .authenticator(authenticator)
        .greeting("ferry FTP server ready")
        .passive_ports(passive)
        .pooled_listener_mode()
        .active_passive_mode(ActivePassiveMode::PassiveOnly)
        .idle_session_timeout(core.config.limits.idle_timeout_secs)
        .sitemd5(SiteMd5::None)
        .site_command("SHA256", Sha256Site)
        .shutdown_indicator(async move {
            token.cancelled().await;
            Shutdown::new().grace_period(grace)
        });
    if let Some(host) = &config.passive_host {
        builder = builder.passive_host(PassiveHost::from(host.as_str()));
    }
    if let Some(tls) = tls {
        builder = builder.ftps_manual::<std::path::PathBuf>(tls).ftps_required(FtpsRequired::All, FtpsRequired::All);
    }
    let server = builder.build().context("configuring the FTP server")?;
    core.tracker.spawn(async move {
        match server.listen(addr.to_string()).await {
            Ok(()) => tracing::info!("ftp: stopped"),
            Err(e) => tracing::error!(error = %e, "ftp: stopped"),
        }
    });
    // Ready once the control port takes a connection (libunftp binds the
    // passive ports right after it, before it accepts); probing by binding
    // would make its own bind fail. Bounded, so that a listener that failed
    // does not hang the start.
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tracing::info!(%addr, "ftp: listening");
            return Ok(Some(addr));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the FTP listener did not start on {addr} (see the log)")
}

/// Binds as libunftp will (with `SO_REUSEADDR`) and lets go; the bound address.
fn probe_bind(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.local_addr()
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
