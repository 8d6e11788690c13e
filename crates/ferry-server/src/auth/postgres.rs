//! [`UserStore`] on PostgreSQL (issue 16): the users and SSH keys of several
//! ferry servers in one database (`migrations/postgres/0001_users.sql`).
//!
//! Every call is one statement, so no call needs a transaction of its own:
//! a user's keys go with the user (`ON DELETE CASCADE`), and a key for a
//! missing user is refused by its foreign key. Calls block (see [`crate::pg`]).

use std::sync::Arc;

use tokio_postgres::error::SqlState;

use super::sqlite::{Row, files_to_sql, home_to_sql, quota_to_sql};
use super::store::{AuthorizedKey, StoreError, UserStore};
use super::{UserRecord, validate_username};
use crate::pg::{Database, PgError};
use ferry_proto::scram::Verifier;

const COLUMNS: &str = "name, verifier, quota_bytes, allow_exec, home, created, max_files";

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Users and SSH keys in a shared PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgUserStore {
    db: Arc<Database>,
}

impl PgUserStore {
    #[must_use]
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    /// Runs an `UPDATE ... WHERE name = $1` and maps "no row" to NotFound.
    fn update<V>(&self, name: &str, sql: &'static str, value: V) -> Result<(), StoreError>
    where
        V: tokio_postgres::types::ToSql + Clone + Sync + Send + 'static,
    {
        let owned = name.to_owned();
        let n = self.db.block(move |c| async move { c.execute(sql, &[&owned, &value]).await })?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        Ok(())
    }
}

fn read_row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let get = || -> Result<Row, tokio_postgres::Error> {
        Ok(Row {
            name: r.try_get(0)?,
            verifier: r.try_get(1)?,
            quota_bytes: r.try_get(2)?,
            allow_exec: r.try_get(3)?,
            home: r.try_get(4)?,
            created: r.try_get(5)?,
            max_files: r.try_get(6)?,
        })
    };
    get().map_err(|e| StoreError::from(PgError::from(e)))
}

fn read_key(r: &tokio_postgres::Row) -> Result<AuthorizedKey, StoreError> {
    let get = || -> Result<AuthorizedKey, tokio_postgres::Error> {
        Ok(AuthorizedKey {
            fingerprint: r.try_get(0)?,
            key: r.try_get(1)?,
            comment: r.try_get(2)?,
            added: r.try_get(3)?,
        })
    };
    get().map_err(|e| StoreError::from(PgError::from(e)))
}

impl UserStore for PgUserStore {
    fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        let row = self.db.block(move |c| async move {
            c.query_opt(&format!("SELECT {COLUMNS} FROM users WHERE name = $1"), &[&name]).await
        })?;
        row.as_ref().map(|r| read_row(r)?.into_record()).transpose()
    }

    fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self
            .db
            .block(|c| async move { c.query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"), &[]).await })?;
        rows.iter().map(|r| read_row(r)?.into_record()).collect()
    }

    fn add(&self, user: UserRecord) -> Result<(), StoreError> {
        validate_username(&user.name)?;
        let quota = quota_to_sql(&user.name, user.quota_bytes)?;
        let home = home_to_sql(&user.name, user.home.as_deref())?;
        let max_files = user.max_files.map(files_to_sql);
        let (name, verifier, allow_exec, created) =
            (user.name.clone(), user.verifier.to_string(), user.allow_exec, user.created);
        let result = self.db.block(move |c| async move {
            c.execute(
                &format!("INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[&name, &verifier, &quota, &allow_exec, &home, &created, &max_files],
            )
            .await
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::AlreadyExists(user.name)),
            Err(e) => Err(e.into()),
        }
    }

    fn set_verifier(&self, name: &str, verifier: Verifier) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET verifier = $2 WHERE name = $1", verifier.to_string())
    }

    fn set_quota(&self, name: &str, quota_bytes: Option<u64>) -> Result<(), StoreError> {
        let quota = quota_to_sql(name, quota_bytes)?;
        self.update(name, "UPDATE users SET quota_bytes = $2 WHERE name = $1", quota)
    }

    fn set_allow_exec(&self, name: &str, allow: bool) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET allow_exec = $2 WHERE name = $1", allow)
    }

    fn set_max_files(&self, name: &str, max_files: Option<u64>) -> Result<(), StoreError> {
        self.update(name, "UPDATE users SET max_files = $2 WHERE name = $1", max_files.map(files_to_sql))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        // The user's keys go with it (ON DELETE CASCADE).
        let owned = name.to_owned();
        let n =
            self.db.block(move |c| async move { c.execute("DELETE FROM users WHERE name = $1", &[&owned]).await })?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    fn add_key(&self, name: &str, key: AuthorizedKey) -> Result<(), StoreError> {
        let owned = name.to_owned();
        let k = key.clone();
        let result = self.db.block(move |c| async move {
            c.execute(
                "INSERT INTO ssh_keys (username, fingerprint, key, comment, added) VALUES ($1, $2, $3, $4, $5)",
                &[&owned, &k.fingerprint, &k.key, &k.comment, &k.added],
            )
            .await
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(StoreError::NotFound(name.to_owned())),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::AlreadyExists(key.fingerprint)),
            Err(e) => Err(e.into()),
        }
    }

    fn keys(&self, name: &str) -> Result<Vec<AuthorizedKey>, StoreError> {
        let name = name.to_owned();
        let rows = self.db.block(move |c| async move {
            c.query(
                "SELECT fingerprint, key, comment, added FROM ssh_keys WHERE username = $1 ORDER BY added, seq",
                &[&name],
            )
            .await
        })?;
        rows.iter().map(read_key).collect()
    }

    fn delete_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        let (owned, fp) = (name.to_owned(), fingerprint.to_owned());
        let n = self.db.block(move |c| async move {
            c.execute("DELETE FROM ssh_keys WHERE username = $1 AND fingerprint = $2", &[&owned, &fp]).await
        })?;
        if n == 0 {
            return Err(StoreError::NotFound(fingerprint.to_owned()));
        }
        Ok(())
    }
}

/// The server secret all servers on `db` share (see
/// [`super::Authenticator::new`]): made by the first server to start,
/// read by the others. Blocking.
pub fn shared_server_secret(db: &Database) -> Result<[u8; 32], StoreError> {
    let fresh = super::admin::generate_server_secret().map_err(|e| StoreError::Backend(Box::new(e)))?;
    let value: Vec<u8> = db.block(move |c| async move {
        let fresh = fresh.to_vec();
        c.execute(
            "INSERT INTO server_settings (name, value) VALUES ('server_secret', $1) ON CONFLICT (name) DO NOTHING",
            &[&fresh],
        )
        .await?;
        c.query_one("SELECT value FROM server_settings WHERE name = 'server_secret'", &[]).await?.try_get(0)
    })?;
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| StoreError::Corrupt { name: "server_secret".into(), reason: "not 32 bytes".into() })
}

/// Login failure counts and bans in the shared database
/// (`migrations/postgres/0002_login_failures.sql`), so that a flood spread
/// over several servers is counted as one and a ban made on one server holds
/// on all (issue 16). Times are the database's clock: servers whose clocks
/// differ still agree on when a ban ends. Each call is one statement, so an
/// address's count and its ban change together even when servers count at
/// the same moment. Blocking.
#[derive(Debug)]
pub struct PgFailureCounts {
    db: Arc<Database>,
    /// When this process last removed forgotten counters.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
    /// Bans this server has seen, until they end: a ban is never lifted
    /// early, so a banned address's flood is refused without a query each
    /// (measured: a banned flood had halved the legitimate logins/s).
    bans: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// How often a server removes counters that are forgotten and not banned.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The most bans a server remembers locally; past it, the database answers.
const MAX_CACHED_BANS: usize = 10_000;

impl PgFailureCounts {
    #[must_use]
    pub fn new(db: Arc<Database>) -> Self {
        Self { db, last_sweep: std::sync::Mutex::new(None), bans: std::sync::Mutex::default() }
    }

    fn bans(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, std::time::Instant>> {
        self.bans.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How much longer `ip` is banned, by what this server has seen.
    fn cached_ban(&self, ip: std::net::IpAddr) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let mut bans = self.bans();
        match bans.get(&ip) {
            Some(&until) if until > now => Some(until - now),
            Some(_) => {
                bans.remove(&ip);
                None
            }
            None => None,
        }
    }

    fn remember_ban(&self, ip: std::net::IpAddr, remaining: std::time::Duration) {
        let now = std::time::Instant::now();
        let mut bans = self.bans();
        if bans.len() >= MAX_CACHED_BANS {
            bans.retain(|_, until| *until > now);
        }
        if bans.len() < MAX_CACHED_BANS {
            bans.insert(ip, now + remaining);
        }
    }

    /// Whether this call should also sweep (at most once a minute per server).
    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Keys as bytes: a name from the network may hold any byte, and TEXT
/// refuses NUL. A pair is the address, a NUL, then the name (an address
/// never holds a NUL, so the split is unambiguous).
fn failure_keys(user: &str, ip: std::net::IpAddr) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let addr = ip.to_string().into_bytes();
    let mut pair = addr.clone();
    pair.push(0);
    pair.extend_from_slice(user.as_bytes());
    (user.as_bytes().to_vec(), addr, pair)
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

impl super::throttle::FailureCounts for PgFailureCounts {
    fn standing(
        &self,
        user: &str,
        ip: std::net::IpAddr,
        _now: std::time::Instant,
        config: &super::ThrottleConfig,
    ) -> Result<super::Standing, StoreError> {
        if let Some(remaining) = self.cached_ban(ip) {
            return Ok(super::Standing { banned: Some(remaining), ..super::Standing::default() });
        }
        let (user, addr, _) = failure_keys(user, ip);
        let forget = secs(config.forget_after);
        let (ip_failures, banned_secs, user_failures) = self.db.block(move |c| async move {
            let row = c
                .query_one(
                    "SELECT
                        COALESCE(max(failures) FILTER (WHERE scope = 'addr'
                            AND last_failure > now() - $3::float8 * interval '1 second'), 0),
                        COALESCE(max(extract(epoch FROM banned_until - now())) FILTER (WHERE scope = 'addr'), 0)::float8,
                        COALESCE(max(failures) FILTER (WHERE scope = 'user'
                            AND last_failure > now() - $3::float8 * interval '1 second'), 0)
                     FROM login_failures
                     WHERE (scope = 'addr' AND key = $1) OR (scope = 'user' AND key = $2)",
                    &[&addr, &user, &forget],
                )
                .await?;
            Ok((row.try_get::<_, i32>(0)?, row.try_get::<_, f64>(1)?, row.try_get::<_, i32>(2)?))
        })?;
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        let banned = (banned_secs > 0.0).then(|| std::time::Duration::from_secs_f64(banned_secs.min(1e9)));
        if let Some(remaining) = banned {
            self.remember_ban(ip, remaining);
        }
        Ok(super::Standing { ip_failures: count(ip_failures), banned, user_failures: count(user_failures) })
    }

    fn add_failure(
        &self,
        user: &str,
        ip: std::net::IpAddr,
        _now: std::time::Instant,
        config: &super::ThrottleConfig,
    ) -> Result<Option<u32>, StoreError> {
        let (user, addr, pair) = failure_keys(user, ip);
        let ban_after = i32::try_from(config.ban_after).unwrap_or(i32::MAX);
        let (ban_for, forget) = (secs(config.ban_for), secs(config.forget_after));
        let sweep = self.sweep_due();
        let banned = self.db.block(move |c| async move {
            // A counter past `forget` starts again at one; the address is
            // banned when its count reaches `ban_after` and no ban runs.
            let rows = c
                .query(
                    "INSERT INTO login_failures AS f (scope, key, failures, last_failure, banned_until)
                     VALUES ('user', $1, 1, now(), NULL),
                            ('pair', $2, 1, now(), NULL),
                            ('addr', $3, 1, now(),
                             CASE WHEN 1 >= $4::int4 THEN now() + $5::float8 * interval '1 second' END)
                     ON CONFLICT (scope, key) DO UPDATE SET
                        failures = CASE WHEN f.last_failure <= now() - $6::float8 * interval '1 second' THEN 1
                                        ELSE LEAST(f.failures, 2147483646) + 1 END,
                        last_failure = now(),
                        banned_until = CASE
                            WHEN f.scope <> 'addr' OR f.banned_until > now() THEN f.banned_until
                            WHEN (CASE WHEN f.last_failure <= now() - $6::float8 * interval '1 second' THEN 1
                                       ELSE LEAST(f.failures, 2147483646) + 1 END) >= $4::int4
                                THEN now() + $5::float8 * interval '1 second'
                            ELSE f.banned_until END
                     RETURNING scope, failures,
                        COALESCE(banned_until = now() + $5::float8 * interval '1 second', FALSE)",
                    &[&user, &pair, &addr, &ban_after, &ban_for, &forget],
                )
                .await?;
            if sweep {
                c.execute(
                    "DELETE FROM login_failures
                     WHERE last_failure <= now() - $1::float8 * interval '1 second'
                       AND (banned_until IS NULL OR banned_until <= now())",
                    &[&forget],
                )
                .await?;
            }
            let mut banned = None;
            for row in rows {
                let (scope, failures, newly): (String, i32, bool) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if scope == "addr" && newly {
                    banned = Some(u32::try_from(failures).unwrap_or(0));
                }
            }
            Ok(banned)
        })?;
        Ok(banned)
    }

    fn forgive(
        &self,
        user: &str,
        ip: std::net::IpAddr,
        _now: std::time::Instant,
        config: &super::ThrottleConfig,
    ) -> Result<(), StoreError> {
        let (user, addr, pair) = failure_keys(user, ip);
        let forget = secs(config.forget_after);
        self.db.block(move |c| async move {
            c.execute(
                "WITH u AS (DELETE FROM login_failures WHERE scope = 'user' AND key = $1),
                      p AS (DELETE FROM login_failures WHERE scope = 'pair' AND key = $2
                            RETURNING CASE WHEN last_failure > now() - $4::float8 * interval '1 second'
                                           THEN failures ELSE 0 END AS n)
                 UPDATE login_failures
                 SET failures = GREATEST(failures - COALESCE((SELECT sum(n) FROM p), 0), 0)
                 WHERE scope = 'addr' AND key = $3",
                &[&user, &pair, &addr, &forget],
            )
            .await
        })?;
        Ok(())
    }
}
