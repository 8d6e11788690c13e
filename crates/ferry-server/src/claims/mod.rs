//! Upload claims: which writer may write an upload id. One writer at a
//! time; a resume takes the claim over from a writer that went silent. In
//! one process the older writer is revoked at once and its write in flight
//! finishes before the newer writer's first. Servers that share homes also
//! share the claims, through a [`ClaimLedger`] (`postgres.rs`): a claim held
//! on another server is busy unless taken over, and a writer taken over from
//! another server learns it at its next check (every [`CHECK_EVERY`] bytes,
//! and always before its commit), so it can never commit over the newer one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::home::HomeError;
use crate::quota::Reservation;

pub mod postgres;

/// The generation of a claim in a [`ClaimLedger`]: each takeover makes a
/// newer one, and only the newest may write.
pub type Generation = i64;

/// Bytes a writer may write between two checks of its shared claim.
pub const CHECK_EVERY: u64 = 8 << 20;

/// Claims kept outside the process, shared by every server of one site.
/// Calls block on a round trip; they are made at a claim, at its end, every
/// [`CHECK_EVERY`] bytes and at a commit.
pub trait ClaimLedger: Send + Sync + std::fmt::Debug {
    /// Claims `id` of `user` for this server: its generation, or `None`
    /// when a live claim holds it and this is not a takeover.
    fn claim(&self, user: &str, id: &str, take_over: bool) -> Result<Option<Generation>, ClaimUnavailable>;

    /// Whether `generation` is still the newest claim on `id`.
    fn holds(&self, user: &str, id: &str, generation: Generation) -> Result<bool, ClaimUnavailable>;

    /// Ends a claim (a newer one is left alone).
    fn release(&self, user: &str, id: &str, generation: Generation);
}

/// The shared claims could not be asked (their database is unreachable).
/// The cause is logged where it happens.
#[derive(Debug, thiserror::Error)]
#[error("upload claims cannot be checked right now; try again")]
pub struct ClaimUnavailable;

/// One writer's hold on an upload id. A newer writer may revoke it: the
/// older one's next write fails, and the newer waits until the older's
/// write in flight (under `busy`) has finished.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    pub(crate) revoked: AtomicBool,
    pub(crate) busy: tokio::sync::Mutex<()>,
    /// The room reserved for the rest of the upload. Kept here rather than
    /// in the `Upload`, so that a newer writer taking over withdraws it: a
    /// silent session's promise must not keep its own resume out of the
    /// quota.
    reservation: Mutex<Option<Reservation>>,
}

impl Claim {
    pub(crate) fn reservation(&self) -> std::sync::MutexGuard<'_, Option<Reservation>> {
        self.reservation.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A user's claims in a shared ledger.
#[derive(Debug)]
struct Shared {
    ledger: Arc<dyn ClaimLedger>,
    user: String,
}

/// The upload ids being written in one home.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    map: Mutex<HashMap<String, Arc<Claim>>>,
    shared: Option<Shared>,
}

pub(crate) struct ClaimGuard {
    claims: Arc<Claims>,
    id: String,
    pub(crate) claim: Arc<Claim>,
    /// The claim's generation in the shared ledger.
    generation: Option<Generation>,
}

impl Claims {
    /// Claims shared through `ledger` with the other servers of `user`'s home.
    pub(crate) fn shared(ledger: Arc<dyn ClaimLedger>, user: &str) -> Self {
        Claims { map: Mutex::default(), shared: Some(Shared { ledger, user: user.to_string() }) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Claim>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `id`; a held claim is busy unless `take_over`.
    pub(crate) async fn claim(self: &Arc<Self>, id: &str, take_over: bool) -> Result<ClaimGuard, HomeError> {
        let busy = || HomeError::Busy(id.to_string());
        if !take_over && self.map().contains_key(id) {
            return Err(busy());
        }
        let claim = Arc::new(Claim::default());
        let mut guard = ClaimGuard { claims: Arc::clone(self), id: id.to_string(), claim, generation: None };
        if let Some(sh) = &self.shared {
            // Held live by another server (or unknown: the ledger is unreachable).
            guard.generation = Some(sh.ledger.claim(&sh.user, id, take_over).ok().flatten().ok_or_else(busy)?);
        }
        let older = {
            let mut map = self.map();
            let older = map.get(id).cloned();
            if older.is_some() && !take_over {
                // Claimed here meanwhile; the guard gives the shared claim back.
                return Err(busy());
            }
            map.insert(id.to_string(), Arc::clone(&guard.claim));
            older
        };
        if let Some(older) = older {
            older.revoked.store(true, Ordering::SeqCst);
            // The older writer's write in flight ends before ours begins;
            // it writes no more, so the room it reserved is withdrawn.
            drop(older.busy.lock().await);
            drop(older.reservation().take());
            tracing::info!(upload_id = %id, "upload taken over by a newer session");
        }
        Ok(guard)
    }
}

impl ClaimGuard {
    /// Fails when a newer writer took the upload over, here or (asked of
    /// the shared ledger only when `ask_ledger`) on another server.
    pub(crate) fn check(&self, ask_ledger: bool) -> Result<(), HomeError> {
        if self.claim.revoked.load(Ordering::SeqCst) {
            return Err(HomeError::TakenOver(self.id.clone()));
        }
        if let (true, Some(sh), Some(generation)) = (ask_ledger, &self.claims.shared, self.generation) {
            match sh.ledger.holds(&sh.user, &self.id, generation) {
                Ok(true) => {}
                Ok(false) => {
                    self.claim.revoked.store(true, Ordering::SeqCst);
                    tracing::info!(upload_id = %self.id, "upload taken over through another server");
                    return Err(HomeError::TakenOver(self.id.clone()));
                }
                Err(ClaimUnavailable) => return Err(HomeError::Busy(self.id.clone())),
            }
        }
        Ok(())
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        {
            let mut map = self.claims.map();
            if map.get(&self.id).is_some_and(|c| Arc::ptr_eq(c, &self.claim)) {
                map.remove(&self.id);
            }
        }
        if let (Some(sh), Some(generation)) = (&self.claims.shared, self.generation) {
            sh.ledger.release(&sh.user, &self.id, generation);
        }
    }
}
