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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
}

/// Datagrams to send: destination and bytes.
pub type Outgoing = Vec<(SocketAddr, Vec<u8>)>;

/// The relay's state, without I/O.
pub struct Relay {
    cfg: ChatConfig,
    clients: HashMap<String, Client>,
    by_addr: HashMap<SocketAddr, String>,
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

impl Relay {
    pub fn new(cfg: ChatConfig) -> Self {
        Relay { cfg, clients: HashMap::new(), by_addr: HashMap::new() }
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

    fn notice_all(&mut self, except: &str, text: &str) {
        let nicks: Vec<String> = self.clients.keys().filter(|n| *n != except).cloned().collect();
        for n in nicks {
            self.enqueue(&n, |seq| RelayDatagram::Notice { seq, text: text.to_owned() });
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
            ClientDatagram::Join { nick } => {
                self.join(from, nick, now, &mut out);
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
            _ => {
                refuse(&mut out, from, RefuseCode::BadKey, "unknown key or address");
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

    fn join(&mut self, from: SocketAddr, nick: &str, now: Instant, out: &mut Outgoing) {
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
                    let text = format!("not delivered: {e}");
                    return self.enqueue(nick, |seq| RelayDatagram::Notice { seq, text });
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
                    Some(to) => {
                        let text = format!("no such user: {to}");
                        self.enqueue(nick, |seq| RelayDatagram::Notice { seq, text });
                    }
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
    let mut relay = Relay::new(cfg);
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

    fn join(r: &mut Relay, addr: SocketAddr, nick: &str, now: Instant) -> String {
        let out = r.handle(addr, &wire::encode_client(&ClientDatagram::Join { nick: nick.into() }), now);
        match &decode(&out)[0].1 {
            RelayDatagram::Welcome { key, .. } => key.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn join_refusals_and_spoofing() {
        let mut r = Relay::new(ChatConfig::default());
        let now = Instant::now();
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let key = join(&mut r, a, "alice", now);
        // Duplicate Join from the same address: same key.
        assert_eq!(join(&mut r, a, "alice", now), key);
        let out = r.handle(b, &wire::encode_client(&ClientDatagram::Join { nick: "alice".into() }), now);
        assert!(matches!(decode(&out)[0].1, RelayDatagram::Refused { code: RefuseCode::NickTaken, .. }));
        // Right key from another address.
        let msg = ClientDatagram::Msg { key, seq: 1, text: "hi".into(), to: None };
        let out = r.handle(b, &wire::encode_client(&msg), now);
        assert!(matches!(decode(&out)[0].1, RelayDatagram::Refused { code: RefuseCode::BadKey, .. }));
    }

    #[test]
    fn silent_client_is_dropped() {
        let cfg = ChatConfig { timeout: Duration::from_secs(1), ..ChatConfig::default() };
        let mut r = Relay::new(cfg);
        let t0 = Instant::now();
        join(&mut r, "127.0.0.1:1001".parse().unwrap(), "alice", t0);
        r.tick(t0 + Duration::from_millis(900));
        assert_eq!(r.nicks(), ["alice"]);
        r.tick(t0 + Duration::from_millis(1100));
        assert!(r.nicks().is_empty());
    }
}
