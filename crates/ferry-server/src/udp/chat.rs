//! The UDP chat relay.
//!
//! [`Relay`] holds all state and logic with no socket (datagram in, datagrams
//! out, `now` passed in); [`serve`] is the thin loop around a `UdpSocket`.
//!
//! Reliability (issue 6): each client numbers its `Msg`/`Who`; the relay acks
//! every one it sees (again for duplicates), buffers out-of-order ones in a
//! bounded window and handles them in order. Everything the relay sends a
//! client on its numbered stream (`Deliver`, `WhoList`, `Notice`) sits in
//! that client's outbox and is retransmitted with backoff until acked.
//! Per-sender order therefore holds end to end.
//!
//! No amplifier (issue 12): an address is admitted only after it echoes a
//! stateless cookie from a `Retry` (as DTLS `HelloVerifyRequest` and QUIC
//! `Retry` do), so it has proven it receives there. Until then a datagram
//! gets at most one reply, never longer than itself, and joins are rate
//! limited per IP and in total. Members are bounded too: an item sent
//! `max_transmissions` times unacknowledged drops the member, and at most
//! `max_notices` notices wait for a member's acknowledgement.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ratelimit::{RateLimiter, TokenBucket};
use ferry_proto::udp::chat::{self as wire, ClientDatagram, MAX_DATAGRAM, RefuseCode, RelayDatagram};
use ferry_proto::udp::reliable::{Inbox, Offer, Outbox, RetryPolicy};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// `[chat]` in the server configuration. Durations are milliseconds or
/// strings such as `"5s"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Run the relay inside `ferry serve`.
    pub enabled: bool,
    /// Where `ferry serve` binds it (default 127.0.0.1:7735).
    pub listen: Option<std::net::SocketAddr>,
    /// How often clients should send `Ping` (announced in `Welcome`).
    #[serde(with = "super::duration")]
    pub heartbeat: Duration,
    /// A client silent for this long is dropped.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
    /// Most clients joined at once.
    pub max_clients: usize,
    /// First retransmission delay towards a client.
    #[serde(with = "super::duration")]
    pub retry_initial: Duration,
    /// Retransmission backoff cap.
    #[serde(with = "super::duration")]
    pub retry_max: Duration,
    /// Unacknowledged items in flight per client, and the reorder window.
    pub window: usize,
    /// A client with more unacknowledged items than this is dropped.
    pub max_pending: usize,
    /// A client that leaves one item unacknowledged after this many
    /// transmissions is dropped: retransmissions to one address are bounded.
    pub max_transmissions: u32,
    /// Notices (joins, leaves...) waiting for one client's acknowledgement;
    /// more are counted and summed up in the next one instead of queued.
    pub max_notices: usize,
    /// Most clients joined at once from one IP address.
    pub max_clients_per_ip: usize,
    /// `join` datagrams accepted per source IP: `join_burst` at once, then
    /// `join_rate_per_sec`. Past that they are dropped without an answer.
    pub join_rate_per_sec: f64,
    pub join_burst: u32,
    /// The same over all sources together, for joins without a valid
    /// cookie (the ones that are answered with `retry`).
    pub join_total_rate_per_sec: f64,
    pub join_total_burst: u32,
    /// Bound of the per-IP rate limiter's map.
    pub max_sources: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            enabled: false,
            listen: None,
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            max_clients: 256,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            window: 32,
            max_pending: 1024,
            max_transmissions: 8,
            max_notices: 16,
            max_clients_per_ip: 16,
            join_rate_per_sec: 2.0,
            join_burst: 10,
            join_total_rate_per_sec: 100.0,
            join_total_burst: 200,
            max_sources: 4096,
        }
    }
}

impl ChatConfig {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy { initial: self.retry_initial, max: self.retry_max, window: self.window }
    }

    /// How often [`serve`] calls [`Relay::tick`].
    pub fn tick_interval(&self) -> Duration {
        (self.retry_initial / 2).min(self.heartbeat / 2).max(Duration::from_millis(5))
    }
}

enum Request {
    Msg { text: String, to: Option<String> },
    Who,
}

struct Client {
    key: String,
    addr: SocketAddr,
    last_seen: Instant,
    inbox: Inbox<Request>,
    outbox: Outbox<RelayDatagram>,
    /// Sequence numbers of this client's unacknowledged `Notice`s.
    notices: HashSet<u64>,
    /// Notices not queued since the last one that was.
    skipped_notices: u64,
}

/// Datagrams to send: destination and bytes.
pub type Outgoing = Vec<(SocketAddr, Vec<u8>)>;

/// How long one cookie time bucket lasts. A cookie from the current or the
/// previous bucket is accepted, so it is valid for 30 to 60 seconds.
const COOKIE_BUCKET: Duration = Duration::from_secs(30);

/// The relay's state, without I/O.
pub struct Relay {
    cfg: ChatConfig,
    clients: HashMap<String, Client>,
    by_addr: HashMap<SocketAddr, String>,
    /// The cookie key, random per process: cookies die with the relay.
    secret: [u8; 32],
    /// Origin of the cookie time buckets.
    epoch: Instant,
    joins_per_ip: RateLimiter,
    joins_total: TokenBucket,
}

/// Compares keys without stopping at the first difference.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_key() -> io::Result<String> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(raw))
}

fn refuse(out: &mut Outgoing, to: SocketAddr, code: RefuseCode, reason: &str) {
    let d = RelayDatagram::Refused { code, reason: reason.to_owned() };
    out.push((to, wire::encode_relay(&d)));
}

/// The only way to answer an address that has not proven it receives there
/// (it may be a spoofed victim): one datagram, no longer than the request,
/// else nothing. Bytes out per byte in towards such addresses stay at most 1.
fn reply_unproven(out: &mut Outgoing, to: SocketAddr, request_len: usize, d: &RelayDatagram) {
    let bytes = wire::encode_relay(d);
    if bytes.len() <= request_len {
        out.push((to, bytes));
    } else {
        tracing::debug!(%to, request_len, reply_len = bytes.len(), "chat: no answer larger than the request");
    }
}

impl Relay {
    /// A relay with a fresh random cookie key; `now` starts the cookie clock.
    pub fn new(cfg: ChatConfig, now: Instant) -> io::Result<Self> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
        let joins_per_ip = RateLimiter::new(cfg.join_rate_per_sec, cfg.join_burst, cfg.max_sources);
        let joins_total = TokenBucket::new(cfg.join_total_rate_per_sec, cfg.join_total_burst);
        Ok(Relay {
            cfg,
            clients: HashMap::new(),
            by_addr: HashMap::new(),
            secret,
            epoch: now,
            joins_per_ip,
            joins_total,
        })
    }

    fn bucket(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_secs() / COOKIE_BUCKET.as_secs()).saturating_add(1)
    }

    /// The cookie `from` must echo to prove it receives at its address.
    fn cookie_for(&self, from: SocketAddr, now: Instant) -> String {
        wire::join_cookie(&self.secret, self.bucket(now), from)
    }

    /// Whether `cookie` is ours for `from`, from this bucket or the previous.
    fn cookie_ok(&self, from: SocketAddr, cookie: &str, now: Instant) -> bool {
        let b = self.bucket(now);
        [b, b - 1].iter().any(|&b| same_key(&wire::join_cookie(&self.secret, b, from), cookie))
    }

    /// Nicknames currently joined, sorted.
    pub fn nicks(&self) -> Vec<String> {
        let mut v: Vec<String> = self.clients.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every joined client's address (used to say `Bye` on shutdown).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.by_addr.keys().copied().collect()
    }

    fn enqueue(&mut self, nick: &str, build: impl FnOnce(u64) -> RelayDatagram) {
        if let Some(c) = self.clients.get_mut(nick) {
            c.outbox.push_with(build);
        }
    }

    /// Queues a notice for `nick`, unless `max_notices` of them already wait
    /// for its acknowledgement: then it is only counted, and the count is
    /// prefixed to the next notice that is queued.
    fn notice(&mut self, nick: &str, text: &str) {
        let max = self.cfg.max_notices.max(1);
        let Some(c) = self.clients.get_mut(nick) else {
            return;
        };
        if c.notices.len() >= max {
            c.skipped_notices += 1;
            return;
        }
        let text = match std::mem::take(&mut c.skipped_notices) {
            0 => text.to_owned(),
            n => format!("({n} notices skipped) {text}"),
        };
        let seq = c.outbox.push_with(|seq| RelayDatagram::Notice { seq, text });
        c.notices.insert(seq);
    }

    fn notice_all(&mut self, except: &str, text: &str) {
        let nicks: Vec<String> = self.clients.keys().filter(|n| *n != except).cloned().collect();
        for n in nicks {
            self.notice(&n, text);
        }
    }

    fn remove(&mut self, nick: &str, why: &str) {
        if let Some(c) = self.clients.remove(nick) {
            self.by_addr.remove(&c.addr);
            tracing::info!(nick, why, "chat: client left");
            self.notice_all(nick, &format!("{nick} left ({why})"));
        }
    }

    fn flush(&mut self, now: Instant, out: &mut Outgoing) {
        // Give up on a client before any item would go out once too often.
        let max = self.cfg.max_transmissions.max(1);
        let deaf: Vec<String> =
            self.clients.iter().filter(|(_, c)| c.outbox.exhausted(now, max)).map(|(n, _)| n.clone()).collect();
        for n in deaf {
            self.remove(&n, "not acknowledging");
        }
        for c in self.clients.values_mut() {
            for (_, d) in c.outbox.poll_transmit(now) {
                out.push((c.addr, wire::encode_relay(&d)));
            }
        }
    }

    /// Handles one datagram from `from`; returns what to send.
    pub fn handle(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Outgoing {
        let mut out = Vec::new();
        let d = match wire::decode_client(bytes) {
            Ok(d) => d,
            Err(e) => {
                // No reply: answering junk from anyone would make the relay
                // a reflector.
                tracing::debug!(%from, error = %e, "chat: dropped datagram");
                return out;
            }
        };
        let key = match &d {
            ClientDatagram::Join { nick, cookie, .. } => {
                self.join(from, bytes.len(), nick, cookie.as_deref(), now, &mut out);
                self.flush(now, &mut out);
                return out;
            }
            ClientDatagram::Msg { key, .. }
            | ClientDatagram::Who { key, .. }
            | ClientDatagram::Ack { key, .. }
            | ClientDatagram::Ping { key }
            | ClientDatagram::Quit { key } => key,
        };
        // Both the key and the source address must match one joined client.
        let nick = match self.by_addr.get(&from) {
            Some(n) if self.clients.get(n).is_some_and(|c| same_key(&c.key, key)) => n.clone(),
            Some(_) => {
                // A member's (proven) address with the wrong key.
                refuse(&mut out, from, RefuseCode::BadKey, "unknown key");
                return out;
            }
            None => {
                // Not a member: nothing proven about this address. Tell a
                // client the relay forgot (a restart) only within the limits.
                // "unknown": short enough to fit in a ping or a quit (53 bytes).
                if self.joins_per_ip.allow(from.ip(), now) {
                    let d = RelayDatagram::Refused { code: RefuseCode::BadKey, reason: "unknown".into() };
                    reply_unproven(&mut out, from, bytes.len(), &d);
                }
                return out;
            }
        };
        let Some(client) = self.clients.get_mut(&nick) else {
            return out; // by_addr and clients are kept in step
        };
        client.last_seen = now;
        let (seq, req) = match d {
            ClientDatagram::Msg { seq, text, to, .. } => (seq, Request::Msg { text, to }),
            ClientDatagram::Who { seq, .. } => (seq, Request::Who),
            ClientDatagram::Ack { seq, .. } => {
                client.outbox.ack(seq);
                client.notices.remove(&seq);
                self.flush(now, &mut out);
                return out;
            }
            ClientDatagram::Ping { .. } => {
                out.push((from, wire::encode_relay(&RelayDatagram::Pong)));
                return out;
            }
            ClientDatagram::Quit { .. } => {
                out.push((from, wire::encode_relay(&RelayDatagram::Bye)));
                self.remove(&nick, "quit");
                self.flush(now, &mut out);
                return out;
            }
            ClientDatagram::Join { .. } => return out, // handled above
        };
        match client.inbox.offer(seq, req) {
            Offer::New | Offer::Duplicate => {
                out.push((from, wire::encode_relay(&RelayDatagram::Ack { seq })));
            }
            Offer::OutOfWindow => {}
        }
        let mut ready = Vec::new();
        while let Some(r) = client.inbox.pop_ready() {
            ready.push(r);
        }
        for r in ready {
            self.apply(&nick, r);
        }
        self.flush(now, &mut out);
        out
    }

    fn join(
        &mut self,
        from: SocketAddr,
        request_len: usize,
        nick: &str,
        cookie: Option<&str>,
        now: Instant,
        out: &mut Outgoing,
    ) {
        if !self.joins_per_ip.allow(from.ip(), now) {
            tracing::debug!(%from, "chat: join rate-limited (per address)");
            return;
        }
        if let Some(existing) = self.by_addr.get(&from) {
            if existing == nick {
                // A repeated Join (our Welcome was lost): same answer again.
                if let Some(c) = self.clients.get(existing) {
                    out.push((from, wire::encode_relay(&self.welcome(nick, &c.key))));
                }
            } else {
                refuse(out, from, RefuseCode::BadKey, "this address has joined already");
            }
            return;
        }
        if !cookie.is_some_and(|c| self.cookie_ok(from, c, now)) {
            // Unproven (no cookie, a stale or a forged one): a fresh cookie,
            // if it fits in what came in. No state is kept. The total limit
            // counts these only (after the per-address one, so one flooding
            // address cannot drain it): a proven join costs no reflection.
            if !self.joins_total.allow(now) {
                tracing::debug!(%from, "chat: join rate-limited (total)");
                return;
            }
            let retry = RelayDatagram::Retry { cookie: self.cookie_for(from, now) };
            return reply_unproven(out, from, request_len, &retry);
        }
        if !wire::valid_nick(nick) {
            let why = format!("a nickname is 1 to {} of A-Z a-z 0-9 _ -", wire::MAX_NICK);
            return refuse(out, from, RefuseCode::BadNick, &why);
        }
        if self.clients.contains_key(nick) {
            return refuse(out, from, RefuseCode::NickTaken, "nickname taken");
        }
        if self.clients.len() >= self.cfg.max_clients {
            return refuse(out, from, RefuseCode::Full, "relay full");
        }
        if self.by_addr.keys().filter(|a| a.ip() == from.ip()).count() >= self.cfg.max_clients_per_ip {
            return refuse(out, from, RefuseCode::Full, "too many clients from this address");
        }
        let key = match new_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "chat: no randomness for a key");
                return;
            }
        };
        out.push((from, wire::encode_relay(&self.welcome(nick, &key))));
        self.clients.insert(
            nick.to_owned(),
            Client {
                key,
                addr: from,
                last_seen: now,
                inbox: Inbox::new(self.cfg.window),
                outbox: Outbox::new(self.cfg.policy()),
                notices: HashSet::new(),
                skipped_notices: 0,
            },
        );
        self.by_addr.insert(from, nick.to_owned());
        tracing::info!(nick, %from, "chat: joined");
        self.notice_all(nick, &format!("{nick} joined"));
    }

    fn welcome(&self, nick: &str, key: &str) -> RelayDatagram {
        RelayDatagram::Welcome {
            key: key.to_owned(),
            nick: nick.to_owned(),
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u64,
            timeout_ms: self.cfg.timeout.as_millis() as u64,
        }
    }

    fn apply(&mut self, nick: &str, req: Request) {
        match req {
            Request::Who => {
                let nicks = self.nicks();
                self.enqueue(nick, |seq| RelayDatagram::WhoList { seq, nicks });
            }
            Request::Msg { text, to } => {
                if let Err(e) = wire::check_fits(nick, to.as_deref(), &text) {
                    return self.notice(nick, &format!("not delivered: {e}"));
                }
                match to {
                    Some(to) if self.clients.contains_key(&to) => {
                        self.enqueue(&to, |seq| RelayDatagram::Deliver {
                            seq,
                            from: nick.to_owned(),
                            text,
                            private: true,
                        });
                    }
                    Some(to) => self.notice(nick, &format!("no such user: {to}")),
                    None => {
                        let others: Vec<String> = self.clients.keys().filter(|n| *n != nick).cloned().collect();
                        for o in others {
                            self.enqueue(&o, |seq| RelayDatagram::Deliver {
                                seq,
                                from: nick.to_owned(),
                                text: text.clone(),
                                private: false,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Drops silent or hopelessly behind clients, and retransmits.
    pub fn tick(&mut self, now: Instant) -> Outgoing {
        let gone: Vec<(String, &'static str)> = self
            .clients
            .iter()
            .filter_map(|(n, c)| {
                if now.saturating_duration_since(c.last_seen) > self.cfg.timeout {
                    Some((n.clone(), "timed out"))
                } else if c.outbox.len() > self.cfg.max_pending {
                    Some((n.clone(), "too far behind"))
                } else {
                    None
                }
            })
            .collect();
        for (n, why) in gone {
            self.remove(&n, why);
        }
        let mut out = Vec::new();
        self.flush(now, &mut out);
        out
    }
}

async fn send_all(socket: &UdpSocket, out: Outgoing) {
    for (to, bytes) in out {
        if let Err(e) = socket.send_to(&bytes, to).await {
            tracing::debug!(%to, error = %e, "chat: send failed");
        }
    }
}

/// Runs the relay on `socket` until `shutdown` is cancelled; then says `Bye`
/// to every client (once, best effort).
pub async fn serve(socket: UdpSocket, cfg: ChatConfig, shutdown: CancellationToken) -> io::Result<()> {
    let mut tick = tokio::time::interval(cfg.tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut relay = Relay::new(cfg, Instant::now())?;
    // One byte more than the maximum tells an oversized datagram apart.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    tracing::info!(addr = ?socket.local_addr().ok(), "chat relay listening");
    loop {
        let out = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => relay.tick(Instant::now()),
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => relay.handle(from, &buf[..n], Instant::now()),
                Err(e) => {
                    // ICMP errors about one peer; not fatal to the relay.
                    tracing::debug!(error = %e, "chat: recv failed");
                    continue;
                }
            },
        };
        send_all(&socket, out).await;
    }
    let bye = wire::encode_relay(&RelayDatagram::Bye);
    let out = relay.addrs().into_iter().map(|a| (a, bye.clone())).collect();
    send_all(&socket, out).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(out: &Outgoing) -> Vec<(SocketAddr, RelayDatagram)> {
        out.iter().map(|(a, b)| (*a, wire::decode_relay(b).unwrap())).collect()
    }

    fn relay(cfg: ChatConfig, now: Instant) -> Relay {
        Relay::new(cfg, now).unwrap()
    }

    /// The whole handshake: padded join, retry, join with the cookie.
    fn join(r: &mut Relay, addr: SocketAddr, nick: &str, now: Instant) -> String {
        let out = r.handle(addr, &wire::encode_join(nick, None), now);
        let cookie = match &decode(&out)[..] {
            [(to, RelayDatagram::Retry { cookie })] if *to == addr => cookie.clone(),
            other => panic!("{other:?}"),
        };
        let out = r.handle(addr, &wire::encode_join(nick, Some(&cookie)), now);
        match &decode(&out)[0].1 {
            RelayDatagram::Welcome { key, .. } => key.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn join_refusals_and_spoofing() {
        let now = Instant::now();
        let mut r = relay(ChatConfig::default(), now);
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let key = join(&mut r, a, "alice", now);
        // Duplicate Join from the same address: same key.
        let out = r.handle(a, &wire::encode_join("alice", None), now);
        assert!(matches!(&decode(&out)[0].1, RelayDatagram::Welcome { key: k, .. } if *k == key));
        let cookie = r.cookie_for(b, now);
        let out = r.handle(b, &wire::encode_join("alice", Some(&cookie)), now);
        assert!(matches!(decode(&out)[0].1, RelayDatagram::Refused { code: RefuseCode::NickTaken, .. }));
        // Right key from another address.
        let msg = ClientDatagram::Msg { key, seq: 1, text: "hi".into(), to: None };
        let out = r.handle(b, &wire::encode_client(&msg), now);
        assert!(matches!(decode(&out)[0].1, RelayDatagram::Refused { code: RefuseCode::BadKey, .. }));
    }

    #[test]
    fn cookies_are_per_address_and_expire() {
        let t0 = Instant::now();
        let mut r = relay(ChatConfig::default(), t0);
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let cookie = r.cookie_for(a, t0);
        // Another address's cookie proves nothing: a retry, not a slot.
        let out = r.handle(b, &wire::encode_join("bob", Some(&cookie)), t0);
        assert!(matches!(decode(&out)[..], [(_, RelayDatagram::Retry { .. })]));
        assert!(r.nicks().is_empty());
        // Valid in the next bucket, not in the one after.
        assert!(r.cookie_ok(a, &cookie, t0 + COOKIE_BUCKET));
        assert!(!r.cookie_ok(a, &cookie, t0 + COOKIE_BUCKET * 2));
        let out = r.handle(a, &wire::encode_join("ann", Some(&cookie)), t0 + COOKIE_BUCKET * 2);
        assert!(matches!(decode(&out)[..], [(_, RelayDatagram::Retry { .. })]));
        assert!(r.nicks().is_empty());
    }

    #[test]
    fn silent_client_is_dropped() {
        let cfg = ChatConfig { timeout: Duration::from_secs(1), ..ChatConfig::default() };
        let t0 = Instant::now();
        let mut r = relay(cfg, t0);
        join(&mut r, "127.0.0.1:1001".parse().unwrap(), "alice", t0);
        r.tick(t0 + Duration::from_millis(900));
        assert_eq!(r.nicks(), ["alice"]);
        r.tick(t0 + Duration::from_millis(1100));
        assert!(r.nicks().is_empty());
    }

    #[test]
    fn notices_to_a_deaf_member_are_bounded() {
        let cfg = ChatConfig { max_notices: 4, max_transmissions: 3, join_burst: 100, ..ChatConfig::default() };
        let t0 = Instant::now();
        let mut r = relay(cfg, t0);
        let deaf: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        join(&mut r, deaf, "deaf", t0);
        let mut to_deaf = 0;
        for i in 0..10u16 {
            let out = {
                join(&mut r, SocketAddr::from(([127, 0, 0, 2], 2000 + i)), &format!("n{i}"), t0);
                r.tick(t0)
            };
            to_deaf += out.iter().filter(|(a, _)| *a == deaf).count();
        }
        // Only 4 notices were queued for it, however many joined.
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_millis(100);
            to_deaf += r.tick(t).iter().filter(|(a, _)| *a == deaf).count();
        }
        assert!(to_deaf <= 4 * 3, "{to_deaf} datagrams to a member that never acks");
        assert!(!r.nicks().contains(&"deaf".to_string()), "dropped once its budget was spent");
    }
}
