//! [`UserStore`] on a SQLite file.
//!
//! The server and the admin commands (`ferry user add`, ...) are separate
//! processes that open the same file, so the database runs in WAL mode (readers
//! do not block the writer) with a busy timeout (a writer waits for another
//! instead of failing at once). The SQL stays plain so a PostgreSQL store can
//! copy it.
//!
//! The file holds verifier strings (`SCRAM-SHA-256$...`), never passwords. It
//! is created with mode 0600 all the same: a verifier still allows an offline
//! dictionary attack.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, TransactionBehavior, params};

use super::store::{AuthorizedKey, StoreError, UserStore};
use super::{UserRecord, validate_username};
use ferry_proto::scram::Verifier;

/// The schema this build writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// How long a call waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY NOT NULL,
    verifier    TEXT NOT NULL,
    quota_bytes INTEGER,
    allow_exec  INTEGER NOT NULL DEFAULT 0,
    home        TEXT,
    created     INTEGER NOT NULL
);
";

/// Version 2 (issue 14): SSH public keys for the SFTP/ssh front end.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS ssh_keys (
    user        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key         TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    added       INTEGER NOT NULL,
    PRIMARY KEY (user, fingerprint)
);
";

/// Version 3 (issue 12): the per-user limit on files and directories.
const SCHEMA_V3: &str = "ALTER TABLE users ADD COLUMN max_files INTEGER;";

const COLUMNS: &str = "name, verifier, quota_bytes, allow_exec, home, created, max_files";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// A user store in a SQLite file. Cheap calls behind a std `Mutex`; they block,
/// so async callers use `spawn_blocking`.
#[derive(Debug)]
pub struct SqliteUserStore {
    conn: Mutex<Connection>,
}

impl SqliteUserStore {
    /// Opens (creating it with mode 0600 if missing) the user database at
    /// `path`, switches it to WAL mode and creates or checks the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so its mode is 0600 from the first byte;
        // SQLite gives the -wal and -shm files the same mode.
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "user database is not in WAL mode");
        }
        migrate(&mut conn)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: every
        // write is a single statement or a transaction SQLite rolls back.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an `UPDATE ... WHERE name = ?1` and maps "no row" to NotFound.
    fn update(&self, name: &str, sql: &str, value: &dyn rusqlite::ToSql) -> Result<(), StoreError> {
        let n = self.conn().execute(sql, params![name, value])?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock first, so two processes opening a fresh
    // file at once do not both try to create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::UnsupportedSchema { found: version, supported: SCHEMA_VERSION });
    }
    // Each step from the version found up to this build's.
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
    }
    if version < 3 {
        let has_column: bool =
            tx.query_row("SELECT COUNT(*) FROM pragma_table_info('users') WHERE name = 'max_files'", [], |r| r.get(0))?;
        if !has_column {
            tx.execute_batch(SCHEMA_V3)?;
        }
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// A row as the database returns it, before checking (the PostgreSQL
/// store reads the same columns).
pub(super) struct Row {
    pub(super) name: String,
    pub(super) verifier: String,
    pub(super) quota_bytes: Option<i64>,
    pub(super) allow_exec: bool,
    pub(super) home: Option<String>,
    pub(super) created: i64,
    pub(super) max_files: Option<i64>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            verifier: r.get(1)?,
            quota_bytes: r.get(2)?,
            allow_exec: r.get(3)?,
            home: r.get(4)?,
            created: r.get(5)?,
            max_files: r.get(6)?,
        })
    }

    pub(super) fn into_record(self) -> Result<UserRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { name: self.name.clone(), reason };
        let verifier: Verifier =
            self.verifier.parse().map_err(|e: ferry_proto::scram::ScramError| corrupt(e.to_string()))?;
        let quota_bytes = match self.quota_bytes {
            None => None,
            Some(q) => Some(u64::try_from(q).map_err(|_| corrupt("negative quota".into()))?),
        };
        Ok(UserRecord {
            name: self.name,
            verifier,
            quota_bytes,
            allow_exec: self.allow_exec,
            home: self.home.map(PathBuf::from),
            created: self.created,
            // Stored as i64; a negative value can only mean "unlimited" written by hand.
            max_files: self.max_files.map(|n| u64::try_from(n).unwrap_or(u64::MAX)),
        })
    }
}

pub(super) fn quota_to_sql(name: &str, quota: Option<u64>) -> Result<Option<i64>, StoreError> {
    quota
        .map(|q| {
            i64::try_from(q)
                .map_err(|_| StoreError::InvalidValue { name: name.to_owned(), reason: "quota above i64::MAX bytes" })
        })
        .transpose()
}

/// Unlimited (`u64::MAX`) is kept as -1: SQL integers are signed.
pub(super) fn files_to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(-1)
}

pub(super) fn home_to_sql(name: &str, home: Option<&Path>) -> Result<Option<String>, StoreError> {
    home.map(|h| {
        h.to_str()
            .map(str::to_owned)
            .ok_or(StoreError::InvalidValue { name: name.to_owned(), reason: "home directory path is not UTF-8" })
    })
    .transpose()
}

impl UserStore for SqliteUserStore {
    fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM users WHERE name = ?1"), [name], Row::read)
            .optional()?;
        row.map(Row::into_record).transpose()
    }

    fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))?;
        let rows = stmt.query_map([], Row::read)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(Row::into_record)).collect()
    }

    fn add(&self, user: UserRecord) -> Result<(), StoreError> {
        validate_username(&user.name)?;
        let quota = quota_to_sql(&user.name, user.quota_bytes)?;
        let home = home_to_sql(&user.name, user.home.as_deref())?;
        let result = self.conn().execute(
            &format!("INSERT INTO users ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                user.name,
                user.verifier.to_string(),
                quota,
                user.allow_exec,
                home,
                user.created,
                user.max_files.map(files_to_sql)
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                Err(StoreError::AlreadyExists(user.name))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_verifier(&self, name: &str, verifier: Verifier) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET verifier = ?2 WHERE name = ?1", &verifier.to_string())
    }

    fn set_quota(&self, name: &str, quota_bytes: Option<u64>) -> Result<(), StoreError> {
        let quota = quota_to_sql(name, quota_bytes)?;
        self.update(name, "UPDATE users SET quota_bytes = ?2 WHERE name = ?1", &quota)
    }

    fn set_allow_exec(&self, name: &str, allow: bool) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET allow_exec = ?2 WHERE name = ?1", &allow)
    }

    fn set_max_files(&self, name: &str, max_files: Option<u64>) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET max_files = ?2 WHERE name = ?1", &max_files.map(files_to_sql))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        tx.execute("DELETE FROM ssh_keys WHERE user = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn add_key(&self, name: &str, key: AuthorizedKey) -> Result<(), StoreError> {
        let conn = self.conn();
        let exists: Option<i64> =
            conn.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        if exists.is_none() {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        let result = conn.execute(
            "INSERT INTO ssh_keys (user, fingerprint, key, comment, added) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, key.fingerprint, key.key, key.comment, key.added],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                Err(StoreError::AlreadyExists(key.fingerprint))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn keys(&self, name: &str) -> Result<Vec<AuthorizedKey>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT fingerprint, key, comment, added FROM ssh_keys WHERE user = ?1 ORDER BY added, rowid")?;
        let rows = stmt.query_map([name], |r| {
            Ok(AuthorizedKey { fingerprint: r.get(0)?, key: r.get(1)?, comment: r.get(2)?, added: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn delete_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM ssh_keys WHERE user = ?1 AND fingerprint = ?2", params![name, fingerprint])?;
        if n == 0 {
            return Err(StoreError::NotFound(fingerprint.to_owned()));
        }
        Ok(())
    }
}
