//! UDP services: the time service and the chat relay (issue 6).
//!
//! Each service owns one `UdpSocket` and runs until its `CancellationToken`
//! is cancelled, alone (`ferry time-server`, `ferry chat-server`) or inside
//! `ferry serve`. The datagram formats live in `ferry_proto::udp`.

pub mod chat;
pub mod ratelimit;
pub mod time;

pub use chat::ChatConfig;
pub use time::TimeConfig;

/// Serde helper for durations in the TOML config: an integer is milliseconds,
/// a string takes a unit suffix (`"200ms"`, `"5s"`, `"2m"`).
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer, de};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        match unit.trim() {
            "ms" | "" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            _ => None,
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(s) => parse(&s)
                .ok_or_else(|| de::Error::custom(format!("invalid duration {s:?} (use e.g. 500, \"500ms\", \"5s\")"))),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::parse;
        use std::time::Duration;

        #[test]
        fn units() {
            assert_eq!(parse("200ms"), Some(Duration::from_millis(200)));
            assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
            assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
            assert_eq!(parse("7"), Some(Duration::from_millis(7)));
            assert_eq!(parse("x"), None);
            assert_eq!(parse("5h"), None);
        }
    }
}
