//! The `ferry` binary: argument parsing and exit codes. Each command lives
//! in its own module; the libraries do the work.

mod args;
mod connect;
mod oneshot;
mod progress;
mod report;
mod serve;
mod shell;
mod transfer;
mod udp;
mod user;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// mimalloc keeps freed blocks for reuse: file data moves through 256 KiB
/// to 1 MiB buffers handed between threads, which glibc's allocator maps and
/// unmaps each time (about 77,000 page faults per GiB uploaded, measured).
/// Built with `no_thp`: mimalloc 3 otherwise asks for transparent huge pages
/// on its arenas, and each 2 MiB page touched is resident whole (an SFTP
/// upload peaked at 80 MiB with them, 45-55 MiB without; bench/run.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a failure (clap uses 2 for usage errors).
pub const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    ferry_client::copy_tuning::restart_with_fast_copies();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(run(cli.command));
    // Blocking readers (stdin) must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e),
    }
}

async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Serve(a) => serve::run(a).await,
        Command::User(c) => user::run(c),
        Command::Login(a) => oneshot::login(a).await,
        Command::Shell(a) => shell::run(a).await,
        Command::Ls(a) => oneshot::ls(a).await,
        Command::Stat(a) => oneshot::stat(a).await,
        Command::Mkdir(a) => oneshot::mkdir(a).await,
        Command::Rm(a) => oneshot::rm(a).await,
        Command::Rmdir(a) => oneshot::rmdir(a).await,
        Command::Mv(a) => oneshot::mv(a).await,
        Command::Hash(a) => oneshot::hash(a).await,
        Command::Df(a) => oneshot::df(a).await,
        Command::Exec(a) => oneshot::exec(a).await,
        Command::Put(a) => transfer::put(a).await,
        Command::Get(a) => transfer::get(a).await,
        Command::Time(a) => udp::time(a).await,
        Command::TimeServer(a) => udp::time_server(a).await,
        Command::Chat(a) => udp::chat(a).await,
        Command::ChatServer(a) => udp::chat_server(a).await,
    }
}

/// One clear line on stderr; a broken pipe (`ferry ls | head`) is not an error.
fn fail(e: anyhow::Error) -> ExitCode {
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(std::io::stderr(), "ferry: {}", report::error_chain(&e));
    ExitCode::from(EXIT_FAILURE)
}
