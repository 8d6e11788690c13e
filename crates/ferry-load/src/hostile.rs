//! `hostile`: connections that never speak, dribble a byte a second, announce
//! a 4 GiB header or send garbage, while a legitimate user logs in and lists.
//! Then the chat join flood (issue 12): joins and keyed datagrams from
//! addresses that never echo a cookie (as forged sources would not), while
//! real users join; the relay must send those addresses no more bytes than
//! it received from them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::server::{Server, base_config};
use crate::util::{Lat, Rng, Target, insecure_tls_connector, loopback, mib, tcp_from};

#[derive(Args, Clone, Debug)]
pub struct HostileArgs {
    /// Hostile connections, spread over the kinds and over 127.0.0.2..
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// The server's login timeout (the idle ones must be reaped after it).
    #[arg(long, default_value_t = 5)]
    pub login_timeout_secs: u64,
    /// Attacking source addresses.
    #[arg(long, default_value_t = 8)]
    pub addresses: usize,
    /// How long the chat join flood lasts (0: skip it).
    #[arg(long, default_value_t = 5)]
    pub chat_flood_secs: u64,
    /// Only the chat join flood, not the TCP connections.
    #[arg(long)]
    pub chat_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// TCP connect, then silence.
    Silent,
    /// A TLS record header, then one byte a second.
    SlowTls,
    /// TLS done, then a frame header one byte a second.
    SlowFrame,
    /// TLS done, then `ff ff ff ff`: a 4 GiB header.
    HugeLength,
    /// TLS done, then random bytes.
    Garbage,
    /// Random bytes instead of a TLS handshake.
    RawGarbage,
}

const KINDS: [Kind; 6] =
    [Kind::Silent, Kind::SlowTls, Kind::SlowFrame, Kind::HugeLength, Kind::Garbage, Kind::RawGarbage];

#[derive(Debug)]
struct Outcome {
    kind: Kind,
    /// Connected (and, for TLS kinds, finished the handshake).
    connected: bool,
    /// The server closed on us, after this long.
    closed_after: Option<Duration>,
}

async fn misbehave<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, kind: Kind, rng: &mut Rng, give_up: Instant) -> bool {
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut sent = 0usize;
    loop {
        if Instant::now() > give_up {
            return false;
        }
        let out: Vec<u8> = match kind {
            Kind::Silent => Vec::new(),
            Kind::SlowTls => vec![[0x16u8, 0x03, 0x01, 0x02, 0x00].get(sent).copied().unwrap_or(rng.next_u64() as u8)],
            Kind::SlowFrame => vec![b"\x00\x00\x01\x00{\"op\":\"hello\",\"id\":1".get(sent).copied().unwrap_or(b' ')],
            Kind::HugeLength if sent == 0 => vec![0xff, 0xff, 0xff, 0xff],
            Kind::Garbage | Kind::RawGarbage if sent == 0 => (0..4096).map(|_| rng.next_u64() as u8).collect(),
            _ => Vec::new(),
        };
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                return true;
            }
            sent += out.len();
        }
        // Wait up to a second for the server to close (or say something).
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // an error frame; the close follows
            Err(_) => {}
        }
        let _ = t0;
    }
}

async fn hostile_one(port: u16, kind: Kind, bind: std::net::IpAddr, seed: u64, give_up: Instant) -> Outcome {
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let Ok(tcp) = tcp_from(bind, port).await else { return Outcome { kind, connected: false, closed_after: None } };
    let closed = match kind {
        Kind::Silent | Kind::SlowTls | Kind::RawGarbage => misbehave(tcp, kind, &mut rng, give_up).await,
        _ => {
            let name = rustls::pki_types::ServerName::try_from("ferry").expect("static name is valid");
            match insecure_tls_connector().connect(name, tcp).await {
                Ok(tls) => misbehave(tls, kind, &mut rng, give_up).await,
                Err(_) => return Outcome { kind, connected: false, closed_after: Some(t0.elapsed()) },
            }
        }
    };
    Outcome { kind, connected: true, closed_after: closed.then(|| t0.elapsed()) }
}

async fn legit_loop(t: Target, stop: Instant) -> (Lat, u64, Option<String>) {
    let (mut lat, mut failed, mut first) = (Lat::default(), 0, None);
    while Instant::now() < stop {
        let t0 = Instant::now();
        let r = async {
            let mut s = t.login("alice", "alice-pw", Some(loopback(0, 1, 1))).await?;
            s.ls(Some("/")).await?;
            s.close().await
        }
        .await;
        match r {
            Ok(()) => lat.push(t0.elapsed()),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (lat, failed, first)
}

/// Sockets per attacking address in the chat flood, and datagrams per second each.
const CHAT_PORTS_PER_ADDRESS: usize = 8;
const CHAT_RATE_PER_SOCKET: u64 = 100;

/// The datagrams a forger aims at the relay without seeing answers, written
/// by hand as an attacker would: bare and padded joins, forged cookies,
/// guessed keys, junk.
fn chat_attack_datagram(i: u64, rng: &mut Rng) -> Vec<u8> {
    let hex = |rng: &mut Rng| format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    let nick = format!("f{}", rng.next_u64() % 100_000);
    match i % 6 {
        0 => format!(r#"{{"t":"join","nick":"{nick}"}}"#).into_bytes(),
        1 => format!(r#"{{"t":"join","nick":"{nick}","pad":"{}"}}"#, ".".repeat(220)).into_bytes(),
        2 => format!(r#"{{"t":"join","nick":"{nick}","cookie":"{}"}}"#, hex(rng)).into_bytes(),
        3 => format!(r#"{{"t":"ping","key":"{}"}}"#, hex(rng)).into_bytes(),
        4 => format!(r#"{{"t":"msg","key":"{}","seq":1,"text":"spam"}}"#, hex(rng)).into_bytes(),
        _ => (0..48).map(|_| rng.next_u64() as u8).collect(),
    }
}

#[derive(Default)]
struct Tally {
    sent_dgrams: AtomicU64,
    sent_bytes: AtomicU64,
    got_dgrams: AtomicU64,
    got_bytes: AtomicU64,
}

/// One attacking socket: sends at a steady rate until `stop`, counts what
/// comes back until `drain_until`.
async fn chat_attacker(
    relay: SocketAddr,
    bind: std::net::IpAddr,
    seed: u64,
    stop: Instant,
    drain_until: Instant,
    t: Arc<Tally>,
) {
    let Ok(socket) = tokio::net::UdpSocket::bind((bind, 0)).await else { return };
    let socket = Arc::new(socket);
    let rx = {
        let (socket, t) = (socket.clone(), t.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let until = tokio::time::Instant::from_std(drain_until);
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
                t.got_dgrams.fetch_add(1, Ordering::Relaxed);
                t.got_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut rng = Rng::new(seed);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CHAT_RATE_PER_SOCKET));
    let mut i = seed;
    while Instant::now() < stop {
        tick.tick().await;
        let d = chat_attack_datagram(i, &mut rng);
        i += 1;
        if socket.send_to(&d, relay).await.is_ok() {
            t.sent_dgrams.fetch_add(1, Ordering::Relaxed);
            t.sent_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
    let _ = rx.await;
}

/// The issue's own attack: one bare join from a fresh port, then listen.
async fn chat_joiner(relay: SocketAddr, bind: std::net::IpAddr, i: usize, drain_until: Instant, t: Arc<Tally>) {
    let Ok(socket) = tokio::net::UdpSocket::bind((bind, 0)).await else { return };
    let d = format!(r#"{{"t":"join","nick":"j{i}"}}"#).into_bytes();
    if socket.send_to(&d, relay).await.is_ok() {
        t.sent_dgrams.fetch_add(1, Ordering::Relaxed);
        t.sent_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
    }
    let mut buf = [0u8; 2048];
    let until = tokio::time::Instant::from_std(drain_until);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
        t.got_dgrams.fetch_add(1, Ordering::Relaxed);
        t.got_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Tally {
    fn line(&self, what: &str) -> (String, bool) {
        let (sd, sb) = (self.sent_dgrams.load(Ordering::Relaxed), self.sent_bytes.load(Ordering::Relaxed));
        let (gd, gb) = (self.got_dgrams.load(Ordering::Relaxed), self.got_bytes.load(Ordering::Relaxed));
        let ratio = gb as f64 / sb.max(1) as f64;
        let line = format!(
            "    {what}: in {sd} datagrams / {sb} bytes, out {gd} datagrams / {gb} bytes: {ratio:.3} bytes out per byte in (must be <= 1)\n"
        );
        (line, sb > 0 && gb <= sb && gd <= sd)
    }
}

/// Joiners of the issue's attack: 200 bare joins, each from its own port.
const CHAT_BARE_JOINS: usize = 200;

/// The chat join flood against the relay at `relay`; returns the report
/// lines and whether it passed.
async fn chat_flood(relay: SocketAddr, a: &HostileArgs) -> (String, bool) {
    use ferry_client::udp::chat::{ChatClient, ChatEvent};
    let mut r = format!(
        "  chat join flood: {} s from 127.0.0.2..{} ({} sockets each, {} datagrams/s per socket; addresses that never echo a cookie)\n",
        a.chat_flood_secs,
        a.addresses + 1,
        CHAT_PORTS_PER_ADDRESS,
        CHAT_RATE_PER_SOCKET
    );
    let mut ann = match ChatClient::join(relay, "ann").await {
        Ok(c) => c,
        Err(e) => {
            return (r + &format!("    a real user could not join before the flood: {e}\n  verdict: FAIL\n"), false);
        }
    };
    let tally = Arc::new(Tally::default());
    let joins = Arc::new(Tally::default());
    let stop = Instant::now() + Duration::from_secs(a.chat_flood_secs);
    // Two more seconds to catch late traffic (welcomes, notices, retransmissions).
    let drain_until = stop + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for i in 0..CHAT_BARE_JOINS {
        let bind = loopback(i, 2, a.addresses);
        tasks.push(tokio::spawn(chat_joiner(relay, bind, i, drain_until, joins.clone())));
    }
    for i in 0..a.addresses.max(1) * CHAT_PORTS_PER_ADDRESS {
        let bind = loopback(i, 2, a.addresses);
        tasks.push(tokio::spawn(chat_attacker(relay, bind, 0xC4A7 + i as u64, stop, drain_until, tally.clone())));
    }
    // A real user joins in the middle of it.
    tokio::time::sleep(Duration::from_secs(a.chat_flood_secs) / 2).await;
    let t0 = Instant::now();
    let ben = ChatClient::join(relay, "ben").await;
    let ben_took = t0.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    ann.who().ok();
    let who = loop {
        match tokio::time::timeout(Duration::from_secs(5), ann.next_event()).await {
            Ok(Some(ChatEvent::Who(nicks))) => break Some(nicks),
            Ok(Some(ChatEvent::Notice(_) | ChatEvent::Message { .. })) => {}
            _ => break None,
        }
    };
    let (line, joins_ok) = joins.line(&format!("{CHAT_BARE_JOINS} bare joins, one per port"));
    r += &line;
    let (line, mix_ok) = tally.line("sustained mix (joins bare, padded, with forged cookies; guessed keys; junk)");
    r += &line;
    let all = Tally::default();
    for t in [&*joins, &*tally] {
        for (to, from) in [
            (&all.sent_dgrams, &t.sent_dgrams),
            (&all.sent_bytes, &t.sent_bytes),
            (&all.got_dgrams, &t.got_dgrams),
            (&all.got_bytes, &t.got_bytes),
        ] {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    let (line, all_ok) = all.line("all towards unproven addresses");
    r += &line;
    r += &format!(
        "    a real user joining during the flood: {} in {}; who after: {:?}\n",
        if ben.is_ok() { "joined" } else { "FAILED" },
        crate::util::ms(ben_took),
        who
    );
    let pass = joins_ok
        && mix_ok
        && all_ok
        && ben.is_ok()
        && who.as_deref() == Some(&["ann".to_string(), "ben".to_string()][..]);
    if let Ok(ben) = ben {
        let _ = ben.quit().await;
    }
    let _ = ann.quit().await;
    r += &format!("    chat verdict: {}\n", if pass { "PASS" } else { "FAIL" });
    (r, pass)
}

/// A free UDP port on 127.0.0.1 for the relay inside `ferry serve`.
fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn run(ferry: &Path, dir: &Path, a: &HostileArgs) -> Result<String> {
    crate::util::raise_nofile(a.count as u64 + 4096)?;
    let limits = format!("max_unauthenticated_per_ip = 256\nlogin_timeout_secs = {}", a.login_timeout_secs);
    let chat_addr: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let chat = format!("[chat]\nenabled = true\nlisten = \"{chat_addr}\"\n");
    let mut server = Server::start(ferry, dir, &base_config(&limits, &chat))?;
    if a.chat_only {
        let (r, pass) = chat_flood(chat_addr, a).await;
        let alive = server.alive();
        let panics = server.panics();
        server.stop(false)?;
        let pass = pass && alive && panics == 0;
        return Ok(format!(
            "hostile (chat only), relay inside ferry serve at {chat_addr}\n{r}  server up throughout: {alive}; panics in log: {panics}\n  verdict: {}\n",
            if pass { "PASS" } else { "FAIL" }
        ));
    }
    server.add_user("alice", "alice-pw", None)?;
    let t = server.target();
    let (base_lat, _, _) = legit_loop(t.clone(), Instant::now() + Duration::from_secs(2)).await;
    let rss_before = server.rss_kib().unwrap_or(0);
    let fds_before = server.fds().unwrap_or(0);

    let attack_for = Duration::from_secs(a.login_timeout_secs * 3 + 5);
    let give_up = Instant::now() + attack_for;
    let mut tasks = Vec::new();
    for i in 0..a.count {
        let kind = KINDS[i % KINDS.len()];
        let bind = loopback(i, 2, a.addresses);
        tasks.push(tokio::spawn(hostile_one(t.port, kind, bind, i as u64, give_up)));
    }
    let legit = tokio::spawn(legit_loop(t.clone(), give_up));
    // Sample memory while the attack runs.
    let (mut peak_rss, mut peak_fds) = (0u64, 0usize);
    let sampling_until = Instant::now() + Duration::from_secs(a.login_timeout_secs);
    while Instant::now() < sampling_until {
        peak_rss = peak_rss.max(server.rss_kib().unwrap_or(0));
        peak_fds = peak_fds.max(server.fds().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        if let Ok(o) = task.await {
            outcomes.push(o);
        }
    }
    let (lat, legit_failed, first) = legit.await?;
    let (chat_report, chat_pass) =
        if a.chat_flood_secs > 0 { chat_flood(chat_addr, a).await } else { (String::new(), true) };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib().unwrap_or(0);
    let fds_after = server.fds().unwrap_or(0);
    let alive = server.alive();
    // After the attack, the server still serves.
    let post = t.login("alice", "alice-pw", None).await.is_ok();
    server.stop(false)?;

    let mut r = format!(
        "hostile: {} connections from 127.0.0.2..{} ({} kinds), login_timeout_secs = {}\n",
        a.count,
        a.addresses + 1,
        KINDS.len(),
        a.login_timeout_secs
    );
    let mut reaped_all = true;
    for kind in KINDS {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        let connected = of.iter().filter(|o| o.connected).count();
        let mut closed = Lat::default();
        for o in &of {
            if let Some(d) = o.closed_after {
                closed.push(d);
            }
        }
        let open = of.len() - closed.0.len();
        reaped_all &= open == 0;
        r += &format!(
            "  {:<11} {:>4} sent, {:>4} connected, closed by server {:>4} (after p50 {} max {}), still open at the end {}\n",
            format!("{kind:?}"),
            of.len(),
            connected,
            closed.0.len(),
            crate::util::ms(closed.pct(0.5)),
            crate::util::ms(closed.pct(1.0)),
            open
        );
    }
    r += &format!(
        "  server RSS: before {} | peak during {} | after {}; fds before {fds_before} peak {peak_fds} after {fds_after}\n",
        mib(rss_before),
        mib(peak_rss),
        mib(rss_after)
    );
    r += &format!(
        "  legitimate login+ls+bye: before {} | during {} failures={legit_failed}\n",
        base_lat.summary(),
        lat.summary()
    );
    if let Some(e) = first {
        r += &format!("    first legitimate failure: {e}\n");
    }
    r += &chat_report;
    r += &format!(
        "  server up throughout: {alive}; login after the attack: {post}; panics in log: {}\n",
        server.panics()
    );
    let pass = alive && post && legit_failed == 0 && reaped_all && fds_after <= fds_before + 8 && chat_pass;
    r += &format!("  verdict: {}\n", if pass { "PASS" } else { "FAIL" });
    Ok(r)
}
