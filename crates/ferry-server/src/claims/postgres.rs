//! [`ClaimLedger`] on PostgreSQL (`migrations/postgres/0003_shared_homes.sql`):
//! upload claims of servers that share homes on S3 (issue 16).
//!
//! A claim is a row per upload id with a generation and an expiry that its
//! server renews. Taking one is one `INSERT ... ON CONFLICT DO UPDATE` whose
//! update happens only for a takeover or over an expired claim, so two
//! servers claiming at once get one row each way: one wins, one is busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ClaimLedger, ClaimUnavailable, Generation};
use crate::pg::{Database, PgError};

/// How long a claim lives without renewal.
const CLAIM_SECS: f64 = 120.0;

/// How often this server renews its claims and drops expired ones.
const RENEW_EVERY: Duration = Duration::from_secs(30);

impl From<PgError> for ClaimUnavailable {
    fn from(e: PgError) -> Self {
        tracing::warn!(error = %e, "shared upload claims are unreachable");
        ClaimUnavailable
    }
}

/// Upload claims in a shared PostgreSQL database.
#[derive(Debug)]
pub struct PgClaimLedger {
    db: Arc<Database>,
    /// The upload ids this server holds (with the generation held, so
    /// that an older writer's release here keeps a newer one renewed).
    live: Arc<Mutex<HashMap<String, Generation>>>,
}

impl PgClaimLedger {
    /// A ledger for this server, renewed in the background while it lives.
    pub fn start(db: Arc<Database>) -> Arc<Self> {
        let live: Arc<Mutex<HashMap<String, Generation>>> = Arc::default();
        db.every(RENEW_EVERY, &live, |db, live| async move {
            let ids: Vec<String> = lock(&live).keys().cloned().collect();
            let server_id = db.server_id().to_owned();
            let renewed = db
                .run(move |c| async move {
                    c.execute(
                        "UPDATE upload_claims SET expires_at = now() + make_interval(secs => $3)
                         WHERE server_id = $1 AND upload_id = ANY($2)",
                        &[&server_id, &ids, &CLAIM_SECS],
                    )
                    .await?;
                    c.execute("DELETE FROM upload_claims WHERE expires_at < now()", &[]).await
                })
                .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "cannot renew upload claims; retrying");
            }
        });
        Arc::new(PgClaimLedger { db, live })
    }
}

fn lock(live: &Mutex<HashMap<String, Generation>>) -> std::sync::MutexGuard<'_, HashMap<String, Generation>> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClaimLedger for PgClaimLedger {
    fn claim(&self, user: &str, id: &str, take_over: bool) -> Result<Option<Generation>, ClaimUnavailable> {
        let (user, owned, server_id) = (user.to_owned(), id.to_owned(), self.db.server_id().to_owned());
        let row = self.db.block(move |c| async move {
            c.query_opt(
                "INSERT INTO upload_claims (username, upload_id, server_id, generation, expires_at)
                 VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))
                 ON CONFLICT (username, upload_id) DO UPDATE
                     SET server_id = EXCLUDED.server_id, generation = upload_claims.generation + 1,
                         expires_at = EXCLUDED.expires_at
                     WHERE $5 OR upload_claims.expires_at < now()
                 RETURNING generation",
                &[&user, &owned, &server_id, &CLAIM_SECS, &take_over],
            )
            .await
        })?;
        let generation = row.map(|r| r.get::<_, Generation>(0));
        if let Some(g) = generation {
            lock(&self.live).insert(id.to_owned(), g);
        }
        Ok(generation)
    }

    fn holds(&self, user: &str, id: &str, generation: Generation) -> Result<bool, ClaimUnavailable> {
        let (user, id) = (user.to_owned(), id.to_owned());
        let row = self.db.block(move |c| async move {
            c.query_opt(
                "SELECT 1 FROM upload_claims WHERE username = $1 AND upload_id = $2 AND generation = $3",
                &[&user, &id, &generation],
            )
            .await
        })?;
        Ok(row.is_some())
    }

    fn release(&self, user: &str, id: &str, generation: Generation) {
        {
            let mut live = lock(&self.live);
            if live.get(id) == Some(&generation) {
                live.remove(id);
            }
        }
        let (user, id) = (user.to_owned(), id.to_owned());
        let released = self.db.block(move |c| async move {
            c.execute(
                "DELETE FROM upload_claims WHERE username = $1 AND upload_id = $2 AND generation = $3",
                &[&user, &id, &generation],
            )
            .await
        });
        // Not renewed any more: it expires.
        if let Err(e) = released {
            tracing::debug!(error = %e, "an upload claim's release missed the database; it expires");
        }
    }
}
