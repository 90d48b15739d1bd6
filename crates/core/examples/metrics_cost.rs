//! What the latency metrics add to a publication, without criterion: one publish to a
//! channel of one subscriber (the cheapest fan-out, so the largest relative cost),
//! with the broadcast histogram off (no namespace slots) and on, plus the parts alone
//! (a clock read, an observation).
//!
//!   cargo run --release -p starling-core --example metrics_cost            # timings
//!   valgrind --tool=callgrind target/release/examples/metrics_cost plain 100000
//!   valgrind --tool=callgrind target/release/examples/metrics_cost timed 100000
//!
//! (The two callgrind runs differ only in the histogram: their difference in
//! instructions, divided by the count, is the per-publication cost.)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_core::hub::{ChannelOptions, FrameEncoder, FrameFormat, Hub, Subscriber};
use starling_core::{Histogram, HubCounters, Outbox};
use starling_protocol::{ClientInfo, Encoding, Publication, encode_publication};

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
        _: Option<&[u8]>,
        format: FrameFormat,
    ) -> Bytes {
        self.publication(channel, publication, format)
    }

    fn join_leave(&self, _: &str, _: bool, _: &ClientInfo, _: FrameFormat) -> Bytes {
        Bytes::new()
    }
}

/// A hub whose channel `c` has one subscriber; `timed`: with a broadcast histogram.
fn hub(timed: bool) -> (Hub, Arc<Outbox>) {
    let counters = if timed {
        HubCounters::with_namespaces(1)
    } else {
        HubCounters::default()
    };
    let hub = Hub::new(Arc::new(JsonEncoder), Arc::new(counters));
    let outbox = Arc::new(Outbox::new(1 << 30));
    let info = Arc::new(ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: None,
    });
    let sub = Subscriber::new(1, outbox.clone(), FrameFormat(0), info);
    hub.subscribe("c", sub, ChannelOptions::default(), None, |_| None)
        .expect("subscribe");
    (hub, outbox)
}

fn drain(outbox: &Outbox) {
    while outbox.has_frames() {
        let _ = outbox.write_with::<()>(usize::MAX, |slices| {
            Ok(slices.iter().map(|s| s.len()).sum())
        });
    }
}

/// Publishes `n` times; returns the time spent publishing (draining excluded).
fn publish(hub: &Hub, outbox: &Outbox, n: u64) -> Duration {
    let data = Bytes::from_static(b"{\"text\":\"hello, this is a chat message of a usual size\"}");
    let mut spent = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let batch = left.min(1000);
        let start = Instant::now();
        for _ in 0..batch {
            black_box(
                hub.publish("c", data.clone(), None, ChannelOptions::default(), false)
                    .expect("publish"),
            );
        }
        spent += start.elapsed();
        drain(outbox);
        left -= batch;
    }
    spent
}

fn per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, n] = args.as_slice() {
        // One configuration, for an instruction counter.
        let n: u64 = n.parse().expect("count");
        let (hub, outbox) = hub(mode == "timed");
        publish(&hub, &outbox, n);
        return;
    }
    const N: u64 = 2_000_000;
    let h = Histogram::default();
    let start = Instant::now();
    for i in 0..N {
        h.observe_ns(black_box(i % 40_000));
    }
    println!("observe:            {:6.1} ns", per(start.elapsed(), N));
    let start = Instant::now();
    for _ in 0..N {
        black_box(Instant::now());
    }
    println!("Instant::now():     {:6.1} ns", per(start.elapsed(), N));
    let (plain, plain_box) = hub(false);
    let (timed, timed_box) = hub(true);
    // Alternate rounds so that drift (other work on the machine) hits both alike.
    let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..5 {
        a += publish(&plain, &plain_box, N / 5);
        b += publish(&timed, &timed_box, N / 5);
    }
    println!("publish, untimed:   {:6.1} ns", per(a, N));
    println!("publish, timed:     {:6.1} ns", per(b, N));
    println!(
        "difference:         {:6.1} ns per publication",
        per(b, N) - per(a, N)
    );
}
