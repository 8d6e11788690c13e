//! Certificate fingerprints as users see and pin them: `SHA256:` followed by
//! the unpadded base64 of the SHA-256 of the certificate's DER bytes, the same
//! shape as OpenSSH's host key fingerprints.

use base64::Engine;
use sha2::{Digest, Sha256};

pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape() {
        let f = super::fingerprint(b"abc");
        assert_eq!(f, "SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0");
    }
}
