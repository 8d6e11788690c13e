//! The UDP services that `ferry serve` runs beside the TCP listener when
//! the configuration enables them.

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinHandle;

use crate::state::Shared;

pub async fn start_udp(_shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    Ok(Vec::new())
}
