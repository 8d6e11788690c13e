//! Issue 6, chat relay: real UDP sockets on 127.0.0.1, port 0, with a lossy
//! proxy that drops, duplicates and reorders datagrams in both directions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::udp::chat::{ChatClient, ChatError, ChatEvent, ChatOptions, run_line_chat};
use ferry_proto::udp::chat::{ClientDatagram, RefuseCode, RelayDatagram, decode_relay, encode_client};
use ferry_proto::udp::reliable::RetryPolicy;
use ferry_server::udp::chat::{ChatConfig, serve};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(5);

struct Relay {
    addr: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start_relay(cfg: ChatConfig) -> Relay {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move { serve(socket, cfg, t).await.unwrap() });
    Relay { addr, token, handle }
}

fn fast_cfg() -> ChatConfig {
    ChatConfig {
        heartbeat: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(40),
        retry_max: Duration::from_millis(400),
        ..ChatConfig::default()
    }
}

fn fast_opts() -> ChatOptions {
    ChatOptions {
        join_timeout: Duration::from_millis(150),
        join_attempts: 30,
        retry: RetryPolicy { initial: Duration::from_millis(40), max: Duration::from_millis(400), window: 32 },
        ..ChatOptions::default()
    }
}

/// The next message event, skipping notices; panics after `T`.
async fn next_message(c: &mut ChatClient) -> (String, String, bool) {
    loop {
        match timeout(T, c.next_event()).await.expect("an event in time") {
            Some(ChatEvent::Message { from, text, private }) => return (from, text, private),
            Some(ChatEvent::Notice(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn who(c: &mut ChatClient) -> Vec<String> {
    c.who().unwrap();
    loop {
        match timeout(T, c.next_event()).await.expect("an event in time") {
            Some(ChatEvent::Who(nicks)) => return nicks,
            Some(ChatEvent::Notice(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

// ---- the lossy proxy -------------------------------------------------------

/// xorshift64*: deterministic, good enough to pick faults.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..100.
    fn percent(&mut self) -> u64 {
        self.next() % 100
    }
}

#[derive(Default)]
struct Faults {
    dropped: u64,
    duplicated: u64,
    delayed: u64,
    passed: u64,
}

/// Sends `bytes` to `to` through `socket` after a fault decided by `rng`:
/// ~7% dropped, ~7% sent twice, ~7% delayed 5-40 ms (so overtaken).
async fn impaired_send(
    socket: &Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
    rng: &mut XorShift,
    faults: &Mutex<Faults>,
) {
    let roll = rng.percent();
    let delay = Duration::from_millis(5 + rng.next() % 36);
    {
        let mut f = faults.lock().unwrap();
        match roll {
            0..7 => f.dropped += 1,
            7..14 => f.duplicated += 1,
            14..21 => f.delayed += 1,
            _ => f.passed += 1,
        }
    }
    match roll {
        0..7 => {}
        7..14 => {
            let _ = socket.send_to(&bytes, to).await;
            let _ = socket.send_to(&bytes, to).await;
        }
        14..21 => {
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&bytes, to).await;
            });
        }
        _ => {
            let _ = socket.send_to(&bytes, to).await;
        }
    }
}

/// A UDP proxy in front of `relay`: each client address gets its own
/// upstream socket, so the relay still sees distinct clients.
async fn start_proxy(relay: SocketAddr, seed: u64) -> (SocketAddr, Arc<Mutex<Faults>>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let f = faults.clone();
    tokio::spawn(async move {
        let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut rng = XorShift(seed);
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                continue;
            };
            let up = match ups.get(&client) {
                Some(up) => up.clone(),
                None => {
                    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    ups.insert(client, up.clone());
                    // Relay -> client direction, with its own fault sequence.
                    let (up2, front2, f2) = (up.clone(), front.clone(), f.clone());
                    let mut rng2 = XorShift(seed ^ (0x9E37_79B9 * (ups.len() as u64 + 1)));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 2048];
                        while let Ok((n, _)) = up2.recv_from(&mut buf).await {
                            impaired_send(&front2, client, buf[..n].to_vec(), &mut rng2, &f2).await;
                        }
                    });
                    up
                }
            };
            impaired_send(&up, relay, buf[..n].to_vec(), &mut rng, &f).await;
        }
    });
    (addr, faults)
}

// ---- tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_network_exactly_once_in_order() {
    let relay = start_relay(fast_cfg()).await;
    let (proxy, faults) = start_proxy(relay.addr, 0x5EED_1234_ABCD_0001).await;
    let nicks = ["ann", "ben", "cat"];
    let mut clients = Vec::new();
    for n in nicks {
        clients.push(ChatClient::join_with(proxy, n, fast_opts()).await.unwrap());
    }
    const N: usize = 50;
    for i in 0..N {
        for c in clients.iter_mut() {
            let text = format!("{} {i}", c.nick());
            c.say(&text).unwrap();
        }
    }
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
            let expected = N * 2;
            let mut got = 0;
            while got < expected {
                let (from, text, private) = next_message(&mut c).await;
                assert!(!private);
                let (who, i) = text.split_once(' ').unwrap();
                assert_eq!(who, from, "sender name matches the text");
                seen.entry(from).or_default().push(i.parse().unwrap());
                got += 1;
            }
            c.flush(Duration::from_secs(10)).await.unwrap();
            // Nothing more (no late duplicates) for a while.
            let quiet = async {
                loop {
                    match c.next_event().await {
                        Some(ChatEvent::Message { from, text, .. }) => {
                            panic!("extra message {from}: {text}")
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            };
            let _ = timeout(Duration::from_millis(500), quiet).await;
            (c, seen)
        }));
    }
    for t in tasks {
        let (c, seen) = timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
        for n in nicks.iter().filter(|n| **n != c.nick()) {
            assert_eq!(seen[*n], (0..N).collect::<Vec<_>>(), "{} saw {n}'s messages exactly once, in order", c.nick());
        }
        c.quit().await.unwrap();
    }
    let f = faults.lock().unwrap();
    assert!(
        f.dropped > 10 && f.duplicated > 10 && f.delayed > 10,
        "the proxy did its job: dropped {} duplicated {} delayed {} passed {}",
        f.dropped,
        f.duplicated,
        f.delayed,
        f.passed
    );
    drop(f);
    relay.token.cancel();
}

async fn raw_join(relay: SocketAddr, nick: &str) -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(relay).await.unwrap();
    s.send(&encode_client(&ClientDatagram::Join { nick: nick.into() })).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = timeout(T, s.recv(&mut buf)).await.unwrap().unwrap();
    match decode_relay(&buf[..n]).unwrap() {
        RelayDatagram::Welcome { key, .. } => {
            assert_eq!(key.len(), 32, "128-bit key in hex");
            (s, key)
        }
        other => panic!("{other:?}"),
    }
}

/// Next datagram on `s` that is not a `Notice`/`Deliver` (acks them).
async fn raw_next(s: &UdpSocket) -> RelayDatagram {
    let mut buf = [0u8; 2048];
    let n = timeout(T, s.recv(&mut buf)).await.unwrap().unwrap();
    decode_relay(&buf[..n]).unwrap()
}

#[tokio::test]
async fn vanished_client_leaves_who_within_the_heartbeat_window() {
    let relay = start_relay(ChatConfig {
        heartbeat: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        ..fast_cfg()
    })
    .await;
    let mut ann = ChatClient::join_with(relay.addr, "ann", fast_opts()).await.unwrap();
    let (ghost, _key) = raw_join(relay.addr, "ghost").await;
    assert_eq!(who(&mut ann).await, ["ann", "ghost"]);
    drop(ghost); // vanishes: no Quit, no more heartbeats
    let start = tokio::time::Instant::now();
    loop {
        if who(&mut ann).await == ["ann"] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "ghost still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(700), "not before the timeout: {took:?}");
    // ann, who heartbeats, is still there well past the timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(who(&mut ann).await, ["ann"]);
    relay.token.cancel();
}

#[tokio::test]
async fn spoofed_posts_are_refused() {
    let relay = start_relay(fast_cfg()).await;
    let mut bob = ChatClient::join_with(relay.addr, "bob", fast_opts()).await.unwrap();
    let (alice, key) = raw_join(relay.addr, "alice").await;
    let msg = |key: &str, seq, text: &str| {
        encode_client(&ClientDatagram::Msg { key: key.into(), seq, text: text.into(), to: None })
    };
    // Right address, wrong key.
    alice.send(&msg(&"0".repeat(32), 1, "forged 1")).await.unwrap();
    assert!(matches!(raw_next(&alice).await, RelayDatagram::Refused { code: RefuseCode::BadKey, .. }));
    // Right key, another address.
    let mallory = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    mallory.connect(relay.addr).await.unwrap();
    mallory.send(&msg(&key, 1, "forged 2")).await.unwrap();
    assert!(matches!(raw_next(&mallory).await, RelayDatagram::Refused { code: RefuseCode::BadKey, .. }));
    // A Join from mallory's address cannot take the nickname either.
    mallory.send(&encode_client(&ClientDatagram::Join { nick: "alice".into() })).await.unwrap();
    assert!(matches!(raw_next(&mallory).await, RelayDatagram::Refused { code: RefuseCode::NickTaken, .. }));
    // The real alice, seq 1: bob's first message from her is this one.
    alice.send(&msg(&key, 1, "genuine")).await.unwrap();
    assert_eq!(raw_next(&alice).await, RelayDatagram::Ack { seq: 1 });
    assert_eq!(next_message(&mut bob).await, ("alice".into(), "genuine".into(), false));
    relay.token.cancel();
}

#[tokio::test]
async fn taken_nickname_is_refused() {
    let relay = start_relay(fast_cfg()).await;
    let _ann = ChatClient::join_with(relay.addr, "ann", fast_opts()).await.unwrap();
    match ChatClient::join_with(relay.addr, "ann", fast_opts()).await {
        Err(ChatError::Refused { code: RefuseCode::NickTaken, .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("joined twice as ann"),
    }
    assert!(matches!(ChatClient::join_with(relay.addr, "bad nick", fast_opts()).await, Err(ChatError::BadNick(_))));
    relay.token.cancel();
}

#[tokio::test]
async fn too_long_message_is_an_error_before_sending() {
    let relay = start_relay(fast_cfg()).await;
    let mut ann = ChatClient::join_with(relay.addr, "ann", fast_opts()).await.unwrap();
    let mut ben = ChatClient::join_with(relay.addr, "ben", fast_opts()).await.unwrap();
    let long = "x".repeat(1300);
    assert!(matches!(ann.say(&long), Err(ChatError::TooLong(_))));
    assert!(matches!(ann.tell("ben", &long), Err(ChatError::TooLong(_))));
    // Just under the limit is fine, and arrives whole.
    let mut fits = "y".repeat(1200);
    while ann.say(&fits).is_err() {
        fits.pop();
    }
    assert!(fits.len() > 1000, "{}", fits.len());
    let (_, text, _) = next_message(&mut ben).await;
    assert_eq!(text, fits, "first message ben sees is the one that fit");
    relay.token.cancel();
}

#[tokio::test]
async fn private_message_reaches_only_its_recipient() {
    let relay = start_relay(fast_cfg()).await;
    let mut ann = ChatClient::join_with(relay.addr, "ann", fast_opts()).await.unwrap();
    let mut ben = ChatClient::join_with(relay.addr, "ben", fast_opts()).await.unwrap();
    let mut cat = ChatClient::join_with(relay.addr, "cat", fast_opts()).await.unwrap();
    ann.tell("ben", "psst").unwrap();
    ann.say("hello all").unwrap();
    ann.tell("nobody", "?").unwrap();
    assert_eq!(next_message(&mut ben).await, ("ann".into(), "psst".into(), true));
    assert_eq!(next_message(&mut ben).await, ("ann".into(), "hello all".into(), false));
    // Per-sender order: cat's first message from ann is the public one.
    assert_eq!(next_message(&mut cat).await, ("ann".into(), "hello all".into(), false));
    // ann hears about the unknown recipient.
    let notice = loop {
        match timeout(T, ann.next_event()).await.unwrap() {
            Some(ChatEvent::Notice(n)) if n.contains("nobody") => break n,
            Some(_) => {}
            None => panic!("closed"),
        }
    };
    assert!(notice.contains("no such user"), "{notice}");
    relay.token.cancel();
}

#[tokio::test]
async fn line_interface() {
    let relay = start_relay(fast_cfg()).await;
    let mut ben = ChatClient::join_with(relay.addr, "ben", fast_opts()).await.unwrap();
    let (mut stdin_w, stdin_r) = tokio::io::duplex(4096);
    let (stdout_w, mut stdout_r) = tokio::io::duplex(65536);
    let addr = relay.addr;
    let ui =
        tokio::spawn(async move { run_line_chat(addr, "ann", tokio::io::BufReader::new(stdin_r), stdout_w).await });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Wait until ann has joined (ben is told), then talk.
    loop {
        match timeout(T, ben.next_event()).await.unwrap() {
            Some(ChatEvent::Notice(n)) if n == "ann joined" => break,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    stdin_w.write_all(b"/who\nhello ben\n/bogus\n").await.unwrap();
    assert_eq!(next_message(&mut ben).await, ("ann".into(), "hello ben".into(), false));
    ben.tell("ann", "hi ann").unwrap();
    ben.flush(T).await.unwrap();
    // Give the line UI a moment to print, then quit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stdin_w.write_all(b"/quit\n").await.unwrap();
    timeout(T, ui).await.unwrap().unwrap().unwrap();
    let mut out = String::new();
    stdout_r.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("* online: ann, ben"), "{out}");
    assert!(out.contains("*ben* hi ann"), "{out}");
    assert!(out.contains("! unknown command"), "{out}");
    assert!(out.ends_with("* bye\n"), "{out}");
    relay.token.cancel();
}

#[tokio::test]
async fn shutdown_says_bye() {
    let relay = start_relay(fast_cfg()).await;
    let mut ann = ChatClient::join_with(relay.addr, "ann", fast_opts()).await.unwrap();
    relay.token.cancel();
    timeout(T, relay.handle).await.unwrap().unwrap();
    loop {
        match timeout(T, ann.next_event()).await.unwrap() {
            Some(ChatEvent::Disconnected(why)) => {
                assert!(why.contains("closed"), "{why}");
                break;
            }
            Some(_) => {}
            None => panic!("no Disconnected event"),
        }
    }
}
