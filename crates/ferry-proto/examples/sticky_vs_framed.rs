//! Why ferry frames its messages (issue 6).
//!
//! TCP is a byte stream: three `write`s of "one", "two", "three" may reach
//! the reader as "onetwothree", or "onet" + "wothree": the boundaries are
//! not kept. A length prefix puts them back: each message travels as a
//! 4-byte big-endian length followed by that many bytes.
//!
//! Here the prefix is tokio-util's `LengthDelimitedCodec`, the same
//! principle as ferry's own frame (`ferry_proto::frame`), which in addition
//! carries a JSON header before the body.
//!
//! ```text
//! cargo run -p ferry-proto --example sticky_vs_framed
//! ```

use std::io;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const MESSAGES: [&str; 3] = ["one", "two", "three"];

async fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, _) = listener.accept().await?;
    Ok((client, server))
}

/// Writes the messages one `write_all` each on a raw stream, and returns
/// what the reader gets: one blob, the boundaries gone.
async fn raw() -> io::Result<String> {
    let (mut writer, mut reader) = pair().await?;
    for m in MESSAGES {
        writer.write_all(m.as_bytes()).await?;
    }
    writer.shutdown().await?;
    let mut all = String::new();
    reader.read_to_string(&mut all).await?;
    Ok(all)
}

/// The same messages through a length-delimited frame: they come out apart.
async fn framed() -> io::Result<Vec<String>> {
    let (writer, reader) = pair().await?;
    let mut tx = Framed::new(writer, LengthDelimitedCodec::new());
    for m in MESSAGES {
        // On the wire: 00 00 00 03 'o' 'n' 'e', 00 00 00 03 't' 'w' 'o', ...
        tx.send(Bytes::from_static(m.as_bytes())).await?;
    }
    drop(tx);
    let mut rx = Framed::new(reader, LengthDelimitedCodec::new());
    let mut out = Vec::new();
    while let Some(frame) = rx.next().await {
        out.push(String::from_utf8_lossy(&frame?).into_owned());
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    println!("sent:   {MESSAGES:?}");
    println!("raw:    {:?}", raw().await?);
    println!("framed: {:?}", framed().await?);
    Ok(())
}
