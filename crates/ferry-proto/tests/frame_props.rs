//! Property: any sequence of frames, written and read back split at arbitrary
//! byte boundaries or coalesced into single writes, decodes to the same frames.

use bytes::{Bytes, BytesMut};
use ferry_proto::frame::{FrameCodec, FrameItem, Header};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, Clone)]
struct Frame {
    header: Map<String, Value>,
    body: Vec<u8>,
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    (any::<u64>(), "[a-z_]{1,12}", "\\PC{0,40}", proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(
        |(id, op, text, body)| {
            let Value::Object(header) = json!({"id": id, "op": op, "path": text}) else { unreachable!() };
            Frame { header, body }
        },
    )
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut codec = FrameCodec::default();
    let mut out = BytesMut::new();
    for f in frames {
        codec.encode(&Header::new(f.header.clone(), f.body.len() as u64), &mut out).unwrap();
        codec.encode(&f.body[..], &mut out).unwrap();
    }
    out.to_vec()
}

/// Feeds `wire` to a decoder in pieces whose sizes come from `cuts`, then
/// reassembles frames from headers and body pieces.
fn decode_in_pieces(wire: &[u8], cuts: &[usize], chunk: usize) -> Vec<Frame> {
    let mut codec = FrameCodec::default().with_body_chunk(chunk);
    let mut buf = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut pending: Option<(Frame, u64)> = None;
    let mut pos = 0;
    let mut cut_iter = cuts.iter().cycle();
    let take = |item: FrameItem, frames: &mut Vec<Frame>, pending: &mut Option<(Frame, u64)>| match item {
        FrameItem::Header(h) => {
            assert!(pending.is_none(), "header inside a body");
            let f = Frame { header: h.fields, body: Vec::new() };
            if h.body_len == 0 {
                frames.push(f);
            } else {
                *pending = Some((f, h.body_len));
            }
        }
        FrameItem::Body(b) => {
            let (f, left) = pending.as_mut().expect("body without header");
            assert!(b.len() <= chunk);
            f.body.extend_from_slice(&b);
            *left -= b.len() as u64;
            if *left == 0 {
                frames.push(pending.take().unwrap().0);
            }
        }
    };
    while pos < wire.len() {
        let n = (*cut_iter.next().unwrap()).max(1).min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            take(item, &mut frames, &mut pending);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
        take(item, &mut frames, &mut pending);
    }
    assert!(pending.is_none());
    frames
}

fn same(a: &[Frame], b: &[Frame]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.header == y.header && x.body == y.body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn split_anywhere_decodes_the_same(
        frames in proptest::collection::vec(frame_strategy(), 0..12),
        cuts in proptest::collection::vec(1usize..700, 1..20),
        chunk in 1usize..5000,
    ) {
        let wire = encode_all(&frames);
        prop_assert!(same(&decode_in_pieces(&wire, &cuts, chunk), &frames));
    }

    #[test]
    fn coalesced_into_one_write_decodes_the_same(frames in proptest::collection::vec(frame_strategy(), 0..12)) {
        let wire = encode_all(&frames);
        prop_assert!(same(&decode_in_pieces(&wire, &[wire.len().max(1)], 256 * 1024), &frames));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..4096 {
            match codec.decode_eof(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[tokio::test]
async fn connection_round_trip_over_a_duplex_pipe() {
    let (a, b) = tokio::io::duplex(64);
    let mut w = ferry_proto::Connection::new(a, FrameCodec::default());
    let mut r = ferry_proto::Connection::new(b, FrameCodec::default());
    let body = Bytes::from(vec![7u8; 100_000]);
    let writer = async {
        let Value::Object(h) = json!({"id": 1, "op": "put"}) else { unreachable!() };
        w.queue_header(&Header::new(h, body.len() as u64)).unwrap();
        w.write_body(&body).await.unwrap();
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let h = r.read_header().await.unwrap().unwrap();
        assert_eq!(h.body_len, 100_000);
        let got = r.read_body_to_vec(1 << 20).await.unwrap();
        assert_eq!(got, body);
        assert!(r.read_header().await.unwrap().is_none());
    };
    tokio::join!(writer, reader);
}
