//! `ferry-load`: a load and fault harness for ferry (issue 7). It runs the
//! real `ferry` binary as a separate server process on 127.0.0.1 and drives
//! it with the client library. Each subcommand prints a short report;
//! `all` runs every scenario with modest defaults and prints one report.

mod hostile;
mod logins;
mod pipe;
mod server;
mod sessions;
mod soak;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry-load", about = "Load and fault harness for the ferry server")]
struct Cli {
    /// The ferry binary to test (default: `ferry` beside this binary).
    #[arg(long, global = true)]
    ferry: Option<PathBuf>,
    /// Where servers keep their data (default: a temporary folder, removed at the end).
    #[arg(long, global = true)]
    workdir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold many logged-in sessions; memory per session, ls/stat latency under that load.
    Sessions(sessions::SessionsArgs),
    /// Sustained logins/s, alone and under a wrong-password flood from other addresses.
    Logins(logins::LoginsArgs),
    /// Silent, slowloris, 4 GiB-header and garbage connections while a real user works.
    Hostile(hostile::HostileArgs),
    /// Many clients with random transfers, kills, cuts and two server restarts; then a checker.
    Soak(soak::SoakArgs),
    /// The floor for the benchmark: a file through a loopback pipe (TLS or not,
    /// hashed on both ends or not), with no protocol around it.
    Pipe(pipe::PipeArgs),
    /// Everything above with modest defaults, one combined report.
    All {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 10)]
        login_secs: u64,
        #[arg(long, default_value_t = 1000)]
        hostile: usize,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
    },
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run(cli: Cli) -> Result<bool> {
    let ferry = match cli.ferry {
        Some(f) => f,
        None => std::env::current_exe()?.parent().context("no parent folder")?.join("ferry"),
    };
    anyhow::ensure!(
        ferry.exists(),
        "{} not found: build it with `cargo build --release -p ferry-cli`",
        ferry.display()
    );
    let tmp = tempfile::Builder::new().prefix("ferry-load-").tempdir()?;
    let work = cli.workdir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let started = Instant::now();
    let header = format!(
        "ferry-load report: {} (load average before: {}, {} CPUs)\n",
        ferry.display(),
        load_average(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    print!("{header}");
    let mut report = String::new();
    match cli.cmd {
        Cmd::Sessions(a) => report += &sessions::run(&ferry, &work.join("sessions"), &a).await?,
        Cmd::Logins(a) => report += &logins::run(&ferry, &work.join("logins"), &a).await?,
        Cmd::Hostile(a) => report += &hostile::run(&ferry, &work.join("hostile"), &a).await?,
        Cmd::Soak(a) => report += &soak::run(&ferry, &work.join("soak"), &a).await?,
        // Normally handled in main, before the runtime starts.
        Cmd::Pipe(a) => {
            pipe::run(&a)?;
            return Ok(true);
        }
        Cmd::All { sessions, login_secs, hostile, clients, minutes } => {
            let mut section = |name: &str, r: Result<String>| {
                let text = r.unwrap_or_else(|e| format!("{name}: ERROR {e:#}\n  verdict: FAIL\n"));
                print!("{text}");
                println!("  (load average after {name}: {})", load_average());
                report += &text;
            };
            // Each server session holds one descriptor (its socket; a user's home
            // and partial folder are shared by all their sessions): stay within
            // the server's open-file limit, with a reserve.
            let fit = server::server_nofile().saturating_sub(1000) as usize;
            if sessions > fit {
                println!(
                    "(sessions: {sessions} asked, {fit} fit in the server's RLIMIT_NOFILE of {} at 1 fd/session)",
                    server::server_nofile()
                );
            }
            let a = sessions::SessionsArgs {
                count: sessions.min(fit),
                ramp_concurrency: 200,
                hold_secs: 5,
                op_concurrency: 256,
                addresses: 8,
            };
            section("sessions", sessions::run(&ferry, &work.join("sessions"), &a).await);
            let a = logins::LoginsArgs {
                secs: login_secs,
                workers: 4,
                attackers: 8,
                per_attacker: 8,
                users_kind: "sqlite".into(),
            };
            section("logins", logins::run(&ferry, &work.join("logins"), &a).await);
            let a = hostile::HostileArgs {
                count: hostile,
                login_timeout_secs: 5,
                addresses: 8,
                chat_flood_secs: 5,
                chat_only: false,
                pipeliners: 100,
                idle_timeout_secs: 5,
                pipeliner_rss_limit_mib: 4096,
                pipeliner_only: false,
            };
            section("hostile", hostile::run(&ferry, &work.join("hostile"), &a).await);
            let a = soak::SoakArgs { clients, minutes, ..soak::SoakArgs::default() };
            section("soak", soak::run(&ferry, &work.join("soak"), &a).await);
            let verdicts: Vec<&str> = report.lines().filter(|l| l.contains("verdict:")).collect();
            let pass = verdicts.iter().all(|l| l.contains("PASS"));
            println!(
                "ALL: {} ({} scenarios, {:.0}s, load average now {})",
                if pass { "PASS" } else { "FAIL" },
                verdicts.len(),
                started.elapsed().as_secs_f64(),
                load_average()
            );
            return Ok(pass);
        }
    }
    print!("{report}");
    println!("(took {:.0}s, load average now {})", started.elapsed().as_secs_f64(), load_average());
    Ok(report.lines().filter(|l| l.contains("verdict:")).all(|l| l.contains("PASS")))
}

fn main() -> ExitCode {
    // The floor pipe copies as ferry does (see the module's note).
    ferry_client::copy_tuning::restart_with_fast_copies();
    let cli = Cli::parse();
    // The pipe needs neither a ferry binary nor a runtime.
    if let Cmd::Pipe(a) = &cli.cmd {
        return match pipe::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-load pipe: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ferry-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
