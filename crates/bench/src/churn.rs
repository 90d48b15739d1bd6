//! `churn`: N subscribed clients all drop at once and reconnect immediately (connect,
//! then subscribe with recovery), while M observer clients that are never dropped send
//! `ping` commands on a fixed schedule and record the round trip. Reports how long
//! until every dropped client is admitted and subscribed again, the observers' ping
//! latency before, during and after the storm, and the errors seen.
//!
//! Several processes can share one storm (one process holds ~19,000 connections at
//! most): `--drop-at` gives the wall-clock moment, each churning process writes its
//! completion time to `--done-file`, and an observer process (`--connections 0`)
//! waits for those files (`--wait-done`) to know when the storm ended.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use starling_protocol::{Command, Encoding, Method, ReplyBody, ServerMessage, SubscribeRequest};
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{
    Target, WsClient, connect_command, http_request, source_addrs, subscribe_command,
};
use crate::frame::Event;
use crate::idle::stopped;
use crate::server::{metrics_text, nonzero_lines};
use crate::stats::{ErrorTally, Percentiles, Samples, now_us, quantile_sorted, unix_ms};

/// Arguments of `churn`.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Clients that drop and reconnect (0: observers only).
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Observer clients: never dropped, send `ping` every `--ping-ms`.
    #[arg(long, default_value_t = 0)]
    pub observers: usize,
    /// Milliseconds between two pings of one observer (open loop: on schedule,
    /// whether or not the previous reply came).
    #[arg(long, default_value_t = 20)]
    pub ping_ms: u64,
    /// Channels the churning clients spread over (`<namespace>:c<i % channels>`).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Namespace of those channels (give it history so that recovery means something:
    /// `--set namespaces.churn.history_size=100`).
    #[arg(long, default_value = "churn")]
    pub namespace: String,
    /// Publications made (HTTP API) to each channel before the drop, so that the
    /// channels keep history and the recovering subscribe has something to recover
    /// (a channel with no subscriber and no history is removed, and its successor
    /// has a new epoch: recovery then reports `recovered: false`).
    #[arg(long, default_value_t = 1)]
    pub publish_before: u64,
    /// HTTP API key (for `--publish-before`).
    #[arg(long, default_value = "dev-api-key")]
    pub api_key: String,
    /// Index of this process's first client (so that several processes use
    /// different source addresses and a label in the output).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Drop at this wall-clock time (Unix ms). Default: once everything here is set
    /// up and the observers have pinged for `--baseline-ms`.
    #[arg(long)]
    pub drop_at: Option<u64>,
    /// Observer baseline before the drop, when `--drop-at` is not given.
    #[arg(long, default_value_t = 3_000)]
    pub baseline_ms: u64,
    /// Observers keep pinging this long after the storm ended.
    #[arg(long, default_value_t = 2_000)]
    pub after_ms: u64,
    /// Write "<ms from drop to last re-subscribe>" here once every client is back.
    #[arg(long)]
    pub done_file: Option<PathBuf>,
    /// Observer-only processes: the storm ends when all these files exist (their
    /// largest value is the storm's length).
    #[arg(long, value_delimiter = ',')]
    pub wait_done: Vec<PathBuf>,
    /// One reconnect attempt (TCP + upgrade + connect + subscribe) gives up after this.
    #[arg(long, default_value_t = 30)]
    pub attempt_timeout: u64,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time before the drop (the reconnect
    /// after it is not gated: every client reconnects at once).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Give up after this many seconds in total.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

/// A churning client's position in its channel, for the recovering subscribe.
#[derive(Debug, Clone, Default)]
struct Position {
    offset: u64,
    epoch: String,
}

/// How one churning client's reconnect went.
#[derive(Debug, Default)]
struct Rejoin {
    /// Microseconds from the drop until subscribed again (None: never).
    done_us: Option<u64>,
    attempts: u32,
    recovered: bool,
    errors: ErrorTally,
}

/// A `subscribe` that asks to recover from `pos`.
pub fn recover_command(id: u32, channel: &str, offset: u64, epoch: &str) -> Command {
    Command {
        id,
        method: Method::Subscribe(SubscribeRequest {
            channel: channel.to_string(),
            recover: true,
            offset: Some(offset),
            epoch: Some(epoch.to_string()),
            ..Default::default()
        }),
    }
}

/// Connect, `connect`, subscribe (recovering from `pos` when given).
async fn join(
    target: &Target,
    source: Option<IpAddr>,
    channel: &str,
    pos: Option<&Position>,
) -> anyhow::Result<(WsClient, Position, bool)> {
    let mut client = WsClient::connect(target, source).await?;
    let subscribe = match pos {
        Some(p) => recover_command(2, channel, p.offset, &p.epoch),
        None => subscribe_command(2, channel),
    };
    let replies = client.request(&[connect_command(), subscribe]).await?;
    if let Some(ServerMessage::Reply(r)) = replies.first()
        && let Err(e) = &r.body
    {
        bail!("connect refused: {e}");
    }
    match replies.get(1) {
        Some(ServerMessage::Reply(r)) => match &r.body {
            Ok(ReplyBody::Subscribe(s)) => {
                let last = s.publications.last().map_or(s.offset, |p| p.offset);
                Ok((
                    client,
                    Position {
                        offset: last.max(s.offset),
                        epoch: s.epoch.clone(),
                    },
                    s.recovered,
                ))
            }
            Ok(other) => bail!("unexpected reply {}", other.name()),
            Err(e) => bail!("subscribe refused: {e}"),
        },
        _ => bail!("no subscribe reply"),
    }
}

/// Reads (answering pings) until `until` resolves; an error if the server closes.
async fn hold_until(client: &mut WsClient, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    loop {
        let event = tokio::select! {
            () = stopped(stop) => return Ok(()),
            event = client.reader.next_event() => event,
        };
        match event? {
            Event::Ping(p) => client.writer.send(OpCode::Pong, &p).await?,
            Event::Close(code, reason) => bail!("closed by server: {code:?} {reason}"),
            _ => {}
        }
    }
}

/// Runs the measurement and prints the figures.
pub async fn run(args: ChurnArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let target = Arc::new(Target::resolve(&args.url).await?);
    let sources = source_addrs(&target, args.source_ips);
    let label = format!("churn[{}..{}]", args.first, args.first + args.connections);
    println!(
        "{label}: {} churning clients over {} channels of `{}`, {} observers pinging every {} ms",
        args.connections, args.channels, args.namespace, args.observers, args.ping_ms
    );

    // Observers first: they ping through the whole run.
    let (obs_stop_tx, obs_stop_rx) = watch::channel(false);
    let obs_ready = Arc::new(AtomicUsize::new(0));
    let mut observers: JoinSet<anyhow::Result<ObserverLog>> = JoinSet::new();
    for k in 0..args.observers {
        let source = (!sources.is_empty()).then(|| sources[(args.first + k) % sources.len()]);
        let (target, stop, ready) = (target.clone(), obs_stop_rx.clone(), obs_ready.clone());
        let interval = Duration::from_millis(args.ping_ms.max(1));
        observers.spawn(async move { observer(target, source, interval, stop, ready).await });
    }

    // The churning clients: set up, wait for the drop, reconnect.
    let (drop_tx, drop_rx) = watch::channel(false);
    let (end_tx, end_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let setup_failed = Arc::new(AtomicUsize::new(0));
    let rejoined = Arc::new(AtomicUsize::new(0));
    let gave_up = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let drop_origin = Arc::new(std::sync::OnceLock::<u64>::new());
    let mut churners: JoinSet<Rejoin> = JoinSet::new();
    for j in 0..args.connections {
        let i = args.first + j;
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let channel = format!("{}:c{}", args.namespace, i % args.channels.max(1));
        let (target, gate, ready, failed) = (
            target.clone(),
            gate.clone(),
            ready.clone(),
            setup_failed.clone(),
        );
        let (mut drop_rx, mut end_rx, origin) =
            (drop_rx.clone(), end_rx.clone(), drop_origin.clone());
        let (rejoined, gave_up) = (rejoined.clone(), gave_up.clone());
        let attempt_timeout = Duration::from_secs(args.attempt_timeout.max(1));
        churners.spawn(async move {
            let mut out = Rejoin::default();
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let first = tokio::time::timeout_at(deadline, join(&target, source, &channel, None));
            let (mut client, pos, _) = match first.await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    out.errors.add(&format!("setup: {e:#}"));
                    return out;
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    out.errors.add("setup: timed out");
                    return out;
                }
            };
            ready.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            if let Err(e) = hold_until(&mut client, &mut drop_rx).await {
                out.errors.add(&format!("before the drop: {e:#}"));
            }
            // The drop: close the socket, reconnect at once.
            drop(client);
            let t0 = *origin.get().unwrap_or(&now_us());
            let mut backoff = Duration::from_millis(10);
            while tokio::time::Instant::now() < deadline {
                out.attempts += 1;
                let attempt = tokio::time::timeout(
                    attempt_timeout,
                    join(&target, source, &channel, Some(&pos)),
                );
                match attempt.await {
                    Ok(Ok((mut client, _, recovered))) => {
                        out.done_us = Some(now_us().saturating_sub(t0));
                        out.recovered = recovered;
                        rejoined.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = hold_until(&mut client, &mut end_rx).await {
                            out.errors.add(&format!("after the rejoin: {e:#}"));
                        }
                        return out;
                    }
                    Ok(Err(e)) => out.errors.add(&format!("{e:#}")),
                    Err(_) => out.errors.add("attempt timed out"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            gave_up.fetch_add(1, Ordering::Relaxed);
            out
        });
    }

    // Everything set up (bounded).
    let counts = || {
        (
            ready.load(Ordering::Relaxed),
            setup_failed.load(Ordering::Relaxed),
            obs_ready.load(Ordering::Relaxed),
        )
    };
    let all_in = crate::client::wait_until(
        deadline,
        || {
            let (r, f, o) = counts();
            r + f >= args.connections && o >= args.observers
        },
        || {
            let (r, f, o) = counts();
            format!("{r} subscribed, {f} failed, {o} observers ready")
        },
    )
    .await;
    if !all_in {
        let (r, f, o) = counts();
        println!("{label}: timeout while setting up: {r} ready, {f} failed, {o} observers");
    }
    let established = ready.load(Ordering::Relaxed);
    println!(
        "{label}: {established} subscribed, {} failed, {} observers, in {:.2} s",
        setup_failed.load(Ordering::Relaxed),
        obs_ready.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );

    // History in every channel, so that the recovery has something to recover.
    if args.connections > 0 && args.publish_before > 0 {
        let auth = format!("apikey {}", args.api_key);
        let mut refused = 0;
        for c in 0..args.channels.max(1) {
            for n in 0..args.publish_before {
                let body = format!(
                    "{{\"channel\":\"{}:c{c}\",\"data\":{{\"before\":{n}}}}}",
                    args.namespace
                );
                let (status, _) = http_request(
                    target.http_addr(),
                    "POST",
                    "/api/publish",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                    Duration::from_secs(10),
                )
                .await?;
                refused += u32::from(status != 200);
            }
        }
        println!(
            "{label}: published {} to each of {} channels before the drop ({refused} refused)",
            args.publish_before, args.channels
        );
    }

    // The drop moment.
    match args.drop_at {
        Some(at) => {
            let now = unix_ms();
            if at <= now {
                println!(
                    "warning: --drop-at is {} ms in the past: dropping now",
                    now - at
                );
            } else {
                tokio::time::sleep(Duration::from_millis(at - now)).await;
            }
        }
        None => tokio::time::sleep(Duration::from_millis(args.baseline_ms)).await,
    }
    let t0 = now_us();
    let _ = drop_origin.set(t0);
    let _ = drop_tx.send(true);

    // Storm: until every churner is back (or gave up), or the done files exist.
    let mut rejoins: Vec<Rejoin> = Vec::with_capacity(args.connections);
    let mut rejoined_n = 0usize;
    let mut storm_end_us: Option<u64> = None;
    let mut last_print = Instant::now();
    if args.connections > 0 {
        // Churner tasks keep their new connection until the end: they count themselves
        // back (or given up) through shared counters.
        loop {
            let back = rejoined.load(Ordering::Relaxed);
            let gave_up = gave_up.load(Ordering::Relaxed);
            if back + gave_up >= established {
                storm_end_us = Some(now_us().saturating_sub(t0));
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                println!("{label}: timeout during the storm: {back} of {established} back");
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                println!(
                    "  +{:.1} s: {back} of {established} re-subscribed",
                    now_us().saturating_sub(t0) as f64 / 1e6
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else if !args.wait_done.is_empty() {
        loop {
            if let Some(ms) = read_done_files(&args.wait_done) {
                storm_end_us = Some(ms * 1000);
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                println!("{label}: timeout waiting for {:?}", args.wait_done);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let (Some(path), Some(end)) = (&args.done_file, storm_end_us) {
        std::fs::write(path, format!("{}\n", end / 1000))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let storm_us = storm_end_us.unwrap_or_else(|| now_us().saturating_sub(t0));

    // Observers keep going a little after the storm.
    tokio::time::sleep(Duration::from_millis(args.after_ms)).await;
    let _ = obs_stop_tx.send(true);
    let _ = end_tx.send(true);
    let mut samples = Samples::default();
    let mut pings_sent = 0u64;
    let mut pings_unanswered = 0u64;
    let mut obs_errors = ErrorTally::default();
    let grace = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(joined)) = tokio::time::timeout_at(grace, observers.join_next()).await {
        match joined {
            Ok(Ok(log)) => {
                pings_sent += log.sent;
                pings_unanswered += log.unanswered;
                samples.extend(&log.samples);
                if let Some(e) = log.error {
                    obs_errors.add(&e);
                }
            }
            Ok(Err(e)) => obs_errors.add(&format!("{e:#}")),
            Err(e) => obs_errors.add(&format!("observer task: {e}")),
        }
    }
    observers.abort_all();
    while let Ok(Some(joined)) = tokio::time::timeout_at(grace, churners.join_next()).await {
        if let Ok(r) = joined {
            rejoins.push(r);
        }
    }
    churners.abort_all();

    // Churn figures.
    let mut errors = ErrorTally::default();
    let mut times: Vec<u64> = Vec::new();
    let mut attempts = 0u64;
    let mut recovered = 0usize;
    for r in &rejoins {
        errors.merge(&r.errors);
        attempts += u64::from(r.attempts);
        if let Some(t) = r.done_us {
            times.push(t);
            rejoined_n += 1;
            recovered += usize::from(r.recovered);
        }
    }
    times.sort_unstable();
    println!("--- {label} result ---");
    if args.connections > 0 {
        println!(
            "rejoined:             {rejoined_n} of {established} dropped clients re-admitted and re-subscribed ({recovered} with recovered: true), {attempts} attempts"
        );
        println!(
            "time to rejoin (ms):  all in {:.0}  p50 {:.0}  p90 {:.0}  p99 {:.0}",
            storm_us as f64 / 1000.0,
            quantile_sorted(&times, 0.5) as f64 / 1000.0,
            quantile_sorted(&times, 0.9) as f64 / 1000.0,
            quantile_sorted(&times, 0.99) as f64 / 1000.0
        );
        // How many were back after each second.
        let mut line = String::from("rejoined by:         ");
        let mut s = 1u64;
        while s * 1_000_000 <= storm_us + 1_000_000 && s <= 30 {
            let n = times.partition_point(|&t| t <= s * 1_000_000);
            line.push_str(&format!(" {s}s:{n}"));
            s += 1;
        }
        println!("{line}");
    }
    println!(
        "errors/refusals:      {} ({} attempts failed)",
        if errors.total() == 0 {
            "none".to_string()
        } else {
            errors
                .by_count()
                .iter()
                .map(|(k, n)| format!("{n} × {k}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
        errors.total()
    );
    if args.observers > 0 {
        let fmt = |p: Percentiles| {
            format!(
                "p50 {:.2}  p99 {:.2}  max {:.2}  ({} pings)",
                p.p50 as f64 / 1000.0,
                p.p99 as f64 / 1000.0,
                p.max as f64 / 1000.0,
                p.count
            )
        };
        let before_from = t0.saturating_sub(args.baseline_ms.max(1000) * 1000);
        println!(
            "observer ping (ms) before: {}",
            fmt(samples.window(before_from, t0))
        );
        println!(
            "observer ping (ms) storm:  {}  [{:.2} s]",
            fmt(samples.window(t0, t0 + storm_us)),
            storm_us as f64 / 1e6
        );
        println!(
            "observer ping (ms) after:  {}",
            fmt(samples.window(t0 + storm_us, u64::MAX))
        );
        println!(
            "observer pings:       {pings_sent} sent, {pings_unanswered} unanswered at the end, errors: {}",
            if obs_errors.total() == 0 {
                "none".to_string()
            } else {
                format!("{:?}", obs_errors.by_count())
            }
        );
        let step = 250_000;
        let end = t0 + storm_us + args.after_ms * 1000;
        for (at, p) in samples.timeline(t0.saturating_sub(1_000_000), end, step) {
            println!(
                "  t{:+.2} s: p50 {:.2}  p99 {:.2}  max {:.2}  ({})",
                (at as f64 - t0 as f64) / 1e6,
                p.p50 as f64 / 1000.0,
                p.p99 as f64 / 1000.0,
                p.max as f64 / 1000.0,
                p.count
            );
        }
    }
    if let Ok(text) = metrics_text(target.http_addr()).await {
        for line in nonzero_lines(
            &text,
            &[
                "starling_errors_total",
                "starling_connections ",
                "starling_slow_consumers",
                "starling_admission",
                "starling_rate_limited",
            ],
        ) {
            println!("server: {line}");
        }
    }
    Ok(())
}

/// The largest value in `files` once every one of them exists.
fn read_done_files(files: &[PathBuf]) -> Option<u64> {
    let mut max = 0;
    for f in files {
        let text = std::fs::read_to_string(f).ok()?;
        max = max.max(text.trim().parse::<u64>().ok()?);
    }
    Some(max)
}

/// What an observer measured: `(sent at, round trip)` in µs.
#[derive(Debug, Default)]
struct ObserverLog {
    samples: Vec<(u64, u64)>,
    sent: u64,
    unanswered: u64,
    error: Option<String>,
}

async fn observer(
    target: Arc<Target>,
    source: Option<IpAddr>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    ready: Arc<AtomicUsize>,
) -> anyhow::Result<ObserverLog> {
    let mut client = WsClient::connect(&target, source).await?;
    let replies = client.request(&[connect_command()]).await?;
    if let Some(ServerMessage::Reply(r)) = replies.first()
        && let Err(e) = &r.body
    {
        bail!("connect refused: {e}");
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let WsClient {
        mut reader,
        mut writer,
    } = client;
    let mut log = ObserverLog::default();
    let mut in_flight: VecDeque<(u32, u64)> = VecDeque::new();
    let mut next_id = 2u32;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut json = Vec::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = tick.tick() => {
                json.clear();
                let cmd = Command { id: next_id, method: Method::Ping };
                starling_protocol::encode_command(Encoding::Json, &cmd, &mut json);
                in_flight.push_back((next_id, now_us()));
                next_id = next_id.wrapping_add(1).max(2);
                log.sent += 1;
                if let Err(e) = writer.send_text(&json).await {
                    log.error = Some(format!("ping write: {e}"));
                    break;
                }
            }
            event = reader.next_event() => match event {
                Ok(Event::Text(p)) => {
                    let now = now_us();
                    for msg in starling_protocol::decode_server_messages(Encoding::Json, &p)? {
                        if let ServerMessage::Reply(r) = msg {
                            // Replies come in order: drop pings older than this one.
                            while let Some(&(id, at)) = in_flight.front() {
                                in_flight.pop_front();
                                if id == r.id {
                                    log.samples.push((at, now.saturating_sub(at)));
                                    break;
                                }
                                log.unanswered += 1;
                            }
                        }
                    }
                }
                Ok(Event::Ping(p)) => writer.send(OpCode::Pong, &p).await?,
                Ok(Event::Close(code, reason)) => {
                    log.error = Some(format!("closed by server: {code:?} {reason}"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    log.error = Some(format!("{e:#}"));
                    break;
                }
            },
        }
    }
    log.unanswered += in_flight.len() as u64;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_command_encodes_position() {
        let mut json = Vec::new();
        starling_protocol::encode_command(
            Encoding::Json,
            &recover_command(2, "churn:c1", 41, "ep"),
            &mut json,
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let sub = &v["subscribe"];
        assert_eq!(sub["channel"], "churn:c1");
        assert_eq!(sub["recover"], true);
        assert_eq!(sub["offset"], 41);
        assert_eq!(sub["epoch"], "ep");
    }

    #[test]
    fn done_files_need_all() {
        let dir = std::env::temp_dir().join(format!("churn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let _ = std::fs::remove_file(&b);
        std::fs::write(&a, "1200\n").unwrap();
        assert_eq!(read_done_files(&[a.clone(), b.clone()]), None);
        std::fs::write(&b, "900\n").unwrap();
        assert_eq!(read_done_files(&[a, b]), Some(1200));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
