//! The accept path's lean lane for `POST /api/publish` (served without hyper): delivery,
//! answers equal to the axum route's, keep-alive and pipelining, bodies in any pieces,
//! the hand-off of other requests to hyper, and the drain.

mod common;

use common::{API_KEY, Client, Server, WAIT, header_of, read_message, read_to_close, status_of};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A publish with a `Content-Length` body (the lane's), with `key` and the `extra` header
/// lines.
fn lean_with(key: Option<&str>, body: &str, extra: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: h\r\n{}{extra}Content-Length: {}\r\n\r\n{body}",
        authorization(key),
        body.len()
    )
}

/// [`lean_with`] with the test key.
fn lean(body: &str, extra: &str) -> String {
    lean_with(Some(API_KEY), body, extra)
}

/// The same publish with a chunked body (hyper's).
fn chunked_with(key: Option<&str>, body: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: h\r\n{}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        authorization(key),
        body.len()
    )
}

fn authorization(key: Option<&str>) -> String {
    key.map(|k| format!("Authorization: apikey {k}\r\n"))
        .unwrap_or_default()
}

async fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn send(stream: &mut TcpStream, bytes: &str) {
    stream.write_all(bytes.as_bytes()).await.expect("write");
}

/// Sends `request` and reads the answer: status, head, body.
async fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
    send(stream, request).await;
    let (head, body) = read_message(stream).await;
    (status_of(&head), head, body)
}

/// A head without its `date` line, for comparing two answers.
fn undated(head: &str) -> String {
    head.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A WebSocket client subscribed to `channel` (a channel counts offsets while it has a
/// subscriber).
async fn subscriber(server: &Server, channel: &str) -> Client {
    let (mut client, _) = Client::connect(server, None).await;
    client
        .call("subscribe", json!({ "channel": channel }))
        .await;
    client
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn a_lean_publish_is_delivered_and_answered() {
    let server = Server::start(&["--dev"]);
    let mut sub = subscriber(&server, "news").await;
    let mut s = connect(&server).await;
    let body = json!({"channel": "news", "data": {"text": "hi"}}).to_string();
    let (status, head, reply) = exchange(&mut s, &lean(&body, "")).await;
    assert_eq!(status, 200, "{head}{reply}");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header_of(&head, "content-type"), Some("application/json"));
    assert!(
        header_of(&head, "date").is_some_and(|d| d.ends_with(" GMT")),
        "{head}"
    );
    assert_eq!(header_of(&head, "connection"), None, "kept alive: {head}");
    let reply = json(&reply);
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_eq!(reply["result"]["delivered"], 1, "{reply}");
    assert!(reply["result"]["epoch"].is_string(), "{reply}");
    let (channel, p) = sub.next_publication().await;
    assert_eq!(channel, "news");
    assert_eq!(
        (&p["data"], &p["offset"]),
        (&json!({"text": "hi"}), &json!(1))
    );
    // A durable publish waits for the message log, on the same socket.
    let body = json!({"channel": "news", "data": 2, "durable": true}).to_string();
    let (status, _, reply) = exchange(&mut s, &lean(&body, "")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(json(&reply)["result"]["offset"], 2, "{reply}");
    let (_, p) = sub.next_publication().await;
    assert_eq!(p["data"], 2);
}

#[tokio::test]
async fn publishes_on_one_socket_are_answered_in_order_pipelined_or_not() {
    let server = Server::start(&["--dev"]);
    let mut sub = subscriber(&server, "seq").await;
    let request = |n: u64| lean(&json!({"channel": "seq", "data": n}).to_string(), "");
    let mut s = connect(&server).await;
    for n in 1..=2 {
        let (status, _, reply) = exchange(&mut s, &request(n)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(json(&reply)["result"]["offset"], n, "{reply}");
    }
    // Three in one write: the bytes after each body are the next request.
    send(&mut s, &(3..=5).map(request).collect::<String>()).await;
    for n in 3..=5 {
        let (head, reply) = read_message(&mut s).await;
        assert_eq!(status_of(&head), 200, "{reply}");
        assert_eq!(json(&reply)["result"]["offset"], n, "{reply}");
    }
    for n in 1..=5 {
        let (_, p) = sub.next_publication().await;
        assert_eq!((&p["data"], &p["offset"]), (&json!(n), &json!(n)));
    }
}

#[tokio::test]
async fn heads_and_bodies_split_byte_by_byte() {
    let server = Server::start(&["--dev"]);
    let mut sub = subscriber(&server, "bytes").await;
    let mut s = connect(&server).await;
    for n in 1..=2 {
        let request = lean(&json!({"channel": "bytes", "data": n}).to_string(), "");
        for byte in request.as_bytes() {
            s.write_all(std::slice::from_ref(byte))
                .await
                .expect("write");
        }
        let (head, reply) = read_message(&mut s).await;
        assert_eq!(status_of(&head), 200, "{reply}");
        assert_eq!(json(&reply)["result"]["offset"], n, "{reply}");
        let (_, p) = sub.next_publication().await;
        assert_eq!(p["data"], n);
    }
}

/// Any other request on a lean socket goes to hyper with the bytes already read, and the
/// socket stays hyper's.
#[tokio::test]
async fn other_requests_on_a_lean_socket_go_to_hyper() {
    let server = Server::start(&["--dev"]);
    let mut sub = subscriber(&server, "mixed").await;
    let request = |n: u64| lean(&json!({"channel": "mixed", "data": n}).to_string(), "");
    let health = "GET /health HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut s = connect(&server).await;
    let (status, _, reply) = exchange(&mut s, &request(1)).await;
    assert_eq!(
        (status, &json(&reply)["result"]["offset"]),
        (200, &json!(1))
    );
    let (status, _, reply) = exchange(&mut s, health).await;
    assert_eq!((status, reply.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, _, reply) = exchange(&mut s, &request(2)).await;
    assert_eq!(
        (status, &json(&reply)["result"]["offset"]),
        (200, &json!(2))
    );
    // The same, pipelined in one write.
    let mut s = connect(&server).await;
    send(&mut s, &format!("{}{health}{}", request(3), request(4))).await;
    for expected in [json!(3), json!("ok"), json!(4)] {
        let (head, reply) = read_message(&mut s).await;
        assert_eq!(status_of(&head), 200, "{reply}");
        let reply = json(&reply);
        let got = reply["result"]["offset"].clone();
        let got = if got.is_null() {
            reply["status"].clone()
        } else {
            got
        };
        assert_eq!(got, expected, "{reply}");
    }
    // A chunked publish after a lean one, and an upgrade after a lean one.
    let mut s = connect(&server).await;
    let (status, _, _) = exchange(&mut s, &request(5)).await;
    assert_eq!(status, 200);
    let body = json!({"channel": "mixed", "data": 6}).to_string();
    let (status, _, reply) = exchange(&mut s, &chunked_with(Some(API_KEY), &body)).await;
    assert_eq!(
        (status, &json(&reply)["result"]["offset"]),
        (200, &json!(6))
    );
    let mut s = connect(&server).await;
    let (status, _, _) = exchange(&mut s, &request(7)).await;
    assert_eq!(status, 200);
    send(
        &mut s,
        &common::upgrade_request("h", "Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    let head = common::read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for n in 1..=7 {
        let (_, p) = sub.next_publication().await;
        assert_eq!(p["data"], n);
    }
}

/// The lane and the axum route answer alike: the same status, headers and body bytes.
#[tokio::test]
async fn refusals_are_the_axum_routes() {
    let server = Server::start(&["--dev", "--set", "websocket.max_message_size=1000"]);
    let good = json!({"channel": "errors", "data": 1}).to_string();
    let big = json!({"channel": "errors", "data": "x".repeat(1001)}).to_string();
    let cases: [(Option<&str>, &str, u16, u64); 6] = [
        (Some("wrong"), &good, 401, 101),
        (None, &good, 401, 101),
        (Some(API_KEY), "{nope", 400, 107),
        (Some(API_KEY), r#"["errors", 1]"#, 400, 107),
        (Some(API_KEY), r#"{"channel": "errors"}"#, 400, 107),
        (Some(API_KEY), &big, 413, 110),
    ];
    // One lean socket for all: each refusal leaves it usable (the body was read or
    // skipped).
    let mut s = connect(&server).await;
    for (key, body, status, code) in cases {
        let (got, head, reply) = exchange(&mut s, &lean_with(key, body, "")).await;
        assert_eq!(
            (got, &json(&reply)["error"]["code"]),
            (status, &json!(code))
        );
        assert_eq!(header_of(&head, "connection"), None, "{head}");
        let mut h = connect(&server).await;
        let (_, hyper_head, hyper_reply) = exchange(&mut h, &chunked_with(key, body)).await;
        assert_eq!(reply, hyper_reply, "{key:?} {body}");
        assert_eq!(undated(&head), undated(&hyper_head), "{key:?} {body}");
        let (status, _, _) = exchange(&mut s, &lean(&good, "")).await;
        assert_eq!(status, 200, "usable after {key:?} {body}");
    }
    // The key's header is found whatever its case.
    let request = lean_with(None, &good, &format!("aUtHoRiZaTiOn: apikey {API_KEY}\r\n"));
    assert_eq!(exchange(&mut s, &request).await.0, 200);
}

#[tokio::test]
async fn unknown_namespaces_get_404() {
    let server = Server::start(&["--set", "namespaces.chat.allow_publish=true"]);
    let body = json!({"channel": "nope:x", "data": 1}).to_string();
    let mut s = connect(&server).await;
    let (status, head, reply) = exchange(&mut s, &lean(&body, "")).await;
    assert_eq!((status, &json(&reply)["error"]["code"]), (404, &json!(102)));
    let (_, hyper_head, hyper_reply) = exchange(&mut s, &chunked_with(Some(API_KEY), &body)).await;
    assert_eq!((undated(&head), reply), (undated(&hyper_head), hyper_reply));
    let body = json!({"channel": "chat:x", "data": 1}).to_string();
    let mut s = connect(&server).await;
    assert_eq!(exchange(&mut s, &lean(&body, "")).await.0, 200);
}

/// A body over the limit is not read: 413 (the axum route's body), then the socket
/// closes.
#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_the_socket_closed() {
    let server = Server::start(&["--dev", "--set", "websocket.max_message_size=1000"]);
    let limit = 1000 + 16 * 1024;
    let mut s = connect(&server).await;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: h\r\nAuthorization: apikey {API_KEY}\r\nContent-Length: {}\r\n\r\n{{",
        limit + 1
    );
    let (status, head, reply) = exchange(&mut s, &head).await;
    assert_eq!(status, 413, "{head}{reply}");
    assert_eq!(header_of(&head, "connection"), Some("close"), "{head}");
    assert_eq!(read_to_close(&mut s).await, "", "closed after the answer");
    // hyper reads up to the limit before it refuses: the same body.
    let mut h = connect(&server).await;
    let (_, _, hyper_reply) =
        exchange(&mut h, &chunked_with(Some(API_KEY), &"x".repeat(limit + 1))).await;
    assert_eq!(reply, hyper_reply);
    assert_eq!(
        json(&reply)["error"]["message"],
        format!("request body over {limit} bytes")
    );
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let server = Server::start(&["--dev"]);
    let body = json!({"channel": "bye", "data": 1}).to_string();
    let mut s = connect(&server).await;
    // The second request is never read: the first asked to close.
    let requests = format!(
        "{}{}",
        lean(&body, "Connection: close\r\n"),
        lean(&body, "")
    );
    let (status, head, _) = exchange(&mut s, &requests).await;
    assert_eq!(status, 200);
    assert_eq!(header_of(&head, "connection"), Some("close"), "{head}");
    assert_eq!(read_to_close(&mut s).await, "");
}

/// A success answered by the lane (written without a `serde_json::Value`) and the
/// same key's replay by hyper (the recorded `Value`) are the same bytes, and the other
/// way round; a replay publishes nothing.
#[tokio::test]
async fn idempotent_replays_are_the_same_bytes_on_both_paths() {
    let server = Server::start(&["--dev"]);
    let mut sub = subscriber(&server, "idem").await;
    let body = |n: u64, key: &str| {
        json!({"channel": "idem", "data": n, "idempotency_key": key}).to_string()
    };
    let mut s = connect(&server).await;
    let mut h = connect(&server).await;
    let (status, first_head, first) = exchange(&mut s, &lean(&body(1, "a"), "")).await;
    assert_eq!(status, 200, "{first}");
    let (_, head, replayed) = exchange(&mut h, &chunked_with(Some(API_KEY), &body(1, "a"))).await;
    assert_eq!((undated(&head), &replayed), (undated(&first_head), &first));
    let (_, _, again) = exchange(&mut s, &lean(&body(1, "a"), "")).await;
    assert_eq!(again, first, "replayed through the lane");
    let (_, _, first) = exchange(&mut h, &chunked_with(Some(API_KEY), &body(2, "b"))).await;
    let (_, _, replayed) = exchange(&mut s, &lean(&body(2, "b"), "")).await;
    assert_eq!(replayed, first);
    assert_eq!(json(&first)["result"]["offset"], 2, "{first}");
    for n in 1..=2 {
        let (_, p) = sub.next_publication().await;
        assert_eq!((&p["data"], &p["offset"]), (&json!(n), &json!(n)));
    }
    let (_, info) = server.api("info", json!({})).await;
    assert_eq!(info["result"]["publications"], 2, "{info}");
}

/// While the node drains, a lean publish gets the axum route's 503 (code 4000); a publish
/// already running finishes; an idle lean keep-alive socket does not hold the exit up.
#[tokio::test]
async fn draining_refuses_lean_publishes_and_idle_sockets_do_not_hold_the_exit() {
    // A long grace: were the idle socket waited for, the exit would come too late.
    let mut server = Server::start(&["--dev", "--set", "server.shutdown_timeout_secs=60"]);
    let body = json!({"channel": "drain", "data": 1}).to_string();
    let mut kept = connect(&server).await;
    assert_eq!(exchange(&mut kept, &lean(&body, "")).await.0, 200);
    let mut hyper = connect(&server).await;
    let health = "GET /health HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(exchange(&mut hyper, health).await.0, 200);
    // A publish whose body is still on its way: running when the drain begins.
    let request = lean(&body, "");
    let (sent, rest_part) = request.split_at(request.len() - 5);
    let mut slow = connect(&server).await;
    send(&mut slow, sent).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("starling_api_in_flight").await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "never in flight");
    }
    server.signal("TERM");
    let refused = loop {
        let (status, head, reply) = exchange(&mut kept, &lean(&body, "")).await;
        if status == 503 {
            break (head, reply);
        }
        assert_eq!(status, 200, "{reply}");
        assert!(tokio::time::Instant::now() < deadline, "no drain");
    };
    let (head, reply) = refused;
    assert_eq!(json(&reply)["error"]["code"], 4000, "{reply}");
    let (_, hyper_head, hyper_reply) =
        exchange(&mut hyper, &chunked_with(Some(API_KEY), &body)).await;
    assert_eq!(
        (undated(&head), &reply),
        (undated(&hyper_head), &hyper_reply)
    );
    // The running publish completes...
    send(&mut slow, rest_part).await;
    let (head, reply) = read_message(&mut slow).await;
    assert_eq!(status_of(&head), 200, "{reply}");
    // ... and the node exits with `kept` and `hyper` still open and idle.
    assert_eq!(server.wait_exit(), Some(0));
    drop((kept, hyper));
}

/// A keep-alive socket may idle `websocket.handshake_timeout_secs` after each answer,
/// not after its first request: one that keeps publishing is served past the timeout,
/// and once it falls silent the server closes it.
#[tokio::test]
async fn an_idle_lean_socket_is_closed_a_timeout_after_its_last_answer() {
    use std::time::{Duration, Instant};
    let server = Server::start(&["--dev", "--set", "websocket.handshake_timeout_secs=1"]);
    let body = json!({"channel": "idle", "data": 1}).to_string();
    let mut s = connect(&server).await;
    let started = Instant::now();
    // The pauses are the client's behaviour under test, not a wait for the server.
    for _ in 0..4 {
        let (status, _, answer) = exchange(&mut s, &lean(&body, "")).await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    let silent = Instant::now();
    assert_eq!(read_to_close(&mut s).await, "");
    // Closed no earlier than a second after the last answer (400 ms of it slept above).
    assert!(
        silent.elapsed() >= Duration::from_millis(500),
        "{:?}",
        silent.elapsed()
    );
}
