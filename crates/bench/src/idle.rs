//! `idle`: the server's memory per idle, subscribed connection.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{
    Target, WsClient, connect_command, reply_error, source_addrs, subscribe_command, tcp_connect,
};
use crate::frame::Event;
use crate::server::{metric, rss_bytes, settled_rss};
use crate::stats::bytes_and_kib;

/// How far each connection goes (for the memory breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// TCP only: the server holds an accepted socket waiting for an HTTP request
    /// (raise `websocket.handshake_timeout_secs` or it closes them).
    Tcp,
    /// WebSocket upgrade, no command.
    Upgrade,
    /// Upgrade and `connect`, no subscription.
    Connect,
    /// Upgrade, `connect` and the subscriptions (the default).
    Subscribe,
}

/// Arguments of `idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
    pub url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// PID of the server (its RSS is read from /proc/PID/status).
    #[arg(long)]
    pub server_pid: u32,
    /// Own channels per connection (`idle:<i>`, `idle:<i>.<j>`); every connection
    /// also subscribes to the shared `idle:all`.
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: usize,
    /// How far each connection goes.
    #[arg(long, value_enum, default_value_t = Stage::Subscribe)]
    pub stage: Stage,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Stop (and report what happened) after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let target = Arc::new(Target::resolve(&args.url).await?);
    let sources = source_addrs(&target, args.source_ips);
    let rss_before = rss_bytes(args.server_pid)?;
    println!(
        "server pid {}: RSS with 0 connections: {}",
        args.server_pid,
        bytes_and_kib(rss_before as i64)
    );
    println!(
        "opening {} connections (stage {:?}, {} own channel(s) + idle:all each, {} source IPs)",
        args.connections,
        args.stage,
        args.channels_per_conn,
        sources.len()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..args.connections {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let target = target.clone();
        let gate = gate.clone();
        let ready = ready.clone();
        let failed = failed.clone();
        let dropped = dropped.clone();
        let stop = stop_rx.clone();
        let stage = args.stage;
        let channels = args.channels_per_conn;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let setup =
                tokio::time::timeout_at(deadline, setup(i, &target, source, stage, channels));
            match setup.await {
                Ok(Ok(conn)) => {
                    ready.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let held = hold(conn, stop).await;
                    if held.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    held
                }
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    bail!("setup timed out")
                }
            }
        });
    }

    // Wait until every connection is set up (or failed), bounded.
    let counts = || {
        (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        )
    };
    let all_in = crate::client::wait_until(
        deadline,
        || {
            let (r, f) = counts();
            r + f >= args.connections
        },
        || {
            let (r, f) = counts();
            format!(
                "{r} ready, {f} failed ({:.1} s)",
                started.elapsed().as_secs_f64()
            )
        },
    )
    .await;
    if !all_in {
        let (r, f) = counts();
        println!("timeout: {r} ready, {f} failed of {}", args.connections);
    }
    let setup_time = started.elapsed();
    let ready_n = ready.load(Ordering::Relaxed);
    let failed_n = failed.load(Ordering::Relaxed);
    println!(
        "{ready_n} connections ready, {failed_n} failed, in {:.2} s",
        setup_time.as_secs_f64()
    );
    // Report the first few failures.
    if failed_n > 0 {
        let mut shown = 0;
        while shown < 5 {
            match tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await {
                Ok(Some(Ok(Err(e)))) => {
                    println!("  failure: {e:#}");
                    shown += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }

    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let (rss_after, settled) = settled_rss(
        args.server_pid,
        64 * 1024,
        remaining.min(Duration::from_secs(30)),
    )
    .await?;
    let lost = dropped.load(Ordering::Relaxed);
    let still_open = args.connections - failed.load(Ordering::Relaxed) - lost;
    if lost > 0 {
        println!("warning: {lost} connections were closed by the server while idle");
    }
    let delta = rss_after as i64 - rss_before as i64;
    let metrics_addr = target.http_addr();
    let conns = metric(metrics_addr, "starling_connections")
        .await
        .ok()
        .flatten();
    let subs = metric(metrics_addr, "starling_subscriptions")
        .await
        .ok()
        .flatten();
    let chans = metric(metrics_addr, "starling_channels")
        .await
        .ok()
        .flatten();

    println!("--- idle result ---");
    println!("stage:                    {:?}", args.stage);
    println!("connections held:         {still_open}");
    println!(
        "server RSS, 0 conns:      {}",
        bytes_and_kib(rss_before as i64)
    );
    println!(
        "server RSS, {still_open} conns: {}{}",
        bytes_and_kib(rss_after as i64),
        if settled {
            ""
        } else {
            " (still growing when the wait ended)"
        }
    );
    println!("RSS delta:                {}", bytes_and_kib(delta));
    if still_open > 0 {
        println!(
            "RSS delta / connection:   {}",
            bytes_and_kib(delta / still_open as i64)
        );
    }
    let show = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v}"));
    println!(
        "server metrics:           starling_connections {}, starling_subscriptions {}, starling_channels {}",
        show(conns),
        show(subs),
        show(chans)
    );

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// What a set-up connection holds.
enum Held {
    Tcp(#[allow(dead_code)] tokio::net::TcpStream),
    Ws(WsClient),
}

async fn setup(
    i: usize,
    target: &Target,
    source: Option<IpAddr>,
    stage: Stage,
    channels: usize,
) -> anyhow::Result<Held> {
    if stage == Stage::Tcp {
        return Ok(Held::Tcp(tcp_connect(target, source).await?));
    }
    let mut client = WsClient::connect(target, source).await?;
    if stage == Stage::Upgrade {
        return Ok(Held::Ws(client));
    }
    let mut commands = vec![connect_command()];
    if stage == Stage::Subscribe {
        for j in 0..channels {
            let name = if j == 0 {
                format!("idle:{i}")
            } else {
                format!("idle:{i}.{j}")
            };
            commands.push(subscribe_command(commands.len() as u32 + 1, &name));
        }
        commands.push(subscribe_command(commands.len() as u32 + 1, "idle:all"));
    }
    for reply in client.request(&commands).await? {
        if let Some(e) = reply_error(&reply) {
            bail!("command refused: {e}");
        }
    }
    Ok(Held::Ws(client))
}

/// Keeps the connection open, answering pings, until told to stop.
async fn hold(conn: Held, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Held::Ws(mut client) = conn else {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    };
    loop {
        let event = tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
            event = client.reader.next_event() => event,
        };
        match event? {
            Event::Ping(p) => client.writer.send(OpCode::Pong, &p).await?,
            Event::Close(code, reason) => bail!("closed by server: {code:?} {reason}"),
            _ => {}
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
