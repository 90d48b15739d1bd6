//! The driver of one WebSocket connection: binds the sans-IO WebSocket state machine to
//! a tokio `TcpStream`, in one task.
//!
//! Reads are readiness-driven into a per-worker-thread buffer, so an idle connection
//! holds no read buffer; writes drain the connection's [`Outbox`] with vectored writes.
//! One timer serves keepalive (ping, then close when nothing answers), the connect
//! timeout, token expiry and the close handshake timeout.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_core::{FrameFormat, Outbox};
use starling_protocol::Push;
use starling_protocol::codes::{self, DisconnectCode};
use starling_websocket::{
    CloseCode, Config as WsConfig, Connection, Event, Message, MessageKind, OpCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::app::AppState;
use crate::encoder::WireEncoder;
use crate::session::Session;

/// Size of each worker thread's read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Full read buffers processed per readiness event before the task yields.
const READS_PER_WAKE: usize = 4;
/// Frames handed to one vectored write.
const WRITE_BATCH: usize = 64;
/// How long to wait for the peer's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// What the connection does with messages.
enum Role {
    /// Echo every message back (conformance testing).
    Echo,
    /// The client protocol.
    Client(Box<Session>),
}

/// What a connection negotiated during the upgrade.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// permessage-deflate parameters, if negotiated.
    pub deflate: Option<starling_websocket::DeflateParams>,
    /// The wire format for protocol frames.
    pub format: FrameFormat,
}

/// Runs a connection until it closes. `leftover` holds bytes that arrived with the
/// upgrade request.
pub async fn run(stream: TcpStream, leftover: Bytes, negotiated: Negotiated, state: Arc<AppState>) {
    let key = state.next_key();
    let outbox = Arc::new(Outbox::new(state.config.client.max_queue_bytes));
    state.registry.add(key, outbox.clone());
    crate::metrics::Metrics::add(&state.metrics.connections_accepted, 1);
    let role = if state.config.server.echo {
        Role::Echo
    } else {
        Role::Client(Box::new(Session::new(
            key,
            state.clone(),
            outbox.clone(),
            negotiated.format,
        )))
    };
    let mut driver = Driver {
        ws: Connection::new(
            WsConfig {
                max_frame_size: state.config.websocket.max_frame_size,
                max_message_size: state.config.websocket.max_message_size,
            },
            negotiated.deflate,
        ),
        negotiated,
        outbox,
        role,
        state: state.clone(),
        timers: Timers::new(&state),
    };
    let finish = driver.serve(&stream, leftover).await;
    debug!(
        key,
        graceful = matches!(finish, Ok(Finish::Graceful)),
        "connection loop ended"
    );
    match finish {
        // Boxed: its buffer would otherwise sit in every idle connection's task.
        Ok(Finish::Graceful) => Box::pin(close_tcp(stream)).await,
        Ok(Finish::PeerGone) => {}
        Err(e) => debug!(key, "connection ended: {e}"),
    }
    if let Role::Client(session) = &mut driver.role {
        session.close();
    }
    state.registry.remove(key);
}

/// Deadlines of one connection; the earliest arms the single timer.
struct Timers {
    interval: Duration,
    pong_timeout: Duration,
    /// Last time anything arrived from the peer.
    last_rx: Instant,
    /// When the outstanding ping was sent.
    ping_sent: Option<Instant>,
    /// Close the connection if `connect` has not succeeded by then.
    connect_by: Option<Instant>,
    /// Give up on the close handshake at this time.
    close_by: Option<Instant>,
}

impl Timers {
    fn new(state: &AppState) -> Self {
        let now = Instant::now();
        let ws = &state.config.websocket;
        Self {
            interval: Duration::from_secs(ws.ping_interval_secs),
            pong_timeout: Duration::from_secs(ws.pong_timeout_secs),
            last_rx: now,
            ping_sent: None,
            connect_by: (!state.config.server.echo)
                .then(|| now + Duration::from_secs(state.config.client.connect_timeout_secs)),
            close_by: None,
        }
    }

    fn next(&self, expires_in: Option<Duration>) -> Instant {
        let mut at = match self.ping_sent {
            Some(sent) => sent + self.pong_timeout,
            None => self.last_rx + self.interval,
        };
        for d in [self.connect_by, self.close_by].into_iter().flatten() {
            at = at.min(d);
        }
        if let Some(left) = expires_in {
            at = at.min(Instant::now() + left);
        }
        at
    }
}

/// How the connection loop ended.
enum Finish {
    /// The close handshake completed and our frames are written.
    Graceful,
    /// The peer vanished or the close handshake timed out: just drop the socket.
    PeerGone,
}

/// After the close handshake the server closes TCP first (RFC 6455 7.1.1), then drains
/// what the peer still sends, so that the kernel does not answer unread data with a reset
/// that could destroy our close frame in flight.
async fn close_tcp(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 512];
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// What the timer decided.
enum Tick {
    Nothing,
    SendPing,
    Close(DisconnectCode),
    Abort,
}

struct Driver {
    ws: Connection,
    negotiated: Negotiated,
    outbox: Arc<Outbox>,
    role: Role,
    state: Arc<AppState>,
    timers: Timers,
}

impl Driver {
    async fn serve(&mut self, stream: &TcpStream, leftover: Bytes) -> std::io::Result<Finish> {
        if !leftover.is_empty() {
            self.receive(&leftover);
        }
        let sleep = tokio::time::sleep_until(self.timers.next(self.expires_in()));
        tokio::pin!(sleep);
        let mut closing = false;
        loop {
            self.flush(stream)?;
            if !closing && let Some(disconnect) = self.outbox.pending_disconnect() {
                self.start_close(disconnect);
                closing = true;
                continue;
            }
            if self.ws.is_closed() && !self.outbox.has_frames() {
                return Ok(Finish::Graceful);
            }
            let want_write = self.outbox.has_frames();
            sleep.as_mut().reset(self.timers.next(self.expires_in()));
            tokio::select! {
                ready = stream.readable() => {
                    ready?;
                    if !self.read(stream)? {
                        return Ok(Finish::PeerGone);
                    }
                }
                ready = stream.writable(), if want_write => ready?,
                // Once closing, the pending disconnect would keep `ready` firing: only
                // this task queues frames then, so there is nothing to wait for.
                () = self.outbox.ready(), if !want_write && !closing => {}
                () = &mut sleep => {
                    match self.tick() {
                        Tick::Nothing => {}
                        Tick::SendPing => {
                            self.outbox.push_control(starling_websocket::encode_control(OpCode::Ping, b""));
                        }
                        Tick::Close(code) => self.outbox.disconnect(code),
                        Tick::Abort => return Ok(Finish::PeerGone),
                    }
                }
            }
        }
    }

    fn expires_in(&self) -> Option<Duration> {
        match &self.role {
            Role::Client(session) => session.expires_in(),
            Role::Echo => None,
        }
    }

    fn tick(&mut self) -> Tick {
        let now = Instant::now();
        if self.timers.close_by.is_some_and(|t| now >= t) {
            return Tick::Abort;
        }
        if let Role::Client(session) = &self.role {
            if !session.connected() && self.timers.connect_by.is_some_and(|t| now >= t) {
                self.timers.connect_by = None;
                return Tick::Close(codes::CONNECT_REQUIRED);
            }
            if session.expires_in() == Some(Duration::ZERO) {
                return Tick::Close(codes::EXPIRED);
            }
        }
        match self.timers.ping_sent {
            Some(sent) if self.timers.last_rx > sent => {
                self.timers.ping_sent = None;
                Tick::Nothing
            }
            Some(sent) if now >= sent + self.timers.pong_timeout => {
                self.timers.ping_sent = None;
                Tick::Close(codes::NO_PONG)
            }
            Some(_) => Tick::Nothing,
            None if now >= self.timers.last_rx + self.timers.interval => {
                self.timers.ping_sent = Some(now);
                Tick::SendPing
            }
            None => Tick::Nothing,
        }
    }

    /// Reads what the socket has. Returns false at end of stream.
    fn read(&mut self, stream: &TcpStream) -> std::io::Result<bool> {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            // A client that keeps sending must not keep this task (and its worker) in
            // the read loop: after a few full buffers, go back to writing and yield.
            for _ in 0..READS_PER_WAKE {
                match stream.try_read(&mut buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        crate::metrics::Metrics::add(&self.state.metrics.bytes_in, n as u64);
                        self.timers.last_rx = Instant::now();
                        self.receive(&buf[..n]);
                        if n < buf.len() || self.ws.is_closed() {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        })
    }

    /// Feeds bytes to the WebSocket layer and handles what completes, in order of
    /// arrival: a pong for a ping inside a fragmented message leaves before the reply
    /// to that message.
    fn receive(&mut self, data: &[u8]) {
        let mut events: Vec<Event> = Vec::new();
        let result = self.ws.receive_events(data, &mut |e| events.push(e));
        for event in events {
            match event {
                Event::Send(frame) => self.outbox.push_control(frame),
                Event::Message(message) => {
                    crate::metrics::Metrics::add(&self.state.metrics.messages_in, 1);
                    if self.ws.close_sent() || self.outbox.pending_disconnect().is_some() {
                        continue;
                    }
                    if let Err(code) = self.handle(message) {
                        self.outbox.disconnect(code);
                    }
                }
            }
        }
        if let Err(err) = result {
            debug!("protocol error: {err}");
            self.state.metrics.error(u32::from(err.close_code().0));
            let frame = self.ws.fail(&err);
            self.outbox.push_control(frame);
            self.timers.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
        }
    }

    fn handle(&mut self, message: Message) -> Result<(), DisconnectCode> {
        match &mut self.role {
            Role::Echo => {
                let (kind, payload) = match &message {
                    Message::Text(p) => (MessageKind::Text, p),
                    Message::Binary(p) => (MessageKind::Binary, p),
                };
                let frame = starling_websocket::encode_message(
                    kind,
                    payload,
                    self.negotiated.deflate.as_ref(),
                );
                self.outbox.push(frame);
                Ok(())
            }
            Role::Client(session) => {
                let binary_expected = WireEncoder::encoding(self.negotiated.format).is_binary();
                match &message {
                    Message::Text(p) if !binary_expected => session.handle(p),
                    Message::Binary(p) if binary_expected => session.handle(p),
                    // JSON travels in text frames, MessagePack in binary ones.
                    _ => Err(codes::POLICY_VIOLATION),
                }
            }
        }
    }

    /// Sends the disconnect push (client protocol only) and the close frame.
    fn start_close(&mut self, disconnect: DisconnectCode) {
        self.state.metrics.error(u32::from(disconnect.code));
        if self.ws.close_sent() {
            return;
        }
        if let Role::Client(_) = self.role {
            // Each client gets its own random delay, so a node's clients (on shutdown,
            // say) come back spread over the window rather than all at once.
            let push = if disconnect.reconnect {
                Push::disconnect_after(disconnect, self.state.limits.reconnect_delay_ms())
            } else {
                Push::disconnect(disconnect)
            };
            let push = self.state.encoder.push(self.negotiated.format, &push);
            self.outbox.push_control(push);
        }
        let frame = self.ws.close(CloseCode(disconnect.code), disconnect.reason);
        self.outbox.push_control(frame);
        self.timers.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// Writes as much of the outbox as the socket takes now.
    fn flush(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        loop {
            match self
                .outbox
                .write_with(WRITE_BATCH, |slices| stream.try_write_vectored(slices))
            {
                Ok(0) => return Ok(()),
                Ok(n) => crate::metrics::Metrics::add(&self.state.metrics.bytes_written, n as u64),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
