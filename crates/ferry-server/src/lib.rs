//! ferry's server: the listener and sessions, and the cores they drive.
//!
//! The cores (`auth`, `vfs`, `quota`, `transfer`) take no wire types, so that
//! other front ends (SFTP, FTP) can reuse them. `cmd` is the only layer that
//! sees both wire types and the cores. docs/DESIGN.md maps every file.

pub mod auth;
mod cmd;
pub mod config;
pub mod exec;
pub mod listener;
pub mod quota;
pub mod services;
mod session;
pub mod state;
mod stream;
pub mod tls;
pub mod transfer;
pub mod udp;
pub mod users;
pub mod vfs;

pub use config::ServerConfig;
pub use listener::Running;
pub use state::{Prepared, Shared};

/// Prepares the data folder and starts serving in the background.
pub async fn start(config: ServerConfig) -> anyhow::Result<(Running, Prepared)> {
    exec::log_startup(&config.exec);
    let prepared = Shared::prepare(config)?;
    let running = listener::start(std::sync::Arc::clone(&prepared.shared)).await?;
    Ok((running, prepared))
}
