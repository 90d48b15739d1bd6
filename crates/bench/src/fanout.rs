//! `fanout`: N subscribers of one channel, one publisher; deliveries per second,
//! order, and end-to-end latency.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use starling_protocol::{
    Command, Encoding, Method, PublishRequest, Push, ReplyBody, ServerMessage,
    decode_server_messages,
};
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{
    HttpConn, Target, WsClient, connect_command, source_addrs, subscribe_command, wait_until,
};
use crate::frame::Event;
use crate::server::{metrics_text, nonzero_lines};
use crate::stats::{
    LatencyShards, OrderCheck, Percentiles, now_us, parse_payload, payload, per_second,
};

/// How the publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `publish` commands over a WebSocket connection.
    Ws,
    /// `POST /api/publish` on one keep-alive HTTP connection.
    Http,
}

/// Arguments of `fanout`.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
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
    /// Publish through a WebSocket or the HTTP API.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// HTTP API key (for --via http).
    #[arg(long, default_value = "dev-api-key")]
    pub api_key: String,
    /// Channel name (default: a fresh `fanout:<pid>`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Give up (and report missing deliveries) after this many seconds in total.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// How a subscriber's run ended.
#[derive(Debug)]
enum End {
    Complete,
    Stopped,
    Failed(String),
}

struct SubResult {
    check: OrderCheck,
    last_delivery_us: u64,
    end: End,
}

struct Shared {
    latencies: LatencyShards,
    ready: AtomicUsize,
    setup_failed: AtomicUsize,
    /// Sum of deliveries so far (progress display).
    delivered: AtomicU64,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let target = Arc::new(Target::resolve(&args.url).await?);
    let sources = source_addrs(&target, args.source_ips);
    let channel: Arc<str> = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("fanout:{}", std::process::id()))
        .into();
    let expected_per_sub = args.messages;
    println!(
        "fanout: {} subscribers on {channel}, {} publications of ~{} B, {}, via {:?}",
        args.subscribers,
        args.messages,
        args.size,
        if args.burst {
            "burst".to_string()
        } else {
            format!("{} /s", args.rate)
        },
        args.via
    );
    let shared = Arc::new(Shared {
        latencies: LatencyShards::new(64),
        ready: AtomicUsize::new(0),
        setup_failed: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut subs: JoinSet<SubResult> = JoinSet::new();
    for i in 0..args.subscribers {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let (target, gate, shared, stop, channel) = (
            target.clone(),
            gate.clone(),
            shared.clone(),
            stop_rx.clone(),
            channel.clone(),
        );
        subs.spawn(async move {
            subscriber(
                i,
                target,
                source,
                channel,
                gate,
                shared,
                stop,
                expected_per_sub,
                deadline,
            )
            .await
        });
    }

    // All subscribed (or failed), bounded.
    let counts = || {
        (
            shared.ready.load(Ordering::Relaxed),
            shared.setup_failed.load(Ordering::Relaxed),
        )
    };
    let all_in = wait_until(
        deadline,
        || {
            let (r, f) = counts();
            r + f >= args.subscribers
        },
        || {
            let (r, f) = counts();
            format!(
                "{r} subscribed, {f} failed ({:.1} s)",
                started.elapsed().as_secs_f64()
            )
        },
    )
    .await;
    if !all_in {
        let (r, f) = counts();
        println!("timeout while subscribing: {r} ready, {f} failed");
    }
    let subscribed = shared.ready.load(Ordering::Relaxed);
    println!(
        "{subscribed} subscribed, {} failed, in {:.2} s",
        shared.setup_failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if subscribed == 0 {
        let _ = stop_tx.send(true);
        bail!("no subscriber could subscribe");
    }

    // Publish.
    let publisher = Publisher {
        target: target.clone(),
        channel: channel.clone(),
        messages: args.messages,
        rate: (!args.burst).then_some(args.rate),
        size: args.size,
        api_key: args.api_key.clone(),
        deadline,
    };
    let first_publish_us = now_us();
    let pub_report = match args.via {
        Via::Ws => publisher.via_ws().await,
        Via::Http => publisher.via_http().await,
    };
    let publish_done_us = now_us();
    let pub_report = match pub_report {
        Ok(r) => r,
        Err(e) => {
            println!("publisher failed: {e:#}");
            PubReport::default()
        }
    };

    // Wait for deliveries: every subscriber completes, or the deadline passes.
    let mut results = Vec::with_capacity(args.subscribers);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            joined = subs.join_next() => match joined {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => println!("subscriber task failed: {e}"),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => {
                println!("timeout: telling {} unfinished subscribers to stop", subs.len());
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
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!(
                "  {} deliveries, {} subscribers done",
                shared.delivered.load(Ordering::Relaxed),
                results.len()
            );
            last_print = Instant::now();
        }
    }
    let _ = stop_tx.send(true);

    // Aggregate.
    let expected = subscribed as u64 * pub_report.accepted;
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
    let last_delivery_us = results
        .iter()
        .map(|r| r.last_delivery_us)
        .max()
        .unwrap_or(0);
    let span = Duration::from_micros(last_delivery_us.saturating_sub(first_publish_us));
    let publish_span = Duration::from_micros(publish_done_us - first_publish_us);
    let lat = Percentiles::of(&shared.latencies.merged());

    println!("--- fanout result ---");
    println!(
        "publications:         {} sent, {} acknowledged, {} refused ({:.0} publications/s over {:.3} s)",
        pub_report.sent,
        pub_report.accepted,
        pub_report.refused,
        per_second(pub_report.sent, publish_span),
        publish_span.as_secs_f64()
    );
    println!(
        "subscribers:          {subscribed} subscribed, {complete} got everything, {stopped} stopped at the timeout, {} failed",
        failures.len()
    );
    println!(
        "deliveries:           {deliveries} of {expected} expected, {} missing",
        expected.saturating_sub(deliveries)
    );
    println!(
        "order:                {gaps} lost in gaps, {out_of_order} out of order ({unclean} subscribers affected)"
    );
    println!(
        "duration:             {:.3} s (first publish to last delivery)",
        span.as_secs_f64()
    );
    println!("deliveries/s:         {:.0}", per_second(deliveries, span));
    println!(
        "latency (µs):         p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        lat.p50, lat.p99, lat.p999, lat.max, lat.count
    );
    if !failures.is_empty() {
        failures.sort_unstable();
        failures.dedup();
        for f in failures.iter().take(5) {
            println!("  subscriber failure: {f}");
        }
    }
    if let Ok(text) = metrics_text(target.http_addr()).await {
        for line in nonzero_lines(
            &text,
            &[
                "starling_slow_consumers",
                "starling_errors_total",
                "starling_connections ",
            ],
        ) {
            println!("server: {line}");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    i: usize,
    target: Arc<Target>,
    source: Option<IpAddr>,
    channel: Arc<str>,
    gate: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    expected: u64,
    deadline: tokio::time::Instant,
) -> SubResult {
    let failed = |e: String| SubResult {
        check: OrderCheck::default(),
        last_delivery_us: 0,
        end: End::Failed(e),
    };
    let permit = gate.acquire_owned().await.expect("semaphore open");
    let setup = async {
        let mut client = WsClient::connect(&target, source).await?;
        let replies = client
            .request(&[connect_command(), subscribe_command(2, &channel)])
            .await?;
        let offset = match replies.get(1) {
            Some(ServerMessage::Reply(r)) => match &r.body {
                Ok(ReplyBody::Subscribe(s)) => s.offset,
                Ok(other) => bail!("unexpected reply {}", other.name()),
                Err(e) => bail!("subscribe refused: {e}"),
            },
            _ => bail!("no subscribe reply"),
        };
        anyhow::Ok((client, offset))
    };
    let (mut client, offset) = match tokio::time::timeout_at(deadline, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared.setup_failed.fetch_add(1, Ordering::Relaxed);
            return failed(format!("setup: {e:#}"));
        }
        Err(_) => {
            shared.setup_failed.fetch_add(1, Ordering::Relaxed);
            return failed("setup: timed out".into());
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    drop(permit);

    let mut check = OrderCheck::after(offset);
    let mut last_delivery_us = 0;
    let mut batch: Vec<u64> = Vec::with_capacity(64);
    let end = loop {
        if check.received >= expected {
            break End::Complete;
        }
        let event = tokio::select! {
            biased;
            e = client.reader.next_event() => e,
            () = crate::idle::stopped(&mut stop) => break End::Stopped,
        };
        // Handle this event and everything already buffered behind it.
        let mut next = Some(event);
        let mut outcome: Option<End> = None;
        while let Some(event) = next.take() {
            match event {
                Ok(Event::Text(p)) => match decode_server_messages(Encoding::Json, &p) {
                    Ok(msgs) => {
                        for msg in msgs {
                            if let ServerMessage::Push(Push::Publication { publication, .. }) = msg
                            {
                                let now = now_us();
                                check.observe(publication.offset);
                                last_delivery_us = now;
                                if let Some((_, ts)) = parse_payload(&publication.data) {
                                    batch.push(now.saturating_sub(ts));
                                }
                            }
                        }
                    }
                    Err(e) => outcome = Some(End::Failed(format!("bad frame: {e}"))),
                },
                Ok(Event::Ping(p)) => {
                    if let Err(e) = client.writer.send(OpCode::Pong, &p).await {
                        outcome = Some(End::Failed(format!("pong: {e}")));
                    }
                }
                Ok(Event::Close(code, reason)) => {
                    outcome = Some(End::Failed(format!("closed by server: {code:?} {reason}")));
                }
                Ok(Event::Binary(_) | Event::Pong) => {}
                Err(e) => outcome = Some(End::Failed(format!("{e:#}"))),
            }
            if outcome.is_some() {
                break;
            }
            next = client.reader.buffered_event().transpose();
        }
        shared.latencies.record(i, &batch);
        shared
            .delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        if let Some(end) = outcome {
            break end;
        }
    };
    SubResult {
        check,
        last_delivery_us,
        end,
    }
}

/// What a publisher got done.
#[derive(Debug, Default)]
pub(crate) struct PubReport {
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
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
                                        println!("publish refused: {e}");
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

    pub(crate) async fn via_http(&self) -> anyhow::Result<PubReport> {
        let addr = self.target.http_addr();
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut http = HttpConn::default();
        let auth = format!("apikey {}", self.api_key);
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let start = tokio::time::Instant::now();
        let mut report = PubReport::default();
        while report.sent < self.messages {
            let due = self.due(start, report.sent);
            tokio::time::sleep_until(due).await;
            let data = payload(report.sent + 1, now_us(), self.size);
            let body = format!(
                "{{\"channel\":{},\"data\":{data}}}",
                serde_json::to_string(&*self.channel)?
            );
            let exchange =
                http.exchange(&mut stream, addr, "/api/publish", &headers, body.as_bytes());
            let (status, body) = tokio::time::timeout_at(self.deadline, exchange)
                .await
                .context("publish timed out")??;
            report.sent += 1;
            if status == 200 {
                report.accepted += 1;
            } else {
                if report.refused < 3 {
                    println!(
                        "publish refused: HTTP {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                report.refused += 1;
            }
        }
        Ok(report)
    }
}
