//! `idle`: the server's memory per idle, subscribed connection, and how fast the
//! first connections got in (connect + subscribe rate). `--protocol` runs it against
//! the peers (bench/peers.sh): each connection subscribes to its own channel in the
//! peer's protocol and answers its pings while idle.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use starling_websocket::OpCode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{
    Target, WsClient, connect_command, reply_error, source_addrs, subscribe_command, tcp_connect,
};
use crate::frame::Event;
use crate::peer::{Protocol, Session, handshake};
use crate::report::{Progress, Rate, say};
use crate::server::{PidGroup, metric, pss_bytes, settled_rss};
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
///
/// One process holds at most ~19,900 connections (one descriptor each under the
/// 20,000 open-files limit): for more, run several processes with different --first
/// (scripts/cluster-bench.sh does), each spreading its connections over the nodes.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// WebSocket endpoint of a node. Repeat it for several nodes: connection
    /// first+i goes to node (first+i) mod N (round-robin) and the figures are also
    /// given per node.
    #[arg(
        long = "url",
        default_value = "ws://127.0.0.1:8000/connection/websocket"
    )]
    pub urls: Vec<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Number of the first connection (channel names `idle:<first+i>`), so that
    /// several bench processes use distinct channels.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// PID of the server, whose RSS is read from /proc/PID/status; repeat it in the
    /// order of --url for several nodes. A server of several processes (nginx: master
    /// and workers) is `PID+PID+...`: their RSS is summed (and their PSS, which
    /// counts shared memory once, is given too). Without it, no memory figures (a
    /// script that runs several bench processes reads the nodes' RSS itself).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<PidGroup>,
    /// Client protocol of the server: starling, or a peer's (see `fanout
    /// --protocol`). A peer's connection subscribes to its own channel only
    /// (`idle:<i>`, `idle.<i>` for nats), without the shared one, and only at the
    /// subscribe stage with one channel per connection.
    #[arg(long, value_enum, default_value_t = Protocol::Starling)]
    pub protocol: Protocol,
    /// Starling: do not also subscribe every connection to the shared `idle:all`
    /// (one subscription per connection, as the peers' runs have).
    #[arg(long)]
    pub no_shared_channel: bool,
    /// Starling: send `connect` and the subscriptions in the same write as the upgrade
    /// request (one round trip, as the peers' subscribe-in-the-URL), not after the 101
    /// (two round trips, as a browser's WebSocket API must).
    #[arg(long)]
    pub pipeline: bool,
    /// Offer permessage-deflate and fail a connection whose server does not accept it
    /// (the memory of an idle connection with compression negotiated).
    #[arg(long)]
    pub deflate: bool,
    /// Report the connect + subscribe rate of the first this many connections (time
    /// from the start until that many were ready).
    #[arg(long, default_value_t = 10_000)]
    pub rate_first: usize,
    /// Own channels per connection (`idle:<i>`, `idle:<i>.<j>`); every connection
    /// also subscribes to the shared `idle:all`.
    #[arg(long, default_value_t = 1)]
    pub channels_per_conn: usize,
    /// How far each connection goes.
    #[arg(long, value_enum, default_value_t = Stage::Subscribe)]
    pub stage: Stage,
    /// Source addresses 127.0.0.2.. to spread connections over (loopback targets),
    /// so that ephemeral ports never run out.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Connections being set up at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Stop (and report what happened) after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Once every connection is set up, write "<ready> <failed>" to this file (a
    /// script running several processes waits for all their files).
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// Keep the connections open this many seconds after the figures (while a
    /// script reads the servers' memory), then close them.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Print the final figures as one JSON object on stdout; the human-readable lines
    /// go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Runs the measurement and prints the figures.
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    if args.json {
        crate::report::human_to_stderr();
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut targets = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let mut target = Target::resolve(url).await?;
        target.deflate = args.deflate;
        targets.push(Arc::new(target));
    }
    let Some(first) = targets.first().cloned() else {
        bail!("give at least one --url");
    };
    if !args.server_pids.is_empty() && args.server_pids.len() != targets.len() {
        bail!("give one --server-pid per --url, or none");
    }
    let peer = args.protocol != Protocol::Starling;
    if peer && (args.stage != Stage::Subscribe || args.channels_per_conn != 1) {
        bail!(
            "--protocol {:?}: only --stage subscribe with one channel per connection",
            args.protocol
        );
    }
    let sources = source_addrs(&first, args.source_ips);
    let mut rss_before = Vec::new();
    let mut pss_before = Vec::new();
    for group in &args.server_pids {
        let rss = group.rss()?;
        say!(
            "server pid {group}: RSS with 0 connections: {}",
            bytes_and_kib(rss as i64)
        );
        rss_before.push(rss);
        pss_before.push(pss_bytes(group).ok());
    }
    let shared_channel = !peer && !args.no_shared_channel;
    say!(
        "opening {} {:?} connections over {} node(s) (stage {:?}, {} own channel(s){} each, {} source IPs)",
        args.connections,
        args.protocol,
        targets.len(),
        args.stage,
        args.channels_per_conn,
        if shared_channel { " + idle:all" } else { "" },
        sources.len()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let node_ready: Arc<Vec<AtomicUsize>> =
        Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
    let node_dropped: Arc<Vec<AtomicUsize>> =
        Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    // Microseconds from the start until the first `rate_first` connections were ready.
    let rate_first = args.rate_first.clamp(1, args.connections.max(1));
    let first_ready_us = Arc::new(AtomicU64::new(0));
    let progress = {
        let (ready, failed, total) = (ready.clone(), failed.clone(), args.connections);
        let mut rate = Rate::default();
        Progress::start(move |secs| {
            let r = ready.load(Ordering::Relaxed);
            format!(
                "[{secs:6.1} s] {r} of {total} connections ready, {} failed, {:.0} connections/s now",
                failed.load(Ordering::Relaxed),
                rate.update(r as u64)
            )
        })
    };
    let mut tasks = JoinSet::new();
    for i in 0..args.connections {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        // Counted from --first, so that several processes together stay balanced.
        let n = args.first.saturating_add(i);
        let node = n % targets.len();
        let target = targets[node].clone();
        let gate = gate.clone();
        let ready = ready.clone();
        let failed = failed.clone();
        let dropped = dropped.clone();
        let node_ready = node_ready.clone();
        let node_dropped = node_dropped.clone();
        let stop = stop_rx.clone();
        let first_ready_us = first_ready_us.clone();
        let how = How {
            protocol: args.protocol,
            stage: args.stage,
            channels: args.channels_per_conn,
            shared_channel,
            pipeline: args.pipeline,
            deadline,
        };
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let setup = tokio::time::timeout_at(deadline, setup(n, &target, source, how));
            match setup.await {
                Ok(Ok(conn)) => {
                    if ready.fetch_add(1, Ordering::Relaxed) + 1 == rate_first {
                        first_ready_us.store(
                            started.elapsed().as_micros().max(1) as u64,
                            Ordering::Relaxed,
                        );
                    }
                    node_ready[node].fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let held = hold(conn, stop).await;
                    if held.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        node_dropped[node].fetch_add(1, Ordering::Relaxed);
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
    let all_in = loop {
        let (r, f) = counts();
        if r + f >= args.connections {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(progress);
    if !all_in {
        let (r, f) = counts();
        say!("timeout: {r} ready, {f} failed of {}", args.connections);
    }
    let setup_time = started.elapsed();
    let ready_n = ready.load(Ordering::Relaxed);
    let failed_n = failed.load(Ordering::Relaxed);
    say!(
        "{ready_n} connections ready, {failed_n} failed, in {:.2} s",
        setup_time.as_secs_f64()
    );
    let first_us = first_ready_us.load(Ordering::Relaxed);
    let first_rate = (first_us > 0)
        .then(|| crate::stats::per_second(rate_first as u64, Duration::from_micros(first_us)));
    match first_rate {
        Some(r) => say!(
            "connect + subscribe rate: {r:.0}/s for the first {rate_first} ({:.2} s)",
            first_us as f64 / 1e6
        ),
        None => say!("connect + subscribe rate: fewer than {rate_first} connections got in"),
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{ready_n} {failed_n}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Report the first few failures.
    if failed_n > 0 {
        let mut shown = 0;
        while shown < 5 {
            match tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await {
                Ok(Some(Ok(Err(e)))) => {
                    say!("  failure: {e:#}");
                    shown += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }

    let mut rss_after = Vec::new();
    let mut pss_after = Vec::new();
    for group in &args.server_pids {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        rss_after
            .push(settled_rss(group, 64 * 1024, remaining.min(Duration::from_secs(30))).await?);
        pss_after.push(pss_bytes(group).ok());
    }
    let lost = dropped.load(Ordering::Relaxed);
    let still_open = ready_n.saturating_sub(lost);
    if lost > 0 {
        say!("warning: {lost} connections were closed by the server while idle");
    }

    say!("--- idle result ---");
    say!("stage:                    {:?}", args.stage);
    say!("connections held:         {still_open}");
    let show = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v}"));
    let mut nodes_json = Vec::new();
    for (k, target) in targets.iter().enumerate() {
        let held = node_ready[k]
            .load(Ordering::Relaxed)
            .saturating_sub(node_dropped[k].load(Ordering::Relaxed));
        let addr = target.http_addr();
        // The peers have no Starling metrics.
        let starling_metric = |name: &'static str| async move {
            if peer {
                None
            } else {
                metric(addr, name).await.ok().flatten()
            }
        };
        let conns = starling_metric("starling_connections").await;
        let subs = starling_metric("starling_subscriptions").await;
        let chans = starling_metric("starling_channels").await;
        let prefix = if targets.len() > 1 {
            format!("node {k} {}: ", target.addr)
        } else {
            String::new()
        };
        if targets.len() > 1 {
            say!("{prefix}{held} connections held by this process");
        }
        let mut node = json!({
            "url": args.urls[k],
            "held": held,
            "server_connections": conns,
            "server_subscriptions": subs,
            "server_channels": chans,
        });
        if let (Some(&before), Some(&(after, settled))) = (rss_before.get(k), rss_after.get(k)) {
            let delta = after as i64 - before as i64;
            say!(
                "{prefix}server RSS, 0 conns:      {}",
                bytes_and_kib(before as i64)
            );
            say!(
                "{prefix}server RSS, {held} conns: {}{}",
                bytes_and_kib(after as i64),
                if settled {
                    ""
                } else {
                    " (still growing when the wait ended)"
                }
            );
            say!("{prefix}RSS delta:                {}", bytes_and_kib(delta));
            if held > 0 {
                say!(
                    "{prefix}RSS delta / connection:   {}",
                    bytes_and_kib(delta / held as i64)
                );
            }
            node["rss_before"] = json!(before);
            node["rss_after"] = json!(after);
            node["rss_settled"] = json!(settled);
            node["rss_delta_per_connection"] = json!(delta.checked_div(held as i64));
            if let (Some(Some(pb)), Some(Some(pa))) = (pss_before.get(k), pss_after.get(k)) {
                let pss_delta = *pa as i64 - *pb as i64;
                if args.server_pids[k].count() > 1 {
                    say!(
                        "{prefix}PSS delta / connection:   {} (shared memory counted once)",
                        bytes_and_kib(pss_delta.checked_div(held as i64).unwrap_or(0))
                    );
                }
                node["pss_before"] = json!(pb);
                node["pss_after"] = json!(pa);
                node["pss_delta_per_connection"] = json!(pss_delta.checked_div(held as i64));
            }
        }
        if !peer {
            say!(
                "{prefix}server metrics:           starling_connections {}, starling_subscriptions {}, starling_channels {}",
                show(conns),
                show(subs),
                show(chans)
            );
        }
        nodes_json.push(node);
    }
    if args.json {
        let doc = json!({
            "scenario": "idle",
            "protocol": format!("{:?}", args.protocol).to_lowercase(),
            "stage": format!("{:?}", args.stage).to_lowercase(),
            "shared_channel": shared_channel,
            "pipeline": args.pipeline,
            "deflate": args.deflate,
            "connect_rate": {
                "first": rate_first,
                "seconds": (first_us > 0).then(|| first_us as f64 / 1e6),
                "per_s": first_rate.map(f64::round),
            },
            "connections": args.connections,
            "ready": ready_n,
            "failed": failed_n,
            "dropped": lost,
            "held": still_open,
            "setup_s": setup_time.as_secs_f64(),
            "nodes": nodes_json,
        });
        println!("{doc}");
    }

    if args.hold_secs > 0 {
        say!("holding the connections for {} s", args.hold_secs);
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    }
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
    /// A peer's connection and its protocol state (to answer its pings).
    Peer(WsClient, Box<Session>),
}

/// How far each connection goes, in which protocol.
#[derive(Debug, Clone, Copy)]
struct How {
    protocol: Protocol,
    stage: Stage,
    channels: usize,
    shared_channel: bool,
    pipeline: bool,
    deadline: tokio::time::Instant,
}

async fn setup(
    i: usize,
    target: &Target,
    source: Option<IpAddr>,
    how: How,
) -> anyhow::Result<Held> {
    let How {
        protocol,
        stage,
        channels,
        shared_channel,
        pipeline,
        deadline,
    } = how;
    if protocol != Protocol::Starling {
        let channel = protocol.channel_name("idle", i);
        let target = Target {
            path: protocol.subscribe_path(&target.path, &channel),
            ..target.clone()
        };
        let mut client = WsClient::connect_as(&target, source, protocol.subprotocol()).await?;
        let mut session = Session::new(protocol, &channel, true);
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        handshake(&mut client, &mut session, limit).await?;
        return Ok(Held::Peer(client, Box::new(session)));
    }
    if stage == Stage::Tcp {
        return Ok(Held::Tcp(tcp_connect(target, source).await?));
    }
    if stage == Stage::Upgrade {
        return Ok(Held::Ws(WsClient::connect(target, source).await?));
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
        if shared_channel {
            commands.push(subscribe_command(commands.len() as u32 + 1, "idle:all"));
        }
    }
    let (client, replies) = if pipeline {
        WsClient::connect_pipelined(target, source, &commands).await?
    } else {
        let mut client = WsClient::connect(target, source).await?;
        let replies = client.request(&commands).await?;
        (client, replies)
    };
    for reply in replies {
        if let Some(e) = reply_error(&reply) {
            bail!("command refused: {e}");
        }
    }
    Ok(Held::Ws(client))
}

/// Keeps the connection open, answering pings, until told to stop.
async fn hold(conn: Held, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (mut client, mut session) = match conn {
        Held::Ws(client) => (client, None),
        Held::Peer(client, session) => (client, Some(session)),
        Held::Tcp(_) => {
            let _ = stop.wait_for(|s| *s).await;
            return Ok(());
        }
    };
    let mut seen = Vec::new();
    loop {
        let event = tokio::select! {
            () = stopped(&mut stop) => return Ok(()),
            event = client.reader.next_event() => event,
        };
        match event? {
            Event::Ping(p) => client.writer.send(OpCode::Pong, &p).await?,
            Event::Close(code, reason) => bail!("closed by server: {code:?} {reason}"),
            // A peer's protocol-level pings (engine.io `2`, NATS `PING`) get answered.
            Event::Text(p) | Event::Binary(p) => {
                if let Some(session) = session.as_mut() {
                    session.feed(&p, &mut seen)?;
                    seen.clear();
                    let op = session.protocol().opcode();
                    for out in session.take_outbox() {
                        client.writer.send(op, &out).await?;
                    }
                }
            }
            Event::Pong => {}
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
