//! Malformed frames against the real server, byte by byte on a raw socket:
//! each gets its documented error; where the stream can no longer be trusted
//! the connection is closed; the server keeps serving others.

use std::time::Duration;

use ferry_testkit::TestServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn frame(header: &Value, body: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out
}

fn raw(header_bytes: &[u8]) -> Vec<u8> {
    let mut out = (header_bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(header_bytes);
    out
}

/// Reads one frame's header (bodies are skipped), or `None` at EOF.
async fn read_header(s: &mut TcpStream) -> Option<Value> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await.expect("answer in time").ok()?;
    let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut h).await.ok()?;
    let v: Value = serde_json::from_slice(&h).unwrap();
    if let Some(n) = v.get("body_len").and_then(Value::as_u64) {
        let mut body = vec![0u8; n as usize];
        s.read_exact(&mut body).await.ok()?;
    }
    Some(v)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn connect(server: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&frame(&json!({"id": 1, "op": "hello", "version": 1}), b"")).await.unwrap();
    let hello = read_header(&mut s).await.unwrap();
    assert_eq!(hello["ok"], true, "{hello}");
    s
}

async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "connection must be closed");
}

#[tokio::test]
async fn fatal_frames_get_bad_frame_and_close() {
    let server = TestServer::start_plaintext().await.unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized header length (4 GiB)", vec![0xff, 0xff, 0xff, 0xff]),
        ("header over the 64 KiB cap", ((70 * 1024u32).to_be_bytes()).to_vec()),
        ("invalid UTF-8", raw(b"\xff\xfe\xfd")),
        ("not JSON", raw(b"{not json")),
        ("JSON that is not an object", raw(b"[1,2,3]")),
        ("body_len not a number", raw(br#"{"id":2,"op":"pwd","body_len":"x"}"#)),
    ];
    for (what, bytes) in cases {
        let mut s = connect(&server).await;
        s.write_all(&bytes).await.unwrap();
        let answer = read_header(&mut s).await.unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(code(&answer), "bad_frame", "{what}: {answer}");
        assert_eq!(answer["id"], 0, "{what}");
        expect_closed(&mut s).await;
    }
}

#[tokio::test]
async fn request_errors_keep_the_connection() {
    let server = TestServer::start_plaintext().await.unwrap();
    let mut s = connect(&server).await;
    let cases = [
        (json!({"id": 2, "op": "format_disk"}), "unknown_op"),
        (json!({"id": 3, "op": "cd"}), "bad_request"),
        (json!({"op": "pwd"}), "bad_request"),
        (json!({"id": 5, "op": "ls"}), "auth_required"),
        (json!({"id": 6, "op": "auth_start", "mechanism": "PLAIN", "data": "x"}), "bad_request"),
    ];
    for (req, expected) in cases {
        s.write_all(&frame(&req, b"")).await.unwrap();
        let answer = read_header(&mut s).await.expect("answer");
        assert_eq!(code(&answer), expected, "{req} -> {answer}");
        if let Some(id) = req.get("id") {
            assert_eq!(&answer["id"], id);
        }
    }
    // A body on an operation that takes none is skipped, and the stream stays framed.
    s.write_all(&frame(&json!({"id": 7, "op": "pwd", "body_len": 5}), b"hello")).await.unwrap();
    let answer = read_header(&mut s).await.unwrap();
    assert_eq!(code(&answer), "auth_required", "{answer}");
    s.write_all(&frame(&json!({"id": 8, "op": "bye"}), b"")).await.unwrap();
    let bye = read_header(&mut s).await.unwrap();
    assert_eq!(bye["ok"], true);
}

#[tokio::test]
async fn unsupported_version_is_refused() {
    let server = TestServer::start_plaintext().await.unwrap();
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&frame(&json!({"id": 1, "op": "hello", "version": 99}), b"")).await.unwrap();
    let answer = read_header(&mut s).await.unwrap();
    assert_eq!(code(&answer), "unsupported_version");
    expect_closed(&mut s).await;
}

#[tokio::test]
async fn truncated_frame_then_server_still_serves_others() {
    let server = TestServer::start_plaintext().await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut s = connect(&server).await;
    // Announce a 100-byte header, send 10 bytes, hang up.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"{\"id\":2,\"o");
    s.write_all(&bytes).await.unwrap();
    drop(s);
    let session = server.login("alice", "pw").await.expect("others are still served");
    session.close().await.unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_cleanly() {
    let server = TestServer::start_with(|c| {
        c.insecure_plaintext = true;
        c.limits.max_connections = 2;
    })
    .await
    .unwrap();
    let _a = connect(&server).await;
    let _b = connect(&server).await;
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    let answer = read_header(&mut c).await.expect("a refusal, not silence");
    assert_eq!(code(&answer), "too_many_connections", "{answer}");
    expect_closed(&mut c).await;
}

#[tokio::test]
async fn unauthenticated_per_address_limit() {
    let server = TestServer::start_with(|c| {
        c.insecure_plaintext = true;
        c.limits.max_unauthenticated_per_ip = 3;
    })
    .await
    .unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&server).await);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(code(&read_header(&mut extra).await.unwrap()), "too_many_connections");
    // From another address the user still gets in.
    let mut opts = server.connect_options();
    opts.bind = Some("127.0.0.2".parse().unwrap());
    let session =
        ferry_client::Client::connect(&server.remote("alice"), &opts).await.unwrap().login("pw").await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn unix_socket_listener_speaks_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ferry.sock");
    let sock2 = sock.clone();
    let _server = TestServer::start_with(move |c| c.unix_socket = Some(sock2)).await.unwrap();
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(&frame(&json!({"id": 1, "op": "hello", "version": 1}), b"")).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut h).await.unwrap();
    let hello: Value = serde_json::from_slice(&h).unwrap();
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["version"], 1);
}

#[tokio::test]
async fn idle_session_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.insecure_plaintext = true;
        c.limits.idle_timeout_secs = 1;
    })
    .await
    .unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut session = server.login("alice", "pw").await.unwrap();
    assert_eq!(session.pwd().await.unwrap(), "/");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = session.pwd().await.expect_err("the idle session was closed");
    assert!(err.to_string().contains("idle") || err.to_string().contains("closed"), "{err}");
}

/// Issue 13: login messages out of order are `bad_request` (not
/// `auth_required`), before and after hello; and a request with id 0, which
/// PROTOCOL.md reserves for the session, is an error, not answered `ok`.
#[tokio::test]
async fn auth_out_of_order_and_id_zero_are_bad_requests() {
    let server = TestServer::start_plaintext().await.unwrap();
    server.add_user("alice", "pw", None, false).unwrap();
    let mut s = connect(&server).await;
    let cases = [
        json!({"id": 2, "op": "auth_finish", "data": "c=biws,r=x,p=eA=="}),
        json!({"id": 3, "op": "auth_finish", "data": ""}),
        json!({"id": 0, "op": "pwd"}),
        json!({"id": 0, "op": "hello", "version": 1}),
    ];
    for req in cases {
        s.write_all(&frame(&req, b"")).await.unwrap();
        let answer = read_header(&mut s).await.expect("answer");
        assert_eq!(code(&answer), "bad_request", "{req} -> {answer}");
        assert_eq!(answer["id"], req["id"]);
    }
    // Before hello, too.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&frame(&json!({"id": 1, "op": "auth_finish", "data": "x"}), b"")).await.unwrap();
    assert_eq!(code(&read_header(&mut raw).await.unwrap()), "bad_request");
    // After login, id 0 is refused just the same.
    let mut session = server.login_raw("alice", "pw").await.unwrap();
    session.send(&ferry_proto::Request::Pwd.to_header(0, 0)).await.unwrap();
    let answer = session.read_header().await.unwrap().unwrap();
    assert_eq!(answer.fields["ok"], false, "{answer:?}");
    assert_eq!(answer.fields["error"]["code"], "bad_request", "{answer:?}");
}
