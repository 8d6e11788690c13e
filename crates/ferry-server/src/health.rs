//! Whether this server can serve (`/healthz`, for load balancers): the
//! storage of the homes and the user store both answer, each within a
//! time limit. The checks are cheap, so that a balancer may ask every few
//! seconds: an `access(2)` on the homes folder, the bucket probe the start
//! already makes, one query for a user who cannot exist.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::core::{Core, StorageBackend};

/// How long each check may take: below the few seconds balancers allow.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// A name no user can have (`validate_username` refuses a leading `-`):
/// looking it up is a real query that finds nothing.
const NO_SUCH_USER: &str = "-healthz";

/// The checks, for one listener. At most one user-store probe runs at a
/// time: a store that hangs holds one blocking thread, not one per request.
#[derive(Debug)]
pub struct Health {
    users_probe: Arc<Semaphore>,
}

impl Default for Health {
    fn default() -> Self {
        Health { users_probe: Arc::new(Semaphore::new(1)) }
    }
}

impl Health {
    /// `Ok`, or one line naming each part that failed and why.
    pub async fn check(&self, core: &Core, within: Duration) -> Result<(), String> {
        let (storage, users) =
            tokio::join!(bounded(within, check_storage(core)), bounded(within, self.check_users(core)));
        let failed: Vec<String> = [("storage", storage), ("users", users)]
            .into_iter()
            .filter_map(|(what, r)| r.err().map(|why| format!("{what}: {}", one_line(&why))))
            .collect();
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    }

    async fn check_users(&self, core: &Core) -> Result<(), String> {
        let permit = Arc::clone(&self.users_probe).acquire_owned().await.map_err(|e| e.to_string())?;
        let store = Arc::clone(&core.store);
        let looked_up = tokio::task::spawn_blocking(move || {
            // Held by the thread: a probe past the time limit keeps it.
            let _permit = permit;
            store.get(NO_SUCH_USER)
        })
        .await
        .map_err(|e| e.to_string())?;
        looked_up.map(|_| ()).map_err(|e| format!("user store unavailable: {e}"))
    }
}

async fn bounded(within: Duration, check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(within, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", within.as_secs_f32())))
}

/// The homes folder exists and this process may create files in it (a
/// read-only mount fails too); or the bucket answers with this key.
async fn check_storage(core: &Core) -> Result<(), String> {
    match &core.storage {
        StorageBackend::S3(bucket) => bucket.check().await.map_err(|e| e.to_string()),
        StorageBackend::Local => {
            let homes = core.config.homes_dir();
            tokio::task::spawn_blocking(move || {
                let why = |e: &dyn std::fmt::Display| format!("homes folder {}: {e}", homes.display());
                let meta = std::fs::metadata(&homes).map_err(|e| why(&e))?;
                if !meta.is_dir() {
                    return Err(why(&"not a directory"));
                }
                use rustix::fs::{Access, access};
                access(&homes, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| why(&std::io::Error::from(e)))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
