//! Bytes on the wire per delivered publication, by encoding: the source analysis sizes
//! bandwidth at 10,000 publications/s of 1 KB (10 MB/s). Encodes the same publications
//! the way the server does (one push frame per publication, compressed once per
//! publication when permessage-deflate is negotiated: no context takeover) and reports
//! frame bytes and the CPU of encoding, per format.

use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use starling_protocol::{Encoding, Publication, encode_publication};
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
    /// Mean encode time per publication (push + frame + compression), µs.
    pub encode_us: f64,
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

/// Measures every format over `samples` publications of `size` bytes.
pub fn measure(size: usize, samples: usize) -> Vec<Row> {
    let pubs: Vec<Publication> = (0..samples.max(1) as u64)
        .map(|i| Publication {
            data: Bytes::from(sample(i, size)),
            offset: 1_000_000 + i,
            info: None,
            tags: None,
        })
        .collect();
    let deflate = DeflateParams::default();
    let formats: [(&'static str, Encoding, Option<&DeflateParams>); 4] = [
        ("JSON", Encoding::Json, None),
        ("MessagePack", Encoding::MsgPack, None),
        ("JSON + deflate", Encoding::Json, Some(&deflate)),
        ("MessagePack + deflate", Encoding::MsgPack, Some(&deflate)),
    ];
    formats
        .iter()
        .map(|(name, encoding, params)| {
            let kind = if encoding.is_binary() {
                MessageKind::Binary
            } else {
                MessageKind::Text
            };
            let started = Instant::now();
            let mut total = 0usize;
            let mut push = Vec::new();
            for p in &pubs {
                push.clear();
                encode_publication(*encoding, "chat:room-1", p, &mut push);
                total += encode_message(kind, &push, *params).len();
            }
            let elapsed = started.elapsed();
            Row {
                format: name,
                bytes: total as f64 / pubs.len() as f64,
                encode_us: elapsed.as_secs_f64() * 1e6 / pubs.len() as f64,
            }
        })
        .collect()
}

/// The table: bytes per delivery, the ratio to plain JSON, MB/s at `rate` deliveries/s,
/// and the encode time.
pub fn table(rows: &[Row], size: usize, rate: u64) -> String {
    let plain = rows.first().map_or(1.0, |r| r.bytes).max(1.0);
    let mut out = format!(
        "| format ({size} B JSON data) | bytes per delivery | vs JSON | MB/s at {rate} deliveries/s | encode µs per publication |\n|---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
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
    print!("{}", table(&rows, args.size, args.rate));
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
        assert_eq!(rows.len(), 4);
        let json = &rows[0];
        assert!(json.bytes > 1024.0, "the push wraps the data");
        assert!(rows[2].bytes < json.bytes / 1.5, "deflate: {rows:?}");
        let t = table(&rows, 1024, 10_000);
        assert!(t.contains("| JSON | "));
        assert!(t.contains("| 1.00 |"));
        assert_eq!(t.lines().count(), 2 + 4);
    }
}
