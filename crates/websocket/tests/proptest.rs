//! Property tests: random messages, fragmentation and read splits round-trip
//! exactly, with and without compression; arbitrary input never panics.

use bytes::Bytes;
use proptest::prelude::*;
use starling_websocket::{
    Config, Connection, DeflateParams, Message, OpCode, compress_message, encode_client_frame,
};

#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    compress: bool,
    /// Fragment boundaries as fractions of the (possibly compressed) body, in 0..=1000.
    cuts: Vec<u16>,
    /// Insert a ping after fragment i if pings[i % len] is true.
    pings: Vec<bool>,
    mask: [u8; 4],
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![
            any::<String>().prop_map(|s| (true, s.into_bytes())),
            prop::collection::vec(any::<u8>(), 0..600).prop_map(|v| (false, v)),
            // Compressible text.
            ("[a-c€]{0,40}", 1usize..50).prop_map(|(s, n)| (true, s.repeat(n).into_bytes())),
        ],
        any::<bool>(),
        prop::collection::vec(0u16..=1000, 0..5),
        prop::collection::vec(any::<bool>(), 1..4),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), compress, cuts, pings, mask)| Msg {
            text,
            payload,
            compress,
            cuts,
            pings,
            mask,
        })
}

/// Encodes the messages as client frames; returns the bytes and the ping count.
fn encode(msgs: &[Msg], deflate: bool) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut pings = 0;
    for m in msgs {
        let compressed = deflate && m.compress;
        let body = if compressed {
            compress_message(&m.payload, 15).expect("compress")
        } else {
            m.payload.clone()
        };
        let mut cuts: Vec<usize> = m
            .cuts
            .iter()
            .map(|c| body.len() * usize::from(*c) / 1000)
            .collect();
        cuts.sort_unstable();
        cuts.push(body.len());
        let mut start = 0;
        for (i, end) in cuts.iter().copied().enumerate() {
            let first = i == 0;
            let last = i + 1 == cuts.len();
            let op = match (first, m.text) {
                (false, _) => OpCode::Continuation,
                (true, true) => OpCode::Text,
                (true, false) => OpCode::Binary,
            };
            out.extend(encode_client_frame(
                op,
                last,
                first && compressed,
                &body[start..end],
                m.mask,
            ));
            start = end;
            if m.pings[i % m.pings.len()] {
                out.extend(encode_client_frame(
                    OpCode::Ping,
                    true,
                    false,
                    &[i as u8],
                    m.mask,
                ));
                pings += 1;
            }
        }
    }
    (out, pings)
}

fn expected(msgs: &[Msg]) -> Vec<Message> {
    msgs.iter()
        .map(|m| {
            let b = Bytes::from(m.payload.clone());
            if m.text {
                Message::Text(b)
            } else {
                Message::Binary(b)
            }
        })
        .collect()
}

fn config() -> Config {
    Config {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    }
}

fn run(data: &[u8], splits: &[usize], deflate: bool) -> (Vec<Message>, usize, Result<(), String>) {
    let mut c = Connection::new(config(), deflate.then(DeflateParams::default));
    let mut got = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = splits[i % splits.len()].clamp(1, rest.len());
        i += 1;
        let (chunk, r) = rest.split_at(n);
        rest = r;
        if let Err(e) = c.receive(chunk, &mut |m| got.push(m)) {
            return (got, 0, Err(e.to_string()));
        }
    }
    let pongs = std::iter::from_fn(|| c.poll_outbound()).count();
    (got, pongs, Ok(()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(
        msgs in prop::collection::vec(msg_strategy(), 0..6),
        deflate in any::<bool>(),
        splits in prop::collection::vec(1usize..300, 1..8),
    ) {
        let (data, pings) = encode(&msgs, deflate);
        let (got, pongs, r) = run(&data, &splits, deflate);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(got, expected(&msgs));
        prop_assert_eq!(pongs, pings);
    }

    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        deflate in any::<bool>(),
        splits in prop::collection::vec(1usize..100, 1..8),
    ) {
        let _ = run(&data, &splits, deflate);
    }

    #[test]
    fn random_frames_never_panic(
        frames in prop::collection::vec(
            (0u8..16, any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..200), any::<bool>()),
            0..12,
        ),
        deflate in any::<bool>(),
        splits in prop::collection::vec(1usize..64, 1..8),
    ) {
        // Mostly well-formed frames with random opcodes, flags and payloads.
        let mut data = Vec::new();
        for (op, fin, rsv1, payload, compress) in frames {
            let body = if compress { compress_message(&payload, 15).expect("compress") } else { payload };
            let mut f = encode_client_frame(OpCode::Binary, fin, rsv1, &body, [1, 2, 3, 4]);
            f[0] = (f[0] & 0xf0) | op;
            data.extend(f);
        }
        let _ = run(&data, &splits, deflate);
    }
}
