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
        V: tokio_postgres::types::ToSql + Sync + Send + 'static,
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
