//! `baseline`: the featureless comparison server of bench/peers.sh. A deliberately
//! naive WebSocket broadcast server on tokio-tungstenite, to show what a server costs
//! when it does nothing but fan messages out: no protocol, no history, no auth, no
//! limits.
//!
//! - `GET /sub/<channel>` with a WebSocket upgrade subscribes the connection to
//!   `<channel>`; every publication arrives as one text (or binary) message holding
//!   the published body as it was. What the client sends is ignored. Several
//!   channels separated by commas (`/sub/<a>,<b>`) subscribe the one connection to
//!   each (a channel name cannot hold a comma there); a publication reaches it once
//!   per channel it was published to.
//! - `POST /publish/<channel>` publishes the request body to every subscriber of the
//!   channel and answers `200 {"delivered":N}` (keep-alive HTTP/1.1, `Content-Length`
//!   bodies only).
//!
//! One task per connection with a bounded queue (mpsc); a subscriber whose queue is
//! full is dropped from every channel (its socket closes). WebSocket read and write buffers of 4 KiB.
//!
//!   baseline [--listen 127.0.0.1:0]
//!
//! Prints `baseline listening on http://ADDR` once it accepts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Largest request head and body the server reads.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;
/// Publications queued per subscriber before it is dropped as too slow.
const QUEUE: usize = 256;
/// WebSocket read and write buffers (tungstenite's default is 128 KiB each).
const WS_BUFFER: usize = 4096;

/// A failed request or connection (logged by nobody: the connection just closes).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("bad request: {0}")]
    Bad(&'static str),
}

/// A subscriber as each of its channels holds it: its id, its queue, and how a
/// publisher tells it that it was dropped as too slow (it may still be held by its
/// other channels, so the queue alone would not close).
#[derive(Clone)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Message>,
    dropped: Arc<Notify>,
}

/// Subscribers by channel.
#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Vec<Subscriber>>>,
    next_id: AtomicU64,
}

/// The channels of a subscribe path's rest (`a,b`): empty names are skipped, and a
/// name listed twice counts once (one delivery per publication and channel).
fn channel_list(spec: &str) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for name in spec.split(',').filter(|c| !c.is_empty()) {
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
    list
}

impl Hub {
    /// Subscribes one queue to every channel of `channels`; returns its subscriber
    /// id and the notification of its being dropped.
    fn subscribe(&self, channels: &[String], tx: mpsc::Sender<Message>) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(Notify::new());
        let sub = Subscriber {
            id,
            tx,
            dropped: dropped.clone(),
        };
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in channels {
            map.entry(channel.clone()).or_default().push(sub.clone());
        }
        (id, dropped)
    }

    fn unsubscribe(&self, channels: &[String], id: u64) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in channels {
            if let Some(subs) = map.get_mut(channel) {
                subs.retain(|s| s.id != id);
                if subs.is_empty() {
                    map.remove(channel);
                }
            }
        }
    }

    /// Queues `msg` to every subscriber of `channel`; drops those whose queue is full.
    fn publish(&self, channel: &str, msg: &Message) -> usize {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(subs) = channels.get_mut(channel) else {
            return 0;
        };
        let before = subs.len();
        subs.retain(|s| {
            let queued = s.tx.try_send(msg.clone()).is_ok();
            if !queued {
                // Its task unsubscribes it from its other channels and closes.
                s.dropped.notify_one();
            }
            queued
        });
        let delivered = subs.len();
        if delivered < before {
            eprintln!(
                "baseline: dropped {} slow subscriber(s) of {channel}",
                before - delivered
            );
        }
        if subs.is_empty() {
            channels.remove(channel);
        }
        delivered
    }
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    content_length: usize,
    upgrade: bool,
    ws_key: Option<String>,
    close: bool,
}

/// Parses a request head (the bytes before the blank line).
fn parse_head(head: &[u8]) -> Result<Head, ConnError> {
    let text = std::str::from_utf8(head).map_err(|_| ConnError::Bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(_version)) = (first.next(), first.next(), first.next())
    else {
        return Err(ConnError::Bad("request line"));
    };
    let mut parsed = Head {
        method: method.to_string(),
        path: path.to_string(),
        content_length: 0,
        upgrade: false,
        ws_key: None,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = value
                .parse()
                .map_err(|_| ConnError::Bad("content-length"))?;
        } else if name.eq_ignore_ascii_case("upgrade") {
            parsed.upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            parsed.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            parsed.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(parsed)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads until a whole head is buffered; `None` at a clean EOF between requests.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<Head>, ConnError> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..end])?;
            let _ = buf.split_to(end + 4);
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            return Err(ConnError::Bad("head too long"));
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnError::Bad("EOF in a head"))
            };
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) -> Result<(), ConnError> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    Ok(())
}

async fn connection(mut stream: TcpStream, hub: Arc<Hub>) -> Result<(), ConnError> {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(head) = read_head(&mut stream, &mut buf).await? {
        if head.method == "GET" && head.upgrade {
            let channels = head
                .path
                .strip_prefix("/sub/")
                .map(channel_list)
                .unwrap_or_default();
            if channels.is_empty() {
                respond(&mut stream, "404 Not Found", b"{}").await?;
                return Ok(());
            }
            let key = head.ws_key.ok_or(ConnError::Bad("no Sec-WebSocket-Key"))?;
            if !buf.is_empty() {
                // A client may not send frames before it has the 101.
                return Err(ConnError::Bad("data after the upgrade request"));
            }
            drop(buf);
            return subscriber(stream, hub, channels, &key).await;
        }
        if head.content_length > MAX_BODY {
            respond(&mut stream, "413 Payload Too Large", b"{}").await?;
            return Ok(());
        }
        while buf.len() < head.content_length {
            buf.reserve(head.content_length - buf.len());
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ConnError::Bad("EOF in a body"));
            }
        }
        let body = buf.split_to(head.content_length).freeze();
        match (head.method.as_str(), head.path.strip_prefix("/publish/")) {
            ("POST", Some(channel)) if !channel.is_empty() => {
                let delivered = hub.publish(channel, &message(body));
                let reply = format!("{{\"delivered\":{delivered}}}");
                respond(&mut stream, "200 OK", reply.as_bytes()).await?;
            }
            _ => respond(&mut stream, "404 Not Found", b"{}").await?,
        }
        if head.close {
            return Ok(());
        }
    }
    Ok(())
}

/// The body as a text message when it is UTF-8, else binary.
fn message(body: Bytes) -> Message {
    match Utf8Bytes::try_from(body.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(body),
    }
}

/// Subscribes before answering 101, so that a publication made once the client has
/// the 101 reaches it; then forwards the queue to the socket until either side ends
/// or a publisher drops it as too slow.
async fn subscriber(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    channels: Vec<String>,
    key: &str,
) -> Result<(), ConnError> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let (id, dropped) = hub.subscribe(&channels, tx);
    let result = async {
        let accept = starling_websocket::accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_BUFFER)
            .write_buffer_size(WS_BUFFER)
            .max_message_size(Some(MAX_BODY))
            .max_frame_size(Some(MAX_BODY));
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => ws.send(msg).await?,
                    None => break,
                },
                // Dropped as too slow by a publisher.
                () = dropped.notified() => break,
                incoming = ws.next() => match incoming {
                    // Pings are answered by tungstenite itself; data is ignored.
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ConnError::Ws(e)),
                },
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    }
    .await;
    hub.unsubscribe(&channels, id);
    result
}

fn listen_arg() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => {
                return Err("usage: baseline [--listen 127.0.0.1:0]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("bad --listen {listen}: {e}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let addr = match listen_arg() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("baseline: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baseline: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("baseline listening on http://{a}"),
        Err(e) => eprintln!("baseline: {e}"),
    }
    let hub = Arc::new(Hub::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let hub = hub.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, hub).await;
                });
            }
            // Out of descriptors, for example: keep serving the others.
            Err(e) => {
                eprintln!("baseline: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(
            b"GET /sub/a:1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13",
        )
        .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/sub/a:1");
        assert!(h.upgrade);
        assert_eq!(h.ws_key.as_deref(), Some("abc=="));
        assert!(!h.close);
        let p = parse_head(b"POST /publish/a HTTP/1.1\r\ncontent-length: 12\r\nConnection: close")
            .unwrap();
        assert_eq!((p.content_length, p.upgrade, p.close), (12, false, true));
        assert!(parse_head(b"GARBAGE").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x").is_err());
    }

    #[test]
    fn publish_reaches_subscribers_and_drops_full_queues() {
        let hub = Hub::default();
        let (tx1, mut rx1) = mpsc::channel(QUEUE);
        let (tx2, rx2) = mpsc::channel(1);
        let c = channel_list("c");
        let (a, _) = hub.subscribe(&c, tx1);
        hub.subscribe(&c, tx2);
        assert_eq!(hub.publish("c", &message(Bytes::from_static(b"one"))), 2);
        // The second queue is full now: that subscriber is dropped.
        assert_eq!(hub.publish("c", &message(Bytes::from_static(b"two"))), 1);
        assert_eq!(hub.publish("other", &message(Bytes::from_static(b"x"))), 0);
        assert_eq!(rx1.try_recv().unwrap(), Message::text("one"));
        assert_eq!(rx1.try_recv().unwrap(), Message::text("two"));
        drop(rx2);
        hub.unsubscribe(&c, a);
        assert!(hub.channels.lock().unwrap().is_empty());
        assert_eq!(
            message(Bytes::from_static(&[0xff])),
            Message::Binary(Bytes::from_static(&[0xff]))
        );
    }

    #[test]
    fn channel_lists() {
        assert_eq!(channel_list("a:1"), vec!["a:1"]);
        assert_eq!(channel_list("u:1,g:0"), vec!["u:1", "g:0"]);
        assert_eq!(channel_list("a,,b,"), vec!["a", "b"]);
        assert_eq!(channel_list("a,b,a"), vec!["a", "b"]);
        assert!(channel_list("").is_empty());
        assert!(channel_list(",").is_empty());
    }

    #[test]
    fn one_queue_on_two_channels_gets_each_channels_publications_once() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let both = channel_list("u:1,g:0");
        let (id, _) = hub.subscribe(&both, tx);
        assert_eq!(hub.publish("u:1", &message(Bytes::from_static(b"mine"))), 1);
        assert_eq!(
            hub.publish("g:0", &message(Bytes::from_static(b"group"))),
            1
        );
        assert_eq!(rx.try_recv().unwrap(), Message::text("mine"));
        assert_eq!(rx.try_recv().unwrap(), Message::text("group"));
        assert!(rx.try_recv().is_err());
        hub.unsubscribe(&both, id);
        assert!(hub.channels.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_subscriber_from_every_channel() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let both = channel_list("u:1,g:0");
        let (id, dropped) = hub.subscribe(&both, tx);
        assert_eq!(hub.publish("u:1", &message(Bytes::from_static(b"1"))), 1);
        // The queue is full: dropped from g:0, and told so (the permit is stored).
        assert_eq!(hub.publish("g:0", &message(Bytes::from_static(b"2"))), 0);
        dropped.notified().await;
        // Its task then leaves the channel it is still in.
        hub.unsubscribe(&both, id);
        assert!(hub.channels.lock().unwrap().is_empty());
    }
}
