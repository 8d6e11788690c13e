//! Clients of the UDP time service and chat relay (issue 6).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ferry_proto::udp::time::{self as wire, ErrorCode, MalformedReply, Reply};
use tokio::net::UdpSocket;

// The chat client lives in src/chat.rs (a path relative to this file's
// directory), reachable as `ferry_client::udp::chat`.
#[path = "chat.rs"]
pub mod chat;

pub use ferry_proto::udp::chat::DEFAULT_PORT as CHAT_DEFAULT_PORT;
pub use ferry_proto::udp::time::DEFAULT_PORT as TIME_DEFAULT_PORT;

/// Why a time query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("no reply after {attempts} attempts")]
    NoReply { attempts: u32 },
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error(transparent)]
    Malformed(#[from] MalformedReply),
}

/// A local socket of the same family as `peer`, connected to it (so only the
/// peer's datagrams are received).
pub(crate) async fn connected_socket(peer: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match peer.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

/// Resolves `HOST`, `HOST:PORT`, `IPv6` or `[IPv6]:PORT`, using
/// `default_port` when none is given (for `ferry time HOST[:PORT]`).
pub async fn resolve_addr(host_port: &str, default_port: u16) -> io::Result<SocketAddr> {
    if let Ok(sa) = host_port.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = host_port.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok((ip, default_port).into());
    }
    let target = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:{default_port}") };
    tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address"))
}

/// Asks the time service at `addr` for the time in `format` (empty: the
/// server's default). Each attempt waits `timeout`; a lost request or reply
/// is retried `retries` more times, since UDP loses datagrams.
pub async fn query_time(addr: SocketAddr, format: &str, timeout: Duration, retries: u32) -> Result<String, TimeError> {
    let socket = connected_socket(addr).await?;
    let mut buf = vec![0u8; wire::ABSOLUTE_MAX_REPLY + 1];
    let attempts = retries.saturating_add(1);
    for attempt in 1..=attempts {
        socket.send(format.as_bytes()).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_elapsed) => break,
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(n)) => match wire::decode_reply(&buf[..n]) {
                    Ok(Reply::Ok(time)) => return Ok(time),
                    Ok(Reply::Err { code, message }) => {
                        return Err(TimeError::Server { code, message });
                    }
                    // A stray datagram: keep waiting for the real reply,
                    // but report it if nothing better comes.
                    Err(e) if attempt == attempts => return Err(e.into()),
                    Err(_) => continue,
                },
            }
        }
        tracing::debug!(attempt, "time: no reply, retrying");
    }
    Err(TimeError::NoReply { attempts })
}
