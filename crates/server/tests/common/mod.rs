//! Test harness: starts the real `starling` binary on a free port and talks to it over
//! real sockets (tokio-tungstenite as an independent WebSocket client, raw TCP for HTTP).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// API key used by test servers.
pub const API_KEY: &str = "test-key";
/// HMAC secret used by test servers.
pub const SECRET: &str = "test-secret";
/// Upper bound for any single wait in a test: a failure, not a synchronisation.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server process, killed on drop (its storage directory is removed then,
/// unless it was handed in by the test).
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its message log directory.
    pub storage: std::path::PathBuf,
    owns_storage: bool,
}

/// A fresh directory for one server's message log.
pub fn storage_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("starling-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts `starling serve` on 127.0.0.1:0 with the test key and secret plus `args`,
    /// and waits for the line announcing the bound address.
    pub fn start(args: &[&str]) -> Server {
        let mut server = Server::start_with_storage(&storage_dir(), args);
        server.owns_storage = true;
        server
    }

    /// Starts a server whose message log lives in `storage` (kept after the server).
    pub fn start_with_storage(storage: &std::path::Path, args: &[&str]) -> Server {
        let storage_arg = format!("storage.dir={}", toml_quote(&storage.display().to_string()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY])
            .args(["--token-hmac-secret", SECRET])
            .args(["--set", &storage_arg])
            .args(args)
            .env_remove("RUST_LOG")
            .env(
                "STARLING_LOG",
                std::env::var("TEST_STARLING_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start starling");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("a line").expect("readable");
        let addr = first
            .strip_prefix("starling listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .parse()
            .expect("address");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            storage: storage.to_path_buf(),
            owns_storage: false,
        }
    }

    /// Kills the process at once (SIGKILL: no shutdown, no flush) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Sends a signal (e.g. `TERM`) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code; a watchdog kills it
    /// after [`WAIT`] (then the code is `None` and the test fails).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(WAIT).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        let status = self.child.wait().expect("wait");
        let _ = done.send(());
        let _ = watchdog.join();
        status.code()
    }

    /// `POST /api/<method>` with the test key; returns the status and the JSON body.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        self.api_with_key(method, &body.to_string(), Some(API_KEY))
            .await
    }

    /// `POST /api/<method>` with a raw body and an optional key.
    pub async fn api_with_key(&self, method: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        api_at(self.addr, method, body, key).await
    }

    /// The value of one `/metrics` line (`name` includes labels), if the line is there.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `GET <path>`; returns the status and the body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        http_raw(self.addr, request.as_bytes()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_storage {
            let _ = std::fs::remove_dir_all(&self.storage);
        }
    }
}

/// `POST /api/<target>` to whatever listens at `addr` (a node, or a balancer in front
/// of nodes; `target` may carry a query string) with a raw body and an optional key;
/// returns the status and the JSON body.
pub async fn api_at(addr: SocketAddr, target: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key
        .map(|k| format!("Authorization: apikey {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /api/{target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = http_raw(addr, request.as_bytes()).await;
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

/// A TOML string literal.
fn toml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Sends raw bytes, reads the whole response; returns status and body (after headers).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let text = raw_exchange(addr, request).await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends raw bytes and reads until the server closes (bounded by [`WAIT`]).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_to_close(&mut stream).await
}

/// Reads until the server closes (bounded by [`WAIT`]); what came, as text.
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket client speaking the JSON protocol.
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Next command id.
    pub next_id: u32,
}

impl Client {
    /// Opens a WebSocket to the server (no protocol `connect` yet).
    pub async fn open(server: &Server) -> Client {
        Client::open_request(server.ws_url()).await
    }

    /// Opens a WebSocket with a URL or a full request (extra headers), e.g. through a
    /// balancer.
    pub async fn open_request(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket open in time")
            .expect("websocket connect");
        Client { ws, next_id: 1 }
    }

    /// Opens and sends `connect` with `token` (or anonymously); asserts success.
    pub async fn connect(server: &Server, token: Option<&str>) -> (Client, Value) {
        Client::connect_request(server.ws_url(), token).await
    }

    /// [`Client::connect`] with a URL or a full request (extra headers).
    pub async fn connect_request(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
        token: Option<&str>,
    ) -> (Client, Value) {
        let mut c = Client::open_request(request).await;
        let params = match token {
            Some(t) => serde_json::json!({ "token": t }),
            None => serde_json::json!({}),
        };
        let reply = c.call("connect", params).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        (c, reply)
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends one command and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = serde_json::Map::new();
        cmd.insert("id".into(), id.into());
        cmd.insert(method.into(), params);
        self.send_text(&Value::Object(cmd).to_string()).await;
        id
    }

    /// Sends one command and waits for its reply (pushes that arrive first are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        loop {
            let msg = self.next_json().await;
            if msg.get("id").and_then(Value::as_u64) == Some(u64::from(id)) {
                return msg;
            }
        }
    }

    /// The next protocol message (one JSON object; batches are split).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await;
            match frame {
                Message::Text(t) => {
                    let mut values: Vec<Value> = t
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| serde_json::from_str(l).expect("json line"))
                        .collect();
                    assert_eq!(values.len(), 1, "expected one message per frame here: {t}");
                    return values.remove(0);
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame (bounded by [`WAIT`]).
    pub async fn next_frame(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame")
    }

    /// Waits for the server's close frame, skipping other frames; returns it.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// [`Client::call`] for a connection that may go away: `None` when it closes or
    /// fails first (or nothing comes within [`WAIT`]).
    pub async fn try_call(&mut self, method: &str, params: Value) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = serde_json::Map::new();
        cmd.insert("id".into(), id.into());
        cmd.insert(method.into(), params);
        let text = Value::Object(cmd).to_string();
        self.ws.send(Message::text(text)).await.ok()?;
        loop {
            let msg = self.try_next_json().await?;
            if msg.get("id").and_then(Value::as_u64) == Some(u64::from(id)) {
                return Some(msg);
            }
        }
    }

    /// The offset of the next publication, `None` when the connection closes or fails
    /// first (or nothing comes within [`WAIT`]).
    pub async fn try_next_publication(&mut self) -> Option<u64> {
        loop {
            let msg = self.try_next_json().await?;
            if let Some(p) = msg.get("push").and_then(|p| p.get("pub")) {
                return p["offset"].as_u64();
            }
        }
    }

    async fn try_next_json(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match frame {
                Message::Text(t) => {
                    let line = t.lines().find(|l| !l.trim().is_empty())?;
                    return serde_json::from_str(line).ok();
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                _ => return None,
            }
        }
    }

    /// Next publication push on any channel: `(channel, pub object)`.
    pub async fn next_publication(&mut self) -> (String, Value) {
        loop {
            let msg = self.next_json().await;
            if let Some(push) = msg.get("push")
                && let Some(p) = push.get("pub")
            {
                let channel = push["channel"].as_str().unwrap_or_default().to_string();
                return (channel, p.clone());
            }
        }
    }
}

/// Signs an HS256 token with the test secret; claims without `exp` get one an hour
/// ahead (servers require it by default, `client.token_require_exp`).
pub fn token(mut claims: Value) -> String {
    if let Some(map) = claims.as_object_mut() {
        map.entry("exp").or_insert_with(|| (now() + 3600).into());
    }
    token_as_is(claims)
}

/// Signs an HS256 token with the test secret and exactly `claims`.
pub fn token_as_is(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A WebSocket upgrade request for the endpoint, with `extra` header lines (each ending
/// in `\r\n`; the version header is not included).
pub fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head byte by byte (so no frame after it is consumed).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed during the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads one HTTP response with a `Content-Length` body; returns its status and body.
pub async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let (head, body) = read_message(stream).await;
    (status_of(&head), body)
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"))
}

/// The value of header `name` in a response head (the first, if repeated).
pub fn header_of<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (n, value) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

/// Reads one HTTP response with a `Content-Length` body (and nothing after it); returns
/// its head and body.
pub async fn read_message(stream: &mut TcpStream) -> (String, String) {
    let head = read_head(stream).await;
    let length: usize = header_of(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0; length];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("read body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// Opens a raw TCP connection, sends a version-13 upgrade and returns the stream with
/// the response head (whatever its status).
pub async fn raw_upgrade(server: &Server) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = upgrade_request(&server.addr.to_string(), "Sec-WebSocket-Version: 13\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    (stream, head)
}
