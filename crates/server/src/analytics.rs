//! `POST /api/analytics`: traffic, top channels and publishers, connections, disconnects
//! by close code and publish latency over a recent window.
//!
//! Two sources. With the archive (`archive.enabled`) the cluster-wide numbers come from
//! PostgreSQL through `starling_archive::analytics` (the same SQL functions the
//! documented views use). Without it the node answers from its own counters: a
//! [`Ring`] of per-minute [`Snapshot`]s of the metrics (the last [`RING_MINUTES`]
//! minutes), taken by [`run_sampler`], plus a live reading for the current, partial
//! minute, so that what was published a second ago already shows; the top channels and
//! publishers are counted from a single node's message log, read from the position the
//! ring recorded at the window's start (a bounded scan that says when it was cut).
//! Publish latency and the current connection count always come from the node:
//! PostgreSQL does not have them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};
use starling_archive::analytics::{self as pg, Bucket as PgBucket, Window};
use starling_archive::{ArchiveError, tokio_postgres};
use starling_core::metrics::{BUCKET_BOUNDS_NS, BUCKETS};
use starling_log::{Log, ReadError};

use crate::app::AppState;
use crate::metrics::{Reading, close_codes};

/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60_000;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;
/// Minutes the node keeps (without the archive it answers at most this far back).
pub const RING_MINUTES: usize = 60;

/// Milliseconds since the Unix epoch, now (0 before 1970: a broken clock reads as the
/// start, not as a panic).
pub fn now_ms() -> u64 {
    millis(SystemTime::now())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The node's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The cumulative counters.
    pub counters: Reading,
    /// Connections open at `at_ms`.
    pub connections: u64,
    /// The most connections open at once since the previous snapshot (a running
    /// maximum the registry raises on every connect, so a burst between two snapshots
    /// is not missed).
    pub peak: u64,
    /// The message log's synced position at `at_ms` (a single node with a log): where
    /// the top lists start reading for a window beginning here.
    pub log_position: Option<u64>,
}

impl Snapshot {
    /// Reads `state`'s counters at `at_ms`. `new_period`: the snapshot closes a period of
    /// the ring (the registry's running peak restarts); a live reading for an answer
    /// leaves it running.
    pub fn take(state: &AppState, at_ms: u64, new_period: bool) -> Snapshot {
        let peak = if new_period {
            state.registry.take_peak()
        } else {
            state.registry.peak()
        };
        Snapshot {
            at_ms,
            counters: state.metrics.reading(),
            connections: state.registry.connections() as u64,
            peak: peak as u64,
            log_position: top_source(state).map(|log| log.synced_position()),
        }
    }
}

/// What happened between two snapshots (or, after [`group`], in one bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// Start (the earlier snapshot; after [`group`], the bucket's start).
    pub start_ms: u64,
    /// End (the later snapshot).
    pub end_ms: u64,
    /// Per namespace slot: publications, bytes.
    pub namespaces: Vec<(u64, u64)>,
    /// Publish-latency observations per histogram bucket.
    pub latency: [u64; BUCKETS],
    /// Connections accepted.
    pub connects: u64,
    /// Disconnects per close code (`crate::metrics::close_codes` order).
    pub closes: Vec<u64>,
    /// The most connections open at once.
    pub peak: u64,
    /// Connections open at the end.
    pub at_end: u64,
}

/// The difference of two snapshots, `a` before `b`. Counters only grow; a saturating
/// difference keeps a torn reading (count read before bytes) from wrapping around.
fn interval(a: &Snapshot, b: &Snapshot) -> Interval {
    let sub = |x: &[u64], y: &[u64]| -> Vec<u64> {
        y.iter().zip(x).map(|(y, x)| y.saturating_sub(*x)).collect()
    };
    Interval {
        start_ms: a.at_ms,
        end_ms: b.at_ms,
        namespaces: b
            .counters
            .namespaces
            .iter()
            .zip(&a.counters.namespaces)
            .map(|(y, x)| (y.0.saturating_sub(x.0), y.1.saturating_sub(x.1)))
            .collect(),
        latency: std::array::from_fn(|i| {
            b.counters.latency[i].saturating_sub(a.counters.latency[i])
        }),
        connects: b.counters.connects.saturating_sub(a.counters.connects),
        closes: sub(&a.counters.closes, &b.counters.closes),
        peak: b.peak.max(b.connections),
        at_end: b.connections,
    }
}

/// The last snapshots of a node, one per period (a minute in production).
#[derive(Debug)]
pub struct Ring {
    period_ms: u64,
    /// Snapshots kept: one more than the intervals answered.
    capacity: usize,
    snapshots: Mutex<VecDeque<Snapshot>>,
}

impl Ring {
    /// A ring taking a snapshot every `period` (aligned on multiples of it since the
    /// Unix epoch, so minutes are UTC minutes) and answering the last `intervals`
    /// periods, starting from `baseline` (the counters when the node started).
    pub fn new(period: Duration, intervals: usize, baseline: Snapshot) -> Ring {
        let capacity = intervals.saturating_add(1);
        let mut snapshots = VecDeque::with_capacity(capacity);
        snapshots.push_back(baseline);
        Ring {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1),
            capacity,
            snapshots: Mutex::new(snapshots),
        }
    }

    /// When the first snapshot after `now_ms` is due: the next multiple of the period.
    pub fn next_due(&self, now_ms: u64) -> u64 {
        (now_ms / self.period_ms)
            .saturating_add(1)
            .saturating_mul(self.period_ms)
    }

    /// Adds a snapshot, forgetting the oldest beyond the capacity. One not after the
    /// newest (the wall clock went back) is dropped: intervals must not overlap.
    pub fn push(&self, snapshot: Snapshot) {
        let mut snapshots = self.snapshots.lock();
        if snapshots
            .back()
            .is_some_and(|last| last.at_ms >= snapshot.at_ms)
        {
            return;
        }
        snapshots.push_back(snapshot);
        while snapshots.len() > self.capacity {
            snapshots.pop_front();
        }
    }

    /// The log position to read from for a window starting at `from_ms`: the one of the
    /// newest snapshot at or before it (so the read covers the window), else of the
    /// oldest snapshot (the window reaches back past the ring).
    pub fn log_position_at(&self, from_ms: u64) -> Option<u64> {
        let snapshots = self.snapshots.lock();
        snapshots
            .iter()
            .rev()
            .find(|s| s.at_ms <= from_ms)
            .or(snapshots.front())
            .and_then(|s| s.log_position)
    }

    /// When the oldest snapshot was taken: the node answers nothing before.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.snapshots.lock().front().map(|s| s.at_ms)
    }

    /// The intervals between consecutive snapshots that end after `from_ms`, then the
    /// one from the newest snapshot to `live` (the current, partial period) when given
    /// and later.
    pub fn intervals(&self, from_ms: u64, live: Option<&Snapshot>) -> Vec<Interval> {
        let snapshots = self.snapshots.lock();
        let mut out: Vec<Interval> = snapshots
            .iter()
            .zip(snapshots.iter().skip(1))
            .filter(|(_, b)| b.at_ms > from_ms)
            .map(|(a, b)| interval(a, b))
            .collect();
        if let (Some(last), Some(live)) = (snapshots.back(), live)
            && live.at_ms > last.at_ms
            && live.at_ms > from_ms
        {
            out.push(interval(last, live));
        }
        out
    }
}

/// Sums intervals into buckets of `bucket_ms` by their start (labelled with the bucket's
/// start): counts add up, the peak is the largest, `at_end` the last one's.
pub fn group(intervals: &[Interval], bucket_ms: u64) -> Vec<Interval> {
    let bucket_ms = bucket_ms.max(1);
    let mut out: Vec<Interval> = Vec::new();
    for i in intervals {
        let start = i.start_ms / bucket_ms * bucket_ms;
        match out.last_mut() {
            Some(g) if g.start_ms == start => {
                g.end_ms = i.end_ms;
                for (sum, n) in g.namespaces.iter_mut().zip(&i.namespaces) {
                    sum.0 += n.0;
                    sum.1 += n.1;
                }
                for (sum, n) in g.latency.iter_mut().zip(&i.latency) {
                    *sum += n;
                }
                g.connects += i.connects;
                for (sum, n) in g.closes.iter_mut().zip(&i.closes) {
                    *sum += n;
                }
                g.peak = g.peak.max(i.peak);
                g.at_end = i.at_end;
            }
            _ => out.push(Interval {
                start_ms: start,
                ..i.clone()
            }),
        }
    }
    out
}

/// The `q` quantile (0..=1) in seconds of a histogram given as observations per bucket
/// of [`BUCKET_BOUNDS_NS`] (`+Inf` last), as Prometheus' `histogram_quantile` computes
/// it: linear within the bucket holding the rank (from 0 for the first bucket), the
/// highest finite bound when the rank falls in `+Inf`. `None` without observations.
pub fn quantile(q: f64, counts: &[u64; BUCKETS]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        let through = below + n;
        if n > 0 && through as f64 >= rank {
            let Some(&upper) = BUCKET_BOUNDS_NS.get(i) else {
                return BUCKET_BOUNDS_NS.last().map(|&b| b as f64 / 1e9);
            };
            let lower = match i.checked_sub(1) {
                Some(j) => BUCKET_BOUNDS_NS[j],
                None => 0,
            };
            let fraction = (rank - below as f64) / n as f64;
            let ns = lower as f64 + (upper - lower) as f64 * fraction;
            return Some(ns / 1e9);
        }
        below = through;
    }
    None
}

/// Bucket width of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// A UTC minute.
    Minute,
    /// A UTC hour.
    Hour,
}

impl Width {
    /// The default for a window: minutes up to 6 hours, hours beyond.
    pub fn for_window(window: Duration) -> Width {
        if window <= Duration::from_secs(6 * 3600) {
            Width::Minute
        } else {
            Width::Hour
        }
    }

    fn ms(self) -> u64 {
        match self {
            Width::Minute => MINUTE_MS,
            Width::Hour => HOUR_MS,
        }
    }

    /// The name in requests and answers.
    pub fn name(self) -> &'static str {
        match self {
            Width::Minute => "minute",
            Width::Hour => "hour",
        }
    }

    fn postgres(self) -> PgBucket {
        match self {
            Width::Minute => PgBucket::Minute,
            Width::Hour => PgBucket::Hour,
        }
    }
}

/// A validated `/api/analytics` request.
#[derive(Debug, Clone)]
pub struct Query {
    /// How far back from now.
    pub window: Duration,
    /// Bucket width of the time series.
    pub width: Width,
    /// Rows of the top lists.
    pub limit: u32,
    /// Only this namespace's traffic.
    pub namespace: Option<String>,
}

/// What the node says without the archive about its sources.
const NODE_NOTE: &str = "source node: this node's counters, at most the last 60 minutes, per minute; \
     events_by_code counts the disconnects this node sent or saw a close code for (clients \
     closing without a code are not counted); ";

/// Where the node's top lists come from without the archive: a single node's message
/// log, which holds every publication (a cluster node's journal holds only its own).
fn top_source(state: &AppState) -> Option<&Arc<Log>> {
    full_log(state.journal.as_ref(), state.engine.is_some())
}

/// The log that holds every publication of the node's streams: a single node's
/// (`clustered` false) message log, if it keeps one.
pub fn full_log(
    journal: Option<&Arc<crate::journal::LogJournal>>,
    clustered: bool,
) -> Option<&Arc<Log>> {
    journal.filter(|_| !clustered).map(|j| j.log())
}

/// Most log records one answer reads for its top lists (a bounded scan per request; it
/// reads from the window's start, so a cut scan misses the newest, and says so).
const TOP_SCAN_RECORDS: u64 = 1_000_000;
/// Most distinct channels, and publishers, one answer counts.
const TOP_KEYS: usize = 100_000;

/// Top channels and publishers counted from the message log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogTops {
    /// (channel, publications, bytes), most first.
    pub channels: Vec<(String, u64, u64)>,
    /// (user, publications, bytes), most first; `None`: publications without a user.
    pub publishers: Vec<(Option<String>, u64, u64)>,
    /// Records read.
    pub scanned: u64,
    /// Whether every record of the window was counted (no scan or key bound reached,
    /// nothing deleted by retention inside the window).
    pub complete: bool,
}

/// Counts the publications of `log` from position `from`, published at `from_ms` or
/// later, up to the synced end, by channel and by publisher; the `limit` largest of
/// each, ordered as the archive orders them (publications, then bytes, then name).
/// Blocking (file reads): run it off the runtime workers.
pub fn tops_from_log(
    log: &Log,
    from: u64,
    from_ms: u64,
    limit: usize,
) -> Result<LogTops, ReadError> {
    let end = log.synced_position();
    let mut reader = match log.reader(from) {
        Err(ReadError::Ahead { .. }) => log.reader(0)?,
        other => other?,
    };
    let mut channels: HashMap<String, (u64, u64)> = HashMap::new();
    let mut publishers: HashMap<Option<String>, (u64, u64)> = HashMap::new();
    let (mut scanned, mut complete) = (0u64, true);
    'read: while reader.position() < end {
        let batch = reader.next_batch(1000, 4 * 1024 * 1024)?;
        if batch.gap.is_some() && scanned > 0 {
            // Retention deleted records while we read: some of the window is gone.
            complete = false;
        }
        if batch.is_empty() && batch.gap.is_none() {
            break;
        }
        for (_, record) in batch.records {
            if scanned >= TOP_SCAN_RECORDS {
                complete = false;
                break 'read;
            }
            scanned += 1;
            if record.payload.is_empty() || record.time_ms < from_ms {
                continue;
            }
            let Some(publication) = crate::journal::decode(&record) else {
                continue;
            };
            let size = publication.data.len() as u64;
            let user = publication.info.map(|i| i.user).filter(|u| !u.is_empty());
            let room = channels.len() < TOP_KEYS && publishers.len() < TOP_KEYS;
            if let Some(c) = channels.get_mut(&record.channel) {
                *c = (c.0 + 1, c.1 + size);
            } else if room {
                channels.insert(record.channel, (1, size));
            } else {
                complete = false;
            }
            if let Some(p) = publishers.get_mut(&user) {
                *p = (p.0 + 1, p.1 + size);
            } else if room {
                publishers.insert(user, (1, size));
            } else {
                complete = false;
            }
        }
    }
    fn largest<K: Ord>(map: HashMap<K, (u64, u64)>, limit: usize) -> Vec<(K, u64, u64)> {
        let mut rows: Vec<(K, u64, u64)> = map.into_iter().map(|(k, (m, b))| (k, m, b)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        rows.truncate(limit);
        rows
    }
    Ok(LogTops {
        channels: largest(channels, limit),
        publishers: largest(publishers, limit),
        scanned,
        complete,
    })
}

/// The top lists of the node's answer, and what the note says about them.
async fn node_tops(state: &AppState, from_ms: u64, limit: u32) -> (Value, Value, String) {
    let empty = || (json!([]), json!([]));
    let Some(log) = top_source(state).cloned() else {
        let (c, p) = empty();
        let why = if state.engine.is_some() {
            "top_channels and top_publishers need the archive (archive.enabled) in a cluster"
        } else {
            "top_channels and top_publishers need the message log (storage.dir) or the archive"
        };
        return (c, p, why.into());
    };
    let from = state.analytics.log_position_at(from_ms).unwrap_or(0);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let counted =
        tokio::task::spawn_blocking(move || tops_from_log(&log, from, from_ms, limit)).await;
    let tops = match counted {
        Ok(Ok(tops)) => tops,
        Ok(Err(e)) => {
            let (c, p) = empty();
            return (
                c,
                p,
                format!("top lists: the message log cannot be read: {e}"),
            );
        }
        Err(e) => {
            let (c, p) = empty();
            return (c, p, format!("top lists: the log scan failed: {e}"));
        }
    };
    let channels = tops
        .channels
        .iter()
        .map(|(channel, messages, bytes)| {
            json!({
                "channel": channel, "namespace": starling_archive::namespace_of(channel),
                "messages": messages, "bytes": bytes,
            })
        })
        .collect();
    let publishers = tops
        .publishers
        .iter()
        .map(|(user, messages, bytes)| json!({"user": user, "messages": messages, "bytes": bytes}))
        .collect();
    let note = if tops.complete {
        format!(
            "top_channels and top_publishers counted from this node's message log ({} records \
             read; publications the log's retention already deleted are not counted)",
            tops.scanned
        )
    } else {
        format!(
            "top_channels and top_publishers are PARTIAL: counted from the first {} records of \
             the window in this node's message log (a bounded scan; the archive answers in full)",
            tops.scanned
        )
    };
    (Value::Array(channels), Value::Array(publishers), note)
}

/// The publish-latency p99 per bucket, from the node's intervals.
fn latency_json(groups: &[Interval]) -> Vec<Value> {
    groups
        .iter()
        .filter_map(|g| {
            quantile(0.99, &g.latency).map(|s| json!({"time_ms": g.start_ms, "seconds": s}))
        })
        .collect()
}

/// The node's intervals over the window ending now, grouped: (covered from, groups).
fn node_groups(state: &AppState, query: &Query, now: u64) -> (u64, Vec<Interval>) {
    let window_ms = u64::try_from(query.window.as_millis()).unwrap_or(u64::MAX);
    let from = now.saturating_sub(window_ms);
    let live = Snapshot::take(state, now, false);
    let intervals = state.analytics.intervals(from, Some(&live));
    let covered = state.analytics.oldest_ms().unwrap_or(now).max(from);
    (covered, group(&intervals, query.width.ms()))
}

/// The answer from the node's own counters and its message log (no archive).
pub async fn node_answer(state: &AppState, query: &Query) -> Value {
    let now = now_ms();
    let (from, groups) = node_groups(state, query, now);
    let (top_channels, top_publishers, top_note) = node_tops(state, from, query.limit).await;
    let labels: Vec<&str> = state.namespaces.metric_labels().collect();
    let mut traffic = Vec::new();
    for g in &groups {
        for (label, (messages, bytes)) in labels.iter().zip(&g.namespaces) {
            if *messages == 0 || query.namespace.as_deref().is_some_and(|ns| ns != *label) {
                continue;
            }
            traffic.push(json!({
                "time_ms": g.start_ms, "namespace": label, "messages": messages, "bytes": bytes,
            }));
        }
    }
    let peaks: Vec<Value> = groups
        .iter()
        .map(|g| json!({"time_ms": g.start_ms, "peak": g.peak, "at_end": g.at_end}))
        .collect();
    let connects: u64 = groups.iter().map(|g| g.connects).sum();
    let mut closes: Vec<(u16, u64)> = close_codes()
        .enumerate()
        .map(|(i, code)| (code, groups.iter().filter_map(|g| g.closes.get(i)).sum()))
        .filter(|(_, n)| *n > 0)
        .collect();
    // Most first, as the archive orders them; the sort is stable, so ties by code.
    closes.sort_by_key(|c| std::cmp::Reverse(c.1));
    let mut events = Vec::new();
    if connects > 0 {
        events.push(json!({"kind": "connect", "code": null, "events": connects}));
    }
    events.extend(
        closes
            .into_iter()
            .map(|(code, n)| json!({"kind": "disconnect", "code": code, "events": n})),
    );
    json!({
        "source": "node",
        "note": format!("{NODE_NOTE}{top_note}"),
        "from_ms": from,
        "to_ms": now,
        "bucket": query.width.name(),
        "traffic": traffic,
        "top_channels": top_channels,
        "top_publishers": top_publishers,
        "connections": {"current": state.registry.connections(), "peaks": peaks},
        "events_by_code": events,
        "publish_latency_p99": latency_json(&groups),
    })
}

/// The answer from PostgreSQL on `client` (one connection for all five queries), with
/// the node's latency and current connections.
pub async fn archive_answer(
    state: &AppState,
    client: &tokio_postgres::Client,
    query: &Query,
) -> Result<Value, ArchiveError> {
    let now = now_ms();
    let window_ms = u64::try_from(query.window.as_millis()).unwrap_or(u64::MAX);
    let from = now.saturating_sub(window_ms);
    let window = Window {
        from: UNIX_EPOCH + Duration::from_millis(from),
        to: UNIX_EPOCH + Duration::from_millis(now),
    };
    let width = query.width.postgres();
    let traffic = pg::namespace_traffic(client, window, width, query.namespace.as_deref()).await?;
    let channels = pg::top_channels(client, window, query.limit).await?;
    let publishers = pg::top_publishers(client, window, query.limit).await?;
    let events = pg::events_by_code(client, window).await?;
    let peaks = pg::peak_connections(client, window, width).await?;
    let (_, groups) = node_groups(state, query, now);
    Ok(json!({
        "source": "archive",
        "from_ms": from,
        "to_ms": now,
        "bucket": query.width.name(),
        "traffic": traffic.iter().map(|t| json!({
            "time_ms": millis(t.bucket), "namespace": t.namespace,
            "messages": t.messages, "bytes": t.bytes,
        })).collect::<Vec<_>>(),
        "top_channels": channels.iter().map(|c| json!({
            "channel": c.channel, "namespace": c.namespace,
            "messages": c.messages, "bytes": c.bytes,
        })).collect::<Vec<_>>(),
        "top_publishers": publishers.iter().map(|p| json!({
            "user": p.user_id, "messages": p.messages, "bytes": p.bytes,
        })).collect::<Vec<_>>(),
        "connections": {
            "current": state.registry.connections(),
            "peaks": peaks.iter().map(|p| json!({
                "time_ms": millis(p.bucket), "peak": p.peak, "at_end": p.at_end,
            })).collect::<Vec<_>>(),
        },
        "events_by_code": events.iter().map(|e| json!({
            "kind": e.kind.as_str(), "code": e.code, "events": e.events,
        })).collect::<Vec<_>>(),
        "publish_latency_p99": latency_json(&groups),
    }))
}

/// Takes a snapshot into `state.analytics` at every period boundary, until the node is
/// gone. Reading the counters is a few hundred relaxed loads and two short registry
/// locks: fine on a runtime worker.
pub async fn run_sampler(state: Weak<AppState>) {
    loop {
        let Some(due) = state.upgrade().map(|s| s.analytics.next_due(now_ms())) else {
            return;
        };
        // The wall clock decides (minutes are UTC minutes); a clock step is met at the
        // next boundary.
        let wait = due.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let Some(state) = state.upgrade() else { return };
        let snapshot = Snapshot::take(&state, now_ms(), true);
        state.analytics.push(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at_ms: u64, messages: u64, latency_bucket: usize, connections: u64) -> Snapshot {
        let mut latency = [0; BUCKETS];
        latency[latency_bucket] = messages;
        Snapshot {
            at_ms,
            counters: Reading {
                namespaces: vec![(messages, messages * 10), (0, 0)],
                latency,
                connects: connections,
                closes: vec![0; close_codes().count()],
            },
            connections,
            peak: connections + 1,
            log_position: Some(at_ms / 1000),
        }
    }

    /// The top lists count the window's publications in the log by channel and by
    /// publisher, skip older ones and epoch records, order as the archive does, and say
    /// when a bounded scan was cut.
    #[test]
    fn top_lists_from_the_log() {
        use starling_log::{LogConfig, Record};
        use starling_protocol::{ClientInfo, Publication};
        let dir = std::env::temp_dir().join(format!("starling-tops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (log, _) = Log::open(LogConfig::new(&dir), |_| {}).expect("log");
        let now = now_ms();
        let mut offset = 0;
        let mut append = |channel: &str, user: Option<&str>, data: &str, time_ms: u64| {
            offset += 1;
            let publication = Publication {
                data: bytes::Bytes::from(data.to_string()),
                offset,
                info: user.map(|u| ClientInfo {
                    user: u.into(),
                    client: "c1".into(),
                    conn_info: None,
                    chan_info: None,
                }),
                ..Publication::default()
            };
            let record = Record {
                channel: channel.into(),
                epoch: "e".into(),
                offset,
                time_ms,
                payload: crate::journal::encode(channel, &publication),
            };
            log.append_blocking(record, false).expect("append");
        };
        append(
            "chat:old",
            Some("mallory"),
            "before the window",
            now - 120_000,
        );
        for data in ["1", "22", "333"] {
            append("chat:a", Some("alice"), data, now);
        }
        append("b", Some("bob"), "4444", now);
        append("c", None, "55", now);
        append("c", None, "6", now);
        log.append_blocking(
            Record {
                channel: "c".into(),
                epoch: "e2".into(),
                offset,
                time_ms: now,
                payload: bytes::Bytes::new(),
            },
            false,
        )
        .expect("epoch record");
        log.sync().expect("sync");

        let tops = tops_from_log(&log, 0, now - 60_000, 2).expect("tops");
        assert_eq!(
            tops.channels,
            vec![("chat:a".to_string(), 3, 6), ("c".to_string(), 2, 3)]
        );
        assert_eq!(
            tops.publishers,
            vec![(Some("alice".to_string()), 3, 6), (None, 2, 3)]
        );
        assert_eq!((tops.scanned, tops.complete), (8, true));
        // Publications first: the anonymous 2 before bob's 1, though bob sent more bytes.
        let all = tops_from_log(&log, 0, now - 60_000, 10).expect("tops");
        assert_eq!(all.publishers[2], (Some("bob".to_string()), 1, 4));
        assert_eq!(all.channels.len(), 3);
        // From a later position: only what follows it.
        let later = tops_from_log(&log, 4, now - 60_000, 10).expect("tops");
        assert_eq!(
            later.channels,
            vec![("c".to_string(), 2, 3), ("b".to_string(), 1, 4)]
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The log position for a window: the newest snapshot at or before its start, else
    /// the oldest.
    #[test]
    fn the_ring_finds_where_a_window_starts_in_the_log() {
        let ring = Ring::new(Duration::from_secs(60), 3, snapshot(60_000, 0, 0, 0));
        ring.push(snapshot(120_000, 0, 0, 0));
        ring.push(snapshot(180_000, 0, 0, 0));
        assert_eq!(ring.log_position_at(150_000), Some(120));
        assert_eq!(ring.log_position_at(180_000), Some(180));
        assert_eq!(
            ring.log_position_at(10_000),
            Some(60),
            "before the ring: its oldest"
        );
    }

    /// The ring keeps `intervals` periods, differences consecutive snapshots, adds the
    /// live partial period, and drops a snapshot that is not later than the last.
    #[test]
    fn the_ring_differences_snapshots_and_forgets_the_oldest() {
        let ring = Ring::new(Duration::from_secs(60), 2, snapshot(0, 0, 0, 0));
        assert_eq!(ring.next_due(0), 60_000);
        assert_eq!(ring.next_due(59_999), 60_000);
        assert_eq!(ring.next_due(60_000), 120_000);
        ring.push(snapshot(60_000, 5, 3, 2));
        ring.push(snapshot(120_000, 12, 3, 1));
        ring.push(snapshot(100_000, 99, 3, 1)); // not later: dropped
        let all = ring.intervals(0, None);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].start_ms, all[0].end_ms), (0, 60_000));
        assert_eq!(all[0].namespaces, vec![(5, 50), (0, 0)]);
        assert_eq!(all[1].namespaces, vec![(7, 70), (0, 0)]);
        assert_eq!((all[1].peak, all[1].at_end, all[1].connects), (2, 1, 0));
        ring.push(snapshot(180_000, 20, 3, 1));
        assert_eq!(ring.oldest_ms(), Some(60_000), "capacity: 2 intervals");
        let live = snapshot(190_000, 23, 3, 4);
        let recent = ring.intervals(120_000, Some(&live));
        assert_eq!(
            recent
                .iter()
                .map(|i| (i.start_ms, i.namespaces[0].0))
                .collect::<Vec<_>>(),
            vec![(120_000, 8), (180_000, 3)],
            "the interval ending at the window's start is out; the live one is in"
        );
        assert_eq!(recent[1].peak, 5);
    }

    /// Grouping by hour sums the minutes, keeps the largest peak and the last count.
    #[test]
    fn grouping_sums_into_buckets() {
        let ring = Ring::new(
            Duration::from_secs(60),
            RING_MINUTES,
            snapshot(HOUR_MS - 2 * MINUTE_MS, 0, 0, 0),
        );
        ring.push(snapshot(HOUR_MS - MINUTE_MS, 4, 0, 9));
        ring.push(snapshot(HOUR_MS, 6, 0, 3));
        ring.push(snapshot(HOUR_MS + MINUTE_MS, 7, 0, 2));
        let hours = group(&ring.intervals(0, None), HOUR_MS);
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0].start_ms, 0);
        assert_eq!(hours[0].namespaces[0], (6, 60));
        assert_eq!((hours[0].peak, hours[0].at_end), (10, 3));
        assert_eq!(hours[1].start_ms, HOUR_MS);
        assert_eq!(hours[1].namespaces[0], (1, 10));
    }

    /// Quantiles interpolate within the bucket holding the rank, as Prometheus does.
    #[test]
    fn quantiles_of_known_histograms() {
        let mut counts = [0; BUCKETS];
        assert_eq!(quantile(0.99, &counts), None);
        // 100 observations in (1 ms, 2.5 ms]: p99 is 99% of the way through it.
        counts[7] = 100;
        let p99 = quantile(0.99, &counts).expect("p99");
        assert!((p99 - (0.001 + 0.0015 * 0.99)).abs() < 1e-12, "{p99}");
        // 98 fast ones in the first bucket (0, 10 µs], 2 in (1 ms, 2.5 ms]: the rank 99
        // is the first of the two slow ones' bucket, half way.
        counts = [0; BUCKETS];
        counts[0] = 98;
        counts[7] = 2;
        let p99 = quantile(0.99, &counts).expect("p99");
        assert!((p99 - 0.00175).abs() < 1e-12, "{p99}");
        let p50 = quantile(0.5, &counts).expect("p50");
        assert!((p50 - 0.00001 * 50.0 / 98.0).abs() < 1e-12, "{p50}");
        // Beyond the last bound: the last bound.
        counts = [0; BUCKETS];
        counts[BUCKETS - 1] = 1;
        assert_eq!(quantile(0.99, &counts), Some(5.0));
    }

    /// The difference of two readings is the histogram of what came in between.
    #[test]
    fn the_quantile_of_a_difference() {
        let mut a = snapshot(0, 0, 0, 0);
        a.counters.latency[0] = 1000; // old and fast
        let mut b = a.clone();
        b.at_ms = 60_000;
        b.counters.latency[12] = 10; // (50 ms, 100 ms]
        let i = interval(&a, &b);
        let p99 = quantile(0.99, &i.latency).expect("p99");
        assert!((p99 - (0.05 + 0.05 * 0.99)).abs() < 1e-12, "{p99}");
    }
}
