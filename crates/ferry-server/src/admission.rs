//! Admission, shared by every front end (framed, SSH, FTP): a connection is
//! served only with a seat, taken right after `accept` and before any byte
//! is read. A seat is a permit of the server-wide cap
//! (`limits.max_connections`) and, until the connection logs in, a place
//! in its address's count of unauthenticated connections
//! (`limits.max_unauthenticated_per_ip`). One gate for all front ends, so a
//! flood of half-open connections from one address is held to the same cap
//! whichever ports it spreads over. How a refusal is told is each front
//! end's own (an error frame, an SSH pre-banner line, a 421 reply); a login
//! deadline closes what never logs in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was not admitted; [`Refusal::message`] is what the peer is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server-wide cap is reached.
    Full,
    /// The peer's address already has its share of connections that have
    /// not logged in.
    Unauthenticated,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Full => "server is at its connection limit",
            Refusal::Unauthenticated => "too many connections from your address that have not logged in",
        }
    }
}

/// The seats: one per connection served, on every front end.
pub struct Gate {
    connections: Arc<Semaphore>,
    unauth: Arc<UnauthCounts>,
    max_unauth_per_ip: usize,
}

impl Gate {
    pub fn new(max_connections: usize, max_unauth_per_ip: usize) -> Gate {
        Gate {
            connections: Arc::new(Semaphore::new(max_connections)),
            unauth: Arc::new(UnauthCounts::default()),
            max_unauth_per_ip,
        }
    }

    /// A seat for a peer at `ip`, or why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refusal> {
        let permit = Arc::clone(&self.connections).try_acquire_owned().map_err(|_| Refusal::Full)?;
        let key = unauth_key(ip);
        if !self.unauth.enter(key, self.max_unauth_per_ip) {
            return Err(Refusal::Unauthenticated);
        }
        Ok(Admission { _permit: permit, unauth: Some((Arc::clone(&self.unauth), key)) })
    }

    /// A seat for a local peer (the Unix socket): the server-wide cap only.
    pub fn admit_local(&self) -> Result<Admission, Refusal> {
        let permit = Arc::clone(&self.connections).try_acquire_owned().map_err(|_| Refusal::Full)?;
        Ok(Admission { _permit: permit, unauth: None })
    }
}

/// A connection's seat: the global permit and, until login, its place in the
/// per-address count of unauthenticated connections. Dropped with the
/// connection.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    unauth: Option<(Arc<UnauthCounts>, IpAddr)>,
}

impl Admission {
    /// The connection logged in: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        if let Some((counts, ip)) = self.unauth.take() {
            counts.leave(ip);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
    }
}

/// The key a peer is counted under for the unauthenticated-connection cap,
/// as the login throttle keys it (auth/throttle.rs): IPv4 as is (IPv4-mapped
/// IPv6 included, so a dual-stack listener does not lump every IPv4 peer
/// together), IPv6 cut to its /64, the usual size of one site's network, so
/// one host cannot multiply the cap by walking its own prefix (issue 12, item 7).
fn unauth_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

/// Unauthenticated connections per [`unauth_key`].
#[derive(Default)]
struct UnauthCounts(Mutex<HashMap<IpAddr, usize>>);

impl UnauthCounts {
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauth_key_groups_ipv6_by_64_and_keeps_ipv4_apart() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(unauth_key(a), unauth_key(b));
        assert_eq!(unauth_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(unauth_key(a), unauth_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v4_other: IpAddr = "192.0.2.8".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let mapped_other: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        assert_eq!(unauth_key(v4), v4);
        assert_eq!(unauth_key(mapped), v4, "IPv4-mapped counts as IPv4");
        assert_ne!(unauth_key(mapped), unauth_key(mapped_other), "not one /64 for all of IPv4");
        assert_ne!(unauth_key(v4), unauth_key(v4_other));
        let loopback: IpAddr = "::1".parse().unwrap();
        assert_eq!(unauth_key(loopback), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn one_64_shares_one_count() {
        let counts = UnauthCounts::default();
        let first = unauth_key("2001:db8::1".parse().unwrap());
        let second = unauth_key("2001:db8::2:3:4".parse().unwrap());
        assert!(counts.enter(first, 2));
        assert!(counts.enter(second, 2));
        assert!(!counts.enter(first, 2), "the third from the same /64 is over the cap");
        counts.leave(second);
        assert!(counts.enter(first, 2), "a seat freed in the /64 is usable by any of it");
    }

    #[test]
    fn a_seat_is_freed_by_login_or_drop_and_the_global_cap_holds() {
        let gate = Gate::new(3, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut first = gate.admit(ip).unwrap();
        assert_eq!(gate.admit(ip).err(), Some(Refusal::Unauthenticated));
        first.authenticated();
        let second = gate.admit(ip).unwrap();
        let _local = gate.admit_local().unwrap();
        assert_eq!(gate.admit("192.0.2.2".parse().unwrap()).err(), Some(Refusal::Full));
        drop(second);
        assert!(gate.admit(ip).is_ok(), "a dropped seat is free again");
    }
}
