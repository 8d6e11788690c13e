//! Per-user disk quotas, enforced by reservation rather than check-then-write.
//!
//! Every session of one user shares one [`UserQuota`]. An upload reserves its
//! whole remaining size before a byte is written; the reservation is settled
//! with what actually landed on disk. So uploads from many sessions at once can
//! never together pass the limit: the check and the reservation are one step
//! under one lock. Usage is rescanned from the home at the user's first login
//! after a start, which makes it survive restarts exactly.
//!
//! # Shared by several servers (issue 16): designed, not built yet
//!
//! With `[users] kind = "postgres"` the users, keys and login failure counts
//! are shared; the quota still lives in each process. Sharing it only makes
//! sense once the servers share the homes too (a shared `Storage`, the other
//! half of issue 16): with a disk each, each server's usage is its own. The
//! plan, so that uploads through two servers never together pass a quota:
//!
//! - **Tables.** `quota_usage (username PK, used BIGINT, files BIGINT,
//!   reserved BIGINT, files_reserved BIGINT)`, signed like `Counts` (never
//!   clamped: reports arrive in any order), and `quota_leases (id, username,
//!   server_id, bytes, files, expires_at)`: each reservation is a lease, so a
//!   crashed server's promises expire instead of holding the quota forever.
//! - **Reserve** is one statement, the check and the count in the row lock:
//!   `UPDATE quota_usage SET reserved = reserved + $n WHERE username = $u AND
//!   ($limit IS NULL OR used + reserved + $n <= $limit) RETURNING ...`, with
//!   the lease inserted in the same transaction (a CTE). No row back: refused,
//!   with the numbers for [`QuotaExceeded`]. Entries the same way.
//! - **Landing** ([`Reservation::take`], per block) moves bytes from
//!   `reserved` to `used`: `used + reserved` does not change, so the move can
//!   be batched (flushed every few MiB and at settle) without ever letting
//!   usage pass the limit. `try_add` (growth past a reservation) takes
//!   chunks ahead (a reservation of 8 MiB) to stay off the network per block.
//!   Settle, release and withdrawal are signed deltas in one `UPDATE` each
//!   that also delete the lease; a dropped [`Reservation`] (`Drop` is
//!   synchronous) hands its withdrawal to a background task, with the lease
//!   expiry as the backstop.
//! - **Leases** are renewed by each server every 30 s for the reservations
//!   it holds; a sweep deletes expired ones and subtracts them from
//!   `reserved` in the same statement.
//! - **Rescan** at a server's first opening of a home writes the measured
//!   usage only when no lease of that user exists anywhere (no upload in
//!   flight): `UPDATE ... WHERE NOT EXISTS (SELECT 1 FROM quota_leases ...)`;
//!   otherwise the shared numbers stand.
//! - **Upload claims** (`home.rs`) move the same way: `upload_claims
//!   (username, upload_id PK, server_id, generation, released)`; a claim is an
//!   `INSERT ... ON CONFLICT DO NOTHING`, a takeover bumps the generation and
//!   waits (bounded) until the old holder marks the claim released, which it
//!   does after its write in flight (it learns through `LISTEN/NOTIFY` and
//!   checks the generation before each block), or until its lease expires.
//!
//! [`UserQuota`] would then sit over a small async trait (local counters as
//! today, or the database), the way the throttle sits over `FailureCounts`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of files in the home, partial uploads included.
    pub used: u64,
    /// Bytes promised to uploads in flight, not yet on disk.
    pub reserved: u64,
    /// `None` means unlimited.
    pub limit: Option<u64>,
    /// Files and directories in the home (partial uploads included).
    pub files: u64,
    /// The most files and directories the user may have; `None`: unlimited.
    pub max_files: Option<u64>,
}

impl Usage {
    pub fn free(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.used + self.reserved))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("quota exceeded: {needed} more bytes needed, {free} free of {limit}")]
pub struct QuotaExceeded {
    pub needed: u64,
    pub free: u64,
    pub limit: u64,
}

/// The per-user limit on entries (files and directories) is reached: many
/// empty files cost the filesystem even when they hold no bytes (issue 12).
#[derive(Debug, thiserror::Error)]
#[error("quota exceeded: the limit of {limit} files and directories is reached")]
pub struct FileLimitReached {
    pub limit: u64,
}

/// The counters behind [`Usage`]. `used` is signed: the disk change and its
/// accounting are not one step, so two sessions can report in the other
/// order (a file removed is counted out before its upload is counted in).
/// Clamping such a moment at zero would lose bytes for good; the sum comes
/// out exact whatever the order.
#[derive(Debug)]
struct Counts {
    used: i128,
    reserved: u64,
    limit: Option<u64>,
    /// Entries, signed for the same reason as `used`.
    files: i128,
    files_reserved: u64,
    max_files: Option<u64>,
}

impl Counts {
    fn used(&self) -> u64 {
        u64::try_from(self.used.max(0)).unwrap_or(u64::MAX)
    }

    fn files(&self) -> u64 {
        u64::try_from(self.files.max(0)).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
pub struct UserQuota {
    state: Mutex<Counts>,
}

impl UserQuota {
    pub fn new(used: u64, limit: Option<u64>) -> Self {
        UserQuota::with_files(used, limit, 0, None)
    }

    /// A quota on bytes and on entries (files and directories).
    pub fn with_files(used: u64, limit: Option<u64>, files: u64, max_files: Option<u64>) -> Self {
        let counts =
            Counts { used: used.into(), reserved: 0, limit, files: files.into(), files_reserved: 0, max_files };
        UserQuota { state: Mutex::new(counts) }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain integers; the numbers are still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn usage(&self) -> Usage {
        let s = self.lock();
        Usage { used: s.used(), reserved: s.reserved, limit: s.limit, files: s.files(), max_files: s.max_files }
    }

    pub fn set_limit(&self, limit: Option<u64>) {
        self.lock().limit = limit;
    }

    pub fn set_max_files(&self, max_files: Option<u64>) {
        self.lock().max_files = max_files;
    }

    /// Reserves `n` entries (files or directories about to be made), or
    /// refuses if they do not fit.
    pub fn reserve_files(self: &Arc<Self>, n: u64) -> Result<FileReservation, FileLimitReached> {
        let mut s = self.lock();
        if let Some(limit) = s.max_files
            && s.files().saturating_add(s.files_reserved).saturating_add(n) > limit
        {
            return Err(FileLimitReached { limit });
        }
        s.files_reserved += n;
        Ok(FileReservation { quota: Arc::clone(self), n })
    }

    /// Entries left the home.
    pub fn release_files(&self, n: u64) {
        self.lock().files -= i128::from(n);
    }

    /// Sets usage to what was measured (after a remote command wrote into
    /// the home behind the quota's back). Reservations stay.
    pub fn set_measured(&self, bytes: u64, files: u64) {
        let mut s = self.lock();
        s.used = bytes.into();
        s.files = files.into();
    }

    /// Reserves `bytes` for an upload, or refuses if they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, QuotaExceeded> {
        let mut s = self.lock();
        if let Some(limit) = s.limit {
            let committed = s.used().saturating_add(s.reserved);
            if committed.saturating_add(bytes) > limit {
                return Err(QuotaExceeded { needed: bytes, free: limit.saturating_sub(committed), limit });
            }
        }
        s.reserved += bytes;
        Ok(Reservation { quota: Arc::clone(self), bytes, settled: false })
    }

    /// Bytes left the home (a file removed, a partial expired, a file overwritten).
    pub fn release(&self, bytes: u64) {
        self.lock().used -= i128::from(bytes);
    }

    /// Bytes arrived outside a reservation (not normally used by uploads).
    pub fn add(&self, bytes: u64) {
        self.lock().used += i128::from(bytes);
    }

    /// Counts `bytes` that are about to land, or refuses if they do not fit:
    /// the check and the count are one step (an upload of unknown size).
    pub fn try_add(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let mut s = self.lock();
        if let Some(limit) = s.limit {
            let committed = s.used().saturating_add(s.reserved);
            if committed.saturating_add(bytes) > limit {
                return Err(QuotaExceeded { needed: bytes, free: limit.saturating_sub(committed), limit });
            }
        }
        s.used += i128::from(bytes);
        Ok(())
    }
}

/// Bytes promised to one upload. Settle it with what reached the disk; if it
/// is dropped unsettled, the promise is simply withdrawn.
#[derive(Debug)]
pub struct Reservation {
    quota: Arc<UserQuota>,
    bytes: u64,
    settled: bool,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Moves up to `bytes` of the reservation into usage (they landed);
    /// returns how many it covered.
    pub fn take(&mut self, bytes: u64) -> u64 {
        let n = bytes.min(self.bytes);
        let mut s = self.quota.lock();
        s.reserved = s.reserved.saturating_sub(n);
        s.used += i128::from(n);
        self.bytes -= n;
        n
    }

    /// Turns the reservation into `landed` bytes of usage (at most the
    /// reservation: a writer never lands more than it reserved).
    pub fn settle(mut self, landed: u64) {
        let mut s = self.quota.lock();
        s.reserved = s.reserved.saturating_sub(self.bytes);
        s.used += i128::from(landed.min(self.bytes));
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut s = self.quota.lock();
            s.reserved = s.reserved.saturating_sub(self.bytes);
        }
    }
}

/// Entries promised to an operation; settled with how many were made,
/// withdrawn if dropped.
#[derive(Debug)]
pub struct FileReservation {
    quota: Arc<UserQuota>,
    n: u64,
}

impl FileReservation {
    /// Turns the reservation into `made` entries (at most what was reserved).
    pub fn settle(mut self, made: u64) {
        let mut s = self.quota.lock();
        s.files_reserved = s.files_reserved.saturating_sub(self.n);
        s.files += i128::from(made.min(self.n));
        self.n = 0;
    }
}

impl Drop for FileReservation {
    fn drop(&mut self) {
        if self.n > 0 {
            let mut s = self.quota.lock();
            s.files_reserved = s.files_reserved.saturating_sub(self.n);
        }
    }
}

/// The quotas of all users with a session since this start.
#[derive(Debug, Default)]
pub struct QuotaRegistry {
    users: tokio::sync::Mutex<HashMap<String, Arc<UserQuota>>>,
}

impl QuotaRegistry {
    /// The user's shared quota; `scan` (bytes and entries) is awaited
    /// once, at first use, to measure the home (under the registry lock, so
    /// two first logins cannot both scan and diverge).
    pub async fn get_or_scan<E>(
        &self,
        user: &str,
        limit: Option<u64>,
        max_files: Option<u64>,
        scan: impl Future<Output = Result<(u64, u64), E>>,
    ) -> Result<Arc<UserQuota>, E> {
        let mut users = self.users.lock().await;
        if let Some(q) = users.get(user) {
            q.set_limit(limit);
            q.set_max_files(max_files);
            return Ok(Arc::clone(q));
        }
        let (used, files) = scan.await?;
        let q = Arc::new(UserQuota::with_files(used, limit, files, max_files));
        users.insert(user.to_string(), Arc::clone(&q));
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_from_many_threads_never_pass_the_limit() {
        let q = Arc::new(UserQuota::new(0, Some(1000)));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut won = 0;
                    for _ in 0..100 {
                        if let Ok(r) = q.reserve(30) {
                            r.settle(30);
                            won += 30;
                        }
                    }
                    won
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(total <= 1000);
        assert_eq!(q.usage().used, total);
        assert_eq!(q.usage().reserved, 0);
    }

    #[test]
    fn dropped_reservation_is_withdrawn_and_partial_landing_counts() {
        let q = Arc::new(UserQuota::new(100, Some(1000)));
        let r = q.reserve(900).unwrap();
        assert!(q.reserve(1).is_err());
        drop(r);
        assert_eq!(q.usage().reserved, 0);
        q.reserve(500).unwrap().settle(200);
        assert_eq!(q.usage().used, 300);
        q.release(250);
        assert_eq!(q.usage().used, 50);
        assert_eq!(q.usage().free(), Some(950));
    }

    #[test]
    fn a_release_counted_before_its_settle_is_not_lost() {
        let q = Arc::new(UserQuota::new(0, Some(1000)));
        let r = q.reserve(300).unwrap();
        // Another session removes the new file before the upload settles.
        q.release(300);
        assert_eq!(q.usage().used, 0);
        r.settle(300);
        assert_eq!(q.usage().used, 0, "the file is gone");
    }

    #[test]
    fn taking_from_a_reservation_counts_as_it_lands_and_the_rest_is_withdrawn() {
        let q = Arc::new(UserQuota::new(0, Some(1000)));
        let mut r = q.reserve(600).unwrap();
        assert_eq!(r.take(250), 250);
        assert_eq!((q.usage().used, q.usage().reserved), (250, 350));
        assert_eq!(r.take(500), 350, "never more than was reserved");
        assert!(q.try_add(401).is_err(), "600 used, 400 free");
        q.try_add(400).unwrap();
        drop(r);
        assert_eq!((q.usage().used, q.usage().reserved), (1000, 0));
    }

    #[test]
    fn entries_are_reserved_settled_and_released_within_their_limit() {
        let q = Arc::new(UserQuota::with_files(0, None, 8, Some(10)));
        let r = q.reserve_files(2).unwrap();
        assert!(q.reserve_files(1).is_err(), "8 made and 2 promised of 10");
        r.settle(1);
        assert_eq!(q.usage().files, 9);
        drop(q.reserve_files(1).unwrap());
        q.reserve_files(1).unwrap().settle(1);
        assert!(q.reserve_files(1).is_err());
        q.release_files(4);
        assert_eq!(q.usage().files, 6);
        q.set_measured(0, 0);
        assert_eq!(q.usage().files, 0);
    }

    #[test]
    fn unlimited_never_refuses() {
        let q = Arc::new(UserQuota::new(0, None));
        q.reserve(u64::MAX / 2).unwrap().settle(10);
        assert_eq!(q.usage().free(), None);
    }
}
