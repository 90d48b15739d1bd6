//! Many nodes as one system: real `starling` processes sharing real `redis-server`
//! processes (each test starts its own on free ports, so it can kill and restart them),
//! and a real haproxy in front where clients must move between nodes.
//!
//! Publications cross nodes in offset order; history, recovery, presence, `info`,
//! `channels` and `disconnect` answer for the whole cluster; a node killed under load,
//! a Redis restart with and without persistence, a node silently cut off from Redis and
//! a shard restart lose no acknowledged publication for recovering clients, and never
//! hand them wrong data.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{API_KEY, Client, Server, WAIT, api_at, token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use starling_testkit::haproxy::Haproxy;
use starling_testkit::proxy::Proxy;
use starling_testkit::redis::{RedisCluster, RedisServer};
use starling_testkit::{Balance, Balancer};

/// Settings every cluster node of these tests shares: a history namespace with presence
/// and join/leave, quick heartbeats and probes, no per-address limits (clients come
/// through one proxy address).
const NODE: &[&str] = &[
    "--dev",
    "--set",
    "namespaces.chat.history_size=10000",
    "--set",
    "namespaces.chat.history_ttl_secs=600",
    "--set",
    "namespaces.chat.presence=true",
    "--set",
    "namespaces.chat.join_leave=true",
    "--set",
    "cluster.heartbeat_secs=1",
    "--set",
    "cluster.node_timeout_secs=3",
    "--set",
    "cluster.position_check_secs=1",
    "--set",
    "redis.probe_interval_secs=1",
    "--set",
    "redis.command_timeout_ms=1000",
    "--set",
    "server.max_connections_per_ip=0",
    "--set",
    "server.admission_rate_per_ip=0",
    "--set",
    "client.command_rate=0",
];

/// A node named `name` joined to Redis at `urls` (one per shard).
fn node(name: &str, urls: &[String], extra: &[&str]) -> Server {
    let name = format!("server.name={name}");
    let mut args: Vec<&str> = NODE.to_vec();
    args.extend(["--set", &name]);
    for url in urls {
        args.extend(["--redis", url]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Three nodes `a`, `b`, `c` on Redis at `urls`.
fn three(urls: &[String], extra: &[&str]) -> Vec<Server> {
    ["a", "b", "c"]
        .iter()
        .map(|n| node(n, urls, extra))
        .collect()
}

async fn publish(addr: SocketAddr, channel: &str, data: Value) -> (u16, Value) {
    let body = json!({"channel": channel, "data": data}).to_string();
    api_at(addr, "publish", &body, Some(API_KEY)).await
}

/// Publishes and asserts success; returns the offset.
async fn published(addr: SocketAddr, channel: &str, data: Value) -> u64 {
    let (status, body) = publish(addr, channel, data).await;
    assert_eq!(status, 200, "publish: {body}");
    body["result"]["offset"].as_u64().expect("offset")
}

/// Connects anonymously (dev mode) and subscribes; returns the client and the reply.
async fn subscriber(
    server: &Server,
    channel: &str,
    recover: Option<(u64, &str)>,
) -> (Client, Value) {
    let (mut c, _) = Client::connect(server, None).await;
    let reply = subscribe(&mut c, channel, recover).await;
    (c, reply)
}

async fn subscribe(c: &mut Client, channel: &str, recover: Option<(u64, &str)>) -> Value {
    let mut params = json!({"channel": channel});
    if let Some((offset, epoch)) = recover {
        params["recover"] = true.into();
        params["offset"] = offset.into();
        params["epoch"] = epoch.into();
    }
    let reply = c.call("subscribe", params).await;
    assert!(
        reply.get("subscribe").is_some(),
        "subscribe failed: {reply}"
    );
    reply["subscribe"].clone()
}

/// The offsets of the next `n` publications `c` receives on any channel.
async fn offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (_, p) = c.next_publication().await;
        out.push(p["offset"].as_u64().expect("offset"));
    }
    out
}

/// Polls `check` (an API read) until it holds, within [`WAIT`]: the cluster's views
/// (heartbeats, presence) converge within their stated bounds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < WAIT {
        match check().await {
            None => return,
            Some(seen) => last = Some(seen),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {WAIT:?}; last seen: {last:?}");
}

/// Waits until every node reports all its Redis links up (`/ready` 200): publishing can
/// work again before a shard's pub/sub link is back, and subscribing needs that link.
async fn all_ready(nodes: &[Server]) {
    for n in nodes {
        eventually("the node's Redis links are back", || async {
            let (status, body) = n.get("/ready").await;
            (status != 200).then_some(Value::String(body))
        })
        .await;
    }
}

#[tokio::test]
async fn publications_reach_every_node_in_one_order() {
    let redis = RedisServer::start();
    let nodes = three(&[redis.url()], &[]);
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(subscriber(n, "chat:room", None).await.0);
    }
    // Through every node's API, and through a client on node a.
    for i in 0..9u64 {
        let offset = published(nodes[(i % 3) as usize].addr, "chat:room", json!({"i": i})).await;
        assert_eq!(offset, i + 1);
    }
    let (mut writer, _) = Client::connect(&nodes[0], None).await;
    let reply = writer
        .call("publish", json!({"channel": "chat:room", "data": {"i": 9}}))
        .await;
    assert_eq!(reply["publish"]["offset"], 10, "{reply}");
    for c in &mut clients {
        assert_eq!(offsets(c, 10).await, (1..=10).collect::<Vec<_>>());
    }
    // `durable` needs a journal, which a cluster node keeps only when it archives:
    // refused before anything is published (tests/archive.rs has the archiving node).
    let body = json!({"channel": "chat:room", "data": 0, "durable": true}).to_string();
    let (status, r) = api_at(nodes[1].addr, "publish", &body, Some(API_KEY)).await;
    assert_eq!(status, 409, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("archive.enabled")),
        "{r}"
    );
    let (_, r) = api_at(
        nodes[1].addr,
        "history",
        r#"{"channel":"chat:room","limit":0}"#,
        Some(API_KEY),
    )
    .await;
    assert_eq!(r["result"]["offset"], 10, "nothing was published: {r}");
}

#[tokio::test]
async fn history_and_recovery_cross_nodes() {
    let redis = RedisServer::start();
    let nodes = three(&[redis.url()], &[]);
    let (first, reply) = subscriber(&nodes[1], "chat:log", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    assert!(
        !epoch.is_empty(),
        "a subscriber learns the epoch before any publication"
    );
    drop(first);
    for i in 1..=5 {
        published(nodes[0].addr, "chat:log", json!({"n": i})).await;
    }
    // Back on another node: the missed publications come in the reply.
    let (mut back, reply) = subscriber(&nodes[2], "chat:log", Some((0, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got: Vec<u64> = reply["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);
    published(nodes[1].addr, "chat:log", json!({"n": 6})).await;
    assert_eq!(offsets(&mut back, 1).await, [6]);
    // The history API of any node reads the one stream.
    let (status, body) = nodes[1]
        .api("history", json!({"channel": "chat:log", "limit": 10}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 6);
    assert_eq!(body["result"]["epoch"], epoch.as_str());
    assert_eq!(
        body["result"]["publications"].as_array().map(Vec::len),
        Some(6)
    );
    // A position from another epoch is refused plainly, never answered.
    let (_, reply) = subscriber(&nodes[0], "chat:log", Some((3, "not-the-epoch"))).await;
    assert_ne!(reply["recovered"], true, "{reply}");
}

#[tokio::test]
async fn presence_info_channels_and_disconnect_span_the_cluster() {
    let redis = RedisServer::start();
    let nodes = three(&[redis.url()], &[]);
    let t1 = token(json!({"sub": "u1"}));
    let t2 = token(json!({"sub": "u2"}));
    let (mut c1, _) = Client::connect(&nodes[0], Some(&t1)).await;
    let (mut c2, _) = Client::connect(&nodes[1], Some(&t2)).await;
    subscribe(&mut c1, "chat:p", None).await;
    subscribe(&mut c2, "chat:p", None).await;
    // c1 on node a hears c2 join on node b.
    loop {
        let msg = c1.next_json().await;
        if let Some(join) = msg.get("push").and_then(|p| p.get("join")) {
            assert_eq!(join["info"]["user"], "u2");
            break;
        }
    }
    let (status, body) = nodes[2].api("presence", json!({"channel": "chat:p"})).await;
    assert_eq!(status, 200, "{body}");
    let users: BTreeSet<String> = body["result"]["clients"]
        .as_object()
        .expect("clients")
        .values()
        .map(|c| c["user"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(users, BTreeSet::from(["u1".to_string(), "u2".to_string()]));
    let stats = c1
        .call("presence_stats", json!({"channel": "chat:p"}))
        .await;
    assert_eq!(stats["presence_stats"]["num_clients"], 2, "{stats}");
    // Every node shows up in every node's `info` once heartbeats went round.
    for n in &nodes {
        eventually("three nodes in info", || async {
            let (_, body) = n.api("info", json!({})).await;
            let names: Vec<&str> = body["result"]["nodes"]
                .as_array()?
                .iter()
                .filter_map(|n| n["name"].as_str())
                .collect();
            (names != ["a", "b", "c"]).then(|| body.clone())
        })
        .await;
    }
    let (_, body) = nodes[1].api("info", json!({})).await;
    let b = &body["result"]["nodes"][1];
    assert_eq!(
        (b["name"].as_str(), b["connections"].as_u64()),
        (Some("b"), Some(1)),
        "{body}"
    );
    let (status, body) = nodes[2].api("channels", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["channels"]["chat:p"]["num_clients"], 2,
        "{body}"
    );
    // An unsubscribe through node a ends u2's subscription on node b.
    let (status, body) = nodes[0]
        .api("unsubscribe", json!({"user": "u2", "channel": "chat:p"}))
        .await;
    assert_eq!(status, 200, "{body}");
    loop {
        let msg = c2.next_json().await;
        if let Some(u) = msg.get("push").and_then(|p| p.get("unsubscribe")) {
            assert_eq!(u["code"], 2000, "{msg}");
            assert_eq!(msg["push"]["channel"], "chat:p");
            break;
        }
    }
    // A disconnect through node a closes u2's connection on node b.
    let (status, body) = nodes[0].api("disconnect", json!({"user": "u2"})).await;
    assert_eq!(status, 200, "{body}");
    let close = c2.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4503);
}

/// A reader behind the balancer: subscribes with recovery, and whenever its node goes
/// away reconnects through the balancer and recovers from its last offset. Returns the
/// offsets it saw, in order, once it saw the last one (`last` says which, once known).
async fn resilient_reader(
    balancer: SocketAddr,
    channel: &str,
    epoch: String,
    mut last: tokio::sync::watch::Receiver<Option<u64>>,
) -> Vec<u64> {
    let url = format!("ws://{balancer}/connection/websocket");
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = |seen: &[u64], last: &tokio::sync::watch::Receiver<Option<u64>>| {
        last.borrow().is_some_and(|l| seen.last() == Some(&l))
    };
    while !done(&seen, &last) {
        assert!(
            Instant::now() < deadline,
            "reader stuck at {:?}",
            seen.last()
        );
        let Ok(Ok((ws, _))) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str())).await
        else {
            continue;
        };
        let mut c = Client { ws, next_id: 1 };
        let from = seen.last().copied().unwrap_or(0);
        let connected = c.try_call("connect", json!({})).await;
        if connected.is_none_or(|r| r.get("connect").is_none()) {
            continue;
        }
        let params = json!({"channel": channel, "recover": true, "offset": from, "epoch": epoch});
        let Some(reply) = c.try_call("subscribe", params).await else {
            continue;
        };
        let Some(sub) = reply.get("subscribe") else {
            continue;
        };
        assert_eq!(sub["recovered"], true, "recovery must succeed: {reply}");
        for p in sub["publications"].as_array().into_iter().flatten() {
            seen.push(p["offset"].as_u64().expect("offset"));
        }
        while !done(&seen, &last) {
            tokio::select! {
                next = c.try_next_publication() => match next {
                    Some(offset) => seen.push(offset),
                    None => break,
                },
                _ = last.changed() => {}
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_killed_node_loses_no_acknowledged_publication() {
    let redis = RedisServer::start();
    let mut nodes = three(&[redis.url()], &[]);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let balancer = Haproxy::start(&addrs, Balance::RoundRobin);
    let (probe, reply) = subscriber(&nodes[0], "chat:steady", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    drop(probe);
    const TOTAL: u64 = 600;
    let (_total, last) = tokio::sync::watch::channel(Some(TOTAL));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let epoch = epoch.clone();
            tokio::spawn(resilient_reader(
                balancer.addr(),
                "chat:steady",
                epoch,
                last.clone(),
            ))
        })
        .collect();
    // A steady publisher on node a (which survives); node b dies a third of the way.
    let publisher_addr = nodes[0].addr;
    for i in 1..=TOTAL {
        let offset = published(publisher_addr, "chat:steady", json!({"i": i})).await;
        assert_eq!(offset, i);
        if i == TOTAL / 3 {
            nodes[1].kill();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for reader in readers {
        let seen = reader.await.expect("reader");
        assert_eq!(
            seen,
            (1..=TOTAL).collect::<Vec<_>>(),
            "every publication once, in order"
        );
    }
    drop(balancer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_no_acknowledged_publication() {
    let redis = RedisServer::start();
    let quick = [
        "--set",
        "client.reconnect_delay_min_ms=20",
        "--set",
        "client.reconnect_delay_max_ms=100",
    ];
    let urls = [redis.url()];
    let mut nodes = three(&urls, &quick);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let balancer = Haproxy::start(&addrs, Balance::RoundRobin);
    for server in starling_testkit::haproxy::SERVERS {
        balancer.wait_server_status(server, "UP", WAIT);
    }
    let (probe, reply) = subscriber(&nodes[0], "chat:rolling", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    drop(probe);
    let (total, last) = tokio::sync::watch::channel(None);
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let epoch = epoch.clone();
            tokio::spawn(resilient_reader(
                balancer.addr(),
                "chat:rolling",
                epoch,
                last.clone(),
            ))
        })
        .collect();
    // A backend publishing through the balancer: a publish refused by a draining node is
    // retried with the same idempotency key (kept in Redis, so any node answers it), so
    // each publication is acknowledged exactly once whichever node takes the retry.
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (lb, restarted) = (balancer.addr(), restarted.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0u64;
            while !restarted.load(std::sync::atomic::Ordering::SeqCst) || !i.is_multiple_of(100) {
                i += 1;
                let body = json!({"channel": "chat:rolling", "data": {"i": i}, "idempotency_key": format!("p{i}")});
                let start = Instant::now();
                loop {
                    let (status, reply) =
                        api_at(lb, "publish", &body.to_string(), Some(API_KEY)).await;
                    if status == 200 {
                        acknowledged.push(reply["result"]["offset"].as_u64().expect("offset"));
                        break;
                    }
                    assert!(
                        start.elapsed() < WAIT,
                        "publication {i} never acknowledged: {status} {reply}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            acknowledged
        })
    };
    for (k, name) in ["a", "b", "c"].iter().enumerate() {
        // Drain (the node's clients are told to reconnect, the balancer takes it out),
        // then the new version on the same address, back in rotation once ready.
        // (Process waits block: off the runtime's other tasks.)
        nodes[k].signal("TERM");
        let exit = tokio::task::block_in_place(|| nodes[k].wait_exit());
        assert_eq!(exit, Some(0));
        let listen = format!("server.listen={}", addrs[k]);
        let mut args = quick.to_vec();
        args.extend(["--set", &listen]);
        nodes[k] = tokio::task::block_in_place(|| node(name, &urls, &args));
        tokio::task::block_in_place(|| {
            balancer.wait_server_status(starling_testkit::haproxy::SERVERS[k], "UP", WAIT)
        });
    }
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    let acknowledged = publisher.await.expect("publisher");
    let n = acknowledged.len() as u64;
    assert_eq!(
        acknowledged,
        (1..=n).collect::<Vec<_>>(),
        "one offset per publication, none reused"
    );
    let _ = total.send(Some(n));
    for reader in readers {
        let seen = reader.await.expect("reader");
        assert_eq!(
            seen,
            (1..=n).collect::<Vec<_>>(),
            "every publication once, in order"
        );
    }
}

/// Publishes on `addr` every 10 ms for 8 s (across the tests' Redis outages); returns
/// the acknowledged offsets and the number refused. While Redis is away a publish gets a
/// clear, temporary refusal (503 with code 116), never a silent success.
async fn steady_publisher(addr: SocketAddr, channel: &'static str) -> (Vec<u64>, u64) {
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let (status, body) = publish(addr, channel, json!({"t": 1})).await;
        if status == 200 {
            acknowledged.push(body["result"]["offset"].as_u64().expect("offset"));
        } else {
            assert_eq!(
                (status, &body["error"]["code"]),
                (503, &json!(116)),
                "{body}"
            );
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (acknowledged, refused)
}

#[tokio::test]
async fn redis_stopped_for_5_s_under_load_loses_no_acknowledged_publication() {
    let mut redis = RedisServer::start_with(true);
    let nodes = three(&[redis.url()], &[]);
    let (mut live, reply) = subscriber(&nodes[1], "chat:durable", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    // A steady publisher on node a: every 10 ms, before, during and after the outage.
    let publisher = tokio::spawn(steady_publisher(nodes[0].addr, "chat:durable"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ready, _) = nodes[0].get("/ready").await;
    assert_eq!(ready, 503, "/ready tells while Redis is away");
    tokio::time::sleep(Duration::from_millis(4800)).await;
    redis.restart();
    let (acknowledged, refused) = publisher.await.expect("publisher");
    assert!(refused > 0, "the outage was seen");
    all_ready(&nodes).await;
    let last = *acknowledged.last().expect("publications after the outage");
    // The live subscriber got every publication once, in order (holes healed).
    assert_eq!(
        offsets(&mut live, last as usize).await,
        (1..=last).collect::<Vec<_>>()
    );
    // A recovering client from the start gets every acknowledged one, same epoch.
    let (_, reply) = subscriber(&nodes[2], "chat:durable", Some((0, &epoch))).await;
    assert_eq!(reply["recovered"], true, "the epoch survived: {reply}");
    let got: Vec<u64> = reply["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    assert!(acknowledged.iter().all(|o| got.contains(o)));
}

#[tokio::test]
async fn redis_stopped_for_5_s_without_persistence_starts_a_new_epoch() {
    let mut redis = RedisServer::start_with(false);
    let nodes = three(&[redis.url()], &[]);
    let (mut live, reply) = subscriber(&nodes[1], "chat:volatile", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    // A steady publisher before, during and after a 5 s outage.
    let publisher = tokio::spawn(steady_publisher(nodes[0].addr, "chat:volatile"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(5000)).await;
    redis.restart();
    let (acknowledged, refused) = publisher.await.expect("publisher");
    let acknowledged = acknowledged.len();
    assert!(
        acknowledged > 0 && refused > 0,
        "{acknowledged} acknowledged, {refused} refused"
    );
    // The live subscriber got the old stream in order, then is told (4006) rather than
    // fed offsets of another stream.
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, live.ws.next())
            .await
            .expect("in time");
        match msg {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: Value =
                    serde_json::from_str(t.lines().next().unwrap_or("{}")).expect("json");
                if let Some(o) = v["push"]["pub"]["offset"].as_u64() {
                    seen.push(o);
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4006));
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "in order, no hole"
    );
    all_ready(&nodes).await;
    // A recovering client learns plainly that its position is gone.
    let (_, reply) = subscriber(
        &nodes[2],
        "chat:volatile",
        Some((seen.len() as u64, &epoch)),
    )
    .await;
    assert_ne!(reply["recovered"], true, "{reply}");
    assert_ne!(reply["epoch"], epoch.as_str());
}

#[tokio::test]
async fn a_node_silently_cut_off_from_redis_is_detected_and_heals() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr());
    let via_proxy = format!("redis://{}", proxy.addr());
    let a = node("a", &[redis.url()], &[]);
    let b = node("b", &[via_proxy], &[]);
    let (mut reader, _) = subscriber(&b, "chat:cut", None).await;
    published(a.addr, "chat:cut", json!({"i": 1})).await;
    assert_eq!(offsets(&mut reader, 1).await, [1]);
    // Bytes vanish; connections stay open: only the probe can tell.
    proxy.blackhole();
    let cut_at = Instant::now();
    for i in 2..=4 {
        published(a.addr, "chat:cut", json!({"i": i})).await;
    }
    eventually("node b reports its broker link down", || async {
        let (status, body) = b.get("/ready").await;
        (status != 503).then_some(Value::String(body))
    })
    .await;
    let detected = cut_at.elapsed();
    // Stated bound: probe interval (1 s) + command timeout (1 s), with slack.
    assert!(
        detected < Duration::from_secs(5),
        "detected after {detected:?}"
    );
    proxy.restore();
    // Back: the node reconnects, resubscribes and heals the hole in order.
    assert_eq!(offsets(&mut reader, 3).await, [2, 3, 4]);
    published(a.addr, "chat:cut", json!({"i": 5})).await;
    assert_eq!(offsets(&mut reader, 1).await, [5]);
}

#[tokio::test]
async fn three_shards_a_restarted_shard_affects_only_its_channels() {
    let mut shards: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(true)).collect();
    let urls: Vec<String> = shards.iter().map(RedisServer::url).collect();
    let nodes = three(&urls, &[]);
    // Channels spread over the shards; each gets publications and a cross-node reader.
    let channels: Vec<String> = (0..12).map(|i| format!("chat:s{i}")).collect();
    let mut epochs = Vec::new();
    for ch in &channels {
        let (c, reply) = subscriber(&nodes[1], ch, None).await;
        epochs.push(reply["epoch"].as_str().expect("epoch").to_string());
        drop(c);
        for i in 1..=3 {
            published(nodes[0].addr, ch, json!({"i": i})).await;
        }
    }
    shards[0].kill();
    let mut failed = 0;
    for ch in &channels {
        let (status, _) = publish(nodes[2].addr, ch, json!({"during": true})).await;
        if status != 200 {
            assert_eq!(status, 503);
            failed += 1;
        }
    }
    assert!(
        failed > 0 && failed < channels.len(),
        "only the dead shard's channels fail: {failed}"
    );
    shards[0].restart();
    all_ready(&nodes).await;
    for (ch, epoch) in channels.iter().zip(&epochs) {
        eventually("the shard is back", || async {
            let (status, body) = publish(nodes[0].addr, ch, json!({"after": true})).await;
            (status != 200).then_some(body)
        })
        .await;
        let (_, reply) = subscriber(&nodes[2], ch, Some((0, epoch))).await;
        assert_eq!(reply["recovered"], true, "{ch}: {reply}");
    }
}

#[tokio::test]
async fn a_redis_cluster_carries_the_same_guarantees() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let nodes = three(&urls, &["--set", "redis.cluster=true"]);
    let mut readers = Vec::new();
    for n in &nodes {
        readers.push(subscriber(n, "chat:rc", None).await);
    }
    let epoch = readers[0].1["epoch"].as_str().expect("epoch").to_string();
    for i in 1..=6u64 {
        assert_eq!(
            published(nodes[(i % 3) as usize].addr, "chat:rc", json!({"i": i})).await,
            i
        );
    }
    for (c, _) in &mut readers {
        assert_eq!(offsets(c, 6).await, [1, 2, 3, 4, 5, 6]);
    }
    let (_, reply) = subscriber(&nodes[1], "chat:rc", Some((2, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["publications"].as_array().map(Vec::len), Some(4));
}
