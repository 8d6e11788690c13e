//! `hostile`: connections that never speak, dribble a byte a second, announce
//! a 4 GiB header or send garbage, while a legitimate user logs in and lists.

use std::path::Path;
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

pub async fn run(ferry: &Path, dir: &Path, a: &HostileArgs) -> Result<String> {
    crate::util::raise_nofile(a.count as u64 + 4096)?;
    let limits = format!("max_unauthenticated_per_ip = 256\nlogin_timeout_secs = {}", a.login_timeout_secs);
    let mut server = Server::start(ferry, dir, &base_config(&limits, ""))?;
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
    r += &format!(
        "  server up throughout: {alive}; login after the attack: {post}; panics in log: {}\n",
        server.panics()
    );
    let pass = alive && post && legit_failed == 0 && reaped_all && fds_after <= fds_before + 8;
    r += &format!("  verdict: {}\n", if pass { "PASS" } else { "FAIL" });
    Ok(r)
}
