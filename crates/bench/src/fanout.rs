//! `fanout`: N subscribers of one channel, one publisher; deliveries per second,
//! order, and end-to-end latency, overall and per node when the subscribers are
//! spread over several nodes of a cluster (`--url` repeated), so that the latency of
//! deliveries that crossed nodes shows next to that of same-node ones.
//!
//! The same workload runs against the peers (`--protocol socketio|nats|nchan|ws`):
//! the bench then speaks their client protocol, and publishes through their own path.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::json;
use starling_protocol::{
    Command, Encoding, Method, PublishRequest, ServerMessage, decode_server_messages,
};
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Target, WsClient, connect_command, source_addrs};
use crate::frame::Event;
pub(crate) use crate::httppub::PubReport;
use crate::peer::{Protocol, Seen, Session, handshake};
use crate::report::{Progress, Rate, percentiles_json, say};
use crate::server::{metrics_text, nonzero_lines};
use crate::stats::{LatencyShards, OrderCheck, Percentiles, now_us, payload, per_second};
use crate::table::RunRow;

/// How the publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `publish` commands over a WebSocket connection.
    Ws,
    /// `POST /api/publish` on one keep-alive HTTP connection.
    Http,
}

/// Arguments of `fanout`.
///
/// One process holds at most ~19,900 connections (one descriptor each under the
/// 20,000 open-files limit): for more, run several `fanout` or `idle` processes
/// (scripts/cluster-bench.sh does).
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// WebSocket endpoint of a node. Repeat it for several nodes of a cluster:
    /// subscriber i connects to node i mod N (round-robin) and the figures are also
    /// given per node. Peers: `ws://HOST:PORT/socket.io/?EIO=4&transport=websocket`
    /// (socketio), `ws://HOST:PORT/` (nats), `ws://HOST:PORT/sub/` (nchan, ws: the
    /// channel is appended to the path).
    #[arg(
        long = "url",
        default_value = "ws://127.0.0.1:8000/connection/websocket"
    )]
    pub urls: Vec<String>,
    /// The node that publishes: `http://HOST:PORT` (its HTTP API, or its WebSocket
    /// endpoint with --via ws and for nats); default: the first --url. Repeat it to
    /// send every publication through each of them: only for independent nodes that
    /// share no engine (then each subscriber gets it from its own node); with a
    /// cluster give one, or subscribers get every publication once per publisher.
    #[arg(long = "publish-url")]
    pub publish_urls: Vec<String>,
    /// Client protocol of the servers: starling, socketio (engine.io v4; publishes
    /// with `POST /publish` on the publish node, see bench/peers/socketio), nats
    /// (publishes with `PUB` over the publish node's WebSocket), nchan (raw messages;
    /// `POST /pub/<channel>`) or ws (raw messages; `POST /publish/<channel>`, see
    /// bench/peers/ws and the `baseline` binary).
    #[arg(long, value_enum, default_value_t = Protocol::Starling)]
    pub protocol: Protocol,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Publications to send.
    #[arg(long, default_value_t = 1_000)]
    pub messages: u64,
    /// Publications per second (steady). Ignored with --burst.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publish back to back, as fast as the publisher can.
    #[arg(long)]
    pub burst: bool,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Starling: publish through a WebSocket or the HTTP API (the peers have one way
    /// each, see --protocol).
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// HTTP API key (for --via http).
    #[arg(long, default_value = "dev-api-key")]
    pub api_key: String,
    /// HTTP publishing (--via http, socketio, nchan, ws): keep-alive connections publishing at
    /// once, each taking the next due publication, as a backend's connection pool
    /// does. With 1, each publication waits for the previous one's reply, which bounds
    /// the rate by the reply latency under load.
    #[arg(long, default_value_t = 1)]
    pub http_connections: usize,
    /// Channel name, Socket.IO room or NATS subject (default: `fanout:<pid>`, or
    /// `fanout.<pid>` for nats). For nchan and ws: letters, digits, `:` and `.` only
    /// (it goes into URL paths as it is).
    #[arg(long)]
    pub channel: Option<String>,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets),
    /// so that ephemeral ports never run out.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Milliseconds to wait between the last subscription and the first publication
    /// (subscription interest travels between a cluster's nodes asynchronously in
    /// NATS routes, for example).
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// Give up (and report missing deliveries) after this many seconds in total.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print the final figures as one JSON object on stdout; the human-readable lines
    /// go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Write latency (p50, p99) and deliveries per second over the run to this SVG.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// PID of a server process whose CPU time over the publishing to report (repeat
    /// for a cluster).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

/// How a subscriber's run ended.
#[derive(Debug)]
enum End {
    Complete,
    Stopped,
    Failed(String),
}

struct SubResult {
    node: usize,
    check: OrderCheck,
    last_delivery_us: u64,
    end: End,
}

/// The figures of one node's subscribers.
struct NodeStats {
    latencies: LatencyShards,
    ready: AtomicUsize,
}

struct Shared {
    nodes: Vec<NodeStats>,
    /// Samples since the last progress line.
    recent: LatencyShards,
    /// Samples since the last timeline point (`--plot`).
    timeline: Arc<LatencyShards>,
    ready: AtomicUsize,
    setup_failed: AtomicUsize,
    /// Sum of deliveries so far (progress display).
    delivered: AtomicU64,
    /// Subscribers done (complete, failed or stopped). A complete one keeps its
    /// connection open until the run ends: closing it at once would make the server
    /// handle thousands of closes while it still delivers the last publication to the
    /// others, which inflated every server's last-second latency.
    finished: AtomicUsize,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    if args.json {
        crate::report::human_to_stderr();
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut targets = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        targets.push(Arc::new(Target::resolve(url).await?));
    }
    let Some(first) = targets.first().cloned() else {
        bail!("give at least one --url");
    };
    let mut publish_targets = Vec::new();
    for url in &args.publish_urls {
        publish_targets.push(Arc::new(Target::resolve_node(url, &first.path).await?));
    }
    if publish_targets.is_empty() {
        publish_targets.push(first.clone());
    }
    // A node publishes when one of the publish URLs points at its listener.
    let publishes: Vec<bool> = targets
        .iter()
        .map(|t| publish_targets.iter().any(|p| p.addr == t.addr))
        .collect();
    let sources = source_addrs(&first, args.source_ips);
    let channel: Arc<str> = args
        .channel
        .clone()
        .unwrap_or_else(|| args.protocol.channel_name("fanout", std::process::id()))
        .into();
    // The protocols that name the channel in the WebSocket's path connect there.
    let sub_targets: Vec<Arc<Target>> = targets
        .iter()
        .map(|t| {
            Arc::new(Target {
                path: args.protocol.subscribe_path(&t.path, &channel),
                ..(**t).clone()
            })
        })
        .collect();
    let expected_per_sub = args.messages;
    let how = match args.protocol {
        Protocol::Starling => format!("{:?}", args.via).to_lowercase(),
        Protocol::Socketio => "http POST /publish".into(),
        Protocol::Nats => "nats PUB".into(),
        Protocol::Nchan | Protocol::Ws => format!(
            "http POST {}",
            args.protocol.raw_publish_path(&channel).unwrap_or_default()
        ),
    };
    say!(
        "fanout ({:?}): {} subscribers on {channel} over {} node(s), {} publications of ~{} B, {}, via {how} to {}",
        args.protocol,
        args.subscribers,
        targets.len(),
        args.messages,
        args.size,
        if args.burst {
            "burst".to_string()
        } else {
            format!("{} /s", args.rate)
        },
        publish_targets
            .iter()
            .map(|t| t.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let shared = Arc::new(Shared {
        nodes: targets
            .iter()
            .map(|_| NodeStats {
                latencies: LatencyShards::new(16),
                ready: AtomicUsize::new(0),
            })
            .collect(),
        recent: LatencyShards::new(16),
        timeline: Arc::new(LatencyShards::new(16)),
        ready: AtomicUsize::new(0),
        setup_failed: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
    });
    let progress = {
        let shared = shared.clone();
        let total = args.subscribers;
        let mut rate = Rate::default();
        Progress::start(move |secs| {
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let now = Percentiles::of(&shared.recent.take());
            format!(
                "[{secs:6.1} s] {} of {total} subscribed, {} failed | {delivered} deliveries, {:.0}/s now | p99 now {:.1} ms",
                shared.ready.load(Ordering::Relaxed),
                shared.setup_failed.load(Ordering::Relaxed),
                rate.update(delivered),
                now.p99 as f64 / 1000.0
            )
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut subs: JoinSet<SubResult> = JoinSet::new();
    for i in 0..args.subscribers {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let node = i % targets.len();
        let sub = Subscriber {
            i,
            node,
            protocol: args.protocol,
            target: sub_targets[node].clone(),
            source,
            channel: channel.clone(),
            shared: shared.clone(),
            expected: expected_per_sub,
            deadline,
        };
        let (gate, stop) = (gate.clone(), stop_rx.clone());
        subs.spawn(async move { sub.run(gate, stop).await });
    }

    // All subscribed (or failed), bounded.
    let all_in = crate::sub::wait_set_up(
        &shared.ready,
        &shared.setup_failed,
        args.subscribers,
        deadline,
    )
    .await;
    let subscribed = shared.ready.load(Ordering::Relaxed);
    let setup_failed = shared.setup_failed.load(Ordering::Relaxed);
    if !all_in {
        say!("timeout while subscribing: {subscribed} ready, {setup_failed} failed");
    }
    say!(
        "{subscribed} subscribed, {setup_failed} failed, in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if subscribed == 0 {
        let _ = stop_tx.send(true);
        bail!("no subscriber could subscribe");
    }
    if args.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }

    // Publish: one publisher per publish URL, all at once.
    let cpu_watch = crate::cpu::CpuWatch::start(&args.server_pids);
    let sampler = crate::timeline::Sampler::start(shared.timeline.clone());
    let first_publish_us = now_us();
    let mut publishers = JoinSet::new();
    for target in &publish_targets {
        let publisher = Publisher {
            target: target.clone(),
            channel: channel.clone(),
            messages: args.messages,
            rate: (!args.burst).then_some(args.rate),
            size: args.size,
            api_key: args.api_key.clone(),
            http_connections: args.http_connections.max(1),
            deadline,
        };
        let (protocol, via) = (args.protocol, args.via);
        publishers.spawn(async move {
            let report = match (protocol, via) {
                (Protocol::Starling, Via::Ws) => publisher.via_ws().await,
                (Protocol::Starling, Via::Http) => publisher.via_http().await,
                (Protocol::Socketio, _) => publisher.via_socketio_http().await,
                (Protocol::Nats, _) => publisher.via_nats().await,
                (Protocol::Nchan | Protocol::Ws, _) => publisher.via_raw_http(protocol).await,
            };
            (publisher.target.addr, report)
        });
    }
    let mut pub_reports = Vec::new();
    while let Some(joined) = publishers.join_next().await {
        match joined {
            Ok((addr, Ok(r))) => pub_reports.push((addr, r)),
            Ok((addr, Err(e))) => {
                say!("publisher to {addr} failed: {e:#}");
                pub_reports.push((addr, PubReport::default()));
            }
            Err(e) => say!("publisher task failed: {e}"),
        }
    }
    let publish_done_us = now_us();
    // Each subscriber hears from one publisher (its node's, or the cluster's only one).
    let accepted = pub_reports
        .iter()
        .map(|(_, r)| r.accepted)
        .min()
        .unwrap_or(0);
    let sent: u64 = pub_reports.iter().map(|(_, r)| r.sent).sum();
    let refused: u64 = pub_reports.iter().map(|(_, r)| r.refused).sum();

    // Wait for deliveries: every subscriber completes, or the deadline passes. Then
    // they all close together.
    let spawned = subs.len();
    while shared.finished.load(Ordering::Relaxed) < spawned
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if tokio::time::Instant::now() < deadline {
        let _ = stop_tx.send(true);
    }
    let mut results = Vec::with_capacity(args.subscribers);
    loop {
        tokio::select! {
            joined = subs.join_next() => match joined {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => say!("subscriber task failed: {e}"),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => {
                say!("timeout: telling {} unfinished subscribers to stop", subs.len());
                let _ = stop_tx.send(true);
                let grace = tokio::time::Instant::now() + Duration::from_secs(5);
                while let Ok(Some(joined)) = tokio::time::timeout_at(grace, subs.join_next()).await {
                    if let Ok(r) = joined {
                        results.push(r);
                    }
                }
                subs.abort_all();
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    let server_cpu = cpu_watch.finish();
    let points = sampler.finish().await;
    drop(progress);

    // Aggregate.
    let expected = subscribed as u64 * accepted;
    let deliveries: u64 = results.iter().map(|r| r.check.received).sum();
    let gaps: u64 = results.iter().map(|r| r.check.missing_in_gaps).sum();
    let out_of_order: u64 = results.iter().map(|r| r.check.out_of_order).sum();
    let unclean = results.iter().filter(|r| !r.check.clean()).count();
    let complete = results
        .iter()
        .filter(|r| matches!(r.end, End::Complete))
        .count();
    let stopped = results
        .iter()
        .filter(|r| matches!(r.end, End::Stopped))
        .count();
    let mut failures: Vec<&str> = results
        .iter()
        .filter_map(|r| match &r.end {
            End::Failed(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    let last_delivery = |node: Option<usize>| {
        results
            .iter()
            .filter(|r| node.is_none_or(|n| r.node == n))
            .map(|r| r.last_delivery_us)
            .max()
            .unwrap_or(0)
    };
    let span_until = |last_us: u64| Duration::from_micros(last_us.saturating_sub(first_publish_us));
    let span = span_until(last_delivery(None));
    let publish_span = Duration::from_micros(publish_done_us.saturating_sub(first_publish_us));
    let mut all_latencies = crate::stats::new_histogram();
    for n in &shared.nodes {
        all_latencies
            .add(n.latencies.merged())
            .context("merging histograms")?;
    }
    let lat = Percentiles::of(&all_latencies);

    say!("--- fanout result ---");
    say!(
        "publications:         {sent} sent, {accepted} acknowledged (each publisher), {refused} refused ({:.0} publications/s over {:.3} s)",
        per_second(sent, publish_span),
        publish_span.as_secs_f64()
    );
    say!(
        "subscribers:          {subscribed} subscribed, {complete} got everything, {stopped} stopped at the timeout, {} failed",
        failures.len()
    );
    say!(
        "deliveries:           {deliveries} of {expected} expected, {} missing",
        expected.saturating_sub(deliveries)
    );
    say!(
        "order:                {gaps} lost in gaps, {out_of_order} out of order ({unclean} subscribers affected)"
    );
    say!(
        "duration:             {:.3} s (first publish to last delivery)",
        span.as_secs_f64()
    );
    say!("deliveries/s:         {:.0}", per_second(deliveries, span));
    say!(
        "latency (µs):         p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        lat.p50,
        lat.p99,
        lat.p999,
        lat.max,
        lat.count
    );
    let mut nodes_json = Vec::new();
    let mut table_rows = Vec::new();
    for (k, target) in targets.iter().enumerate() {
        let node_deliveries: u64 = results
            .iter()
            .filter(|r| r.node == k)
            .map(|r| r.check.received)
            .sum();
        let node_span = span_until(last_delivery(Some(k)));
        let node_lat = Percentiles::of(&shared.nodes[k].latencies.merged());
        let node_ready = shared.nodes[k].ready.load(Ordering::Relaxed);
        let role = if publishes[k] {
            "publisher's node"
        } else {
            "other node"
        };
        if targets.len() > 1 {
            say!(
                "node {k} {} ({role}): {node_ready} subscribed, {node_deliveries} deliveries, {:.0}/s, latency (µs) p50 {} p99 {} p99.9 {} max {}",
                target.addr,
                per_second(node_deliveries, node_span),
                node_lat.p50,
                node_lat.p99,
                node_lat.p999,
                node_lat.max
            );
        }
        table_rows.push(RunRow {
            what: format!("node {k} {}", target.addr),
            subscribed: node_ready,
            publish_per_s: per_second(sent, publish_span),
            delivered: node_deliveries,
            expected: node_ready as u64 * accepted,
            delivered_per_s: per_second(node_deliveries, node_span),
            latency: node_lat,
            server_cpu: None,
        });
        nodes_json.push(json!({
            "url": args.urls[k],
            "publishes": publishes[k],
            "subscribed": node_ready,
            "deliveries": node_deliveries,
            "deliveries_per_s": per_second(node_deliveries, node_span).round(),
            "latency_us": percentiles_json(&node_lat),
        }));
    }
    if !failures.is_empty() {
        failures.sort_unstable();
        failures.dedup();
        for f in failures.iter().take(5) {
            say!("  subscriber failure: {f}");
        }
    }
    if args.protocol == Protocol::Starling {
        for target in &targets {
            if let Ok(text) = metrics_text(target.http_addr()).await {
                for line in nonzero_lines(
                    &text,
                    &[
                        "starling_slow_consumers",
                        "starling_errors_total",
                        "starling_connections ",
                    ],
                ) {
                    say!("server {}: {line}", target.addr);
                }
            }
        }
    }
    for line in crate::cpu::lines(&server_cpu) {
        say!("{line}");
    }
    let all_row = RunRow {
        what: "all".into(),
        subscribed,
        publish_per_s: per_second(sent, publish_span),
        delivered: deliveries,
        expected,
        delivered_per_s: per_second(deliveries, span),
        latency: lat,
        server_cpu: crate::cpu::total_percent(&server_cpu),
    };
    let title = format!(
        "fanout: {subscribed} subscribers ({:?}), {}",
        args.protocol,
        if args.burst {
            "burst".to_string()
        } else {
            format!("{} publications/s", args.rate)
        }
    );
    crate::table::finish(
        table_rows,
        all_row,
        targets.len() == 1,
        args.plot
            .as_deref()
            .map(|path| (path, title.as_str(), points.as_slice())),
    )?;
    if args.json {
        let doc = json!({
            "scenario": "fanout",
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "channel": &*channel,
            "subscribers": args.subscribers,
            "messages": args.messages,
            "rate": if args.burst { None } else { Some(args.rate) },
            "subscribed": subscribed,
            "setup_failed": setup_failed,
            "complete": complete,
            "stopped": stopped,
            "failed": failures.len(),
            "publish_urls": publish_targets.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>(),
            "publications": {"sent": sent, "accepted": accepted, "refused": refused,
                             "per_s": per_second(sent, publish_span).round()},
            "expected": expected,
            "deliveries": deliveries,
            "missing": expected.saturating_sub(deliveries),
            "gaps": gaps,
            "out_of_order": out_of_order,
            "duration_s": span.as_secs_f64(),
            "deliveries_per_s": per_second(deliveries, span).round(),
            "latency_us": percentiles_json(&lat),
            "nodes": nodes_json,
            "server_cpu": crate::cpu::procs_json(&server_cpu),
            "timeline": crate::timeline::points_json(&points),
        });
        println!("{doc}");
    }
    Ok(())
}

/// One subscriber: where it connects and what it records into.
struct Subscriber {
    i: usize,
    node: usize,
    protocol: Protocol,
    target: Arc<Target>,
    source: Option<IpAddr>,
    channel: Arc<str>,
    shared: Arc<Shared>,
    expected: u64,
    deadline: tokio::time::Instant,
}

impl Subscriber {
    async fn run(self, gate: Arc<Semaphore>, mut stop: watch::Receiver<bool>) -> SubResult {
        let node = self.node;
        let failed = |e: String| SubResult {
            node,
            check: OrderCheck::default(),
            last_delivery_us: 0,
            end: End::Failed(e),
        };
        let mut session = Session::new(self.protocol, &self.channel, true);
        let subprotocol = self.protocol.subprotocol();
        let opened = crate::sub::open(
            &self.target,
            self.source,
            &mut session,
            subprotocol,
            &gate,
            self.deadline,
        )
        .await;
        let mut client = match opened {
            Ok(c) => c,
            Err(e) => {
                if !matches!(e, crate::sub::SetupError::Gate) {
                    self.shared.setup_failed.fetch_add(1, Ordering::Relaxed);
                }
                self.shared.finished.fetch_add(1, Ordering::Relaxed);
                return failed(e.to_string());
            }
        };
        self.shared.ready.fetch_add(1, Ordering::Relaxed);
        self.shared.nodes[node]
            .ready
            .fetch_add(1, Ordering::Relaxed);

        let op = self.protocol.opcode();
        let mut check = OrderCheck::after(session.baseline());
        let mut last_delivery_us = 0;
        let mut seen: Vec<Seen> = Vec::with_capacity(64);
        let mut batch: Vec<u64> = Vec::with_capacity(64);
        let end = loop {
            if check.received >= self.expected {
                break End::Complete;
            }
            let event = tokio::select! {
                biased;
                e = client.reader.next_event() => e,
                () = crate::idle::stopped(&mut stop) => break End::Stopped,
            };
            // Handle this event and everything already buffered behind it.
            let outcome = crate::sub::drain_events(&mut client, &mut session, op, event, &mut seen)
                .await
                .map(End::Failed);
            if !seen.is_empty() {
                let now = now_us();
                last_delivery_us = now;
                for s in seen.drain(..) {
                    check.observe(s.order);
                    if let Some(ts) = s.ts {
                        batch.push(now.saturating_sub(ts));
                    }
                }
            }
            self.shared.nodes[node].latencies.record(self.i, &batch);
            self.shared.recent.record(self.i, &batch);
            self.shared.timeline.record(self.i, &batch);
            self.shared
                .delivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            if let Some(end) = outcome {
                break end;
            }
        };
        self.shared.finished.fetch_add(1, Ordering::Relaxed);
        if matches!(end, End::Complete) {
            // Keep the connection until every subscriber is done (see `Shared::finished`).
            crate::idle::stopped(&mut stop).await;
        }
        drop(client);
        SubResult {
            node,
            check,
            last_delivery_us,
            end,
        }
    }
}

/// Publishes numbered, timestamped payloads ([`payload`]) at a steady rate or back to
/// back.
pub(crate) struct Publisher {
    pub(crate) target: Arc<Target>,
    pub(crate) channel: Arc<str>,
    pub(crate) messages: u64,
    pub(crate) rate: Option<f64>,
    pub(crate) size: usize,
    pub(crate) api_key: String,
    /// HTTP connections publishing at once.
    pub(crate) http_connections: usize,
    pub(crate) deadline: tokio::time::Instant,
}

impl Publisher {
    /// When publication `i` (0-based) is due.
    fn due(&self, start: tokio::time::Instant, i: u64) -> tokio::time::Instant {
        match self.rate {
            Some(r) if r > 0.0 => start + Duration::from_secs_f64(i as f64 / r),
            _ => start,
        }
    }

    pub(crate) async fn via_ws(&self) -> anyhow::Result<PubReport> {
        let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut client = WsClient::connect(&self.target, Some(source)).await?;
        client.request(&[connect_command()]).await?;
        let WsClient {
            mut reader,
            mut writer,
        } = client;
        let messages = self.messages;
        let deadline = self.deadline;
        // Replies are read by their own task so the publisher never blocks on them.
        let replies = tokio::spawn(async move {
            let mut report = PubReport::default();
            while report.accepted + report.refused < messages {
                let event = match tokio::time::timeout_at(deadline, reader.next_event()).await {
                    Ok(e) => e?,
                    Err(_) => break,
                };
                if let Event::Text(p) = event {
                    for msg in decode_server_messages(Encoding::Json, &p)? {
                        if let ServerMessage::Reply(r) = msg {
                            match r.body {
                                Ok(_) => report.accepted += 1,
                                Err(e) => {
                                    if report.refused < 3 {
                                        say!("publish refused: {e}");
                                    }
                                    report.refused += 1;
                                }
                            }
                        }
                    }
                }
            }
            anyhow::Ok(report)
        });
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        let mut out = Vec::new();
        let mut json = Vec::new();
        while sent < messages && tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until(self.due(start, sent)).await;
            // Everything due now leaves in one write (a burst: up to 64 at once).
            out.clear();
            let now = tokio::time::Instant::now();
            let mut n = 0;
            while sent < messages && n < 64 && self.due(start, sent) <= now {
                sent += 1;
                n += 1;
                let data = payload(sent, now_us(), self.size);
                json.clear();
                let command = Command {
                    id: (sent % u64::from(u32::MAX)) as u32 + 1,
                    method: Method::Publish(PublishRequest {
                        channel: self.channel.to_string(),
                        data: Bytes::from(data),
                    }),
                };
                starling_protocol::encode_command(Encoding::Json, &command, &mut json);
                out.extend_from_slice(&writer.frame(OpCode::Text, &json));
            }
            writer.write_raw(&out).await?;
        }
        let mut report = replies.await.context("reply reader")??;
        report.sent = sent;
        Ok(report)
    }

    /// Starling's `POST /api/publish` with the API key.
    pub(crate) async fn via_http(&self) -> anyhow::Result<PubReport> {
        let auth = format!("apikey {}", self.api_key);
        let channel = serde_json::to_string(&*self.channel)?;
        self.http_loop("/api/publish", Some(&auth), |data| {
            format!("{{\"channel\":{channel},\"data\":{data}}}")
        })
        .await
    }

    /// The Socket.IO peer's `POST /publish` (bench/peers/socketio/server.js), which
    /// emits the data to the room.
    pub(crate) async fn via_socketio_http(&self) -> anyhow::Result<PubReport> {
        let room = serde_json::to_string(&*self.channel)?;
        self.http_loop("/publish", None, |data| {
            format!("{{\"room\":{room},\"data\":{data}}}")
        })
        .await
    }

    /// Nchan's `POST /pub/<channel>` or the plain protocol's `POST /publish/<channel>`
    /// (bench/peers/ws, the `baseline` binary): the body is the data itself.
    pub(crate) async fn via_raw_http(&self, protocol: Protocol) -> anyhow::Result<PubReport> {
        let path = protocol
            .raw_publish_path(&self.channel)
            .with_context(|| format!("{protocol:?} does not publish over plain HTTP"))?;
        self.http_loop(&path, None, str::to_owned).await
    }

    /// `http_connections` keep-alive connections, one request at a time each, taking
    /// the next due publication in turn, at the rate.
    async fn http_loop(
        &self,
        path: &str,
        auth: Option<&str>,
        body: impl Fn(&str) -> String + Send + Sync,
    ) -> anyhow::Result<PubReport> {
        /// Numbered payloads at the publisher's rate.
        struct Numbered<'a, B> {
            publisher: &'a Publisher,
            start: tokio::time::Instant,
            body: B,
        }
        impl<B: Fn(&str) -> String + Sync> crate::httppub::Schedule for Numbered<'_, B> {
            fn due(&self, i: u64) -> Option<tokio::time::Instant> {
                (i < self.publisher.messages).then(|| self.publisher.due(self.start, i))
            }
            fn body(&self, i: u64) -> String {
                (self.body)(&payload(i + 1, now_us(), self.publisher.size))
            }
        }
        let schedule = Numbered {
            publisher: self,
            start: tokio::time::Instant::now(),
            body,
        };
        let addrs = [self.target.http_addr()];
        crate::httppub::publish(
            &addrs,
            path,
            auth,
            self.http_connections,
            self.deadline,
            &schedule,
        )
        .await
    }

    /// NATS `PUB` over the publish node's WebSocket; a final `PING` whose `PONG`
    /// confirms that the server processed every `PUB` before it.
    pub(crate) async fn via_nats(&self) -> anyhow::Result<PubReport> {
        let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut client =
            WsClient::connect_as(&self.target, Some(source), Protocol::Nats.subprotocol()).await?;
        let mut session = Session::new(Protocol::Nats, &self.channel, false);
        let limit = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        handshake(&mut client, &mut session, limit).await?;
        let WsClient {
            mut reader,
            mut writer,
        } = client;
        let op = Protocol::Nats.opcode();
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while sent < self.messages && tokio::time::Instant::now() < self.deadline {
            // Answer the server's pings while waiting for the next publication.
            tokio::select! {
                () = tokio::time::sleep_until(self.due(start, sent)) => {}
                event = reader.next_event() => {
                    if let Event::Text(p) | Event::Binary(p) = event? {
                        session.feed(&p, &mut seen)?;
                        for answer in session.take_outbox() {
                            writer.send(op, &answer).await?;
                        }
                    }
                    continue;
                }
            }
            out.clear();
            let now = tokio::time::Instant::now();
            let mut n = 0;
            while sent < self.messages && n < 64 && self.due(start, sent) <= now {
                sent += 1;
                n += 1;
                let data = payload(sent, now_us(), self.size);
                out.extend_from_slice(&session.publish_message(0, &data));
            }
            writer.send(op, &out).await?;
        }
        let pongs_before = session.pongs;
        writer.send(op, b"PING\r\n").await?;
        let confirm = async {
            while session.pongs == pongs_before {
                if let Event::Text(p) | Event::Binary(p) = reader.next_event().await? {
                    session.feed(&p, &mut seen)?;
                }
            }
            anyhow::Ok(())
        };
        let confirmed = tokio::time::timeout_at(self.deadline, confirm).await;
        let accepted = if matches!(confirmed, Ok(Ok(()))) {
            sent
        } else {
            0
        };
        Ok(PubReport {
            sent,
            accepted,
            refused: 0,
        })
    }
}
