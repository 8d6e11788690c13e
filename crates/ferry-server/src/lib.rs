//! ferry's server: the listener and sessions, and the cores they drive.
//!
//! Front ends (the framed protocol: `listener`, `session`, `cmd/`) translate
//! to and from the core: `Core` (users, login, quotas, open homes) and `Home`
//! (every file operation, settling the quota) over a `Storage` backend. The
//! core takes no wire types; `cmd/` is the only layer that sees both.
//! docs/DESIGN.md maps every file.

pub mod admission;
pub mod auth;
pub mod claims;
mod cmd;
pub mod config;
pub mod core;
pub mod exec;
pub mod ftp;
pub mod health;
pub mod home;
pub mod listener;
pub mod metrics;
pub mod monitor;
pub mod pg;
mod pool;
pub mod quota;
pub mod services;
mod session;
pub mod sftp;
pub mod storage;
mod stream;
pub mod tls;
pub mod udp;
pub mod users;
pub mod vfs;

pub use config::ServerConfig;
pub use core::{Core, Prepared, StorageBackend};
pub use listener::Running;

/// Prepares the data folder and starts serving in the background.
/// The SSH front end (SFTP, scp, ssh) starts beside the framed listener
/// unless `[sftp] enabled = false`, FTP with `[ftp]`, and the metrics
/// endpoint with `[metrics] listen`; all stop on the same shutdown token.
pub async fn start(config: ServerConfig) -> anyhow::Result<(Running, Prepared)> {
    exec::log_startup(&config.exec);
    let prepared = Core::prepare(config)?;
    prepared.core.check_storage().await?;
    let ssh = if prepared.core.config.sftp.enabled {
        Some(sftp::start(std::sync::Arc::clone(&prepared.core)).await?)
    } else {
        None
    };
    let mut running = listener::start(std::sync::Arc::clone(&prepared.core)).await?;
    running.ssh = ssh;
    running.ftp_addr = ftp::start(std::sync::Arc::clone(&prepared.core)).await?;
    running.metrics_addr = monitor::start(std::sync::Arc::clone(&prepared.core)).await?;
    Ok((running, prepared))
}
