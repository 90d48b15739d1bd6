//! Three real nodes behind a real haproxy and a real nginx, each running the shipped
//! configuration of `deploy/` (rendered by the test kit): round-robin, sharding by user
//! and by region, graceful drain of one node, and keepalive pings against the
//! balancer's idle timeouts. The nodes are independent (memory engine), so every
//! delivery check stays within one node.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{API_KEY, Client, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use starling_testkit::haproxy::{self, Haproxy};
use starling_testkit::nginx::Nginx;
use starling_testkit::{Balance, Balancer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Node names, in the order of the balancer's servers (`rt-1`..`rt-3` in haproxy).
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// A node named `name` with `extra` arguments.
fn node(name: &str, extra: &[&str]) -> Server {
    let name = format!("server.name={name}");
    // Behind a proxy every client has the proxy's address (docs/OPERATIONS.md).
    let mut args = vec![
        "--dev",
        "--set",
        &name,
        "--set",
        "server.max_connections_per_ip=0",
        "--set",
        "server.admission_rate_per_ip=0",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Three nodes named after [`NAMES`], each with `extra` arguments (`per_node[i]` too).
fn nodes_with(extra: &[&str], per_node: [&[&str]; 3]) -> Vec<Server> {
    NAMES
        .iter()
        .zip(per_node)
        .map(|(name, own)| node(name, &[extra, own].concat()))
        .collect()
}

/// Three nodes named after [`NAMES`], all with `extra` arguments.
fn nodes(extra: &[&str]) -> Vec<Server> {
    nodes_with(extra, [&[], &[], &[]])
}

/// Where the nodes listen, in order.
fn addrs(nodes: &[Server]) -> Vec<SocketAddr> {
    nodes.iter().map(|n| n.addr).collect()
}

/// The WebSocket URL through the balancer, with an optional query string.
fn ws_url(lb: &dyn Balancer, query: &str) -> String {
    format!("ws://{}/connection/websocket{query}", lb.addr())
}

/// The node a `connect` reply came from: client ids are `<node name>-<hex>`.
fn node_of(reply: &Value) -> &'static str {
    let client = reply["connect"]["client"].as_str().unwrap_or_default();
    NAMES
        .iter()
        .find(|n| {
            client
                .strip_prefix(**n)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .unwrap_or_else(|| panic!("client id of no known node: {reply}"))
}

/// Connects anonymously through the balancer; returns the client and its node.
async fn connect_via(lb: &dyn Balancer, query: &str) -> (Client, &'static str) {
    let (c, reply) = Client::connect_request(ws_url(lb, query), None).await;
    (c, node_of(&reply))
}

/// Publishes through the balancer's HTTP API (`query` may route it); asserts success.
async fn publish_via(lb: &dyn Balancer, query: &str, channel: &str, data: Value) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, reply) =
        common::api_at(lb.addr(), &format!("publish{query}"), &body, Some(API_KEY)).await;
    assert_eq!(
        status,
        200,
        "publish through the balancer: {reply}\n{}",
        lb.log()
    );
}

/// Round-robin: six connections land two on each node, and a publication made through
/// the balancer reaches the subscribers of the node that took the request. Three
/// publishes in a row take one node each, so every subscriber gets exactly one.
async fn round_robin(lb: &dyn Balancer) {
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (mut c, node) = connect_via(lb, "").await;
        let reply = c.call("subscribe", json!({"channel": "news"})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
        clients.push((c, node));
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, node) in &clients {
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(
        per_node,
        NAMES.iter().map(|n| (*n, 2)).collect(),
        "round-robin over the three nodes"
    );
    for n in 0..3 {
        publish_via(lb, "", "news", json!({"n": n})).await;
    }
    // The two clients of one node got the same publication: that node's one.
    let mut seen: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (c, node) in &mut clients {
        let (channel, publication) = c.next_publication().await;
        assert_eq!(channel, "news");
        let n = publication["data"]["n"].as_u64().expect("n");
        seen.entry(node).or_default().insert(n);
    }
    let all: BTreeSet<u64> = seen.values().flatten().copied().collect();
    assert_eq!(all, (0..3).collect(), "one publish per node: {seen:?}");
    assert!(seen.values().all(|s| s.len() == 1), "{seen:?}");
}

/// How a sharding test names its key on a connection or an API call.
#[derive(Clone, Copy)]
enum Key {
    User,
    Region,
}

/// A WebSocket request through the balancer carrying `key = value`.
fn keyed_request(
    lb: &dyn Balancer,
    key: Key,
    value: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    match key {
        Key::User => ws_url(lb, &format!("?user={value}"))
            .into_client_request()
            .expect("request"),
        Key::Region => {
            let mut request = ws_url(lb, "").into_client_request().expect("request");
            request
                .headers_mut()
                .insert("X-Region", value.parse().expect("header value"));
            request
        }
    }
}

/// Sharding: every connection of one key lands on the same node, and different keys
/// spread over more than one node. By user, an API call with the same `?user=` reaches
/// that user's node (how a backend publishes to a user's connections).
async fn sharding(lb: &dyn Balancer, key: Key) {
    let mut homes: BTreeMap<String, &str> = BTreeMap::new();
    let mut subscribers = Vec::new();
    for i in 0..12 {
        let value = format!("k{i}");
        for _ in 0..2 {
            let (mut c, reply) =
                Client::connect_request(keyed_request(lb, key, &value), None).await;
            let node = node_of(&reply);
            let home = *homes.entry(value.clone()).or_insert(node);
            assert_eq!(node, home, "{value} moved from {home} to {node}");
            let channel = format!("inbox:{value}");
            let reply = c.call("subscribe", json!({"channel": channel})).await;
            assert!(reply.get("subscribe").is_some(), "{reply}");
            subscribers.push((c, value.clone()));
        }
    }
    let used: BTreeSet<&str> = homes.values().copied().collect();
    assert!(used.len() >= 2, "twelve keys all on one node: {homes:?}");
    // Without the key, connections are spread (HAProxy walks its hash ring, so not
    // strictly in turn).
    let mut keyless = BTreeSet::new();
    for _ in 0..6 {
        keyless.insert(connect_via(lb, "").await.1);
    }
    assert!(keyless.len() >= 2, "keyless connections: {keyless:?}");
    if let Key::User = key {
        for (_, value) in subscribers.iter().step_by(2) {
            let query = format!("?user={value}");
            publish_via(lb, &query, &format!("inbox:{value}"), json!(value)).await;
        }
        for (c, value) in &mut subscribers {
            let (channel, publication) = c.next_publication().await;
            assert_eq!(channel, format!("inbox:{value}"));
            assert_eq!(publication["data"], json!(value));
        }
    }
}

/// The index of `node` in [`NAMES`].
fn index_of(node: &str) -> usize {
    NAMES.iter().position(|n| *n == node).expect("known node")
}

/// `GET /ready` on an open keep-alive connection: the status and the `status` field.
async fn ready_on(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: node\r\n\r\n")
        .await
        .expect("write");
    let (status, body) = common::read_response(stream).await;
    let body: Value = serde_json::from_str(&body).expect("json body");
    let field = body["status"].as_str().unwrap_or_default().to_string();
    (status, field)
}

/// Graceful drain: SIGTERM to one node turns its /ready to 503 and sends its clients a
/// disconnect push with reconnect advice and a jittered delay; they reconnect through
/// the balancer and land on the other nodes, whose clients never notice. `marked_down`
/// waits until the balancer took the node out (haproxy's health checks), then new
/// connections avoid it.
async fn drain(lb: &dyn Balancer, mut nodes: Vec<Server>, marked_down: impl FnOnce()) {
    let drained = "bravo";
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect_via(lb, "").await);
    }
    let (mut leaving, staying): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, node)| *node == drained);
    assert!(!leaving.is_empty(), "no client on {drained}");
    // A kept-alive HTTP connection straight to the node, to ask /ready during the drain
    // (the node stops listening, so a new connection could not ask).
    let mut probe = tokio::net::TcpStream::connect(nodes[index_of(drained)].addr)
        .await
        .expect("connect");
    assert_eq!(ready_on(&mut probe).await, (200, "ready".into()));
    nodes[index_of(drained)].signal("TERM");
    for (c, _) in &mut leaving {
        let push = c.next_json().await;
        let disconnect = &push["push"]["disconnect"];
        assert_eq!(disconnect["code"], 4000, "{push}");
        assert_eq!(disconnect["reconnect"], true, "{push}");
        let delay = disconnect["delay"].as_u64().expect("delay");
        assert!((100..=300).contains(&delay), "{push}");
    }
    // Until its clients have answered the close, the node runs and says it drains.
    assert_eq!(ready_on(&mut probe).await, (503, "draining".into()));
    for (c, _) in &mut leaving {
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 4000);
        // Send the queued answer to the close now, as a browser does, so the node does
        // not wait for its close timeout.
        let _ = c.ws.flush().await;
    }
    // The clients come back at once (no wait for `delay`: that only spreads real
    // clients out) and land elsewhere: the node no longer listens.
    for _ in &leaving {
        let (mut c, node) = connect_via(lb, "").await;
        assert_ne!(node, drained, "reconnected to the draining node");
        let reply = c.call("subscribe", json!({"channel": "after"})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
    assert_eq!(nodes[index_of(drained)].wait_exit(), Some(0));
    marked_down();
    for _ in 0..6 {
        let (_, node) = connect_via(lb, "").await;
        assert_ne!(node, drained, "a new connection went to the stopped node");
    }
    // The other nodes' clients stayed connected throughout.
    for (mut c, node) in staying {
        let reply = c.call("subscribe", json!({"channel": "still"})).await;
        assert!(reply.get("subscribe").is_some(), "{node}: {reply}");
    }
}

/// Balancer timeouts are short here: 1 s for plain HTTP, 3 s of inactivity for an
/// upgraded connection. `alpha` and `charlie` ping every second, `bravo` every 25 s.
/// (A node checks for the pong only at the pong timeout and pings again no earlier, so
/// the pong timeout is shortened too.)
const SHORT_PING: [&str; 4] = [
    "--set",
    "websocket.ping_interval_secs=1",
    "--set",
    "websocket.pong_timeout_secs=1",
];
/// Inactivity after which the balancer in [`pings_keep_tunnels_open`] cuts a tunnel.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts ping frames until `pings` arrived, answering each at once as browsers do;
/// returns how long that took.
async fn read_pings(c: &mut Client, pings: usize) -> Duration {
    let start = Instant::now();
    let mut seen = 0;
    while seen < pings {
        match c.next_frame().await {
            Message::Ping(payload) => {
                c.ws.send(Message::Pong(payload)).await.expect("pong");
                seen += 1;
            }
            other => panic!("unexpected frame while idle: {other:?}"),
        }
    }
    start.elapsed()
}

/// Keepalive: connections idle for longer than the balancer's HTTP timeouts and its
/// tunnel timeout stay up on the nodes that ping more often than the tunnel timeout;
/// on the node that pings less often the balancer cuts the idle connection. (The
/// shipped timeouts keep the same order with the default 25 s ping interval.)
async fn pings_keep_tunnels_open(lb: &dyn Balancer) {
    let mut by_node: BTreeMap<&str, Client> = BTreeMap::new();
    for _ in 0..9 {
        let (c, node) = connect_via(lb, "").await;
        by_node.entry(node).or_insert(c);
        if by_node.len() == 3 {
            break;
        }
    }
    assert_eq!(by_node.len(), 3, "a connection on every node");
    let mut quiet = by_node.remove("bravo").expect("bravo");
    let mut alpha = by_node.remove("alpha").expect("alpha");
    let mut charlie = by_node.remove("charlie").expect("charlie");
    let cut = async {
        let start = Instant::now();
        match tokio::time::timeout(WAIT, quiet.ws.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => start.elapsed(),
            Ok(Some(Ok(frame))) => panic!("a frame on the quiet connection: {frame:?}"),
            Err(_) => panic!("the balancer kept an idle tunnel open for {WAIT:?}"),
        }
    };
    // Six pings, about 5.4-6 s: twice the tunnel timeout, six times the HTTP ones. All
    // three are read at once, so every ping is answered in time.
    let (cut_after, a, c) =
        tokio::join!(cut, read_pings(&mut alpha, 6), read_pings(&mut charlie, 6));
    assert!(
        cut_after + Duration::from_millis(500) >= TUNNEL_TIMEOUT,
        "cut early: {cut_after:?}"
    );
    for (c, lasted) in [(&mut alpha, a), (&mut charlie, c)] {
        assert!(lasted > TUNNEL_TIMEOUT, "{lasted:?}");
        let reply = c.call("subscribe", json!({"channel": "alive"})).await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
}

#[tokio::test]
async fn haproxy_round_robin_spreads_and_delivers_per_node() {
    let nodes = nodes(&[]);
    let lb = Haproxy::start(&addrs(&nodes), Balance::RoundRobin);
    round_robin(&lb).await;
}

#[tokio::test]
async fn nginx_round_robin_spreads_and_delivers_per_node() {
    let nodes = nodes(&[]);
    let lb = Nginx::start(&addrs(&nodes), Balance::RoundRobin);
    round_robin(&lb).await;
}

#[tokio::test]
async fn haproxy_shards_by_user() {
    let nodes = nodes(&[]);
    let lb = Haproxy::start(&addrs(&nodes), Balance::ByUser);
    sharding(&lb, Key::User).await;
}

#[tokio::test]
async fn nginx_shards_by_user() {
    let nodes = nodes(&[]);
    let lb = Nginx::start(&addrs(&nodes), Balance::ByUser);
    sharding(&lb, Key::User).await;
}

#[tokio::test]
async fn haproxy_shards_by_region() {
    let nodes = nodes(&[]);
    let lb = Haproxy::start(&addrs(&nodes), Balance::ByRegion);
    sharding(&lb, Key::Region).await;
}

#[tokio::test]
async fn nginx_shards_by_region() {
    let nodes = nodes(&[]);
    let lb = Nginx::start(&addrs(&nodes), Balance::ByRegion);
    sharding(&lb, Key::Region).await;
}

/// Reconnect advice in [100, 300] ms, so the test can check the jittered delay.
const QUICK_RECONNECT: [&str; 4] = [
    "--set",
    "client.reconnect_delay_min_ms=100",
    "--set",
    "client.reconnect_delay_max_ms=300",
];

#[tokio::test]
async fn haproxy_drain_moves_clients_and_marks_the_node_down() {
    let nodes = nodes(&QUICK_RECONNECT);
    let lb = Haproxy::start(&addrs(&nodes), Balance::RoundRobin);
    let server = haproxy::SERVERS[index_of("bravo")];
    // At start haproxy counts a server up but one failure from down (`UP 1/2`) until
    // its first check passes.
    lb.wait_server_status(server, "UP", WAIT);
    let lb_ref = &lb;
    drain(&lb, nodes, || {
        // `fall 2` checks 500 ms apart (`fastinter`) after the first failure at `inter`.
        lb_ref.wait_server_status(server, "DOWN", WAIT);
        // The sharding backends follow (`track`) without checks of their own.
        for backend in [Balance::ByUser, Balance::ByRegion] {
            assert_eq!(lb_ref.server_status_in(backend.group(), server), "DOWN");
        }
    })
    .await;
}

/// The rolling restart of docs/OPERATIONS.md, step by step, through the admin socket.
#[tokio::test]
async fn haproxy_rolling_restart_procedure() {
    let mut nodes = nodes(&QUICK_RECONNECT);
    let lb = Haproxy::start(&addrs(&nodes), Balance::RoundRobin);
    let bravo = index_of("bravo");
    let server = haproxy::SERVERS[bravo];
    lb.wait_server_status(server, "UP", WAIT);
    let mut on_bravo = Vec::new();
    for _ in 0..3 {
        let (c, node) = connect_via(&lb, "").await;
        if node == "bravo" {
            on_bravo.push(c);
        }
    }
    assert_eq!(on_bravo.len(), 1, "round-robin puts one of three on bravo");
    // 1. No new clients for the node; its open connections stay.
    let answer = lb.command(&format!("set server starling/{server} state drain"));
    assert!(answer.trim().is_empty(), "{answer}");
    assert_eq!(lb.server_status(server), "DRAIN");
    for _ in 0..4 {
        let (_, node) = connect_via(&lb, "").await;
        assert_ne!(node, "bravo", "a new client on the drained node");
    }
    let reply = on_bravo[0]
        .call("subscribe", json!({"channel": "still"}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    // 2. SIGTERM: the clients are told to reconnect and land elsewhere.
    nodes[bravo].signal("TERM");
    let push = on_bravo[0].next_json().await;
    assert_eq!(push["push"]["disconnect"]["reconnect"], true, "{push}");
    on_bravo[0].expect_close().await;
    let _ = on_bravo[0].ws.flush().await;
    let (_, landed) = connect_via(&lb, "").await;
    assert_ne!(landed, "bravo");
    assert_eq!(nodes[bravo].wait_exit(), Some(0));
    // 3. The new version starts on the same address and is ready.
    let listen = format!("server.listen={}", nodes[bravo].addr);
    let mut args = QUICK_RECONNECT.to_vec();
    args.extend(["--set", &listen]);
    nodes[bravo] = node("bravo", &args);
    assert_eq!(nodes[bravo].get("/ready").await.0, 200);
    // 4. Back into rotation once its checks pass.
    let answer = lb.command(&format!("set server starling/{server} state ready"));
    assert!(answer.trim().is_empty(), "{answer}");
    lb.wait_server_status(server, "UP", WAIT);
    let state = lb.command("show servers state starling");
    let fields = state
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&server))
        .unwrap_or_else(|| panic!("{server} in {state}"));
    assert_eq!(fields[5], "2", "srv_op_state running: {state}");
    let mut landed = BTreeSet::new();
    for _ in 0..3 {
        landed.insert(connect_via(&lb, "").await.1);
    }
    assert!(
        landed.contains("bravo"),
        "bravo takes clients again: {landed:?}"
    );
}

#[tokio::test]
async fn nginx_drain_moves_clients_to_the_other_nodes() {
    let nodes = nodes(&QUICK_RECONNECT);
    let lb = Nginx::start(&addrs(&nodes), Balance::RoundRobin);
    // nginx has no active checks: the refused connections mark the node failed.
    drain(&lb, nodes, || {}).await;
}

#[tokio::test]
async fn haproxy_pings_keep_tunnels_open() {
    let nodes = nodes_with(&[], [&SHORT_PING, &[], &SHORT_PING]);
    let lb = Haproxy::start_with(
        &addrs(&nodes),
        Balance::RoundRobin,
        &[
            ("timeout client 30s", "timeout client 1s"),
            ("timeout server 30s", "timeout server 1s"),
            ("timeout tunnel 120s", "timeout tunnel 3s"),
        ],
    );
    pings_keep_tunnels_open(&lb).await;
}

#[tokio::test]
async fn nginx_pings_keep_tunnels_open() {
    let nodes = nodes_with(&[], [&SHORT_PING, &[], &SHORT_PING]);
    let lb = Nginx::start_with(
        &addrs(&nodes),
        Balance::RoundRobin,
        &[
            ("proxy_read_timeout 120s", "proxy_read_timeout 3s"),
            ("proxy_send_timeout 120s", "proxy_send_timeout 3s"),
        ],
    );
    pings_keep_tunnels_open(&lb).await;
}

/// With loopback taken out of the internal networks, the test client is "the internet":
/// the HTTP API and the metrics answer 403 through the balancer, the WebSocket works.
async fn api_and_metrics_are_internal_only(lb: &dyn Balancer) {
    let body = json!({"channel": "news", "data": 1}).to_string();
    let (status, _) = common::api_at(lb.addr(), "publish", &body, Some(API_KEY)).await;
    assert_eq!(status, 403, "the API from outside");
    let request = b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n";
    let (status, _) = common::http_raw(lb.addr(), request).await;
    assert_eq!(status, 403, "the metrics from outside");
    let (mut c, _) = connect_via(lb, "").await;
    let reply = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
}

#[tokio::test]
async fn haproxy_keeps_api_and_metrics_internal() {
    let nodes = nodes(&[]);
    let lb = Haproxy::start_with(
        &addrs(&nodes),
        Balance::RoundRobin,
        &[("acl internal src 127.0.0.0/8 ", "acl internal src ")],
    );
    api_and_metrics_are_internal_only(&lb).await;
}

#[tokio::test]
async fn nginx_keeps_api_and_metrics_internal() {
    let nodes = nodes(&[]);
    let lb = Nginx::start_with(
        &addrs(&nodes),
        Balance::RoundRobin,
        &[("allow 127.0.0.0/8;", "")],
    );
    api_and_metrics_are_internal_only(&lb).await;
}

/// The shipped haproxy file is valid as it is (nginx's is checked as rendered by every
/// test: as shipped it needs root for its log paths).
#[test]
fn shipped_haproxy_config_is_valid() {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy/haproxy.cfg");
    let mut check = std::process::Command::new(starling_testkit::find_program("haproxy"));
    check.arg("-c").arg("-f").arg(&file);
    starling_testkit::check_config(check, &file, "haproxy -c");
}
