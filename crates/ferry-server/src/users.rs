//! User administration against a data folder (`ferry user ...`), and the
//! choice of user store (`[users] kind`). Works while the server runs: the
//! store is a SQLite database both processes open, or the PostgreSQL
//! database several servers share.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::auth::{
    AuthorizedKey, PgUserStore, SqliteUserStore, UserRecord, UserStore, hash_new_password, validate_username,
};
use crate::config::{ServerConfig, UsersKind};
use crate::pg::Database;

/// The user store `[users] kind` names, and the shared database behind it
/// when there is one (the server keeps more than users there).
pub struct OpenedStore {
    pub store: Arc<dyn UserStore>,
    pub database: Option<Arc<Database>>,
}

/// Opens the configured user store: `users.db` in the data folder, or the
/// PostgreSQL database in `FERRY_DATABASE_URL`. An unreachable database is
/// an error that names it (never with its password). Blocking.
pub fn open_store(config: &ServerConfig) -> Result<OpenedStore> {
    match config.users.kind {
        UsersKind::Sqlite => {
            let store = SqliteUserStore::open(&config.db_path())
                .with_context(|| format!("cannot open user database {}", config.db_path().display()))?;
            Ok(OpenedStore { store: Arc::new(store), database: None })
        }
        UsersKind::Postgres => {
            let db = Arc::new(Database::open_from_env()?);
            tracing::debug!(db = db.name(), "user database open");
            Ok(OpenedStore { store: Arc::new(PgUserStore::new(Arc::clone(&db))), database: Some(db) })
        }
    }
}

/// Where a user's files live on the host.
pub fn home_of(config: &ServerConfig, user: &UserRecord) -> PathBuf {
    match &user.home {
        Some(p) => p.clone(),
        None => config.homes_dir().join(&user.name),
    }
}

pub struct Admin {
    config: ServerConfig,
    store: Arc<dyn UserStore>,
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
        let store = open_store(&config)?.store;
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

    /// Adds an SSH public key (`ssh-ed25519 AAAA... comment`, one line of
    /// an `authorized_keys` or `.pub` file) for the SFTP/ssh front end.
    pub fn add_key(&self, name: &str, line: &str) -> Result<AuthorizedKey> {
        self.get(name)?;
        let key = parse_public_key(line)?;
        self.store.add_key(name, key.clone()).map_err(|e| match e {
            crate::auth::StoreError::AlreadyExists(fp) => anyhow::anyhow!("{name} already has the key {fp}"),
            e => e.into(),
        })?;
        Ok(key)
    }

    pub fn keys(&self, name: &str) -> Result<Vec<AuthorizedKey>> {
        self.get(name)?;
        Ok(self.store.keys(name)?)
    }

    pub fn delete_key(&self, name: &str, fingerprint: &str) -> Result<()> {
        self.get(name)?;
        self.store.delete_key(name, fingerprint).map_err(|e| match e {
            crate::auth::StoreError::NotFound(_) => anyhow::anyhow!("{name} has no key {fingerprint}"),
            e => e.into(),
        })
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}

/// Parses one public-key line (`TYPE BASE64 [COMMENT]`). Only algorithms the
/// SSH front end verifies are taken: Ed25519 and ECDSA (RSA is left out of
/// the build, RUSTSEC-2023-0071; DSA is obsolete).
pub fn parse_public_key(line: &str) -> Result<AuthorizedKey> {
    use russh::keys::{Algorithm, HashAlg, PublicKey};
    let line = line.trim();
    let key =
        PublicKey::from_openssh(line).map_err(|e| anyhow::anyhow!("not an OpenSSH public key ({e}): {line:.60}"))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        other => bail!("{} keys are not accepted; use ssh-keygen -t ed25519", other.as_str()),
    }
    let comment = line.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    let mut bare = key.clone();
    bare.set_comment("");
    let text = bare.to_openssh().map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    Ok(AuthorizedKey {
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        key: text.trim().to_string(),
        comment,
        added: crate::auth::admin::unix_now(),
    })
}
