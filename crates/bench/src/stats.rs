//! Measurement math: latency histograms and percentiles, rates, delivery-order
//! checking, and the publication payload that carries a sequence number and a send
//! timestamp.

use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem::Finder;

/// Highest latency the histograms track, in microseconds (values above are clamped).
pub const MAX_LATENCY_US: u64 = 600_000_000;

/// The process-wide clock origin: publisher and subscribers live in one process, so
/// "microseconds since start" is a shared clock for end-to-end latency.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A new latency histogram (1 µs .. 600 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Latency histograms sharded by subscriber, so that 10k subscribers record without
/// one hot lock and without one histogram each (~200 KiB apiece).
pub struct LatencyShards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyShards {
    /// `n` shards (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records a batch of latencies (µs) for subscriber `who`; one lock per batch.
    pub fn record(&self, who: usize, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut h = self.shards[who % self.shards.len()]
            .lock()
            .expect("histogram lock");
        for &v in values {
            h.saturating_record(v.clamp(1, MAX_LATENCY_US));
        }
    }

    /// All shards merged, and the shards emptied (the samples since the last call:
    /// the live progress line's current percentiles).
    pub fn take(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let mut h = s.lock().expect("histogram lock");
            all.add(&*h).expect("same bounds");
            h.reset();
        }
        all
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            all.add(&*s.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        all
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles off `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Events per second; 0 for an empty interval.
pub fn per_second(count: u64, over: Duration) -> f64 {
    let s = over.as_secs_f64();
    if s <= 0.0 { 0.0 } else { count as f64 / s }
}

/// Bytes as "N B (X.XX KiB)".
pub fn bytes_and_kib(bytes: i64) -> String {
    format!("{bytes} B ({:.2} KiB)", bytes as f64 / 1024.0)
}

/// Checks that a subscriber's offsets go up by exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderCheck {
    last: Option<u64>,
    /// Publications received.
    pub received: u64,
    /// Publications skipped (sum of gap sizes).
    pub missing_in_gaps: u64,
    /// Offsets that did not increase (duplicates or reordering).
    pub out_of_order: u64,
}

impl OrderCheck {
    /// Starts after `offset` (the position from the subscribe reply): the next
    /// publication must have `offset + 1`.
    pub fn after(offset: u64) -> Self {
        Self {
            last: Some(offset),
            ..Self::default()
        }
    }

    /// Records one publication offset.
    pub fn observe(&mut self, offset: u64) {
        self.received += 1;
        match self.last {
            Some(last) if offset <= last => self.out_of_order += 1,
            Some(last) => {
                self.missing_in_gaps += offset - last - 1;
                self.last = Some(offset);
            }
            None => self.last = Some(offset),
        }
    }

    /// No gap and no reordering so far.
    pub fn clean(&self) -> bool {
        self.missing_in_gaps == 0 && self.out_of_order == 0
    }
}

/// The JSON data of publication `seq` sent at `ts_us`, padded with `x` to about
/// `size` bytes (never shorter than the fields need).
pub fn payload(seq: u64, ts_us: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"ts\":{ts_us},\"pad\":\"");
    let fixed = head.len() + 2;
    let pad = size.saturating_sub(fixed);
    let mut s = String::with_capacity(fixed + pad);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Reads `seq` and `ts` back from a payload (as delivered: the server may have
/// adjusted whitespace, so this scans for the keys).
pub fn parse_payload(data: &[u8]) -> Option<(u64, u64)> {
    Some((number_after(data, &SEQ_KEY)?, number_after(data, &TS_KEY)?))
}

/// The searcher for a payload's `"seq":` key.
pub(crate) static SEQ_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
/// The searcher for a payload's `"ts":` key.
pub(crate) static TS_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ts\":"));

/// The unsigned number right after the first `key` in `data`.
///
/// A vectorised substring search with a searcher built once per key: it runs once per
/// delivery in the load generator, which shares the cores with the server measured (a
/// `windows(..).position(..)` scan, one `memcmp` call per byte, was a third of the
/// machine's CPU at 1.5 million deliveries/s; building the searcher per call, 7 %).
pub(crate) fn number_after(data: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(data)? + key.needle().len();
    let digits = data[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .try_fold(0u64, |acc, &b| {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })?;
    data[at..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .filter(|b| b.is_ascii_digit())
        .map(|_| digits)
}

/// Milliseconds since the Unix epoch (wall clock): several bench processes agree on
/// a moment ("drop at T") through it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Latency samples `(at_us, value_us)` split into windows relative to a moment `t0`:
/// the figures before an event, during it and after it, and a timeline.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    points: Vec<(u64, u64)>,
}

impl Samples {
    /// Adds the samples of one recorder.
    pub fn extend(&mut self, more: &[(u64, u64)]) {
        self.points.extend_from_slice(more);
    }

    /// Percentiles of the samples taken in `[from_us, to_us)`.
    pub fn window(&self, from_us: u64, to_us: u64) -> Percentiles {
        let mut h = new_histogram();
        for &(at, v) in &self.points {
            if at >= from_us && at < to_us {
                h.saturating_record(v.clamp(1, MAX_LATENCY_US));
            }
        }
        Percentiles::of(&h)
    }

    /// Consecutive windows of `step_us` from `from_us` up to `to_us` (the last one may
    /// be shorter): `(window start, percentiles)`.
    pub fn timeline(&self, from_us: u64, to_us: u64, step_us: u64) -> Vec<(u64, Percentiles)> {
        let step = step_us.max(1);
        let mut out = Vec::new();
        let mut at = from_us;
        while at < to_us {
            let end = (at + step).min(to_us);
            out.push((at, self.window(at, end)));
            at = end;
        }
        out
    }
}

/// Failures counted by kind (the first line of the error, with numbers that vary
/// from one connection to the next, such as ports, removed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorTally {
    kinds: std::collections::BTreeMap<String, u64>,
}

impl ErrorTally {
    /// Counts one failure.
    pub fn add(&mut self, error: &str) {
        *self.kinds.entry(error_kind(error)).or_default() += 1;
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &ErrorTally) {
        for (k, n) in &other.kinds {
            *self.kinds.entry(k.clone()).or_default() += n;
        }
    }

    /// Total failures.
    pub fn total(&self) -> u64 {
        self.kinds.values().sum()
    }

    /// `(kind, count)`, most frequent first.
    pub fn by_count(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// The kind of an error message: its last `: `-separated part (the root cause in an
/// anyhow chain printed with `{:#}`), digits replaced by `N`, at most 80 characters.
pub fn error_kind(error: &str) -> String {
    let root = error.rsplit(": ").next().unwrap_or(error);
    // Keep HTTP statuses, the useful number in an upgrade refusal.
    let keep_status = error.contains("upgrade refused");
    let base = if keep_status { error } else { root };
    let mut out = String::with_capacity(base.len().min(80));
    let mut last_digit = false;
    for c in base.chars() {
        if c.is_ascii_digit() && !keep_status {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
        if out.len() >= 80 {
            break;
        }
    }
    out
}

/// Quantile `q` (0..=1) of a sorted slice (nearest rank); 0 when empty.
pub fn quantile_sorted(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_samples() {
        let shards = LatencyShards::new(4);
        let values: Vec<u64> = (1..=10_000).collect();
        for (i, chunk) in values.chunks(100).enumerate() {
            shards.record(i, chunk);
        }
        let p = Percentiles::of(&shards.merged());
        assert_eq!(p.count, 10_000);
        // 3 significant digits: within 0.1 %.
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(p.p50, 5_000), "p50 {}", p.p50);
        assert!(near(p.p90, 9_000), "p90 {}", p.p90);
        assert!(near(p.p99, 9_900), "p99 {}", p.p99);
        assert!(near(p.p999, 9_990), "p999 {}", p.p999);
        assert!(near(p.max, 10_000), "max {}", p.max);
    }

    #[test]
    fn percentiles_tail_and_empty() {
        let shards = LatencyShards::new(1);
        let mut v = vec![100u64; 998];
        v.extend([50_000, 2_000_000]);
        shards.record(0, &v);
        let p = Percentiles::of(&shards.merged());
        assert_eq!(p.p50, 100);
        assert_eq!(p.p99, 100);
        assert!(p.p999 >= 49_950 && p.p999 <= 50_050, "p999 {}", p.p999);
        assert!(p.max >= 1_999_000, "max {}", p.max);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
        let taken = LatencyShards::new(2);
        taken.record(1, &[5, 6]);
        assert_eq!(taken.take().len(), 2);
        assert_eq!(taken.take().len(), 0);
        // Zero and huge values are clamped, not lost.
        shards.record(0, &[0, u64::MAX]);
        assert_eq!(shards.merged().len(), 1_002);
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(bytes_and_kib(2048), "2048 B (2.00 KiB)");
        assert_eq!(bytes_and_kib(-512), "-512 B (-0.50 KiB)");
    }

    #[test]
    fn order_check() {
        let mut c = OrderCheck::after(10);
        for o in [11, 12, 13] {
            c.observe(o);
        }
        assert!(c.clean());
        c.observe(16); // 14 and 15 lost
        assert_eq!(c.missing_in_gaps, 2);
        c.observe(16); // duplicate
        c.observe(15); // late
        assert_eq!(c.out_of_order, 2);
        assert_eq!(c.received, 6);
        assert!(!c.clean());
        let mut first = OrderCheck::after(0);
        first.observe(2);
        assert_eq!(first.missing_in_gaps, 1);
    }

    #[test]
    fn payload_round_trip() {
        for size in [0, 10, 100, 1000] {
            let p = payload(42, 123_456, size);
            assert!(p.len() >= size);
            if size > 40 {
                assert_eq!(p.len(), size);
            }
            serde_json::from_str::<serde_json::Value>(&p).expect("valid JSON");
            assert_eq!(parse_payload(p.as_bytes()), Some((42, 123_456)));
        }
        assert_eq!(parse_payload(b"{ \"seq\": 7, \"ts\": 9 }"), Some((7, 9)));
        assert_eq!(parse_payload(b"{\"seq\":\"x\",\"ts\":1}"), None);
        assert_eq!(parse_payload(b"{\"ts\":1}"), None);
        assert_eq!(
            parse_payload(b"{\"seq\":99999999999999999999999,\"ts\":1}"),
            None
        );
    }

    #[test]
    fn sample_windows_and_timeline() {
        let mut s = Samples::default();
        let points: Vec<(u64, u64)> = (0..100).map(|i| (i * 10, i + 1)).collect();
        s.extend(&points);
        let w = s.window(0, 500); // values 1..=50
        assert_eq!(w.count, 50);
        assert_eq!(w.max, 50);
        assert_eq!(w.p50, 25);
        assert_eq!(s.window(2000, 3000), Percentiles::default());
        let t = s.timeline(0, 1000, 300);
        assert_eq!(
            t.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            vec![0, 300, 600, 900]
        );
        assert_eq!(t.iter().map(|(_, p)| p.count).sum::<u64>(), 100);
        assert_eq!(t[3].1.count, 10);
        assert!(s.timeline(5, 5, 10).is_empty());
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            error_kind(
                "connecting to 127.0.0.1:4000 from Some(127.0.0.3): Connection refused (os error 111)"
            ),
            "Connection refused (os error N)"
        );
        assert_eq!(
            error_kind("upgrade refused: HTTP/1.1 503 Service Unavailable"),
            "upgrade refused: HTTP/1.1 503 Service Unavailable"
        );
        let mut t = ErrorTally::default();
        t.add("a: timed out");
        t.add("b: timed out");
        t.add("reset by peer (os error 104)");
        let mut u = ErrorTally::default();
        u.add("x: timed out");
        t.merge(&u);
        assert_eq!(t.total(), 4);
        assert_eq!(
            t.by_count(),
            vec![("timed out", 3), ("reset by peer (os error N)", 1)]
        );
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile_sorted(&v, 0.5), 50);
        assert_eq!(quantile_sorted(&v, 0.99), 99);
        assert_eq!(quantile_sorted(&v, 1.0), 100);
        assert_eq!(quantile_sorted(&v, 0.0), 1);
        assert_eq!(quantile_sorted(&[], 0.5), 0);
        assert_eq!(quantile_sorted(&[7], 0.99), 7);
    }
}
