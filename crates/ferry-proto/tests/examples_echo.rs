//! Issue 6: the `echo_upper` example serves three clients one after
//! another, one of which disconnects in the middle of a message.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// The example's binary: `cargo test` builds examples next to `deps/`;
/// when a filtered run did not, build it (bounded by cargo itself).
fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps").join("examples");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "ferry-proto", "--example", name])
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name}");
    }
    bin
}

#[tokio::test]
async fn echo_upper_serves_clients_one_after_another() {
    let mut child = Command::new(example_bin("echo_upper"))
        .args(["--listen", "127.0.0.1:0", "--max-clients", "3"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = timeout(T, out.next_line()).await.unwrap().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").expect(&first).to_owned();

    // 1: a well-behaved client.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"hello, ferry\n").await.unwrap();
    let mut buf = [0u8; 13];
    timeout(T, c.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"HELLO, FERRY\n");
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(T, c.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());

    // 2: sends half a message and vanishes without reading the answer.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"half a mes").await.unwrap();
    drop(c);

    // 3: served normally afterwards: the server did not get stuck on 2.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all("third ünïcode\n".as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = String::new();
    timeout(T, c.read_to_string(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, "THIRD üNïCODE\n");

    // With --max-clients 3 the server exits by itself: had a closed client
    // made its inner loop spin (reading 0 again and again), it never would.
    let status = timeout(T, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let mut log = Vec::new();
    while let Some(line) = out.next_line().await.unwrap() {
        log.push(line);
    }
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[0].ends_with(": 13 bytes, closed"), "{log:?}");
}
