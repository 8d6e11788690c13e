//! [`QuotaLedger`] on PostgreSQL (`migrations/postgres/0003_quota.sql`):
//! the quota usage of servers that share homes on S3 (issue 16).
//!
//! Each call is one statement, its check and its count under the user's
//! row lock: an `UPDATE ... WHERE used + reserved + n <= limit` is
//! re-checked on the newest row after waiting for the lock, so two servers
//! reserving at once are counted one after the other. Reservations are
//! leases that this server renews while it holds them; a sweep withdraws
//! the expired leases of servers that died. Calls block (see [`crate::pg`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{LeaseId, QuotaLedger, QuotaUnavailable, Usage};
use crate::pg::{Database, PgError};

/// How long a lease lives without renewal: well past [`RENEW_EVERY`], so
/// that a busy database does not expire the leases of a live server.
const LEASE_SECS: i32 = 120;

/// How often this server renews its leases and sweeps expired ones.
const RENEW_EVERY: Duration = Duration::from_secs(30);

impl From<PgError> for QuotaUnavailable {
    fn from(e: PgError) -> Self {
        tracing::warn!(error = %e, "the shared quota is unreachable");
        QuotaUnavailable
    }
}

/// Quota usage in a shared PostgreSQL database.
#[derive(Debug)]
pub struct PgQuotaLedger {
    db: Arc<Database>,
    state: Arc<Leases>,
}

/// This server's leases, renewed until settled.
#[derive(Debug)]
struct Leases {
    server_id: String,
    live: Mutex<HashSet<LeaseId>>,
}

impl Leases {
    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<LeaseId>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n.max(0)).unwrap_or(0)
}

impl PgQuotaLedger {
    /// A ledger for this server (its leases carry the database handle's
    /// server id), renewed in the background for as long as it lives.
    pub fn start(db: Arc<Database>) -> Arc<Self> {
        let state = Arc::new(Leases { server_id: db.server_id().to_owned(), live: Mutex::default() });
        db.every(RENEW_EVERY, &state, |db, state| async move {
            let live: Vec<LeaseId> = state.live().iter().copied().collect();
            if let Err(e) = PgQuotaLedger::renew_and_sweep(&db, &state.server_id, live).await {
                tracing::warn!(error = %e, "cannot renew quota leases; retrying");
            }
        });
        Arc::new(PgQuotaLedger { db, state })
    }

    /// Renews this server's live leases and withdraws every expired one.
    pub async fn renew_and_sweep(db: &Database, server_id: &str, live: Vec<LeaseId>) -> Result<(), PgError> {
        let server_id = server_id.to_owned();
        db.run(move |c| async move {
            c.execute(
                "UPDATE quota_leases SET expires_at = now() + make_interval(secs => $3)
                 WHERE server_id = $1 AND id = ANY($2)",
                &[&server_id, &live, &f64::from(LEASE_SECS)],
            )
            .await?;
            c.execute(
                "WITH gone AS (DELETE FROM quota_leases WHERE expires_at < now() RETURNING username, bytes, files),
                      g AS (SELECT username, sum(bytes)::BIGINT AS b, sum(files)::BIGINT AS f
                            FROM gone GROUP BY username)
                 UPDATE quota_usage q SET reserved = q.reserved - g.b, files_reserved = q.files_reserved - g.f
                 FROM g WHERE q.username = g.username",
                &[],
            )
            .await
        })
        .await?;
        Ok(())
    }

    fn read_usage(&self, user: &str) -> Result<Usage, QuotaUnavailable> {
        let user = user.to_owned();
        let row = self.db.block(move |c| async move {
            c.query_opt("SELECT used, reserved, files, files_reserved FROM quota_usage WHERE username = $1", &[&user])
                .await
        })?;
        Ok(row.map_or_else(Usage::default, |r| Usage {
            used: to_u64(r.get(0)),
            reserved: to_u64(r.get(1)),
            files: to_u64(r.get(2)),
            ..Usage::default()
        }))
    }
}

impl QuotaLedger for PgQuotaLedger {
    fn measured(&self, user: &str, bytes: u64, files: u64) -> Result<(), QuotaUnavailable> {
        let (user, bytes, files) = (user.to_owned(), to_i64(bytes), to_i64(files));
        self.db.block(move |c| async move {
            c.execute(
                "INSERT INTO quota_usage (username, used, files) VALUES ($1, $2, $3)
                 ON CONFLICT (username) DO UPDATE SET used = EXCLUDED.used, files = EXCLUDED.files
                 WHERE NOT EXISTS (SELECT 1 FROM quota_leases WHERE username = $1 AND expires_at > now())",
                &[&user, &bytes, &files],
            )
            .await
        })?;
        Ok(())
    }

    fn reserve(
        &self,
        user: &str,
        bytes: u64,
        files: u64,
        limit: Option<u64>,
        max_files: Option<u64>,
    ) -> Result<Result<LeaseId, Usage>, QuotaUnavailable> {
        let owned = user.to_owned();
        let server_id = self.state.server_id.clone();
        let (bytes, files) = (to_i64(bytes), to_i64(files));
        let (limit, max_files) = (limit.map(to_i64), max_files.map(to_i64));
        let row = self.db.block(move |c| async move {
            c.query_opt(
                "WITH r AS (
                     UPDATE quota_usage SET reserved = reserved + $3, files_reserved = files_reserved + $4
                     WHERE username = $1
                       AND ($5::BIGINT IS NULL OR greatest(used, 0) + reserved + $3 <= $5)
                       AND ($6::BIGINT IS NULL OR greatest(files, 0) + files_reserved + $4 <= $6)
                     RETURNING username)
                 INSERT INTO quota_leases (username, server_id, bytes, files, expires_at)
                 SELECT username, $2, $3, $4, now() + make_interval(secs => $7) FROM r
                 RETURNING id",
                &[&owned, &server_id, &bytes, &files, &limit, &max_files, &f64::from(LEASE_SECS)],
            )
            .await
        })?;
        match row {
            Some(r) => {
                let id: LeaseId = r.get(0);
                self.state.live().insert(id);
                Ok(Ok(id))
            }
            None => Ok(Err(self.read_usage(user)?)),
        }
    }

    fn land(&self, user: &str, lease: LeaseId, bytes: u64) -> Result<(), QuotaUnavailable> {
        let (user, bytes) = (user.to_owned(), to_i64(bytes));
        self.db.block(move |c| async move {
            // A lease already swept has had its reservation withdrawn:
            // then the bytes only count as used.
            c.execute(
                "WITH l AS (UPDATE quota_leases SET bytes = bytes - $3 WHERE id = $2 RETURNING id)
                 UPDATE quota_usage SET used = used + $3,
                     reserved = reserved - coalesce((SELECT $3::BIGINT FROM l), 0)
                 WHERE username = $1",
                &[&user, &lease, &bytes],
            )
            .await
        })?;
        Ok(())
    }

    fn settle(&self, user: &str, lease: LeaseId, bytes: u64, files: u64) -> Result<(), QuotaUnavailable> {
        // No longer renewed, whatever the outcome: a lease that missed its
        // end expires instead of holding the quota for this server's life.
        self.state.live().remove(&lease);
        let (user, bytes, files) = (user.to_owned(), to_i64(bytes), to_i64(files));
        self.db.block(move |c| async move {
            c.execute(
                "WITH l AS (DELETE FROM quota_leases WHERE id = $2 RETURNING bytes, files)
                 UPDATE quota_usage SET used = used + $3, files = files + $4,
                     reserved = reserved - coalesce((SELECT bytes FROM l), 0),
                     files_reserved = files_reserved - coalesce((SELECT files FROM l), 0)
                 WHERE username = $1",
                &[&user, &lease, &bytes, &files],
            )
            .await
        })?;
        Ok(())
    }

    fn adjust(&self, user: &str, bytes: i64, files: i64) -> Result<(), QuotaUnavailable> {
        let user = user.to_owned();
        self.db.block(move |c| async move {
            c.execute(
                "UPDATE quota_usage SET used = used + $2, files = files + $3 WHERE username = $1",
                &[&user, &bytes, &files],
            )
            .await
        })?;
        Ok(())
    }

    fn try_add(&self, user: &str, bytes: u64, limit: Option<u64>) -> Result<Result<(), Usage>, QuotaUnavailable> {
        let owned = user.to_owned();
        let (bytes, limit) = (to_i64(bytes), limit.map(to_i64));
        let n = self.db.block(move |c| async move {
            c.execute(
                "UPDATE quota_usage SET used = used + $2
                 WHERE username = $1 AND ($3::BIGINT IS NULL OR greatest(used, 0) + reserved + $2 <= $3)",
                &[&owned, &bytes, &limit],
            )
            .await
        })?;
        if n == 1 { Ok(Ok(())) } else { Ok(Err(self.read_usage(user)?)) }
    }

    fn usage(&self, user: &str) -> Result<Usage, QuotaUnavailable> {
        self.read_usage(user)
    }
}
