//! The UDP services that `ferry serve` runs beside the TCP listener when
//! the configuration enables them. They stop with the server's shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::core::Core;
use crate::udp::{chat, time};

pub const TIME_DEFAULT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7734);
pub const CHAT_DEFAULT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7735);

pub async fn start_udp(shared: &Arc<Core>) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let cfg = &shared.config;
    if cfg.time.enabled {
        let addr = cfg.time.listen.unwrap_or(TIME_DEFAULT);
        let socket = UdpSocket::bind(addr).await.with_context(|| format!("time service cannot bind {addr}"))?;
        info!(addr = %socket.local_addr()?, "time service listening");
        let (c, token) = (cfg.time.clone(), shared.shutdown.child_token());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = time::serve(socket, c, token).await {
                warn!(error = %e, "time service stopped");
            }
        }));
    }
    if cfg.chat.enabled {
        let addr = cfg.chat.listen.unwrap_or(CHAT_DEFAULT);
        let socket = UdpSocket::bind(addr).await.with_context(|| format!("chat relay cannot bind {addr}"))?;
        info!(addr = %socket.local_addr()?, "chat relay listening");
        let (c, token) = (cfg.chat.clone(), shared.shutdown.child_token());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = chat::serve(socket, c, token).await {
                warn!(error = %e, "chat relay stopped");
            }
        }));
    }
    Ok(tasks)
}
