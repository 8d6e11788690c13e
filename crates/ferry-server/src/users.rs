//! User administration against a data folder (`ferry user ...`). Works while
//! the server runs: the store is a SQLite database opened by both processes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::auth::{SqliteUserStore, UserRecord, UserStore, hash_new_password, validate_username};
use crate::config::ServerConfig;

/// Where a user's files live on the host.
pub fn home_of(config: &ServerConfig, user: &UserRecord) -> PathBuf {
    match &user.home {
        Some(p) => p.clone(),
        None => config.homes_dir().join(&user.name),
    }
}

pub struct Admin {
    config: ServerConfig,
    store: SqliteUserStore,
}

/// Changes to apply to a user; `None` leaves a setting as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    /// `Some(None)` means unlimited.
    pub quota: Option<Option<u64>>,
    pub allow_exec: Option<bool>,
    /// `Some(None)` means back to the server's default; `Some(Some(u64::MAX))` unlimited.
    pub max_files: Option<Option<u64>>,
}

impl Admin {
    pub fn open(config: ServerConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        let store = SqliteUserStore::open(&config.db_path())
            .with_context(|| format!("cannot open user database {}", config.db_path().display()))?;
        Ok(Admin { config, store })
    }

    pub fn add(
        &self,
        name: &str,
        password: &str,
        quota: Option<u64>,
        allow_exec: bool,
        home: Option<PathBuf>,
    ) -> Result<UserRecord> {
        validate_username(name).map_err(|e| anyhow::anyhow!("invalid user name {name:?}: {e}"))?;
        if password.is_empty() {
            bail!("the password must not be empty");
        }
        let verifier = hash_new_password(password, self.config.auth.scram_iterations)?;
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let record = UserRecord {
            name: name.to_string(),
            verifier,
            quota_bytes: quota,
            allow_exec,
            home,
            created,
            max_files: None,
        };
        let home_dir = home_of(&self.config, &record);
        self.store.add(record.clone())?;
        std::fs::create_dir_all(&home_dir).with_context(|| format!("cannot create home {}", home_dir.display()))?;
        Ok(record)
    }

    pub fn list(&self) -> Result<Vec<UserRecord>> {
        Ok(self.store.list()?)
    }

    pub fn get(&self, name: &str) -> Result<UserRecord> {
        self.store.get(name)?.ok_or_else(|| anyhow::anyhow!("no such user: {name}"))
    }

    pub fn passwd(&self, name: &str, password: &str) -> Result<()> {
        self.get(name)?;
        if password.is_empty() {
            bail!("the password must not be empty");
        }
        let verifier = hash_new_password(password, self.config.auth.scram_iterations)?;
        self.store.set_verifier(name, verifier)?;
        Ok(())
    }

    pub fn set(&self, name: &str, changes: UserChanges) -> Result<UserRecord> {
        self.get(name)?;
        if let Some(q) = changes.quota {
            self.store.set_quota(name, q)?;
        }
        if let Some(e) = changes.allow_exec {
            self.store.set_allow_exec(name, e)?;
        }
        if let Some(m) = changes.max_files {
            self.store.set_max_files(name, m)?;
        }
        self.get(name)
    }

    /// Removes the user; their home stays unless `remove_home`.
    pub fn delete(&self, name: &str, remove_home: bool) -> Result<()> {
        let record = self.get(name)?;
        self.store.delete(name)?;
        if remove_home {
            let home = home_of(&self.config, &record);
            std::fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
        }
        Ok(())
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}
