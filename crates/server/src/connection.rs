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
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

impl crate::wheel::Ring for Outbox {
    fn ring(&self) {
        self.wake_task();
    }
}

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
///
/// The returned future is the whole connection: a hand-written state machine rather than
/// an `async fn`, so that an idle connection's task holds exactly the driver and a few
/// words (see `size_tests`), not an async block's copies of its locals.
pub fn run(
    stream: TcpStream,
    leftover: Bytes,
    negotiated: Negotiated,
    state: Arc<AppState>,
    slots: crate::upgrade::Slots,
) -> ConnectionTask {
    let mut driver = Driver::new(negotiated, state);
    // Shared with the outbox, so that a push to an empty queue (the fan-out loop) writes
    // straight into the socket.
    let socket = Arc::new(Socket(stream));
    driver.outbox.attach(socket.clone());
    if !leftover.is_empty() {
        driver.receive(&leftover);
    }
    ConnectionTask {
        driver,
        socket: Some(socket),
        armed: None,
        closing: false,
        _slots: slots,
    }
}

/// One connection, from its upgrade to its close (see [`run`]).
pub struct ConnectionTask {
    driver: Driver,
    /// Taken back (to close it) once the loop ended.
    socket: Option<Arc<Socket>>,
    /// The wheel tick this connection's outbox is armed for (see `crate::wheel`).
    armed: Option<u32>,
    /// The close handshake began (our close frame is queued).
    closing: bool,
    /// The connection's places among the node's and its address's, given back on drop.
    _slots: crate::upgrade::Slots,
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // Every field is `Unpin`.
        let this = self.get_mut();
        let finish = match this.serve(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(finish) => finish,
        };
        // Once detached, no push writes to the socket any more: this task owns it again.
        this.driver.outbox.detach();
        let key = this.driver.key;
        debug!(
            key,
            graceful = matches!(finish, Ok(Finish::Graceful)),
            "connection loop ended"
        );
        match finish {
            Ok(Finish::Graceful) => {
                // The socket's only other holder was the outbox, detached above.
                let Some(Ok(Socket(stream))) = this.socket.take().map(Arc::try_unwrap) else {
                    return Poll::Ready(());
                };
                close_tcp(stream, cx);
                Poll::Ready(())
            }
            Ok(Finish::PeerGone) => Poll::Ready(()),
            Err(e) => {
                debug!(key, "connection ended: {e}");
                Poll::Ready(())
            }
        }
        // The driver's `Drop` (with the task) leaves the channels and the registry, also
        // on a panic.
    }
}

impl ConnectionTask {
    /// The connection loop: writes what is queued, then handles whatever is ready (the
    /// timer, a pending engine command, the socket, the outbox) until nothing is.
    fn serve(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<Finish>> {
        let driver = &mut self.driver;
        let Some(Socket(stream)) = self.socket.as_deref() else {
            return Poll::Ready(Ok(Finish::PeerGone));
        };
        loop {
            driver.flush(stream)?;
            if !self.closing
                && let Some(disconnect) = driver.outbox.pending_disconnect()
            {
                driver.start_close(disconnect);
                self.closing = true;
                continue;
            }
            // The unsubscribe API's requests: one atomic load per turn while there are none.
            if driver.state.registry.has_leave_requests()
                && let Role::Client(session) = &mut driver.role
            {
                for channel in driver.state.registry.take_leave_requests(driver.key) {
                    session.leave_by_server(&channel);
                }
            }
            if driver.ws.is_closed() && !driver.outbox.has_frames() {
                return Poll::Ready(Ok(Finish::Graceful));
            }
            let due = driver.deadline();
            let wheel = &driver.state.wheel;
            match self.armed {
                // Rung (maybe early, at the wheel's horizon): `tick` checks what is due,
                // and the next turn arms again.
                Some(tick) if wheel.fired(u64::from(tick)) => {
                    self.armed = None;
                    match driver.tick() {
                        Tick::Nothing => {}
                        Tick::SendPing => driver
                            .outbox
                            .push_control(starling_websocket::encode_control(OpCode::Ping, b"")),
                        Tick::Close(code) => driver.outbox.disconnect(code),
                        Tick::Abort => return Poll::Ready(Ok(Finish::PeerGone)),
                    }
                    continue;
                }
                // Armed early enough: a deadline that moved later (traffic arrived) costs
                // nothing now, only an early ring later.
                Some(tick) if tick <= due => {}
                _ => {
                    let tick = wheel.arm(u64::from(due), &driver.outbox);
                    self.armed = Some(u32::try_from(tick).unwrap_or(u32::MAX));
                }
            }
            // While a command waits for the cluster engine, nothing more is read: commands
            // run in order, and TCP pushes back on a client that keeps sending.
            let waiting = match &mut driver.role {
                Role::Client(session) if session.is_pending() => {
                    if let Poll::Ready(result) = session.poll_pending(cx) {
                        if let Err(code) = result {
                            driver.outbox.disconnect(code);
                        }
                        continue;
                    }
                    true
                }
                _ => false,
            };
            if !waiting && let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                ready?;
                if !driver.read(stream)? {
                    return Poll::Ready(Ok(Finish::PeerGone));
                }
                continue;
            }
            if driver.outbox.has_frames() {
                if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                    ready?;
                    continue;
                }
                driver.outbox.register_waker(cx);
            } else if self.closing {
                // (The pending disconnect would keep the outbox ready: only this task
                // queues frames now; the waker is for the timer.)
                driver.outbox.register_waker(cx);
            } else if driver.outbox.poll_ready(cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// The connection's socket, shared between its task and its outbox's direct writes.
#[derive(Debug)]
struct Socket(TcpStream);

impl DirectWrite for Socket {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
}

/// Deadlines of one connection, in ticks of the node's timer wheel (`crate::wheel`: 50 ms
/// each, so a `u32` covers 6.8 years of uptime; later ones saturate): 36 bytes where
/// `Instant`s took 96 in every idle connection. The earliest arms the wheel.
struct Timers {
    /// Ticks between pings (jittered per connection).
    interval: u32,
    /// Ticks to wait for anything after a ping.
    pong_timeout: u32,
    /// Last tick anything arrived from the peer.
    last_rx: u32,
    /// When the outstanding ping was sent; cleared by anything arriving.
    ping_sent: Option<u32>,
    /// Close the connection if `connect` has not succeeded by then.
    connect_by: Option<u32>,
    /// Give up on the close handshake at this tick.
    close_by: Option<u32>,
}

/// Ticks in `d`, rounded up, saturating.
fn ticks(d: Duration) -> u32 {
    u32::try_from(d.as_nanos().div_ceil(crate::wheel::TICK.as_nanos())).unwrap_or(u32::MAX)
}

/// The wheel tick of `at`, saturating.
fn tick_at(state: &AppState, at: Instant) -> u32 {
    u32::try_from(state.wheel.tick_of(at)).unwrap_or(u32::MAX)
}

impl Timers {
    fn new(state: &AppState, key: u64) -> Self {
        let now = tick_at(state, Instant::now());
        let ws = &state.config.websocket;
        let interval = Duration::from_secs(ws.ping_interval_secs);
        // Up to 10% shorter, different per connection: connections that arrived together
        // (after a restart, a reconnect storm) must not all ping in the same instant.
        let spread = interval.as_millis() as u64 / 10;
        let jitter = Duration::from_millis(spread_hash(key) % spread.max(1));
        Self {
            interval: ticks(interval.saturating_sub(jitter)),
            pong_timeout: ticks(Duration::from_secs(ws.pong_timeout_secs)),
            last_rx: now,
            ping_sent: None,
            connect_by: (!state.config.server.echo).then(|| {
                now.saturating_add(ticks(Duration::from_secs(
                    state.config.client.connect_timeout_secs,
                )))
            }),
            close_by: None,
        }
    }

    /// The next deadline at tick `now`. Only deadlines that still mean something count:
    /// the connect timeout until the session connected, token expiry until the close
    /// began. A deadline left in the past would make the timer fire on every tick.
    fn next(&self, now: u32, connected: bool, expires_in: Option<Duration>, closing: bool) -> u32 {
        if closing {
            // Only the close handshake's own timeout matters now.
            return self.close_by.unwrap_or(u32::MAX);
        }
        let mut at = match self.ping_sent {
            Some(sent) => sent.saturating_add(self.pong_timeout),
            None => self.last_rx.saturating_add(self.interval),
        };
        if let Some(d) = self.connect_by.filter(|_| !connected) {
            at = at.min(d);
        }
        if let Some(d) = self.close_by {
            at = at.min(d);
        }
        if let Some(left) = expires_in {
            at = at.min(now.saturating_add(ticks(left)));
        }
        at
    }

    /// Anything arrived from the peer at tick `now`: it is alive, an outstanding ping
    /// is answered.
    fn received(&mut self, now: u32) {
        self.last_rx = now;
        self.ping_sent = None;
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
/// that could destroy our close frame in flight. The first half runs in the connection's
/// task (`poll_shutdown` of a TCP stream completes at once); the drain, with its buffer,
/// runs in a task of its own.
fn close_tcp(mut stream: TcpStream, cx: &mut std::task::Context<'_>) {
    if !matches!(
        std::pin::Pin::new(&mut stream).poll_shutdown(cx),
        Poll::Ready(Ok(()))
    ) {
        return;
    }
    drop(tokio::spawn(async move {
        let drain = async {
            let mut scratch = [0u8; 512];
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }));
}

/// A well-mixed 64-bit value from a connection key (SplitMix64's finaliser).
fn spread_hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

    /// The wheel tick now.
    fn now(&self) -> u32 {
        tick_at(&self.state, Instant::now())
    }

    /// The wheel tick of the connection's next deadline.
    fn deadline(&self) -> u32 {
        let connected = match &self.role {
            Role::Client(session) => session.connected(),
            Role::Echo => true,
        };
        let closing = self.ws.close_sent() || self.outbox.pending_disconnect().is_some();
        let expires_in = self.expires_in();
        let now = if expires_in.is_some() { self.now() } else { 0 };
        self.timers.next(now, connected, expires_in, closing)
    }

    fn expires_in(&self) -> Option<Duration> {
        match &self.role {
            Role::Client(session) => session.expires_in(),
            Role::Echo => None,
        }
    }

    fn tick(&mut self) -> Tick {
        let now = self.now();
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
            Some(sent) if now >= sent.saturating_add(self.timers.pong_timeout) => {
                self.timers.ping_sent = None;
                Tick::Close(codes::NO_PONG)
            }
            Some(_) => Tick::Nothing,
            None if now >= self.timers.last_rx.saturating_add(self.timers.interval) => {
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
                let room = buf.len();
                match crate::readiness::try_read(stream, room, || stream.try_read(&mut buf)) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        crate::metrics::Metrics::add(&self.state.metrics.bytes_in, n as u64);
                        let now = self.now();
                        self.timers.received(now);
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
            self.timers.close_by = Some(self.now().saturating_add(ticks(CLOSE_TIMEOUT)));
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
                if self.outbox.push(frame) == starling_core::PushOutcome::Overflow {
                    crate::metrics::Metrics::add(&self.state.hub.counters().slow_consumers, 1);
                }
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
        self.timers.close_by = Some(self.now().saturating_add(ticks(CLOSE_TIMEOUT)));
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
            session.end(self.outbox.pending_disconnect().map(|d| d.code));
        }
        self.state.registry.remove(self.key);
    }
}

/// Whether an encoded frame (from the WebSocket layer, unmasked) is a close frame.
fn is_close_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0F == 0x8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(now: u32) -> Timers {
        Timers {
            interval: ticks(Duration::from_secs(25)),
            pong_timeout: ticks(Duration::from_secs(10)),
            last_rx: now,
            ping_sent: None,
            connect_by: Some(now + ticks(Duration::from_secs(10))),
            close_by: None,
        }
    }

    /// A connected, idle connection must sleep until its next ping, even long after the
    /// connect timeout (it used to spin on the stale connect deadline).
    #[test]
    fn stale_deadlines_do_not_wake_an_idle_connection() {
        let start = 1000;
        let t = timers(start);
        assert_eq!(t.next(start, false, None, false), start + 200);
        assert_eq!(t.next(start, true, None, false), start + 500);
        // An expired token wakes the connection once, not after the close began.
        assert_eq!(t.next(start, true, Some(Duration::ZERO), false), start);
        assert_eq!(t.next(start, true, Some(Duration::ZERO), true), u32::MAX);
        // While closing, only the close timeout counts, not a ping long overdue.
        let mut closing = timers(0);
        closing.close_by = Some(start + ticks(Duration::from_secs(3)));
        assert_eq!(closing.next(start, true, None, true), start + 60);
    }

    /// A token whose `exp` is near `u64::MAX` gives a time left that does not fit in
    /// the clock: the deadline saturates instead of overflowing (a panic before).
    #[test]
    fn huge_expiry_does_not_overflow_the_clock() {
        let start = 1000;
        let t = timers(start);
        let far = Duration::from_secs(u64::MAX);
        assert_eq!(t.next(start, true, Some(far), false), start + 500);
        let mut huge = timers(start);
        huge.interval = ticks(Duration::MAX);
        huge.pong_timeout = ticks(Duration::MAX);
        assert_eq!(huge.next(start, true, None, false), u32::MAX);
        huge.ping_sent = Some(start);
        assert_eq!(huge.next(start, true, None, false), u32::MAX);
    }

    /// Anything from the peer answers an outstanding ping and moves the next one.
    #[test]
    fn traffic_answers_a_ping() {
        let mut t = timers(0);
        t.ping_sent = Some(500);
        assert_eq!(t.next(500, true, None, false), 700, "pong timeout");
        t.received(510);
        assert_eq!(t.ping_sent, None);
        assert_eq!(t.next(510, true, None, false), 1010, "next ping");
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
    /// (Measured 264 bytes with the connection's `Slots`; 352 with `Instant` deadlines, 768 as an `async fn` with a
    /// tokio `Sleep`, 1,144 with a `select!` loop and a `Notify` in the outbox.) tokio
    /// puts a task's future in a cell of its size + 104 bytes, rounded up to 128.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let pair = crate::testing::tcp_pair().await;
        let server = pair.server;
        let mut config = crate::config::Config::default();
        config.storage.dir = String::new();
        let state = AppState::new(config, pair.listen).expect("state");
        let negotiated = Negotiated {
            deflate: None,
            format: FrameFormat(0),
        };
        let slots = crate::upgrade::Slots::none(state.clone());
        let task = run(server, Bytes::new(), negotiated, state, slots);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 272, "connection future is {size} bytes");
        assert!(std::mem::size_of::<Connection>() <= 160);
    }
}
