//! `publish`: publications per second one node accepts through `POST /api/publish`,
//! with P concurrent publishers (each a keep-alive connection, one request in flight:
//! closed loop), optionally `durable: true` (the reply waits for the message log's
//! fsync). The server's `storage.dir` decides whether there is a log at all.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::task::JoinSet;

use crate::client::{HttpConn, Target};
use crate::server::{metrics_text, nonzero_lines};
use crate::stats::{ErrorTally, LatencyShards, Percentiles, now_us, payload, per_second};

/// Arguments of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// WebSocket endpoint of the server (its HTTP API is on the same listener).
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Concurrent publishers (one keep-alive connection each).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Ask for `durable: true` (reply once the publication is fsynced).
    #[arg(long)]
    pub durable: bool,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Channel (give its namespace history so that the channel exists without
    /// subscribers: `--set namespaces.log.history_size=100`).
    #[arg(long, default_value = "log:bench")]
    pub channel: String,
    /// HTTP API key.
    #[arg(long, default_value = "dev-api-key")]
    pub api_key: String,
}

#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    errors: ErrorTally,
    first_refusal: Option<String>,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.url).await?;
    let addr = target.http_addr();
    println!(
        "publish: {} HTTP publisher(s) for {} s to {}, ~{} B, durable: {}",
        args.publishers, args.duration, args.channel, args.size, args.durable
    );
    let latencies = Arc::new(LatencyShards::new(args.publishers.clamp(1, 64)));
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let mut tasks: JoinSet<anyhow::Result<Tally>> = JoinSet::new();
    for p in 0..args.publishers {
        let latencies = latencies.clone();
        let channel = serde_json::to_string(&args.channel)?;
        let auth = format!("apikey {}", args.api_key);
        let (size, durable) = (args.size, args.durable);
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut http = HttpConn::default();
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            let mut tally = Tally::default();
            let mut batch = Vec::with_capacity(64);
            let mut seq = 0u64;
            while tokio::time::Instant::now() < end {
                seq += 1;
                let sent = now_us();
                let body = format!(
                    "{{\"channel\":{channel},\"data\":{},\"durable\":{durable}}}",
                    payload(seq, sent, size)
                );
                let exchange =
                    http.exchange(&mut stream, addr, "/api/publish", &headers, body.as_bytes());
                match tokio::time::timeout(Duration::from_secs(30), exchange).await {
                    Ok(Ok((200, _))) => {
                        tally.accepted += 1;
                        batch.push(now_us().saturating_sub(sent));
                        if batch.len() == 64 {
                            latencies.record(p, &batch);
                            batch.clear();
                        }
                    }
                    Ok(Ok((status, body))) => {
                        tally.refused += 1;
                        tally.errors.add(&format!("HTTP {status}"));
                        if tally.first_refusal.is_none() {
                            tally.first_refusal =
                                Some(format!("HTTP {status} {}", String::from_utf8_lossy(&body)));
                        }
                    }
                    Ok(Err(e)) => {
                        tally.errors.add(&format!("{e:#}"));
                        break;
                    }
                    Err(_) => {
                        tally.errors.add("request timed out");
                        break;
                    }
                }
            }
            latencies.record(p, &batch);
            Ok(tally)
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined.context("publisher task")? {
            Ok(t) => {
                total.accepted += t.accepted;
                total.refused += t.refused;
                total.errors.merge(&t.errors);
                if total.first_refusal.is_none() {
                    total.first_refusal = t.first_refusal;
                }
            }
            Err(e) => total.errors.add(&format!("{e:#}")),
        }
    }
    let span = start.elapsed();
    let lat = Percentiles::of(&latencies.merged());
    println!("--- publish result ---");
    println!(
        "accepted:             {} in {:.2} s: {:.0} publications/s ({} publishers, durable: {})",
        total.accepted,
        span.as_secs_f64(),
        per_second(total.accepted, span),
        args.publishers,
        args.durable
    );
    println!(
        "reply latency (ms):   p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        lat.p50 as f64 / 1000.0,
        lat.p99 as f64 / 1000.0,
        lat.p999 as f64 / 1000.0,
        lat.max as f64 / 1000.0
    );
    println!(
        "refused/errors:       {} refused, {} errors {:?}{}",
        total.refused,
        total.errors.total() - total.refused,
        total.errors.by_count(),
        total
            .first_refusal
            .map(|r| format!(" (first: {r})"))
            .unwrap_or_default()
    );
    if let Ok(text) = metrics_text(addr).await {
        for line in nonzero_lines(
            &text,
            &[
                "starling_errors_total",
                "starling_journal",
                "starling_log",
                "starling_publications",
            ],
        ) {
            println!("server: {line}");
        }
    }
    Ok(())
}
