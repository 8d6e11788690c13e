//! `soak`: many clients doing random uploads, downloads, renames, deletes and
//! resumes, with client kills, connection cuts (a proxy that drops
//! connections) and two server restarts (SIGTERM, then SIGKILL). Every client
//! keeps a ledger of what may be under each of its names; afterwards a
//! checker compares the server with the ledgers and the quotas with the disk.
//!
//! The ledger keeps, per name, the set of states it may be in: `None`
//! (absent) or an upload `(seed, size)`. A definite answer sets it to one
//! state; an answer lost to a kill or a cut adds the attempted outcome to the
//! set (it may or may not have happened). Names belong to one client, so
//! only that client changes them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ferry_client::{ClientError, ErrorCode, GetOptions, NoProgress, PutOptions, Session};
use tokio::net::{TcpListener, TcpStream};

use crate::server::{Server, base_config};
use crate::util::{Rng, Target, content, sha256_hex, walk_files};

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Length of the run.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Users the clients are spread over (each with a quota).
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    /// Quota of each user.
    #[arg(long, default_value = "16MiB")]
    pub quota: String,
    /// Largest upload, bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_size: u64,
    /// Names each client works with.
    #[arg(long, default_value_t = 6)]
    pub names: u64,
    /// Probability that an operation is killed (session dropped) mid-way.
    #[arg(long, default_value_t = 0.08)]
    pub kill_probability: f64,
    /// Probability that a proxied connection is cut at a random moment.
    #[arg(long, default_value_t = 0.3)]
    pub cut_probability: f64,
    /// Seed of everything random (contents are derived from it).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl Default for SoakArgs {
    fn default() -> Self {
        SoakArgs {
            clients: 50,
            minutes: 10.0,
            users: 5,
            quota: "16MiB".into(),
            max_size: 3 * 1024 * 1024,
            names: 6,
            kill_probability: 0.08,
            cut_probability: 0.3,
            seed: 7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Content {
    seed: u64,
    size: u64,
}

type State = Option<Content>;

/// (user, path) → the states the name may be in.
type Ledger = Mutex<BTreeMap<(String, String), Vec<State>>>;

/// (user, path) → until when a lost request may still act on it, and what it may leave.
type Lingering = Mutex<HashMap<(String, String), (Instant, Vec<State>)>>;

#[derive(Default)]
struct Counters {
    uploads: AtomicU64,
    resumed: AtomicU64,
    downloads: AtomicU64,
    renames: AtomicU64,
    deletes: AtomicU64,
    refused_quota: AtomicU64,
    refused_other: AtomicU64,
    in_doubt: AtomicU64,
    kills: AtomicU64,
    mid_upload_kills: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    violations: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    target: Target,
    proxy_port: u16,
    ledger: Ledger,
    /// Names touched by requests whose answer was lost: until when, and what they may still do.
    lingering: Lingering,
    /// What each client is waiting on now.
    steps: Mutex<Vec<&'static str>>,
    hashes: Mutex<HashMap<Content, String>>,
    counters: Counters,
    problems: Mutex<Vec<String>>,
    deadline: Instant,
    a: SoakArgs,
    dir: PathBuf,
}

impl Shared {
    fn hash_of(&self, c: Content) -> String {
        if let Some(h) = self.hashes.lock().expect("not poisoned").get(&c) {
            return h.clone();
        }
        let h = sha256_hex(&content(c.seed, c.size));
        self.hashes.lock().expect("not poisoned").insert(c, h.clone());
        h
    }

    /// Notes what client `idx` is waiting on, for a report if it never finishes.
    fn step(&self, idx: usize, what: &'static str) {
        self.steps.lock().expect("not poisoned")[idx] = what;
    }

    fn problem(&self, p: String) {
        inc(&self.counters.violations);
        let mut v = self.problems.lock().expect("not poisoned");
        if v.len() < 50 {
            v.push(p);
        }
    }

    fn states(&self, user: &str, path: &str) -> Vec<State> {
        self.ledger.lock().expect("not poisoned").get(&(user.into(), path.into())).cloned().unwrap_or(vec![None])
    }

    /// What an answer said the name holds now, plus what a lost request may
    /// still do to it: the server finishes a request whose client vanished
    /// on its own time, possibly after the client's next request.
    fn set(&self, user: &str, path: &str, states: Vec<State>) {
        let key = (user.to_string(), path.to_string());
        let mut states = states;
        let mut lingering = self.lingering.lock().expect("not poisoned");
        if let Some((until, late)) = lingering.get(&key) {
            if Instant::now() < *until {
                states.extend_from_slice(late);
            } else {
                lingering.remove(&key);
            }
        }
        states.sort();
        states.dedup();
        self.ledger.lock().expect("not poisoned").insert(key, states);
    }

    /// A lost answer: the name may be in any of `more` too, from now on and
    /// for [`LINGER`] whatever later answers say.
    fn add(&self, user: &str, path: &str, more: &[State]) {
        let key = (user.to_string(), path.to_string());
        {
            let mut lingering = self.lingering.lock().expect("not poisoned");
            let entry = lingering.entry(key).or_insert_with(|| (Instant::now(), Vec::new()));
            entry.0 = Instant::now() + LINGER;
            entry.1.extend_from_slice(more);
        }
        let mut s = self.states(user, path);
        s.extend_from_slice(more);
        self.set(user, path, s);
    }
}

/// How long a request whose answer was lost may still take effect: the
/// server may be busy, but not for this long.
const LINGER: Duration = Duration::from_secs(30);

/// How an operation ended.
enum Outcome<T> {
    Done(T),
    /// The server refused: nothing changed.
    Refused(ClientError),
    /// The answer was lost (kill, cut, restart): it may or may not have happened.
    InDoubt(String),
}

fn classify<T>(r: Result<Result<T, ClientError>, tokio::time::error::Elapsed>) -> Outcome<T> {
    match r {
        Err(_) => Outcome::InDoubt("killed".into()),
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(e)) => match e.code() {
            // Session-level or server-side trouble: the request's fate is unknown.
            Some(ErrorCode::ShuttingDown | ErrorCode::Timeout | ErrorCode::Internal | ErrorCode::BadFrame)
            | Some(ErrorCode::Unknown)
            | None => Outcome::InDoubt(e.to_string()),
            Some(_) => Outcome::Refused(e),
        },
    }
}

fn random_size(rng: &mut Rng, max: u64) -> u64 {
    match rng.below(10) {
        0..=4 => rng.below(64 * 1024 + 1),
        5..=7 => rng.below(1024 * 1024 + 1),
        _ => 1024 * 1024 + rng.below(max.saturating_sub(1024 * 1024) + 1),
    }
}

async fn connect(sh: &Shared, user: &str, proxied: bool) -> Option<Session> {
    let mut backoff = Duration::from_millis(100);
    while Instant::now() < sh.deadline {
        let port = proxied.then_some(sh.proxy_port);
        let login = tokio::time::timeout(STEP_LIMIT, sh.target.login_via(user, "soak-pw", None, port)).await;
        match login {
            Ok(Ok(s)) => return Some(s),
            Err(_) => {
                sh.problem(format!("{user}: a login (proxied: {proxied}) got no answer in {STEP_LIMIT:?}"));
                inc(&sh.counters.connect_failures);
            }
            Ok(Err(_)) => {
                inc(&sh.counters.connect_failures);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

async fn client(sh: Arc<Shared>, idx: usize) {
    let user = format!("u{}", idx % sh.a.users);
    let proxied = idx % 2 == 1;
    let mut rng = Rng::new(sh.a.seed.wrapping_mul(1000).wrapping_add(idx as u64));
    let local = sh.dir.join("clients").join(format!("c{idx}"));
    let _ = std::fs::create_dir_all(&local);
    let state_dir = local.join("state");
    let dir = format!("/c{idx}");
    let mut session: Option<Session> = None;
    let mut pending: Option<(String, Content, PathBuf)> = None;
    let mut made_dir = false;
    let mut upload_no = 0u64;
    while Instant::now() < sh.deadline {
        if session.is_none() {
            sh.step(idx, "connect");
            session = connect(&sh, &user, proxied).await;
            inc(&sh.counters.reconnects);
        }
        let Some(s) = session.as_mut() else { break };
        if !made_dir {
            sh.step(idx, "mkdir");
            match tokio::time::timeout(STEP_LIMIT, s.mkdir(&dir, true)).await {
                Ok(Ok(())) => made_dir = true,
                Ok(Err(e)) if e.code() == Some(ErrorCode::AlreadyExists) => made_dir = true,
                Ok(Err(_)) => {
                    session = None;
                    continue;
                }
                Err(_) => {
                    sh.problem(format!("{user}: mkdir {dir} got no answer in {STEP_LIMIT:?}"));
                    session = None;
                    continue;
                }
            }
        }
        let kill = rng.chance(sh.a.kill_probability);
        let limit = if kill { Duration::from_millis(5 + rng.below(400)) } else { Duration::from_secs(120) };
        let name = |rng: &mut Rng| format!("{dir}/f{}", rng.below(sh.a.names));
        let lost = |why: String, sh: &Shared| {
            inc(&sh.counters.in_doubt);
            if why == "killed" {
                inc(&sh.counters.kills);
            }
        };
        let pick = rng.below(100);
        let mut drop_session = false;
        sh.step(
            idx,
            if pending.is_some() {
                "resume"
            } else {
                ["upload", "download", "mv", "rm"]
                    [usize::from(pick >= 40) + usize::from(pick >= 70) + usize::from(pick >= 85)]
            },
        );
        if let Some((path, c, file)) = pending.clone() {
            // Finish the upload that was cut: resume it.
            let opts = PutOptions { overwrite: true, resume: true, state_dir: Some(state_dir.clone()) };
            match classify(tokio::time::timeout(limit, s.put_file(&file, &path, &opts, &NoProgress)).await) {
                Outcome::Done(sum) => {
                    inc(&sh.counters.uploads);
                    if sum.resumed_from > 0 {
                        inc(&sh.counters.resumed);
                    }
                    sh.set(&user, &path, vec![Some(c)]);
                    pending = None;
                    let _ = std::fs::remove_file(&file);
                }
                Outcome::Refused(e) => {
                    if e.code() == Some(ErrorCode::QuotaExceeded) {
                        inc(&sh.counters.refused_quota);
                    } else {
                        inc(&sh.counters.refused_other);
                    }
                    pending = None;
                    let _ = std::fs::remove_file(&file);
                }
                Outcome::InDoubt(why) => {
                    lost(why, &sh);
                    sh.add(&user, &path, &[Some(c)]);
                    drop_session = true;
                }
            }
        } else if pick < 40 {
            // Upload a new content under one of this client's names.
            let path = name(&mut rng);
            upload_no += 1;
            let c = Content {
                seed: sh.a.seed ^ ((idx as u64) << 40) ^ upload_no,
                size: random_size(&mut rng, sh.a.max_size),
            };
            let file = local.join(format!("up-{}.bin", c.seed));
            if std::fs::write(&file, content(c.seed, c.size)).is_err() {
                continue;
            }
            // Large uploads are killed more often, part-way through the body
            // (after a random number of bytes), so that resumes happen.
            let cut_at = (c.size > 1024 * 1024 && rng.chance(0.25)).then(|| 1 + rng.below(c.size - 1));
            if cut_at.is_some() {
                inc(&sh.counters.mid_upload_kills);
            }
            let progress = KillAfter::new(cut_at);
            let opts = PutOptions { overwrite: true, resume: false, state_dir: Some(state_dir.clone()) };
            let put = s.put_file(&file, &path, &opts, &progress);
            let limit = if cut_at.is_some() { Duration::from_secs(120) } else { limit };
            let killed_mid = async {
                tokio::select! {
                    r = tokio::time::timeout(limit, put) => r,
                    _ = progress.fired.notified(), if cut_at.is_some() => {
                        tokio::time::timeout(Duration::ZERO, std::future::pending::<Result<_, ClientError>>()).await
                    }
                }
            };
            match classify(killed_mid.await) {
                Outcome::Done(_) => {
                    inc(&sh.counters.uploads);
                    sh.set(&user, &path, vec![Some(c)]);
                    let _ = std::fs::remove_file(&file);
                }
                Outcome::Refused(e) => {
                    if e.code() == Some(ErrorCode::QuotaExceeded) {
                        inc(&sh.counters.refused_quota);
                    } else {
                        inc(&sh.counters.refused_other);
                    }
                    let _ = std::fs::remove_file(&file);
                }
                Outcome::InDoubt(why) => {
                    lost(why, &sh);
                    sh.add(&user, &path, &[Some(c)]);
                    pending = Some((path, c, file));
                    drop_session = true;
                }
            }
        } else if pick < 70 {
            // Download and verify against the ledger.
            let path = name(&mut rng);
            let states = sh.states(&user, &path);
            let out = local.join("download.bin");
            let opts = GetOptions { overwrite: true, resume: false };
            match classify(tokio::time::timeout(limit, s.get_file(&path, &out, &opts, &NoProgress)).await) {
                Outcome::Done(sum) => {
                    inc(&sh.counters.downloads);
                    let data = std::fs::read(&out).unwrap_or_default();
                    let got = sha256_hex(&data);
                    let verified = sum.algo.digest_hex(&data);
                    if verified != sum.hash {
                        sh.problem(format!(
                            "{user}:{path}: downloaded bytes hash {verified} ({}), the transfer said {}",
                            sum.algo, sum.hash
                        ));
                    }
                    match states.iter().flatten().find(|c| sh.hash_of(**c) == got) {
                        Some(c) => sh.set(&user, &path, vec![Some(*c)]),
                        None => sh.problem(format!(
                            "{user}:{path}: downloaded content {got} ({} bytes) matches no upload in the ledger {states:?}",
                            sum.size
                        )),
                    }
                }
                Outcome::Refused(e) if e.code() == Some(ErrorCode::NotFound) => {
                    if states.contains(&None) {
                        sh.set(&user, &path, vec![None]);
                    } else {
                        sh.problem(format!("{user}:{path}: not found, but the ledger says {states:?}"));
                    }
                }
                Outcome::Refused(_) => inc(&sh.counters.refused_other),
                Outcome::InDoubt(why) => {
                    lost(why, &sh);
                    drop_session = true;
                }
            }
            let _ = std::fs::remove_file(&out);
        } else if pick < 85 {
            // Rename one name onto another (overwriting).
            let (from, to) = (name(&mut rng), name(&mut rng));
            if from != to {
                let src = sh.states(&user, &from);
                let present: Vec<State> = src.iter().copied().filter(Option::is_some).collect();
                match classify(tokio::time::timeout(limit, s.mv(&from, &to, true)).await) {
                    Outcome::Done(()) => {
                        inc(&sh.counters.renames);
                        if present.is_empty() {
                            sh.problem(format!(
                                "{user}: mv {from} {to} succeeded, but the ledger says {from} is absent"
                            ));
                        }
                        sh.set(&user, &to, present);
                        sh.set(&user, &from, vec![None]);
                    }
                    Outcome::Refused(e) if e.code() == Some(ErrorCode::NotFound) => {
                        if src.contains(&None) {
                            sh.set(&user, &from, vec![None]);
                        } else {
                            sh.problem(format!("{user}: mv {from}: not found, but the ledger says {src:?}"));
                        }
                    }
                    Outcome::Refused(_) => inc(&sh.counters.refused_other),
                    Outcome::InDoubt(why) => {
                        lost(why, &sh);
                        sh.add(&user, &to, &present);
                        sh.add(&user, &from, &[None]);
                        drop_session = true;
                    }
                }
            }
        } else {
            let path = name(&mut rng);
            let states = sh.states(&user, &path);
            match classify(tokio::time::timeout(limit, s.rm(&path, false)).await) {
                Outcome::Done(()) => {
                    inc(&sh.counters.deletes);
                    sh.set(&user, &path, vec![None]);
                }
                Outcome::Refused(e) if e.code() == Some(ErrorCode::NotFound) => {
                    if states.contains(&None) {
                        sh.set(&user, &path, vec![None]);
                    } else {
                        sh.problem(format!("{user}: rm {path}: not found, but the ledger says {states:?}"));
                    }
                }
                Outcome::Refused(_) => inc(&sh.counters.refused_other),
                Outcome::InDoubt(why) => {
                    lost(why, &sh);
                    sh.add(&user, &path, &[None]);
                    drop_session = true;
                }
            }
        }
        if drop_session {
            // A lost answer leaves the stream in an unknown place: start afresh,
            // after the server had a moment to notice the dead connection.
            session = None;
            sh.step(idx, "pause");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    sh.step(idx, "bye");
    if let Some(s) = session
        && tokio::time::timeout(STEP_LIMIT, s.close()).await.is_err()
    {
        sh.problem(format!("{user}: client {idx}'s bye got no answer in {STEP_LIMIT:?}"));
    }
    sh.step(idx, "done");
}

/// Longest wait for a step that has no kill planned (login, mkdir, bye): a
/// server that leaves one unanswered this long is a finding, not a hang.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// Progress that fires once `at` bytes have been sent: the caller then drops the upload.
struct KillAfter {
    at: Option<u64>,
    sent: AtomicU64,
    fired: tokio::sync::Notify,
}

impl KillAfter {
    fn new(at: Option<u64>) -> Self {
        KillAfter { at, sent: AtomicU64::new(0), fired: tokio::sync::Notify::new() }
    }
}

impl ferry_client::Progress for KillAfter {
    fn begin(&self, _name: &str, what: &str, _total: u64) {
        if what == "upload" {
            self.sent.store(0, Ordering::Relaxed);
        }
    }

    fn advance(&self, bytes: u64) {
        let now = self.sent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.at.is_some_and(|at| now >= at && now - bytes < at) {
            self.fired.notify_one();
        }
    }
}

/// A TCP proxy that cuts a share of its connections at a random moment.
async fn proxy(listener: TcpListener, server_port: Arc<AtomicU16>, cut_p: f64, seed: u64, cuts: Arc<AtomicU64>) {
    let mut rng = Rng::new(seed);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        let port = server_port.load(Ordering::Relaxed);
        let cut_after = rng.chance(cut_p).then(|| Duration::from_millis(200 + rng.below(8000)));
        let cuts = Arc::clone(&cuts);
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            match cut_after {
                Some(d) => {
                    if tokio::time::timeout(d, tokio::io::copy_bidirectional(&mut inbound, &mut outbound))
                        .await
                        .is_err()
                    {
                        // Dropping both sockets with data in flight: the peers see a reset or EOF.
                        cuts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            }
        });
    }
}

/// One user's accounting, from the server and from the disk.
struct Usage {
    df_used: u64,
    df_reserved: u64,
    quota: Option<u64>,
    files: u64,
    parts: u64,
    sidecars: u64,
}

impl Usage {
    /// What the server must count: files and partials (sidecars are the
    /// server's bookkeeping, not charged to the user).
    fn on_disk(&self) -> u64 {
        self.files + self.parts
    }
}

/// (files, partials, sidecars) bytes under a home. Each inode counts once: a
/// partial renamed into place while the walk runs is seen under both names.
fn disk_usage(home: &Path) -> (u64, u64, u64) {
    let (mut files, mut parts, mut sidecars) = (0, 0, 0);
    let mut seen = std::collections::HashSet::new();
    for (rel, len, ino) in walk_files(home) {
        if !seen.insert(ino) {
            continue;
        }
        if rel.starts_with(".ferry-partial") {
            if rel.extension().is_some_and(|e| e == "part") {
                parts += len;
            } else {
                sidecars += len;
            }
        } else {
            files += len;
        }
    }
    (files, parts, sidecars)
}

async fn usage(sh: &Shared, server: &Server, user: &str) -> Result<Usage> {
    let mut s = sh.target.login(user, "soak-pw", None).await?;
    let df = s.df().await?;
    s.close().await?;
    let (files, parts, sidecars) = disk_usage(&server.home(user));
    Ok(Usage { df_used: df.used, df_reserved: df.reserved, quota: df.quota, files, parts, sidecars })
}

/// Compares every name the server lists with the ledger; returns (files checked, in-doubt names, problems).
async fn check_contents(sh: &Shared) -> Result<(usize, usize, Vec<String>)> {
    let mut problems = Vec::new();
    let (mut checked, mut doubtful) = (0, 0);
    let ledger = sh.ledger.lock().expect("not poisoned").clone();
    for u in 0..sh.a.users {
        let user = format!("u{u}");
        let mut s = sh.target.login(&user, "soak-pw", None).await?;
        let mut seen = std::collections::BTreeSet::new();
        for top in s.ls(Some("/")).await? {
            if top.kind != "dir" || !top.name.starts_with('c') {
                problems.push(format!("{user}: unexpected /{} ({}) in the home", top.name, top.kind));
                continue;
            }
            for e in s.ls(Some(&format!("/{}", top.name))).await? {
                let path = format!("/{}/{}", top.name, e.name);
                seen.insert(path.clone());
                let states = ledger.get(&(user.clone(), path.clone())).cloned().unwrap_or_default();
                if states.len() > 1 {
                    doubtful += 1;
                }
                if e.kind != "file" {
                    problems.push(format!("{user}:{path}: a {} where only files were made", e.kind));
                    continue;
                }
                let (hash, _) = s.hash_as(&path, None, ferry_client::HashAlgo::Sha256).await?;
                checked += 1;
                if !states.iter().flatten().any(|c| c.size == e.size && sh.hash_of(*c) == hash) {
                    problems.push(format!(
                        "{user}:{path}: {} bytes hashing to {hash} match no committed or in-doubt upload (ledger {states:?})",
                        e.size
                    ));
                }
            }
        }
        for ((lu, path), states) in &ledger {
            if *lu == user && !seen.contains(path) && !states.contains(&None) {
                problems.push(format!("{user}:{path}: missing, but committed as {states:?}"));
            }
        }
        s.close().await?;
    }
    Ok((checked, doubtful, problems))
}

pub async fn run(ferry: &Path, dir: &Path, a: &SoakArgs) -> Result<String> {
    let limits =
        "max_unauthenticated_per_ip = 256\nlogin_timeout_secs = 20\nidle_timeout_secs = 600\nshutdown_grace_secs = 3";
    let mut server = Server::start(ferry, dir, &base_config(limits, ""))?;
    for u in 0..a.users {
        server.add_user(&format!("u{u}"), "soak-pw", Some(&a.quota))?;
    }
    let quota_bytes = {
        let mut s = server.target().login("u0", "soak-pw", None).await?;
        let q = s.df().await?.quota.context("the soak users need a quota")?;
        s.close().await?;
        q
    };
    let server_port = Arc::new(AtomicU16::new(server.port));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = listener.local_addr()?.port();
    let cuts = Arc::new(AtomicU64::new(0));
    let proxy_task =
        tokio::spawn(proxy(listener, Arc::clone(&server_port), a.cut_probability, a.seed, Arc::clone(&cuts)));

    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    let started = Instant::now();
    let sh = Arc::new(Shared {
        target: server.target(),
        proxy_port,
        ledger: Mutex::default(),
        lingering: Mutex::default(),
        steps: Mutex::new(vec!["start"; a.clients]),
        hashes: Mutex::default(),
        counters: Counters::default(),
        problems: Mutex::default(),
        deadline: started + run_for,
        a: a.clone(),
        dir: dir.to_path_buf(),
    });
    let mut clients = Vec::new();
    for i in 0..a.clients {
        clients.push(tokio::spawn(client(Arc::clone(&sh), i)));
    }

    // A progress line every 30 s on stderr, so that a stall shows while it happens.
    let ticker = {
        let sh = Arc::clone(&sh);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at((started + Duration::from_secs(30)).into(), Duration::from_secs(30));
            loop {
                tick.tick().await;
                let c = &sh.counters;
                let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
                eprintln!(
                    "soak {:>4.0}s: uploads {} downloads {} renames {} deletes {} in doubt {} kills {} sessions {}",
                    started.elapsed().as_secs_f64(),
                    g(&c.uploads),
                    g(&c.downloads),
                    g(&c.renames),
                    g(&c.deletes),
                    g(&c.in_doubt),
                    g(&c.kills),
                    g(&c.reconnects)
                );
            }
        })
    };

    // The quota watcher: what is on disk never passes the quota.
    let homes: Vec<PathBuf> = (0..a.users).map(|u| server.home(&format!("u{u}"))).collect();
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&watch_stop);
        tokio::task::spawn_blocking(move || {
            let (mut max, mut over, mut samples) = (0u64, Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                for h in &homes {
                    let (f, p, m) = disk_usage(h);
                    let total = f + p + m;
                    max = max.max(total);
                    if total > quota_bytes && over.len() < 5 {
                        over.push(format!("{}: {total} bytes on disk > quota {quota_bytes}", h.display()));
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            (max, over, samples)
        })
    };

    // Two restarts in the middle: SIGTERM (graceful) at 1/3, SIGKILL at 2/3.
    let mut restarts = Vec::new();
    for (frac, kill) in [(1.0 / 3.0, false), (2.0 / 3.0, true)] {
        let at = started + run_for.mul_f64(frac);
        tokio::time::sleep_until(at.into()).await;
        let took = tokio::task::block_in_place(|| server.stop(kill))?;
        let t = Instant::now();
        tokio::task::block_in_place(|| server.spawn())?;
        server_port.store(server.port, Ordering::Relaxed);
        restarts.push(format!(
            "{} at {:.0}s (stopped in {:.2}s, back in {:.2}s)",
            if kill { "SIGKILL" } else { "SIGTERM" },
            at.duration_since(started).as_secs_f64(),
            took.as_secs_f64(),
            t.elapsed().as_secs_f64()
        ));
    }
    // Measured from the deadline, not from now: this loop starts right after
    // the second restart, at two thirds of the run. (Timing each client from
    // here once flagged a healthy client of a 10-minute run, cut off at 580 s.)
    let give_up = sh.deadline + Duration::from_secs(180);
    for (i, c) in clients.into_iter().enumerate() {
        if tokio::time::timeout_at(give_up.into(), c).await.is_err() {
            let step = sh.steps.lock().expect("not poisoned")[i];
            sh.problem(format!("client {i} did not finish within 3 minutes of the deadline (stuck in: {step})"));
        }
    }
    proxy_task.abort();
    ticker.abort();
    watch_stop.store(true, Ordering::Relaxed);
    let (max_disk, over_quota, samples) = watcher.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alive = server.alive();

    // The checker.
    let (checked, doubtful, content_problems) = check_contents(&sh).await?;
    let mut quota_lines = Vec::new();
    let mut quota_ok = true;
    for u in 0..a.users {
        let user = format!("u{u}");
        let before = usage(&sh, &server, &user).await?;
        let ok = before.df_used == before.on_disk() && before.df_reserved == 0;
        quota_ok &= ok;
        quota_lines.push((user, before, ok));
    }
    // Restart once more: usage is rescanned from disk and must agree.
    tokio::task::block_in_place(|| server.stop(false))?;
    tokio::task::block_in_place(|| server.spawn())?;
    let mut rescan_lines = Vec::new();
    for u in 0..a.users {
        let user = format!("u{u}");
        let after = usage(&sh, &server, &user).await?;
        let ok = after.df_used == after.on_disk();
        quota_ok &= ok;
        rescan_lines.push((user, after, ok));
    }
    server.stop(false)?;

    let c = &sh.counters;
    let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let mut r = format!(
        "soak: {} clients ({} through the cutting proxy) over {} users with quota {} each, {:.1} min, seed {}\n",
        a.clients,
        a.clients / 2,
        a.users,
        a.quota,
        a.minutes,
        a.seed
    );
    r += &format!("  restarts: {}\n", restarts.join("; "));
    r += &format!(
        "  ops: uploads {} (resumed {}) downloads {} renames {} deletes {}; refused: quota {} other {}\n",
        g(&c.uploads),
        g(&c.resumed),
        g(&c.downloads),
        g(&c.renames),
        g(&c.deletes),
        g(&c.refused_quota),
        g(&c.refused_other)
    );
    r += &format!(
        "  faults: answers lost {} (client kills {}, mid-upload kills planned {}, proxy cuts {}, the rest restarts); sessions opened {}, failed connects {}\n",
        g(&c.in_doubt),
        g(&c.kills),
        g(&c.mid_upload_kills),
        cuts.load(Ordering::Relaxed),
        g(&c.reconnects),
        g(&c.connect_failures)
    );
    let live_problems = sh.problems.lock().expect("not poisoned").clone();
    r += &format!(
        "  [{}] downloads during the run matched the ledger ({} problems)\n",
        if live_problems.is_empty() { "ok" } else { "FAIL" },
        live_problems.len()
    );
    r += &format!(
        "  [{}] every listed file ({checked}, {doubtful} of them in doubt) hashes to an upload committed or in doubt under its name; no partial under a final name; nothing committed is missing ({} problems)\n",
        if content_problems.is_empty() { "ok" } else { "FAIL" },
        content_problems.len()
    );
    for p in live_problems.iter().chain(&content_problems).take(10) {
        r += &format!("      {p}\n");
    }
    r += &format!(
        "  [{}] disk never over quota: max {} of {quota_bytes} bytes in {samples} samples{}\n",
        if over_quota.is_empty() { "ok" } else { "FAIL" },
        max_disk,
        over_quota.first().map(|s| format!(" ({s})")).unwrap_or_default()
    );
    r += &format!(
        "  [{}] df.used == files + live partials (.part; sidecars not charged), reserved == 0:\n",
        if quota_ok { "ok" } else { "FAIL" }
    );
    for (label, lines) in [("after the run", &quota_lines), ("after a restart (rescan)", &rescan_lines)] {
        for (user, u, ok) in lines.iter() {
            r += &format!(
                "      {label:<25} {user}: df.used {} reserved {} quota {:?} | disk files {} + parts {} = {} {} (sidecars {} not charged)\n",
                u.df_used,
                u.df_reserved,
                u.quota,
                u.files,
                u.parts,
                u.on_disk(),
                if *ok { "ok" } else { "MISMATCH" },
                u.sidecars
            );
        }
    }
    r += &format!("  server alive at the end of the run: {alive}; panics in log: {}\n", server.panics());
    let pass = alive
        && live_problems.is_empty()
        && content_problems.is_empty()
        && over_quota.is_empty()
        && quota_ok
        && server.panics() == 0;
    r += &format!("  verdict: {}\n", if pass { "PASS" } else { "FAIL" });
    Ok(r)
}
