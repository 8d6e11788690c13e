//! The one place where an S3 partial upload's hash is kept between
//! requests, servers and restarts.
//!
//! Choice (issue 16): after each part, the SHA-256 state *serialised*
//! (sha2's `SerializableState`: the compression state, the byte count and
//! the unprocessed block, ~110 bytes) is recorded with the part's ETag and
//! size. A resume on any server restores the state at the last part
//! boundary and hashes only the tail it can read back, so the prefix hash a
//! client is shown covers the parts S3 shows unchanged (ListParts: number,
//! ETag, size) and the tail bytes as stored, never bytes the server merely
//! claims. Per-part hashes would not do: the whole file's SHA-256 cannot be
//! made from them.
//!
//! A second algorithm (BLAKE3) only needs another tag here: its hasher has
//! no serialisable state, so it would keep its parts' chaining values.

use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

/// The tag of a recorded state; the algorithm is part of the record.
const SHA256_TAG: &str = "sha256:";

/// A hasher's state as recorded: `sha256:` and hex.
pub fn save(hasher: &Sha256) -> String {
    format!("{SHA256_TAG}{}", hex::encode(hasher.serialize().as_slice()))
}

/// The hasher of a recorded state, `None` if it is not one.
pub fn load(saved: &str) -> Option<Sha256> {
    let bytes = hex::decode(saved.strip_prefix(SHA256_TAG)?).ok()?;
    let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
    Sha256::deserialize(&state).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn a_restored_state_goes_on_hashing() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0, 1, 63, 64, 65, 100_000, 300_000] {
            let mut h = Sha256::new();
            h.update(&data[..cut]);
            let mut restored = load(&save(&h)).expect("a saved state loads");
            restored.update(&data[cut..]);
            assert_eq!(restored.finalize(), Sha256::digest(&data), "cut at {cut}");
        }
        assert!(load("sha256:00").is_none());
        assert!(load("blake3:00").is_none());
    }
}
