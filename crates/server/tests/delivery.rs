//! Delivery guarantees under load: recovery across reconnects, presence without zombies.

mod common;

use std::time::Duration;

use common::{Client, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A small deterministic PRNG (xorshift64*), so "random" moments repeat run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CHANNEL: &str = "feed:load";
const CLIENTS: usize = 100;
const RATE: u64 = 5_000;
const TOTAL: u64 = 7_500; // 1.5 s at 5,000 msg/s

/// One client's life: subscribe with recovery from the last offset it saw, read for a
/// random number of publications, vanish without a goodbye, and start over, until it
/// has the last publication. Returns every offset it was given, in order.
async fn reconnecting_reader(server: &Server, epoch: String, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mut seen: Vec<u64> = Vec::new();
    while seen.last() != Some(&TOTAL) {
        let (mut c, _) = Client::connect(server, None).await;
        let last = seen.last().copied().unwrap_or(0);
        let reply = c
            .call(
                "subscribe",
                json!({"channel": CHANNEL, "recover": true, "offset": last, "epoch": epoch}),
            )
            .await;
        let sub = &reply["subscribe"];
        assert_eq!(sub["epoch"], json!(epoch), "{reply}");
        if sub["recovered"] == true {
            for p in sub["publications"].as_array().into_iter().flatten() {
                seen.push(p["offset"].as_u64().expect("offset"));
            }
        } else {
            // A gap too large for one reply (over half the connection's queue): page
            // through history up to where the subscription joined the live stream.
            let top = sub["offset"].as_u64().expect("offset");
            seen.extend(page_history(&mut c, &epoch, last, top).await);
        }
        // Read live publications, then drop the connection at a random moment.
        let budget = 50 + rng.below(1500);
        let mut read = 0;
        while read < budget && seen.last() != Some(&TOTAL) {
            let frame = tokio::time::timeout(WAIT, c.ws.next())
                .await
                .expect("live data in time");
            let Some(Ok(Message::Text(text))) = frame else {
                // Closed by the server (e.g. 4002 slow consumer): recover like any drop.
                break;
            };
            let msg: Value = serde_json::from_str(&text).expect("json");
            if let Some(p) = msg["push"].get("pub") {
                seen.push(p["offset"].as_u64().expect("offset"));
                read += 1;
            }
        }
        drop(c);
    }
    seen
}

/// Offsets `since+1 ..= top` read with `history` pages, then the live publications that
/// arrived meanwhile (they follow `top`).
async fn page_history(c: &mut Client, epoch: &str, mut since: u64, top: u64) -> Vec<u64> {
    let mut paged = Vec::new();
    let mut live = Vec::new();
    while since < top {
        let id = c
            .send(
                "history",
                json!({"channel": CHANNEL, "limit": 100_000, "since": {"offset": since, "epoch": epoch}}),
            )
            .await;
        loop {
            let msg = c.next_json().await;
            if let Some(p) = msg.get("push").and_then(|push| push.get("pub")) {
                live.push(p["offset"].as_u64().expect("offset"));
                continue;
            }
            if msg["id"] != json!(id) {
                continue;
            }
            let page = msg["history"]["publications"]
                .as_array()
                .unwrap_or_else(|| panic!("history covers every gap: {msg}"));
            assert!(!page.is_empty(), "{msg}");
            for p in page {
                let offset = p["offset"].as_u64().expect("offset");
                if offset <= top {
                    paged.push(offset);
                }
            }
            since = paged.last().copied().unwrap_or(top);
            break;
        }
    }
    paged.extend(live);
    paged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_load_gives_every_client_the_full_sequence() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "namespaces.feed.history_size=20000",
        "--set",
        "namespaces.feed.history_ttl_secs=600",
        // 20,000 publications of ~200 bytes each: more than the default 1 MiB per channel.
        "--set",
        "namespaces.feed.history_max_bytes=16777216",
        // A hundred clients reconnecting from one address, over and over.
        "--set",
        "server.admission_rate_per_ip=0",
        // The publisher sends 5,000 commands/s: lift the per-connection rate limit.
        "--set",
        "client.command_rate=0",
    ]);
    // The channel and its epoch exist before anything is published.
    let (mut keeper, _) = Client::connect(&server, None).await;
    let reply = keeper.call("subscribe", json!({"channel": CHANNEL})).await;
    let epoch = reply["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();

    let readers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let epoch = epoch.clone();
            let server = &server;
            async move { reconnecting_reader(server, epoch, 0x9e37_79b9_7f4a_7c15 ^ i as u64).await }
        })
        .collect();

    // The publisher: batches of 50 publish commands every 10 ms = 5,000 msg/s, replies
    // drained concurrently.
    let publisher = async {
        let (p, _) = Client::connect(&server, None).await;
        let (mut sink, mut stream) = p.ws.split();
        let drain = async {
            let mut acked = 0;
            while acked < TOTAL {
                let frame = tokio::time::timeout(WAIT, stream.next())
                    .await
                    .expect("acks in time");
                let Some(Ok(Message::Text(text))) = frame else {
                    continue;
                };
                acked += text.lines().filter(|l| l.contains("\"publish\"")).count() as u64;
            }
        };
        let send = async {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = RATE / 100;
            let mut n = 0;
            while n < TOTAL {
                tick.tick().await;
                let batch: Vec<String> = (0..per_tick)
                    .map(|k| {
                        json!({"id": n + k + 1, "publish": {"channel": CHANNEL, "data": n + k + 1}})
                            .to_string()
                    })
                    .collect();
                sink.send(Message::text(batch.join("\n")))
                    .await
                    .expect("publish");
                n += per_tick;
            }
        };
        tokio::join!(drain, send);
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(readers), publisher);
    let expected: Vec<u64> = (1..=TOTAL).collect();
    for (i, seen) in results.iter().enumerate() {
        assert_eq!(seen.len(), expected.len(), "client {i}: count");
        assert!(
            *seen == expected,
            "client {i}: every publication once, in order"
        );
    }
}

#[tokio::test]
async fn dead_connections_leave_presence_in_bounded_time() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "websocket.ping_interval_secs=1",
        "--set",
        "websocket.pong_timeout_secs=1",
        "--set",
        "namespaces.room.join_leave=true",
    ]);
    let (mut watcher, _) = Client::connect(&server, None).await;
    watcher
        .call("subscribe", json!({"channel": "room:z"}))
        .await;
    // A client that subscribes and then goes silent: it never reads or answers pings,
    // as if its machine vanished (no FIN, no close frame).
    let (mut zombie, head) = common::raw_upgrade(&server).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    use tokio::io::AsyncWriteExt;
    let commands = b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"room:z\"}}";
    zombie
        .write_all(&starling_websocket::encode_client_frame(
            starling_websocket::OpCode::Text,
            true,
            false,
            commands,
            [3, 1, 4, 1],
        ))
        .await
        .expect("subscribe");
    let join = watcher.next_json().await;
    assert!(join["push"].get("join").is_some(), "{join}");
    // Nothing is sent or closed: only keepalive can find out (ping, then no pong).
    let leave = watcher.next_json().await;
    assert!(leave["push"].get("leave").is_some(), "{leave}");
    let stats = watcher
        .call("presence_stats", json!({"channel": "room:z"}))
        .await;
    assert_eq!(stats["presence_stats"]["num_clients"], 1, "{stats}");
    drop(zombie);
}

/// After kill -9 the log may have lost publications that clients saw (queued, not yet
/// written): the acknowledged durable ones come back, offsets continue from the log's
/// top, but under a new epoch, so a position from before is refused, never answered
/// with other data.
#[tokio::test]
async fn acknowledged_publications_survive_kill_9_under_a_new_epoch() {
    let dir = common::storage_dir();
    let args = ["--dev", "--set", "namespaces.feed.history_size=1000"];
    let mut server = Server::start_with_storage(&dir, &args);
    let mut epoch = String::new();
    for i in 1..=100 {
        let (status, r) = server
            .api(
                "publish",
                json!({"channel": "feed:k", "data": i, "durable": true}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["result"]["offset"], i);
        epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    }
    server.kill();
    drop(server);

    let server = Server::start_with_storage(&dir, &args);
    let (_, r) = server.api("history", json!({"channel": "feed:k"})).await;
    assert_eq!(r["result"]["offset"], 100, "{r}");
    let new_epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    assert_ne!(new_epoch, epoch, "an unclean stop renews the epoch");
    let data: Vec<Value> = r["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, (1..=100).map(Value::from).collect::<Vec<_>>());
    // A client that saw offset 40 before the crash is told to start over ...
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "feed:k", "recover": true, "offset": 40, "epoch": epoch}),
        )
        .await;
    assert!(sub["subscribe"].get("recovered").is_none(), "{sub}");
    assert_eq!(sub["subscribe"]["epoch"], new_epoch.as_str(), "{sub}");
    let (_, r) = server
        .api("publish", json!({"channel": "feed:k", "data": 101}))
        .await;
    assert_eq!(r["result"]["offset"], 101, "offsets continue");
    assert_eq!(r["result"]["epoch"], new_epoch.as_str());
    let (_, p) = c.next_publication().await;
    assert_eq!(p["offset"], 101);
    // ... and one that recovers in the new epoch gets the history.
    let (mut d, _) = Client::connect(&server, None).await;
    let sub = d
        .call(
            "subscribe",
            json!({"channel": "feed:k", "recover": true, "offset": 40, "epoch": new_epoch}),
        )
        .await;
    assert_eq!(sub["subscribe"]["recovered"], true, "{sub}");
    assert_eq!(
        sub["subscribe"]["publications"].as_array().map(Vec::len),
        Some(61)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
