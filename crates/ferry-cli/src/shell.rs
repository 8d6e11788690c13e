//! `ferry shell`: the interactive shell.

use anyhow::Result;

use crate::args::RemoteOnly;

pub async fn run(a: RemoteOnly) -> Result<u8> {
    let (_, session) = crate::connect::open(&a.remote, &a.conn).await?;
    session.close().await?;
    Ok(0)
}
