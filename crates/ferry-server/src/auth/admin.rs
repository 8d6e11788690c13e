//! Helpers for admin commands and first start: new verifiers, secrets, records.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_proto::scram::{ScramError, Verifier};

use super::UserRecord;

/// Salt length of new verifiers, in bytes (RFC 7677 gives 16 in its example;
/// [`Verifier::fake_for`] uses the same length).
pub const SALT_LEN: usize = 16;

/// Why a new verifier or secret could not be made. Never holds the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    #[error("system random source failed: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Scram(#[from] ScramError),
}

/// The verifier of `password` with a fresh random salt. Slow on purpose
/// (PBKDF2 with `iterations` rounds): call it off the async threads.
pub fn hash_new_password(password: &str, iterations: u32) -> Result<Verifier, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(PasswordError::Random)?;
    Ok(Verifier::new(password, &salt, iterations)?)
}

/// 32 random bytes for [`super::Authenticator::new`]'s `server_secret`.
/// Persist it: a secret that changes on restart changes the fake salts of
/// unknown users, which tells an observer who watched before and after that
/// those users do not exist.
pub fn generate_server_secret() -> Result<[u8; 32], PasswordError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(PasswordError::Random)?;
    Ok(secret)
}

/// The current time in Unix seconds, for [`UserRecord::created`].
#[must_use]
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A record for a new user with defaults: no quota, no exec, default home,
/// created now.
#[must_use]
pub fn new_user(name: &str, verifier: Verifier) -> UserRecord {
    UserRecord {
        name: name.to_owned(),
        verifier,
        quota_bytes: None,
        allow_exec: false,
        max_files: None,
        home: None,
        created: unix_now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::scram::MIN_ITERATIONS;

    #[test]
    fn new_passwords_get_fresh_salts() {
        let a = hash_new_password("pw", MIN_ITERATIONS).unwrap();
        let b = hash_new_password("pw", MIN_ITERATIONS).unwrap();
        assert_eq!(a.salt().len(), SALT_LEN);
        assert_ne!(a.salt(), b.salt());
        assert_ne!(a.stored_key(), b.stored_key());
        assert!(matches!(hash_new_password("pw", 1), Err(PasswordError::Scram(ScramError::IterationCount(1)))));
    }
}
