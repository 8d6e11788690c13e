//! SCRAM-SHA-256 (RFC 5802 / RFC 7677), both halves, sans I/O.
//!
//! This module holds only the math and the message grammar: no sockets, no
//! clock, no randomness. Callers bring the nonces (random printable strings,
//! see [`encode_nonce`]) and carry the messages in whatever frames they like.
//!
//! # The exchange
//!
//! ```text
//! client                                         server
//! client-first  n,,n=<user>,r=<cnonce>      -->
//!                                           <--  server-first  r=<cnonce+snonce>,s=<salt b64>,i=<iterations>
//! client-final  c=biws,r=<cnonce+snonce>,p=<ClientProof b64>  -->
//!                                           <--  server-final  v=<ServerSignature b64>
//! ```
//!
//! With `SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)`,
//! `ClientKey = HMAC(SaltedPassword, "Client Key")`, `StoredKey = H(ClientKey)`,
//! `ServerKey = HMAC(SaltedPassword, "Server Key")` and
//! `AuthMessage = client-first-bare "," server-first "," client-final-without-proof`:
//!
//! - `ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)`: the server,
//!   which stores only `StoredKey` and `ServerKey` (a [`Verifier`]), recovers
//!   `ClientKey` and checks `H(ClientKey) == StoredKey` (RFC 5802 §3).
//! - `ServerSignature = HMAC(ServerKey, AuthMessage)`: proves to the client that
//!   the server knew the verifier.
//!
//! Choices ferry makes within the RFCs:
//!
//! - **No SASLprep.** The password is used as its UTF-8 bytes, as is. The
//!   username is escaped (`=` as `=3D`, `,` as `=2C`, RFC 5802 §5.1) and
//!   otherwise sent as is.
//! - **No channel binding.** The GS2 header must be `n,,`; `y`, `p=` and an
//!   authorization identity are refused ([`ScramError::ChannelBinding`],
//!   [`ScramError::Unsupported`]). ferry runs SCRAM inside TLS and never
//!   advertises `SCRAM-SHA-256-PLUS`; its clients always send `n`.
//! - **Iteration counts** outside [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`] are
//!   refused by both halves: the floor is RFC 7677 §4's, the ceiling keeps a
//!   hostile server from making a client spin.
//! - **Unknown users.** [`Verifier::fake_for`] derives a deterministic verifier
//!   from a server secret and the username, so a server can run the whole
//!   exchange for a user that does not exist and fail at the same step, with
//!   the same error ([`ScramError::InvalidProof`]), as for a wrong password.
//!
//! Peer input never panics: every parser returns a [`ScramError`].

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The SASL mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The smallest iteration count either half accepts (RFC 7677 §4).
pub const MIN_ITERATIONS: u32 = 4096;

/// The largest iteration count either half accepts: about a second of PBKDF2
/// on a slow machine, so a hostile server cannot make a client spin.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// The longest nonce or salt text a parser accepts, in bytes. Generous: real
/// nonces and salts are tens of bytes. Checked before decoding.
const MAX_FIELD_LEN: usize = 1024;

/// The GS2 header ferry requires: no channel binding, no authorization identity.
const GS2_HEADER: &str = "n,,";

/// `base64("n,,")`, the `c=` attribute of a client-final message.
const CHANNEL_BINDING_B64: &str = "biws";

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM message was refused.
///
/// The `Display` texts never contain a password, a key or a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The message does not follow the RFC 5802 grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`y` or `p=`), which ferry does not do.
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    /// A valid but unsupported feature: an authorization identity or a
    /// mandatory extension (`m=`).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// A nonce given by the caller is empty or holds a byte outside
    /// `0x21..=0x7E` or a `,`.
    #[error("invalid SCRAM nonce")]
    InvalidNonce,
    /// The iteration count is outside `MIN_ITERATIONS..=MAX_ITERATIONS`.
    #[error("SCRAM iteration count {0} is out of range")]
    IterationCount(u32),
    /// The server's nonce does not extend the client's, or the client-final
    /// nonce is not the combined one.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client proof is wrong: wrong password, or unknown user.
    #[error("authentication failed")]
    InvalidProof,
    /// The server signature is wrong: the server does not know the verifier.
    #[error("server signature mismatch: the server could not prove it knows the password verifier")]
    ServerSignature,
    /// The server answered with `e=<value>` (RFC 5802 §7).
    #[error("server refused authentication: {0}")]
    ServerRejected(String),
    /// A verifier string that is not `SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>`.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
}

// ---------------------------------------------------------------------------
// Primitives

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("invariant: HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality of two byte strings of the same public length.
/// Lengths are not secret here (always 32 bytes), so a length mismatch
/// returns early.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

fn check_iterations(iterations: u32) -> Result<(), ScramError> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(ScramError::IterationCount(iterations))
    }
}

/// `SaltedPassword := Hi(Normalize(password), salt, i)` (RFC 5802 §3), with
/// the password's UTF-8 bytes used as is (no SASLprep).
///
/// This is the expensive step (PBKDF2). A load generator may cache its result
/// per (password, salt, iterations) and hand it to
/// [`ScramClient::handle_server_first_with`].
#[must_use]
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
}

/// Encodes random bytes as a nonce: standard base64, which is printable and
/// has no `,`. 18 random bytes give a 24-character nonce.
#[must_use]
pub fn encode_nonce(random: &[u8]) -> String {
    B64.encode(random)
}

/// RFC 5802 `printable = %x21-2B / %x2D-7E`: no comma, no space, ASCII only.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.len() <= MAX_FIELD_LEN && nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 5802 §5.1: `=` becomes `=3D` and `,` becomes `=2C`.
fn escape_username(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '=' => out.push_str("=3D"),
            ',' => out.push_str("=2C"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape_username`]; any other `=` sequence is malformed.
fn unescape_username(escaped: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("=3D") {
            out.push('=');
        } else if tail.starts_with("=2C") {
            out.push(',');
        } else {
            return Err(ScramError::Malformed("bad escape in username"));
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty username"));
    }
    Ok(out)
}

/// Splits `k=value` and checks the key.
fn attr<'a>(part: Option<&'a str>, key: u8, what: &'static str) -> Result<&'a str, ScramError> {
    let part = part.ok_or(ScramError::Malformed(what))?;
    let b = part.as_bytes();
    if b.len() >= 2 && b[0] == key && b[1] == b'=' { Ok(&part[2..]) } else { Err(ScramError::Malformed(what)) }
}

/// Checks that the remaining parts are well-formed extensions (`a=value`,
/// RFC 5802 §7 `extensions`), which are then ignored.
fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for part in parts {
        let b = part.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
            return Err(ScramError::Malformed("bad attribute"));
        }
    }
    Ok(())
}

fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, ScramError> {
    if s.len() > MAX_FIELD_LEN {
        return Err(ScramError::Malformed(what));
    }
    B64.decode(s).map_err(|_| ScramError::Malformed(what))
}

fn decode_b64_32(s: &str, what: &'static str) -> Result<[u8; 32], ScramError> {
    decode_b64(s, what)?.try_into().map_err(|_| ScramError::Malformed(what))
}

// ---------------------------------------------------------------------------
// Verifier

/// What a server stores instead of a password: salt, iteration count,
/// `StoredKey` and `ServerKey`.
///
/// Its string form is PostgreSQL's:
/// `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`
/// ([`fmt::Display`] and [`FromStr`]). `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

/// A stable index below `len` for `item`, keyed by `secret` (HMAC-SHA-256):
/// unpredictable without the secret, the same for the same item.
#[must_use]
pub fn keyed_index(secret: &[u8], label: &[u8], item: &[u8], len: usize) -> usize {
    let mac = hmac(secret, &[label, item]);
    let n = u64::from_be_bytes(mac[..8].try_into().unwrap_or_default());
    (n % len.max(1) as u64) as usize
}

impl Verifier {
    /// Derives the verifier of `password` (UTF-8 bytes as is, no SASLprep).
    ///
    /// Refuses an empty salt and an iteration count outside
    /// [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`], which a client would refuse.
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        check_iterations(iterations)?;
        if salt.is_empty() {
            return Err(ScramError::InvalidVerifier("empty salt"));
        }
        Ok(Self::from_salted_password(&salted_password(password, salt, iterations), salt.to_vec(), iterations))
    }

    fn from_salted_password(salted: &[u8; 32], salt: Vec<u8>, iterations: u32) -> Self {
        let client_key = hmac(salted, &[b"Client Key"]);
        Self { salt, iterations, stored_key: sha256(&client_key), server_key: hmac(salted, &[b"Server Key"]) }
    }

    /// A deterministic stand-in verifier for a user that does not exist.
    ///
    /// The salt is 16 bytes of `HMAC(server_secret, "ferry fake salt" || username)`,
    /// so repeated logins as the same unknown name see the same salt, as they
    /// would for a real user; the keys come from the same secret and match no
    /// password anyone knows. Running [`ScramServer`] with it fails at
    /// [`ScramServer::finish`] with [`ScramError::InvalidProof`], exactly as a
    /// wrong password does. `iterations` should be the server's default for
    /// new users. `server_secret` must be random and kept private, or an
    /// observer can tell fake salts from real ones.
    #[must_use]
    pub fn fake_for(username: &str, server_secret: &[u8], iterations: u32) -> Self {
        let user = username.as_bytes();
        let salt = hmac(server_secret, &[b"ferry fake salt\0", user])[..16].to_vec();
        Self {
            salt,
            iterations,
            stored_key: hmac(server_secret, &[b"ferry fake stored key\0", user]),
            server_key: hmac(server_secret, &[b"ferry fake server key\0", user]),
        }
    }

    /// Whether `password` derives this verifier's StoredKey (recomputed
    /// from the stored salt and iterations, compared in constant time), for
    /// front ends that receive the password inside an encrypted channel
    /// (SSH, FTPS). Costs one PBKDF2 run: call it off the async threads.
    #[must_use]
    pub fn matches_password(&self, password: &str) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let candidate = Self::from_salted_password(&salted, Vec::new(), self.iterations);
        ct_eq(&candidate.stored_key, &self.stored_key)
    }

    #[must_use]
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    #[must_use]
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    #[must_use]
    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    #[must_use]
    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("salt", &B64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl FromStr for Verifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = ScramError::InvalidVerifier;
        let rest =
            s.strip_prefix(MECHANISM).and_then(|r| r.strip_prefix('$')).ok_or(bad("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or(bad("missing keys"))?;
        let (iter, salt) = params.split_once(':').ok_or(bad("missing salt"))?;
        let (stored, server) = keys.split_once(':').ok_or(bad("missing server key"))?;
        let iterations: u32 = iter.parse().map_err(|_| bad("bad iteration count"))?;
        check_iterations(iterations)?;
        let salt = decode_b64(salt, "").map_err(|_| bad("bad salt"))?;
        if salt.is_empty() {
            return Err(bad("empty salt"));
        }
        Ok(Self {
            salt,
            iterations,
            stored_key: decode_b64_32(stored, "").map_err(|_| bad("bad stored key"))?,
            server_key: decode_b64_32(server, "").map_err(|_| bad("bad server key"))?,
        })
    }
}

// ---------------------------------------------------------------------------
// Messages

/// A parsed client-first message (`n,,n=<user>,r=<nonce>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    username: String,
    nonce: String,
    /// `client-first-message-bare`, kept verbatim for the AuthMessage.
    bare: String,
}

impl ClientFirst {
    /// Parses a client-first message. Refuses channel binding (`y`, `p=`),
    /// an authorization identity and mandatory extensions (`m=`).
    pub fn parse(msg: &str) -> Result<Self, ScramError> {
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        match flag {
            "n" => {}
            "y" => return Err(ScramError::ChannelBinding),
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("missing GS2 header"))?;
        if !authzid.is_empty() {
            if authzid.starts_with("a=") {
                return Err(ScramError::Unsupported("authorization identity"));
            }
            return Err(ScramError::Malformed("bad GS2 header"));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        let mut parts = bare.split(',');
        let username = unescape_username(attr(parts.next(), b'n', "missing username")?)?;
        let nonce = attr(parts.next(), b'r', "missing nonce")?;
        if !valid_nonce(nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        check_extensions(parts)?;
        Ok(Self { username, nonce: nonce.to_owned(), bare: bare.to_owned() })
    }

    /// The username, unescaped. Not validated beyond the SCRAM grammar: the
    /// server applies its own rules.
    #[must_use]
    pub fn username(&self) -> &str {
        &self.username
    }

    #[must_use]
    pub fn nonce(&self) -> &str {
        &self.nonce
    }
}

/// A parsed server-first message (`r=<nonce>,s=<salt>,i=<iterations>`).
///
/// Public so a client (or a load generator) can read the salt and the
/// iteration count before deriving, or fetching from a cache, the
/// [`salted_password`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ServerFirst {
    /// Parses a server-first message. The iteration count is checked against
    /// [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    pub fn parse(msg: &str) -> Result<Self, ScramError> {
        if msg.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        let mut parts = msg.split(',');
        let nonce = attr(parts.next(), b'r', "missing nonce")?;
        if !valid_nonce(nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let salt = decode_b64(attr(parts.next(), b's', "missing salt")?, "bad salt")?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("empty salt"));
        }
        let iter = attr(parts.next(), b'i', "missing iteration count")?;
        if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ScramError::Malformed("bad iteration count"));
        }
        let iterations: u32 = iter.parse().map_err(|_| ScramError::IterationCount(u32::MAX))?;
        check_iterations(iterations)?;
        check_extensions(parts)?;
        Ok(Self { nonce: nonce.to_owned(), salt, iterations })
    }
}

/// `client-final-message-without-proof` and the proof, from a client-final message.
struct ClientFinal<'a> {
    without_proof: &'a str,
    nonce: &'a str,
    proof: [u8; 32],
}

impl<'a> ClientFinal<'a> {
    fn parse(msg: &'a str) -> Result<Self, ScramError> {
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let mut parts = without_proof.split(',');
        let cb = attr(parts.next(), b'c', "missing channel binding")?;
        if cb != CHANNEL_BINDING_B64 {
            // Any other value announces a different GS2 header than `n,,`.
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attr(parts.next(), b'r', "missing nonce")?;
        check_extensions(parts)?;
        Ok(Self { without_proof, nonce, proof: decode_b64_32(proof, "bad proof")? })
    }
}

fn auth_message(client_first_bare: &str, server_first: &str, final_without_proof: &str) -> String {
    format!("{client_first_bare},{server_first},{final_without_proof}")
}

// ---------------------------------------------------------------------------
// Client

/// The client half, before the server-first message.
pub struct ScramClient {
    password: String,
    nonce: String,
    bare: String,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").field("bare", &self.bare).finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange. `nonce` must be printable ASCII without `,`
    /// ([`encode_nonce`] of 18 random bytes is a good one). The password is
    /// used as its UTF-8 bytes, as is (no SASLprep).
    pub fn new(user: &str, password: &str, nonce: &str) -> Result<Self, ScramError> {
        if !valid_nonce(nonce) {
            return Err(ScramError::InvalidNonce);
        }
        if user.is_empty() {
            return Err(ScramError::Malformed("empty username"));
        }
        Ok(Self {
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            bare: format!("n={},r={nonce}", escape_username(user)),
        })
    }

    /// The client-first message: `n,,n=<user>,r=<nonce>`.
    #[must_use]
    pub fn client_first(&self) -> String {
        format!("{GS2_HEADER}{}", self.bare)
    }

    /// Handles the server-first message, deriving the salted password with
    /// PBKDF2 (the slow step), and returns the state holding the client-final
    /// message.
    pub fn handle_server_first(self, server_first: &str) -> Result<ScramClientFinal, ScramError> {
        let parsed = ServerFirst::parse(server_first)?;
        let salted = salted_password(&self.password, &parsed.salt, parsed.iterations);
        self.finish_first(server_first, &parsed, &salted)
    }

    /// Like [`Self::handle_server_first`], with a salted password computed
    /// (or cached) by the caller for this message's salt and iteration count
    /// (see [`ServerFirst::parse`] and [`salted_password`]).
    pub fn handle_server_first_with(
        self,
        server_first: &str,
        salted_password: &[u8; 32],
    ) -> Result<ScramClientFinal, ScramError> {
        let parsed = ServerFirst::parse(server_first)?;
        self.finish_first(server_first, &parsed, salted_password)
    }

    fn finish_first(
        self,
        server_first: &str,
        parsed: &ServerFirst,
        salted: &[u8; 32],
    ) -> Result<ScramClientFinal, ScramError> {
        // RFC 5802 §5.1: the server's nonce starts with the client's and adds to it.
        if parsed.nonce.len() <= self.nonce.len() || !parsed.nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let without_proof = format!("c={CHANNEL_BINDING_B64},r={}", parsed.nonce);
        let auth = auth_message(&self.bare, server_first, &without_proof);
        let client_key = hmac(salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let server_key = hmac(salted, &[b"Server Key"]);
        let client_signature = hmac(&stored_key, &[auth.as_bytes()]);
        let proof = xor32(&client_key, &client_signature);
        Ok(ScramClientFinal {
            message: format!("{without_proof},p={}", B64.encode(proof)),
            server_signature: hmac(&server_key, &[auth.as_bytes()]),
        })
    }
}

/// The client half after the server-first message: holds the client-final
/// message and the server signature it expects.
pub struct ScramClientFinal {
    message: String,
    server_signature: [u8; 32],
}

impl fmt::Debug for ScramClientFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClientFinal").finish_non_exhaustive()
    }
}

impl ScramClientFinal {
    /// The client-final message: `c=biws,r=<nonce>,p=<proof>`.
    #[must_use]
    pub fn client_final(&self) -> &str {
        &self.message
    }

    /// Checks the server-final message (`v=<ServerSignature>`) in constant
    /// time. `e=<error>` becomes [`ScramError::ServerRejected`].
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), ScramError> {
        if let Some(err) = server_final.strip_prefix("e=") {
            // The value comes from the peer: keep it only if it looks like an
            // RFC 5802 error token, so it cannot smuggle text into logs.
            let token = err.split(',').next().unwrap_or_default();
            let clean = token.len() <= 64 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let shown = if clean { token } else { "(unprintable)" };
            return Err(ScramError::ServerRejected(shown.to_owned()));
        }
        let mut parts = server_final.split(',');
        let v = attr(parts.next(), b'v', "missing server signature")?;
        check_extensions(parts)?;
        let sig = decode_b64_32(v, "bad server signature")?;
        if ct_eq(&sig, &self.server_signature) { Ok(()) } else { Err(ScramError::ServerSignature) }
    }
}

// ---------------------------------------------------------------------------
// Server

/// The server half, after the server-first message.
///
/// Use: parse with [`ClientFirst::parse`], look up the verifier of
/// [`ClientFirst::username`] (or take [`Verifier::fake_for`] when there is no
/// such user), call [`ScramServer::new`], send its server-first message, then
/// [`ScramServer::finish`] the client-final message.
pub struct ScramServer {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").field("server_first", &self.server_first).finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Builds the server-first message `r=<client nonce + server nonce>,s=<salt>,i=<iterations>`.
    ///
    /// `server_nonce` must be printable ASCII without `,` (see [`encode_nonce`]);
    /// otherwise [`ScramError::InvalidNonce`].
    pub fn new(client_first: &ClientFirst, verifier: Verifier, server_nonce: &str) -> Result<Self, ScramError> {
        if !valid_nonce(server_nonce) {
            return Err(ScramError::InvalidNonce);
        }
        let nonce = format!("{}{server_nonce}", client_first.nonce);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        Ok(Self { verifier, client_first_bare: client_first.bare.clone(), server_first, nonce })
    }

    /// Parses the client-first message and starts the exchange in one step,
    /// for callers whose verifier lookup is cheap: `lookup` gets the username
    /// and returns its verifier (or a fake one). Returns the server state and
    /// the username.
    pub fn start(
        client_first: &str,
        lookup: impl FnOnce(&str) -> Verifier,
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let first = ClientFirst::parse(client_first)?;
        let verifier = lookup(first.username());
        let server = Self::new(&first, verifier, server_nonce)?;
        Ok((server, first.username))
    }

    /// The server-first message to send.
    #[must_use]
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message: the channel binding (`c=biws`), the
    /// combined nonce and, in constant time, the proof. On success returns the
    /// server-final message `v=<ServerSignature>`.
    ///
    /// A wrong password and a fake verifier both give
    /// [`ScramError::InvalidProof`].
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        let parsed = ClientFinal::parse(client_final)?;
        if !ct_eq(parsed.nonce.as_bytes(), self.nonce.as_bytes()) {
            return Err(ScramError::NonceMismatch);
        }
        let auth = auth_message(&self.client_first_bare, &self.server_first, parsed.without_proof);
        let client_signature = hmac(&self.verifier.stored_key, &[auth.as_bytes()]);
        let client_key = xor32(&parsed.proof, &client_signature);
        if !ct_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CNONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Verifier {
        Verifier::new(PASSWORD, &B64.decode(SALT_B64).unwrap(), 4096).unwrap()
    }

    #[test]
    fn rfc7677_client() {
        let client = ScramClient::new(USER, PASSWORD, CNONCE).unwrap();
        assert_eq!(client.client_first(), CLIENT_FIRST);
        let fin = client.handle_server_first(SERVER_FIRST).unwrap();
        assert_eq!(fin.client_final(), CLIENT_FINAL);
        fin.verify_server_final(SERVER_FINAL).unwrap();
        assert_eq!(
            fin.verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn rfc7677_client_with_cached_salted_password() {
        let sf = ServerFirst::parse(SERVER_FIRST).unwrap();
        let salted = salted_password(PASSWORD, &sf.salt, sf.iterations);
        let client = ScramClient::new(USER, "ignored", CNONCE).unwrap();
        let fin = client.handle_server_first_with(SERVER_FIRST, &salted).unwrap();
        assert_eq!(fin.client_final(), CLIENT_FINAL);
    }

    #[test]
    fn rfc7677_server() {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        assert_eq!(first.username(), USER);
        let server = ScramServer::new(&first, rfc_verifier(), SNONCE).unwrap();
        assert_eq!(server.server_first(), SERVER_FIRST);
        assert_eq!(server.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn server_start_one_step() {
        let (server, user) = ScramServer::start(CLIENT_FIRST, |_| rfc_verifier(), SNONCE).unwrap();
        assert_eq!(user, USER);
        assert_eq!(server.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let run = |verifier: Verifier| {
            let client = ScramClient::new(USER, "wrong", CNONCE).unwrap();
            let first = ClientFirst::parse(&client.client_first()).unwrap();
            let server = ScramServer::new(&first, verifier, SNONCE).unwrap();
            let fin = client.handle_server_first(server.server_first()).unwrap();
            server.finish(fin.client_final())
        };
        let wrong = run(rfc_verifier()).unwrap_err();
        let fake = run(Verifier::fake_for(USER, b"secret", 4096)).unwrap_err();
        assert_eq!(wrong, ScramError::InvalidProof);
        assert_eq!(fake, wrong);
        assert_eq!(fake.to_string(), "authentication failed");
    }

    #[test]
    fn fake_verifier_is_deterministic_and_shaped_like_a_real_one() {
        let a = Verifier::fake_for("nobody", b"k", 4096);
        assert_eq!(a, Verifier::fake_for("nobody", b"k", 4096));
        assert_ne!(a.salt(), Verifier::fake_for("nobody2", b"k", 4096).salt());
        assert_ne!(a.salt(), Verifier::fake_for("nobody", b"k2", 4096).salt());
        assert_eq!(a.salt().len(), 16);
        assert_eq!(a.iterations(), 4096);
    }

    #[test]
    fn verifier_string_round_trip() {
        let v = rfc_verifier();
        let s = v.to_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        assert_eq!(s.parse::<Verifier>().unwrap(), v);
        // The Debug form shows no key.
        let dbg = format!("{v:?}");
        assert!(!dbg.contains(&B64.encode(v.stored_key())));
        assert!(!dbg.contains(&B64.encode(v.server_key())));
    }

    #[test]
    fn verifier_parse_rejects_garbage() {
        let good = rfc_verifier().to_string();
        for bad in [
            "",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$x:y",
            "SCRAM-SHA-256$1:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
            "SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
            &good.replace("4096", "99999999999"),
            &good.replace("W22ZaJ0SNY7soEsUEjb6gQ==", ""),
            &format!("{good}:extra"),
        ] {
            assert!(bad.parse::<Verifier>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn username_escaping() {
        let client = ScramClient::new("a=b,c", "p", "abc").unwrap();
        assert_eq!(client.client_first(), "n,,n=a=3Db=2Cc,r=abc");
        let first = ClientFirst::parse(&client.client_first()).unwrap();
        assert_eq!(first.username(), "a=b,c");
    }

    #[test]
    fn client_first_refusals() {
        use ScramError::*;
        let cases: &[(&str, ScramError)] = &[
            ("y,,n=user,r=abc", ChannelBinding),
            ("p=tls-unique,,n=user,r=abc", ChannelBinding),
            ("n,a=admin,n=user,r=abc", Unsupported("authorization identity")),
            ("n,,m=ext,n=user,r=abc", Unsupported("mandatory extension")),
            ("x,,n=user,r=abc", Malformed("bad channel binding flag")),
            ("n,,n=us=er,r=abc", Malformed("bad escape in username")),
            ("n,,n=,r=abc", Malformed("empty username")),
            ("n,,n=user,r=", Malformed("bad nonce")),
            ("n,,n=user", Malformed("missing nonce")),
            ("n,,r=abc,n=user", Malformed("missing username")),
        ];
        for (msg, want) in cases {
            assert_eq!(ClientFirst::parse(msg).as_ref(), Err(want), "{msg:?}");
        }
        // Optional extensions after the nonce are allowed and ignored.
        assert!(ClientFirst::parse("n,,n=user,r=abc,x=1").is_ok());
    }

    #[test]
    fn client_refuses_hostile_server_first() {
        let mk = || ScramClient::new(USER, PASSWORD, CNONCE).unwrap();
        // Nonce that does not extend ours.
        assert_eq!(mk().handle_server_first("r=other,s=QUJD,i=4096").unwrap_err(), ScramError::NonceMismatch);
        // Nonce that adds nothing.
        assert_eq!(
            mk().handle_server_first(&format!("r={CNONCE},s=QUJD,i=4096")).unwrap_err(),
            ScramError::NonceMismatch
        );
        // Too many or too few iterations.
        for i in ["4294967295", "99999999999999", "1", "0"] {
            let msg = format!("r={CNONCE}x,s=QUJD,i={i}");
            assert!(matches!(mk().handle_server_first(&msg).unwrap_err(), ScramError::IterationCount(_)));
        }
        assert!(matches!(
            mk().handle_server_first(&format!("r={CNONCE}x,s=QUJD,i=+4096")),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn server_final_error_is_reported_and_sanitized() {
        let fin = ScramClient::new(USER, PASSWORD, CNONCE).unwrap().handle_server_first(SERVER_FIRST).unwrap();
        assert_eq!(fin.verify_server_final("e=invalid-proof"), Err(ScramError::ServerRejected("invalid-proof".into())));
        assert_eq!(fin.verify_server_final("e=\x1b[31mevil"), Err(ScramError::ServerRejected("(unprintable)".into())));
    }

    #[test]
    fn server_final_checks() {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        let mk = || ScramServer::new(&first, rfc_verifier(), SNONCE).unwrap();
        // Wrong combined nonce.
        let msg = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(mk().finish(&msg).unwrap_err(), ScramError::NonceMismatch);
        // Channel binding data other than "n,,".
        let msg = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(mk().finish(&msg).unwrap_err(), ScramError::ChannelBinding);
        // A flipped proof bit.
        let msg = CLIENT_FINAL.replace("p=dHz", "p=dHy");
        assert_eq!(mk().finish(&msg).unwrap_err(), ScramError::InvalidProof);
        // A short proof.
        let msg = CLIENT_FINAL.replace("p=dHzbZapWIk4jUhN+", "p=");
        assert!(matches!(mk().finish(&msg), Err(ScramError::Malformed(_))));
        // Bad server nonce from the caller.
        assert_eq!(ScramServer::new(&first, rfc_verifier(), "a,b").unwrap_err(), ScramError::InvalidNonce);
        assert_eq!(ScramClient::new(USER, PASSWORD, "").unwrap_err(), ScramError::InvalidNonce);
    }

    #[test]
    fn garbage_never_panics() {
        let garbage = [
            "",
            ",",
            ",,",
            "n",
            "n,",
            "n,,",
            "n,,n",
            "n,,n=",
            "n,,n==",
            "n,,n=a=",
            "n,,n=a=3",
            "n,,n=a=3D",
            "n,,n=a,r",
            "n,,n=a,r=,",
            "n,,n=\u{e9}=2C,r=\u{e9}",
            "=",
            "==,==,==",
            "r=,s=,i=",
            "r=a,s=====,i=1",
            "r=a,s=QUJD,i=",
            "r=a,s=QUJD,i=-5",
            "c=,r=,p=",
            "c=biws,r=x,p=",
            "c=biws,p=AAAA",
            ",p=",
            "p=",
            "v=",
            "v=====",
            "e=",
            "\0\0\0",
            "n,,n=user,r=abc,\u{10FFFF}",
        ];
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        for g in garbage {
            let _ = ClientFirst::parse(g);
            let _ = ServerFirst::parse(g);
            let _ = g.parse::<Verifier>();
            let _ = ScramClient::new(g, g, g);
            let _ = ScramClient::new(USER, PASSWORD, CNONCE).unwrap().handle_server_first_with(g, &[0; 32]);
            let _ = ScramServer::new(&first, rfc_verifier(), SNONCE).unwrap().finish(g);
            let fin = ScramClient::new(USER, PASSWORD, CNONCE)
                .unwrap()
                .handle_server_first_with(SERVER_FIRST, &[0; 32])
                .unwrap();
            let _ = fin.verify_server_final(g);
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn scram_ish() -> impl Strategy<Value = String> {
            // Mostly the alphabet SCRAM messages are made of, so the parsers get
            // past their first checks; sometimes anything at all.
            prop_oneof![
                "[nyprsicvme=,a-zA-Z0-9+/=\\-]{0,64}",
                "(n|y|p=x),(a=x)?,(n=[a-z=,23CD]{0,6})?,?(r=[!-~]{0,8})?(,[a-z]=[a-z]*)*",
                "c=(biws|eSws)?,r=[!-~]{0,8}(,p=[A-Za-z0-9+/=]{0,48})?",
                any::<String>(),
            ]
        }

        proptest! {
            #[test]
            fn parsers_never_panic(s in scram_ish()) {
                let _ = ClientFirst::parse(&s);
                let _ = ServerFirst::parse(&s);
                let _ = s.parse::<Verifier>();
                let first = ClientFirst::parse("n,,n=u,r=abc").unwrap();
                let verifier = Verifier::fake_for("u", b"s", MIN_ITERATIONS);
                let server = ScramServer::new(&first, verifier, "def").unwrap();
                let _ = server.finish(&s);
            }

            #[test]
            fn usernames_round_trip(user in "\\PC{1,16}") {
                let client = ScramClient::new(&user, "pw", "nonce").unwrap();
                let first = ClientFirst::parse(&client.client_first()).unwrap();
                prop_assert_eq!(first.username(), user.as_str());
            }
        }
    }
}
