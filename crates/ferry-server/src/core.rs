//! `Core`: what every front end shares (framed protocol now; SFTP and FTP
//! beside it): configuration, user store, authenticator, quotas, the open
//! homes, exec limits, the server's certificate, the shutdown signal,
//! admission (one gate for every front end) and the metrics. TLS acceptors belong to each
//! listener, not here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Weak;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Gate;
use crate::auth::{Authenticator, Throttle, ThrottleConfig, UserRecord, UserStore};
use crate::claims::ClaimLedger;
use crate::claims::postgres::PgClaimLedger;
use crate::config::{ServerConfig, StorageKind};
use crate::exec::ExecLimits;
use crate::home::{Home, HomeError, HomeSettings};
use crate::metrics::Metrics;
use crate::quota::QuotaRegistry;
use crate::quota::postgres::PgQuotaLedger;
use crate::storage::{FsStorage, Metered, S3Bucket, S3Credentials, Storage};

pub struct Core {
    pub config: ServerConfig,
    pub store: Arc<dyn UserStore>,
    pub authenticator: Arc<Authenticator>,
    pub quotas: QuotaRegistry,
    /// The server's certificate and its fingerprint; `None` when plaintext.
    pub tls: Option<(Arc<rustls::ServerConfig>, String)>,
    pub exec: ExecLimits,
    /// Seats for connections, on every front end (`admission.rs`).
    pub admission: Gate,
    /// Upload claims shared with the other servers (shared homes only).
    claims: Option<Arc<dyn ClaimLedger>>,
    /// Open homes by user, shared by all of a user's sessions.
    homes: tokio::sync::Mutex<HashMap<String, Weak<Home>>>,
    /// Where homes live (`[storage]`).
    pub storage: StorageBackend,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The server's metrics (`metrics.rs`), served by `monitor.rs`.
    pub metrics: Arc<Metrics>,
}

/// The backend of every home.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// A folder per user on the local disk.
    Local,
    /// A key prefix per user in one S3 bucket.
    S3(Arc<S3Bucket>),
}

impl StorageBackend {
    /// Homes are folders a remote command can run in.
    pub fn is_local(&self) -> bool {
        matches!(self, StorageBackend::Local)
    }
}

/// The outcome of preparing a data folder, for the caller to print.
pub struct Prepared {
    pub core: Arc<Core>,
    pub generated_certificate: bool,
    pub user_count: usize,
}

impl Core {
    /// Opens (creating on first start) the data folder: database, secret,
    /// certificate and homes.
    pub fn prepare(mut config: ServerConfig) -> Result<Prepared> {
        config.validate()?;
        fit_connections_to_descriptors(&mut config);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        std::fs::create_dir_all(config.homes_dir())?;
        let opened = crate::users::open_store(&config)?;
        let store = opened.store;
        let user_count = store.list().context("reading users")?.len();
        let storage = match config.storage.kind {
            StorageKind::Local => StorageBackend::Local,
            StorageKind::S3 => {
                // With a shared database, partial-upload states live there,
                // beside the quotas and claims; else in the bucket.
                let states = opened.database.as_ref().map(|db| {
                    Arc::new(crate::storage::s3::PgPartialStore::new(Arc::clone(db)))
                        as Arc<dyn crate::storage::s3::PartialStore>
                });
                StorageBackend::S3(S3Bucket::with_states(&config.storage, S3Credentials::from_env()?, states)?)
            }
        };
        if config.storage.kind == StorageKind::S3 {
            // A partial in S3 keeps SHA-256 hasher states only (BLAKE3's
            // cannot be serialised): offer what a resume can prove.
            config.transfer.hashes.retain(|a| *a == ferry_proto::hash::HashAlgo::Sha256);
        }
        let secret = match &opened.database {
            // One secret for all servers on the database: with one each,
            // comparing their answers would tell unknown names apart.
            Some(db) => crate::auth::postgres::shared_server_secret(db).context("reading the server secret")?,
            None => load_or_create_secret(&config.data_dir.join("server.secret"))?,
        };
        let throttle_config = ThrottleConfig {
            free_failures: config.auth.free_failures,
            max_delay: Duration::from_millis(config.auth.max_delay_ms),
            max_user_delay: Duration::from_millis(config.auth.max_delay_ms.min(2_000)),
            ban_after: config.auth.ban_after,
            ban_for: Duration::from_secs(config.auth.ban_secs),
            forget_after: Duration::from_secs(config.auth.ban_secs.max(600)),
            ..ThrottleConfig::default()
        };
        let throttle = match &opened.database {
            // Counted in the shared database: a flood spread over servers is
            // counted as one, and a ban holds on every server (issue 16).
            Some(db) => Throttle::with_counts(
                throttle_config,
                Arc::new(crate::auth::postgres::PgFailureCounts::new(Arc::clone(db))),
            ),
            None => Throttle::new(throttle_config),
        };
        let authenticator =
            Arc::new(Authenticator::new(Arc::clone(&store), throttle, secret, config.auth.scram_iterations));
        let (tls, generated_certificate) = if config.insecure_plaintext {
            (None, false)
        } else {
            let id = crate::tls::load_or_generate(&config.data_dir)?;
            (Some((id.config, id.fingerprint)), id.generated)
        };
        let (quotas, claims) = match (&opened.database, &storage) {
            // Shared homes and a shared database: so are the quota and the
            // upload claims (issue 16). With a disk each, they stay per server.
            (Some(db), StorageBackend::S3(_)) => {
                let claims: Arc<dyn ClaimLedger> = PgClaimLedger::start(Arc::clone(db));
                (QuotaRegistry::shared(PgQuotaLedger::start(Arc::clone(db))), Some(claims))
            }
            _ => (QuotaRegistry::default(), None),
        };
        let core = Core {
            exec: ExecLimits::new(config.exec.max_total),
            admission: Gate::new(config.limits.max_connections, config.limits.max_unauthenticated_per_ip),
            homes: Default::default(),
            storage,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            quotas,
            claims,
            metrics: Arc::new(Metrics::new()),
            store,
            authenticator,
            tls,
            config,
        };
        Ok(Prepared { core: Arc::new(core), generated_certificate, user_count })
    }

    /// Checks that the storage is usable before anything is served: an S3
    /// bucket that is missing or a key it refuses stops the start, naming which.
    pub async fn check_storage(&self) -> Result<()> {
        if let StorageBackend::S3(bucket) = &self.storage {
            bucket.check().await?;
            tracing::info!(bucket = %self.config.storage.bucket, prefix = %bucket.settings().prefix, "homes are kept in S3");
        }
        Ok(())
    }

    /// Waits (at most `grace`) for the storage's work in the background:
    /// on S3, the tails of unfinished uploads being stored for a resume.
    pub async fn drain_storage(&self, grace: Duration) {
        if let StorageBackend::S3(bucket) = &self.storage
            && tokio::time::timeout(grace, bucket.drain()).await.is_err()
        {
            tracing::warn!("grace period over: some unfinished uploads resume from their last part");
        }
    }

    /// The user's home, shared by every session open on it (one storage
    /// handle per home, not per session). At its first opening after a
    /// start, its usage is measured for the quota and expired partials go.
    pub async fn open_home(&self, user: &UserRecord) -> Result<Arc<Home>, HomeError> {
        let mut homes = self.homes.lock().await;
        if let Some(home) = homes.get(&user.name).and_then(Weak::upgrade) {
            // The quota is already tracked; this only applies a changed limit.
            let used = home.usage().used;
            let files = home.usage().files;
            let max_files = self.max_files(user);
            self.quotas
                .get_or_scan::<HomeError>(&user.name, user.quota_bytes, max_files, async { Ok((used, files)) })
                .await?;
            return Ok(home);
        }
        let storage = self.open_storage(user).await?;
        let quota = self
            .quotas
            .get_or_scan::<HomeError>(&user.name, user.quota_bytes, self.max_files(user), async {
                Ok(storage.usage().await.map(|a| (a.bytes, a.entries()))?)
            })
            .await?;
        let settings = HomeSettings {
            fsync: self.config.transfer.fsync,
            partial_expiry: Duration::from_secs(self.config.transfer.partial_expiry_secs),
            // The first offered (BLAKE3 unless configured otherwise); SHA-256
            // is always offered, so the fallback is never reached.
            upload_algo: self.config.transfer.hashes.first().copied().unwrap_or_default(),
        };
        let mut home = Home::new(storage, quota, settings).with_metrics(self.metrics.home());
        if let Some(claims) = &self.claims {
            home = home.with_shared_claims(Arc::clone(claims), &user.name);
        }
        let home = Arc::new(home);
        // After the scan, so that the bytes of expired partials leave the
        // usage whether it was just measured or already tracked.
        home.expire_partials().await;
        homes.retain(|_, weak| weak.strong_count() > 0);
        homes.insert(user.name.clone(), Arc::downgrade(&home));
        Ok(home)
    }

    /// The user's limit on files and directories (`None`: unlimited).
    fn max_files(&self, user: &UserRecord) -> Option<u64> {
        match user.max_files.unwrap_or(self.config.limits.max_files_per_user) {
            0 | u64::MAX => None,
            n => Some(n),
        }
    }

    /// The user's storage, measured (`storage/metered.rs`) whatever the backend.
    async fn open_storage(&self, user: &UserRecord) -> Result<Arc<dyn Storage>, HomeError> {
        let storage: Arc<dyn Storage> = match &self.storage {
            StorageBackend::S3(bucket) => Arc::new(bucket.home(&user.name)),
            StorageBackend::Local => {
                let path = crate::users::home_of(&self.config, user);
                let storage = tokio::task::spawn_blocking(move || FsStorage::open(&path))
                    .await
                    .map_err(|_| crate::vfs::VfsError::Io(std::io::Error::other("cannot open the home")))??;
                Arc::new(storage)
            }
        };
        Ok(Arc::new(Metered::new(storage, self.metrics.storage())))
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
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    crate::tls::write_private(path, &secret)?;
    Ok(secret)
}
