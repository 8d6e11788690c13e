//! What every session shares: configuration, user store, authenticator,
//! quotas, TLS, admission counters and the shutdown signal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, SqliteUserStore, Throttle, ThrottleConfig, UserStore};
use crate::config::ServerConfig;
use crate::exec::ExecLimits;
use crate::listener::UnauthCounts;
use crate::quota::QuotaRegistry;
use crate::transfer::ActiveUploads;

pub struct Shared {
    pub config: ServerConfig,
    pub store: Arc<dyn UserStore>,
    pub authenticator: Arc<Authenticator>,
    pub quotas: QuotaRegistry,
    /// The TLS acceptor and the certificate's fingerprint; `None` when plaintext.
    pub tls: Option<(TlsAcceptor, String)>,
    pub connections: Arc<Semaphore>,
    pub refusals: Arc<Semaphore>,
    pub unauth: Arc<UnauthCounts>,
    pub session_ids: AtomicU64,
    pub exec: ExecLimits,
    pub uploads: Arc<ActiveUploads>,
    /// Open jails by home folder, shared by the sessions of one user.
    pub jails: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Weak<crate::vfs::Jail>>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// The outcome of preparing a data folder, for the caller to print.
pub struct Prepared {
    pub shared: Arc<Shared>,
    pub generated_certificate: bool,
    pub user_count: usize,
}

impl Shared {
    /// Opens (creating on first start) the data folder: database, secret,
    /// certificate and homes.
    pub fn prepare(mut config: ServerConfig) -> Result<Prepared> {
        config.validate()?;
        fit_connections_to_descriptors(&mut config);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        std::fs::create_dir_all(config.homes_dir())?;
        let store: Arc<dyn UserStore> = Arc::new(
            SqliteUserStore::open(&config.db_path())
                .with_context(|| format!("cannot open user database {}", config.db_path().display()))?,
        );
        let user_count = store.list().context("reading users")?.len();
        let secret = load_or_create_secret(&config.data_dir.join("server.secret"))?;
        let throttle = Throttle::new(ThrottleConfig {
            free_failures: config.auth.free_failures,
            max_delay: Duration::from_millis(config.auth.max_delay_ms),
            max_user_delay: Duration::from_millis(config.auth.max_delay_ms.min(2_000)),
            ban_after: config.auth.ban_after,
            ban_for: Duration::from_secs(config.auth.ban_secs),
            forget_after: Duration::from_secs(config.auth.ban_secs.max(600)),
            ..ThrottleConfig::default()
        });
        let authenticator =
            Arc::new(Authenticator::new(Arc::clone(&store), throttle, secret, config.auth.scram_iterations));
        let (tls, generated_certificate) = if config.insecure_plaintext {
            (None, false)
        } else {
            let id = crate::tls::load_or_generate(&config.data_dir)?;
            (Some((TlsAcceptor::from(id.config), id.fingerprint)), id.generated)
        };
        let shared = Shared {
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            refusals: Arc::new(Semaphore::new(64)),
            unauth: Arc::new(UnauthCounts::default()),
            session_ids: AtomicU64::new(0),
            exec: ExecLimits::new(config.exec.max_total),
            uploads: Arc::default(),
            jails: Default::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            quotas: QuotaRegistry::default(),
            store,
            authenticator,
            tls,
            config,
        };
        Ok(Prepared { shared: Arc::new(shared), generated_certificate, user_count })
    }
}

/// Descriptors a session holds: its socket. (Each user logged in adds two
/// more, the home and partial-upload folders, shared by their sessions.)
const FDS_PER_SESSION: u64 = 1;
/// Descriptors kept for listeners, the database, logs, blocking work and the
/// folders of the users logged in.
const FDS_RESERVED: u64 = 512;

/// Lowers `max_connections` to what the open-file limit can hold: past it,
/// accept fails and clients would wait in the backlog instead of being
/// refused (found by the load harness at 6,600 sessions under a 20,000
/// limit, when each session also held its own home handles).
fn fit_connections_to_descriptors(config: &mut ServerConfig) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(limit) = limit else { return };
    let fit = (limit.saturating_sub(FDS_RESERVED) / FDS_PER_SESSION).max(1) as usize;
    if config.limits.max_connections > fit {
        tracing::warn!(
            configured = config.limits.max_connections,
            fit,
            open_file_limit = limit,
            "limits.max_connections lowered to fit the open-file limit (raise it with ulimit -n or prlimit)"
        );
        config.limits.max_connections = fit;
    }
}

/// The server's private secret (for unknown users' stable fake salts), kept
/// in the data folder, readable by the owner only.
fn load_or_create_secret(path: &Path) -> Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&secret)?;
    f.sync_all()?;
    Ok(secret)
}
