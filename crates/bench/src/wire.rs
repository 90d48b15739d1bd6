//! Bytes on the wire per delivered publication, by encoding: the source analysis sizes
//! bandwidth at 10,000 publications/s of 1 KB (10 MB/s). Encodes the same publications
//! the way the server does (one push frame per publication, compressed once per
//! publication when permessage-deflate is negotiated: no context takeover) and reports
//! frame bytes and the CPU of encoding, per format; the delta rows are what a delta
//! subscription (`delta: "fossil"`) in step receives. Two payloads: chat-like messages
//! (each new text) and the consecutive states of one object (a few fields change).

use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use starling_protocol::{Encoding, Publication, encode_delta_publication, encode_publication};
use starling_websocket::{DeflateParams, MessageKind, encode_message};

/// `starling-bench wire`: see the module docs.
#[derive(Debug, Args)]
pub struct WireArgs {
    /// Size of each publication's JSON data, bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Distinct publications encoded (each different text).
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Deliveries per second the bandwidth column is given for.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
}

/// One format's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Encoding and compression.
    pub format: &'static str,
    /// Mean frame bytes per publication.
    pub bytes: f64,
    /// Mean encode time per publication (delta + push + frame + compression), µs.
    pub encode_us: f64,
    /// Delta rows: the share of publications sent as deltas (the rest in full).
    pub delta_share: Option<f64>,
}

const WORDS: &[&str] = &[
    "hello", "the", "room", "meeting", "at", "noon", "please", "review", "this", "draft",
    "shipping", "today", "thanks", "see", "you", "later", "build", "passed", "merged", "ticket",
    "customer", "asked", "about", "pricing", "and", "latency", "numbers",
];

/// A chat-like JSON object of about `size` bytes, different for each `seed`: ids, a
/// timestamp and text from a small vocabulary (real messages repeat words and keys;
/// random bytes would not compress at all and say nothing about real traffic).
pub fn sample(seed: u64, size: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::new();
    let head = format!(
        "{{\"type\":\"message\",\"room\":\"room-{}\",\"user\":{{\"id\":\"u{}\",\"name\":\"user {}\"}},\"ts\":{},\"text\":\"",
        next() % 100,
        next() % 10_000,
        next() % 10_000,
        1_764_000_000_000u64 + next() % 1_000_000
    );
    let tail = "\"}";
    while head.len() + text.len() + tail.len() < size {
        if !text.is_empty() {
            text.push(' ');
        }
        let word = WORDS[(next() % WORDS.len() as u64) as usize];
        text.push_str(word);
    }
    let room = size.saturating_sub(head.len() + tail.len());
    text.truncate(room);
    format!("{head}{text}{tail}")
}

/// Fields of the state-like document besides its timestamp: numbers a ticker or a game
/// state would carry.
const STATE_FIELDS: &[&str] = &[
    "bid",
    "ask",
    "last",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "change",
    "change_pct",
    "bid_size",
    "ask_size",
    "trades",
    "open_interest",
    "funding",
    "mark",
    "index",
    "spread",
    "depth_bid",
    "depth_ask",
    "imbalance",
    "volatility",
    "turnover",
    "buys",
    "sells",
    "liquidations",
];

/// `samples` consecutive states of one object of about `size` bytes: a ticker of 30
/// fields (kind, symbol, timestamp and 27 numbers) and a fixed description that pads it
/// to the size. From one state to the next the timestamp and two of the numbers change,
/// as in a channel that publishes an object's state after each update.
pub fn state_samples(samples: usize, size: usize) -> Vec<String> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut values: Vec<u64> = STATE_FIELDS.iter().map(|_| next() % 10_000_000).collect();
    let mut ts = 1_764_000_000_000u64;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut doc = format!("{{\"type\":\"ticker\",\"symbol\":\"BTC-EUR\",\"ts\":{ts}");
        for (name, v) in STATE_FIELDS.iter().zip(&values) {
            doc.push_str(&format!(",\"{name}\":{}.{:02}", v / 100, v % 100));
        }
        let tail = ",\"about\":\"\"}";
        let mut about = String::new();
        let mut word = 0;
        while doc.len() + tail.len() + about.len() < size {
            if !about.is_empty() {
                about.push(' ');
            }
            about.push_str(WORDS[word % WORDS.len()]);
            word += 7;
        }
        about.truncate(size.saturating_sub(doc.len() + tail.len()));
        doc.push_str(&format!(",\"about\":\"{about}\"}}"));
        out.push(doc);
        ts += 1 + next() % 250;
        for _ in 0..2 {
            let i = (next() % values.len() as u64) as usize;
            values[i] = values[i]
                .saturating_add(next() % 2_000)
                .saturating_sub(next() % 2_000);
        }
    }
    out
}

/// Payloads below this are sent uncompressed (the server's default
/// `websocket.compression_min_size`).
const COMPRESSION_MIN_SIZE: usize = 128;

/// Measures every format over `docs` (consecutive publications of one channel).
///
/// Plain rows encode each publication as every subscriber gets it. Delta rows encode
/// what a delta subscriber in step gets: the fossil delta against the previous
/// publication (computed once per publication and counted in the encode time), or the
/// data in full where the delta would not be smaller (the first one, unlike ones).
pub fn measure_docs(docs: &[String]) -> Vec<Row> {
    let pubs: Vec<Publication> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| Publication {
            data: Bytes::from(d.clone()),
            offset: 1_000_000 + i as u64,
            info: None,
            tags: None,
            delta: false,
        })
        .collect();
    let deflate = DeflateParams::default();
    let formats: [(&'static str, Encoding, Option<&DeflateParams>, bool); 8] = [
        ("JSON", Encoding::Json, None, false),
        ("JSON + deflate", Encoding::Json, Some(&deflate), false),
        ("JSON delta", Encoding::Json, None, true),
        ("JSON delta + deflate", Encoding::Json, Some(&deflate), true),
        ("MessagePack", Encoding::MsgPack, None, false),
        (
            "MessagePack + deflate",
            Encoding::MsgPack,
            Some(&deflate),
            false,
        ),
        ("MessagePack delta", Encoding::MsgPack, None, true),
        (
            "MessagePack delta + deflate",
            Encoding::MsgPack,
            Some(&deflate),
            true,
        ),
    ];
    formats
        .iter()
        .map(|&(name, encoding, params, delta)| {
            let kind = if encoding.is_binary() {
                MessageKind::Binary
            } else {
                MessageKind::Text
            };
            let started = Instant::now();
            let mut total = 0usize;
            let mut deltas = 0usize;
            let mut push = Vec::new();
            let mut previous: Option<&Publication> = None;
            for p in &pubs {
                push.clear();
                if delta {
                    let patch = previous
                        .map(|prev| starling_protocol::delta::encode(&prev.data, &p.data))
                        .filter(|d| d.len() < p.data.len());
                    let payload = patch.as_deref().unwrap_or(&p.data);
                    deltas += usize::from(patch.is_some());
                    encode_delta_publication(
                        encoding,
                        "chat:room-1",
                        p,
                        payload,
                        patch.is_some(),
                        &mut push,
                    );
                    previous = Some(p);
                } else {
                    encode_publication(encoding, "chat:room-1", p, &mut push);
                }
                let deflate = params.filter(|_| push.len() >= COMPRESSION_MIN_SIZE);
                total += encode_message(kind, &push, deflate).len();
            }
            let elapsed = started.elapsed();
            Row {
                format: name,
                bytes: total as f64 / pubs.len() as f64,
                encode_us: elapsed.as_secs_f64() * 1e6 / pubs.len() as f64,
                delta_share: delta.then(|| deltas as f64 / pubs.len() as f64),
            }
        })
        .collect()
}

/// The chat-like rows: `samples` different messages of `size` bytes.
pub fn measure(size: usize, samples: usize) -> Vec<Row> {
    let docs: Vec<String> = (0..samples.max(1) as u64)
        .map(|i| sample(i, size))
        .collect();
    measure_docs(&docs)
}

/// The state-like rows: `samples` consecutive states of `size` bytes.
pub fn measure_state(size: usize, samples: usize) -> Vec<Row> {
    measure_docs(&state_samples(samples.max(1), size))
}

/// The table: bytes per delivery, the ratio to plain JSON, MB/s at `rate` deliveries/s,
/// the encode time, and for delta rows the share of publications sent as deltas.
pub fn table(rows: &[Row], payload: &str, size: usize, rate: u64) -> String {
    let plain = rows.first().map_or(1.0, |r| r.bytes).max(1.0);
    let mut out = format!(
        "| format ({size} B {payload} JSON) | bytes per delivery | vs JSON | MB/s at {rate} deliveries/s | encode µs per publication | sent as delta |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let share = r
            .delta_share
            .map_or_else(|| "-".to_string(), |s| format!("{:.0} %", s * 100.0));
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {share} |\n",
            r.format,
            r.bytes,
            r.bytes / plain,
            r.bytes * rate as f64 / 1e6,
            r.encode_us
        ));
    }
    out
}

/// Runs `starling-bench wire`.
pub fn run(args: &WireArgs) {
    let rows = measure(args.size, args.samples);
    print!("{}", table(&rows, "chat-like", args.size, args.rate));
    println!();
    let rows = measure_state(args.size, args.samples);
    print!("{}", table(&rows, "state-like", args.size, args.rate));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_the_size_asked_and_differ() {
        for size in [200, 1024, 4096] {
            let a = sample(1, size);
            assert_eq!(a.len(), size);
            assert!(serde_json::from_str::<serde_json::Value>(&a).is_ok(), "{a}");
            assert_ne!(a, sample(2, size));
        }
    }

    #[test]
    fn compression_shrinks_text_and_the_table_adds_up() {
        let rows = measure(1024, 20);
        assert_eq!(rows.len(), 8);
        let json = &rows[0];
        assert!(json.bytes > 1024.0, "the push wraps the data");
        assert!(rows[1].bytes < json.bytes / 1.5, "deflate: {rows:?}");
        let t = table(&rows, "chat-like", 1024, 10_000);
        assert!(t.contains("| JSON | "));
        assert!(t.contains("| 1.00 |"));
        assert_eq!(t.lines().count(), 2 + 8);
    }

    #[test]
    fn states_change_a_few_fields_and_deltas_shrink_them() {
        let docs = state_samples(50, 1024);
        for pair in docs.windows(2) {
            assert_eq!(pair[0].len(), 1024, "{}", pair[0]);
            let a: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&pair[0]).expect("json");
            let b: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&pair[1]).expect("json");
            assert_eq!(a.len(), 31, "30 fields and the padding");
            let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count();
            assert!((1..=4).contains(&changed), "{changed} changed");
        }
        let rows = measure_docs(&docs);
        let (json, delta) = (&rows[0], &rows[2]);
        assert!(delta.bytes < json.bytes / 4.0, "{rows:?}");
        assert!(delta.delta_share.is_some_and(|s| s > 0.9), "{rows:?}");
    }
}
