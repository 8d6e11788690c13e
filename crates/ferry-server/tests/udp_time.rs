//! Issue 6, time service: real UDP sockets on 127.0.0.1, port 0.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_client::udp::{TimeError, query_time};
use ferry_proto::udp::time::{ErrorCode, Reply, decode_reply, reply_limit};
use ferry_server::udp::time::{TimeConfig, serve};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_millis(500);

async fn start(cfg: TimeConfig) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let h = tokio::spawn(async move { serve(socket, cfg, t).await.unwrap() });
    (addr, token, h)
}

fn generous() -> TimeConfig {
    TimeConfig { utc: true, burst: 1000, rate_per_sec: 1000.0, ..TimeConfig::default() }
}

async fn raw(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(req, addr).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(T, s.recv_from(&mut buf)).await.unwrap().unwrap();
    buf[..n].to_vec()
}

#[tokio::test]
async fn common_specifiers() {
    let (addr, token, h) = start(generous()).await;
    // No %M/%S here, so the answer equals the time formatted just before or
    // just after (unless an hour boundary falls between: then it is `after`).
    let fmt = "%Y|%m|%d|%H|%y|%b|%B|%a|%A|%j|%Z|%z|%e|%p|%I|%%|%D|%F|%T";
    let fmt_no_t = fmt.trim_end_matches("|%T");
    let expect = || jiff::fmt::strtime::format(fmt_no_t, &Timestamp::now().to_zoned_datetime(TimeZone::UTC)).unwrap();
    let before = expect();
    let got = query_time(addr, fmt, T, 3).await.unwrap();
    let after = expect();
    let (head, time) = got.rsplit_once('|').unwrap();
    assert!(head == before || head == after, "{got} vs {before}");
    assert_eq!(time.len(), 8, "%T is HH:MM:SS: {time}");
    assert!(head.contains("|UTC|+0000|"), "{head}");
    let ms = query_time(addr, "%M:%S", T, 3).await.unwrap();
    assert!(ms.len() == 5 && ms.bytes().filter(u8::is_ascii_digit).count() == 4, "{ms}");
    token.cancel();
    tokio::time::timeout(T, h).await.unwrap().unwrap();
}

#[tokio::test]
async fn local_time_and_default_format() {
    let (addr, token, _h) = start(TimeConfig { utc: false, ..generous() }).await;
    let got = query_time(addr, "", T, 3).await.unwrap();
    // %Y-%m-%d %H:%M:%S
    let shape: String = got.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert_eq!(shape, "dddd-dd-dd dd:dd:dd");
    // Bytes on the wire: netcat's trailing newline is ignored, the reply
    // is one `OK` line.
    let reply = raw(addr, b"%Y\n").await;
    assert!(reply.starts_with(b"OK ") && reply.ends_with(b"\n"), "{reply:?}");
    assert_eq!(reply.len(), "OK 2024\n".len());
    token.cancel();
}

#[tokio::test]
async fn invalid_format_gets_an_error_reply() {
    let (addr, token, _h) = start(generous()).await;
    for bad in ["%!", "trailing %", "%Ez"] {
        match query_time(addr, bad, T, 3).await {
            Err(TimeError::Server { code: ErrorCode::BadFormat, .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Not UTF-8.
    let reply = raw(addr, &[0xff, 0xfe]).await;
    assert!(matches!(decode_reply(&reply).unwrap(), Reply::Err { code: ErrorCode::BadUtf8, .. }));
    // The service is still up.
    assert!(query_time(addr, "%Y", T, 3).await.is_ok());
    token.cancel();
}

#[tokio::test]
async fn oversized_request_gets_a_short_error() {
    let (addr, token, _h) = start(generous()).await;
    let req = vec![b'%'; 300];
    let reply = raw(addr, &req).await;
    assert!(reply.len() < 64, "{reply:?}");
    assert!(matches!(decode_reply(&reply).unwrap(), Reply::Err { code: ErrorCode::TooLarge, .. }));
    let too_big = "%Y".repeat(200);
    assert!(matches!(query_time(addr, &too_big, T, 0).await, Err(TimeError::Server { code: ErrorCode::TooLarge, .. })));
    token.cancel();
}

#[tokio::test]
async fn replies_never_amplify() {
    let (addr, token, _h) = start(generous()).await;
    let reqs: Vec<String> =
        vec![String::new(), "%c".into(), "%c%c%c".into(), "%A%B".repeat(20), "%c".repeat(120), "%Y".repeat(128)];
    for req in reqs {
        let reply = raw(addr, req.as_bytes()).await;
        assert!(reply.len() <= reply_limit(req.len()), "{} bytes for a {}-byte request", reply.len(), req.len());
        assert!(reply.len() <= 4 * req.len() + 64);
    }
    token.cancel();
}

#[tokio::test]
async fn rate_limit_drops_the_excess() {
    let (addr, token, _h) =
        start(TimeConfig { utc: true, burst: 3, rate_per_sec: 0.01, ..TimeConfig::default() }).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..10 {
        s.send_to(b"%Y", addr).await.unwrap();
    }
    let mut replies = 0;
    let mut buf = [0u8; 512];
    // Count until the socket has been quiet for 300 ms (at most 10 rounds).
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await {
            Ok(r) => {
                r.unwrap();
                replies += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(replies, 3, "burst of 3 then silence");
    // The client sees a limited request as lost: no reply after its retries.
    assert!(matches!(
        query_time(addr, "%Y", Duration::from_millis(100), 1).await,
        Err(TimeError::NoReply { attempts: 2 })
    ));
    token.cancel();
}
