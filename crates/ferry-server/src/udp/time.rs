//! The UDP time service: a format string in, the current time out.
//!
//! Anti-amplification (issue 6): a reply is never longer than
//! `ferry_proto::udp::time::reply_limit(request_len)`, and each source IP is
//! rate-limited; a rate-limited request gets no reply at all.

use std::io;
use std::time::Instant;

use ferry_proto::udp::time::{self as wire, ErrorCode, Reply};
use jiff::fmt::strtime::BrokenDownTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::ratelimit::RateLimiter;

/// `[time]` in the server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// Run the service inside `ferry serve`.
    pub enabled: bool,
    /// Where `ferry serve` binds it (default 127.0.0.1:7734).
    pub listen: Option<std::net::SocketAddr>,
    /// Answer in UTC instead of the server's local time zone.
    pub utc: bool,
    /// Longest request accepted, in bytes; longer ones get `ERR too-large`.
    pub max_request: usize,
    /// Requests per second allowed per source IP after the burst.
    pub rate_per_sec: f64,
    /// Requests a source IP may send at once.
    pub burst: u32,
    /// Most source addresses tracked by the rate limiter.
    pub max_sources: usize,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            enabled: false,
            listen: None,
            utc: false,
            max_request: 256,
            rate_per_sec: 2.0,
            burst: 5,
            max_sources: 4096,
        }
    }
}

/// A `jiff::fmt::Write` that fails instead of growing past `limit` bytes, so
/// a format such as `%c%c%c...` never builds a large string.
struct Bounded {
    buf: String,
    limit: usize,
    overflowed: bool,
}

impl jiff::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> Result<(), jiff::Error> {
        if self.buf.len() + s.len() > self.limit {
            self.overflowed = true;
            return Err(jiff::Error::from_args(format_args!("reply limit")));
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// Formats `now` with `format` in at most `limit` bytes.
pub fn format_time(format: &str, now: &ZonedDateTime, limit: usize) -> Reply {
    let tm = BrokenDownTime::from(now);
    let mut out = Bounded { buf: String::new(), limit, overflowed: false };
    match tm.format(format, &mut out) {
        Ok(()) => Reply::Ok(out.buf),
        Err(_) if out.overflowed => {
            Reply::Err { code: ErrorCode::ReplyTooLong, message: "result exceeds the reply limit".into() }
        }
        Err(e) => Reply::Err { code: ErrorCode::BadFormat, message: e.to_string() },
    }
}

/// The whole service minus the socket: the reply datagram for `request`.
/// Its length never exceeds `reply_limit(request.len())`.
pub fn answer(request: &[u8], now: &ZonedDateTime, max_request: usize) -> Vec<u8> {
    let limit = wire::reply_limit(request.len());
    let reply = match wire::parse_request(request, max_request) {
        Ok(format) => format_time(format, now, limit),
        Err(code) => Reply::Err {
            code,
            message: match code {
                ErrorCode::TooLarge => format!("request exceeds {max_request} bytes"),
                _ => "request is not UTF-8".into(),
            },
        },
    };
    wire::encode_reply(&reply, limit)
}

fn now(utc: bool) -> ZonedDateTime {
    if utc { Timestamp::now().to_zoned_datetime(TimeZone::UTC) } else { ZonedDateTime::now() }
}

/// Serves time requests on `socket` until `shutdown` is cancelled.
pub async fn serve(socket: UdpSocket, cfg: TimeConfig, shutdown: CancellationToken) -> io::Result<()> {
    let mut limiter = RateLimiter::new(cfg.rate_per_sec, cfg.burst, cfg.max_sources);
    // One byte more than allowed tells an oversized request from a full one
    // (the kernel truncates the rest).
    // (65507 is the largest UDP payload over IPv4.)
    let max_request = cfg.max_request.min(65_507);
    let mut buf = vec![0u8; max_request + 1];
    tracing::info!(addr = ?socket.local_addr().ok(), "time service listening");
    loop {
        let (n, from) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors from earlier replies surface here on some
                // systems; they concern one peer, not the service.
                Err(e) => {
                    tracing::debug!(error = %e, "time: recv failed");
                    continue;
                }
            },
        };
        if !limiter.allow(from.ip(), Instant::now()) {
            tracing::debug!(%from, "time: rate limited, no reply");
            continue;
        }
        let reply = answer(&buf[..n], &now(cfg.utc), max_request);
        if let Err(e) = socket.send_to(&reply, from).await {
            tracing::debug!(%from, error = %e, "time: send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::udp::time::decode_reply;

    fn fixed() -> ZonedDateTime {
        jiff::civil::date(2024, 7, 5).at(16, 4, 9, 0).to_zoned_datetime(TimeZone::UTC).unwrap()
    }

    fn ok(req: &str) -> String {
        match decode_reply(&answer(req.as_bytes(), &fixed(), 256)).unwrap() {
            Reply::Ok(s) => s,
            other => panic!("{req:?}: {other:?}"),
        }
    }

    #[test]
    fn common_specifiers() {
        assert_eq!(ok(""), "2024-07-05 16:04:09");
        assert_eq!(ok("%Y %m %d %H %M %S"), "2024 07 05 16 04 09");
        assert_eq!(ok("%y %b %B %a %A %j"), "24 Jul July Fri Friday 187");
        assert_eq!(ok("%e|%I|%p|%%|%Z|%z"), " 5|04|PM|%|UTC|+0000");
    }

    #[test]
    fn bad_format_is_an_error_reply() {
        let r = decode_reply(&answer(b"%!", &fixed(), 256)).unwrap();
        assert!(matches!(r, Reply::Err { code: ErrorCode::BadFormat, .. }), "{r:?}");
        assert!(answer(b"%!", &fixed(), 256).len() <= wire::reply_limit(2));
        let r = decode_reply(&answer(b"abc %", &fixed(), 256)).unwrap();
        assert!(matches!(r, Reply::Err { code: ErrorCode::BadFormat, .. }), "{r:?}");
    }

    #[test]
    fn replies_never_amplify() {
        for req in ["%c", "%c%c%c%c", &"%c".repeat(100), &"%A%B".repeat(60)] {
            let reply = answer(req.as_bytes(), &fixed(), 256);
            assert!(reply.len() <= wire::reply_limit(req.len()), "{req}");
        }
        let r = decode_reply(&answer("%c".repeat(100).as_bytes(), &fixed(), 256)).unwrap();
        assert!(matches!(r, Reply::Err { code: ErrorCode::ReplyTooLong, .. }), "{r:?}");
    }
}
