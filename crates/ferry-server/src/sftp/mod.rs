//! The SSH front end (issue 14): SFTP, scp (OpenSSH 9 sends it over SFTP)
//! and `ssh host CMD`, against the same users, homes, quotas and exec policy
//! as the framed protocol. russh runs the SSH transport; `session.rs` serves
//! SFTP over `Home`; `exec.rs` runs commands; `proto.rs` is the SFTP codec.
//!
//! Admission: a permit before `accept` (`sftp.max_connections`), then a
//! seat from the core's gate, as for the framed protocol and FTP
//! (`admission.rs`: `limits.max_connections` in all, and
//! `limits.max_unauthenticated_per_ip` per address until login); a refused
//! peer reads why in a line before the SSH banner. The login timeout
//! (`limits.login_timeout_secs`) covers the version exchange, key exchange
//! and authentication; the idle timeout (`limits.idle_timeout_secs`) the
//! rest. Connections and their channels are tracked by the core's tracker,
//! so shutdown drains them like framed sessions.
//!
//! Algorithms: curve25519 key exchange, an ed25519 host key, AEAD ciphers
//! (chacha20-poly1305, AES-GCM) first, AES-CTR with SHA-2 MACs for older
//! libssh2 (curl); no SHA-1, no CBC, no RSA or finite-field Diffie-Hellman.

mod exec;
mod hostkey;
pub mod proto;
mod session;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use russh::keys::{Algorithm, HashAlg};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet, Preferred, cipher, kex, mac};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::auth::{AuthError, Decision, UserRecord};
use crate::core::Core;
use crate::metrics::Frontend;

pub use exec::split_command;

/// The SSH front end, started: its address and host-key fingerprint.
pub struct SshRunning {
    pub addr: SocketAddr,
    /// `SHA256:...`, as `ssh-keygen -l` and the `ssh` first-connection prompt show it.
    pub fingerprint: String,
    pub generated_key: bool,
}

/// Channels (sftp, exec) per connection at once; OpenSSH allows 10 sessions.
const MAX_CHANNELS: usize = 10;
/// The SSH channel window and packet size we offer. Larger than russh's
/// defaults: uploads stall on window updates otherwise (measured, bench/).
const WINDOW: u32 = 16 * 1024 * 1024;
const MAX_PACKET: u32 = 256 * 1024;

const MSG_NO_SHELL: &str =
    "ferry: no interactive shell here. Use sftp or scp for files, or run one command: ssh -p PORT USER@HOST COMMAND\n";
const MSG_LEGACY_SCP: &str = "ferry: the legacy scp protocol (scp -O) is not supported; use scp without -O (OpenSSH 9 and later send scp over SFTP) or sftp\n";

fn ssh_config(core: &Core, key: russh::keys::PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    russh::server::Config {
        server_id: russh::SshId::Standard(Cow::Owned(format!("SSH-2.0-ferry_{}", env!("CARGO_PKG_VERSION")))),
        methods,
        // The throttle decides delays (shared with the framed login); an
        // unknown user already costs a PBKDF2 run like a known one.
        auth_rejection_time: Duration::from_millis(50),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        // Messages russh holds for a channel before it stops reading the
        // connection (its window adjusts as data arrives, not as we take
        // it): 16 of OpenSSH's 256 KiB writes, 4 MiB; 64 could hold 16 MiB.
        channel_buffer_size: 16,
        max_auth_attempts: 6,
        inactivity_timeout: Some(core.config.idle_timeout()),
        keepalive_interval: None,
        nodelay: true,
        preferred: Preferred {
            kex: Cow::Borrowed(&[
                kex::CURVE25519,
                kex::CURVE25519_PRE_RFC_8731,
                kex::EXTENSION_SUPPORT_AS_SERVER,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            ]),
            key: Cow::Borrowed(&[Algorithm::Ed25519]),
            // AES-CTR with SHA-2 MACs last, for libssh2 before 1.11 (curl
            // on Debian 12), which has neither AEAD cipher.
            cipher: Cow::Borrowed(&[
                cipher::CHACHA20_POLY1305,
                cipher::AES_128_GCM,
                cipher::AES_256_GCM,
                cipher::AES_256_CTR,
                cipher::AES_128_CTR,
            ]),
            mac: Cow::Borrowed(&[mac::HMAC_SHA256_ETM, mac::HMAC_SHA512_ETM, mac::HMAC_SHA256, mac::HMAC_SHA512]),
            ..Preferred::default()
        },
        ..Default::default()
    }
}

/// Loads (or makes) the host key, binds, and starts accepting in the
/// background under the core's shutdown token and tracker.
pub async fn start(core: Arc<Core>) -> Result<SshRunning> {
    let key_path = core.config.ssh_host_key_path();
    let host = hostkey::load_or_generate(&key_path)?;
    let fingerprint = host.fingerprint();
    if host.generated {
        info!(path = %key_path.display(), %fingerprint, "generated the SSH host key");
    }
    let listen = core.config.sftp.listen;
    let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(listen).with_context(|| format!("cannot listen for SSH on {listen}"))?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let config = Arc::new(ssh_config(&core, host.key));
    info!(%addr, %fingerprint, "SSH/SFTP listening");
    let tracker = core.tracker.clone();
    let budgets = Arc::new(HandleBudgets::default());
    tracker.spawn(accept_loop(core, listener, config, budgets));
    Ok(SshRunning { addr, fingerprint, generated_key: host.generated })
}

/// Each user's budget of open SFTP handles, shared by their sessions
/// (`sftp.max_handles_per_user`). One entry per user who opened SFTP since
/// the start: bounded by the user store.
#[derive(Default)]
struct HandleBudgets(Mutex<HashMap<String, Arc<Semaphore>>>);

impl HandleBudgets {
    fn of(&self, user: &str, max: usize) -> Arc<Semaphore> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(user.to_string()).or_insert_with(|| Arc::new(Semaphore::new(max))))
    }
}

async fn accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    budgets: Arc<HandleBudgets>,
) {
    let permits = Arc::new(Semaphore::new(core.config.sftp.max_connections));
    loop {
        // The permit first: over the cap, connections wait in the backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            _ = core.shutdown.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let Some((socket, peer)) = crate::listener::next_connection(&core, &listener, "ssh").await else { return };
        let admission = match core.admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                refuse_connection(&socket, peer, refusal);
                continue;
            }
        };
        let core2 = Arc::clone(&core);
        let config = Arc::clone(&config);
        let budgets = Arc::clone(&budgets);
        core.tracker.spawn(async move {
            connection(core2, config, socket, peer, admission, budgets).await;
            drop(permit);
        });
    }
}

/// Tells a refused peer why in a line before the banner (RFC 4253, section
/// 4.2: lines before the version string are allowed; OpenSSH shows them
/// with `-v`, and its error names the closed connection), then closes.
/// One non-blocking write into a fresh socket's empty buffer: no task, no
/// wait, whatever the peer does.
fn refuse_connection(socket: &tokio::net::TcpStream, peer: SocketAddr, refusal: Refusal) {
    debug!(%peer, reason = refusal.message(), "SSH connection refused");
    let _ = socket.try_write(format!("ferry: {}\r\n", refusal.message()).as_bytes());
}

async fn connection(
    core: Arc<Core>,
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
    budgets: Arc<HandleBudgets>,
) {
    let _open = core.metrics.session(Frontend::Sftp);
    let (authed_tx, authed_rx) = oneshot::channel();
    let channels = TaskTracker::new();
    let handler = SshHandler {
        core: Arc::clone(&core),
        budgets,
        peer,
        user: None,
        authed: Some(authed_tx),
        open: HashMap::new(),
        channels: channels.clone(),
    };
    let login = core.config.login_timeout();
    // The version exchange is bounded by the login timeout too.
    let session = match tokio::time::timeout(login, russh::server::run_stream(config, socket, handler)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "SSH connection failed before key exchange");
            return;
        }
        Err(_) => return,
    };
    let handle = session.handle();
    tokio::pin!(session);
    let login_timer = tokio::time::sleep(login);
    tokio::pin!(login_timer);
    let mut authed_rx = Some(authed_rx);
    loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "SSH session ended with an error");
                }
                break;
            }
            r = async { authed_rx.as_mut().expect("guarded by the branch condition").await }, if authed_rx.is_some() => {
                authed_rx = None;
                if r.is_err() {
                    // The handler is gone: the session is ending.
                    continue;
                }
                admission.authenticated();
            }
            _ = &mut login_timer, if authed_rx.is_some() => {
                info!(%peer, "SSH login timed out");
                let _ = handle.disconnect(Disconnect::ByApplication, "login timed out".into(), "en".into()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                break;
            }
            _ = core.shutdown.cancelled() => {
                // Channels see the same token: SFTP stops between requests,
                // commands run to their end (within the grace period).
                channels.close();
                channels.wait().await;
                let _ = handle.disconnect(Disconnect::ByApplication, "server shutting down".into(), "en".into()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                break;
            }
        }
    }
    channels.close();
    channels.wait().await;
}

struct SshHandler {
    core: Arc<Core>,
    budgets: Arc<HandleBudgets>,
    peer: SocketAddr,
    user: Option<UserRecord>,
    authed: Option<oneshot::Sender<()>>,
    /// Session channels opened and not yet given a subsystem or command.
    open: HashMap<ChannelId, Channel<Msg>>,
    channels: TaskTracker,
}

fn reject() -> Auth {
    Auth::Reject { proceed_with_methods: None, partial_success: false }
}

impl SshHandler {
    /// A user and their keys, from the store (blocking, so off the runtime).
    async fn user_with_keys(&self, name: &str) -> Option<(UserRecord, Vec<String>)> {
        let store = Arc::clone(&self.core.store);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let user = store.get(&name).ok()??;
            let keys = store.keys(&name).ok()?.into_iter().map(|k| k.fingerprint).collect();
            Some((user, keys))
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether the address is banned; also when the throttle cannot tell
    /// (its shared counts unreachable). Off the runtime: it may query a database.
    async fn banned(&self, user: &str) -> bool {
        let auth = Arc::clone(&self.core.authenticator);
        let (user, ip) = (user.to_string(), self.peer.ip());
        let decision = tokio::task::spawn_blocking(move || auth.throttle().check(&user, ip, Instant::now())).await;
        !matches!(decision, Ok(Ok(Decision::Allow | Decision::Delay(_))))
    }

    async fn key_allowed(&self, user: &str, key: &russh::keys::PublicKey) -> Option<UserRecord> {
        if self.banned(user).await {
            return None;
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let (record, keys) = self.user_with_keys(user).await?;
        keys.contains(&fingerprint).then_some(record)
    }

    fn take_channel(&mut self, id: ChannelId, session: &mut Session) -> Option<(Channel<Msg>, UserRecord)> {
        let Some(user) = self.user.clone() else {
            let _ = session.channel_failure(id);
            return None;
        };
        let Some(channel) = self.open.remove(&id) else {
            let _ = session.channel_failure(id);
            return None;
        };
        Some((channel, user))
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let auth = Arc::clone(&self.core.authenticator);
        let (name, password, ip) = (user.to_string(), password.to_string(), self.peer.ip());
        let outcome =
            tokio::task::spawn_blocking(move || auth.verify_password(&name, &password, ip, Instant::now())).await;
        let Ok(outcome) = outcome else { return Ok(reject()) };
        // Throttled together with the framed login: same counters, same ban.
        tokio::time::sleep(outcome.delay).await;
        self.core.metrics.login(Frontend::Sftp, &outcome.result);
        match outcome.result {
            Ok(record) => {
                info!(user = %record.name, peer = %self.peer, method = "password", "SSH login");
                self.user = Some(record);
                Ok(Auth::Accept)
            }
            Err(AuthError::Banned { remaining }) => {
                warn!(peer = %self.peer, user, remaining_secs = remaining.as_secs(), "SSH login refused: address banned");
                Ok(reject())
            }
            Err(e) => {
                info!(peer = %self.peer, user, error = %e, "SSH login failed");
                Ok(reject())
            }
        }
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // An unknown key is no failure: clients offer several in turn.
        Ok(if self.key_allowed(user, offer.public_key).await.is_some() { Auth::Accept } else { reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.key_allowed(user, key.public_key).await {
            Some(record) => {
                info!(user = %record.name, peer = %self.peer, method = "publickey", "SSH login");
                self.core.metrics.login_ok(Frontend::Sftp);
                self.user = Some(record);
                Ok(Auth::Accept)
            }
            None => Ok(reject()),
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() || self.open.len() + self.channels.len() >= MAX_CHANNELS {
            reply.reject(russh::ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.open.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.open.remove(&channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(peer = %self.peer, host, port, "SSH port forwarding refused");
        reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted and ignored, so that the shell request that follows gets
        // its explanation; commands never get a terminal.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        info!(peer = %self.peer, "SSH X11 forwarding refused");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Commands get a fixed environment (exec::command).
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let Some((channel, _)) = self.take_channel(channel, session) else { return Ok(()) };
        session.channel_success(channel.id())?;
        self.channels.spawn(refuse(channel, MSG_NO_SHELL));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((channel, user)) = self.take_channel(channel, session) else { return Ok(()) };
        session.channel_success(channel.id())?;
        let line = String::from_utf8_lossy(data).into_owned();
        if line.trim_start().starts_with("scp ") {
            info!(user = %user.name, "legacy scp refused");
            self.channels.spawn(refuse(channel, MSG_LEGACY_SCP));
            return Ok(());
        }
        self.channels.spawn(exec::run(Arc::clone(&self.core), user, channel, line));
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let Some((channel, user)) = self.take_channel(channel, session) else { return Ok(()) };
        let home = match self.core.open_home(&user).await {
            Ok(h) => h,
            Err(e) => {
                warn!(user = %user.name, error = %e, "cannot open the home for SFTP");
                session.channel_failure(channel.id())?;
                return Ok(());
            }
        };
        session.channel_success(channel.id())?;
        info!(user = %user.name, peer = %self.peer, "sftp session started");
        let sftp = &self.core.config.sftp;
        let settings = session::Settings {
            user: user.name.clone(),
            max_handles: sftp.max_handles,
            user_handles: self.budgets.of(&user.name, sftp.max_handles_per_user),
            keep_cut_uploads: sftp.keep_cut_uploads,
            write_timeout: self.core.config.idle_timeout(),
            metrics: Arc::clone(&self.core.metrics),
        };
        let shutdown = self.core.shutdown.clone();
        let (handle, id) = (session.handle(), channel.id());
        // scp reads the subsystem's exit status as its own.
        let finish = async move {
            let _ = handle.exit_status_request(id, 0).await;
            let _ = handle.eof(id).await;
        };
        self.channels.spawn(session::run(channel.into_stream(), home, settings, shutdown, finish));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        info!(peer = %self.peer, address, port = *port, "SSH remote forwarding refused");
        Ok(false)
    }
}

/// Writes `message` to the client's stderr and ends the channel with status 1.
async fn refuse(channel: Channel<Msg>, message: &'static str) {
    let _ = channel.extended_data_bytes(1, bytes::Bytes::from_static(message.as_bytes())).await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}
