//! `ferry time`, `time-server`, `chat`, `chat-server`.

use anyhow::{Result, bail};

use crate::args::{ChatArgs, TimeArgs, UdpServerArgs};

pub async fn time(_a: TimeArgs) -> Result<u8> {
    bail!("not yet available")
}

pub async fn time_server(_a: UdpServerArgs) -> Result<u8> {
    bail!("not yet available")
}

pub async fn chat(_a: ChatArgs) -> Result<u8> {
    bail!("not yet available")
}

pub async fn chat_server(_a: UdpServerArgs) -> Result<u8> {
    bail!("not yet available")
}
