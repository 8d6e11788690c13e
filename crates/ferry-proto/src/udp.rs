//! Datagram formats of the UDP time service and the chat relay (issue 6).
//!
//! Everything here is pure: bytes in, values out. No socket, no clock: the
//! reliability bookkeeping in [`reliable`] takes `now` as an argument, like
//! quinn-proto. `docs/PROTOCOL.md` ("UDP services") describes both formats for people writing other
//! clients.

/// The time service: request = raw UTF-8 format bytes, reply = `OK ...` or
/// `ERR code message`, both easy to type and read with netcat.
pub mod time {
    use std::fmt;

    /// The format used for an empty request.
    pub const DEFAULT_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

    /// Suggested port when `HOST` comes without `:PORT`.
    pub const DEFAULT_PORT: u16 = 7734;

    /// No reply is ever longer than this, whatever the request.
    pub const ABSOLUTE_MAX_REPLY: usize = 512;

    /// The longest reply allowed for a request of `request_len` bytes:
    /// `min(4 * request_len + 64, ABSOLUTE_MAX_REPLY)`.
    ///
    /// This is the anti-amplification rule: a spoofed source can make the
    /// server send at most a small constant factor of what it sent itself
    /// (and the per-address rate limit bounds the total).
    pub fn reply_limit(request_len: usize) -> usize {
        request_len.saturating_mul(4).saturating_add(64).min(ABSOLUTE_MAX_REPLY)
    }

    /// Error codes of `ERR` replies. The text form is what goes on the wire.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ErrorCode {
        /// The request is longer than the server's limit.
        TooLarge,
        /// The request is not UTF-8.
        BadUtf8,
        /// The format string has an unknown or malformed specifier.
        BadFormat,
        /// The formatted time would be longer than the reply limit.
        ReplyTooLong,
        /// The server failed for its own reasons.
        Internal,
    }

    impl ErrorCode {
        pub fn as_str(self) -> &'static str {
            match self {
                ErrorCode::TooLarge => "too-large",
                ErrorCode::BadUtf8 => "bad-utf8",
                ErrorCode::BadFormat => "bad-format",
                ErrorCode::ReplyTooLong => "reply-too-long",
                ErrorCode::Internal => "internal",
            }
        }

        pub fn parse(s: &str) -> Option<ErrorCode> {
            Some(match s {
                "too-large" => ErrorCode::TooLarge,
                "bad-utf8" => ErrorCode::BadUtf8,
                "bad-format" => ErrorCode::BadFormat,
                "reply-too-long" => ErrorCode::ReplyTooLong,
                "internal" => ErrorCode::Internal,
                _ => return None,
            })
        }
    }

    impl fmt::Display for ErrorCode {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// Turns a request datagram into the format string to apply.
    ///
    /// One trailing `\n` or `\r\n` is removed (what `echo FORMAT | nc -u`
    /// sends), then an empty request means [`DEFAULT_FORMAT`].
    /// `max_request` applies to the raw datagram.
    pub fn parse_request(bytes: &[u8], max_request: usize) -> Result<&str, ErrorCode> {
        if bytes.len() > max_request {
            return Err(ErrorCode::TooLarge);
        }
        let bytes = bytes.strip_suffix(b"\r\n").or_else(|| bytes.strip_suffix(b"\n")).unwrap_or(bytes);
        let format = std::str::from_utf8(bytes).map_err(|_| ErrorCode::BadUtf8)?;
        Ok(if format.is_empty() { DEFAULT_FORMAT } else { format })
    }

    /// A reply of the time service.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Reply {
        /// `OK <time>\n`
        Ok(String),
        /// `ERR <code> <message>\n`
        Err { code: ErrorCode, message: String },
    }

    /// Encodes `reply` in at most `limit` bytes.
    ///
    /// An `OK` reply that does not fit becomes `ERR reply-too-long`; an error
    /// message that does not fit is cut at a character boundary (it is only
    /// advice for a human). The length bound is enforced here, in one place.
    pub fn encode_reply(reply: &Reply, limit: usize) -> Vec<u8> {
        let out = match reply {
            Reply::Ok(text) => format!("OK {text}\n"),
            Reply::Err { code, message } => format!("ERR {code} {message}\n"),
        };
        if out.len() <= limit {
            return out.into_bytes();
        }
        let (code, message) = match reply {
            Reply::Ok(_) => (ErrorCode::ReplyTooLong, "result exceeds the reply limit"),
            Reply::Err { code, message } => (*code, message.as_str()),
        };
        let mut out = format!("ERR {code} ");
        for ch in message.chars() {
            if out.len() + ch.len_utf8() + 1 > limit {
                break;
            }
            out.push(ch);
        }
        out.push('\n');
        let mut bytes = out.into_bytes();
        // Only reachable when `limit` is below the shortest error line.
        bytes.truncate(limit);
        bytes
    }

    /// A datagram that is not a time reply.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("malformed time reply: {0}")]
    pub struct MalformedReply(pub &'static str);

    /// Decodes a reply datagram. One trailing `\n` is removed.
    pub fn decode_reply(bytes: &[u8]) -> Result<Reply, MalformedReply> {
        let text = std::str::from_utf8(bytes).map_err(|_| MalformedReply("not UTF-8"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        if let Some(time) = text.strip_prefix("OK ") {
            return Ok(Reply::Ok(time.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("ERR ") {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = ErrorCode::parse(code).ok_or(MalformedReply("unknown error code"))?;
            return Ok(Reply::Err { code, message: message.to_owned() });
        }
        Err(MalformedReply("neither OK nor ERR"))
    }
}

/// Sequence numbers, acknowledgements and retransmission with backoff, for
/// one direction of one chat stream. Pure state: the caller passes `now`.
pub mod reliable {
    use std::collections::{BTreeMap, VecDeque};
    use std::time::{Duration, Instant};

    /// How a sender retransmits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RetryPolicy {
        /// Delay before the first retransmission.
        pub initial: Duration,
        /// Backoff doubles up to this.
        pub max: Duration,
        /// At most this many unacknowledged items are on the wire; the rest wait.
        pub window: usize,
    }

    impl Default for RetryPolicy {
        fn default() -> Self {
            RetryPolicy { initial: Duration::from_millis(200), max: Duration::from_secs(2), window: 32 }
        }
    }

    #[derive(Debug)]
    struct Pending<T> {
        item: T,
        due: Instant,
        backoff: Duration,
        /// Times put on the wire so far.
        sends: u32,
    }

    /// The sending side: numbers items from 1, keeps them until acknowledged.
    #[derive(Debug)]
    pub struct Outbox<T> {
        next_seq: u64,
        in_flight: BTreeMap<u64, Pending<T>>,
        queued: VecDeque<(u64, T)>,
        policy: RetryPolicy,
    }

    impl<T: Clone> Outbox<T> {
        pub fn new(policy: RetryPolicy) -> Self {
            Outbox { next_seq: 1, in_flight: BTreeMap::new(), queued: VecDeque::new(), policy }
        }

        /// Queues an item built from its sequence number; returns that number.
        pub fn push_with(&mut self, build: impl FnOnce(u64) -> T) -> u64 {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queued.push_back((seq, build(seq)));
            seq
        }

        /// Items not yet acknowledged (on the wire or waiting for the window).
        pub fn len(&self) -> usize {
            self.in_flight.len() + self.queued.len()
        }

        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Forgets an acknowledged item. Returns false for an unknown or
        /// already acknowledged number (a duplicate ack).
        pub fn ack(&mut self, seq: u64) -> bool {
            self.in_flight.remove(&seq).is_some()
        }

        /// The items to put on the wire now: newly admitted ones and those
        /// whose retransmission timer expired (their backoff doubles).
        pub fn poll_transmit(&mut self, now: Instant) -> Vec<(u64, T)> {
            let mut out = Vec::new();
            for (&seq, p) in self.in_flight.iter_mut() {
                if p.due <= now {
                    p.sends = p.sends.saturating_add(1);
                    p.backoff = (p.backoff * 2).min(self.policy.max);
                    p.due = now + p.backoff;
                    out.push((seq, p.item.clone()));
                }
            }
            while self.in_flight.len() < self.policy.window.max(1) {
                let Some((seq, item)) = self.queued.pop_front() else {
                    break;
                };
                out.push((seq, item.clone()));
                self.in_flight.insert(
                    seq,
                    Pending { item, due: now + self.policy.initial, backoff: self.policy.initial, sends: 1 },
                );
            }
            out
        }

        /// Whether an item has been sent `max_sends` times, unacknowledged,
        /// and is due again: the peer is not listening. The caller gives up
        /// instead of calling [`Outbox::poll_transmit`], so no item is ever
        /// sent more than `max_sends` times (issue 12).
        pub fn exhausted(&self, now: Instant, max_sends: u32) -> bool {
            self.in_flight.values().any(|p| p.sends >= max_sends && p.due <= now)
        }

        /// When [`Outbox::poll_transmit`] next has something to send, if ever.
        pub fn next_due(&self) -> Option<Instant> {
            self.in_flight.values().map(|p| p.due).min()
        }
    }

    /// What [`Inbox::offer`] made of an item.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Offer {
        /// First time seen: acknowledge it.
        New,
        /// Seen before: acknowledge again (the first ack may have been lost).
        Duplicate,
        /// Too far ahead to buffer: drop without ack; the sender will retry.
        OutOfWindow,
    }

    /// The receiving side: drops duplicates and releases items in order.
    #[derive(Debug)]
    pub struct Inbox<T> {
        expected: u64,
        buffered: BTreeMap<u64, T>,
        window: u64,
    }

    impl<T> Inbox<T> {
        /// `window` bounds how far ahead of the next expected number items are
        /// buffered, so a peer cannot make the receiver store without bound.
        pub fn new(window: usize) -> Self {
            Inbox { expected: 1, buffered: BTreeMap::new(), window: window.max(1) as u64 }
        }

        pub fn offer(&mut self, seq: u64, item: T) -> Offer {
            if seq < self.expected || self.buffered.contains_key(&seq) {
                return Offer::Duplicate;
            }
            if seq - self.expected >= self.window {
                return Offer::OutOfWindow;
            }
            self.buffered.insert(seq, item);
            Offer::New
        }

        /// Whether [`Inbox::pop_ready`] would return an item.
        pub fn has_ready(&self) -> bool {
            self.buffered.contains_key(&self.expected)
        }

        /// The next item in sequence order, once it has arrived.
        pub fn pop_ready(&mut self) -> Option<T> {
            let item = self.buffered.remove(&self.expected)?;
            self.expected += 1;
            Some(item)
        }
    }
}

/// The chat relay: JSON objects tagged by `"t"`, one per datagram.
pub mod chat {
    use serde::{Deserialize, Serialize};

    /// Largest datagram either side sends or accepts (fits in one IPv6
    /// packet on any path with the minimum MTU of 1280).
    pub const MAX_DATAGRAM: usize = 1200;

    /// Longest nickname, in bytes.
    pub const MAX_NICK: usize = 32;

    /// Suggested port when `HOST` comes without `:PORT`.
    pub const DEFAULT_PORT: u16 = 7735;

    /// Every `join` a client sends is padded to at least this many bytes
    /// ([`encode_join`]). The relay answers a datagram from an address that
    /// has not proven it receives there with at most one datagram no longer
    /// than the request (issue 12), so an unpadded join gets no answer at all;
    /// 256 bytes leave room for `retry` and any `refused`.
    pub const JOIN_MIN_LEN: usize = 256;

    /// A `retry` cookie is this many hex digits (128 bits).
    pub const COOKIE_HEX_LEN: usize = 32;

    /// Client to relay.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "t", rename_all = "snake_case")]
    pub enum ClientDatagram {
        /// Ask to join. The first one carries no cookie and is answered with
        /// `Retry`; the client sends it again with that cookie, which proves
        /// it receives at its address (issue 12). Repeated until `Welcome` or
        /// `Refused`; a repeat from a joined address gets the same `Welcome`.
        /// Build it with [`encode_join`], which pads it to [`JOIN_MIN_LEN`].
        Join {
            nick: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            cookie: Option<String>,
            /// Filler, ignored by the relay.
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pad: String,
        },
        /// A line for everyone, or for `to` only. `seq` counts from 1 per client.
        Msg {
            key: String,
            seq: u64,
            text: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            to: Option<String>,
        },
        /// Ask for the list of nicknames; shares `Msg`'s sequence numbers.
        Who { key: String, seq: u64 },
        /// Acknowledges the relay's item `seq` (`Deliver`, `WhoList`, `Notice`).
        Ack { key: String, seq: u64 },
        /// Heartbeat; the relay answers `Pong`.
        Ping { key: String },
        /// Leave; the relay answers `Bye`.
        Quit { key: String },
    }

    /// Why the relay refused a datagram.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum RefuseCode {
        NickTaken,
        BadNick,
        Full,
        /// Unknown key, or a known key from another address.
        BadKey,
        TooLong,
        Malformed,
    }

    /// Relay to client.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "t", rename_all = "snake_case")]
    pub enum RelayDatagram {
        /// Answer to a `Join` without a valid cookie: send the `Join` again
        /// with this `cookie`. Stateless on the relay's side (like DTLS
        /// `HelloVerifyRequest` and QUIC `Retry`): the cookie is a MAC of
        /// the client's address and a coarse time, valid for about a minute.
        Retry {
            cookie: String,
        },
        /// Joined: `key` (32 hex digits) goes into every later datagram.
        Welcome {
            key: String,
            nick: String,
            heartbeat_ms: u64,
            timeout_ms: u64,
        },
        Refused {
            code: RefuseCode,
            reason: String,
        },
        /// Acknowledges the client's `Msg` or `Who` number `seq`.
        Ack {
            seq: u64,
        },
        /// A message from `from`. `seq` numbers the relay's items to this client.
        Deliver {
            seq: u64,
            from: String,
            text: String,
            private: bool,
        },
        /// Answer to `Who`, on the same numbered stream as `Deliver`.
        WhoList {
            seq: u64,
            nicks: Vec<String>,
        },
        /// A line from the relay itself (joins, leaves, unknown recipient).
        Notice {
            seq: u64,
            text: String,
        },
        Pong,
        Bye,
    }

    impl RelayDatagram {
        /// The relay-stream number of an item the client must acknowledge.
        pub fn stream_seq(&self) -> Option<u64> {
            match self {
                RelayDatagram::Deliver { seq, .. }
                | RelayDatagram::WhoList { seq, .. }
                | RelayDatagram::Notice { seq, .. } => Some(*seq),
                _ => None,
            }
        }
    }

    /// A datagram that cannot be decoded.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum DecodeError {
        #[error("datagram of {0} bytes exceeds {MAX_DATAGRAM}")]
        TooLong(usize),
        #[error("malformed datagram: {0}")]
        Json(#[from] serde_json::Error),
    }

    pub fn encode_client(d: &ClientDatagram) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(d).expect("ClientDatagram serializes")
    }

    pub fn encode_relay(d: &RelayDatagram) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(d).expect("RelayDatagram serializes")
    }

    /// A `join` for `nick`, echoing `cookie` if the relay sent one, padded to
    /// at least [`JOIN_MIN_LEN`] bytes so that the relay may answer it.
    pub fn encode_join(nick: &str, cookie: Option<&str>) -> Vec<u8> {
        let join = |pad: String| ClientDatagram::Join { nick: nick.to_owned(), cookie: cookie.map(str::to_owned), pad };
        let bare = encode_client(&join(String::new()));
        if bare.len() >= JOIN_MIN_LEN {
            return bare;
        }
        // `,"pad":""` adds 9 bytes around the filler.
        encode_client(&join(".".repeat(JOIN_MIN_LEN.saturating_sub(bare.len() + 9).max(1))))
    }

    /// The relay's cookie for `addr` in time bucket `bucket`: the first 128
    /// bits of HMAC-SHA256 under the relay's `secret`, in hex. Pure, so the
    /// relay keeps no state per unproven address.
    pub fn join_cookie(secret: &[u8], bucket: u64, addr: std::net::SocketAddr) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        // HMAC takes keys of any length; the error case cannot happen.
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
            .expect("invariant: HMAC accepts keys of any length");
        mac.update(b"ferry chat join cookie v1\0");
        mac.update(&bucket.to_be_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&addr.port().to_be_bytes());
        let tag = mac.finalize().into_bytes();
        tag.iter().take(COOKIE_HEX_LEN / 2).map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode_client(bytes: &[u8]) -> Result<ClientDatagram, DecodeError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn decode_relay(bytes: &[u8]) -> Result<RelayDatagram, DecodeError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// A nickname: 1 to [`MAX_NICK`] of `A-Z a-z 0-9 _ -`.
    pub fn valid_nick(nick: &str) -> bool {
        !nick.is_empty()
            && nick.len() <= MAX_NICK
            && nick.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// A message that would not fit in one datagram.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("message too long: needs a {needed}-byte datagram, the limit is {MAX_DATAGRAM}")]
    pub struct TooLong {
        pub needed: usize,
    }

    /// Checks that `text` from `from` (to `to`, if private) fits in one
    /// datagram both as the sender's `Msg` and as the relay's `Deliver`,
    /// with the largest sequence number. Both sides call it, so a message is
    /// refused before it is sent and never truncated.
    pub fn check_fits(from: &str, to: Option<&str>, text: &str) -> Result<(), TooLong> {
        let msg = encode_client(&ClientDatagram::Msg {
            key: "0".repeat(32),
            seq: u64::MAX,
            text: text.to_owned(),
            to: to.map(str::to_owned),
        });
        let deliver = encode_relay(&RelayDatagram::Deliver {
            seq: u64::MAX,
            from: from.to_owned(),
            text: text.to_owned(),
            private: to.is_some(),
        });
        let needed = msg.len().max(deliver.len());
        if needed > MAX_DATAGRAM {
            return Err(TooLong { needed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::chat::*;
    use super::reliable::*;
    use super::time::*;
    use std::time::{Duration, Instant};

    #[test]
    fn time_request_parsing() {
        assert_eq!(parse_request(b"", 256), Ok(DEFAULT_FORMAT));
        assert_eq!(parse_request(b"\n", 256), Ok(DEFAULT_FORMAT));
        assert_eq!(parse_request(b"%H\r\n", 256), Ok("%H"));
        assert_eq!(parse_request(&[0xff], 256), Err(ErrorCode::BadUtf8));
        assert_eq!(parse_request(&[b'a'; 257], 256), Err(ErrorCode::TooLarge));
    }

    #[test]
    fn time_reply_roundtrip_and_bound() {
        let r = Reply::Ok("12:00".into());
        assert_eq!(encode_reply(&r, 64), b"OK 12:00\n");
        assert_eq!(decode_reply(b"OK 12:00\n").unwrap(), r);
        let long = Reply::Ok("x".repeat(100));
        let enc = encode_reply(&long, 64);
        assert!(enc.len() <= 64);
        assert!(matches!(decode_reply(&enc).unwrap(), Reply::Err { code: ErrorCode::ReplyTooLong, .. }));
        let err = Reply::Err { code: ErrorCode::BadFormat, message: "é".repeat(100) };
        let enc = encode_reply(&err, 64);
        assert!(enc.len() <= 64);
        assert!(decode_reply(&enc).is_ok());
        for limit in 0..20 {
            assert!(encode_reply(&err, limit).len() <= limit);
        }
        assert_eq!(reply_limit(0), 64);
        assert_eq!(reply_limit(10_000), ABSOLUTE_MAX_REPLY);
    }

    #[test]
    fn chat_datagrams_roundtrip() {
        let d = ClientDatagram::Msg { key: "ab".into(), seq: 3, text: "hi".into(), to: None };
        let bytes = encode_client(&d);
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"t":"msg","key":"ab","seq":3,"text":"hi"}"#);
        assert_eq!(decode_client(&bytes).unwrap(), d);
        let r = RelayDatagram::Refused { code: RefuseCode::NickTaken, reason: "taken".into() };
        assert_eq!(decode_relay(&encode_relay(&r)).unwrap(), r);
        assert!(decode_client(b"{\"t\":\"nope\"}").is_err());
        assert!(decode_client(&[b' '; MAX_DATAGRAM + 1]).is_err());
    }

    #[test]
    fn joins_are_padded_so_every_answer_to_them_fits() {
        for nick in ["a", &"n".repeat(MAX_NICK)] {
            for cookie in [None, Some("0".repeat(COOKIE_HEX_LEN))] {
                let bytes = encode_join(nick, cookie.as_deref());
                assert!(bytes.len() >= JOIN_MIN_LEN && bytes.len() <= JOIN_MIN_LEN + 1, "{}", bytes.len());
                match decode_client(&bytes).unwrap() {
                    ClientDatagram::Join { nick: n, cookie: c, .. } => {
                        assert_eq!((n.as_str(), c), (nick, cookie.clone()))
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        // The largest answers to a join still fit in the smallest padded one.
        let retry = encode_relay(&RelayDatagram::Retry { cookie: "0".repeat(COOKIE_HEX_LEN) });
        let welcome = encode_relay(&RelayDatagram::Welcome {
            key: "0".repeat(32),
            nick: "n".repeat(MAX_NICK),
            heartbeat_ms: u64::MAX,
            timeout_ms: u64::MAX,
        });
        assert!(retry.len().max(welcome.len()) <= JOIN_MIN_LEN);
        // A bare join (an old client, or a flood) is far smaller than a retry.
        let bare = encode_client(&ClientDatagram::Join { nick: "a".into(), cookie: None, pad: String::new() });
        assert!(bare.len() < retry.len());
    }

    #[test]
    fn cookies_bind_secret_time_and_address() {
        let a: std::net::SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let c = join_cookie(b"secret", 7, a);
        assert_eq!(c.len(), COOKIE_HEX_LEN);
        assert!(c.bytes().all(|x| x.is_ascii_hexdigit()));
        assert_eq!(c, join_cookie(b"secret", 7, a));
        assert_ne!(c, join_cookie(b"secret", 8, a));
        assert_ne!(c, join_cookie(b"secret", 7, b));
        assert_ne!(c, join_cookie(b"other", 7, a));
    }

    #[test]
    fn fits_check() {
        assert!(check_fits("alice", None, "hello").is_ok());
        assert!(check_fits("alice", None, &"x".repeat(2000)).is_err());
        // Control characters expand sixfold in JSON: the check sees that.
        assert!(check_fits("alice", Some("bob"), &"\u{1}".repeat(300)).is_err());
    }

    #[test]
    fn outbox_retransmits_with_backoff_until_acked() {
        let policy = RetryPolicy { initial: Duration::from_millis(100), max: Duration::from_millis(400), window: 2 };
        let mut out = Outbox::new(policy);
        let t0 = Instant::now();
        for i in 0..3 {
            out.push_with(|seq| (seq, i));
        }
        let sent: Vec<u64> = out.poll_transmit(t0).iter().map(|x| x.0).collect();
        assert_eq!(sent, [1, 2]);
        assert!(out.poll_transmit(t0 + Duration::from_millis(50)).is_empty());
        assert!(out.ack(1));
        assert!(!out.ack(1));
        let sent: Vec<u64> = out.poll_transmit(t0 + Duration::from_millis(100)).iter().map(|x| x.0).collect();
        assert_eq!(sent, [2, 3]);
        // 2 now backs off 200ms.
        assert!(out.poll_transmit(t0 + Duration::from_millis(250)).iter().all(|x| x.0 != 2));
        assert_eq!(out.len(), 2);
        // 2 went out twice; due again at 300ms it has used up a budget of 2.
        assert!(!out.exhausted(t0 + Duration::from_millis(299), 2));
        assert!(out.exhausted(t0 + Duration::from_millis(300), 2));
        assert!(!out.exhausted(t0 + Duration::from_millis(300), 3));
    }

    #[test]
    fn inbox_orders_and_dedups() {
        let mut inbox = Inbox::new(4);
        assert_eq!(inbox.offer(2, 'b'), Offer::New);
        assert_eq!(inbox.offer(2, 'b'), Offer::Duplicate);
        assert_eq!(inbox.pop_ready(), None);
        assert_eq!(inbox.offer(9, 'z'), Offer::OutOfWindow);
        assert_eq!(inbox.offer(1, 'a'), Offer::New);
        assert_eq!(inbox.pop_ready(), Some('a'));
        assert_eq!(inbox.pop_ready(), Some('b'));
        assert_eq!(inbox.pop_ready(), None);
        assert_eq!(inbox.offer(1, 'a'), Offer::Duplicate);
    }
}
