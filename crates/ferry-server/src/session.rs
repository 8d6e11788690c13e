//! One connection's life: version handshake and login under the login
//! timeout, then one loop over the next request with an idle timer, until the
//! peer leaves, the idle timer fires or the server shuts down.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::hash::{HashAlgo, negotiate};
use ferry_proto::msg::{MECHANISM, PROTOCOL_VERSION, error_header, ok_header};
use ferry_proto::resp;
use ferry_proto::{Connection, ErrorCode, FrameCodec, FrameError, Request, WireError};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admission::Admission;
use crate::auth::{AuthError, UserRecord};
use crate::cmd;
use crate::core::Core;
use crate::home::Home;
use crate::listener::Framed;
use crate::metrics::Frontend;
use crate::stream::Stream;
use crate::vfs::VirtualPath;

pub type Conn = Connection<Stream>;

/// Failed logins allowed on one connection before it is closed.
const LOGIN_ATTEMPTS_PER_CONNECTION: u32 = 3;

/// The longest a session's last words (an error frame, the TLS close) may
/// take before the connection is simply dropped: a peer that does not read
/// must not keep a closing session alive (issue 12, item 1).
const LAST_WORDS: Duration = Duration::from_secs(5);

/// The error of a peer that took no bytes (or sent none mid-body) for the
/// idle timeout.
pub fn stalled() -> FrameError {
    FrameError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer silent past the idle timeout"))
}

/// One write of the session path (a flush of queued answers, an answer, a
/// body block, command output) under the idle timeout: a peer that does not
/// take it within `idle` is gone, and the session ends (issue 12, item 1).
/// Every such write is bounded in size (the unsent cap plus one answer, or
/// one body block), so this is a bound on a peer that takes nothing, not a
/// rate a reading peer could miss at any sane timeout.
pub async fn write_within<T>(
    idle: Duration,
    write: impl Future<Output = Result<T, FrameError>>,
) -> Result<T, FrameError> {
    tokio::time::timeout(idle, write).await.unwrap_or_else(|_| Err(stalled()))
}

/// A last frame before the session closes, bounded by `min(idle, LAST_WORDS)`;
/// its failure changes nothing.
async fn last_words(conn: &mut Conn, idle: Duration, header: &ferry_proto::Header) {
    let _ = write_within(idle.min(LAST_WORDS), conn.send(header)).await;
}

/// A logged-in session: who, where, and what it may use.
pub struct Session {
    pub core: Arc<Core>,
    pub user: UserRecord,
    pub home: Arc<Home>,
    pub cwd: VirtualPath,
    /// The file hash negotiated at hello: every transfer that names none uses it.
    pub hash: HashAlgo,
}

/// Why a session ended, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Bye,
    LoginTimeout,
    IdleTimeout,
    Shutdown,
    LoginRefused,
    /// The peer took no bytes (or sent none mid-body) for the idle timeout.
    Stalled,
    Io(std::io::Error),
    Frame(FrameError),
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        match e {
            // A peer that vanishes (or skips TLS close_notify) simply left.
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                End::Closed
            }
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => End::Stalled,
            FrameError::Io(io) => End::Io(io),
            e => End::Frame(e),
        }
    }
}

pub async fn run(front: Arc<Framed>, stream: Stream, peer: String, ip: Option<IpAddr>, mut admission: Admission) {
    let id = front.next_session_id();
    let shared = Arc::clone(&front.core);
    let idle = shared.config.idle_timeout();
    let span = info_span!("session", id, peer = %peer);
    async move {
        let _open = shared.metrics.session(Frontend::Framed);
        info!("session start");
        let mut conn = Connection::new(stream, FrameCodec::new(shared.config.limits.max_header_bytes));
        let end = match login_phase(&shared, &mut conn, ip).await {
            Ok((user, hash)) => {
                admission.authenticated();
                match open_session(&shared, user, hash).await {
                    Ok(mut session) => serve(&mut session, &mut conn).await,
                    Err(err) => {
                        warn!(code = %err.code, error = %err.message, "cannot open the user's home");
                        last_words(&mut conn, idle, &error_header(0, &err)).await;
                        End::LoginRefused
                    }
                }
            }
            Err(end) => end,
        };
        if let End::Io(e) = &end {
            debug!(error = %e, "session i/o error");
        }
        if let End::Frame(e) = &end {
            let err = WireError::new(ErrorCode::BadFrame, e.to_string());
            last_words(&mut conn, idle, &error_header(0, &err)).await;
        }
        // A peer that took nothing for the idle timeout gets nothing more;
        // any other close is bounded too (issue 12, item 1).
        if !matches!(end, End::Stalled) {
            let _ = write_within(idle.min(LAST_WORDS), conn.shutdown()).await;
        }
        info!(reason = ?end, "session end");
    }
    .instrument(span)
    .await
}

async fn open_session(core: &Arc<Core>, user: UserRecord, hash: HashAlgo) -> Result<Session, WireError> {
    let home = core.open_home(&user).await?;
    Ok(Session { core: Arc::clone(core), user, home, cwd: VirtualPath::root(), hash })
}

/// Handshake and login. Returns the user and the negotiated hash on success.
async fn login_phase(shared: &Arc<Core>, conn: &mut Conn, ip: Option<IpAddr>) -> Result<(UserRecord, HashAlgo), End> {
    let timeout = shared.config.login_timeout();
    let idle = shared.config.idle_timeout();
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, login_exchange(shared, conn, ip)) => r,
        _ = shared.shutdown.cancelled() => {
            let err = WireError::new(ErrorCode::ShuttingDown, "server is shutting down");
            last_words(conn, idle, &error_header(0, &err)).await;
            return Err(End::Shutdown);
        }
    };
    match result {
        Ok(r) => r,
        Err(_) => {
            let err = WireError::new(ErrorCode::Timeout, "login took too long");
            last_words(conn, idle, &error_header(0, &err)).await;
            Err(End::LoginTimeout)
        }
    }
}

async fn login_exchange(
    shared: &Arc<Core>,
    conn: &mut Conn,
    ip: Option<IpAddr>,
) -> Result<(UserRecord, HashAlgo), End> {
    let mut said_hello = false;
    let mut hash = HashAlgo::Sha256;
    let mut failures = 0;
    let mut pending: Option<crate::auth::LoginAttempt> = None;
    let throttle_ip = ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    loop {
        let Some(header) = conn.read_header().await? else { return Err(End::Closed) };
        conn.skip_body().await?;
        let (id, req) = Request::from_header(&header);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                conn.send(&error_header(id, &e)).await?;
                continue;
            }
        };
        match req {
            Request::Hello { version, hashes, .. } => {
                if version != PROTOCOL_VERSION {
                    let e = WireError::new(
                        ErrorCode::UnsupportedVersion,
                        format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
                    );
                    conn.send(&error_header(id, &e)).await?;
                    return Err(End::LoginRefused);
                }
                let offered = &shared.config.transfer.hashes;
                let Some(picked) = negotiate(offered, hashes.as_deref()) else {
                    let names: Vec<&str> = offered.iter().map(|a| a.as_str()).collect();
                    let e = WireError::new(
                        ErrorCode::BadRequest,
                        format!("no file hash in common: this server offers {}", names.join(", ")),
                    );
                    conn.send(&error_header(id, &e)).await?;
                    continue;
                };
                said_hello = true;
                hash = picked;
                let body = resp::Hello {
                    version: PROTOCOL_VERSION,
                    server: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
                    mechanisms: vec![MECHANISM.to_string()],
                    hashes: offered.iter().map(|a| a.to_string()).collect(),
                    max_header: shared.config.limits.max_header_bytes,
                    hash: Some(picked.to_string()),
                };
                conn.send(&ok_header(id, &body, 0)).await?;
            }
            Request::AuthStart { mechanism, data } if said_hello => {
                if mechanism != MECHANISM {
                    let e = WireError::new(ErrorCode::BadRequest, format!("unsupported mechanism; use {MECHANISM}"));
                    conn.send(&error_header(id, &e)).await?;
                    continue;
                }
                let auth = Arc::clone(&shared.authenticator);
                let begun = tokio::task::spawn_blocking(move || auth.begin(&data, throttle_ip, Instant::now())).await;
                if let Ok(Err(e)) = &begun {
                    shared.metrics.login_error(Frontend::Framed, e);
                }
                match begun {
                    Ok(Ok(attempt)) => {
                        conn.send(&ok_header(
                            id,
                            &resp::Auth { data: attempt.server_first().to_string(), user: None, cwd: None },
                            0,
                        ))
                        .await?;
                        pending = Some(attempt);
                    }
                    Ok(Err(AuthError::Banned { .. })) => {
                        warn!(ip = %throttle_ip, "login refused: address temporarily banned");
                        let e = WireError::new(ErrorCode::Throttled, "too many failed logins; try again later");
                        conn.send(&error_header(id, &e)).await?;
                        return Err(End::LoginRefused);
                    }
                    Ok(Err(AuthError::Protocol(e))) => {
                        let e = WireError::new(ErrorCode::BadRequest, format!("login: {e}"));
                        conn.send(&error_header(id, &e)).await?;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "login could not be checked");
                        let e = WireError::new(ErrorCode::Internal, "login is unavailable right now");
                        conn.send(&error_header(id, &e)).await?;
                        return Err(End::LoginRefused);
                    }
                    Err(_) => return Err(End::LoginRefused),
                }
            }
            Request::AuthFinish { data } if pending.is_some() => {
                let Some(attempt) = pending.take() else { continue };
                let username = format!("{:?}", attempt.username());
                // The throttle's delay applies whether or not the proof is right,
                // so timing tells nothing.
                tokio::time::sleep(attempt.delay()).await;
                // Off the runtime: the outcome is counted, maybe in a shared database.
                let finished = tokio::task::spawn_blocking(move || attempt.finish(&data, Instant::now())).await;
                let Ok(finished) = finished else { return Err(End::LoginRefused) };
                shared.metrics.login(Frontend::Framed, &finished);
                match finished {
                    Ok((server_final, user)) => {
                        info!(user = %user.name, hash = %hash, "login succeeded");
                        let body =
                            resp::Auth { data: server_final, user: Some(user.name.clone()), cwd: Some("/".into()) };
                        conn.send(&ok_header(id, &body, 0)).await?;
                        return Ok((user, hash));
                    }
                    Err(err) => {
                        failures += 1;
                        warn!(user = %username, ip = %throttle_ip, reason = %err, "login failed");
                        let e = match err {
                            AuthError::Protocol(p) => WireError::new(ErrorCode::BadRequest, format!("login: {p}")),
                            _ => WireError::new(ErrorCode::AuthFailed, "authentication failed"),
                        };
                        conn.send(&error_header(id, &e)).await?;
                        if failures >= LOGIN_ATTEMPTS_PER_CONNECTION {
                            return Err(End::LoginRefused);
                        }
                    }
                }
            }
            Request::Bye => {
                conn.send(&ok_header(id, &resp::Done {}, 0)).await?;
                return Err(End::Bye);
            }
            // Out of order: a login message without the one it follows.
            Request::AuthStart { .. } | Request::AuthFinish { .. } => {
                let e = if said_hello {
                    WireError::new(ErrorCode::BadRequest, "auth_finish without a pending auth_start")
                } else {
                    WireError::new(ErrorCode::BadRequest, "send hello first")
                };
                conn.send(&error_header(id, &e)).await?;
            }
            _ => {
                let e = if said_hello {
                    WireError::new(ErrorCode::AuthRequired, "log in first")
                } else {
                    WireError::new(ErrorCode::BadRequest, "send hello first")
                };
                conn.send(&error_header(id, &e)).await?;
            }
        }
    }
}

/// The request loop of a logged-in session.
async fn serve(session: &mut Session, conn: &mut Conn) -> End {
    let idle = session.core.config.idle_timeout();
    let cap = session.core.config.limits.max_unsent_bytes;
    let shutdown = session.core.shutdown.clone();
    loop {
        // Answers to pipelined requests go out together: flush only when no
        // further request is already waiting in the buffer, or when the
        // answers the peer has not taken reach the cap. Then no further
        // request of this session is read until the peer takes them
        // (backpressure), and one that takes nothing for the idle timeout is
        // gone (issue 12, item 1: a never-reading pipeliner had made one
        // session queue answers without limit).
        if (conn.buffered() == 0 || conn.queued() >= cap)
            && let Err(e) = write_within(idle, conn.flush()).await
        {
            return e.into();
        }
        let next = tokio::select! {
            r = tokio::time::timeout(idle, conn.read_header()) => r,
            _ = shutdown.cancelled() => {
                let err = WireError::new(ErrorCode::ShuttingDown, "server is shutting down");
                last_words(conn, idle, &error_header(0, &err)).await;
                return End::Shutdown;
            }
        };
        let header = match next {
            Err(_) => {
                last_words(conn, idle, &error_header(0, &WireError::new(ErrorCode::Timeout, "idle timeout"))).await;
                return End::IdleTimeout;
            }
            Ok(Err(e)) => return e.into(),
            Ok(Ok(None)) => return End::Closed,
            Ok(Ok(Some(h))) => h,
        };
        let (id, req) = Request::from_header(&header);
        let result = match req {
            Err(e) => reply_error_skip(conn, id, &e).await,
            Ok(Request::Bye) => {
                last_words(conn, idle, &ok_header(id, &resp::Done {}, 0)).await;
                return End::Bye;
            }
            Ok(req) => cmd::dispatch(session, conn, id, req, header.body_len).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "session stream error");
            return e.into();
        }
    }
}

/// Answers an error and skips whatever body the request carried.
pub async fn reply_error_skip(conn: &mut Conn, id: u64, err: &WireError) -> Result<(), FrameError> {
    conn.skip_body().await?;
    conn.queue_header(&error_header(id, err))
}
