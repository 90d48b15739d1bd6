//! `slow`: a busy channel (one publisher at R/s) with K healthy subscribers; after a
//! first phase a stalled subscriber joins (subscribes, then never reads its socket).
//! Reports the healthy subscribers' delivery latency per phase and per second, the
//! server's RSS over time, and whether the stalled client was cut as a slow consumer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use starling_protocol::{Encoding, Push, ReplyBody, ServerMessage, decode_server_messages};
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Target, WsClient, connect_command, source_addrs, subscribe_command};
use crate::fanout::Publisher;
use crate::frame::Event;
use crate::idle::stopped;
use crate::server::{metrics_text, parse_metric, rss_bytes};
use crate::stats::{MAX_LATENCY_US, Percentiles, new_histogram, now_us, parse_payload};

/// Arguments of `slow`.
#[derive(Debug, Args)]
pub struct SlowArgs {
    /// WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Healthy subscribers (they read everything).
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 500)]
    pub size: usize,
    /// Seconds of each phase: first without the stalled subscriber, then with it.
    #[arg(long, default_value_t = 15)]
    pub phase_secs: u64,
    /// Add no stalled subscriber (a control run: both phases healthy).
    #[arg(long)]
    pub no_stall: bool,
    /// Receive buffer of the stalled client's socket, bytes (0: kernel default).
    #[arg(long, default_value_t = 0)]
    pub stalled_rcvbuf: u32,
    /// PID of the server, for its RSS (VmRSS, sampled every 500 ms).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Give up after this many seconds in total.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

/// Latency histograms by the second (of the publication's schedule) it was sent in.
pub struct PerSecond {
    seconds: Vec<Mutex<Histogram<u64>>>,
}

impl PerSecond {
    /// `n` one-second buckets.
    pub fn new(n: usize) -> Self {
        Self {
            seconds: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records `(second, latency µs)` pairs; seconds past the end go to the last bucket.
    pub fn record(&self, values: &[(usize, u64)]) {
        for &(s, v) in values {
            let i = s.min(self.seconds.len() - 1);
            self.seconds[i]
                .lock()
                .expect("histogram lock")
                .saturating_record(v.clamp(1, MAX_LATENCY_US));
        }
    }

    /// Percentiles over seconds `[from, to)`.
    pub fn range(&self, from: usize, to: usize) -> Percentiles {
        let mut all = new_histogram();
        for s in self.seconds.iter().take(to).skip(from) {
            all.add(&*s.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        Percentiles::of(&all)
    }
}

/// The second of the publishing schedule publication `seq` (1-based) belongs to.
pub fn second_of(seq: u64, rate: f64) -> usize {
    if rate <= 0.0 || seq == 0 {
        return 0;
    }
    ((seq - 1) as f64 / rate) as usize
}

/// One server sample.
#[derive(Debug, Clone, Copy)]
struct ServerSample {
    at_ms: u64,
    rss: Option<u64>,
    slow_total: Option<f64>,
    connections: Option<f64>,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: SlowArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let target = Arc::new(Target::resolve(&args.url).await?);
    let sources = source_addrs(&target, args.source_ips);
    let channel: Arc<str> = format!("slow:{}", std::process::id()).into();
    let per_phase = (args.rate * args.phase_secs as f64).round() as u64;
    let total = per_phase * 2;
    let seconds = (args.phase_secs * 2) as usize + 1;
    println!(
        "slow: {} healthy subscribers of {channel}, {} /s of ~{} B, {} s without then {} s with {}",
        args.subscribers,
        args.rate,
        args.size,
        args.phase_secs,
        args.phase_secs,
        if args.no_stall {
            "no stalled subscriber (control)".to_string()
        } else {
            format!(
                "1 stalled subscriber (rcvbuf {})",
                if args.stalled_rcvbuf == 0 {
                    "kernel default".to_string()
                } else {
                    args.stalled_rcvbuf.to_string()
                }
            )
        }
    );
    let latency = Arc::new(PerSecond::new(seconds));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut subs: JoinSet<(u64, Option<String>)> = JoinSet::new();
    for i in 0..args.subscribers {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let (target, channel, latency, ready, failed, gate, stop) = (
            target.clone(),
            channel.clone(),
            latency.clone(),
            ready.clone(),
            failed.clone(),
            gate.clone(),
            stop_rx.clone(),
        );
        let rate = args.rate;
        subs.spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let setup = tokio::time::timeout_at(deadline, subscribe(&target, source, &channel));
            let mut client = match setup.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return (0, Some(format!("setup: {e:#}")));
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return (0, Some("setup: timed out".into()));
                }
            };
            ready.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            healthy(&mut client, &latency, rate, total, stop).await
        });
    }
    loop {
        let (r, f) = (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        if r + f >= args.subscribers {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timeout while subscribing: {r} ready, {f} failed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} subscribed, {} failed, in {:.2} s",
        ready.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );

    // Server sampler: RSS and the slow-consumer counter every 500 ms.
    let t_start = tokio::time::Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<ServerSample>::new()));
    let sampler = {
        let (samples, target, mut stop) = (samples.clone(), target.clone(), stop_rx.clone());
        let pid = args.server_pid;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    _ = tick.tick() => {}
                }
                let at_ms = t_start.elapsed().as_millis() as u64;
                let rss = pid.and_then(|p| rss_bytes(p).ok());
                let text = metrics_text(target.http_addr()).await.ok();
                let m = |name: &str| text.as_deref().and_then(|t| parse_metric(t, name));
                samples.lock().expect("samples").push(ServerSample {
                    at_ms,
                    rss,
                    slow_total: m("starling_slow_consumers_total"),
                    connections: m("starling_connections"),
                });
            }
        })
    };

    // The stalled subscriber joins at the start of the second phase.
    let stalled = if args.no_stall {
        None
    } else {
        let (target, channel) = (target.clone(), channel.clone());
        let at = t_start + Duration::from_secs(args.phase_secs);
        let rcvbuf = args.stalled_rcvbuf;
        let mut stop = stop_rx.clone();
        Some(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut client = stalled_subscribe(&target, &channel, rcvbuf).await?;
            let joined_ms = t_start.elapsed().as_millis() as u64;
            // Never read until told to stop; then see what the server sent.
            stopped(&mut stop).await;
            let (n, close) = drain(&mut client, Duration::from_secs(15)).await;
            anyhow::Ok((joined_ms, n, close))
        }))
    };

    let publisher = Publisher {
        target: target.clone(),
        channel: channel.clone(),
        messages: total,
        rate: Some(args.rate),
        size: args.size,
        api_key: String::new(),
        http_connections: 1,
        deadline,
    };
    let report = publisher.via_ws().await;
    let publish_secs = t_start.elapsed().as_secs_f64();
    // Let the last deliveries arrive (healthy subscribers end once they have all).
    let mut got = Vec::new();
    let grace = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            joined = subs.join_next() => match joined {
                Some(Ok(r)) => got.push(r),
                Some(Err(_)) => {}
                None => break,
            },
            () = tokio::time::sleep_until(grace) => break,
        }
    }
    let _ = stop_tx.send(true);
    while let Ok(Some(joined)) =
        tokio::time::timeout(Duration::from_secs(5), subs.join_next()).await
    {
        if let Ok(r) = joined {
            got.push(r);
        }
    }
    subs.abort_all();
    let _ = sampler.await;
    let stalled = match stalled {
        Some(h) => Some(h.await),
        None => None,
    };

    // Figures.
    let report = report.unwrap_or_default();
    let samples = samples.lock().expect("samples").clone();
    let received: u64 = got.iter().map(|(n, _)| n).sum();
    let complete = got.iter().filter(|(n, _)| *n >= total).count();
    let errors: Vec<&str> = got.iter().filter_map(|(_, e)| e.as_deref()).collect();
    let cut_ms = samples
        .iter()
        .find(|s| s.slow_total.unwrap_or(0.0) > 0.0)
        .map(|s| s.at_ms);
    let phase = args.phase_secs as usize;
    println!("--- slow result ---");
    println!(
        "publications:         {} sent, {} acknowledged, {} refused in {publish_secs:.1} s",
        report.sent, report.accepted, report.refused
    );
    println!(
        "healthy subscribers:  {} of {} got all {total}; {received} deliveries; {} errors{}",
        complete,
        args.subscribers,
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let fmt = |p: Percentiles| {
        format!(
            "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  ({} deliveries)",
            p.p50 as f64 / 1000.0,
            p.p99 as f64 / 1000.0,
            p.p999 as f64 / 1000.0,
            p.max as f64 / 1000.0,
            p.count
        )
    };
    println!(
        "latency, phase 1 (no stalled client): {}",
        fmt(latency.range(0, phase))
    );
    match cut_ms {
        Some(cut) if !args.no_stall => {
            let cut_s = (cut / 1000) as usize;
            println!(
                "latency, phase 2 while the stalled client was connected (s {phase}..{cut_s}): {}",
                fmt(latency.range(phase, cut_s.max(phase)))
            );
            println!(
                "latency, phase 2 after it was cut (s {}..): {}",
                cut_s + 1,
                fmt(latency.range(cut_s + 1, seconds))
            );
        }
        _ => println!(
            "latency, phase 2 ({}): {}",
            if args.no_stall {
                "control, no stalled client"
            } else {
                "stalled client never cut"
            },
            fmt(latency.range(phase, seconds))
        ),
    }
    if let Some(s) = stalled {
        match s {
            Ok(Ok((joined_ms, n, close))) => {
                println!(
                    "stalled client:       subscribed at +{:.1} s; cut at {}; afterwards its socket held {n} publications, then {close}",
                    joined_ms as f64 / 1000.0,
                    cut_ms.map_or("never (no slow-consumer count)".to_string(), |c| format!(
                        "+{:.1} s (±0.5 s; {:.1} s after it subscribed)",
                        c as f64 / 1000.0,
                        c.saturating_sub(joined_ms) as f64 / 1000.0
                    )),
                );
            }
            Ok(Err(e)) => println!("stalled client: failed: {e:#}"),
            Err(e) => println!("stalled client: task failed: {e}"),
        }
    }
    let rss: Vec<u64> = samples.iter().filter_map(|s| s.rss).collect();
    if let (Some(first), Some(max), Some(last)) = (rss.first(), rss.iter().max(), rss.last()) {
        println!(
            "server RSS (MiB):     start {:.1}, max {:.1}, end {:.1}",
            *first as f64 / 1048576.0,
            *max as f64 / 1048576.0,
            *last as f64 / 1048576.0
        );
    }
    println!(
        "per second: latency p50/p99 (ms) of publications sent that second | server RSS | slow-consumer cuts so far | connections"
    );
    for s in 0..seconds.min(samples.len() / 2 + 1) {
        let p = latency.range(s, s + 1);
        let at = samples.iter().find(|x| x.at_ms >= (s as u64 + 1) * 1000);
        println!(
            "  s{s:>3}: {:>8.2} {:>8.2} | {:>7} | {:>3} | {}",
            p.p50 as f64 / 1000.0,
            p.p99 as f64 / 1000.0,
            at.and_then(|x| x.rss)
                .map_or("-".into(), |r| format!("{:.1} MiB", r as f64 / 1048576.0)),
            at.and_then(|x| x.slow_total)
                .map_or("-".into(), |v| format!("{v}")),
            at.and_then(|x| x.connections)
                .map_or("-".into(), |v| format!("{v}")),
        );
    }
    Ok(())
}

async fn subscribe(
    target: &Target,
    source: Option<IpAddr>,
    channel: &str,
) -> anyhow::Result<WsClient> {
    let mut client = WsClient::connect(target, source).await?;
    check_subscribed(
        &client
            .request(&[connect_command(), subscribe_command(2, channel)])
            .await?,
    )?;
    Ok(client)
}

fn check_subscribed(replies: &[ServerMessage]) -> anyhow::Result<()> {
    match replies.get(1) {
        Some(ServerMessage::Reply(r)) => match &r.body {
            Ok(ReplyBody::Subscribe(_)) => Ok(()),
            Ok(other) => bail!("unexpected reply {}", other.name()),
            Err(e) => bail!("subscribe refused: {e}"),
        },
        _ => bail!("no subscribe reply"),
    }
}

/// The stalled subscriber: optionally a small receive buffer, then subscribe.
async fn stalled_subscribe(
    target: &Target,
    channel: &str,
    rcvbuf: u32,
) -> anyhow::Result<WsClient> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if rcvbuf > 0 {
        socket.set_recv_buffer_size(rcvbuf)?;
    }
    socket.bind(std::net::SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        0,
    ))?;
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let mut client = WsClient::upgrade(stream, target).await?;
    check_subscribed(
        &client
            .request(&[connect_command(), subscribe_command(2, channel)])
            .await?,
    )?;
    Ok(client)
}

/// Reads what the socket holds (bounded in time): publications counted, then how the
/// stream ended.
async fn drain(client: &mut WsClient, limit: Duration) -> (u64, String) {
    let mut n = 0u64;
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, client.reader.next_event()).await {
            Err(_) => return (n, "still open (nothing more within the wait)".into()),
            Ok(Err(e)) => return (n, format!("{e:#}")),
            Ok(Ok(Event::Close(code, reason))) => {
                return (n, format!("close frame {code:?} \"{reason}\""));
            }
            Ok(Ok(Event::Text(p))) => {
                if let Ok(msgs) = decode_server_messages(Encoding::Json, &p) {
                    for m in msgs {
                        match m {
                            ServerMessage::Push(Push::Publication { .. }) => n += 1,
                            ServerMessage::Push(Push::Disconnect { code, reason, .. }) => {
                                return (n, format!("disconnect push {code} \"{reason}\""));
                            }
                            _ => {}
                        }
                    }
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// A healthy subscriber: reads everything, records latency by the publication's
/// second. Returns the publications received and the error that ended it, if any.
async fn healthy(
    client: &mut WsClient,
    latency: &PerSecond,
    rate: f64,
    total: u64,
    mut stop: watch::Receiver<bool>,
) -> (u64, Option<String>) {
    let mut n = 0u64;
    let mut batch: Vec<(usize, u64)> = Vec::with_capacity(64);
    while n < total {
        let event = tokio::select! {
            biased;
            e = client.reader.next_event() => e,
            () = stopped(&mut stop) => return (n, None),
        };
        let mut next = Some(event);
        while let Some(event) = next.take() {
            match event {
                Ok(Event::Text(p)) => match decode_server_messages(Encoding::Json, &p) {
                    Ok(msgs) => {
                        let now = now_us();
                        for msg in msgs {
                            if let ServerMessage::Push(Push::Publication { publication, .. }) = msg
                            {
                                n += 1;
                                if let Some((seq, ts)) = parse_payload(&publication.data) {
                                    batch.push((second_of(seq, rate), now.saturating_sub(ts)));
                                }
                            }
                        }
                    }
                    Err(e) => return (n, Some(format!("bad frame: {e}"))),
                },
                Ok(Event::Ping(p)) => {
                    if let Err(e) = client.writer.send(OpCode::Pong, &p).await {
                        return (n, Some(format!("pong: {e}")));
                    }
                }
                Ok(Event::Close(code, reason)) => {
                    return (n, Some(format!("closed by server: {code:?} {reason}")));
                }
                Ok(_) => {}
                Err(e) => return (n, Some(format!("{e:#}"))),
            }
            next = client.reader.buffered_event().transpose();
        }
        latency.record(&batch);
        batch.clear();
    }
    (n, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_of_the_schedule() {
        assert_eq!(second_of(1, 100.0), 0);
        assert_eq!(second_of(100, 100.0), 0);
        assert_eq!(second_of(101, 100.0), 1);
        assert_eq!(second_of(250, 0.5), 498);
        assert_eq!(second_of(0, 10.0), 0);
        assert_eq!(second_of(5, 0.0), 0);
    }

    #[test]
    fn per_second_ranges() {
        let p = PerSecond::new(3);
        p.record(&[(0, 10), (0, 20), (1, 1000), (2, 5000), (9, 7000)]);
        assert_eq!(p.range(0, 1).count, 2);
        assert_eq!(p.range(1, 3).count, 3); // second 9 lands in the last bucket
        assert!(p.range(2, 3).max >= 6990);
        assert_eq!(p.range(0, 3).count, 5);
        assert_eq!(p.range(3, 3), Percentiles::default());
    }
}
