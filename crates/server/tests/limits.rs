//! Limits and flood protection against the real binary: each refusal has its own code
//! and its own `starling_limit_refusals_total{limit}` line.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Client, Server, WAIT, token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The value of one metric line (`name` includes labels), or 0 when absent.
async fn metric(server: &Server, name: &str) -> u64 {
    server.metric(name).await.unwrap_or(0)
}

fn refusals(limit: &str) -> String {
    format!("starling_limit_refusals_total{{limit=\"{limit}\"}}")
}

/// Every message of the next frame (a batch reply).
async fn next_batch(c: &mut Client) -> Vec<Value> {
    loop {
        if let Message::Text(t) = c.next_frame().await {
            return t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect();
        }
    }
}

/// A raw WebSocket upgrade request; returns the response head.
async fn raw_upgrade(server: &Server) -> String {
    common::raw_upgrade(server).await.1
}

#[tokio::test]
async fn commands_over_the_rate_get_114_and_are_not_executed() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "client.command_rate=1",
        "--set",
        "client.command_burst=3",
    ]);
    let (mut c, _) = Client::connect(&server, None).await;
    // connect took one token; a batch of six commands counts six. At one token a second,
    // the sixth (the subscribe) is over the budget unless the test stalls for 4 s.
    let mut batch: Vec<String> = (2..=6)
        .map(|id| json!({"id": id, "ping": {}}).to_string())
        .collect();
    batch.push(json!({"id": 7, "subscribe": {"channel": "r"}}).to_string());
    c.send_text(&batch.join("\n")).await;
    let replies = next_batch(&mut c).await;
    assert_eq!(replies.len(), 6, "{replies:?}");
    let refused: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert!(refused.len() >= 2, "{replies:?}");
    for r in &refused {
        assert_eq!(r["error"]["code"], 114, "{r}");
        assert_eq!(r["error"]["temporary"], true, "{r}");
    }
    let last = replies
        .iter()
        .find(|r| r["id"] == 7)
        .expect("subscribe reply");
    assert_eq!(last["error"]["code"], 114, "{last}");
    // Not executed: the channel has no subscriber.
    let (_, r) = server.api("channels", json!({})).await;
    assert_eq!(r["result"]["channels"], json!({}), "{r}");
    assert!(metric(&server, &refusals("rate")).await >= 2);
    assert!(metric(&server, "starling_errors_total{code=\"114\"}").await >= 2);
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited_with_106() {
    let server = Server::start(&["--dev", "--set", "client.max_subscriptions=2"]);
    let (mut c, _) = Client::connect(&server, None).await;
    for ch in ["a", "b"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // Leaving one makes room again.
    c.call("unsubscribe", json!({"channel": "a"})).await;
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(metric(&server, &refusals("subscriptions")).await, 1);
}

#[tokio::test]
async fn channels_per_node_are_limited_with_115() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "server.max_channels=2",
        "--set",
        "namespaces.h.history_size=10",
        "--set",
        "namespaces.h.allow_publish=true",
    ]);
    let (mut c, _) = Client::connect(&server, None).await;
    for ch in ["a", "b"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    assert_eq!(r["error"]["code"], 115, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // A publish that would create a channel to keep its history: refused too, over the
    // protocol and over the API.
    let r = c
        .call("publish", json!({"channel": "h:x", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 115, "{r}");
    let (status, r) = server
        .api("publish", json!({"channel": "h:y", "data": 1}))
        .await;
    assert_eq!((status, &r["error"]["code"]), (503, &json!(115)), "{r}");
    // Existing channels are not affected.
    let (status, r) = server
        .api("publish", json!({"channel": "a", "data": 1}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(metric(&server, &refusals("channels")).await, 3);
    assert_eq!(metric(&server, "starling_channels").await, 2);
}

#[tokio::test]
async fn connections_per_user_are_limited_with_4005() {
    let server = Server::start(&[
        "--set",
        "client.max_connections_per_user=1",
        "--set",
        "client.reconnect_delay_min_ms=1000",
        "--set",
        "client.reconnect_delay_max_ms=2000",
    ]);
    let alice = token(json!({"sub": "alice"}));
    let (_first, _) = Client::connect(&server, Some(&alice)).await;
    // Another user is not affected.
    let (_bob, _) = Client::connect(&server, Some(&token(json!({"sub": "bob"})))).await;
    let mut second = Client::open(&server).await;
    second.send("connect", json!({"token": alice})).await;
    let push = second.next_json().await;
    let d = &push["push"]["disconnect"];
    assert_eq!(d["code"], 4005, "{push}");
    assert_eq!(d["reconnect"], true, "{push}");
    let delay = d["delay"].as_u64().expect("a reconnect delay");
    assert!((1000..=2000).contains(&delay), "{delay}");
    let close = second.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4005);
    assert_eq!(metric(&server, &refusals("user_connections")).await, 1);
}

#[tokio::test]
async fn connections_per_node_are_refused_with_503_before_the_upgrade() {
    let server = Server::start(&["--dev", "--set", "server.max_connections=1"]);
    let (mut first, _) = Client::connect(&server, None).await;
    let head = raw_upgrade(&server).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    assert_eq!(metric(&server, &refusals("node_connections")).await, 1);
    // The place comes back when the connection ends.
    first.ws.close(None).await.expect("close");
    while tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut first.ws))
        .await
        .expect("closed in time")
        .is_some()
    {}
    // The server deregisters the closed connection right after the close handshake.
    upgrade_once_freed(&server, "127.0.0.1", "slot never freed").await;
}

#[tokio::test]
async fn reconnect_storm_is_paced_while_established_clients_are_served() {
    let server = Arc::new(Server::start(&[
        "--dev",
        "--set",
        "server.admission_rate=5",
    ]));
    let (mut established, _) = Client::connect(&server, None).await;
    let done = Arc::new(AtomicUsize::new(0));
    let storm: Vec<_> = (0..15)
        .map(|_| {
            let server = server.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let c = Client::open(&server).await;
                done.fetch_add(1, Ordering::SeqCst);
                c
            })
        })
        .collect();
    // Wait (bounded) until the server reports upgrades waiting for admission.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&server, "starling_upgrades_paced_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was paced");
        tokio::task::yield_now().await;
    }
    let reply = established.call("ping", json!({})).await;
    assert_eq!(reply["ping"], json!({}), "{reply}");
    // At 5 per second the storm takes about two seconds: the ping did not wait for it.
    assert!(done.load(Ordering::SeqCst) < 15, "the storm was not paced");
    let mut clients = Vec::new();
    for task in storm {
        clients.push(task.await.expect("every connect succeeds"));
    }
    assert_eq!(done.load(Ordering::SeqCst), 15);
    // 4 tokens were left after the established client; the rest had to wait.
    assert!(metric(&server, "starling_upgrades_paced_total").await >= 5);
    assert_eq!(metric(&server, &refusals("admission")).await, 0);
}

/// A ~1 KB JSON string payload.
fn kilobyte(i: usize) -> Value {
    json!(format!("{i:04}{}", "x".repeat(1000)))
}

#[tokio::test]
async fn oversized_recovery_answers_unrecovered_and_history_pages_within_the_queue() {
    // A 64 KiB queue; 100 missed publications of ~1 KB are more than it holds.
    let server = Server::start(&[
        "--dev",
        "--set",
        "client.max_queue_bytes=65536",
        "--set",
        "namespaces.h.history_size=1000",
        "--set",
        "namespaces.h.history_ttl_secs=0",
    ]);
    let (mut c, _) = Client::connect(&server, None).await;
    let r = c.call("subscribe", json!({"channel": "h:r"})).await;
    let epoch = r["subscribe"]["epoch"].as_str().expect("epoch").to_string();
    c.call("unsubscribe", json!({"channel": "h:r"})).await;
    for i in 0..100 {
        let (status, r) = server
            .api("publish", json!({"channel": "h:r", "data": kilobyte(i)}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    // Recovery from offset 0: too large to send, so not recovered -- and not cut (the
    // old behaviour was a 4002 slow-consumer disconnect, again on every reconnect).
    let r = c
        .call(
            "subscribe",
            json!({"channel": "h:r", "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await;
    let sub = &r["subscribe"];
    assert!(
        sub.is_object(),
        "a subscribe reply, not an error or a disconnect: {r}"
    );
    assert_ne!(sub["recovered"], true, "{r}");
    assert_eq!(sub["offset"], 100, "{r}");
    assert!(
        sub.get("publications")
            .and_then(Value::as_array)
            .is_none_or(|p| p.is_empty()),
        "{r}"
    );
    assert_eq!(c.call("ping", json!({})).await["ping"], json!({}));
    assert_eq!(
        metric(&server, "starling_recoveries_too_large_total").await,
        1
    );
    // The client pages through history instead: every page fits, none is empty, and
    // the pages together are the whole stream in order.
    let mut since = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    while since < 100 {
        let r = c
            .call(
                "history",
                json!({"channel": "h:r", "limit": 1000, "since": {"offset": since, "epoch": epoch}}),
            )
            .await;
        let pubs = r["history"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("a page: {r}"))
            .clone();
        assert!(!pubs.is_empty(), "{r}");
        assert!(pubs.len() < 100, "capped by bytes, not the whole history");
        for p in &pubs {
            seen.push(p["offset"].as_u64().unwrap_or(0));
        }
        since = *seen.last().expect("offsets");
        pages += 1;
        assert!(pages < 100, "paging makes progress");
    }
    assert_eq!(seen, (1..=100).collect::<Vec<u64>>());
    assert!(pages >= 2, "{pages}");
    // A recovery that fits is still a recovery.
    c.call("unsubscribe", json!({"channel": "h:r"})).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "h:r", "recover": true, "offset": 95, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(
        r["subscribe"]["publications"].as_array().map(Vec::len),
        Some(5)
    );
}

#[tokio::test]
async fn channel_creation_per_connection_is_limited_with_106() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "client.channel_creation_rate=1",
        "--set",
        "client.channel_creation_burst=2",
    ]);
    let (mut other, _) = Client::connect(&server, None).await;
    let r = other
        .call("subscribe", json!({"channel": "existing"}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let (mut c, _) = Client::connect(&server, None).await;
    for ch in ["new1", "new2"] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = c.call("subscribe", json!({"channel": "new3"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // Joining a channel that exists creates nothing: not limited.
    let r = c.call("subscribe", json!({"channel": "existing"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(metric(&server, &refusals("channel_creation")).await, 1);
    assert_eq!(metric(&server, "starling_channels").await, 3);
}

/// Publishing into a history namespace creates the channel (to keep its history): the
/// same per-connection budget applies, so publishes cannot fill the node with quiet
/// history channels either.
#[tokio::test]
async fn channel_creation_by_publish_is_limited_with_106() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "client.channel_creation_rate=1",
        "--set",
        "client.channel_creation_burst=2",
    ]);
    let (mut c, _) = Client::connect(&server, None).await;
    // Namespace `h` is not configured: dev mode opens it with history.
    for ch in ["h:p1", "h:p2"] {
        let r = c.call("publish", json!({"channel": ch, "data": 1})).await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    let r = c
        .call("publish", json!({"channel": "h:p3", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    // Publishing again into a channel it created costs nothing.
    let r = c
        .call("publish", json!({"channel": "h:p1", "data": 2}))
        .await;
    assert_eq!(r["publish"]["offset"], 2, "{r}");
    assert_eq!(metric(&server, &refusals("channel_creation")).await, 1);
    assert_eq!(metric(&server, "starling_channels").await, 2);
}

#[tokio::test]
async fn history_is_bounded_by_bytes_per_channel_and_per_node() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "namespaces.h.history_size=1000",
        "--set",
        "namespaces.h.history_max_bytes=5000",
        "--set",
        "server.history_max_bytes=12000",
    ]);
    for i in 0..10 {
        let (status, r) = server
            .api("publish", json!({"channel": "h:a", "data": kilobyte(i)}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let (_, r) = server
        .api("history", json!({"channel": "h:a", "limit": 1000}))
        .await;
    let kept = r["result"]["publications"].as_array().map_or(0, Vec::len);
    assert!(
        (1..10).contains(&kept),
        "per-channel bytes bound it: {kept}"
    );
    let bytes = metric(&server, "starling_history_bytes").await;
    assert!(bytes > 0 && bytes <= 5000, "{bytes}");
    // Two more channels fill the node's 12,000 bytes; the third channel has nothing of
    // its own to give up, so its publication is not kept at all.
    for ch in ["h:b", "h:c"] {
        for i in 0..10 {
            server
                .api("publish", json!({"channel": ch, "data": kilobyte(i)}))
                .await;
        }
    }
    assert!(metric(&server, "starling_history_bytes").await <= 12000);
    let (status, r) = server
        .api("publish", json!({"channel": "h:d", "data": kilobyte(0)}))
        .await;
    assert_eq!(status, 200, "still published: {r}");
    assert!(metric(&server, "starling_history_dropped_total").await >= 1);
    // Recovering from before the publication that was not kept is refused.
    let epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    let (mut c, _) = Client::connect(&server, None).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "h:d", "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["offset"], 1, "{r}");
}

/// A masked client frame (zero mask: the payload goes as is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// Reads server frames from a raw socket until a text frame contains `needle`; returns
/// how many pongs came before it.
async fn pongs_until(stream: &mut tokio::net::TcpStream, needle: &str) -> usize {
    use tokio::io::AsyncReadExt;
    let mut pongs = 0;
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(WAIT, stream.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .expect("read");
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await.expect("read");
                usize::from(u16::from_be_bytes(ext))
            }
            127 => {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext).await.expect("read");
                usize::try_from(u64::from_be_bytes(ext)).expect("length")
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("read");
        match head[0] & 0x0f {
            0xA => pongs += 1,
            0x1 if String::from_utf8_lossy(&payload).contains(needle) => return pongs,
            0x8 => panic!("closed: {:?}", String::from_utf8_lossy(&payload)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_ping_flood_without_reading_is_answered_within_a_bound() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&["--dev"]);
    let (mut stream, head) = common::raw_upgrade(&server).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(&client_frame(0x1, br#"{"id":1,"connect":{}}"#))
        .await
        .expect("connect");
    // 200,000 pings, not reading: the server used to queue a pong for each.
    let pings = 200_000;
    let batch: Vec<u8> = (0..1000).flat_map(|_| client_frame(0x9, b"")).collect();
    for _ in 0..pings / 1000 {
        stream.write_all(&batch).await.expect("flood");
    }
    stream
        .write_all(&client_frame(0x1, br#"{"id":2,"ping":{}}"#))
        .await
        .expect("ping command");
    // Everyone else is served meanwhile.
    let (mut other, _) = Client::connect(&server, None).await;
    assert_eq!(other.call("ping", json!({})).await["ping"], json!({}));
    // The flooder is still connected and gets its reply, after far fewer pongs than
    // pings: the unsent ones were replaced, not queued.
    let pongs = pongs_until(&mut stream, r#""id":2"#).await;
    assert!(pongs < pings / 2, "{pongs} pongs for {pings} pings");
    let coalesced = metric(&server, "starling_pongs_coalesced_total").await;
    assert!(coalesced as usize + pongs >= pings, "{coalesced} + {pongs}");
}

/// A raw upgrade from source address `from` (any 127.0.0.x works on Linux loopback).
async fn raw_upgrade_from(server: &Server, from: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let request =
        common::upgrade_request(&server.addr.to_string(), "Sec-WebSocket-Version: 13\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = common::read_head(&mut stream).await;
    (stream, head)
}

/// Upgrades from `from` until one is accepted (a place freed by a connection that just
/// ended), bounded by [`WAIT`]; fails with `what` otherwise.
async fn upgrade_once_freed(server: &Server, from: &str, what: &str) -> tokio::net::TcpStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (stream, head) = raw_upgrade_from(server, from).await;
        if head.starts_with("HTTP/1.1 101") {
            return stream;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {head}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn connections_per_address_are_refused_with_503() {
    let server = Server::start(&["--dev", "--set", "server.max_connections_per_ip=2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (stream, head) = raw_upgrade_from(&server, "127.0.0.1").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        held.push(stream);
    }
    let (_, head) = raw_upgrade_from(&server, "127.0.0.1").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    assert_eq!(metric(&server, &refusals("ip_connections")).await, 1);
    // Another address is not affected.
    let (_other, head) = raw_upgrade_from(&server, "127.0.0.2").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The place comes back when a connection ends.
    drop(held.pop());
    held.push(upgrade_once_freed(&server, "127.0.0.1", "place never freed").await);
}

#[tokio::test]
async fn one_address_cannot_take_the_whole_admission_rate() {
    // Two upgrades a second per address, waiting at most a second; the node's own rate
    // is the default (2,000 a second).
    let server = Arc::new(Server::start(&[
        "--dev",
        "--set",
        "server.admission_rate_per_ip=2",
        "--set",
        "websocket.handshake_timeout_secs=1",
    ]));
    let storm: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { raw_upgrade_from(&server, "127.0.0.1").await })
        })
        .collect();
    // Meanwhile another address is admitted at once.
    let started = tokio::time::Instant::now();
    let (_other, head) = raw_upgrade_from(&server, "127.0.0.2").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // (Not paced behind the storm: that would take a second or be refused.)
    assert!(started.elapsed() < std::time::Duration::from_millis(900));
    let mut admitted = Vec::new();
    let mut refused = 0;
    for task in storm {
        let (stream, head) = task.await.expect("upgrade");
        if head.starts_with("HTTP/1.1 101") {
            admitted.push(stream);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    // 2 at once, 2 more within the second; the others would wait longer: refused.
    assert!(
        admitted.len() >= 2 && refused >= 1,
        "{} admitted",
        admitted.len()
    );
    assert_eq!(
        metric(&server, &refusals("ip_admission")).await,
        refused as u64
    );
    assert_eq!(metric(&server, &refusals("admission")).await, 0);
}
