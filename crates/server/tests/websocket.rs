//! The WebSocket endpoint against bad handshakes and bad frames, over raw TCP.

mod common;

use common::{
    Client, Server, WAIT, http_raw, raw_exchange, read_head, read_response, upgrade_request,
};
use serde_json::json;
use starling_websocket::{OpCode, encode_client_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn handshake_errors_have_status_and_reason() {
    let server = Server::start(&[
        "--set",
        "websocket.allowed_origins=[\"https://app.example\"]",
    ]);
    let host = server.addr.to_string();

    // No version: 426 with the version we speak.
    let text = raw_exchange(
        server.addr,
        upgrade_request(&host, "Connection: close\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 426"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{text}"
    );

    // Wrong version.
    let text = raw_exchange(
        server.addr,
        upgrade_request(&host, "Sec-WebSocket-Version: 8\r\nConnection: close\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 426"), "{text}");

    // A plain GET on the WebSocket path.
    let (status, body) = http_raw(
        server.addr,
        format!("GET /connection/websocket HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.trim().is_empty(), "a reason is given");

    // A bad key.
    let bad_key = "GET /connection/websocket HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n";
    let (status, _) = http_raw(server.addr, bad_key.as_bytes()).await;
    assert_eq!(status, 400);

    // Wrong method.
    let post = "POST /connection/websocket HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status, _) = http_raw(server.addr, post.as_bytes()).await;
    assert_eq!(status, 405);

    // Forbidden origin; the allowed one upgrades.
    let text = raw_exchange(
        server.addr,
        upgrade_request(
            &host,
            "Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\nConnection: close\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(
            upgrade_request(
                &host,
                "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n",
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
}

/// An upgraded raw connection to the echo-less (client protocol) endpoint.
async fn raw_ws(server: &Server) -> TcpStream {
    let (stream, head) = common::raw_upgrade(server).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Reads frames until a close frame; returns its code.
async fn close_code(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("close in time")
            .expect("read");
        assert!(n > 0, "connection closed without a close frame: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        // Walk complete server frames (unmasked, payload lengths < 64 KiB here).
        let mut at = 0;
        while buf.len() >= at + 2 {
            let op = buf[at] & 0x0f;
            let (len, header) = match buf[at + 1] & 0x7f {
                126 if buf.len() >= at + 4 => (
                    usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])),
                    4,
                ),
                126 => break,
                127 => panic!("unexpected huge frame"),
                n => (usize::from(n), 2),
            };
            if buf.len() < at + header + len {
                break;
            }
            if op == 0x8 {
                let p = &buf[at + header..at + header + len];
                return u16::from_be_bytes([p[0], p[1]]);
            }
            at += header + len;
        }
    }
}

#[tokio::test]
async fn frame_violations_get_their_close_codes() {
    let server = Server::start(&["--dev"]);
    let mask = [1, 2, 3, 4];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "reserved bits",
            {
                let mut f = encode_client_frame(OpCode::Text, true, false, b"hi", mask);
                f[0] |= 0x20;
                f
            },
            1002,
        ),
        (
            "reserved opcode",
            {
                let mut f = encode_client_frame(OpCode::Text, true, false, b"hi", mask);
                f[0] = (f[0] & 0xf0) | 0x3;
                f
            },
            1002,
        ),
        (
            "invalid UTF-8",
            encode_client_frame(OpCode::Text, true, false, &[0xce, 0xba, 0xff], mask),
            1007,
        ),
        (
            "oversize frame",
            {
                // Header only: 100 KiB announced, over the 64 KiB default.
                let mut f = vec![0x81, 0x80 | 127];
                f.extend_from_slice(&(100u64 * 1024).to_be_bytes());
                f.extend_from_slice(&mask);
                f
            },
            1009,
        ),
        (
            "oversize message",
            {
                let chunk = vec![b'a'; 40 * 1024];
                let mut f = encode_client_frame(OpCode::Text, false, false, &chunk, mask);
                f.extend(encode_client_frame(
                    OpCode::Continuation,
                    true,
                    false,
                    &chunk,
                    mask,
                ));
                f
            },
            1009,
        ),
    ];
    let (mut bystander, _) = Client::connect(&server, None).await;
    bystander
        .call("subscribe", json!({"channel": "calm"}))
        .await;
    for (name, bytes, expected) in cases {
        let mut stream = raw_ws(&server).await;
        stream.write_all(&bytes).await.expect("write");
        assert_eq!(close_code(&mut stream).await, expected, "{name}");
    }
    server
        .api("publish", json!({"channel": "calm", "data": 1}))
        .await;
    let (_, p) = bystander.next_publication().await;
    assert_eq!(p["data"], 1, "others keep being served");
}

#[tokio::test]
async fn silent_tcp_client_is_dropped_after_handshake_timeout() {
    let server = Server::start(&["--dev", "--set", "websocket.handshake_timeout_secs=1"]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /connection/web")
        .await
        .expect("partial request");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn keepalive_pings_and_closes_unresponsive_clients() {
    let server = Server::start(&[
        "--dev",
        "--set",
        "websocket.ping_interval_secs=1",
        "--set",
        "websocket.pong_timeout_secs=1",
    ]);
    // A raw client that never answers: it gets a ping, then close 4003.
    let mut stream = raw_ws(&server).await;
    let connect = encode_client_frame(
        OpCode::Text,
        true,
        false,
        b"{\"id\":1,\"connect\":{}}",
        [9, 9, 9, 9],
    );
    stream.write_all(&connect).await.expect("connect");
    let mut seen_ping = false;
    let mut buf = Vec::new();
    let code = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("frames in time")
            .expect("read");
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut found = None;
        while buf.len() >= at + 2 {
            let op = buf[at] & 0x0f;
            let len = usize::from(buf[at + 1] & 0x7f);
            if buf.len() < at + 2 + len {
                break;
            }
            if op == 0x9 {
                seen_ping = true;
            }
            if op == 0x8 {
                found = Some(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            }
            at += 2 + len;
        }
        buf.drain(..at);
        if let Some(code) = found {
            break code;
        }
    };
    assert!(seen_ping, "a ping came first");
    assert_eq!(code, 4003);

    // A client that answers pings (tungstenite does) stays connected past the timeout.
    let (mut c, _) = Client::connect(&server, None).await;
    c.call("subscribe", json!({"channel": "alive"})).await;
    let ping = match c.next_frame().await {
        tokio_tungstenite::tungstenite::Message::Ping(p) => p,
        other => panic!("unexpected {other:?}"),
    };
    assert!(ping.is_empty());
    // After a second ping interval it is still subscribed and served.
    match c.next_frame().await {
        tokio_tungstenite::tungstenite::Message::Ping(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    server
        .api("publish", json!({"channel": "alive", "data": 7}))
        .await;
    let (_, p) = c.next_publication().await;
    assert_eq!(p["data"], 7);
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_as_slow_consumer() {
    let server = Server::start(&["--dev", "--set", "client.max_queue_bytes=262144"]);
    // The stalled client: subscribes, then never reads.
    let mut stalled = raw_ws(&server).await;
    let mask = [5, 6, 7, 8];
    stalled
        .write_all(&encode_client_frame(
            OpCode::Text,
            true,
            false,
            b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"busy\"}}",
            mask,
        ))
        .await
        .expect("subscribe");
    let (mut healthy, _) = Client::connect(&server, None).await;
    healthy.call("subscribe", json!({"channel": "busy"})).await;
    // Make sure the stalled client's subscription is in place: its reply is queued
    // before any publication (the hub guarantees it), so publications now reach it.
    let (mut probe, _) = Client::connect(&server, None).await;
    let presence_ready = async {
        loop {
            probe.call("subscribe", json!({"channel": "busy"})).await;
            let s = probe
                .call("presence_stats", json!({"channel": "busy"}))
                .await;
            if s["presence_stats"]["num_clients"] == 3 {
                break;
            }
            probe.call("unsubscribe", json!({"channel": "busy"})).await;
        }
    };
    tokio::time::timeout(WAIT, presence_ready)
        .await
        .expect("subscriptions in place");
    let data = "x".repeat(8 * 1024);
    let mut seen = 0;
    for i in 0..600 {
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "busy", "data": {"i": i, "pad": data}}),
            )
            .await;
        assert_eq!(status, 200);
        let (_, p) = healthy.next_publication().await;
        assert_eq!(p["data"]["i"], i);
        seen += 1;
    }
    assert_eq!(seen, 600, "the healthy client got everything");
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("starling_slow_consumers_total ") && !l.ends_with(" 0")),
        "the stalled client was cut: {metrics}"
    );
    drop(stalled);
}

#[tokio::test]
async fn compressed_publications_are_shared_frames_that_inflate() {
    let server = Server::start(&["--dev"]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(
            upgrade_request(
                &server.addr.to_string(),
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.contains("permessage-deflate"), "{head}");
    assert!(head.contains("server_no_context_takeover"), "{head}");
    assert!(head.contains("client_no_context_takeover"), "{head}");
    // Uncompressed client frames stay legal after negotiation.
    let cmds = b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"z\"}}";
    stream
        .write_all(&encode_client_frame(
            OpCode::Text,
            true,
            false,
            cmds,
            [1, 1, 1, 1],
        ))
        .await
        .expect("commands");
    let mut buf = Vec::new();
    // Wait for the subscribe reply before publishing.
    loop {
        let messages = read_messages(&mut stream, &mut buf).await;
        if messages
            .iter()
            .any(|(_, t)| t.windows(13).any(|w| w == b"\"subscribe\":{"))
        {
            break;
        }
    }
    let text = "compressible ".repeat(100);
    server
        .api("publish", json!({"channel": "z", "data": {"text": text}}))
        .await;
    let (wire_len, text_out) = loop {
        let messages = read_messages(&mut stream, &mut buf).await;
        if let Some(m) = messages
            .into_iter()
            .find(|(_, t)| t.starts_with(b"{\"push\""))
        {
            break m;
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&text_out).expect("json");
    assert_eq!(value["push"]["pub"]["data"]["text"], text.as_str());
    assert!(
        wire_len < text_out.len() / 4,
        "actually compressed: {} -> {wire_len}",
        text_out.len()
    );
}

/// Reads once from the socket and returns the complete frames now in `buf` as
/// (payload length on the wire, text after inflating).
async fn read_messages(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<(usize, Vec<u8>)> {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
        .await
        .expect("frames in time")
        .expect("read");
    assert!(n > 0, "closed");
    buf.extend_from_slice(&chunk[..n]);
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 2 {
        let (len, header) = match buf[at + 1] & 0x7f {
            126 if buf.len() >= at + 4 => (
                usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])),
                4,
            ),
            126 => break,
            n => (usize::from(n), 2),
        };
        if buf.len() < at + header + len {
            break;
        }
        let payload = &buf[at + header..at + header + len];
        let text = if buf[at] & 0x40 != 0 {
            inflate(payload)
        } else {
            payload.to_vec()
        };
        out.push((payload.len(), text));
        at += header + len;
    }
    buf.drain(..at);
    out
}

/// Inflates one permessage-deflate message.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut inflater = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    inflater
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("inflate");
    out
}

/// The text of server frames until one contains `needle`; returns that one.
async fn text_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    loop {
        for (_, payload) in read_messages(stream, &mut buf).await {
            let text = String::from_utf8_lossy(&payload).into_owned();
            if text.contains(needle) {
                return text;
            }
        }
    }
}

/// A `connect` command frame, as a client masks it.
fn connect_frame() -> Vec<u8> {
    encode_client_frame(
        OpCode::Text,
        true,
        false,
        br#"{"id":1,"connect":{}}"#,
        [7, 1, 7, 1],
    )
}

/// The server reads request heads itself: one that arrives a byte per write upgrades.
#[tokio::test]
async fn head_sent_byte_by_byte_upgrades() {
    let server = Server::start(&["--dev"]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = upgrade_request(&server.addr.to_string(), "Sec-WebSocket-Version: 13\r\n");
    for byte in request.as_bytes() {
        stream
            .write_all(std::slice::from_ref(byte))
            .await
            .expect("write");
    }
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream.write_all(&connect_frame()).await.expect("connect");
    let reply = text_until(&mut stream, "\"id\":1").await;
    assert!(reply.contains("\"connect\":{"), "{reply}");
}

/// An upgrade request whose head passes 8 KiB gets 431 and the connection closes; other
/// requests keep hyper's larger limit.
#[tokio::test]
async fn upgrade_head_over_8_kib_gets_431() {
    let server = Server::start(&["--dev"]);
    let host = server.addr.to_string();
    let pad = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let request = upgrade_request(&host, &format!("Sec-WebSocket-Version: 13\r\n{pad}"));
    let text = raw_exchange(server.addr, request.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("request head over 8192 bytes\n"), "{text}");
    let (status, body) = http_raw(
        server.addr,
        format!("GET /health HTTP/1.1\r\nHost: {host}\r\n{pad}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_refused(&server, 1).await;
}

/// The node counted `n` refused upgrades.
async fn assert_refused(server: &Server, n: u64) {
    assert_eq!(
        server.metric("starling_upgrades_refused_total").await,
        Some(n)
    );
}

/// Refused upgrades get a plain HTTP/1.1 answer with the reason, and the connection
/// closes (the client here does not ask for that).
#[tokio::test]
async fn bad_upgrade_requests_get_400_with_the_reason_and_close() {
    let server = Server::start(&["--dev"]);
    let cases = [
        (
            "GET /connection/websocket HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "missing Sec-WebSocket-Key header\n",
        ),
        (
            "GET /connection/websocket?format=json HTTP/1.1\r\nHost: h\r\n\r\n",
            "missing or invalid Upgrade header (expected websocket)\n",
        ),
        (
            "GET /connection/websocket HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "WebSocket handshake requires HTTP/1.1 or later\n",
        ),
    ];
    for (request, reason) in cases {
        let text = raw_exchange(server.addr, request.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert_eq!(body, reason);
        let head = head.to_ascii_lowercase();
        for line in [
            "\r\ncontent-type: text/plain; charset=utf-8\r\n".to_string(),
            format!("\r\ncontent-length: {}\r\n", body.len()),
            "\r\nconnection: close\r\n".to_string(),
            "\r\ndate: ".to_string(),
        ] {
            assert!(head.contains(&line), "{line:?} in {head}");
        }
    }
    // Another method is not an upgrade: the route answers it, as always.
    let post = "POST /connection/websocket HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status, _) = http_raw(server.addr, post.as_bytes()).await;
    assert_eq!(status, 405);
    assert_refused(&server, 3).await;
}

/// Frames a client sends in the same write as its upgrade request (without waiting for
/// the 101) are processed.
#[tokio::test]
async fn frames_sent_with_the_head_are_processed() {
    let server = Server::start(&["--dev"]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut bytes =
        upgrade_request(&server.addr.to_string(), "Sec-WebSocket-Version: 13\r\n").into_bytes();
    bytes.extend(connect_frame());
    stream.write_all(&bytes).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let reply = text_until(&mut stream, "\"id\":1").await;
    assert!(reply.contains("\"connect\":{"), "{reply}");
}

/// Requests other than upgrades go to hyper with the bytes already read: keep-alive and
/// pipelined requests are served as before.
#[tokio::test]
async fn keep_alive_requests_are_served() {
    let server = Server::start(&["--dev"]);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_response(&mut stream).await,
        (200, "{\"status\":\"ok\"}".to_string())
    );
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut stream).await.0, 200);
    // Two at once, the second closing.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut stream).await.0, 200);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 404"), "{rest}");
}

/// An upgrade that comes after another request on a keep-alive connection is served by
/// the HTTP route, frames sent along with it included.
#[tokio::test]
async fn upgrade_after_an_earlier_request_on_the_same_connection() {
    let server = Server::start(&["--dev"]);
    let upgrade =
        upgrade_request(&server.addr.to_string(), "Sec-WebSocket-Version: 13\r\n").into_bytes();
    // The upgrade on its own, after the first answer...
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut stream).await.0, 200);
    stream.write_all(&upgrade).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream.write_all(&connect_frame()).await.expect("connect");
    let reply = text_until(&mut stream, "\"id\":1").await;
    assert!(reply.contains("\"connect\":{"), "{reply}");
    // ... and pipelined behind the first request with a frame, all in one write.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut bytes = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
    bytes.extend(&upgrade);
    bytes.extend(connect_frame());
    stream.write_all(&bytes).await.expect("write");
    assert_eq!(read_response(&mut stream).await.0, 200);
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let reply = text_until(&mut stream, "\"id\":1").await;
    assert!(reply.contains("\"connect\":{"), "{reply}");
}
