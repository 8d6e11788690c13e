//! The PostgreSQL database that several ferry servers share (issue 16):
//! users, SSH keys, the server secret and login failure counts
//! (`[users] kind = "postgres"`, URL in `FERRY_DATABASE_URL`).
//!
//! The stores' traits are blocking (the server already calls them through
//! `spawn_blocking`, and `ferry user ...` from plain code), while the client,
//! tokio-postgres, is async. So the client runs on a runtime of its own (one
//! thread, `ferry-pg`): a blocking call hands its future to that runtime and
//! waits on a channel. That works from any thread, a blocking-pool thread,
//! the CLI or a test, without tokio's "runtime inside a runtime" panic, and
//! the connections live as long as the [`Database`], not a caller's runtime.
//!
//! Statements are plain SQL with parameters (no compile-time checking
//! against a live database). Migrations are the SQL files in
//! `migrations/postgres/`, applied at open in one transaction under an
//! advisory lock, so servers starting together do not race.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// The environment variable that holds the database URL. Never the
/// configuration file: the URL carries a password.
pub const DATABASE_URL_ENV: &str = "FERRY_DATABASE_URL";

/// How long a connection attempt may take unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one call (statements and, if needed, a reconnect) may take: a
/// login never hangs on a stuck database.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections kept open. tokio-postgres pipelines the statements sent on
/// one connection; a few spread the load over server backends.
const CONNECTIONS: usize = 4;

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6665_7272_795f_6d31; // "ferry_m1"

/// The schema, in order. The version is the file's number.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_users", include_str!("../migrations/postgres/0001_users.sql")),
    (2, "0002_login_failures", include_str!("../migrations/postgres/0002_login_failures.sql")),
    (3, "0003_shared_homes", include_str!("../migrations/postgres/0003_shared_homes.sql")),
    (4, "0004_s3_partials", include_str!("../migrations/postgres/0004_s3_partials.sql")),
];

/// Why the database could not be used. The text names the database
/// (user, host, port, name) and never holds its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error(
        "[users] kind = \"postgres\" needs the database URL in {DATABASE_URL_ENV} (it is never read from the file)"
    )]
    MissingUrl,
    #[error("{DATABASE_URL_ENV} is not a PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the user database ({db}): {reason}")]
    Unreachable { db: String, reason: String },
    #[error("the user database ({db}) did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { db: String },
    /// The database's schema is newer than this build.
    #[error("the user database ({db}) has schema version {found}, newer than this build supports ({supported})")]
    NewerSchema { db: String, found: i32, supported: i32 },
    /// A statement failed; the text carries PostgreSQL's message.
    #[error("{}", chain(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("the database runtime stopped")]
    Stopped,
}

impl PgError {
    /// The SQLSTATE of a failed statement, e.g. a unique violation.
    #[must_use]
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            PgError::Query(e) => e.code(),
            _ => None,
        }
    }
}

/// An error and its causes on one line: tokio-postgres says "db error" and
/// keeps PostgreSQL's message in the source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A shared PostgreSQL database: a few connections, reopened when lost, on
/// a runtime of their own. Share it as `Arc<Database>`.
pub struct Database {
    inner: Arc<Inner>,
    /// Taken in `drop`, to stop without blocking the dropping thread.
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    config: Config,
    /// Names this process in rows it must renew (leases, claims).
    server_id: String,
    /// "PostgreSQL database "ferry" as ferry at 127.0.0.1:5432", for messages.
    name: String,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime blocks, which panics on an async thread.
            rt.shutdown_background();
        }
    }
}

/// 16 hex digits, random (or, without randomness, from the clock: an id
/// only needs to differ between servers).
fn random_id() -> String {
    let mut id = [0u8; 8];
    if getrandom::fill(&mut id).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        id.copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
    }
    hex::encode(id)
}

/// Says which database a URL points at, without its password.
fn describe(config: &Config) -> String {
    let db = config.get_dbname().or(config.get_user()).unwrap_or("?");
    let user = config.get_user().unwrap_or("?");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL database {db:?} as {user} at {host}:{port}, from {DATABASE_URL_ENV}")
}

impl Database {
    /// Connects to the database named by `FERRY_DATABASE_URL` and brings its
    /// schema up to date. Blocking.
    pub fn open_from_env() -> Result<Self, PgError> {
        let url = std::env::var(DATABASE_URL_ENV).map_err(|_| PgError::MissingUrl)?;
        Self::open(&url)
    }

    /// Connects to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`) and brings
    /// the schema up to date. Fails, naming the database, if it cannot be
    /// reached. Blocking.
    pub fn open(url: &str) -> Result<Self, PgError> {
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| PgError::BadUrl(chain(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ferry");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-pg")
            .enable_all()
            .build()
            .map_err(|e| PgError::Unreachable { db: describe(&config), reason: format!("no runtime: {e}") })?;
        let inner = Arc::new(Inner {
            server_id: random_id(),
            name: describe(&config),
            config,
            slots: (0..CONNECTIONS).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            handle: runtime.handle().clone(),
        });
        let db = Database { inner, runtime: Some(runtime) };
        let inner = Arc::clone(&db.inner);
        db.wait(async move {
            let mut client = inner.connect().await?;
            migrate(&mut client, &inner.name).await?;
            // Kept as the first pooled connection.
            *inner.slots[0].lock().await = Some(Arc::new(client));
            Ok(())
        })?;
        Ok(db)
    }

    /// This process's id among the servers on the database: rows it holds
    /// (quota leases, upload claims) carry it.
    #[must_use]
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// Which database this is, for messages (no password).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `call` with a connection and waits for it: **blocking**. The
    /// call is bounded by a timeout; a lost connection is reopened first.
    pub fn block<T, F, Fut>(&self, call: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.wait(async move { inner.call(call).await })
    }

    /// [`Self::block`] for async callers: the work still runs on the
    /// database's runtime.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.inner.handle.spawn(async move { inner.call(call).await }).await.map_err(|_| PgError::Stopped)?
    }

    /// Runs `work` every `period` on the database's runtime, for as long as
    /// both the database and `state` live (upkeep such as renewing leases).
    pub fn every<S, F, Fut>(self: &Arc<Self>, period: Duration, state: &Arc<S>, work: F)
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<Database>, Arc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (db, state) = (Arc::downgrade(self), Arc::downgrade(state));
        self.inner.handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let (Some(db), Some(state)) = (db.upgrade(), state.upgrade()) else { return };
                work(db, state).await;
            }
        });
    }

    /// Runs `work` on the database's runtime and waits on a channel.
    fn wait<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, PgError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| PgError::Stopped)?
    }
}

impl Inner {
    /// Runs `call` on a pooled connection. A connection found closed when
    /// used (the database restarted, an administrator ended it) is reopened
    /// and the call made once more: the statement never reached the server.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut + Clone,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let (slot, client) = self.client().await?;
            match call.clone()(client).await {
                Err(e) if connection_lost(&e) => {
                    tracing::debug!(db = %self.name, error = %chain(&e), "connection lost under a call; reopening");
                    Ok(call(self.reopen(slot).await?).await?)
                }
                result => Ok(result?),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, work).await.map_err(|_| PgError::Timeout { db: self.name.clone() })?
    }

    /// One of the pooled connections (round robin) and its slot; reopened
    /// if it was lost.
    async fn client(&self) -> Result<(usize, Arc<Client>), PgError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok((i, Arc::clone(client)));
        }
        let client = Arc::new(self.connect().await?);
        *slot = Some(Arc::clone(&client));
        Ok((i, client))
    }

    /// A new connection in slot `i`, whatever the old one says of itself.
    async fn reopen(&self, i: usize) -> Result<Arc<Client>, PgError> {
        let mut slot = self.slots[i].lock().await;
        let client = Arc::new(self.connect().await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn connect(&self) -> Result<Client, PgError> {
        let unreachable = |e: tokio_postgres::Error| PgError::Unreachable { db: self.name.clone(), reason: chain(&e) };
        let (client, connection) = self.config.connect(NoTls).await.map_err(unreachable)?;
        let name = self.name.clone();
        self.handle.spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(db = %name, error = %chain(&e), "PostgreSQL connection lost; reopened at next use");
            }
        });
        Ok(client)
    }
}

/// Whether a call failed because its connection is gone (closed, ended by
/// the server, broken socket) rather than because of its statement: such a
/// call is made once more on a new connection. A statement whose answer
/// was lost in flight may so run twice; every statement here is a single
/// one whose second run is harmless or refused (a duplicate user is
/// `AlreadyExists`, a failure counted twice only hastens a ban).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    let ended = [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW];
    e.is_closed()
        || e.code().is_some_and(|c| ended.contains(c))
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Applies the migrations this database lacks, all in one transaction
/// under an advisory lock: two servers starting at once take turns, and a
/// failed step leaves the schema as it was.
async fn migrate(client: &mut Client, db: &str) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ferry_migrations (
            version INTEGER PRIMARY KEY,
            name    TEXT NOT NULL,
            applied TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let found: Option<i32> = tx.query_one("SELECT max(version) FROM ferry_migrations", &[]).await?.get(0);
    let found = found.unwrap_or(0);
    let supported = MIGRATIONS.last().map_or(0, |m| m.0);
    if found > supported {
        return Err(PgError::NewerSchema { db: db.to_owned(), found, supported });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO ferry_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        tracing::info!(db, migration = name, "applied a database migration");
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_names_the_database_and_hides_the_password() {
        let config: Config = "postgres://ferry:s3cret-pw@127.0.0.1:5999/site".parse().unwrap();
        let text = describe(&config);
        assert!(text.contains("\"site\"") && text.contains("ferry") && text.contains("127.0.0.1:5999"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn an_unreachable_database_is_named_without_its_password() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = Database::open(&format!("postgres://ferry:s3cret-pw@127.0.0.1:{port}/site")).unwrap_err().to_string();
        assert!(err.contains("cannot reach the user database"), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("\"site\""), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Database::open("postgres://ferry:s3cret-pw@127.0.0.1:notaport/site").unwrap_err().to_string();
        assert!(err.contains(DATABASE_URL_ENV) && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*version).unwrap(), i + 1);
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }
}
