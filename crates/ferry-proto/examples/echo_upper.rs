//! The classic TCP echo server, upper-casing what it receives (issue 6).
//!
//! It serves client after client: an outer connection loop around an inner
//! communication loop. A read that returns 0 means the client closed its
//! side, and ends the inner loop; without that check a server spins forever
//! on a dead connection, reading 0 bytes again and again.
//!
//! ```text
//! cargo run -p ferry-proto --example echo_upper -- --listen 127.0.0.1:7000
//! nc 127.0.0.1 7000
//! ```
//!
//! `--max-clients N` exits after N clients (the tests use it).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The communication loop for one client: read, upper-case, write back,
/// until the client closes (read returns 0). Returns the bytes echoed.
async fn serve_client(mut stream: TcpStream) -> io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(total); // end of stream: the client is gone
        }
        // Byte-wise ASCII upper-casing: safe even when a read splits a
        // multi-byte UTF-8 character (those bytes are left as they are).
        buf[..n].make_ascii_uppercase();
        stream.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

struct Args {
    listen: String,
    max_clients: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { listen: "127.0.0.1:7000".into(), max_clients: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => args.listen = it.next().ok_or("--listen needs ADDR")?,
            "--max-clients" => {
                let n = it.next().ok_or("--max-clients needs N")?;
                args.max_clients = Some(n.parse().map_err(|_| "--max-clients needs a number")?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("echo_upper: {e}\nusage: echo_upper [--listen ADDR] [--max-clients N]");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&args.listen).await?;
    // The tests read this line to learn the port when ADDR ends in :0.
    println!("listening on {}", listener.local_addr()?);
    let mut served = 0;
    // The connection loop: one client at a time, on purpose (the classic
    // iterative server); a concurrent one would spawn serve_client.
    loop {
        let (stream, peer) = listener.accept().await?;
        match serve_client(stream).await {
            Ok(n) => println!("client {peer}: {n} bytes, closed"),
            Err(e) => println!("client {peer}: {e}"),
        }
        served += 1;
        if args.max_clients.is_some_and(|max| served >= max) {
            return Ok(());
        }
    }
}
