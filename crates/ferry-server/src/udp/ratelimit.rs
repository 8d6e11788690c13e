//! A token bucket per source IP, in a bounded map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One token bucket: `burst` at once, `rate_per_sec` after. Bounds a total
/// across all sources, beside the per-source [`RateLimiter`].
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    bucket: Option<Bucket>,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        TokenBucket { rate_per_sec: rate_per_sec.max(0.0), burst: f64::from(burst.max(1)), bucket: None }
    }

    /// Takes one token; false means the request must be dropped.
    pub fn allow(&mut self, now: Instant) -> bool {
        let b = self.bucket.unwrap_or(Bucket { tokens: self.burst, last: now });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        let tokens = (b.tokens + elapsed * self.rate_per_sec).min(self.burst);
        let allowed = tokens >= 1.0;
        self.bucket = Some(Bucket { tokens: if allowed { tokens - 1.0 } else { tokens }, last: now });
        allowed
    }
}

/// Allows each IP address `burst` requests at once and `rate_per_sec` after.
///
/// The map holds at most `max_sources` addresses. When it is full, buckets
/// that have refilled completely are forgotten (they carry no state worth
/// keeping); if none has, a new address is refused until one does. A flood
/// from many addresses thus cannot grow memory, and it cannot buy replies.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: u32, max_sources: usize) -> Self {
        RateLimiter {
            rate_per_sec: rate_per_sec.max(0.0),
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        (b.tokens + elapsed * self.rate_per_sec).min(self.burst)
    }

    /// Takes one token for `ip`; false means the request must be dropped.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            let burst = self.burst;
            let full: Vec<IpAddr> =
                self.buckets.iter().filter(|(_, b)| self.refill(b, now) >= burst).map(|(ip, _)| *ip).collect();
            for ip in full {
                self.buckets.remove(&ip);
            }
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let fresh = Bucket { tokens: self.burst, last: now };
        let current = self.buckets.get(&ip).copied().unwrap_or(fresh);
        let tokens = self.refill(&current, now);
        let allowed = tokens >= 1.0;
        self.buckets.insert(ip, Bucket { tokens: if allowed { tokens - 1.0 } else { tokens }, last: now });
        allowed
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let mut rl = RateLimiter::new(2.0, 3, 10);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow(ip, t0)));
        assert!(!rl.allow(ip, t0));
        assert!(rl.allow(ip, t0 + Duration::from_millis(500)));
        assert!(!rl.allow(ip, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn total_bucket() {
        let mut tb = TokenBucket::new(10.0, 2);
        let t0 = Instant::now();
        assert!(tb.allow(t0) && tb.allow(t0));
        assert!(!tb.allow(t0));
        assert!(tb.allow(t0 + Duration::from_millis(100)));
        assert!(!tb.allow(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn map_is_bounded() {
        let mut rl = RateLimiter::new(1.0, 1, 2);
        let t0 = Instant::now();
        assert!(rl.allow([10, 0, 0, 1].into(), t0));
        assert!(rl.allow([10, 0, 0, 2].into(), t0));
        assert!(!rl.allow([10, 0, 0, 3].into(), t0));
        assert_eq!(rl.tracked(), 2);
        // Once the old buckets refill they are forgotten and room appears.
        assert!(rl.allow([10, 0, 0, 3].into(), t0 + Duration::from_secs(2)));
        assert!(rl.tracked() <= 2);
    }
}
