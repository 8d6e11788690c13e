//! The user store: a trait, its error type, and an in-memory implementation
//! for tests. [`super::SqliteUserStore`] is the persistent one.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{UserRecord, UsernameError, validate_username};
use ferry_proto::scram::Verifier;

/// Why a user store call failed. Never holds a password or a verifier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("user {0:?} already exists")]
    AlreadyExists(String),
    #[error("no such user {0:?}")]
    NotFound(String),
    #[error(transparent)]
    InvalidName(#[from] UsernameError),
    /// A value the store cannot hold, e.g. a quota above `i64::MAX` bytes or a
    /// home directory that is not UTF-8.
    #[error("invalid value for user {name:?}: {reason}")]
    InvalidValue { name: String, reason: &'static str },
    /// A stored row that does not parse (bad verifier string, negative quota).
    #[error("corrupt record for user {name:?}: {reason}")]
    Corrupt { name: String, reason: String },
    /// The database was written by a newer ferry.
    #[error("user database schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
    #[error("user database: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("user database file: {0}")]
    Io(#[from] std::io::Error),
}

/// Where users live. Object safe: the server holds an `Arc<dyn UserStore>`.
///
/// Calls may block (disk, network): async callers go through
/// `tokio::task::spawn_blocking`.
pub trait UserStore: Send + Sync {
    /// The user called `name`, if any.
    fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// All users, sorted by name.
    fn list(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Adds a user; [`StoreError::AlreadyExists`] if the name is taken,
    /// [`StoreError::InvalidName`] if [`validate_username`] refuses it.
    fn add(&self, user: UserRecord) -> Result<(), StoreError>;
    /// Replaces the verifier (a password change). [`StoreError::NotFound`] if no such user.
    fn set_verifier(&self, name: &str, verifier: Verifier) -> Result<(), StoreError>;
    /// Sets the quota; `None` is unlimited. [`StoreError::NotFound`] if no such user.
    fn set_quota(&self, name: &str, quota_bytes: Option<u64>) -> Result<(), StoreError>;
    /// Allows or forbids `exec`. [`StoreError::NotFound`] if no such user.
    fn set_allow_exec(&self, name: &str, allow: bool) -> Result<(), StoreError>;
    /// Sets the limit on files and directories; `None` is the server's
    /// default, `Some(u64::MAX)` unlimited.
    fn set_max_files(&self, name: &str, max_files: Option<u64>) -> Result<(), StoreError>;
    /// Removes a user (and their SSH keys). [`StoreError::NotFound`] if no such user.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Adds an SSH public key to a user; [`StoreError::AlreadyExists`] if
    /// the user has a key with the same fingerprint.
    fn add_key(&self, name: &str, key: AuthorizedKey) -> Result<(), StoreError>;
    /// The user's SSH public keys, in the order they were added.
    fn keys(&self, name: &str) -> Result<Vec<AuthorizedKey>, StoreError>;
    /// Removes the user's key with this fingerprint; [`StoreError::NotFound`]
    /// if there is none.
    fn delete_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError>;
}

/// An SSH public key a user may log in with (SFTP, scp, ssh). The store
/// keeps it as text; `users::Admin` parses and checks it before adding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// `SHA256:<base64, no padding>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key in OpenSSH form, without comment: `ssh-ed25519 AAAA...`.
    pub key: String,
    pub comment: String,
    /// When it was added, Unix seconds.
    pub added: i64,
}

/// A user store in memory, for tests and throwaway servers.
#[derive(Debug, Default)]
pub struct MemoryUserStore {
    users: Mutex<BTreeMap<String, UserRecord>>,
    keys: Mutex<BTreeMap<String, Vec<AuthorizedKey>>>,
}

impl MemoryUserStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with_user<T>(&self, name: &str, f: impl FnOnce(&mut UserRecord) -> T) -> Result<T, StoreError> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.get_mut(name).map(f).ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }
}

impl UserStore for MemoryUserStore {
    fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(users.get(name).cloned())
    }

    fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(users.values().cloned().collect())
    }

    fn add(&self, user: UserRecord) -> Result<(), StoreError> {
        validate_username(&user.name)?;
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.contains_key(&user.name) {
            return Err(StoreError::AlreadyExists(user.name));
        }
        users.insert(user.name.clone(), user);
        Ok(())
    }

    fn set_verifier(&self, name: &str, verifier: Verifier) -> Result<(), StoreError> {
        self.with_user(name, |u| u.verifier = verifier)
    }

    fn set_quota(&self, name: &str, quota_bytes: Option<u64>) -> Result<(), StoreError> {
        self.with_user(name, |u| u.quota_bytes = quota_bytes)
    }

    fn set_allow_exec(&self, name: &str, allow: bool) -> Result<(), StoreError> {
        self.with_user(name, |u| u.allow_exec = allow)
    }

    fn set_max_files(&self, name: &str, max_files: Option<u64>) -> Result<(), StoreError> {
        self.with_user(name, |u| u.max_files = max_files)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.remove(name).map(drop).ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        Ok(())
    }

    fn add_key(&self, name: &str, key: AuthorizedKey) -> Result<(), StoreError> {
        self.with_user(name, |_| ())?;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let list = keys.entry(name.to_owned()).or_default();
        if list.iter().any(|k| k.fingerprint == key.fingerprint) {
            return Err(StoreError::AlreadyExists(key.fingerprint));
        }
        list.push(key);
        Ok(())
    }

    fn keys(&self, name: &str) -> Result<Vec<AuthorizedKey>, StoreError> {
        self.with_user(name, |_| ())?;
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.get(name).cloned().unwrap_or_default())
    }

    fn delete_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.with_user(name, |_| ())?;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let list = keys.entry(name.to_owned()).or_default();
        let before = list.len();
        list.retain(|k| k.fingerprint != fingerprint);
        if list.len() == before {
            return Err(StoreError::NotFound(fingerprint.to_owned()));
        }
        Ok(())
    }
}
