//! Counters the hub keeps; the server renders them for Prometheus. Also the latency
//! [`Histogram`] the hub and the server observe into.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Hub-level counters and gauges (relaxed atomics: they are statistics, not locks).
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Channels that exist now (gauge).
    pub channels: AtomicU64,
    /// Subscriptions that exist now (gauge).
    pub subscriptions: AtomicU64,
    /// Publications accepted (counter).
    pub publications: AtomicU64,
    /// Frames queued to connections by fan-out (counter).
    pub messages_out: AtomicU64,
    /// Bytes queued to connections by fan-out (counter).
    pub bytes_out: AtomicU64,
    /// Connections marked for a slow-consumer disconnect (4002) because a frame did not
    /// fit their queue (counter): by fan-out, by a subscribe reply, or by a reply the
    /// server counts here itself (see `Outbox::push`; an outbox overflows once).
    pub slow_consumers: AtomicU64,
    /// Publications not queued to a full lossy subscriber (counter).
    pub lossy_drops: AtomicU64,
    /// Publications queued to delta subscribers as a delta rather than in full (counter).
    pub delta_deliveries: AtomicU64,
    /// Publications the message log did not take because it was failed (counter):
    /// delivered live but not persisted, or refused when durability was asked for.
    pub journal_errors: AtomicU64,
    /// Bytes of publications kept in history, node-wide (gauge; see
    /// `History::entry_bytes`).
    pub history_bytes: AtomicU64,
    /// Publications not kept in history because the node's history budget was spent
    /// even after their channel gave up all its older entries (counter).
    pub history_dropped: AtomicU64,
    /// Recoveries answered `recovered: false` because the missed publications exceeded
    /// the recovery byte cap (counter).
    pub recoveries_too_large: AtomicU64,
    /// Publications refused because the message log's queue was full (counter).
    pub journal_busy: AtomicU64,
    /// Holes seen in a broker's stream of a channel (cluster; counter).
    pub stream_gaps: AtomicU64,
    /// Holes filled from the broker's history before newer publications (counter).
    pub stream_heals: AtomicU64,
    /// Channels whose order was lost (hole not in history, stream restarted, too far
    /// behind): their subscribers were disconnected with 4006 (counter).
    pub stream_losses: AtomicU64,
    /// Streams found restarted under a new epoch by the broker (counter).
    pub stream_resets: AtomicU64,
    /// Time to fan one publication out to a channel's local subscribers, one histogram
    /// per namespace slot (`ChannelOptions::namespace`); empty: not measured.
    pub broadcast: Box<[Histogram]>,
}

impl HubCounters {
    /// Counters with a broadcast histogram for each of `namespaces` namespace slots
    /// (see `Namespaces::metric_slots`).
    pub fn with_namespaces(namespaces: usize) -> Self {
        Self {
            broadcast: (0..namespaces).map(|_| Histogram::default()).collect(),
            ..Self::default()
        }
    }
}

/// Upper bounds of the histogram buckets, in nanoseconds (the `+Inf` bucket follows).
/// The same on every node, so that `sum by (le)` aggregates a cluster: change them only
/// together with [`BUCKET_LABELS`], and know that dashboards quantiles move with them.
pub const BUCKET_BOUNDS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// [`BUCKET_BOUNDS_NS`] as the `le` label says them, in seconds.
pub const BUCKET_LABELS: [&str; 18] = [
    "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
];

/// Buckets of a [`Histogram`]: one per bound in [`BUCKET_BOUNDS_NS`], then `+Inf`.
pub const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// A Prometheus histogram of durations with fixed buckets ([`BUCKET_BOUNDS_NS`]):
/// lock-free (an observation is a bucket search and two relaxed `fetch_add`s), no
/// allocation after construction. Buckets are kept per bucket and made cumulative when
/// rendered; the count is their sum, so `_count` always equals the `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the observations in nanoseconds (wraps after 584 years of observed time).
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        self.observe_ns(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one duration given in nanoseconds.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        // Most observations fall in the first buckets: a linear scan stops early.
        let bucket = BUCKET_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BUCKET_BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Observations so far in each bucket (not cumulative; the last is `+Inf`): the
    /// difference of two readings is the histogram of what was observed in between (the
    /// per-minute quantiles of `POST /api/analytics`).
    pub fn bucket_counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// Sum of the observations so far, in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// Writes the histogram's samples in the Prometheus text format (0.0.4): the
    /// cumulative `<name>_bucket` lines (`le` last among the labels, `+Inf` last),
    /// `<name>_sum` in seconds and `<name>_count`. `labels` are the series' other labels,
    /// already escaped (`a="x",b="y"`, or empty). No `# HELP`/`# TYPE`: a family with
    /// several series writes those once.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKET_LABELS.get(i).copied().unwrap_or("+Inf");
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_ns();
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}.{:09}",
            sum / 1_000_000_000,
            sum % 1_000_000_000
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A Prometheus label value with `\`, `"` and line feeds escaped, as the text format
/// asks.
pub fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsed samples of a rendering: (line name with labels, value).
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    #[test]
    fn bounds_and_labels_agree_and_ascend() {
        for (ns, label) in BUCKET_BOUNDS_NS.iter().zip(BUCKET_LABELS) {
            let seconds: f64 = label.parse().expect("a number");
            assert!(
                (seconds * 1e9 - *ns as f64).abs() < 0.5,
                "{label} is not {ns} ns"
            );
        }
        assert!(BUCKET_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5)); // 0.00001
        h.observe(Duration::from_micros(10)); // 0.00001 (le is inclusive)
        h.observe(Duration::from_micros(11)); // 0.000025
        h.observe(Duration::from_millis(3)); // 0.005
        h.observe(Duration::from_secs(60)); // +Inf
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "namespace=\"chat\",source=\"api\"");
        let s = samples(&out);
        assert_eq!(s.len(), BUCKET_BOUNDS_NS.len() + 3);
        let bucket = |le: &str| -> u64 {
            let name = format!("x_seconds_bucket{{namespace=\"chat\",source=\"api\",le=\"{le}\"}}");
            s.iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} in {out}"))
                .1
                .parse()
                .expect("integer")
        };
        assert_eq!(bucket("0.00001"), 2);
        assert_eq!(bucket("0.000025"), 3);
        assert_eq!(bucket("0.0025"), 3);
        assert_eq!(bucket("0.005"), 4);
        assert_eq!(bucket("5"), 4);
        assert_eq!(bucket("+Inf"), 5);
        // Cumulative: never decreasing, `+Inf` last.
        let counts: Vec<u64> = s[..BUCKET_BOUNDS_NS.len() + 1]
            .iter()
            .map(|(_, v)| v.parse().expect("integer"))
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert!(s[BUCKET_BOUNDS_NS.len()].0.ends_with("le=\"+Inf\"}"));
        assert_eq!(
            s[BUCKET_BOUNDS_NS.len() + 1],
            (
                "x_seconds_sum{namespace=\"chat\",source=\"api\"}".to_string(),
                "60.003026000".to_string()
            )
        );
        assert_eq!(
            s[BUCKET_BOUNDS_NS.len() + 2],
            (
                "x_seconds_count{namespace=\"chat\",source=\"api\"}".to_string(),
                "5".to_string()
            )
        );
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn renders_without_labels() {
        let h = Histogram::default();
        let mut out = String::new();
        h.render(&mut out, "y_seconds", "");
        assert!(
            out.starts_with("y_seconds_bucket{le=\"0.00001\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("\ny_seconds_sum 0.000000000\n"), "{out}");
        assert!(out.ends_with("\ny_seconds_count 0\n"), "{out}");
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        const THREADS: u64 = 4;
        const EACH: u64 = 50_000;
        let h = Histogram::default();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let h = &h;
                s.spawn(move || {
                    for i in 0..EACH {
                        // Spread over every bucket, +Inf included.
                        h.observe_ns((i * 123_457 + t) % 6_000_000_000);
                    }
                });
            }
        });
        assert_eq!(h.count(), THREADS * EACH);
        let expected: u64 = (0..THREADS)
            .flat_map(|t| (0..EACH).map(move |i| (i * 123_457 + t) % 6_000_000_000))
            .sum();
        assert_eq!(h.sum_ns(), expected);
        let mut out = String::new();
        h.render(&mut out, "z", "");
        assert!(out.contains(&format!("z_bucket{{le=\"+Inf\"}} {}\n", THREADS * EACH)));
        assert!(out.contains(&format!("z_count {}\n", THREADS * EACH)));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("chat"), "chat");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
