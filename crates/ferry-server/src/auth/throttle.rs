//! Failed-login throttling, per user and per source address.
//!
//! Two counters grow on each failure and decide the answer to the next try:
//!
//! - **per address**: growing delays, then a temporary ban. This is what stops
//!   a guesser.
//! - **per user**: growing delays only, capped at
//!   [`ThrottleConfig::max_user_delay`] (2 s by default), never a ban. Otherwise
//!   anyone could lock a user out by failing logins under their name; with the
//!   cap, the right password from another address still gets in promptly.
//!
//! A third counter per (user, address) pair lets a success forgive exactly the
//! failures that address made on that account: a user who mistyped twice is
//! not left closer to a ban, while failures against other accounts from the
//! same address still count.
//!
//! IPv6 addresses are grouped by /64, the usual size of one site's network, so
//! a single attacker cannot dodge the ban by walking its own prefix.
//! IPv4-mapped IPv6 addresses count as IPv4.
//!
//! Counters are forgotten [`ThrottleConfig::forget_after`] after the last
//! failure. The counts live behind [`FailureCounts`]: in this process
//! ([`MemoryCounts`], the default), or in PostgreSQL for several servers
//! (`super::postgres`, issue 16). In memory each map holds at most
//! [`ThrottleConfig::max_tracked`] keys; when full, expired keys go first,
//! then the oldest eighth.
//!
//! Time is a parameter (`now: Instant`) so tests need no sleeping; a shared
//! store uses the database's clock instead, the one its servers share.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store::StoreError;

/// Longest username kept as a throttle key, in bytes. Valid names are at most
/// 32; longer (invalid) names from the network are cut so that keys stay small.
const MAX_KEY_LEN: usize = 64;

/// Throttle tuning. [`Default`] gives sensible production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed without any delay.
    pub free_failures: u32,
    /// Delay after the first failure beyond the free ones; doubles after each.
    pub base_delay: Duration,
    /// The longest delay for an address.
    pub max_delay: Duration,
    /// The longest delay for a user (from all addresses together). Keep it
    /// small: it applies to the real user too.
    pub max_user_delay: Duration,
    /// Failures from one address that trigger a ban.
    pub ban_after: u32,
    /// How long a ban lasts.
    pub ban_for: Duration,
    /// A counter resets when this long has passed since its last failure.
    pub forget_after: Duration,
    /// The most keys each of the three maps holds.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_user_delay: Duration::from_secs(2),
            ban_after: 10,
            ban_for: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(15 * 60),
            max_tracked: 100_000,
        }
    }
}

/// What to do with a login try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Go ahead, but wait this long before answering the client.
    Delay(Duration),
    /// Refuse: the address is banned for `remaining` more.
    Banned { remaining: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self { failures: 0, last_failure: now, banned_until: None }
    }

    fn banned(&self, now: Instant) -> Option<Duration> {
        self.banned_until.filter(|&until| until > now).map(|until| until - now)
    }

    fn expired(&self, now: Instant, forget_after: Duration) -> bool {
        now.saturating_duration_since(self.last_failure) >= forget_after
    }

    /// The failure count still in force at `now`.
    fn failures(&self, now: Instant, forget_after: Duration) -> u32 {
        if self.expired(now, forget_after) { 0 } else { self.failures }
    }

    /// Gone entirely: no failures in force and no ban running.
    fn stale(&self, now: Instant, forget_after: Duration) -> bool {
        self.expired(now, forget_after) && self.banned(now).is_none()
    }
}

/// Where failure counts live: in this process ([`MemoryCounts`], the
/// default), or in a database several servers share
/// ([`super::postgres::PgFailureCounts`]) so that a flood spread across
/// servers is still counted and a ban on one holds on all (issue 16). The
/// [`Throttle`] turns the counts into decisions; a store only counts.
///
/// Keys arrive already cut: a user name to at most 64 bytes, an IPv6
/// address to its /64. Calls may block (a database); `now` is the caller's
/// clock, which a shared store may replace with its own so that servers
/// agree.
pub trait FailureCounts: Send + Sync + std::fmt::Debug {
    /// The counts in force for a try as `user` from `ip`.
    fn standing(&self, user: &str, ip: IpAddr, now: Instant, config: &ThrottleConfig) -> Result<Standing, StoreError>;
    /// Counts one failure for the user, the address and the pair; bans the
    /// address once it reaches [`ThrottleConfig::ban_after`]. Returns the
    /// address's count if this failure started a ban.
    fn add_failure(
        &self,
        user: &str,
        ip: IpAddr,
        now: Instant,
        config: &ThrottleConfig,
    ) -> Result<Option<u32>, StoreError>;
    /// Clears the user's count and takes the pair's failures off the
    /// address's count. A running ban stays.
    fn forgive(&self, user: &str, ip: IpAddr, now: Instant, config: &ThrottleConfig) -> Result<(), StoreError>;
}

/// The counts that decide a login try.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Failures from the address still in force.
    pub ip_failures: u32,
    /// How much longer the address is banned, if it is.
    pub banned: Option<Duration>,
    /// Failures under the user name still in force, from all addresses.
    pub user_failures: u32,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, Entry>,
    ips: HashMap<IpAddr, Entry>,
    pairs: HashMap<(String, IpAddr), Entry>,
}

/// Failure counts in this process: one short std `Mutex` section per call.
#[derive(Debug, Default)]
pub struct MemoryCounts {
    inner: Mutex<Inner>,
}

/// Failed-login throttle: the policy (delays, bans) over [`FailureCounts`].
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    counts: Arc<dyn FailureCounts>,
}

fn user_key(user: &str) -> String {
    if user.len() <= MAX_KEY_LEN {
        return user.to_owned();
    }
    let mut end = MAX_KEY_LEN;
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user[..end].to_owned()
}

/// IPv4 as is (IPv4-mapped IPv6 included), IPv6 cut to its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
    }
}

/// Finds or inserts the entry for `key`, making room first when the map is full.
fn entry_mut<'a, K: Hash + Eq + Clone>(
    map: &'a mut HashMap<K, Entry>,
    key: K,
    now: Instant,
    config: &ThrottleConfig,
) -> &'a mut Entry {
    if !map.contains_key(&key) && map.len() >= config.max_tracked.max(1) {
        make_room(map, now, config);
    }
    let entry = map.entry(key).or_insert_with(|| Entry::new(now));
    if entry.expired(now, config.forget_after) {
        entry.failures = 0;
    }
    entry
}

/// Drops stale entries; if that is not enough, the oldest eighth (at least one).
fn make_room<K: Hash + Eq + Clone>(map: &mut HashMap<K, Entry>, now: Instant, config: &ThrottleConfig) {
    map.retain(|_, e| !e.stale(now, config.forget_after));
    let cap = config.max_tracked.max(1);
    if map.len() < cap {
        return;
    }
    let evict = (map.len() / 8).max(1);
    let mut times: Vec<Instant> = map.values().map(|e| e.last_failure).collect();
    let (_, &mut cutoff, _) = times.select_nth_unstable(evict - 1);
    map.retain(|_, e| e.last_failure > cutoff);
    tracing::debug!(remaining = map.len(), "login throttle full: forgot the oldest entries");
}

impl MemoryCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps stay consistent if a holder panicked: each update is a
        // plain field write.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many keys are tracked, over all three maps.
    #[must_use]
    pub fn tracked(&self) -> usize {
        let inner = self.lock();
        inner.users.len() + inner.ips.len() + inner.pairs.len()
    }
}

impl FailureCounts for MemoryCounts {
    fn standing(&self, user: &str, ip: IpAddr, now: Instant, config: &ThrottleConfig) -> Result<Standing, StoreError> {
        let forget = config.forget_after;
        let inner = self.lock();
        let ip_entry = inner.ips.get(&ip);
        Ok(Standing {
            ip_failures: ip_entry.map_or(0, |e| e.failures(now, forget)),
            banned: ip_entry.and_then(|e| e.banned(now)),
            user_failures: inner.users.get(user).map_or(0, |e| e.failures(now, forget)),
        })
    }

    fn add_failure(
        &self,
        user: &str,
        ip: IpAddr,
        now: Instant,
        config: &ThrottleConfig,
    ) -> Result<Option<u32>, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        for entry in [
            entry_mut(&mut inner.users, user.to_owned(), now, config),
            entry_mut(&mut inner.pairs, (user.to_owned(), ip), now, config),
        ] {
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
        }
        let entry = entry_mut(&mut inner.ips, ip, now, config);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= config.ban_after && entry.banned(now).is_none() {
            entry.banned_until = Some(now + config.ban_for);
            return Ok(Some(entry.failures));
        }
        Ok(None)
    }

    fn forgive(&self, user: &str, ip: IpAddr, now: Instant, config: &ThrottleConfig) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.users.remove(user);
        let forgiven = inner.pairs.remove(&(user.to_owned(), ip)).map_or(0, |e| e.failures(now, config.forget_after));
        if let Some(entry) = inner.ips.get_mut(&ip) {
            entry.failures = entry.failures.saturating_sub(forgiven);
            if entry.failures == 0 && entry.banned(now).is_none() {
                inner.ips.remove(&ip);
            }
        }
        Ok(())
    }
}

impl Throttle {
    /// A throttle that counts in this process.
    #[must_use]
    pub fn new(config: ThrottleConfig) -> Self {
        Self::with_counts(config, Arc::new(MemoryCounts::default()))
    }

    /// A throttle over other counts, e.g. a database several servers share.
    #[must_use]
    pub fn with_counts(config: ThrottleConfig, counts: Arc<dyn FailureCounts>) -> Self {
        Self { config, counts }
    }

    #[must_use]
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// `base_delay * 2^(n - free)` once `n` failures reach the free ones,
    /// capped: with 3 free failures, the try after the third is delayed
    /// (issue 13: the delay had come one failure late).
    fn delay_for(&self, failures: u32, cap: Duration) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let Some(over) = failures.checked_sub(self.config.free_failures) else {
            return Duration::ZERO;
        };
        let factor = 1u32 << over.min(20);
        self.config.base_delay.saturating_mul(factor).min(cap)
    }

    /// What to do with a login try as `user` from `ip`. An error (the
    /// shared counts are unreachable) refuses the try: without counts,
    /// guessing would be free. May block.
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<Decision, StoreError> {
        let standing = self.counts.standing(&user_key(user), ip_key(ip), now, &self.config)?;
        if let Some(remaining) = standing.banned {
            return Ok(Decision::Banned { remaining });
        }
        let delay = self
            .delay_for(standing.ip_failures, self.config.max_delay)
            .max(self.delay_for(standing.user_failures, self.config.max_user_delay));
        Ok(if delay.is_zero() { Decision::Allow } else { Decision::Delay(delay) })
    }

    /// Counts a failed login as `user` from `ip`; bans the address once it
    /// reaches [`ThrottleConfig::ban_after`] failures. May block; a store
    /// error is logged (the login fails anyway).
    pub fn record_failure(&self, user: &str, ip: IpAddr, now: Instant) {
        let ip = ip_key(ip);
        match self.counts.add_failure(&user_key(user), ip, now, &self.config) {
            Ok(None) => {}
            Ok(Some(failures)) => tracing::warn!(
                %ip,
                failures,
                ban_secs = self.config.ban_for.as_secs(),
                "banning address after repeated login failures"
            ),
            Err(e) => tracing::warn!(%ip, error = %e, "a failed login could not be counted"),
        }
    }

    /// Clears the user's counter and forgives the address the failures it made
    /// on this user. A running ban stays. May block; a store error is logged.
    pub fn record_success(&self, user: &str, ip: IpAddr, now: Instant) {
        let ip = ip_key(ip);
        if let Err(e) = self.counts.forgive(&user_key(user), ip, now, &self.config) {
            tracing::warn!(%ip, error = %e, "a login's earlier failures could not be forgiven");
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn check(t: &Throttle, user: &str, ip: IpAddr, now: Instant) -> Decision {
        t.check(user, ip, now).unwrap()
    }

    #[test]
    fn free_failures_then_growing_delays() {
        let t = Throttle::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            t.record_failure("alice", a, now);
        }
        assert_eq!(check(&t, "alice", a, now), Decision::Allow, "two of the three free failures");
        t.record_failure("alice", a, now);
        assert_eq!(check(&t, "alice", a, now), Decision::Delay(Duration::from_millis(250)), "right after the third");
        t.record_failure("alice", a, now);
        assert_eq!(check(&t, "alice", a, now), Decision::Delay(Duration::from_millis(500)));
    }

    #[test]
    fn flood_bans_the_address_not_the_user() {
        let t = Throttle::default();
        let now = Instant::now();
        let attacker = ip("192.0.2.1");
        let owner = ip("198.51.100.7");
        for i in 0..100 {
            t.record_failure("alice", attacker, now + Duration::from_millis(i));
        }
        let later = now + secs(1);
        assert!(matches!(check(&t, "alice", attacker, later), Decision::Banned { .. }));
        // Another user from the banned address: still banned.
        assert!(matches!(check(&t, "bob", attacker, later), Decision::Banned { .. }));
        // The owner from elsewhere: at most the per-user cap.
        match check(&t, "alice", owner, later) {
            Decision::Allow => {}
            Decision::Delay(d) => assert!(d <= secs(2), "{d:?}"),
            d @ Decision::Banned { .. } => panic!("owner refused: {d:?}"),
        }
        t.record_success("alice", owner, later);
        assert_eq!(check(&t, "alice", owner, later), Decision::Allow);
        // Success elsewhere does not lift the attacker's ban.
        assert!(matches!(check(&t, "alice", attacker, later), Decision::Banned { .. }));
    }

    #[test]
    fn ban_expires_and_counters_are_forgotten() {
        let config = ThrottleConfig::default();
        let t = Throttle::new(config.clone());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..config.ban_after {
            t.record_failure("alice", a, now);
        }
        assert_eq!(check(&t, "alice", a, now + secs(60)), Decision::Banned { remaining: config.ban_for - secs(60) });
        let after = now + config.ban_for.max(config.forget_after);
        assert_eq!(check(&t, "alice", a, after), Decision::Allow);
        // Counting starts again from zero.
        t.record_failure("alice", a, after);
        assert_eq!(check(&t, "alice", a, after), Decision::Allow);
    }

    #[test]
    fn success_forgives_only_that_users_failures() {
        let t = Throttle::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..6 {
            t.record_failure("mallory-target", a, now);
        }
        for _ in 0..2 {
            t.record_failure("eve", a, now);
        }
        t.record_success("eve", a, now);
        // 6 failures left on the address: 3 beyond the free ones, so 250 ms doubled three times.
        assert_eq!(check(&t, "eve", a, now), Decision::Delay(Duration::from_millis(2000)));
        // Cycling failures and successes on an own account does not reset the
        // count against another.
        for _ in 0..4 {
            t.record_failure("mallory-target", a, now);
            t.record_success("eve", a, now);
        }
        assert!(matches!(check(&t, "eve", a, now), Decision::Banned { .. }));
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..10u16 {
            let addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, i, i, i));
            t.record_failure("alice", addr, now);
        }
        assert!(matches!(check(&t, "x", ip("2001:db8:0:1::ffff"), now), Decision::Banned { .. }));
        assert_eq!(check(&t, "x", ip("2001:db8:0:2::1"), now), Decision::Allow);
        // IPv4-mapped counts as IPv4.
        for _ in 0..10 {
            t.record_failure("alice", ip("::ffff:192.0.2.9"), now);
        }
        assert!(matches!(check(&t, "x", ip("192.0.2.9"), now), Decision::Banned { .. }));
    }

    #[test]
    fn memory_is_bounded() {
        let counts = Arc::new(MemoryCounts::default());
        let t = Throttle::with_counts(ThrottleConfig { max_tracked: 100, ..ThrottleConfig::default() }, counts.clone());
        let now = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::V4(i.into());
            let user = format!("user{i}-{}", "x".repeat(200));
            t.record_failure(&user, addr, now + Duration::from_millis(u64::from(i)));
        }
        assert!(counts.tracked() <= 300, "{}", counts.tracked());
        // The newest survive.
        let last = IpAddr::V4(999u32.into());
        assert_eq!(counts.lock().ips.get(&last).map(|e| e.failures), Some(1), "newest entry evicted");
    }

    #[test]
    fn delay_is_capped_and_does_not_overflow() {
        let t = Throttle::new(ThrottleConfig { ban_after: u32::MAX, ..ThrottleConfig::default() });
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..200 {
            t.record_failure("alice", a, now);
        }
        assert_eq!(check(&t, "alice", a, now), Decision::Delay(secs(8)));
    }
}
