//! The driver of one WebSocket connection: binds the sans-IO WebSocket state machine to
//! a tokio `TcpStream`, in one task.
//!
//! Reads are readiness-driven into a per-worker-thread buffer, so an idle connection
//! holds no read buffer; writes drain the connection's [`Outbox`] with vectored writes.
//! One timer serves keepalive (ping, then close when nothing answers), the connect
//! timeout, token expiry and the close handshake timeout.

use std::cell::RefCell;
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use starling_core::{DirectWrite, FrameFormat, Outbox};
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
/// upgrade request; `slots` are the connection's places, held until it ends.
pub async fn run(
    stream: TcpStream,
    leftover: Bytes,
    negotiated: Negotiated,
    state: Arc<AppState>,
    slots: crate::upgrade::Slots,
) {
    let _slots = slots;
    let mut driver = Driver::new(negotiated, state);
    let key = driver.key;
    // Shared with the outbox, so that a push to an empty queue (the fan-out loop) writes
    // straight into the socket.
    let socket = Arc::new(Socket(stream));
    driver.outbox.attach(socket.clone());
    let finish = driver.serve(&socket.0, leftover).await;
    // Once detached, no push writes to the socket any more: this task owns it again.
    driver.outbox.detach();
    debug!(
        key,
        graceful = matches!(finish, Ok(Finish::Graceful)),
        "connection loop ended"
    );
    match finish {
        // Boxed: its buffer would otherwise sit in every idle connection's task.
        Ok(Finish::Graceful) => {
            if let Ok(Socket(stream)) = Arc::try_unwrap(socket) {
                Box::pin(close_tcp(stream)).await;
            }
        }
        Ok(Finish::PeerGone) => {}
        Err(e) => debug!(key, "connection ended: {e}"),
    }
    // The driver's `Drop` leaves the channels and the registry, also on a panic.
}

/// The connection's socket, shared between its task and its outbox's direct writes.
#[derive(Debug)]
struct Socket(TcpStream);

impl DirectWrite for Socket {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
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
    fn new(state: &AppState, key: u64) -> Self {
        let now = Instant::now();
        let ws = &state.config.websocket;
        let interval = Duration::from_secs(ws.ping_interval_secs);
        // Up to 10% shorter, different per connection: connections that arrived together
        // (after a restart, a reconnect storm) must not all ping in the same instant.
        let spread = interval.as_millis() as u64 / 10;
        let jitter = Duration::from_millis(spread_hash(key) % spread.max(1));
        Self {
            interval: interval.saturating_sub(jitter),
            pong_timeout: Duration::from_secs(ws.pong_timeout_secs),
            last_rx: now,
            ping_sent: None,
            connect_by: (!state.config.server.echo).then(|| {
                later(
                    now,
                    Duration::from_secs(state.config.client.connect_timeout_secs),
                )
            }),
            close_by: None,
        }
    }

    /// The next deadline. Only deadlines that still mean something count: the connect
    /// timeout until the session connected, token expiry until the close began. A
    /// deadline left in the past would make the timer fire on every turn of the loop.
    fn next(&self, connected: bool, expires_in: Option<Duration>, closing: bool) -> Instant {
        if closing {
            // Only the close handshake's own timeout matters now.
            return self
                .close_by
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        }
        let mut at = match self.ping_sent {
            Some(sent) => later(sent, self.pong_timeout),
            None => later(self.last_rx, self.interval),
        };
        if let Some(d) = self.connect_by.filter(|_| !connected) {
            at = at.min(d);
        }
        if let Some(d) = self.close_by {
            at = at.min(d);
        }
        if let Some(left) = expires_in {
            at = at.min(later(Instant::now(), left));
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

/// A well-mixed 64-bit value from a connection key (SplitMix64's finaliser).
fn spread_hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why the connection's task woke up.
enum Wake {
    Read,
    Write,
    Outbox,
    Timer,
    /// A command that waited for the cluster engine finished.
    Session(Result<(), DisconnectCode>),
}

/// What the timer decided.
enum Tick {
    Nothing,
    SendPing,
    Close(DisconnectCode),
    Abort,
}

struct Driver {
    key: u64,
    ws: Connection,
    negotiated: Negotiated,
    outbox: Arc<Outbox>,
    role: Role,
    state: Arc<AppState>,
    timers: Timers,
}

impl Driver {
    /// A driver for a new connection, registered with the node. Dropping it (at the end
    /// of [`run`], or while a panic unwinds the task) leaves every channel and the
    /// registry, so a panic cannot leave ghost presence or a leaked quota behind.
    fn new(negotiated: Negotiated, state: Arc<AppState>) -> Self {
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
        Driver {
            key,
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
            timers: Timers::new(&state, key),
            state,
        }
    }

    async fn serve(&mut self, stream: &TcpStream, leftover: Bytes) -> std::io::Result<Finish> {
        if !leftover.is_empty() {
            self.receive(&leftover);
        }
        let mut armed = self.deadline();
        let sleep = tokio::time::sleep_until(armed);
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
            // Re-arming the timer costs a timer-wheel update: only when the deadline moved.
            // Never re-arm in the past: a deadline that stays due would turn this loop
            // into a busy spin.
            let due = self.deadline();
            let now = Instant::now();
            let next = if due > now {
                due
            } else {
                now + Duration::from_millis(1)
            };
            if next != armed {
                armed = next;
                sleep.as_mut().reset(armed);
            }
            // One poll over everything this connection waits for. No `select!`: its
            // branch futures (readiness waiters, a `Notified`) would sit in every idle
            // connection's task; polling readiness directly keeps the wakers in the
            // socket's registration and the outbox.
            let role = &mut self.role;
            let wake = std::future::poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Wake::Timer));
                }
                // While a command waits for the cluster engine, nothing more is read:
                // commands run in order, and TCP pushes back on a client that keeps
                // sending.
                let waiting = match role {
                    Role::Client(session) if session.is_pending() => {
                        if let Poll::Ready(result) = session.poll_pending(cx) {
                            return Poll::Ready(Ok(Wake::Session(result)));
                        }
                        true
                    }
                    _ => false,
                };
                if !waiting && let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(ready.map(|()| Wake::Read));
                }
                if want_write {
                    if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                        return Poll::Ready(ready.map(|()| Wake::Write));
                    }
                } else if !closing && self.outbox.poll_ready(cx).is_ready() {
                    // (Once closing, the pending disconnect would keep it ready: only
                    // this task queues frames then.)
                    return Poll::Ready(Ok(Wake::Outbox));
                }
                Poll::Pending
            })
            .await?;
            match wake {
                Wake::Read => {
                    if !self.read(stream)? {
                        return Ok(Finish::PeerGone);
                    }
                }
                Wake::Write | Wake::Outbox | Wake::Session(Ok(())) => {}
                Wake::Session(Err(code)) => self.outbox.disconnect(code),
                Wake::Timer => match self.tick() {
                    Tick::Nothing => {}
                    Tick::SendPing => {
                        self.outbox
                            .push_control(starling_websocket::encode_control(OpCode::Ping, b""));
                    }
                    Tick::Close(code) => self.outbox.disconnect(code),
                    Tick::Abort => return Ok(Finish::PeerGone),
                },
            }
        }
    }

    fn deadline(&self) -> Instant {
        let connected = match &self.role {
            Role::Client(session) => session.connected(),
            Role::Echo => true,
        };
        let closing = self.ws.close_sent() || self.outbox.pending_disconnect().is_some();
        self.timers.next(connected, self.expires_in(), closing)
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
            Some(sent) if now >= later(sent, self.timers.pong_timeout) => {
                self.timers.ping_sent = None;
                Tick::Close(codes::NO_PONG)
            }
            Some(_) => Tick::Nothing,
            None if now >= later(self.timers.last_rx, self.timers.interval) => {
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
                // The answer to the peer's close: no data frame may follow it.
                Event::Send(frame) if is_close_frame(&frame) => self.outbox.push_close(frame),
                Event::Send(frame) => self.outbox.push_control(frame),
                // Bounded: beyond a few unsent pongs, the newest replaces the last.
                Event::Pong(frame) => {
                    if self.outbox.push_pong(frame) {
                        crate::metrics::Metrics::add(&self.state.metrics.pongs_coalesced, 1);
                    }
                }
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
            self.outbox.push_close(frame);
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
        self.outbox.push_close(frame);
        self.timers.close_by = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// Writes as much of the outbox as the socket takes now.
    fn flush(&mut self, stream: &TcpStream) -> std::io::Result<()> {
        let direct = self.outbox.take_direct_bytes();
        if direct > 0 {
            crate::metrics::Metrics::add(&self.state.metrics.bytes_written, direct);
        }
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

impl Drop for Driver {
    fn drop(&mut self) {
        // (Also on a panic: the socket must not outlive the task through the outbox.)
        self.outbox.detach();
        if let Role::Client(session) = &mut self.role {
            session.close();
        }
        self.state.registry.remove(self.key);
    }
}

/// Whether an encoded frame (from the WebSocket layer, unmasked) is a close frame.
fn is_close_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0F == 0x8)
}

/// `at + d`, or a deadline decades away when that does not fit: a token's `exp` near
/// `u64::MAX` (or an enormous configured interval) must not overflow the clock.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(FAR_FUTURE_SECS))
}

/// A deadline that never comes in practice (30 years).
const FAR_FUTURE_SECS: u64 = 30 * 365 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(now: Instant) -> Timers {
        Timers {
            interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            last_rx: now,
            ping_sent: None,
            connect_by: Some(now + Duration::from_secs(10)),
            close_by: None,
        }
    }

    /// A connected, idle connection must sleep until its next ping, even long after the
    /// connect timeout (it used to spin on the stale connect deadline).
    #[test]
    fn stale_deadlines_do_not_wake_an_idle_connection() {
        let start = Instant::now();
        let t = timers(start);
        assert_eq!(t.next(false, None, false), start + Duration::from_secs(10));
        assert_eq!(t.next(true, None, false), start + Duration::from_secs(25));
        // An expired token wakes the connection once, not after the close began.
        assert!(t.next(true, Some(Duration::ZERO), false) <= Instant::now());
        assert!(
            t.next(true, Some(Duration::ZERO), true) > Instant::now() + Duration::from_secs(60)
        );
        // While closing, only the close timeout counts, not a ping long overdue.
        let mut closing = timers(start - Duration::from_secs(100));
        closing.close_by = Some(start + Duration::from_secs(3));
        assert_eq!(
            closing.next(true, None, true),
            start + Duration::from_secs(3)
        );
    }

    /// A token whose `exp` is near `u64::MAX` gives a time left that does not fit in
    /// the clock: the deadline saturates instead of overflowing (a panic before).
    #[test]
    fn huge_expiry_does_not_overflow_the_clock() {
        let start = Instant::now();
        let t = timers(start);
        let far = Duration::from_secs(u64::MAX);
        assert_eq!(
            t.next(true, Some(far), false),
            start + Duration::from_secs(25)
        );
        let mut huge = timers(start);
        huge.interval = Duration::MAX;
        huge.pong_timeout = Duration::MAX;
        assert!(huge.next(true, None, false) > start + Duration::from_secs(3600));
        huge.ping_sent = Some(start);
        assert!(huge.next(true, None, false) > start + Duration::from_secs(3600));
    }

    /// A panic inside a connection's task (none is known; this guards the next one)
    /// still takes the connection out of its channels and the registry: no ghost
    /// presence, no leaked per-user quota, no shutdown waiting for a dead connection.
    #[tokio::test]
    async fn a_panicking_connection_task_still_leaves_channels_and_registry() {
        let mut config = crate::config::Config::default();
        config.storage.dir = String::new();
        config.client.allow_anonymous = true;
        if let Some(ns) = config.namespaces.get_mut("default") {
            ns.allow_anonymous = true;
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let state = AppState::new(config, addr).expect("state");
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let negotiated = Negotiated {
                    deflate: None,
                    format: FrameFormat(0),
                };
                let mut driver = Driver::new(negotiated, state.clone());
                if let Role::Client(session) = &mut driver.role {
                    session
                        .handle(br#"{"id":1,"connect":{}}"#)
                        .expect("connect");
                    session
                        .handle(br#"{"id":2,"subscribe":{"channel":"p"}}"#)
                        .expect("subscribe");
                }
                assert_eq!(state.hub.presence("p").len(), 1);
                assert_eq!(state.registry.connections(), 1);
                panic!("injected panic in a connection task");
            }
        });
        assert!(task.await.expect_err("the task panicked").is_panic());
        assert_eq!(state.registry.connections(), 0, "left the registry");
        assert!(state.hub.presence("p").is_empty(), "left its channel");
    }

    #[test]
    fn ping_intervals_are_spread() {
        let spread: std::collections::HashSet<u64> =
            (1..=100).map(|k| spread_hash(k) % 2500).collect();
        assert!(spread.len() > 90, "keys map to distinct offsets");
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle connection holds one of these futures: keep it from growing unnoticed.
    /// (Measured 768 bytes; 1,144 with a `select!` loop and a `Notify` in the outbox.)
    #[tokio::test]
    async fn connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut config = crate::config::Config::default();
        config.storage.dir = String::new();
        let state = AppState::new(config, addr).expect("state");
        let negotiated = Negotiated {
            deflate: None,
            format: FrameFormat(0),
        };
        let slots = crate::upgrade::Slots::none(state.clone());
        let task = run(server, Bytes::new(), negotiated, state, slots);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 800, "connection future is {size} bytes");
        assert!(std::mem::size_of::<Connection>() <= 160);
    }
}
