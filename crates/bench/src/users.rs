//! `users`: the application scenario. N users, each connected once and subscribed to
//! a personal channel and to its group's channel (groups of G users); a backend
//! publishes to every personal channel R times a second through the HTTP API, spread
//! evenly over the second (N·R publications/s in all), and optionally to every group
//! channel; for D seconds. Figures: end-to-end latency (publisher's send time to
//! delivery), deliveries against those expected, the publish rate achieved, and the
//! server's CPU (`--server-pid`).
//!
//! The client protocol is pluggable (`--protocol`, [`crate::peer::Session`]): every
//! user subscribes to both channels on its one connection, by subscribe commands or,
//! for the protocols that name channels in the WebSocket's path (Nchan, ws), by
//! connecting to `<url path><personal>,<group>`. The publications go through the
//! server's HTTP publish endpoint ([`crate::httppub::HttpApi`]); NATS, which has
//! none, gets them as `PUB`s from a NATS client on the same schedule.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Target, WsClient, source_addrs};
use crate::cpu::{CpuMark, CpuWatch};
use crate::frame::Event;
use crate::httppub::{ChannelIn, HttpApi, PubReport, Schedule};
use crate::peer::{Protocol, Seen, Session, handshake, nats_pub};
use crate::report::{Progress, Rate, percentiles_json, say};
use crate::stats::{ErrorTally, LatencyShards, Percentiles, now_us, payload, per_second};
use crate::table::RunRow;
use crate::timeline::{Sampler, points_json};

/// Arguments of `users`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// WebSocket endpoint of a node; repeat it for the nodes of a cluster (user i
    /// connects to node i mod N).
    #[arg(
        long = "url",
        default_value = "ws://127.0.0.1:8000/connection/websocket"
    )]
    pub urls: Vec<String>,
    /// Where the backend publishes: `http://HOST:PORT` of a node's HTTP API; repeat it
    /// to spread the publishing connections over several nodes of a cluster (a load
    /// balancer's work). Default: the first --url.
    #[arg(long = "publish-url")]
    pub publish_urls: Vec<String>,
    /// Client protocol: starling or a peer's (socketio, nchan, ws: their HTTP publish
    /// endpoint; nats: `PUB` from a NATS client, one connection per --publish-url for
    /// the personal channels and one for the group channels).
    #[arg(long, value_enum, default_value_t = Protocol::Starling)]
    pub protocol: Protocol,
    /// Users (one connection each, two subscriptions).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Users per group (each group has one channel).
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,
    /// Publications per second to each personal channel.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Publications per second to each group channel (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub group_rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// HTTP API key (Starling).
    #[arg(long, default_value = "dev-api-key")]
    pub api_key: String,
    /// Keep-alive HTTP connections publishing at once (one request in flight each).
    /// The publish rate is bounded by connections / reply latency. (NATS publishes
    /// without replies, on one connection per --publish-url.)
    #[arg(long, default_value_t = 32)]
    pub http_connections: usize,
    /// Channel name prefix (default `u<pid>`): personal channels are
    /// `PREFIX:u:<i>`, group channels `PREFIX:g:<k>` (`.` instead of `:` for nats).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds allowed for connecting and subscribing every user.
    #[arg(long, default_value_t = 120)]
    pub setup_timeout: u64,
    /// Milliseconds to wait between the last subscription and the first publication
    /// (Nchan's workers and NATS routes pass subscriptions on asynchronously).
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// Seconds to wait for the last deliveries after the last publication.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// PID of a server process whose CPU time to report (repeat for a cluster).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Write latency (p50, p99) and deliveries per second over the run to this SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the final figures as one JSON object on stdout; the human-readable lines
    /// go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// The channel names of a run.
#[derive(Debug, Clone)]
pub struct Channels {
    prefix: String,
    sep: char,
    group_size: usize,
}

impl Channels {
    /// Names under `prefix`, with the protocol's separator (NATS subjects use `.`).
    pub fn new(protocol: Protocol, prefix: &str, group_size: usize) -> Channels {
        Channels {
            prefix: prefix.to_string(),
            sep: if protocol == Protocol::Nats { '.' } else { ':' },
            group_size: group_size.max(1),
        }
    }

    /// User `i`'s personal channel.
    pub fn personal(&self, i: usize) -> String {
        format!("{}{sep}u{sep}{i}", self.prefix, sep = self.sep)
    }

    /// Group `k`'s channel.
    pub fn group(&self, k: usize) -> String {
        format!("{}{sep}g{sep}{k}", self.prefix, sep = self.sep)
    }

    /// The group of user `i`.
    pub fn group_of(&self, i: usize) -> usize {
        i / self.group_size
    }

    /// How many groups `users` users make.
    pub fn groups(&self, users: usize) -> usize {
        users.div_ceil(self.group_size)
    }
}

/// Publications spread evenly: `per_s` a second over `channels` channels in turn
/// (publication `i` goes to channel `i mod channels`), `total` of them; counts what
/// each channel got accepted.
struct Spread<'a> {
    channels: &'a Channels,
    group: bool,
    count: usize,
    per_s: f64,
    total: u64,
    start: tokio::time::Instant,
    size: usize,
    accepted: Vec<AtomicU32>,
    /// Sent so far (progress line).
    sent: &'a AtomicU64,
}

impl<'a> Spread<'a> {
    /// The personal channels' publications (`group` false: `--users` channels at
    /// `--rate`) or the group channels' (`--group-rate`), for `--duration`.
    fn new(
        channels: &'a Channels,
        group: bool,
        args: &UsersArgs,
        sent: &'a AtomicU64,
    ) -> Spread<'a> {
        let (count, rate) = if group {
            (channels.groups(args.users), args.group_rate)
        } else {
            (args.users, args.rate)
        };
        let per_s = count as f64 * rate.max(0.0);
        Spread {
            channels,
            group,
            count: count.max(1),
            per_s,
            total: schedule_total(per_s, args.duration),
            start: tokio::time::Instant::now(),
            size: args.size,
            accepted: (0..count).map(|_| AtomicU32::new(0)).collect(),
            sent,
        }
    }

    fn channel(&self, i: u64) -> usize {
        (i % self.count as u64) as usize
    }

    /// When publication `i` is due; `None` past the last one.
    fn due(&self, i: u64) -> Option<tokio::time::Instant> {
        (i < self.total).then(|| spread_due(self.start, self.per_s, i))
    }

    /// The channel publication `i` goes to.
    fn name(&self, i: u64) -> String {
        let k = self.channel(i);
        if self.group {
            self.channels.group(k)
        } else {
            self.channels.personal(k)
        }
    }

    /// The data of publication `i`, stamped now (it is being sent); counted as sent.
    fn data(&self, i: u64) -> String {
        self.sent.fetch_add(1, Ordering::Relaxed);
        // The sequence number is per channel, as a subscriber would see it.
        let seq = i / self.count as u64 + 1;
        payload(seq, now_us(), self.size)
    }

    /// Publication `i` was accepted (true) or refused.
    fn outcome(&self, i: u64, accepted: bool) {
        if accepted {
            self.accepted[self.channel(i)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How many publications `per_s` a second make over `seconds`.
pub fn schedule_total(per_s: f64, seconds: u64) -> u64 {
    if per_s.is_finite() && per_s > 0.0 {
        (per_s * seconds as f64).round() as u64
    } else {
        0
    }
}

/// When publication `i` of an even spread of `per_s` a second is due, after `start`.
pub fn spread_due(start: tokio::time::Instant, per_s: f64, i: u64) -> tokio::time::Instant {
    start + Duration::from_secs_f64(i as f64 / per_s)
}

/// A spread published through an HTTP endpoint.
struct ViaHttp<'s, 'a> {
    spread: &'s Spread<'a>,
    api: HttpApi,
}

impl Schedule for ViaHttp<'_, '_> {
    fn due(&self, i: u64) -> Option<tokio::time::Instant> {
        self.spread.due(i)
    }

    fn body(&self, i: u64) -> String {
        self.api.body(&self.spread.name(i), &self.spread.data(i))
    }

    fn path(&self, i: u64) -> Option<String> {
        (self.api.channel == ChannelIn::Path).then(|| self.api.request_path(&self.spread.name(i)))
    }

    fn outcome(&self, i: u64, accepted: bool) {
        self.spread.outcome(i, accepted);
    }
}

/// Where and how the backend publishes.
struct Backend<'a> {
    /// The HTTP endpoint; `None`: NATS `PUB`s.
    api: Option<HttpApi>,
    targets: &'a [Arc<Target>],
    addrs: &'a [std::net::SocketAddr],
    /// `Authorization` header value.
    auth: Option<String>,
    deadline: tokio::time::Instant,
}

impl Backend<'_> {
    /// Publishes `spread` (HTTP: on `connections` keep-alive connections).
    async fn publish(&self, spread: &Spread<'_>, connections: usize) -> anyhow::Result<PubReport> {
        if spread.total == 0 {
            return Ok(PubReport::default());
        }
        let Some(api) = self.api else {
            return publish_nats(self.targets, self.deadline, spread).await;
        };
        crate::httppub::publish(
            self.addrs,
            api.path,
            self.auth.as_deref(),
            connections,
            self.deadline,
            &ViaHttp { spread, api },
        )
        .await
    }
}

/// Largest number of `PUB`s written at once by a NATS publisher that fell behind.
const NATS_BATCH: u64 = 256;

/// Publishes `spread` as a NATS client: `PUB`s over one WebSocket per target,
/// publication `i` on connection `i mod targets`, each written when due (those due
/// together in one write). NATS acknowledges nothing: a publication counts as
/// accepted once written, and a final `PING`, whose `PONG` confirms that the server
/// read everything before it, ends each connection. Fails only when a connection
/// failed and nothing was sent (as [`crate::httppub::publish`]).
async fn publish_nats(
    targets: &[Arc<Target>],
    deadline: tokio::time::Instant,
    spread: &Spread<'_>,
) -> anyhow::Result<PubReport> {
    anyhow::ensure!(!targets.is_empty(), "no address to publish to");
    let step = targets.len() as u64;
    let reports = futures_util::future::join_all(
        targets
            .iter()
            .enumerate()
            .map(|(c, t)| nats_connection(t, c as u64, step, deadline, spread)),
    )
    .await;
    let mut total = PubReport::default();
    let mut failed = None;
    for (report, error) in reports {
        total.add(&report);
        if let Some(e) = error {
            say!("a NATS publishing connection stopped: {e:#}");
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) if total.sent == 0 => Err(e),
        _ => Ok(total),
    }
}

/// One NATS publisher's loop over publications `first`, `first + step`, ...: what it
/// got done, and the error that ended it, if any.
async fn nats_connection(
    target: &Target,
    first: u64,
    step: u64,
    deadline: tokio::time::Instant,
    spread: &Spread<'_>,
) -> (PubReport, Option<anyhow::Error>) {
    let mut report = PubReport::default();
    let work = async {
        let op = Protocol::Nats.opcode();
        let mut client = WsClient::connect_as(target, None, Protocol::Nats.subprotocol()).await?;
        let mut session = Session::new(Protocol::Nats, "", false);
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        handshake(&mut client, &mut session, limit).await?;
        let WsClient {
            mut reader,
            mut writer,
        } = client;
        let mut seen = Vec::new();
        let mut out = Vec::new();
        let mut i = first;
        while let Some(due) = spread.due(i).filter(|&d| d < deadline) {
            // Answer the server's pings while waiting for the next publication.
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
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
            // Everything due by now leaves in one write.
            out.clear();
            let now = tokio::time::Instant::now();
            let from = i;
            let mut n = 0u64;
            while n < NATS_BATCH && spread.due(i).is_some_and(|d| d <= now && d < deadline) {
                out.extend_from_slice(&nats_pub(&spread.name(i), &spread.data(i)));
                i += step;
                n += 1;
            }
            writer.send(op, &out).await?;
            for j in (from..i).step_by(step as usize) {
                spread.outcome(j, true);
            }
            report.sent += n;
            report.accepted += n;
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
        tokio::time::timeout_at(deadline, confirm)
            .await
            .context("no PONG after the last PUB")??;
        anyhow::Ok(())
    };
    let result = work.await;
    (report, result.err())
}

/// Counters shared by the user tasks and the progress line.
struct Shared {
    latencies: LatencyShards,
    /// Each node's users' samples (a cluster: `--url` repeated).
    nodes: Vec<LatencyShards>,
    /// Samples since the last progress line.
    recent: LatencyShards,
    /// Samples since the last timeline point.
    timeline: Arc<LatencyShards>,
    ready: AtomicUsize,
    setup_failed: AtomicUsize,
    /// Which users subscribed.
    subscribed: Vec<AtomicBool>,
    delivered: AtomicU64,
    sent: AtomicU64,
}

/// How one user ended.
struct UserResult {
    user: usize,
    subscribed: bool,
    received: u64,
    failure: Option<String>,
}

/// Runs the scenario and prints the figures.
pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    if args.json {
        crate::report::human_to_stderr();
    }
    // None: NATS, published to as a NATS client.
    let api = HttpApi::of(args.protocol);
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
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
    let publish_addrs: Vec<_> = publish_targets.iter().map(|t| t.http_addr()).collect();
    let sources = source_addrs(&first, args.source_ips);
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("u{}", std::process::id()));
    let channels = Arc::new(Channels::new(args.protocol, &prefix, args.group_size));
    let groups = channels.groups(args.users);
    let how = match api {
        Some(api) => format!(
            "HTTP {} on {} connection(s)",
            api.describe(),
            args.http_connections
        ),
        None => format!("NATS PUB on {} connection(s)", publish_targets.len()),
    };
    say!(
        "users ({:?}): {} users over {} node(s), groups of {} ({groups} groups); {} publication(s)/s per user{} for {} s (~{} B) via {how}",
        args.protocol,
        args.users,
        targets.len(),
        args.group_size,
        args.rate,
        if args.group_rate > 0.0 {
            format!(", {} /s per group", args.group_rate)
        } else {
            String::new()
        },
        args.duration,
        args.size,
    );

    let shared = Arc::new(Shared {
        latencies: LatencyShards::new(16),
        nodes: targets.iter().map(|_| LatencyShards::new(4)).collect(),
        recent: LatencyShards::new(16),
        timeline: Arc::new(LatencyShards::new(16)),
        ready: AtomicUsize::new(0),
        setup_failed: AtomicUsize::new(0),
        subscribed: (0..args.users).map(|_| AtomicBool::new(false)).collect(),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let progress = {
        let shared = shared.clone();
        let total = args.users;
        let (mut sent_rate, mut delivered_rate) = (Rate::default(), Rate::default());
        Progress::start(move |secs| {
            let sent = shared.sent.load(Ordering::Relaxed);
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let now = Percentiles::of(&shared.recent.take());
            format!(
                "[{secs:6.1} s] {} of {total} subscribed, {} failed | {sent} published, {:.0}/s now | {delivered} delivered, {:.0}/s now | p50 {:.1} ms p99 {:.1} ms now",
                shared.ready.load(Ordering::Relaxed),
                shared.setup_failed.load(Ordering::Relaxed),
                sent_rate.update(sent),
                delivered_rate.update(delivered),
                now.p50 as f64 / 1000.0,
                now.p99 as f64 / 1000.0
            )
        })
    };

    // Connect and subscribe every user.
    let started = Instant::now();
    let setup_deadline = tokio::time::Instant::now() + Duration::from_secs(args.setup_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks: JoinSet<UserResult> = JoinSet::new();
    for i in 0..args.users {
        let node = &targets[i % targets.len()];
        let own = vec![channels.personal(i), channels.group(channels.group_of(i))];
        // The protocols that name channels in the path subscribe to both there.
        let target = if args.protocol.channel_in_path() {
            Arc::new(Target {
                path: args.protocol.subscribe_path_all(&node.path, &own),
                ..(**node).clone()
            })
        } else {
            node.clone()
        };
        let user = User {
            i,
            node: i % targets.len(),
            protocol: args.protocol,
            target,
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            channels: own,
            shared: shared.clone(),
            setup_deadline,
        };
        let (gate, stop) = (gate.clone(), stop_rx.clone());
        tasks.spawn(async move { user.run(gate, stop).await });
    }
    crate::sub::wait_set_up(
        &shared.ready,
        &shared.setup_failed,
        args.users,
        setup_deadline,
    )
    .await;
    let subscribed = shared.ready.load(Ordering::Relaxed);
    say!(
        "{subscribed} users subscribed, {} failed, in {:.2} s",
        shared.setup_failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if subscribed == 0 {
        let _ = stop_tx.send(true);
        bail!("no user could subscribe");
    }
    if args.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }

    // Publish for D seconds, measuring the servers' CPU and our own meanwhile.
    let cpu_watch = CpuWatch::start(&args.server_pids);
    let own_cpu = CpuMark::now(std::process::id()).ok();
    let sampler = Sampler::start(shared.timeline.clone());
    let publish_started = Instant::now();
    let publish_deadline = tokio::time::Instant::now()
        + Duration::from_secs(args.duration)
        + Duration::from_secs(args.drain.max(5));
    let personal = Spread::new(&channels, false, &args, &shared.sent);
    let group = Spread::new(&channels, true, &args, &shared.sent);
    // The group channels get their own few connections (their rate is small).
    let group_connections = if group.total > 0 {
        args.http_connections.div_ceil(8)
    } else {
        0
    };
    let backend = Backend {
        api,
        targets: &publish_targets,
        addrs: &publish_addrs,
        auth: api
            .filter(|a| a.api_key)
            .map(|_| format!("apikey {}", args.api_key)),
        deadline: publish_deadline,
    };
    let (personal_report, group_report) = tokio::join!(
        backend.publish(&personal, args.http_connections),
        backend.publish(&group, group_connections)
    );
    let publish_span = publish_started.elapsed();
    let mut published = PubReport::default();
    let mut publish_errors = ErrorTally::default();
    for report in [personal_report, group_report] {
        match report {
            Ok(r) => published.add(&r),
            Err(e) => {
                say!("publisher failed: {e:#}");
                publish_errors.add(&format!("{e:#}"));
            }
        }
    }

    // Every subscribed user's expected deliveries: its channel's accepted
    // publications and its group's.
    let accepted_of = |spread: &Spread<'_>, k: usize| {
        u64::from(
            spread
                .accepted
                .get(k)
                .map_or(0, |a| a.load(Ordering::Relaxed)),
        )
    };
    let expected_of =
        |i: usize| accepted_of(&personal, i) + accepted_of(&group, channels.group_of(i));
    let expected_all: u64 = (0..args.users)
        .filter(|&i| shared.subscribed[i].load(Ordering::Relaxed))
        .map(expected_of)
        .sum();
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain);
    while shared.delivered.load(Ordering::Relaxed) < expected_all
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run_span = publish_started.elapsed();
    let server_cpu = cpu_watch.finish();
    let own = own_cpu.and_then(|m| m.since().ok());
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(args.users);
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(joined)) = tokio::time::timeout_at(grace, tasks.join_next()).await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => say!("user task failed: {e}"),
        }
    }
    tasks.abort_all();
    let points = sampler.finish().await;
    drop(progress);

    // Aggregate.
    let mut expected = 0u64;
    let (mut delivered, mut missing, mut extra) = (0u64, 0u64, 0u64);
    let mut failures = ErrorTally::default();
    // Per node: (subscribed, expected, delivered).
    let mut per_node = vec![(0usize, 0u64, 0u64); targets.len()];
    for r in &results {
        if let Some(f) = &r.failure {
            failures.add(f);
        }
        if !r.subscribed {
            continue;
        }
        let want = expected_of(r.user);
        let node = &mut per_node[r.user % targets.len()];
        *node = (node.0 + 1, node.1 + want, node.2 + r.received);
        expected += want;
        delivered += r.received;
        missing += want.saturating_sub(r.received);
        extra += r.received.saturating_sub(want);
    }
    let lat = Percentiles::of(&shared.latencies.merged());
    let publish_per_s = per_second(published.sent, publish_span);

    say!("--- users result ---");
    say!(
        "publications:   {} sent, {} accepted, {} refused in {:.2} s: {publish_per_s:.0}/s achieved (asked {:.0}/s)",
        published.sent,
        published.accepted,
        published.refused,
        publish_span.as_secs_f64(),
        personal.per_s + group.per_s
    );
    say!(
        "deliveries:     {delivered} of {expected} expected: {missing} missing, {extra} extra (duplicates), over {:.2} s",
        run_span.as_secs_f64()
    );
    say!(
        "latency (ms):   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
        lat.p50 as f64 / 1000.0,
        lat.p90 as f64 / 1000.0,
        lat.p99 as f64 / 1000.0,
        lat.p999 as f64 / 1000.0,
        lat.max as f64 / 1000.0,
        lat.count
    );
    for line in crate::cpu::lines(&server_cpu) {
        say!("{line}");
    }
    if let Some((secs, pct)) = own {
        say!("bench CPU:      {secs:.2} s = {pct:.0} % of one core");
    }
    for (kind, n) in failures.by_count().into_iter().take(5) {
        say!("  user failure ({n}): {kind}");
    }
    for (kind, n) in publish_errors.by_count() {
        say!("  publisher failure ({n}): {kind}");
    }
    let row = RunRow {
        what: "all".into(),
        subscribed,
        publish_per_s,
        delivered,
        expected,
        delivered_per_s: per_second(delivered, run_span),
        latency: lat,
        server_cpu: crate::cpu::total_percent(&server_cpu),
    };
    let mut rows = Vec::new();
    let mut nodes_json = Vec::new();
    for (k, target) in targets.iter().enumerate() {
        let (node_subscribed, node_expected, node_delivered) = per_node[k];
        let node_lat = Percentiles::of(&shared.nodes[k].merged());
        // A server's CPU goes with its node when a PID is given per --url, in order.
        let node_cpu = (server_cpu.len() == targets.len())
            .then(|| server_cpu[k].used.map(|(_, pct)| pct))
            .flatten();
        rows.push(RunRow {
            what: format!("node {k} {}", target.addr),
            subscribed: node_subscribed,
            publish_per_s,
            delivered: node_delivered,
            expected: node_expected,
            delivered_per_s: per_second(node_delivered, run_span),
            latency: node_lat,
            server_cpu: node_cpu,
        });
        nodes_json.push(json!({
            "url": args.urls[k],
            "subscribed": node_subscribed,
            "expected": node_expected,
            "delivered": node_delivered,
            "latency_us": percentiles_json(&node_lat),
        }));
    }
    let title = format!(
        "users: {} users ({:?}), {} publications/s, groups of {}",
        subscribed,
        args.protocol,
        (personal.per_s + group.per_s).round(),
        args.group_size
    );
    crate::table::finish(
        rows,
        row,
        targets.len() == 1,
        args.plot
            .as_deref()
            .map(|path| (path, title.as_str(), points.as_slice())),
    )?;
    if args.json {
        let doc = json!({
            "scenario": "users",
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "users": args.users,
            "subscribed": subscribed,
            "setup_failed": shared.setup_failed.load(Ordering::Relaxed),
            "group_size": args.group_size,
            "groups": groups,
            "duration_s": args.duration,
            "publish_via": how,
            "publications": {
                "asked_per_s": personal.per_s + group.per_s,
                "sent": published.sent, "accepted": published.accepted,
                "refused": published.refused, "per_s": publish_per_s.round(),
            },
            "expected": expected,
            "delivered": delivered,
            "missing": missing,
            "extra": extra,
            "loss": if expected > 0 { missing as f64 / expected as f64 } else { 0.0 },
            "run_s": run_span.as_secs_f64(),
            "latency_us": percentiles_json(&lat),
            "nodes": nodes_json,
            "server_cpu": crate::cpu::procs_json(&server_cpu),
            "bench_cpu_percent_of_core": own.map(|(_, p)| p),
            "timeline": points_json(&points),
        });
        println!("{doc}");
    }
    Ok(())
}

/// One user: its connection and channels.
struct User {
    i: usize,
    /// Index of its node in `--url`.
    node: usize,
    protocol: Protocol,
    target: Arc<Target>,
    source: Option<IpAddr>,
    channels: Vec<String>,
    shared: Arc<Shared>,
    setup_deadline: tokio::time::Instant,
}

impl User {
    async fn run(self, gate: Arc<Semaphore>, mut stop: watch::Receiver<bool>) -> UserResult {
        let mut result = UserResult {
            user: self.i,
            subscribed: false,
            received: 0,
            failure: None,
        };
        let mut session = Session::subscriber(self.protocol, &self.channels);
        let opened = crate::sub::open(
            &self.target,
            self.source,
            &mut session,
            self.protocol.subprotocol(),
            &gate,
            self.setup_deadline,
        )
        .await;
        let mut client = match opened {
            Ok(c) => c,
            Err(e) => {
                if !matches!(e, crate::sub::SetupError::Gate) {
                    self.shared.setup_failed.fetch_add(1, Ordering::Relaxed);
                }
                result.failure = Some(e.to_string());
                return result;
            }
        };
        result.subscribed = true;
        self.shared.subscribed[self.i].store(true, Ordering::Relaxed);
        self.shared.ready.fetch_add(1, Ordering::Relaxed);
        let op = self.protocol.opcode();
        let mut seen: Vec<Seen> = Vec::with_capacity(16);
        let mut batch: Vec<u64> = Vec::with_capacity(16);
        loop {
            let event = tokio::select! {
                biased;
                e = client.reader.next_event() => e,
                () = crate::idle::stopped(&mut stop) => break,
            };
            let failure =
                crate::sub::drain_events(&mut client, &mut session, op, event, &mut seen).await;
            if !seen.is_empty() {
                let now = now_us();
                result.received += seen.len() as u64;
                batch.extend(
                    seen.drain(..)
                        .filter_map(|s| s.ts)
                        .map(|ts| now.saturating_sub(ts)),
                );
                for shards in [
                    &self.shared.latencies,
                    &self.shared.nodes[self.node],
                    &self.shared.recent,
                    &*self.shared.timeline,
                ] {
                    shards.record(self.i, &batch);
                }
                self.shared
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            if failure.is_some() {
                result.failure = failure;
                break;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: UsersArgs,
    }

    #[test]
    fn defaults_and_flags() {
        let a = Cli::try_parse_from(["users"]).unwrap().args;
        assert_eq!(
            (a.users, a.group_size, a.rate, a.group_rate),
            (10_000, 100, 1.0, 0.0)
        );
        assert_eq!(a.protocol, Protocol::Starling);
        assert!(a.plot.is_none() && !a.json && a.server_pids.is_empty());
        let a = Cli::try_parse_from([
            "users",
            "--url",
            "ws://127.0.0.1:1/connection/websocket",
            "--url",
            "ws://127.0.0.1:2/connection/websocket",
            "--users",
            "300",
            "--group-size",
            "50",
            "--group-rate",
            "0.5",
            "--settle-ms",
            "250",
            "--server-pid",
            "10",
            "--server-pid",
            "11",
            "--plot",
            "x.svg",
            "--protocol",
            "socketio",
            "--json",
        ])
        .unwrap()
        .args;
        assert_eq!(a.urls.len(), 2);
        assert_eq!((a.users, a.group_size, a.group_rate), (300, 50, 0.5));
        assert_eq!(a.settle_ms, 250);
        assert_eq!(a.server_pids, vec![10, 11]);
        assert_eq!(a.plot, Some(PathBuf::from("x.svg")));
        assert_eq!(a.protocol, Protocol::Socketio);
        assert!(a.json);
        assert!(Cli::try_parse_from(["users", "--users", "many"]).is_err());
    }

    #[test]
    fn channel_names_and_groups() {
        let c = Channels::new(Protocol::Starling, "u7", 100);
        assert_eq!(c.personal(42), "u7:u:42");
        assert_eq!(c.group(3), "u7:g:3");
        assert_eq!(c.group_of(99), 0);
        assert_eq!(c.group_of(100), 1);
        assert_eq!(c.groups(10_000), 100);
        assert_eq!(c.groups(10_001), 101);
        let n = Channels::new(Protocol::Nats, "u7", 0);
        assert_eq!(n.personal(1), "u7.u.1");
        assert_eq!(n.group_of(5), 5, "a group size of 0 means groups of 1");
    }

    #[test]
    fn an_even_spread() {
        assert_eq!(schedule_total(10_000.0, 30), 300_000);
        assert_eq!(schedule_total(2.5, 3), 8);
        assert_eq!(schedule_total(0.0, 30), 0);
        assert_eq!(schedule_total(f64::NAN, 30), 0);
        let start = tokio::time::Instant::now();
        // 4 a second: one every 250 ms; the 5th opens the next second.
        assert_eq!(
            spread_due(start, 4.0, 1) - start,
            Duration::from_millis(250)
        );
        assert_eq!(spread_due(start, 4.0, 4) - start, Duration::from_secs(1));
    }

    #[test]
    fn a_spread_names_channels_in_turn_and_counts_acceptances() {
        let c = Channels::new(Protocol::Starling, "p", 2);
        let a = Cli::try_parse_from([
            "users",
            "--size",
            "60",
            "--users",
            "3",
            "--group-size",
            "2",
            "--rate",
            "2",
            "--group-rate",
            "1",
            "--duration",
            "2",
        ])
        .unwrap()
        .args;
        let sent = AtomicU64::new(0);
        let api = HttpApi::of(Protocol::Starling).unwrap();
        let spread = Spread::new(&c, false, &a, &sent);
        let s = ViaHttp {
            spread: &spread,
            api,
        };
        assert_eq!((spread.total, spread.per_s), (12, 6.0));
        assert!(s.due(11).is_some());
        assert!(s.due(12).is_none());
        assert_eq!(s.path(4), None, "Starling's path is the pool's");
        let body: serde_json::Value = serde_json::from_str(&s.body(4)).unwrap();
        assert_eq!(body["channel"], "p:u:1");
        assert_eq!(
            body["data"]["seq"], 2,
            "the second publication of channel 1"
        );
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        s.outcome(4, true);
        s.outcome(7, true);
        s.outcome(1, false);
        let s = spread;
        let counts: Vec<u32> = s
            .accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![0, 2, 0]);
        let g = Spread::new(&c, true, &a, &sent);
        assert_eq!(
            (g.count, g.total),
            (2, 4),
            "2 groups of 2 (3 users), 1/s, 2 s"
        );
        let body: serde_json::Value =
            serde_json::from_str(&ViaHttp { spread: &g, api }.body(1)).unwrap();
        assert_eq!(body["channel"], "p:g:1");
    }

    #[test]
    fn path_channel_endpoints_get_the_channel_in_the_path_and_the_data_alone() {
        let a = Cli::try_parse_from(["users", "--users", "4", "--duration", "1"])
            .unwrap()
            .args;
        let sent = AtomicU64::new(0);
        for (protocol, prefix) in [(Protocol::Nchan, "/pub/"), (Protocol::Ws, "/publish/")] {
            let c = Channels::new(protocol, "q", 2);
            let spread = Spread::new(&c, false, &a, &sent);
            let api = HttpApi::of(protocol).unwrap();
            let s = ViaHttp {
                spread: &spread,
                api,
            };
            assert_eq!(s.path(6).as_deref(), Some(&*format!("{prefix}q:u:2")));
            let body = s.body(6);
            assert_eq!(
                crate::stats::parse_payload(body.as_bytes()).map(|(seq, _)| seq),
                Some(2),
                "{body}"
            );
            assert!(body.starts_with("{\"seq\":"), "the data alone: {body}");
        }
    }

    #[test]
    fn nats_names_subjects_with_dots() {
        let a = Cli::try_parse_from(["users", "--users", "3", "--group-size", "2"])
            .unwrap()
            .args;
        let sent = AtomicU64::new(0);
        let c = Channels::new(Protocol::Nats, "n", a.group_size);
        let g = Spread::new(&c, true, &a, &sent);
        assert_eq!(g.name(3), "n.g.1");
        let p = Spread::new(&c, false, &a, &sent);
        assert_eq!(p.name(5), "n.u.2");
    }
}
