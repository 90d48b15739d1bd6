//! A lightweight WebSocket client on a raw tokio `TcpStream`: masked frames from
//! the websocket crate's `encode_client_frame`, server frames read by [`crate::frame`].
//! A connection costs the task, the socket and a small read buffer, so 10,000 of them
//! fit in one process.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use starling_protocol::{Command, Encoding, Method, ServerMessage};
use starling_websocket::{OpCode, accept_key, encode_client_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::frame::{Assembler, Event, parse_frame};

/// Largest server frame the bench accepts.
pub const MAX_FRAME: usize = 16 << 20;
/// Read buffer reserved before each read.
const READ_CHUNK: usize = 4096;

/// Where to connect: `ws://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written in the URL (sent in `Host`).
    pub host: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: String,
    /// Offer permessage-deflate in the upgrade and insist that the server takes it
    /// (`idle --deflate`: what a negotiated compression costs an idle connection).
    pub deflate: bool,
}

/// The values of the response head's `name` lines (ASCII case-insensitive), trimmed.
fn header_values<'a>(head: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    head.lines().filter_map(move |l| {
        let (header, value) = l.split_once(':')?;
        header
            .trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Whether the response head `head` accepts the extension `name`.
fn extension_accepted(head: &str, name: &str) -> bool {
    header_values(head, "sec-websocket-extensions").any(|value| {
        value
            .split([',', ';'])
            .any(|item| item.trim().eq_ignore_ascii_case(name))
    })
}

/// Splits `ws://host[:port][/path]` into host, port and path.
pub fn split_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("only ws:// URLs are supported, got {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().with_context(|| format!("bad port in {url}"))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        bail!("no host in {url}");
    }
    Ok((host.to_string(), port, path.to_string()))
}

impl Target {
    /// Parses and resolves a `ws://` URL.
    pub async fn resolve(url: &str) -> anyhow::Result<Target> {
        let (host, port, path) = split_url(url)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("no IPv4 address for {host}"))?;
        Ok(Target {
            host,
            addr,
            path,
            deflate: false,
        })
    }

    /// Resolves `http://host:port[/path]` or `ws://host:port[/path]` (a node's HTTP API
    /// or WebSocket endpoint); without a path, `default_path` is used.
    pub async fn resolve_node(url: &str, default_path: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| format!("only http:// and ws:// URLs are supported, got {url}"))?;
        let with_path = if rest.contains('/') {
            format!("ws://{rest}")
        } else {
            format!("ws://{rest}{default_path}")
        };
        Self::resolve(&with_path).await
    }

    /// `host:port` of the server's HTTP side (same listener).
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Source addresses 127.0.0.2..=127.0.0.(count+1), used round-robin so that 10k+
/// connections do not exhaust one address's ephemeral ports. Empty when the target
/// is not on loopback or `count` is 0 (then the kernel picks).
pub fn source_addrs(target: &Target, count: u8) -> Vec<IpAddr> {
    if count == 0 || !target.addr.ip().is_loopback() {
        return Vec::new();
    }
    (0..count)
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k.min(253))))
        .collect()
}

/// Opens a TCP connection, bound to `source` first when given.
pub async fn tcp_connect(target: &Target, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

static SEED: AtomicU32 = AtomicU32::new(0x9E37_79B9);

/// Cheap xorshift for masking keys and handshake nonces (no security needed here).
fn next_rand(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

/// The reading half: buffer, frame reader, message assembly.
pub struct WsReader {
    read: OwnedReadHalf,
    buf: BytesMut,
    assembler: Assembler,
}

/// The writing half: masks and sends frames.
pub struct WsWriter {
    write: OwnedWriteHalf,
    rand: u32,
}

/// An upgraded WebSocket client connection.
pub struct WsClient {
    /// Reading half.
    pub reader: WsReader,
    /// Writing half.
    pub writer: WsWriter,
}

impl WsClient {
    /// TCP connect (from `source`), then the HTTP upgrade with `starling.json`.
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> anyhow::Result<WsClient> {
        Self::connect_as(target, source, Some("starling.json")).await
    }

    /// TCP connect (from `source`), then the HTTP upgrade asking for `subprotocol`
    /// (none for the peers' protocols, which do not negotiate one).
    pub async fn connect_as(
        target: &Target,
        source: Option<IpAddr>,
        subprotocol: Option<&str>,
    ) -> anyhow::Result<WsClient> {
        let stream = open(target, source).await?;
        Self::upgrade_as(stream, target, subprotocol).await
    }

    /// Performs the opening handshake on an open TCP stream (`starling.json`).
    pub async fn upgrade(stream: TcpStream, target: &Target) -> anyhow::Result<WsClient> {
        Self::upgrade_as(stream, target, Some("starling.json")).await
    }

    /// Performs the opening handshake, asking for `subprotocol` when given.
    pub async fn upgrade_as(
        stream: TcpStream,
        target: &Target,
        subprotocol: Option<&str>,
    ) -> anyhow::Result<WsClient> {
        Self::upgrade_with(stream, target, subprotocol, &[]).await
    }

    /// TCP connect, then the upgrade with `commands` pipelined in the same write as the
    /// request (one round trip instead of two: what a non-browser client can do, and what
    /// the peers' subscribe-in-the-URL gets), then their replies.
    pub async fn connect_pipelined(
        target: &Target,
        source: Option<IpAddr>,
        commands: &[Command],
    ) -> anyhow::Result<(WsClient, Vec<ServerMessage>)> {
        let stream = open(target, source).await?;
        let mut client =
            Self::upgrade_with(stream, target, Some("starling.json"), commands).await?;
        let replies = client.replies(commands).await?;
        Ok((client, replies))
    }

    /// The opening handshake, with `early` commands (one text frame, when any) written
    /// right after the request.
    async fn upgrade_with(
        mut stream: TcpStream,
        target: &Target,
        subprotocol: Option<&str>,
        early: &[Command],
    ) -> anyhow::Result<WsClient> {
        let mut rand = SEED.fetch_add(0x6D2B_79F5, Ordering::Relaxed) | 1;
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_mut(4) {
            chunk.copy_from_slice(&next_rand(&mut rand).to_ne_bytes());
        }
        let key = starling_protocol::b64_encode(&nonce);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}{}\r\n",
            target.path,
            target.host,
            target.addr.port(),
            subprotocol
                .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
                .unwrap_or_default(),
            if target.deflate {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            }
        );
        let mut request = request.into_bytes();
        if !early.is_empty() {
            let mask = next_rand(&mut rand).to_ne_bytes();
            let frame = encode_client_frame(OpCode::Text, true, false, &payload(early), mask);
            request.extend_from_slice(&frame);
        }
        stream.write_all(&request).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("upgrade response headers too long");
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {status}");
        }
        let expected = accept_key(key.as_bytes());
        let accepted = header_values(&head, "sec-websocket-accept").any(|v| v == expected);
        if !accepted {
            bail!("missing or wrong Sec-WebSocket-Accept");
        }
        if target.deflate && !extension_accepted(&head, "permessage-deflate") {
            bail!("permessage-deflate was offered and not accepted");
        }
        let _ = buf.split_to(end);
        let (read, write) = stream.into_split();
        Ok(WsClient {
            reader: WsReader {
                read,
                buf,
                assembler: Assembler::default(),
            },
            writer: WsWriter { write, rand },
        })
    }

    /// Sends `commands` in one text frame and waits for a reply to each, answering
    /// pings meanwhile. Returns the replies (by position of the commands).
    pub async fn request(&mut self, commands: &[Command]) -> anyhow::Result<Vec<ServerMessage>> {
        self.writer.send_text(&payload(commands)).await?;
        self.replies(commands).await
    }

    /// Waits for a reply to each of `commands` (sent already), answering pings meanwhile.
    async fn replies(&mut self, commands: &[Command]) -> anyhow::Result<Vec<ServerMessage>> {
        let mut replies: Vec<Option<ServerMessage>> = vec![None; commands.len()];
        while replies.iter().any(Option::is_none) {
            match self.reader.next_event().await? {
                Event::Text(p) => {
                    for msg in starling_protocol::decode_server_messages(Encoding::Json, &p)? {
                        if let ServerMessage::Reply(r) = &msg
                            && let Some(i) = commands.iter().position(|c| c.id == r.id)
                        {
                            replies[i] = Some(msg);
                        }
                    }
                }
                Event::Ping(p) => self.writer.send(OpCode::Pong, &p).await?,
                Event::Close(code, reason) => bail!("closed by server: {code:?} {reason}"),
                Event::Binary(_) | Event::Pong => {}
            }
        }
        Ok(replies.into_iter().flatten().collect())
    }
}

impl WsReader {
    /// The next message or control frame. Cancel-safe: partial data stays buffered.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        loop {
            while let Some(frame) = parse_frame(&mut self.buf, MAX_FRAME)? {
                if let Some(event) = self.assembler.push(frame)? {
                    return Ok(event);
                }
            }
            self.buf.reserve(READ_CHUNK);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by the server (EOF)");
            }
        }
    }

    /// An event already buffered, without reading the socket.
    pub fn buffered_event(&mut self) -> anyhow::Result<Option<Event>> {
        while let Some(frame) = parse_frame(&mut self.buf, MAX_FRAME)? {
            if let Some(event) = self.assembler.push(frame)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

impl WsWriter {
    /// Sends one masked frame.
    pub async fn send(&mut self, op: OpCode, payload: &[u8]) -> io::Result<()> {
        let frame = self.frame(op, payload);
        self.write.write_all(&frame).await
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OpCode::Text, payload).await
    }

    /// Builds a masked frame (to batch several into one write).
    pub fn frame(&mut self, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mask = next_rand(&mut self.rand).to_ne_bytes();
        encode_client_frame(op, true, false, payload, mask)
    }

    /// Writes raw bytes (already framed).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write.write_all(bytes).await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `commands` encoded as one JSON message.
fn payload(commands: &[Command]) -> Vec<u8> {
    let mut payload = Vec::new();
    for c in commands {
        starling_protocol::encode_command(Encoding::Json, c, &mut payload);
    }
    payload
}

/// TCP connect to `target` from `source`, saying where in the error.
async fn open(target: &Target, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    tcp_connect(target, source)
        .await
        .with_context(|| format!("connecting to {} from {source:?}", target.addr))
}

/// `connect` (anonymous) as command 1.
pub fn connect_command() -> Command {
    Command {
        id: 1,
        method: Method::Connect(Default::default()),
    }
}

/// `subscribe` to `channel` with the given id.
pub fn subscribe_command(id: u32, channel: &str) -> Command {
    Command {
        id,
        method: Method::Subscribe(starling_protocol::SubscribeRequest {
            channel: channel.to_string(),
            ..Default::default()
        }),
    }
}

/// The reply error of a message, if it is an error reply.
pub fn reply_error(msg: &ServerMessage) -> Option<String> {
    match msg {
        ServerMessage::Reply(r) => r.body.as_ref().err().map(|e| e.to_string()),
        _ => Some("not a reply".into()),
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<(u16, Bytes)> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut http = HttpConn::default();
        http.send(&mut stream, addr, method, path, headers, body)
            .await?;
        http.receive(&mut stream).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("{method} {path} timed out"))?
}

/// A keep-alive HTTP/1.1 client connection (just enough for the publish API).
#[derive(Default)]
pub struct HttpConn {
    buf: BytesMut,
}

impl HttpConn {
    /// Writes one request.
    pub async fn send(
        &mut self,
        stream: &mut TcpStream,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes).await?;
        Ok(())
    }

    /// One request and its response.
    pub async fn exchange(
        &mut self,
        stream: &mut TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Bytes)> {
        self.send(stream, addr, "POST", path, headers, body).await?;
        self.receive(stream).await
    }

    /// Reads one response (Content-Length bodies only).
    pub async fn receive(&mut self, stream: &mut TcpStream) -> anyhow::Result<(u16, Bytes)> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("bad HTTP status line")?;
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let _ = self.buf.split_to(end + 4);
                    return Ok((status, self.buf.split_to(len).freeze()));
                }
            }
            self.buf.reserve(READ_CHUNK);
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("HTTP connection closed before the response ended");
            }
        }
    }
}

/// Waits until `done()` holds or `deadline` passes (then returns false), printing
/// `progress()` every 2 s: the set-up phase of every bench, bounded in time.
pub async fn wait_until(
    deadline: tokio::time::Instant,
    mut done: impl FnMut() -> bool,
    mut progress: impl FnMut() -> String,
) -> bool {
    let mut last_print = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!("  {}", progress());
            last_print = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:8000/connection/websocket").unwrap(),
            ("127.0.0.1".into(), 8000, "/connection/websocket".into())
        );
        assert_eq!(
            split_url("ws://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert!(split_url("wss://x/").is_err());
        assert!(split_url("ws://:1/").is_err());
    }

    #[test]
    fn accepted_extensions_are_read_from_the_head() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: \
                    permessage-deflate; server_no_context_takeover\r\n\r\n";
        assert!(extension_accepted(head, "permessage-deflate"));
        assert!(!extension_accepted(head, "x-webkit-deflate-frame"));
        assert!(!extension_accepted(
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "permessage-deflate"
        ));
    }

    #[test]
    fn sources_spread_on_loopback_only() {
        let t = Target {
            host: "127.0.0.1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            path: "/".into(),
            deflate: false,
        };
        let s = source_addrs(&t, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)));
        let remote = Target {
            addr: "10.0.0.1:1".parse().unwrap(),
            ..t
        };
        assert!(source_addrs(&remote, 3).is_empty());
    }
}
