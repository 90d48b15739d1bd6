//! Server-level counters and the Prometheus text rendering of all counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use starling_core::Histogram;
use starling_core::metrics::escape_label;

use crate::app::AppState;
use crate::limits::Limit;

/// Where a publication came from: the `source` label of
/// `starling_publish_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The HTTP API (`/api/publish`, `/api/broadcast`).
    Api = 0,
    /// A client's `publish` command.
    Client = 1,
}

impl Source {
    const ALL: [Source; 2] = [Source::Api, Source::Client];

    fn label(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Client => "client",
        }
    }
}

/// How a subscribe with `recover` ended: the `outcome` label of
/// `starling_recoveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The missed publications came with the subscribe reply (possibly none).
    Recovered = 0,
    /// They could not: another epoch (the stream started over) or no longer in history.
    NotRecovered = 1,
    /// They were more than the reply may carry (half of `client.max_queue_bytes`): the
    /// client pages through history instead.
    TooLarge = 2,
}

impl Recovery {
    const ALL: [Recovery; 3] = [
        Recovery::Recovered,
        Recovery::NotRecovered,
        Recovery::TooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            Recovery::Recovered => "recovered",
            Recovery::NotRecovered => "not_recovered",
            Recovery::TooLarge => "too_large",
        }
    }
}

/// The metrics of one namespace slot (see `Namespaces::metric_slots`).
#[derive(Debug, Default)]
struct NamespaceMetrics {
    /// Publish latency, indexed by [`Source`].
    publish: [Histogram; 2],
    /// Payload bytes of the publications accepted.
    bytes: AtomicU64,
    /// Recoveries, indexed by [`Recovery`].
    recoveries: [AtomicU64; 3],
}

/// Close and error codes counted individually; others land in `other`.
const CODES: &[u16] = &[
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4000, 4001, 4002, 4003, 4004, 4005, 4500, 4501,
    4502, 4503, 4504, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114,
    115, 116,
];

/// Counters kept by the server (the hub keeps its own).
#[derive(Debug)]
pub struct Metrics {
    /// WebSocket connections accepted (counter).
    pub connections_accepted: AtomicU64,
    /// Upgrade requests refused (bad handshake, origin, draining).
    pub upgrades_refused: AtomicU64,
    /// WebSocket messages received from clients.
    pub messages_in: AtomicU64,
    /// Bytes received from clients (WebSocket payload and framing).
    pub bytes_in: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_written: AtomicU64,
    /// HTTP API requests.
    pub api_requests: AtomicU64,
    /// Upgrades that waited for admission (`server.admission_rate`).
    pub upgrades_paced: AtomicU64,
    /// Pongs that replaced an unsent pong instead of queueing (a peer pinging faster
    /// than it reads).
    pub pongs_coalesced: AtomicU64,
    /// Refusals by limit, indexed like [`Limit::ALL`].
    limit_refusals: [AtomicU64; Limit::ALL.len()],
    errors: Vec<AtomicU64>,
    other_errors: AtomicU64,
    /// Per namespace slot (`NamespaceOptions::index`).
    namespaces: Box<[NamespaceMetrics]>,
}

impl Default for Metrics {
    /// Metrics without namespace slots (the per-namespace ones are not kept).
    fn default() -> Self {
        Self::new(0)
    }
}

impl Metrics {
    /// Metrics with `namespace_slots` namespace slots (`Namespaces::metric_slots`).
    pub fn new(namespace_slots: usize) -> Self {
        Self {
            connections_accepted: AtomicU64::new(0),
            upgrades_refused: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            upgrades_paced: AtomicU64::new(0),
            pongs_coalesced: AtomicU64::new(0),
            limit_refusals: Default::default(),
            errors: CODES.iter().map(|_| AtomicU64::new(0)).collect(),
            other_errors: AtomicU64::new(0),
            namespaces: (0..namespace_slots)
                .map(|_| NamespaceMetrics::default())
                .collect(),
        }
    }

    /// Counts a publication of `bytes` accepted in namespace slot `namespace`, `elapsed`
    /// after it arrived from `source` (lock-free: three relaxed atomic adds).
    pub fn published(&self, namespace: u16, source: Source, elapsed: Duration, bytes: usize) {
        if let Some(ns) = self.namespaces.get(usize::from(namespace)) {
            ns.publish[source as usize].observe(elapsed);
            ns.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Counts a recovery's outcome in namespace slot `namespace`.
    pub fn recovery(&self, namespace: u16, outcome: Recovery) {
        if let Some(ns) = self.namespaces.get(usize::from(namespace)) {
            ns.recoveries[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one error reply or disconnect with `code`.
    pub fn error(&self, code: u32) {
        match CODES.iter().position(|c| u32::from(*c) == code) {
            Some(i) => self.errors[i].fetch_add(1, Ordering::Relaxed),
            None => self.other_errors.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Counts one refusal by `limit`.
    pub fn refused(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            self.limit_refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads the counters the node's own analytics difference (`crate::analytics`):
    /// per namespace slot the publications and bytes, the publish-latency buckets of
    /// every namespace and source summed, the connections accepted and the disconnects
    /// by close code ([`close_codes`] order). Relaxed loads: a reading taken while a
    /// publication is counted may hold its count and not yet its bytes, which the next
    /// reading settles.
    pub fn reading(&self) -> Reading {
        let mut latency = [0u64; starling_core::metrics::BUCKETS];
        let namespaces = self
            .namespaces
            .iter()
            .map(|ns| {
                let mut messages = 0;
                for h in &ns.publish {
                    for (sum, n) in latency.iter_mut().zip(h.bucket_counts()) {
                        *sum += n;
                        messages += n;
                    }
                }
                (messages, ns.bytes.load(Ordering::Relaxed))
            })
            .collect();
        let closes = CODES
            .iter()
            .zip(&self.errors)
            .filter(|(code, _)| **code >= 1000)
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .collect();
        Reading {
            namespaces,
            latency,
            connects: self.connections_accepted.load(Ordering::Relaxed),
            closes,
        }
    }
}

/// The WebSocket close codes counted individually (the codes of [`CODES`] from 1000 up:
/// below are error replies, not disconnects), in the order of [`Reading::closes`].
pub fn close_codes() -> impl Iterator<Item = u16> {
    CODES.iter().copied().filter(|c| *c >= 1000)
}

/// Cumulative counters at one moment, from [`Metrics::reading`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Per namespace slot: publications accepted, payload bytes.
    pub namespaces: Vec<(u64, u64)>,
    /// `starling_publish_duration_seconds` summed over namespaces and sources, per
    /// bucket (not cumulative).
    pub latency: [u64; starling_core::metrics::BUCKETS],
    /// WebSocket connections accepted.
    pub connects: u64,
    /// Disconnects the server sent or saw a close code for, per [`close_codes`].
    pub closes: Vec<u64>,
}

fn line(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The version, commit and compiler of this build (`build.rs`), as label values.
const BUILD: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    ("commit", env!("BUILD_INFO_COMMIT")),
    ("rustc", env!("BUILD_INFO_RUSTC")),
];

/// Renders the build info and the per-namespace metrics.
fn render_namespaces(out: &mut String, state: &AppState) {
    let m = &state.metrics;
    let h = state.hub.counters();
    let labels: Vec<_> = state
        .namespaces
        .metric_labels()
        .map(|l| format!("namespace=\"{}\"", escape_label(l)))
        .collect();
    header(
        out,
        "starling_publish_duration_seconds",
        "histogram",
        "Time from a publication's arrival (API request or client publish command decoded) to its acceptance by the hub or the cluster broker, by namespace and source (api, client). Accepted publications only.",
    );
    for (ns, labels) in m.namespaces.iter().zip(&labels) {
        for source in Source::ALL {
            ns.publish[source as usize].render(
                out,
                "starling_publish_duration_seconds",
                &format!("{labels},source=\"{}\"", source.label()),
            );
        }
    }
    header(
        out,
        "starling_broadcast_duration_seconds",
        "histogram",
        "Time the hub takes to queue one publication to all of a channel's local subscribers (encoding included), by namespace; publications to channels with local subscribers only.",
    );
    for (histogram, labels) in h.broadcast.iter().zip(&labels) {
        histogram.render(out, "starling_broadcast_duration_seconds", labels);
    }
    header(
        out,
        "starling_recoveries_total",
        "counter",
        "Subscribes asking to recover, by namespace and outcome: recovered, not_recovered (another epoch or gone from history), too_large (more than half of client.max_queue_bytes).",
    );
    for (ns, labels) in m.namespaces.iter().zip(&labels) {
        for outcome in Recovery::ALL {
            let _ = writeln!(
                out,
                "starling_recoveries_total{{{labels},outcome=\"{}\"}} {}",
                outcome.label(),
                ns.recoveries[outcome as usize].load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "starling_namespace_publications_total",
        "counter",
        "Publications accepted from the API and from clients, by namespace (the count of starling_publish_duration_seconds over both sources).",
    );
    for (ns, labels) in m.namespaces.iter().zip(&labels) {
        let count: u64 = ns.publish.iter().map(Histogram::count).sum();
        let _ = writeln!(
            out,
            "starling_namespace_publications_total{{{labels}}} {count}"
        );
    }
    header(
        out,
        "starling_namespace_bytes_total",
        "counter",
        "Payload bytes of the publications accepted from the API and from clients, by namespace.",
    );
    for (ns, labels) in m.namespaces.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "starling_namespace_bytes_total{{{labels}}} {}",
            ns.bytes.load(Ordering::Relaxed)
        );
    }
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(state: &AppState) -> String {
    let m = &state.metrics;
    let h = state.hub.counters();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(16384);
    header(
        &mut out,
        "starling_build_info",
        "gauge",
        "Always 1; the labels say which build runs (version, git commit, rustc).",
    );
    let build: Vec<String> = BUILD
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    let _ = writeln!(out, "starling_build_info{{{}}} 1", build.join(","));
    line(
        &mut out,
        "starling_connections",
        "gauge",
        "Open WebSocket connections.",
        state.registry.connections() as u64,
    );
    line(
        &mut out,
        "starling_users",
        "gauge",
        "Distinct authenticated users connected.",
        state.registry.users() as u64,
    );
    line(
        &mut out,
        "starling_connections_accepted_total",
        "counter",
        "WebSocket connections accepted.",
        get(&m.connections_accepted),
    );
    line(
        &mut out,
        "starling_upgrades_refused_total",
        "counter",
        "WebSocket upgrade requests refused.",
        get(&m.upgrades_refused),
    );
    line(
        &mut out,
        "starling_upgrades_paced_total",
        "counter",
        "WebSocket upgrades that waited for admission (server.admission_rate).",
        get(&m.upgrades_paced),
    );
    let _ = writeln!(
        out,
        "# HELP starling_limit_refusals_total Requests refused by a limit, by limit.\n# TYPE starling_limit_refusals_total counter"
    );
    for (limit, n) in Limit::ALL.iter().zip(&m.limit_refusals) {
        let _ = writeln!(
            out,
            "starling_limit_refusals_total{{limit=\"{}\"}} {}",
            limit.label(),
            get(n)
        );
    }
    line(
        &mut out,
        "starling_channels",
        "gauge",
        "Channels with at least one subscriber.",
        get(&h.channels),
    );
    line(
        &mut out,
        "starling_subscriptions",
        "gauge",
        "Subscriptions.",
        get(&h.subscriptions),
    );
    line(
        &mut out,
        "starling_publications_total",
        "counter",
        "Publications accepted.",
        get(&h.publications),
    );
    line(
        &mut out,
        "starling_messages_in_total",
        "counter",
        "WebSocket messages received from clients.",
        get(&m.messages_in),
    );
    line(
        &mut out,
        "starling_bytes_in_total",
        "counter",
        "Bytes received from clients.",
        get(&m.bytes_in),
    );
    line(
        &mut out,
        "starling_messages_out_total",
        "counter",
        "Frames queued to clients by fan-out.",
        get(&h.messages_out),
    );
    line(
        &mut out,
        "starling_bytes_out_total",
        "counter",
        "Bytes queued to clients by fan-out.",
        get(&h.bytes_out),
    );
    line(
        &mut out,
        "starling_bytes_written_total",
        "counter",
        "Bytes written to client sockets.",
        get(&m.bytes_written),
    );
    line(
        &mut out,
        "starling_slow_consumers_total",
        "counter",
        "Connections cut (4002) because a frame did not fit their queue (client.max_queue_bytes).",
        get(&h.slow_consumers),
    );
    line(
        &mut out,
        "starling_history_bytes",
        "gauge",
        "Bytes of publications kept in history, all channels (server.history_max_bytes).",
        get(&h.history_bytes),
    );
    line(
        &mut out,
        "starling_history_dropped_total",
        "counter",
        "Publications not kept in history because the node's history budget was spent.",
        get(&h.history_dropped),
    );
    line(
        &mut out,
        "starling_recoveries_too_large_total",
        "counter",
        "Recoveries answered recovered=false because the missed publications exceeded half of client.max_queue_bytes (superseded by starling_recoveries_total{outcome=\"too_large\"}, by namespace; kept for one release).",
        get(&h.recoveries_too_large),
    );
    line(
        &mut out,
        "starling_pongs_coalesced_total",
        "counter",
        "Pongs that replaced an unsent pong instead of queueing (pings faster than the peer reads).",
        get(&m.pongs_coalesced),
    );
    line(
        &mut out,
        "starling_lossy_drops_total",
        "counter",
        "Publications not queued to a full lossy subscriber.",
        get(&h.lossy_drops),
    );
    line(
        &mut out,
        "starling_delta_deliveries_total",
        "counter",
        "Publications queued to delta subscribers as a fossil delta rather than in full.",
        get(&h.delta_deliveries),
    );
    line(
        &mut out,
        "starling_journal_errors_total",
        "counter",
        "Publications the message log did not take because it was failed (delivered live but not persisted, or refused when durability was asked for).",
        get(&h.journal_errors),
    );
    line(
        &mut out,
        "starling_journal_busy_total",
        "counter",
        "Publications refused (error 116, HTTP 503) because the message log's queue was full.",
        get(&h.journal_busy),
    );
    for (name, help, value) in [
        (
            "starling_stream_gaps_total",
            "Holes seen in a channel's stream as the cluster broker delivered it.",
            &h.stream_gaps,
        ),
        (
            "starling_stream_heals_total",
            "Holes filled from the broker's history before newer publications were delivered.",
            &h.stream_heals,
        ),
        (
            "starling_stream_losses_total",
            "Channels whose order could not be repaired: their subscribers were disconnected with 4006.",
            &h.stream_losses,
        ),
        (
            "starling_stream_resets_total",
            "Streams the broker restarted under a new epoch (it lost them).",
            &h.stream_resets,
        ),
    ] {
        line(&mut out, name, "counter", help, get(value));
    }
    if let Some(engine) = &state.engine {
        line(
            &mut out,
            "starling_cluster_broker_up",
            "gauge",
            "1 while every link to the cluster broker is up, else 0.",
            u64::from(engine.health().is_ok()),
        );
        line(
            &mut out,
            "starling_cluster_nodes",
            "gauge",
            "Live nodes of the cluster, as their heartbeats tell (this one included).",
            state.nodes.live().len() as u64,
        );
        for (name, help, value) in engine.counters() {
            line(&mut out, name, "counter", help, value);
        }
    }
    if let Some(journal) = &state.journal {
        let s = journal.log().stats();
        line(
            &mut out,
            "starling_journal_failed",
            "gauge",
            "1 while the message log is failed (write error; /ready answers 503), else 0.",
            u64::from(s.failed),
        );
        line(
            &mut out,
            "starling_journal_failures_total",
            "counter",
            "Times the message log entered the failed state.",
            s.failures,
        );
        line(
            &mut out,
            "starling_journal_recoveries_total",
            "counter",
            "Times the message log left the failed state (writing worked again).",
            s.recoveries,
        );
        line(
            &mut out,
            "starling_journal_dropped_records_total",
            "counter",
            "Records the message log had accepted and lost to a write error.",
            s.dropped_records,
        );
        line(
            &mut out,
            "starling_journal_bytes",
            "gauge",
            "Bytes in the message log's segment files.",
            s.bytes,
        );
        line(
            &mut out,
            "starling_journal_segments",
            "gauge",
            "Segment files of the message log.",
            s.segments,
        );
    }
    line(
        &mut out,
        "starling_api_requests_total",
        "counter",
        "HTTP API requests.",
        get(&m.api_requests),
    );
    line(
        &mut out,
        "starling_api_in_flight",
        "gauge",
        "HTTP API requests in progress.",
        state.api_in_flight.count() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP starling_errors_total Error replies and disconnects, by code.\n# TYPE starling_errors_total counter"
    );
    for (code, n) in CODES.iter().zip(&m.errors) {
        let _ = writeln!(out, "starling_errors_total{{code=\"{code}\"}} {}", get(n));
    }
    let _ = writeln!(
        out,
        "starling_errors_total{{code=\"other\"}} {}",
        get(&m.other_errors)
    );
    if let Some(held) = crate::allocator::stats() {
        for (name, help, value) in [
            (
                "allocated",
                "Bytes in live allocations (jemalloc).",
                held.allocated,
            ),
            (
                "active",
                "Bytes in pages holding live allocations (jemalloc).",
                held.active,
            ),
            (
                "metadata",
                "Bytes of the allocator's own metadata (jemalloc).",
                held.metadata,
            ),
            (
                "resident",
                "Bytes resident in pages the allocator maps (jemalloc).",
                held.resident,
            ),
        ] {
            line(
                &mut out,
                &format!("starling_allocator_{name}_bytes"),
                "gauge",
                help,
                value,
            );
        }
    }
    render_namespaces(&mut out, state);
    if let Some(archive) = state.archive.get() {
        archive.render(&mut out);
    }
    line(
        &mut out,
        "starling_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        state.started.elapsed().as_secs(),
    );
    out
}
