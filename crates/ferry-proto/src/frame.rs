//! The frame: the cure for message boundaries on a byte stream.
//!
//! ```text
//! +----------------+---------------------------+------------------------+
//! | header length  | header: UTF-8 JSON object | body: raw bytes        |
//! | u32 big-endian | exactly `length` bytes    | exactly `body_len`     |
//! +----------------+---------------------------+------------------------+
//! ```
//!
//! `body_len` is a field of the header (u64, absent means 0). The decoder is a
//! two-state machine (header, then body) in the manner of tokio-util's
//! `LengthDelimitedCodec`: the header length is checked against a cap before
//! anything is reserved, and a body is handed out in chunks of at most
//! [`FrameCodec::body_chunk`] bytes, so a peer can never make us buffer a whole
//! body or an unbounded header.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on the JSON header (64 KiB): headers carry names and small
/// numbers, never file data.
pub const DEFAULT_MAX_HEADER: usize = 64 * 1024;
/// Default largest body chunk handed out by the decoder (as large as the
/// connection's reads inside a body; see `conn.rs`).
pub const DEFAULT_BODY_CHUNK: usize = 1024 * 1024;
/// The header field that states the body's byte count.
pub const BODY_LEN: &str = "body_len";

/// A decoded header: the JSON object and the body length it announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub fields: Map<String, Value>,
    pub body_len: u64,
}

impl Header {
    /// A header with the given fields; `body_len` is written on encode when non-zero.
    pub fn new(fields: Map<String, Value>, body_len: u64) -> Self {
        Header { fields, body_len }
    }

    /// Builds a header from any serializable object (a struct or `json!({...})`).
    pub fn from_serialize<T: serde::Serialize>(value: &T, body_len: u64) -> Result<Self, FrameError> {
        match serde_json::to_value(value) {
            Ok(Value::Object(fields)) => Ok(Header { fields, body_len }),
            Ok(_) => Err(FrameError::NotAnObject),
            Err(_) => Err(FrameError::NotJson),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

/// One unit out of the decoder: a header, or the next piece of its body.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameItem {
    Header(Header),
    /// A piece of the current body. Pieces of one body arrive in order and
    /// add up to exactly the header's `body_len`.
    Body(Bytes),
}

/// A frame the stream cannot recover from: the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("header length {len} exceeds the limit of {max} bytes")]
    HeaderTooLarge { len: usize, max: usize },
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("header is not valid JSON")]
    NotJson,
    #[error("header is not a JSON object")]
    NotAnObject,
    #[error("header field body_len is not an unsigned 64-bit integer")]
    BadBodyLen,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("a body was written that its header did not announce")]
    UnexpectedBody,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
}

/// tokio-util codec for ferry frames. Decoding yields [`FrameItem`]s; encoding
/// takes a [`Header`] and then raw body pieces as [`Bytes`] or `&[u8]`.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_header: usize,
    body_chunk: usize,
    state: State,
    /// Body bytes still owed by the encoder for the last header it wrote.
    encode_remaining: u64,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HEADER)
    }
}

impl FrameCodec {
    pub fn new(max_header: usize) -> Self {
        FrameCodec { max_header, body_chunk: DEFAULT_BODY_CHUNK, state: State::Head, encode_remaining: 0 }
    }

    /// Sets the largest body piece the decoder hands out.
    pub fn with_body_chunk(mut self, body_chunk: usize) -> Self {
        self.body_chunk = body_chunk.max(1);
        self
    }

    pub fn max_header(&self) -> usize {
        self.max_header
    }

    /// Body bytes of the current frame not yet decoded (0 between frames).
    pub fn body_remaining(&self) -> u64 {
        match self.state {
            State::Head => 0,
            State::Body { remaining } => remaining,
        }
    }

    /// True when the decoder stands at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head
    }

    /// Body bytes the encoder still expects after the last header.
    pub fn encode_remaining(&self) -> u64 {
        self.encode_remaining
    }

    /// Tells the encoder that `n` body bytes were written to the stream
    /// directly (for example by `sendfile`), bypassing [`Encoder`].
    pub fn note_body_written(&mut self, n: u64) -> Result<(), FrameError> {
        self.encode_remaining = self.encode_remaining.checked_sub(n).ok_or(FrameError::UnexpectedBody)?;
        Ok(())
    }
}

/// Parses header bytes into a JSON object and its announced body length.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FrameError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError::NotJson)?;
    let Value::Object(mut fields) = value else {
        return Err(FrameError::NotAnObject);
    };
    let body_len = match fields.remove(BODY_LEN) {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or(FrameError::BadBodyLen)?,
    };
    Ok(Header { fields, body_len })
}

impl Decoder for FrameCodec {
    type Item = FrameItem;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FrameItem>, FrameError> {
        match self.state {
            State::Head => {
                if src.len() < 4 {
                    src.reserve(4 - src.len());
                    return Ok(None);
                }
                let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
                // Checked before any reservation: a hostile 4 GiB length costs nothing.
                if len > self.max_header {
                    return Err(FrameError::HeaderTooLarge { len, max: self.max_header });
                }
                if src.len() < 4 + len {
                    src.reserve(4 + len - src.len());
                    return Ok(None);
                }
                src.advance(4);
                let raw = src.split_to(len);
                let header = parse_header(&raw)?;
                if header.body_len > 0 {
                    self.state = State::Body { remaining: header.body_len };
                }
                Ok(Some(FrameItem::Header(header)))
            }
            State::Body { remaining } => {
                if src.is_empty() {
                    src.reserve(remaining.min(self.body_chunk as u64) as usize);
                    return Ok(None);
                }
                let n = (src.len() as u64).min(remaining).min(self.body_chunk as u64) as usize;
                let chunk = src.split_to(n).freeze();
                let left = remaining - n as u64;
                self.state = if left == 0 { State::Head } else { State::Body { remaining: left } };
                Ok(Some(FrameItem::Body(chunk)))
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<FrameItem>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && self.at_boundary() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<&Header> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, header: &Header, dst: &mut BytesMut) -> Result<(), FrameError> {
        if self.encode_remaining != 0 {
            return Err(FrameError::UnexpectedBody);
        }
        let mut json = header_json(header)?;
        // An error answer that would not fit (a message quoting a long path)
        // is shortened rather than refused: the peer gets its answer, and
        // the writer is not blamed for its own frame (issue 13).
        let mut shortened;
        let mut tries = 0;
        while json.len() > self.max_header && tries < 16 {
            let Some(message) = header.fields.get("error").and_then(|e| e.get("message")).and_then(Value::as_str)
            else {
                break;
            };
            let keep = message.len().saturating_sub(json.len() - self.max_header + 8) >> tries;
            let cut = (0..=keep.min(message.len())).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
            shortened = header.clone();
            if let Some(Value::Object(err)) = shortened.fields.get_mut("error") {
                err.insert("message".into(), Value::String(format!("{}…", &message[..cut])));
            }
            json = header_json(&shortened)?;
            if json.len() <= self.max_header {
                break;
            }
            tries += 1;
        }
        if json.len() > self.max_header {
            return Err(FrameError::HeaderTooLarge { len: json.len(), max: self.max_header });
        }
        dst.reserve(4 + json.len());
        dst.put_u32(json.len() as u32);
        dst.extend_from_slice(&json);
        self.encode_remaining = header.body_len;
        Ok(())
    }
}

/// The JSON bytes of a header, `body_len` spliced in when non-zero.
fn header_json(header: &Header) -> Result<Vec<u8>, FrameError> {
    let mut json = serde_json::to_vec(&header.fields).map_err(|_| FrameError::NotJson)?;
    if header.body_len > 0 {
        // Splice `"body_len":N` into the object without cloning the map.
        json.pop(); // the closing brace
        if header.fields.is_empty() {
            json.extend_from_slice(format!("\"{BODY_LEN}\":{}}}", header.body_len).as_bytes());
        } else {
            json.extend_from_slice(format!(",\"{BODY_LEN}\":{}}}", header.body_len).as_bytes());
        }
    }
    Ok(json)
}

impl Encoder<Header> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, header: Header, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&header, dst)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.note_body_written(body.len() as u64)?;
        dst.extend_from_slice(body);
        Ok(())
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&body[..], dst)
    }
}

/// Fuzzing entry point: decodes arbitrary bytes to the end, with a small
/// header cap so the fuzzer also reaches the length check.
pub fn fuzz_decode(data: &[u8]) {
    let mut codec = FrameCodec::new(4096).with_body_chunk(64);
    let mut buf = BytesMut::from(data);
    // Each item consumes at least one byte or ends the loop, so this is bounded.
    for _ in 0..=data.len() {
        match codec.decode_eof(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header(v: Value, body_len: u64) -> Header {
        Header::from_serialize(&v, body_len).unwrap()
    }

    fn encode_frame(codec: &mut FrameCodec, h: &Header, body: &[u8], out: &mut BytesMut) {
        codec.encode(h, out).unwrap();
        codec.encode(body, out).unwrap();
    }

    #[test]
    fn round_trip_with_body() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let h = header(json!({"op": "put", "id": 1}), 5);
        encode_frame(&mut codec, &h, b"hello", &mut buf);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(FrameItem::Header(h)));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(FrameItem::Body(Bytes::from_static(b"hello"))));
        assert!(codec.at_boundary());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_header_length_is_refused_before_allocation() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::HeaderTooLarge { .. })));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        type Check = fn(&FrameError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"\xff\xfe", |e| matches!(e, FrameError::InvalidUtf8)),
            (b"{nope", |e| matches!(e, FrameError::NotJson)),
            (b"[1,2]", |e| matches!(e, FrameError::NotAnObject)),
            (b"{\"body_len\":-1}", |e| matches!(e, FrameError::BadBodyLen)),
            (b"{\"body_len\":\"5\"}", |e| matches!(e, FrameError::BadBodyLen)),
        ];
        for (raw, check) in cases {
            let mut buf = BytesMut::new();
            buf.put_u32(raw.len() as u32);
            buf.extend_from_slice(raw);
            let err = FrameCodec::default().decode(&mut buf).unwrap_err();
            assert!(check(&err), "{raw:?} gave {err:?}");
        }
    }

    #[test]
    fn truncated_frames_are_errors_at_eof() {
        let mut full = BytesMut::new();
        let mut enc = FrameCodec::default();
        encode_frame(&mut enc, &header(json!({"op": "x"}), 3), b"abc", &mut full);
        for cut in 1..full.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&full[..cut]);
            let mut result = Ok(None);
            for _ in 0..8 {
                result = codec.decode_eof(&mut buf);
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(matches!(result, Err(FrameError::Truncated)), "cut at {cut}: {result:?}");
        }
    }

    #[test]
    fn body_is_chunked() {
        let mut codec = FrameCodec::default().with_body_chunk(4);
        let mut buf = BytesMut::new();
        encode_frame(&mut codec, &header(json!({}), 10), b"0123456789", &mut buf);
        let mut got = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            if let FrameItem::Body(b) = item {
                assert!(b.len() <= 4);
                got.extend_from_slice(&b);
            }
        }
        assert_eq!(got, b"0123456789");
    }

    #[test]
    fn encoder_refuses_unannounced_body() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&header(json!({"op": "x"}), 2), &mut buf).unwrap();
        assert!(matches!(codec.encode(&b"abc"[..], &mut buf), Err(FrameError::UnexpectedBody)));
    }
}
