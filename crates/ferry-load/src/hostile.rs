//! `hostile`: connections that never speak, dribble a byte a second, announce
//! a 4 GiB header or send garbage, while a legitimate user logs in and lists.
//! Then the chat join flood (issue 12): joins and keyed datagrams from
//! addresses that never echo a cookie (as forged sources would not), while
//! real users join; the relay must send those addresses no more bytes than
//! it received from them. Then the never-reading pipeliner (issue 12, item
//! 1): logged-in sessions that pipeline requests with large answers (`pwd`
//! in a deep folder, `ls` of a big one, `stat`) and never read; the server
//! must hold each to its unsent cap and close it after the idle timeout.

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
use std::path::PathBuf;

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
    /// Never-reading pipeliner sessions (0: skip them).
    #[arg(long, default_value_t = 100)]
    pub pipeliners: usize,
    /// The server's idle timeout (the pipeliners must be closed after it).
    #[arg(long, default_value_t = 5)]
    pub idle_timeout_secs: u64,
    /// Stop the pipeliners if the server's RSS passes this (a server without
    /// the cap would take the machine's memory).
    #[arg(long, default_value_t = 4096)]
    pub pipeliner_rss_limit_mib: u64,
    /// Only the never-reading pipeliners, not the other attacks.
    #[arg(long)]
    pub pipeliner_only: bool,
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
    let limits = format!(
        "max_unauthenticated_per_ip = 256\nlogin_timeout_secs = {}\nidle_timeout_secs = {}",
        a.login_timeout_secs, a.idle_timeout_secs
    );
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
    if a.pipeliner_only {
        let (r, pass) = pipeliners(&mut server, a).await?;
        let alive = server.alive();
        let panics = server.panics();
        server.stop(false)?;
        let pass = pass && alive && panics == 0;
        return Ok(format!(
            "hostile (never-reading pipeliners only)\n{r}  server up throughout: {alive}; panics in log: {panics}\n  verdict: {}\n",
            if pass { "PASS" } else { "FAIL" }
        ));
    }
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
    let (pipe_report, pipe_pass) = pipeliners(&mut server, a).await?;
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
    r += &pipe_report;
    r += &format!(
        "  server up throughout: {alive}; login after the attack: {post}; panics in log: {}\n",
        server.panics()
    );
    let pass =
        alive && post && legit_failed == 0 && reaped_all && fds_after <= fds_before + 8 && chat_pass && pipe_pass;
    r += &format!("  verdict: {}\n", if pass { "PASS" } else { "FAIL" });
    Ok(r)
}

/// What one never-reading pipeliner saw.
#[derive(Debug, Default)]
struct Piped {
    logged_in: bool,
    /// Request bytes the server let it write.
    written: u64,
    /// From its first request to its last write that went through.
    last_progress: Option<Duration>,
    /// From its first request to the failed write that showed the close.
    closed: Option<Duration>,
    error: Option<String>,
}

/// The pipeliners' three ways of making large answers from small requests.
const PIPE_KINDS: [&str; 3] = ["pwd in a deep folder", "ls of a big folder", "pwd, stat and ls mixed"];
/// Names in the big folder (an `ls` answer of about 100 KB).
const BIG_FOLDER_NAMES: usize = 300;

/// A TLS session logged in as `user`, speaking raw frames.
async fn raw_login(
    port: u16,
    bind: std::net::IpAddr,
    seed: u64,
    user: &str,
    password: &str,
) -> Result<ferry_proto::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    use ferry_proto::scram::ScramClient;
    use ferry_proto::{Connection, FrameCodec, Request};
    let tcp = tcp_from(bind, port).await?;
    let name = rustls::pki_types::ServerName::try_from("ferry").expect("static name is valid");
    let tls = insecure_tls_connector().connect(name, tcp).await?;
    let mut conn = Connection::new(tls, FrameCodec::default());
    let mut ask = async |req: Request, id: u64| -> Result<ferry_proto::Header> {
        conn.send(&req.to_header(id, 0)).await?;
        conn.read_header().await?.ok_or_else(|| anyhow::anyhow!("closed during login"))
    };
    ask(Request::Hello { version: 1, client: "ferry-load".into(), hashes: None }, 1).await?;
    let scram = ScramClient::new(user, password, &format!("{:016x}", Rng::new(seed).next_u64()))?;
    let first = ask(Request::AuthStart { mechanism: "SCRAM-SHA-256".into(), data: scram.client_first() }, 2).await?;
    let data = first.get_str("data").ok_or_else(|| anyhow::anyhow!("no SCRAM data: {first:?}"))?.to_string();
    let fin = scram.handle_server_first(&data)?;
    let done = ask(Request::AuthFinish { data: fin.client_final().to_string() }, 3).await?;
    anyhow::ensure!(done.fields["ok"] == true, "login refused: {done:?}");
    Ok(conn)
}

/// What all pipeliners share.
#[derive(Clone)]
struct PipeShared {
    port: u16,
    deep: String,
    give_up: Instant,
    abort: Arc<std::sync::atomic::AtomicBool>,
    /// Pipeliners logged in (or failed to).
    ready: Arc<std::sync::atomic::AtomicUsize>,
    all: usize,
}

/// Logs in, then writes its kind's requests again and again, reading nothing,
/// until a write fails (the server closed) or `give_up` or `abort`.
async fn pipeliner(
    p: PipeShared,
    bind: std::net::IpAddr,
    seed: usize,
    login_permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Piped {
    use ferry_proto::Request;
    let PipeShared { port, deep, give_up, abort, ready, all } = p;
    let kind = seed % PIPE_KINDS.len();
    let mut out = Piped::default();
    let login = raw_login(port, bind, seed as u64, "mallory", "mallory-pw").await;
    drop(login_permit);
    let conn = match login {
        Ok(c) => c,
        Err(e) => {
            // Counted as ready: the others need not wait for it.
            ready.fetch_add(1, Ordering::Relaxed);
            out.error = Some(format!("{e:#}"));
            return out;
        }
    };
    out.logged_in = true;
    let big = "/big";
    let mut reqs = Vec::new();
    if kind != 1 {
        reqs.push(Request::Cd { path: deep.clone() });
    }
    for i in 0..100 {
        reqs.push(match (kind, i % 4) {
            (0, _) => Request::Pwd,
            (1, _) => Request::Ls { path: Some(big.into()) },
            (_, 0) => Request::Pwd,
            (_, 1) => Request::Stat { path: deep.clone() },
            (_, 2) => Request::Ls { path: Some(big.into()) },
            _ => Request::Stat { path: format!("{big}/{:05}{}", i, "n".repeat(240)) },
        });
    }
    // Encoded once: the batch is written again and again.
    let mut batch = ferry_proto::Connection::new(Vec::new(), ferry_proto::FrameCodec::default());
    for (i, r) in reqs.iter().enumerate() {
        if batch.queue_header(&r.to_header(10 + i as u64, 0)).is_err() {
            out.error = Some("a request does not fit in a frame".into());
            return out;
        }
    }
    if batch.flush().await.is_err() {
        return out;
    }
    let batch = batch.into_inner();
    let mut tls = conn.into_inner();
    // All sessions log in first, then attack together; a `pwd` a second
    // keeps a waiting one from the idle timeout. Bounded by `give_up`.
    ready.fetch_add(1, Ordering::Relaxed);
    let mut ping = ferry_proto::Connection::new(Vec::new(), ferry_proto::FrameCodec::default());
    let _ = ping.queue_header(&Request::Pwd.to_header(9, 0));
    let _ = ping.flush().await;
    let ping = ping.into_inner();
    while ready.load(Ordering::Relaxed) < all && Instant::now() < give_up && !abort.load(Ordering::Relaxed) {
        if tls.write_all(&ping).await.is_err() {
            out.error = Some("closed while waiting for the others to log in".into());
            return out;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let t0 = Instant::now();
    while Instant::now() < give_up && !abort.load(Ordering::Relaxed) {
        let mut write = std::pin::pin!(tls.write_all(&batch));
        // Woken now and then to see `abort` and `give_up`; the write itself
        // is never cut (half a frame would turn the requests into garbage).
        let done = loop {
            match tokio::time::timeout(Duration::from_millis(500), &mut write).await {
                Ok(r) => break Some(r),
                Err(_) if abort.load(Ordering::Relaxed) || Instant::now() >= give_up => break None,
                Err(_) => {}
            }
        };
        match done {
            Some(Ok(())) => {
                out.written += batch.len() as u64;
                out.last_progress = Some(t0.elapsed());
            }
            Some(Err(_)) => {
                out.closed = Some(t0.elapsed());
                break;
            }
            None => break,
        }
    }
    out
}

/// The never-reading pipeliner scenario; report lines and verdict.
async fn pipeliners(server: &mut Server, a: &HostileArgs) -> Result<(String, bool)> {
    if a.pipeliners == 0 {
        return Ok((String::new(), true));
    }
    server.add_user("mallory", "mallory-pw", None)?;
    let home = server.home("mallory");
    // As deep as a path goes here (about 3.8 KB: PATH_MAX is 4096).
    let deep: PathBuf = (0..15).map(|i| format!("{i:02}{}", "d".repeat(250))).collect();
    std::fs::create_dir_all(home.join(&deep))?;
    std::fs::create_dir_all(home.join("big"))?;
    for i in 0..BIG_FOLDER_NAMES {
        std::fs::write(home.join("big").join(format!("{i:05}{}", "n".repeat(240))), b"")?;
    }
    let deep = format!("/{}", deep.display());
    let t = server.target();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_kib().unwrap_or(0);
    let fds_before = server.fds().unwrap_or(0);
    let started = Instant::now();
    let give_up = started + Duration::from_secs(a.idle_timeout_secs * 3 + 60);
    let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Eight logins at a time: the login timeout is short.
    let logins = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    let shared = PipeShared { port: t.port, deep, give_up, abort: abort.clone(), ready, all: a.pipeliners };
    for i in 0..a.pipeliners {
        let bind = loopback(i, 2, a.addresses);
        let (shared, logins) = (shared.clone(), logins.clone());
        tasks.push(tokio::spawn(async move {
            let permit = logins.acquire_owned().await.ok();
            pipeliner(shared, bind, i, permit).await
        }));
    }
    // A legitimate user logs in and lists all along.
    let legit_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let legit = {
        let (t, stop) = (t.clone(), legit_stop.clone());
        tokio::spawn(async move {
            let (mut lat, mut failed, mut first) = (Lat::default(), 0u64, None);
            // Bounded by `give_up`, by which every pipeliner has ended and set `stop`.
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = async {
                    let mut s = t.login("alice", "alice-pw", Some(loopback(0, 1, 1))).await?;
                    s.ls(Some("/")).await?;
                    s.close().await
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(())) => lat.push(t0.elapsed()),
                    Ok(Err(e)) => {
                        failed += 1;
                        first.get_or_insert(e.to_string());
                    }
                    Err(_) => {
                        failed += 1;
                        first.get_or_insert("login+ls+bye took over 10 s".to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (lat, failed, first)
        })
    };
    let limit_kib = a.pipeliner_rss_limit_mib * 1024;
    let (mut peak_rss, mut limit_hit) = (0u64, None);
    // Bounded by `give_up`: every task ends by then.
    while tasks.iter().any(|t| !t.is_finished()) {
        let rss = server.rss_kib().unwrap_or(0);
        peak_rss = peak_rss.max(rss);
        if rss > limit_kib && limit_hit.is_none() {
            limit_hit = Some(started.elapsed());
            abort.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    let ended = started.elapsed();
    legit_stop.store(true, Ordering::Relaxed);
    let (lat, legit_failed, first) = legit.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib().unwrap_or(0);
    let fds_after = server.fds().unwrap_or(0);

    let mut r = format!(
        "  never-reading pipeliners: {} sessions ({}; /big holds {BIG_FOLDER_NAMES} long names), idle_timeout_secs = {}\n",
        a.pipeliners,
        PIPE_KINDS.join(" / "),
        a.idle_timeout_secs
    );
    let mut ok = true;
    for (k, kind) in PIPE_KINDS.iter().enumerate() {
        let of: Vec<&Piped> = outcomes.iter().skip(k).step_by(PIPE_KINDS.len()).collect();
        let logged_in = of.iter().filter(|o| o.logged_in).count();
        let (mut stalled, mut closed) = (Lat::default(), Lat::default());
        let mut written = 0u64;
        for o in &of {
            written = written.max(o.written);
            if let Some(c) = o.closed {
                closed.push(c);
                stalled.push(c.saturating_sub(o.last_progress.unwrap_or_default()));
            }
        }
        let open = of.len() - closed.0.len();
        // Every one closed by the server before `give_up`. How long after
        // its writes stalled is reported, not judged: on a busy machine the
        // server may still be producing answers the kernel takes when the
        // peer's writes already wait (the session is not stalled yet).
        ok &= logged_in == of.len() && open == 0;
        r += &format!(
            "    {kind:<24} {:>3} logged in, closed by server {:>3} (after its writes stalled: p50 {} max {}; from the first request: max {}), still open {open}, most request bytes taken {}\n",
            logged_in,
            closed.0.len(),
            crate::util::ms(stalled.pct(0.5)),
            crate::util::ms(stalled.pct(1.0)),
            crate::util::ms(closed.pct(1.0)),
            written
        );
    }
    if let Some(e) = outcomes.iter().find_map(|o| o.error.as_ref()) {
        r += &format!("    first error: {e}\n");
    }
    // Each session holds at most the cap (1 MiB by default) plus one answer,
    // one `ls` listing and its TLS and read buffers.
    let bound = a.pipeliners as u64 * 4 * 1024 + 64 * 1024;
    let grew = peak_rss.saturating_sub(rss_before);
    ok &= limit_hit.is_none() && grew <= bound;
    r += &format!(
        "    server RSS: before {} | peak {} (+{}, bound +{}) | after {}; fds before {fds_before} after {fds_after}; all pipeliners done after {:.1}s\n",
        mib(rss_before),
        mib(peak_rss),
        mib(grew),
        mib(bound),
        mib(rss_after),
        ended.as_secs_f64()
    );
    if let Some(at) = limit_hit {
        r += &format!(
            "    server RSS passed {} MiB after {:.1}s: pipeliners stopped there\n",
            a.pipeliner_rss_limit_mib,
            at.as_secs_f64()
        );
    }
    ok &= legit_failed == 0 && fds_after <= fds_before + 8;
    r += &format!("    legitimate login+ls+bye during: {} failures={legit_failed}\n", lat.summary());
    if let Some(e) = first {
        r += &format!("      first legitimate failure: {e}\n");
    }
    r += &format!("    pipeliner verdict: {}\n", if ok { "PASS" } else { "FAIL" });
    Ok((r, ok))
}
