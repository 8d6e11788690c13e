//! `logins`: sustained SCRAM logins over TLS, first alone, then while other
//! loopback addresses flood wrong passwords (at another account, then at the
//! same account). Legitimate logins must keep getting through.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use ferry_client::{ClientError, ErrorCode};

use crate::server::{Server, base_config};
use crate::util::{Lat, Target, loopback};

#[derive(Args, Clone, Debug)]
pub struct LoginsArgs {
    /// Seconds per phase (quiet, flood at another account, flood at the same account).
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Concurrent legitimate login workers (from 127.0.0.1).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Attacking source addresses (127.0.0.2..).
    #[arg(long, default_value_t = 8)]
    pub attackers: usize,
    /// Concurrent connections per attacking address.
    #[arg(long, default_value_t = 8)]
    pub per_attacker: usize,
    /// The server's user store (`[users] kind`): `sqlite`, or `postgres`
    /// with the database in `FERRY_DATABASE_URL` (issue 16).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub users_kind: String,
}

#[derive(Default)]
struct Flood {
    tries: AtomicU64,
    auth_failed: AtomicU64,
    throttled: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    wrongly_accepted: AtomicU64,
}

struct Legit {
    ok: u64,
    failed: u64,
    lat: Lat,
    first_error: Option<String>,
}

async fn legit(t: &Target, workers: usize, secs: u64) -> Legit {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat, mut first) = (0, 0, Lat::default(), None);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match t.login("alice", "right-password", Some(loopback(0, 1, 1))).await {
                    Ok(s) => {
                        lat.push(t0.elapsed());
                        ok += 1;
                        let _ = s.close().await;
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e.to_string());
                    }
                }
            }
            (ok, failed, lat, first)
        }));
    }
    let mut out = Legit { ok: 0, failed: 0, lat: Lat::default(), first_error: None };
    for task in tasks {
        if let Ok((ok, failed, lat, first)) = task.await {
            out.ok += ok;
            out.failed += failed;
            out.lat.extend(lat);
            if out.first_error.is_none() {
                out.first_error = first;
            }
        }
    }
    out
}

fn flood(
    t: &Target,
    a: &LoginsArgs,
    user: &'static str,
    stop: Instant,
) -> (Arc<Flood>, Vec<tokio::task::JoinHandle<()>>) {
    let stats = Arc::new(Flood::default());
    let mut tasks = Vec::new();
    for ip in 0..a.attackers {
        for _ in 0..a.per_attacker {
            let (t, stats) = (t.clone(), Arc::clone(&stats));
            let bind = loopback(ip, 2, a.attackers);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    stats.tries.fetch_add(1, Ordering::Relaxed);
                    let counter = match t.login(user, "wrong-password", Some(bind)).await {
                        Ok(_) => &stats.wrongly_accepted,
                        Err(e) => match e.code() {
                            Some(ErrorCode::AuthFailed) => &stats.auth_failed,
                            Some(ErrorCode::Throttled) => &stats.throttled,
                            Some(ErrorCode::TooManyConnections) => &stats.refused,
                            _ if matches!(e, ClientError::Connect { .. }) => &stats.refused,
                            _ => &stats.other,
                        },
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    (stats, tasks)
}

fn rate(n: u64, secs: u64) -> f64 {
    n as f64 / secs.max(1) as f64
}

pub async fn run(ferry: &Path, dir: &Path, a: &LoginsArgs) -> Result<String> {
    let limits = "max_unauthenticated_per_ip = 256\nlogin_timeout_secs = 10";
    let extra = format!("ban_after = 20\nban_secs = 300\n[users]\nkind = {:?}\n", a.users_kind);
    let mut server = Server::start(ferry, dir, &base_config(limits, &extra))?;
    server.add_user("alice", "right-password", None)?;
    server.add_user("bob", "bobs-password", None)?;
    let t = server.target();

    let mut r = String::new();
    let quiet = legit(&t, a.workers, a.secs).await;
    r += &format!(
        "logins: {} workers from 127.0.0.1, {}s per phase, TLS 1.3 + SCRAM-SHA-256 (4096 iterations), users in {}\n",
        a.workers, a.secs, a.users_kind
    );
    r += &format!(
        "  quiet:                    {:.1} logins/s ok={} failed={} latency {}\n",
        rate(quiet.ok, a.secs),
        quiet.ok,
        quiet.failed,
        quiet.lat.summary()
    );
    let mut pass = quiet.failed == 0 && quiet.ok > 0;
    for (label, victim) in [("flood at another account", "bob"), ("flood at the same account", "alice")] {
        let stop = Instant::now() + Duration::from_secs(a.secs);
        let (stats, tasks) = flood(&t, a, victim, stop);
        let l = legit(&t, a.workers, a.secs).await;
        for task in tasks {
            let _ = task.await;
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        r += &format!(
            "  {label:<25} {:.1} logins/s ok={} failed={} latency {}\n",
            rate(l.ok, a.secs),
            l.ok,
            l.failed,
            l.lat.summary()
        );
        if let Some(e) = &l.first_error {
            r += &format!("    first legitimate failure: {e}\n");
        }
        r += &format!(
            "    attackers {}x{} from 127.0.0.2..{}: {:.0} tries/s; auth_failed={} throttled/banned={} refused={} other={} WRONGLY ACCEPTED={}\n",
            a.attackers,
            a.per_attacker,
            a.attackers + 1,
            rate(g(&stats.tries), a.secs),
            g(&stats.auth_failed),
            g(&stats.throttled),
            g(&stats.refused),
            g(&stats.other),
            g(&stats.wrongly_accepted)
        );
        pass &= l.ok > 0 && l.failed == 0 && g(&stats.wrongly_accepted) == 0;
    }
    let alive = server.alive();
    server.stop(false)?;
    r += &format!("  server up throughout: {alive}; panics in log: {}\n", server.panics());
    r += &format!("  verdict: {}\n", if pass && alive { "PASS" } else { "FAIL" });
    Ok(r)
}
