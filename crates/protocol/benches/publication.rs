//! Publication encoding micro-benchmarks: the hub's hot path (`encode_publication`,
//! once per publication and format) in JSON and MessagePack, without and with the
//! publisher's info. Short runs: 1 s of measurement per case
//! (`cargo bench -p starling-protocol`).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling_protocol::{ClientInfo, Encoding, Publication, encode_publication};

fn publication(size: usize) -> Publication {
    // JSON data as a backend sends it: an object with a padding string.
    let pad = "x".repeat(size.saturating_sub(40));
    let data = format!(r#"{{"seq":12345,"ts":1700000000000,"pad":"{pad}"}}"#);
    Publication {
        data: Bytes::from(data),
        offset: 123_456,
        info: None,
        tags: None,
        delta: false,
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("publication");
    let channel = "chat:room-42";
    for size in [100usize, 4096] {
        let p = publication(size);
        let with_info = Publication {
            info: Some(ClientInfo {
                user: "user-42".into(),
                client: "5f0c2a9e-client".into(),
                conn_info: None,
                chan_info: None,
            }),
            ..p.clone()
        };
        g.throughput(Throughput::Bytes(p.data.len() as u64));
        for (name, enc) in [("json", Encoding::Json), ("msgpack", Encoding::MsgPack)] {
            g.bench_function(format!("{name}_{size}"), |b| {
                let mut out = Vec::with_capacity(size + 128);
                b.iter(|| {
                    out.clear();
                    encode_publication(enc, black_box(channel), black_box(&p), &mut out);
                    out.len()
                })
            });
            g.bench_function(format!("{name}_with_info_{size}"), |b| {
                let mut out = Vec::with_capacity(size + 128);
                b.iter(|| {
                    out.clear();
                    encode_publication(enc, black_box(channel), black_box(&with_info), &mut out);
                    out.len()
                })
            });
        }
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
    targets = encode
}
criterion_main!(benches);
