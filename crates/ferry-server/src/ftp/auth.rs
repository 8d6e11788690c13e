//! FTP login through the core: `USER`/`PASS` checked by the same
//! `verify_password` as SFTP, throttled and banned together with the framed
//! protocol's SCRAM logins (one failure count per address). Anonymous login
//! is refused, and so is any password sent in the clear when TLS is required.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::oneshot;
use unftp_core::auth::{
    AuthenticationError, Authenticator, ChannelEncryptionState, Credentials, Principal, UserDetailError,
    UserDetailProvider,
};

use super::storage::FtpUser;
use crate::auth::AuthError;
use crate::core::Core;
use crate::metrics::Frontend;

/// Checks `USER`/`PASS` against the user store.
pub struct FtpAuthenticator {
    pub core: Arc<Core>,
    /// Refuse a password on a control connection without TLS (belt and
    /// braces: libunftp already answers 534 before `PASS`).
    pub require_tls: bool,
}

impl std::fmt::Debug for FtpAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpAuthenticator").field("require_tls", &self.require_tls).finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for FtpAuthenticator {
    async fn authenticate(&self, username: &str, creds: &Credentials) -> Result<Principal, AuthenticationError> {
        if username.eq_ignore_ascii_case("anonymous") || username.eq_ignore_ascii_case("ftp") {
            return Err(AuthenticationError::BadUser);
        }
        if self.require_tls && creds.command_channel_security != ChannelEncryptionState::Tls {
            return Err(AuthenticationError::new("a password needs TLS (AUTH TLS) first"));
        }
        let Some(password) = creds.password.clone() else { return Err(AuthenticationError::BadPassword) };
        let auth = Arc::clone(&self.core.authenticator);
        let (name, ip) = (username.to_string(), creds.source_ip);
        // PBKDF2 and the user store block: off the runtime.
        let outcome = tokio::task::spawn_blocking(move || auth.verify_password(&name, &password, ip, Instant::now()))
            .await
            .map_err(|e| AuthenticationError::with_source("login check failed", e))?;
        // The throttle's delay applies to success and failure alike.
        tokio::time::sleep(outcome.delay).await;
        self.core.metrics.login(Frontend::Ftp, &outcome.result);
        match outcome.result {
            Ok(user) => {
                tracing::info!(user = %user.name, %ip, "ftp login");
                Ok(Principal { username: user.name })
            }
            Err(AuthError::Banned { remaining }) => {
                tracing::warn!(%ip, remaining_secs = remaining.as_secs(), "ftp login from a banned address");
                Err(AuthenticationError::IpDisallowed)
            }
            Err(AuthError::Failed) => {
                tracing::info!(%ip, "ftp login failed");
                Err(AuthenticationError::BadPassword)
            }
            Err(e) => Err(AuthenticationError::with_source("login failed", e)),
        }
    }
}

/// Turns the authenticated name into an [`FtpUser`] holding the user's
/// home, opened (or shared) through the core. One per control connection:
/// the first user it provides is that connection's login, which it
/// reports to the front end (which then lifts the login deadline and the
/// unauthenticated count).
pub struct FtpUsers {
    core: Arc<Core>,
    logged_in: Mutex<Option<oneshot::Sender<()>>>,
}

impl FtpUsers {
    pub fn new(core: Arc<Core>, logged_in: oneshot::Sender<()>) -> FtpUsers {
        FtpUsers { core, logged_in: Mutex::new(Some(logged_in)) }
    }
}

impl std::fmt::Debug for FtpUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpUsers").finish_non_exhaustive()
    }
}

#[async_trait]
impl UserDetailProvider for FtpUsers {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        let store = Arc::clone(self.core.authenticator.store());
        let name = principal.username.clone();
        let record = tokio::task::spawn_blocking(move || store.get(&name))
            .await
            .map_err(|e| UserDetailError::ImplPropagated("user lookup failed".into(), Some(Box::new(e))))?
            .map_err(|e| UserDetailError::ImplPropagated("user store unavailable".into(), Some(Box::new(e))))?
            .ok_or_else(|| UserDetailError::UserNotFound { username: principal.username.clone() })?;
        let home = self
            .core
            .open_home(&record)
            .await
            .map_err(|e| UserDetailError::ImplPropagated("cannot open the home".into(), Some(Box::new(e))))?;
        if let Some(tx) = self.logged_in.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        Ok(FtpUser { name: record.name, home, metrics: Arc::clone(&self.core.metrics) })
    }
}
