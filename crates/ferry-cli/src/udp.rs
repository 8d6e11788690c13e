//! `ferry time`, `time-server`, `chat`, `chat-server`.

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_client::udp::{CHAT_DEFAULT_PORT, TIME_DEFAULT_PORT, chat, query_time, resolve_addr};
use ferry_server::udp::{ChatConfig, TimeConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::args::{ChatArgs, ChatServerArgs, TimeArgs, TimeServerArgs};

pub async fn time(a: TimeArgs) -> Result<u8> {
    let addr =
        resolve_addr(&a.server, TIME_DEFAULT_PORT).await.with_context(|| format!("cannot resolve {}", a.server))?;
    let answer =
        query_time(addr, a.format.as_deref().unwrap_or(""), Duration::from_millis(a.timeout_ms), a.retries).await?;
    // The answer is whatever the service sent: no raw escapes to the terminal.
    crate::report::println_clean!("{answer}");
    Ok(0)
}

/// Cancels the token on SIGINT or SIGTERM. Called before the service prints
/// that it listens, so a signal sent right after that line stops it cleanly.
fn stop_on_signal() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        t.cancel();
    });
    Ok(token)
}

async fn bind(listen: Option<std::net::SocketAddr>, default: std::net::SocketAddr, what: &str) -> Result<UdpSocket> {
    let addr = listen.unwrap_or(default);
    let socket = UdpSocket::bind(addr).await.with_context(|| format!("{what} cannot bind {addr}"))?;
    println!("{what} listening on {}", socket.local_addr()?);
    Ok(socket)
}

pub async fn time_server(a: TimeServerArgs) -> Result<u8> {
    let stop = stop_on_signal()?;
    let socket = bind(a.listen, ferry_server::services::TIME_DEFAULT, "time service").await?;
    let cfg = TimeConfig { utc: a.utc, ..TimeConfig::default() };
    ferry_server::udp::time::serve(socket, cfg, stop).await?;
    Ok(0)
}

pub async fn chat(a: ChatArgs) -> Result<u8> {
    let addr =
        resolve_addr(&a.server, CHAT_DEFAULT_PORT).await.with_context(|| format!("cannot resolve {}", a.server))?;
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    chat::run_line_chat(addr, &a.name, stdin, tokio::io::stdout()).await?;
    Ok(0)
}

pub async fn chat_server(a: ChatServerArgs) -> Result<u8> {
    let stop = stop_on_signal()?;
    let socket = bind(a.listen, ferry_server::services::CHAT_DEFAULT, "chat relay").await?;
    ferry_server::udp::chat::serve(socket, ChatConfig::default(), stop).await?;
    Ok(0)
}
