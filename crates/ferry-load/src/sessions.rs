//! `sessions`: hold N logged-in TLS sessions at once, then have each do an
//! `ls` and a `stat`; report memory per session and latency under that load.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use ferry_client::{NoProgress, PutOptions, Session};
use tokio::sync::Semaphore;

use crate::server::{Server, base_config, server_nofile};
use crate::util::{Lat, loopback, mib, raise_nofile};

#[derive(Args, Clone, Debug)]
pub struct SessionsArgs {
    /// Logged-in sessions to hold at once.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Logins in flight while ramping up.
    #[arg(long, default_value_t = 200)]
    pub ramp_concurrency: usize,
    /// Seconds to hold every session idle before the requests.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Sessions doing their ls+stat at the same moment.
    #[arg(long, default_value_t = 256)]
    pub op_concurrency: usize,
    /// Loopback source addresses to spread over (127.0.0.1..).
    #[arg(long, default_value_t = 8)]
    pub addresses: usize,
}

const USERS: usize = 10;

pub async fn run(ferry: &Path, dir: &Path, a: &SessionsArgs) -> Result<String> {
    let nofile = raise_nofile(a.count as u64 + 4096)?;
    if nofile < a.count as u64 + 256 {
        bail!("RLIMIT_NOFILE is {nofile}, too low for {} sessions", a.count);
    }
    let limits = format!(
        "max_connections = {}\nmax_unauthenticated_per_ip = 256\nlogin_timeout_secs = 60\nidle_timeout_secs = 3600",
        a.count + 1000
    );
    let mut server = Server::start(ferry, dir, &base_config(&limits, ""))?;
    for u in 0..USERS {
        server.add_user(&format!("s{u}"), "pw-sessions", None)?;
    }
    let t = server.target();
    // Something to stat in every home.
    let seed_file = dir.join("hello.txt");
    std::fs::write(&seed_file, b"hello from ferry-load\n")?;
    for u in 0..USERS {
        let mut s = t.login(&format!("s{u}"), "pw-sessions", None).await?;
        s.put_file(&seed_file, "/hello.txt", &PutOptions { overwrite: true, ..Default::default() }, &NoProgress)
            .await?;
        s.close().await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server.rss_kib().unwrap_or(0);

    // Ramp up with a bounded number of logins in flight.
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(a.ramp_concurrency));
    let held: Arc<Mutex<Vec<Session>>> = Arc::new(Mutex::new(Vec::with_capacity(a.count)));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let login_lat: Arc<Mutex<Lat>> = Arc::default();
    let mut tasks = Vec::with_capacity(a.count);
    for i in 0..a.count {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (t, held, errors, login_lat) = (t.clone(), Arc::clone(&held), Arc::clone(&errors), Arc::clone(&login_lat));
        let addresses = a.addresses;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            // A server out of descriptors leaves connections in its backlog
            // unanswered: give up on those instead of hanging.
            let user = format!("s{}", i % USERS);
            let login = t.login(&user, "pw-sessions", Some(loopback(i, 1, addresses)));
            match tokio::time::timeout(Duration::from_secs(30), login).await.unwrap_or_else(|_| {
                Err(ferry_client::ClientError::Local("no answer within 30 s (server out of descriptors?)".into()))
            }) {
                Ok(s) => {
                    login_lat.lock().expect("not poisoned").push(t0.elapsed());
                    held.lock().expect("not poisoned").push(s);
                }
                Err(e) => errors.lock().expect("not poisoned").push(e.to_string()),
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let ramp = started.elapsed();
    let sessions = std::mem::take(&mut *held.lock().expect("not poisoned"));
    let n = sessions.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_held = server.rss_kib().unwrap_or(0);
    let fds_held = server.fds().unwrap_or(0);
    let fds_per_session = if n > 0 { fds_held as f64 / n as f64 } else { 0.0 };
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;

    // Every held session does an ls and a stat, op_concurrency at a time.
    let sem = Arc::new(Semaphore::new(a.op_concurrency));
    let ls_lat: Arc<Mutex<Lat>> = Arc::default();
    let stat_lat: Arc<Mutex<Lat>> = Arc::default();
    let op_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let ops_started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for mut s in sessions {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (ls_lat, stat_lat, op_errors) = (Arc::clone(&ls_lat), Arc::clone(&stat_lat), Arc::clone(&op_errors));
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match s.ls(Some("/")).await {
                Ok(_) => ls_lat.lock().expect("not poisoned").push(t0.elapsed()),
                Err(e) => op_errors.lock().expect("not poisoned").push(format!("ls: {e}")),
            }
            let t0 = Instant::now();
            match s.stat("/hello.txt").await {
                Ok(_) => stat_lat.lock().expect("not poisoned").push(t0.elapsed()),
                Err(e) => op_errors.lock().expect("not poisoned").push(format!("stat: {e}")),
            }
            drop(permit);
            s // still held until every session has done its requests
        }));
    }
    let mut back = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(s) = task.await {
            back.push(s);
        }
    }
    let ops_time = ops_started.elapsed();
    let alive = server.alive();
    drop(back);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_close = server.rss_kib().unwrap_or(0);
    server.stop(false)?;

    let errors = errors.lock().expect("not poisoned").clone();
    let op_errors = op_errors.lock().expect("not poisoned").clone();
    let per_session = if n > 0 { (rss_held.saturating_sub(rss_before)) as f64 * 1024.0 / n as f64 } else { 0.0 };
    let mut r = String::new();
    r += &format!(
        "sessions: {n}/{} logged-in TLS sessions held at once (ramp {:.1}s, {} logins in flight, sources 127.0.0.1..{}); login failures: {}\n",
        a.count,
        ramp.as_secs_f64(),
        a.ramp_concurrency,
        a.addresses,
        errors.len()
    );
    if let Some(e) = errors.first() {
        r += &format!("  first login error: {e}\n");
    }
    r += &format!("  login latency while ramping: {}\n", login_lat.lock().expect("not poisoned").summary());
    r += &format!(
        "  server RSS: {} idle -> {} with {n} sessions (+{:.1} KiB/session); {} after they closed; fds held {fds_held} ({fds_per_session:.2}/session)\n",
        mib(rss_before),
        mib(rss_held),
        per_session / 1024.0,
        mib(rss_after_close)
    );
    r += &format!(
        "  with all {n} sessions open, {} at a time, done in {:.1}s: ls {} | stat {}; errors: {}\n",
        a.op_concurrency,
        ops_time.as_secs_f64(),
        ls_lat.lock().expect("not poisoned").summary(),
        stat_lat.lock().expect("not poisoned").summary(),
        op_errors.len()
    );
    if let Some(e) = op_errors.first() {
        r += &format!("  first op error: {e}\n");
    }
    r += &format!(
        "  limits: harness RLIMIT_NOFILE {nofile} (setrlimit), server {} (prlimit); server up throughout: {alive}; panics in log: {}\n",
        server_nofile(),
        server.panics()
    );
    r += &format!("  verdict: {}\n", if n == a.count && op_errors.is_empty() && alive { "PASS" } else { "FAIL" });
    Ok(r)
}
