//! Frame encode/decode micro-benchmarks: the server's per-message framing (plain and
//! permessage-deflate) and the decoding of masked client frames, at the sizes of a
//! small publication (100 B) and a larger one (4 KiB). Short runs: 1 s of measurement
//! per case (`cargo bench -p starling-websocket`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling_websocket::{
    Config, Connection, DeflateParams, MessageKind, OpCode, encode_client_frame, encode_message,
};

/// JSON-looking text of about `n` bytes (compressible like real publications).
fn text(n: usize) -> Vec<u8> {
    let unit = br#"{"seq":12345,"ts":1700000000000,"user":"u42","text":"hello there"},"#;
    unit.iter().copied().cycle().take(n).collect()
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let deflate = DeflateParams::default();
    for size in [100usize, 4096] {
        let payload = text(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("server_text_{size}"), |b| {
            b.iter(|| encode_message(MessageKind::Text, black_box(&payload), None))
        });
        g.bench_function(format!("server_text_deflate_{size}"), |b| {
            b.iter(|| encode_message(MessageKind::Text, black_box(&payload), Some(&deflate)))
        });
        g.bench_function(format!("client_masked_{size}"), |b| {
            b.iter(|| {
                encode_client_frame(OpCode::Text, true, false, black_box(&payload), [1, 2, 3, 4])
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for size in [100usize, 4096] {
        // 64 masked client frames in one read, as a busy client's socket delivers them.
        let frame = encode_client_frame(OpCode::Text, true, false, &text(size), [9, 8, 7, 6]);
        let stream: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 64)
            .collect();
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(format!("client_text_x64_{size}"), |b| {
            let mut conn = Connection::new(Config::default(), None);
            b.iter(|| {
                let mut n = 0usize;
                conn.receive(black_box(&stream), &mut |m| {
                    n += 1;
                    black_box(m);
                })
                .map(|()| n)
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode
}
criterion_main!(benches);
