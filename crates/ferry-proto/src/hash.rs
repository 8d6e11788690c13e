//! The hash algorithms that verify transfers: SHA-256, which every client
//! has (Python's hashlib does), and BLAKE3, used when both sides have it
//! (docs/PROTOCOL.md, "Handshake"). Pure: a name, a streaming hasher and hex.

use serde::{Deserialize, Serialize};

/// A hash algorithm for file data, named on the wire in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    /// The mandatory fallback: a session that negotiated nothing uses it.
    #[default]
    Sha256,
    Blake3,
}

impl HashAlgo {
    /// Every algorithm this crate knows, in the order a client prefers them.
    pub const ALL: [HashAlgo; 2] = [HashAlgo::Blake3, HashAlgo::Sha256];

    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Blake3 => "blake3",
        }
    }

    /// The algorithm a wire name names; `None` for one this crate does not
    /// know (a newer peer may offer more).
    pub fn from_name(name: &str) -> Option<HashAlgo> {
        match name {
            "sha256" => Some(HashAlgo::Sha256),
            "blake3" => Some(HashAlgo::Blake3),
            _ => None,
        }
    }

    /// Hex digits of a digest (both are 32 bytes).
    pub const HEX_LEN: usize = 64;

    /// A digest written as hex, lowercased, if it has the right shape.
    pub fn parse_hex(self, hex: &str) -> Option<String> {
        (hex.len() == Self::HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
    }

    /// The hex digest of `data` in one call.
    pub fn digest_hex(self, data: &[u8]) -> String {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finalize_hex()
    }
}

/// The session's hash (docs/PROTOCOL.md, "Handshake"): the first name in
/// the client's list, in its order of preference, that the server offers.
/// No list (or an empty one) means SHA-256, what every client has. `None`:
/// nothing in common, which the server refuses.
pub fn negotiate(server: &[HashAlgo], client: Option<&[String]>) -> Option<HashAlgo> {
    match client {
        None | Some([]) => Some(HashAlgo::Sha256),
        Some(names) => names.iter().filter_map(|n| HashAlgo::from_name(n)).find(|a| server.contains(a)),
    }
}

impl std::fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlgo::from_name(s).ok_or_else(|| format!("unknown hash algorithm {s:?}: use sha256 or blake3"))
    }
}

/// A streaming hasher of either algorithm. BLAKE3 runs single-threaded
/// here (no rayon): the machine's cores belong to the sessions.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    /// Boxed: the BLAKE3 state is about 2 KiB, and hashers move between threads.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            HashAlgo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Sha256(_) => HashAlgo::Sha256,
            Hasher::Blake3(_) => HashAlgo::Blake3,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest as lowercase hex.
    pub fn finalize_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hasher({})", self.algo())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // sha256("abc") (FIPS 180-2) and blake3("abc") (the reference implementation).
        assert_eq!(
            HashAlgo::Sha256.digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            HashAlgo::Blake3.digest_hex(b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(
            HashAlgo::Blake3.digest_hex(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for algo in HashAlgo::ALL {
            let mut h = Hasher::new(algo);
            for chunk in data.chunks(4099) {
                h.update(chunk);
            }
            let prefix = {
                let mut p = Hasher::new(algo);
                p.update(&data[..1000]);
                p.clone().finalize_hex()
            };
            assert_eq!(prefix, algo.digest_hex(&data[..1000]));
            assert_eq!(h.finalize_hex(), algo.digest_hex(&data), "{algo}");
        }
    }

    #[test]
    fn negotiation_follows_the_client_order_among_what_the_server_offers() {
        let both = [HashAlgo::Blake3, HashAlgo::Sha256];
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(negotiate(&both, None), Some(HashAlgo::Sha256));
        assert_eq!(negotiate(&both, Some(&[])), Some(HashAlgo::Sha256));
        assert_eq!(negotiate(&both, Some(&names(&["blake3", "sha256"]))), Some(HashAlgo::Blake3));
        assert_eq!(negotiate(&both, Some(&names(&["sha256", "blake3"]))), Some(HashAlgo::Sha256));
        assert_eq!(negotiate(&both, Some(&names(&["k12", "blake3"]))), Some(HashAlgo::Blake3));
        assert_eq!(negotiate(&[HashAlgo::Sha256], Some(&names(&["blake3", "sha256"]))), Some(HashAlgo::Sha256));
        assert_eq!(negotiate(&[HashAlgo::Sha256], Some(&names(&["blake3"]))), None);
        assert_eq!(negotiate(&both, Some(&names(&["md5"]))), None);
    }

    #[test]
    fn names_round_trip() {
        for algo in HashAlgo::ALL {
            assert_eq!(HashAlgo::from_name(algo.as_str()), Some(algo));
            assert_eq!(serde_json::to_value(algo).unwrap(), serde_json::json!(algo.as_str()));
        }
        assert_eq!(HashAlgo::from_name("md5"), None);
        assert_eq!(HashAlgo::Sha256.parse_hex(&"AB".repeat(32)), Some("ab".repeat(32)));
        assert_eq!(HashAlgo::Sha256.parse_hex("xyz"), None);
    }
}
