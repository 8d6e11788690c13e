//! Users, verifiers and login: the user store, SCRAM server side, throttling.
//!
//! No wire types here, only the SCRAM math of [`ferry_proto::scram`], so other
//! front ends (SFTP, FTP) can reuse this core.
//!
//! - [`store`]: the [`UserStore`] trait and an in-memory store;
//!   [`sqlite`]: the SQLite one; [`postgres`]: the one several servers share.
//! - [`throttle`]: failed-login delays and bans.
//! - [`admin`]: new verifiers and secrets for admin commands.
//! - here: [`UserRecord`], [`validate_username`], and the [`Authenticator`]
//!   that runs one login as a [`LoginAttempt`].
//!
//! # A login
//!
//! ```text
//! let attempt = auth.begin(client_first, ip, Instant::now())?;   // blocking: spawn_blocking
//! send(attempt.server_first());
//! let client_final = recv();
//! sleep(attempt.delay());                  // the throttle's delay, success or not
//! let (server_final, user) = attempt.finish(client_final, Instant::now())?;
//! send(server_final);
//! ```
//!
//! An unknown user runs the same exchange with [`Verifier::fake_for`] and
//! fails at `finish` with [`AuthError::Failed`], the very error a wrong
//! password gives.

pub mod admin;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod throttle;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::scram::{self, ClientFirst, ScramError, ScramServer, Verifier};

pub use admin::{PasswordError, hash_new_password};
pub use postgres::PgUserStore;
pub use sqlite::SqliteUserStore;
pub use store::{AuthorizedKey, MemoryUserStore, StoreError, UserStore};
pub use throttle::{Decision, FailureCounts, MemoryCounts, Standing, Throttle, ThrottleConfig};

/// The longest user name, in characters (all ASCII, so also bytes).
pub const MAX_USERNAME_LEN: usize = 32;

/// A user as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub verifier: Verifier,
    /// Bytes the user may store; `None` is unlimited.
    pub quota_bytes: Option<u64>,
    /// Whether the user may run `exec`.
    pub allow_exec: bool,
    /// Files and directories the user may have; `None` is the server's
    /// default (`limits.max_files_per_user`), `Some(u64::MAX)` unlimited.
    pub max_files: Option<u64>,
    /// The user's home; `None` is the default under the data directory.
    pub home: Option<PathBuf>,
    /// Creation time, Unix seconds.
    pub created: i64,
}

/// Why a user name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsernameError {
    #[error("user name is empty")]
    Empty,
    #[error("user name is longer than {MAX_USERNAME_LEN} characters")]
    TooLong,
    #[error("user name may hold only a-z, 0-9, '_', '.' and '-'")]
    BadChar,
    #[error("user name may not start with '.' or '-'")]
    BadStart,
}

/// Checks a user name: 1 to 32 of `[a-z0-9_.-]`, not starting with `.` or `-`.
///
/// Names become directory names and log fields, hence the small alphabet.
pub fn validate_username(name: &str) -> Result<(), UsernameError> {
    let bytes = name.as_bytes();
    let first = *bytes.first().ok_or(UsernameError::Empty)?;
    if bytes.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b);
    if !bytes.iter().all(|&b| allowed(b)) {
        return Err(UsernameError::BadChar);
    }
    if first == b'.' || first == b'-' {
        return Err(UsernameError::BadStart);
    }
    Ok(())
}

/// Why a login failed. The session maps these to wire errors and logs them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Wrong password or unknown user: one variant and one text for both, so
    /// neither the peer nor a log reader downstream can tell them apart.
    #[error("authentication failed")]
    Failed,
    /// The source address is banned by the throttle.
    #[error("too many failed logins from this address; try again in {}s", remaining.as_secs().max(1))]
    Banned { remaining: Duration },
    /// The peer's SCRAM message is malformed or asks for a feature ferry does
    /// not have (channel binding, authzid). Same for known and unknown users.
    #[error(transparent)]
    Protocol(ScramError),
    /// The user store failed; the peer should see a generic server error.
    #[error("user store unavailable")]
    Store(#[source] StoreError),
    /// The system random source failed (server nonce).
    #[error("system random source failed")]
    Random,
}

/// Runs logins: looks users up, fakes unknown ones, applies the throttle.
///
/// Share it as `Arc<Authenticator>`.
pub struct Authenticator {
    store: Arc<dyn UserStore>,
    throttle: Arc<Throttle>,
    server_secret: [u8; 32],
    default_iterations: u32,
    /// The iteration counts real users have, one per user, sorted, with
    /// when they were read: unknown names are given one of them.
    iteration_mix: std::sync::Mutex<Option<(Instant, Vec<u32>)>>,
}

/// How long the real users' iteration counts are reused before the store is
/// read again.
const ITERATION_MIX_TTL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("default_iterations", &self.default_iterations).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `server_secret` keys the fake verifiers of unknown users: random,
    /// private, and stable across restarts (see
    /// [`admin::generate_server_secret`]). `default_iterations` is the count
    /// new users get, which fake verifiers copy; it is clamped to
    /// [`scram::MIN_ITERATIONS`]`..=`[`scram::MAX_ITERATIONS`], the range
    /// clients accept.
    #[must_use]
    pub fn new(
        store: Arc<dyn UserStore>,
        throttle: Throttle,
        server_secret: [u8; 32],
        default_iterations: u32,
    ) -> Self {
        Self {
            store,
            throttle: Arc::new(throttle),
            server_secret,
            default_iterations: default_iterations.clamp(scram::MIN_ITERATIONS, scram::MAX_ITERATIONS),
            iteration_mix: std::sync::Mutex::new(None),
        }
    }

    /// The iteration count an unknown name is given: drawn from what real
    /// users have (stable per name, weighted by how many users have each
    /// count), so that neither a configuration change nor users added with
    /// another count tell unknown names apart (issue 12). The configured
    /// default only while there are no users. **Blocking** (reads the store
    /// once a minute).
    fn fake_iterations(&self, username: &str, now: Instant) -> u32 {
        let mut mix = self.iteration_mix.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = mix.as_ref().is_none_or(|(at, _)| now.saturating_duration_since(*at) >= ITERATION_MIX_TTL);
        if stale && let Ok(users) = self.store.list() {
            let mut counts: Vec<u32> = users.iter().map(|u| u.verifier.iterations()).collect();
            counts.sort_unstable();
            *mix = Some((now, counts));
        }
        let Some((_, counts)) = mix.as_ref().filter(|(_, c)| !c.is_empty()) else { return self.default_iterations };
        let pick =
            scram::keyed_index(&self.server_secret, b"ferry fake iterations\0", username.as_bytes(), counts.len());
        counts[pick]
    }

    #[must_use]
    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.store
    }

    #[must_use]
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    #[must_use]
    pub fn default_iterations(&self) -> u32 {
        self.default_iterations
    }

    /// Starts a login from `client_first`, with a random server nonce.
    ///
    /// **Blocking**: reads the user store. Async callers use
    /// `tokio::task::spawn_blocking`.
    pub fn begin(&self, client_first: &str, ip: IpAddr, now: Instant) -> Result<LoginAttempt, AuthError> {
        let mut random = [0u8; 18];
        getrandom::fill(&mut random).map_err(|_| AuthError::Random)?;
        self.begin_with_nonce(client_first, ip, &scram::encode_nonce(&random), now)
    }

    /// [`Self::begin`] with a given server nonce (printable ASCII, no `,`),
    /// for tests. **Blocking**.
    pub fn begin_with_nonce(
        &self,
        client_first: &str,
        ip: IpAddr,
        server_nonce: &str,
        now: Instant,
    ) -> Result<LoginAttempt, AuthError> {
        let first = ClientFirst::parse(client_first).map_err(AuthError::Protocol)?;
        let username = first.username().to_owned();
        let delay = match self.throttle.check(&username, ip, now).map_err(AuthError::Store)? {
            Decision::Allow => Duration::ZERO,
            Decision::Delay(d) => d,
            Decision::Banned { remaining } => return Err(AuthError::Banned { remaining }),
        };
        // A name that cannot exist is not looked up, and is faked like any
        // other unknown name.
        let user = if validate_username(&username).is_ok() {
            self.store.get(&username).map_err(AuthError::Store)?
        } else {
            None
        };
        // The fake verifier is made for real users too, so that the work
        // (and the time) does not tell them apart.
        let fake = Verifier::fake_for(&username, &self.server_secret, self.fake_iterations(&username, now));
        let verifier = match &user {
            Some(u) => {
                // Kept, not optimized away: the work is the point.
                std::hint::black_box(&fake);
                u.verifier.clone()
            }
            None => fake,
        };
        let server = ScramServer::new(&first, verifier, server_nonce).map_err(AuthError::Protocol)?;
        Ok(LoginAttempt { server, user, username, ip, delay, throttle: Arc::clone(&self.throttle) })
    }
}

impl Authenticator {
    /// Checks a password received inside an encrypted channel (SFTP, FTPS
    /// front ends): StoredKey is recomputed from the stored salt and
    /// iterations and compared in constant time. The same throttle as SCRAM
    /// applies (failures counted together, bans shared), and an unknown user
    /// costs the same PBKDF2 run against a fake verifier. The caller waits
    /// the outcome's `delay` before answering, success or not.
    ///
    /// **Blocking** (PBKDF2, the user store): use `spawn_blocking`.
    pub fn verify_password(&self, username: &str, password: &str, ip: IpAddr, now: Instant) -> PasswordOutcome {
        let delay = match self.throttle.check(username, ip, now) {
            Ok(Decision::Allow) => Duration::ZERO,
            Ok(Decision::Delay(d)) => d,
            Ok(Decision::Banned { remaining }) => {
                return PasswordOutcome { delay: Duration::ZERO, result: Err(AuthError::Banned { remaining }) };
            }
            Err(e) => return PasswordOutcome { delay: Duration::ZERO, result: Err(AuthError::Store(e)) },
        };
        let user = if validate_username(username).is_ok() {
            match self.store.get(username) {
                Ok(u) => u,
                Err(e) => return PasswordOutcome { delay, result: Err(AuthError::Store(e)) },
            }
        } else {
            None
        };
        let fake = Verifier::fake_for(username, &self.server_secret, self.fake_iterations(username, now));
        let verifier = match &user {
            Some(u) => {
                // Kept, not optimized away: the work is the point.
                std::hint::black_box(&fake);
                u.verifier.clone()
            }
            None => fake,
        };
        let matched = verifier.matches_password(password);
        let result = match user {
            Some(user) if matched => {
                self.throttle.record_success(username, ip, now);
                Ok(user)
            }
            _ => {
                self.throttle.record_failure(username, ip, now);
                Err(AuthError::Failed)
            }
        };
        PasswordOutcome { delay, result }
    }
}

/// The outcome of [`Authenticator::verify_password`]: wait `delay`, then answer.
#[derive(Debug)]
pub struct PasswordOutcome {
    pub delay: Duration,
    pub result: Result<UserRecord, AuthError>,
}

/// One login between the server-first and the client-final message.
pub struct LoginAttempt {
    server: ScramServer,
    user: Option<UserRecord>,
    username: String,
    ip: IpAddr,
    delay: Duration,
    throttle: Arc<Throttle>,
}

impl std::fmt::Debug for LoginAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("username", &self.username)
            .field("ip", &self.ip)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl LoginAttempt {
    /// The server-first message to send.
    #[must_use]
    pub fn server_first(&self) -> &str {
        self.server.server_first()
    }

    /// The name the client claimed (unescaped; may not be a valid name).
    /// For logs, use `{:?}`: it comes from the network.
    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    /// How long to wait, by the throttle, before sending the answer to the
    /// client-final message, success or failure alike (so the wait itself
    /// tells nothing).
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Checks the client-final message and records the outcome in the
    /// throttle. On success returns the server-final message and the user.
    ///
    /// **Blocking** when the throttle's counts are in a shared database:
    /// async callers use `spawn_blocking`.
    pub fn finish(self, client_final: &str, now: Instant) -> Result<(String, UserRecord), AuthError> {
        let result = self.server.finish(client_final);
        match (result, self.user) {
            (Ok(server_final), Some(user)) => {
                self.throttle.record_success(&self.username, self.ip, now);
                Ok((server_final, user))
            }
            (Ok(_), None) => {
                // A proof that matches a fake verifier means the server secret
                // leaked; refuse all the same.
                self.throttle.record_failure(&self.username, self.ip, now);
                Err(AuthError::Failed)
            }
            (Err(e), _) => {
                self.throttle.record_failure(&self.username, self.ip, now);
                Err(match e {
                    ScramError::InvalidProof => AuthError::Failed,
                    other => AuthError::Protocol(other),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["a", "alice", "_x", "a.b-c_d", "0", &"a".repeat(32)] {
            assert_eq!(validate_username(ok), Ok(()), "{ok:?}");
        }
        let cases = [
            ("", UsernameError::Empty),
            (&*"a".repeat(33), UsernameError::TooLong),
            ("Alice", UsernameError::BadChar),
            ("a b", UsernameError::BadChar),
            ("a/b", UsernameError::BadChar),
            ("a\0", UsernameError::BadChar),
            ("\u{e9}", UsernameError::BadChar),
            (".a", UsernameError::BadStart),
            ("-a", UsernameError::BadStart),
            ("..", UsernameError::BadStart),
        ];
        for (name, want) in cases {
            assert_eq!(validate_username(name), Err(want), "{name:?}");
        }
    }

    #[test]
    fn verify_password_accepts_the_password_refuses_others_and_shares_the_throttle() {
        let store: Arc<dyn UserStore> = Arc::new(MemoryUserStore::default());
        let verifier = Verifier::new("right", b"salt-of-16-bytes", scram::MIN_ITERATIONS).unwrap();
        store.add(admin::new_user("alice", verifier)).unwrap();
        let throttle = Throttle::new(ThrottleConfig { free_failures: 1, ban_after: 4, ..ThrottleConfig::default() });
        let auth = Authenticator::new(store, throttle, [7; 32], scram::MIN_ITERATIONS);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(auth.verify_password("alice", "right", ip, now).result.unwrap().name, "alice");
        assert!(matches!(auth.verify_password("alice", "wrong", ip, now).result, Err(AuthError::Failed)));
        // An unknown user fails the same way.
        assert!(matches!(auth.verify_password("nobody", "right", ip, now).result, Err(AuthError::Failed)));
        // Past the free failure, answers are delayed; failures made by SCRAM
        // logins and password logins count together.
        assert!(auth.verify_password("alice", "wrong", ip, now).delay > Duration::ZERO);
        for _ in 0..4 {
            let _ = auth.verify_password("alice", "wrong", ip, now);
        }
        assert!(matches!(auth.verify_password("alice", "right", ip, now).result, Err(AuthError::Banned { .. })));
        assert!(matches!(auth.begin("n,,n=alice,r=abc", ip, now), Err(AuthError::Banned { .. })));
    }
}
