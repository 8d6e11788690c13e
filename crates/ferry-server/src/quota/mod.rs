//! Per-user disk quotas, enforced by reservation rather than check-then-write.
//!
//! Every session of one user shares one [`UserQuota`]. An upload reserves its
//! whole remaining size before a byte is written; the reservation is settled
//! with what actually landed on disk. So uploads from many sessions at once can
//! never together pass the limit: the check and the reservation are one step
//! under one lock. Usage is rescanned from the home at the user's first login
//! after a start, which makes it survive restarts exactly.
//!
//! # Shared by several servers (issue 16)
//!
//! When the homes are shared (`[storage] kind = "s3"`) and so is the user
//! database (`[users] kind = "postgres"`), the numbers live in the database
//! instead, behind [`QuotaLedger`] (`postgres.rs`): every reservation is
//! checked and counted in one statement under the user's row lock, so
//! uploads through two servers never together pass a quota. What stays in
//! the process is only what saves round trips: the bytes a reservation has
//! seen land are moved into usage in batches ([`LAND_BATCH`]), which never
//! changes `used + reserved`, so the limit holds meanwhile. Each reservation
//! is a lease that its server renews; a crashed server's promises expire
//! instead of holding the quota for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub mod postgres;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// The shared quota could not be asked (its database is unreachable): the
/// operation is refused rather than let past a limit no one checked. The
/// cause is logged where it happens; clients are not told about the site's
/// database.
#[derive(Debug, thiserror::Error)]
#[error("the quota cannot be checked right now; try again")]
pub struct QuotaUnavailable;

/// Why bytes could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum QuotaRefused {
    #[error(transparent)]
    Exceeded(#[from] QuotaExceeded),
    #[error(transparent)]
    Unavailable(#[from] QuotaUnavailable),
}

/// Why entries could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum FilesRefused {
    #[error(transparent)]
    Limit(#[from] FileLimitReached),
    #[error(transparent)]
    Unavailable(#[from] QuotaUnavailable),
}

/// An outstanding reservation in a [`QuotaLedger`], renewed by the server
/// that holds it and ended by [`QuotaLedger::settle`].
pub type LeaseId = i64;

/// A quota kept outside the process, shared by every server of one site.
/// Calls block on a round trip (a few hundred microseconds on a local
/// network); they are made once or twice per operation, and per
/// [`LAND_BATCH`] of upload, never per block.
pub trait QuotaLedger: Send + Sync + std::fmt::Debug {
    /// Makes sure the user has a row, and replaces its usage with what was
    /// measured unless an upload is in flight on some server (its numbers
    /// are then the better ones).
    fn measured(&self, user: &str, bytes: u64, files: u64) -> Result<(), QuotaUnavailable>;

    /// Reserves `bytes` and `files` if they fit the limits (`None`:
    /// unlimited); `Ok(Err(usage))` is a refusal, with the usage found.
    fn reserve(
        &self,
        user: &str,
        bytes: u64,
        files: u64,
        limit: Option<u64>,
        max_files: Option<u64>,
    ) -> Result<Result<LeaseId, Usage>, QuotaUnavailable>;

    /// Moves `bytes` of a lease's reservation into usage (they landed).
    fn land(&self, user: &str, lease: LeaseId, bytes: u64) -> Result<(), QuotaUnavailable>;

    /// Ends a lease: what is left of it is withdrawn, and `bytes` and
    /// `files` count as used.
    fn settle(&self, user: &str, lease: LeaseId, bytes: u64, files: u64) -> Result<(), QuotaUnavailable>;

    /// Signed changes of usage: removals are negative.
    fn adjust(&self, user: &str, bytes: i64, files: i64) -> Result<(), QuotaUnavailable>;

    /// Counts `bytes` as used if they fit; `Ok(Err(usage))` is a refusal.
    fn try_add(&self, user: &str, bytes: u64, limit: Option<u64>) -> Result<Result<(), Usage>, QuotaUnavailable>;

    /// The user's usage now (limits left as `None`).
    fn usage(&self, user: &str) -> Result<Usage, QuotaUnavailable>;
}

/// Bytes a reservation moves into shared usage at once: landing is counted
/// in the process and sent every this many bytes, and at the end.
pub const LAND_BATCH: u64 = 8 << 20;

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

/// The user's numbers in a [`QuotaLedger`], and the last usage read from it
/// (answered when the ledger cannot be reached: a `df` is not worth failing).
#[derive(Debug)]
struct Shared {
    ledger: Arc<dyn QuotaLedger>,
    user: String,
    last: Mutex<Usage>,
}

/// A clamp for the ledger's signed changes (no home holds 2^63 bytes).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Debug)]
pub struct UserQuota {
    /// The numbers, or (when shared) only the limits.
    state: Mutex<Counts>,
    shared: Option<Shared>,
}

impl UserQuota {
    pub fn new(used: u64, limit: Option<u64>) -> Self {
        UserQuota::with_files(used, limit, 0, None)
    }

    /// A quota on bytes and on entries (files and directories).
    pub fn with_files(used: u64, limit: Option<u64>, files: u64, max_files: Option<u64>) -> Self {
        let counts =
            Counts { used: used.into(), reserved: 0, limit, files: files.into(), files_reserved: 0, max_files };
        UserQuota { state: Mutex::new(counts), shared: None }
    }

    /// A quota whose numbers live in `ledger`, shared with other servers.
    /// `measured` (bytes, entries) is recorded unless an upload is in flight.
    pub fn shared(
        ledger: Arc<dyn QuotaLedger>,
        user: &str,
        limit: Option<u64>,
        max_files: Option<u64>,
        measured: (u64, u64),
    ) -> Result<Self, QuotaUnavailable> {
        ledger.measured(user, measured.0, measured.1)?;
        let counts = Counts { used: 0, reserved: 0, limit, files: 0, files_reserved: 0, max_files };
        let last = Usage { used: measured.0, files: measured.1, ..Usage::default() };
        let shared = Shared { ledger, user: user.to_string(), last: Mutex::new(last) };
        Ok(UserQuota { state: Mutex::new(counts), shared: Some(shared) })
    }

    /// Whether the numbers live in a ledger shared with other servers.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain integers; the numbers are still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limits(&self) -> (Option<u64>, Option<u64>) {
        let s = self.lock();
        (s.limit, s.max_files)
    }

    pub fn usage(&self) -> Usage {
        let (limit, max_files) = self.limits();
        if let Some(sh) = &self.shared {
            let mut last = sh.last.lock().unwrap_or_else(|e| e.into_inner());
            match sh.ledger.usage(&sh.user) {
                Ok(u) => *last = u,
                Err(e) => {
                    tracing::warn!(user = %sh.user, error = %e, "shared quota unreachable; answering the last usage read")
                }
            }
            return Usage { limit, max_files, ..*last };
        }
        let s = self.lock();
        Usage { used: s.used(), reserved: s.reserved, limit, files: s.files(), max_files }
    }

    pub fn set_limit(&self, limit: Option<u64>) {
        self.lock().limit = limit;
    }

    pub fn set_max_files(&self, max_files: Option<u64>) {
        self.lock().max_files = max_files;
    }

    /// Reserves `n` entries (files or directories about to be made), or
    /// refuses if they do not fit.
    pub fn reserve_files(self: &Arc<Self>, n: u64) -> Result<FileReservation, FilesRefused> {
        if let Some(sh) = &self.shared {
            let (_, max_files) = self.limits();
            return match sh.ledger.reserve(&sh.user, 0, n, None, max_files)? {
                Ok(lease) => Ok(FileReservation { quota: Arc::clone(self), n, lease: Some(lease) }),
                Err(_) => Err(FileLimitReached { limit: max_files.unwrap_or_default() }.into()),
            };
        }
        let mut s = self.lock();
        if let Some(limit) = s.max_files
            && s.files().saturating_add(s.files_reserved).saturating_add(n) > limit
        {
            return Err(FileLimitReached { limit }.into());
        }
        s.files_reserved += n;
        Ok(FileReservation { quota: Arc::clone(self), n, lease: None })
    }

    /// Entries left the home.
    pub fn release_files(&self, n: u64) {
        self.adjust_shared(0, -signed(n)).unwrap_or_else(|| self.lock().files -= i128::from(n));
    }

    /// Sends a signed change to the ledger; `None` when the quota is local.
    /// A change the ledger missed is logged: the next measurement at a
    /// server's first opening of the home sets it right.
    fn adjust_shared(&self, bytes: i64, files: i64) -> Option<()> {
        let sh = self.shared.as_ref()?;
        if let Err(e) = sh.ledger.adjust(&sh.user, bytes, files) {
            tracing::warn!(user = %sh.user, bytes, files, error = %e, "a change of usage missed the shared quota");
        }
        Some(())
    }

    /// Sets usage to what was measured (after a remote command wrote into
    /// the home behind the quota's back). Reservations stay.
    pub fn set_measured(&self, bytes: u64, files: u64) {
        if let Some(sh) = &self.shared {
            if let Err(e) = sh.ledger.measured(&sh.user, bytes, files) {
                tracing::warn!(user = %sh.user, error = %e, "a measured usage missed the shared quota");
            }
            return;
        }
        let mut s = self.lock();
        s.used = bytes.into();
        s.files = files.into();
    }

    /// Reserves `bytes` for an upload, or refuses if they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, QuotaRefused> {
        if let Some(sh) = &self.shared {
            let (limit, _) = self.limits();
            return match sh.ledger.reserve(&sh.user, bytes, 0, limit, None)? {
                Ok(lease) => Ok(Reservation::new(self, bytes, Some(lease))),
                Err(found) => Err(exceeded(bytes, &found, limit).into()),
            };
        }
        let mut s = self.lock();
        if let Some(limit) = s.limit {
            let committed = s.used().saturating_add(s.reserved);
            if committed.saturating_add(bytes) > limit {
                return Err(QuotaExceeded { needed: bytes, free: limit.saturating_sub(committed), limit }.into());
            }
        }
        s.reserved += bytes;
        Ok(Reservation::new(self, bytes, None))
    }

    /// Bytes left the home (a file removed, a partial expired, a file overwritten).
    pub fn release(&self, bytes: u64) {
        self.adjust_shared(-signed(bytes), 0).unwrap_or_else(|| self.lock().used -= i128::from(bytes));
    }

    /// Bytes arrived outside a reservation (not normally used by uploads).
    pub fn add(&self, bytes: u64) {
        self.adjust_shared(signed(bytes), 0).unwrap_or_else(|| self.lock().used += i128::from(bytes));
    }

    /// Counts `bytes` that are about to land, or refuses if they do not fit:
    /// the check and the count are one step (an upload of unknown size).
    pub fn try_add(&self, bytes: u64) -> Result<(), QuotaRefused> {
        if let Some(sh) = &self.shared {
            let (limit, _) = self.limits();
            return match sh.ledger.try_add(&sh.user, bytes, limit)? {
                Ok(()) => Ok(()),
                Err(found) => Err(exceeded(bytes, &found, limit).into()),
            };
        }
        let mut s = self.lock();
        if let Some(limit) = s.limit {
            let committed = s.used().saturating_add(s.reserved);
            if committed.saturating_add(bytes) > limit {
                return Err(QuotaExceeded { needed: bytes, free: limit.saturating_sub(committed), limit }.into());
            }
        }
        s.used += i128::from(bytes);
        Ok(())
    }
}

/// The refusal of `needed` bytes, with what the ledger found.
fn exceeded(needed: u64, found: &Usage, limit: Option<u64>) -> QuotaExceeded {
    let limit = limit.unwrap_or(u64::MAX);
    QuotaExceeded { needed, free: limit.saturating_sub(found.used.saturating_add(found.reserved)), limit }
}

/// Bytes promised to one upload. Settle it with what reached the disk; if it
/// is dropped unsettled, the promise is simply withdrawn.
#[derive(Debug)]
pub struct Reservation {
    quota: Arc<UserQuota>,
    bytes: u64,
    settled: bool,
    /// The lease in the shared ledger, and the bytes seen landing not yet
    /// moved into shared usage.
    lease: Option<LeaseId>,
    landed: u64,
}

impl Reservation {
    fn new(quota: &Arc<UserQuota>, bytes: u64, lease: Option<LeaseId>) -> Self {
        Reservation { quota: Arc::clone(quota), bytes, settled: false, lease, landed: 0 }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Moves up to `bytes` of the reservation into usage (they landed);
    /// returns how many it covered.
    pub fn take(&mut self, bytes: u64) -> u64 {
        let n = bytes.min(self.bytes);
        self.bytes -= n;
        if let (Some(lease), Some(sh)) = (self.lease, &self.quota.shared) {
            self.landed += n;
            if self.landed >= LAND_BATCH {
                match sh.ledger.land(&sh.user, lease, self.landed) {
                    Ok(()) => self.landed = 0,
                    // Kept for the next batch or the settle.
                    Err(e) => tracing::debug!(error = %e, "landing not yet counted in the shared quota"),
                }
            }
            return n;
        }
        let mut s = self.quota.lock();
        s.reserved = s.reserved.saturating_sub(n);
        s.used += i128::from(n);
        n
    }

    /// Turns the reservation into `landed` bytes of usage (at most the
    /// reservation: a writer never lands more than it reserved).
    pub fn settle(mut self, landed: u64) {
        self.end(landed.min(self.bytes));
    }

    /// Ends the reservation with `more` bytes landed beyond those taken.
    fn end(&mut self, more: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        if let (Some(lease), Some(sh)) = (self.lease, &self.quota.shared) {
            if let Err(e) = sh.ledger.settle(&sh.user, lease, self.landed + more, 0) {
                tracing::warn!(user = %sh.user, error = %e, "a reservation's end missed the shared quota; its lease expires");
            }
            return;
        }
        let mut s = self.quota.lock();
        s.reserved = s.reserved.saturating_sub(self.bytes);
        s.used += i128::from(more);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.end(0);
    }
}

/// Entries promised to an operation; settled with how many were made,
/// withdrawn if dropped.
#[derive(Debug)]
pub struct FileReservation {
    quota: Arc<UserQuota>,
    n: u64,
    lease: Option<LeaseId>,
}

impl FileReservation {
    /// Turns the reservation into `made` entries (at most what was reserved).
    pub fn settle(mut self, made: u64) {
        self.end(made.min(self.n));
    }

    fn end(&mut self, made: u64) {
        if let (Some(lease), Some(sh)) = (self.lease.take(), &self.quota.shared) {
            if let Err(e) = sh.ledger.settle(&sh.user, lease, 0, made) {
                tracing::warn!(user = %sh.user, error = %e, "an entry reservation's end missed the shared quota; its lease expires");
            }
            self.n = 0;
            return;
        }
        if self.n > 0 {
            let mut s = self.quota.lock();
            s.files_reserved = s.files_reserved.saturating_sub(self.n);
            s.files += i128::from(made);
            self.n = 0;
        }
    }
}

impl Drop for FileReservation {
    fn drop(&mut self) {
        self.end(0);
    }
}

/// The quotas of all users with a session since this start.
#[derive(Debug, Default)]
pub struct QuotaRegistry {
    users: tokio::sync::Mutex<HashMap<String, Arc<UserQuota>>>,
    /// Where the numbers live when several servers share the homes.
    ledger: Option<Arc<dyn QuotaLedger>>,
}

impl QuotaRegistry {
    /// Quotas kept in `ledger`, shared with the other servers on it.
    pub fn shared(ledger: Arc<dyn QuotaLedger>) -> Self {
        QuotaRegistry { users: Default::default(), ledger: Some(ledger) }
    }

    /// The user's shared quota; `scan` (bytes and entries) is awaited
    /// once, at first use, to measure the home (under the registry lock, so
    /// two first logins cannot both scan and diverge).
    pub async fn get_or_scan<E: From<QuotaUnavailable>>(
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
        let q = match &self.ledger {
            Some(ledger) => {
                let ledger = Arc::clone(ledger);
                let user = user.to_string();
                // The first call blocks on the database: off the async threads.
                let made = tokio::task::spawn_blocking(move || {
                    UserQuota::shared(ledger, &user, limit, max_files, (used, files))
                })
                .await
                .map_err(|_| QuotaUnavailable)??;
                Arc::new(made)
            }
            None => Arc::new(UserQuota::with_files(used, limit, files, max_files)),
        };
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
