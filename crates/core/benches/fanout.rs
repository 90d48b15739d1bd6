//! Hub fan-out micro-benchmark: one publication queued to N subscribers' in-memory
//! outboxes (100, 1,000, 10,000), the work under the channel lock that a publish does
//! on one node (encode once, then one shared frame per subscriber), with and without
//! history. The outboxes are drained between batches, outside the measured time.
//! Short runs: 1 s of measurement per case (`cargo bench -p starling-core`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use starling_core::hub::{ChannelOptions, FrameEncoder, FrameFormat, Hub, Subscriber};
use starling_core::{HistoryPolicy, HubCounters, Outbox};
use starling_protocol::{
    ClientInfo, Encoding, Publication, encode_delta_publication, encode_publication,
};

/// The JSON publication push, as the server encodes it (without the WebSocket header,
/// which is the websocket crate's part).
struct JsonEncoder;

impl FrameEncoder for JsonEncoder {
    fn publication(&self, channel: &str, publication: &Publication, _: FrameFormat) -> Bytes {
        let mut out = Vec::with_capacity(publication.data.len() + 96);
        encode_publication(Encoding::Json, channel, publication, &mut out);
        Bytes::from(out)
    }

    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&[u8]>,
        _: FrameFormat,
    ) -> Bytes {
        let payload = delta.unwrap_or(&publication.data);
        let mut out = Vec::with_capacity(payload.len() + 96);
        encode_delta_publication(
            Encoding::Json,
            channel,
            publication,
            payload,
            delta.is_some(),
            &mut out,
        );
        Bytes::from(out)
    }

    fn join_leave(&self, _: &str, _: bool, _: &ClientInfo, _: FrameFormat) -> Bytes {
        Bytes::new()
    }
}

/// A hub with `n` subscribers of `channel`, and their outboxes.
fn hub_with(n: usize, channel: &str, options: ChannelOptions) -> (Hub, Vec<Arc<Outbox>>) {
    let hub = Hub::new(Arc::new(JsonEncoder), Arc::new(HubCounters::default()));
    let mut outboxes = Vec::with_capacity(n);
    for key in 0..n as u64 {
        let outbox = Arc::new(Outbox::new(1 << 30));
        let subscriber = Subscriber::new(
            key,
            outbox.clone(),
            FrameFormat(0),
            Arc::new(ClientInfo::default()),
        );
        // Fresh keys on a fresh hub: a refusal would be a bug of the bench.
        if let Err(e) = hub.subscribe(channel, subscriber, options, None, |_| None) {
            panic!("subscribe {key}: {e}");
        }
        outboxes.push(outbox);
    }
    (hub, outboxes)
}

/// Empties every outbox (as the connections' writers would).
fn drain(outboxes: &[Arc<Outbox>]) {
    for o in outboxes {
        let _ = o.write_with::<()>(usize::MAX, |slices| {
            Ok(slices.iter().map(|s| s.len()).sum())
        });
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_publish");
    let data = Bytes::from(format!(r#"{{"seq":1,"ts":2,"pad":"{}"}}"#, "x".repeat(70)));
    let history = ChannelOptions {
        history: HistoryPolicy {
            size: 100,
            ttl_ms: 0,
            max_bytes: 0,
        },
        ..ChannelOptions::default()
    };
    for (label, options) in [
        ("no_history", ChannelOptions::default()),
        ("history", history),
    ] {
        for n in [100usize, 1_000, 10_000] {
            let (hub, outboxes) = hub_with(n, "bench", options);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    // Batches of 16 publications, drained between them, so queues stay
                    // short (and memory small) whatever the iteration count.
                    let mut measured = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let batch = left.min(16);
                        let start = Instant::now();
                        for _ in 0..batch {
                            let published =
                                hub.publish("bench", data.clone(), None, options, false);
                            black_box(published.map(|p| p.delivered).ok());
                        }
                        measured += start.elapsed();
                        drain(&outboxes);
                        left -= batch;
                    }
                    measured
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
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
