//! A connection's outbound queue: encoded frames waiting for the socket, bounded in bytes.
//!
//! The hub pushes the same `Bytes` to many outboxes (encode once, send many); the
//! connection's task drains its outbox with vectored writes. A push that would exceed the
//! byte limit marks the outbox for disconnection as a slow consumer instead of growing.
//!
//! A frame pushed while the queue is empty goes straight into the socket when it takes it
//! (see [`DirectWrite`]): the fan-out loop writes to every subscriber that keeps up, and
//! only the rest wait for their connection's task (no task wake-up, no second pass over
//! the subscribers, the way uWebSockets corks).
//!
//! The connection's own control frames are not refused (the close handshake depends on
//! them) but are bounded: pongs coalesce beyond [`MAX_PENDING_PONGS`] unsent ones (only
//! the newest ping needs an answer, RFC 6455 5.5.3), and every other control frame is
//! sent at most once per connection or once per keepalive interval.

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use std::task::{Context, Poll, Waker};

use starling_protocol::codes::{self, DisconnectCode};

/// A connection's socket, written to without blocking by whoever pushes a frame to an
/// empty outbox (the fan-out loop, usually on another thread).
pub trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing. Never blocks.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

/// Frames waiting to be written to one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
}

/// Unsent pongs an outbox holds before a new pong replaces the newest of them instead of
/// queueing: at most 16 × 127 bytes of pongs per connection, however fast a peer pings
/// without reading. (More than one, so that a burst of a few pings is answered ping by
/// ping, as Autobahn 2.10 and 2.11 expect.)
pub const MAX_PENDING_PONGS: u8 = 16;

/// The queued frames. Most of the time a connection has nothing or one frame queued
/// (one publication between two writes): that case holds the frame inline, so a
/// delivery to an idle connection allocates no queue (and frees none after the write).
#[derive(Debug, Default)]
enum Frames {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl Frames {
    fn is_empty(&self) -> bool {
        matches!(self, Frames::Empty)
    }

    fn len(&self) -> usize {
        match self {
            Frames::Empty => 0,
            Frames::One(_) => 1,
            Frames::Many(q) => q.len(),
        }
    }

    fn push_back(&mut self, frame: Bytes) {
        match self {
            Frames::Empty => *self = Frames::One(frame),
            Frames::One(_) => {
                let Frames::One(first) = std::mem::take(self) else {
                    return;
                };
                let mut q = VecDeque::with_capacity(4);
                q.push_back(first);
                q.push_back(frame);
                *self = Frames::Many(q);
            }
            Frames::Many(q) => q.push_back(frame),
        }
    }

    fn front_mut(&mut self) -> Option<&mut Bytes> {
        match self {
            Frames::Empty => None,
            Frames::One(f) => Some(f),
            Frames::Many(q) => q.front_mut(),
        }
    }

    /// Removes the front frame; an emptied queue gives its memory back (idle connections
    /// should cost little; a busy one pays one small allocation per burst).
    fn pop_front(&mut self) {
        match self {
            Frames::Empty => {}
            Frames::One(_) => *self = Frames::Empty,
            Frames::Many(q) => {
                q.pop_front();
                if q.is_empty() {
                    *self = Frames::Empty;
                }
            }
        }
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Bytes> {
        match self {
            Frames::Empty => None,
            Frames::One(f) => (index == 0).then_some(f),
            Frames::Many(q) => q.get_mut(index),
        }
    }

    /// The first `max` frames, as slices for one vectored write.
    fn slices<'a>(&'a self, out: &mut [std::io::IoSlice<'a>]) -> usize {
        match self {
            Frames::Empty => 0,
            Frames::One(f) => match out.first_mut() {
                Some(slot) => {
                    *slot = std::io::IoSlice::new(f);
                    1
                }
                None => 0,
            },
            Frames::Many(q) => {
                let mut n = 0;
                for (slot, frame) in out.iter_mut().zip(q.iter()) {
                    *slot = std::io::IoSlice::new(frame);
                    n += 1;
                }
                n
            }
        }
    }
}

/// Direct writes wake the connection's task to report their bytes once this many have
/// accumulated (see [`Outbox::take_direct_bytes`]).
pub const DIRECT_REPORT_BYTES: u64 = 64 * 1024;

/// Most frames one vectored write takes (the slices live on the stack).
pub const MAX_WRITE_FRAMES: usize = 64;

#[derive(Debug, Default)]
struct State {
    frames: Frames,
    bytes: usize,
    /// Frames ever removed from the front (wrapping): `frames[i]` is frame number
    /// `head + i`.
    head: u32,
    /// Pongs queued since the queue last held none (an upper bound on those still
    /// unsent; reset when the newest of them leaves).
    pongs: u8,
    /// Frame number of the newest queued pong, while `pongs > 0`.
    newest_pong: u32,
    /// Set once; the connection task sends it and closes. The code alone (2 bytes, not
    /// the 24 of a [`DisconnectCode`]): every outbox pays for this field, and with it the
    /// outbox fits a 128-byte allocation (see [`Outbox::pending_disconnect`]).
    disconnect: Option<NonZeroU16>,
    /// The byte limit of the queue (see [`Outbox::new`]); here rather than beside the
    /// lock, where it would take a word of its own.
    max_bytes: u32,
    /// The connection task, waiting for frames (a waker slot instead of a `Notify`: the
    /// task polls it directly and keeps no waiter future in its state).
    waker: Option<Waker>,
    /// The socket, while frames may be written to it directly (see [`Outbox::attach`]).
    direct: Option<Arc<dyn DirectWrite>>,
    /// Set once the WebSocket close frame is queued: no data frame may follow it.
    sealed: bool,
    /// Bytes written directly since the last [`Outbox::take_direct_bytes`].
    direct_bytes: u64,
}

impl State {
    /// Takes the waiting task's waker, to wake it after the lock is released.
    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

/// How [`Outbox::push_as`] treats a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// Drop the frame when the queue is full, instead of cutting the connection.
    pub lossy: bool,
    /// May be written straight into the socket when nothing is queued.
    pub direct: bool,
}

impl Default for Push {
    /// Not lossy; direct.
    fn default() -> Self {
        Push {
            lossy: false,
            direct: true,
        }
    }
}

/// Whether a push was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The frame is queued.
    Queued,
    /// The queue was full: the outbox is now marked for a slow-consumer disconnect.
    Overflow,
    /// The frame went straight into the socket (it was wholly written).
    Written,
    /// The outbox is already closing; the frame was dropped.
    Closed,
    /// The queue was full and the frame was dropped (lossy subscriptions).
    Dropped,
}

/// Wakes a task taken from the state, outside the lock.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A disconnect request as the outbox keeps it: its code (a close code is never 0; a
/// zero code is kept as an internal error).
fn stored(disconnect: DisconnectCode) -> Option<NonZeroU16> {
    NonZeroU16::new(disconnect.code).or(NonZeroU16::new(codes::INTERNAL_ERROR.code))
}

impl Outbox {
    /// An empty outbox holding at most `max_bytes` of queued frames.
    /// Limits over 4 GiB are taken as 4 GiB.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
                ..State::default()
            }),
        }
    }

    /// Queues a frame, or writes it straight into the socket when nothing waits before it.
    /// Never blocks on the socket. A frame that does not fit marks the outbox for a
    /// slow-consumer disconnect.
    pub fn push(&self, frame: Bytes) -> PushOutcome {
        self.push_as(frame, Push::default())
    }

    /// Queues a frame the way `how` says: `lossy` (a lossy subscription's frame is dropped
    /// when the queue is full instead of cutting the connection, so the client skips ahead
    /// to newer publications once it catches up) and `direct` (whether it may be written
    /// straight into the socket; otherwise the connection's task writes it).
    pub fn push_as(&self, frame: Bytes, how: Push) -> PushOutcome {
        self.enqueue(frame, how.lossy, how.direct)
    }

    fn enqueue(&self, frame: Bytes, lossy: bool, direct: bool) -> PushOutcome {
        if frame.is_empty() {
            // An empty frame would look like pending output that never drains.
            return PushOutcome::Queued;
        }
        let mut state = self.state.lock();
        if state.disconnect.is_some() || state.sealed {
            return PushOutcome::Closed;
        }
        let mut frame = frame;
        if direct
            && state.frames.is_empty()
            && let Some(socket) = &state.direct
        {
            // Nothing waits before it, so order holds; the lock keeps the connection's
            // task from writing meanwhile.
            match socket.try_write(&frame) {
                Ok(n) if n >= frame.len() => {
                    state.direct_bytes += n as u64;
                    if state.direct_bytes >= DIRECT_REPORT_BYTES {
                        // Let the task report them (metrics) even if it has nothing to do.
                        let waker = state.wake();
                        drop(state);
                        wake(waker);
                    }
                    return PushOutcome::Written;
                }
                Ok(n) => {
                    state.direct_bytes += n as u64;
                    frame.advance(n);
                }
                // WouldBlock, or an error the task will meet on its own write and close
                // the connection for: queue it like any frame.
                Err(_) => {}
            }
        }
        if state.bytes + frame.len() > state.max_bytes as usize {
            if lossy {
                return PushOutcome::Dropped;
            }
            state.disconnect = stored(codes::SLOW);
            let waker = state.wake();
            drop(state);
            wake(waker);
            return PushOutcome::Overflow;
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        let waker = state.wake();
        drop(state);
        wake(waker);
        PushOutcome::Queued
    }

    /// Queues a frame of the connection's own (pong, close, disconnect push): never
    /// refused, because the WebSocket layer and the close handshake depend on it. Such
    /// frames are small and at most a few per connection.
    pub fn push_control(&self, frame: Bytes) {
        if frame.is_empty() {
            // An empty frame would look like pending output that never drains.
            return;
        }
        let mut state = self.state.lock();
        state.bytes += frame.len();
        state.frames.push_back(frame);
        let waker = state.wake();
        drop(state);
        wake(waker);
    }

    /// Queues a pong (never refused, like [`Outbox::push_control`]). When
    /// [`MAX_PENDING_PONGS`] pongs are waiting already, the newest waiting pong is
    /// replaced by this one instead (it answers the newer ping and leaves no later than
    /// the pong it replaces). Returns whether it replaced one.
    pub fn push_pong(&self, frame: Bytes) -> bool {
        let mut state = self.state.lock();
        if state.pongs >= MAX_PENDING_PONGS {
            let index = state.newest_pong.wrapping_sub(state.head) as usize;
            // Never the front frame: it may be written partly already.
            if index > 0
                && let Some(slot) = state.frames.get_mut(index)
            {
                let new_len = frame.len();
                let old = std::mem::replace(slot, frame);
                state.bytes = state.bytes - old.len() + new_len;
                return true;
            }
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        let number = state
            .head
            .wrapping_add(u32::try_from(state.frames.len() - 1).unwrap_or(u32::MAX));
        state.newest_pong = number;
        state.pongs = state.pongs.saturating_add(1);
        let waker = state.wake();
        drop(state);
        wake(waker);
        false
    }

    /// Lets pushes write to `socket` directly while nothing is queued. The caller keeps
    /// the socket open until [`Outbox::detach`] returns.
    pub fn attach(&self, socket: Arc<dyn DirectWrite>) {
        let mut state = self.state.lock();
        if !state.sealed {
            state.direct = Some(socket);
        }
    }

    /// Stops direct writes and gives the socket back; once this returns, no push writes
    /// to it any more.
    pub fn detach(&self) -> Option<Arc<dyn DirectWrite>> {
        self.state.lock().direct.take()
    }

    /// Queues the connection's WebSocket close frame: after it nothing but control
    /// frames of the closing handshake is queued (data pushes are dropped as
    /// [`PushOutcome::Closed`]) and nothing is written directly.
    pub fn push_close(&self, frame: Bytes) {
        {
            let mut state = self.state.lock();
            state.sealed = true;
            state.direct = None;
        }
        self.push_control(frame);
    }

    /// Bytes written directly to the socket since the last call (for metrics: the
    /// connection's task reports them when it runs, at the latest once
    /// [`DIRECT_REPORT_BYTES`] accumulated).
    pub fn take_direct_bytes(&self) -> u64 {
        std::mem::take(&mut self.state.lock().direct_bytes)
    }

    /// Asks the connection to send `disconnect` and close. The first request wins.
    pub fn disconnect(&self, disconnect: DisconnectCode) {
        let mut state = self.state.lock();
        if state.disconnect.is_none() {
            state.disconnect = stored(disconnect);
        }
        let waker = state.wake();
        drop(state);
        wake(waker);
    }

    /// The pending disconnect request, if any. Its reason and reconnect advice are the
    /// ones [`codes::DISCONNECTS`] gives its code (every disconnect code the server
    /// sends is there); a code that is not comes back with a generic reason.
    pub fn pending_disconnect(&self) -> Option<DisconnectCode> {
        let code = self.state.lock().disconnect?.get();
        Some(DisconnectCode::from_code(code).unwrap_or(DisconnectCode {
            code,
            reason: "disconnect",
            reconnect: true,
        }))
    }

    /// Ready when there is something to write or a disconnect request; otherwise
    /// registers the task to be woken by the next push or disconnect. One task (the
    /// connection's) polls an outbox.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if !state.frames.is_empty() || state.disconnect.is_some() {
            return Poll::Ready(());
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Registers the task to be woken by [`Outbox::wake_task`] (and by pushes), whatever
    /// the queue holds: a task waiting on its socket's write readiness still needs its
    /// timers.
    pub fn register_waker(&self, cx: &mut Context<'_>) {
        let mut state = self.state.lock();
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// Wakes the connection's task (its timer is due), if it registered a waker.
    pub fn wake_task(&self) {
        let waker = self.state.lock().wake();
        wake(waker);
    }

    /// Waits until there is something to write or a disconnect request.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Whether frames are waiting.
    pub fn has_frames(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Offers up to `max` queued frames to `write` (which returns how many bytes it wrote,
    /// or an error) and removes what was written. Returns the bytes written.
    pub fn write_with<E>(
        &self,
        max: usize,
        write: impl FnOnce(&[std::io::IoSlice<'_>]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let mut state = self.state.lock();
        if state.frames.is_empty() {
            return Ok(0);
        }
        let mut slices = [std::io::IoSlice::new(&[]); MAX_WRITE_FRAMES];
        let n = state
            .frames
            .slices(&mut slices[..max.clamp(1, MAX_WRITE_FRAMES)]);
        let written = write(&slices[..n])?;
        let mut left = written;
        state.bytes -= written;
        while left > 0 {
            let Some(front) = state.frames.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                state.frames.pop_front();
                if state.pongs > 0 && state.head == state.newest_pong {
                    // The newest pong left, and every older one before it.
                    state.pongs = 0;
                }
                state.head = state.head.wrapping_add(1);
            } else {
                front.advance(left);
                left = 0;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection has one `Arc<Outbox>`: 16 bytes of counts and the outbox,
    /// served from jemalloc's 128-byte class while the outbox stays within 112 bytes (it
    /// was 144, in the 160-byte class).
    #[test]
    fn an_outbox_fits_the_128_byte_class() {
        let size = std::mem::size_of::<Outbox>();
        assert!(size <= 112, "Outbox is {size} bytes");
    }

    #[test]
    fn a_disconnect_keeps_its_code_reason_and_advice() {
        let outbox = Outbox::new(1024);
        outbox.disconnect(codes::EXPIRED);
        outbox.disconnect(codes::SLOW);
        assert_eq!(
            outbox.pending_disconnect(),
            Some(codes::EXPIRED),
            "the first wins"
        );
    }

    fn drain(outbox: &Outbox, budget: usize) -> Vec<u8> {
        let mut out = Vec::new();
        outbox
            .write_with::<()>(16, |slices| {
                let mut n = 0;
                for s in slices {
                    let take = (budget - n).min(s.len());
                    out.extend_from_slice(&s[..take]);
                    n += take;
                    if n == budget {
                        break;
                    }
                }
                Ok(n)
            })
            .expect("write");
        out
    }

    #[test]
    fn partial_writes_keep_order() {
        let outbox = Outbox::new(100);
        assert_eq!(
            outbox.push(Bytes::from_static(b"hello")),
            PushOutcome::Queued
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"world")),
            PushOutcome::Queued
        );
        assert_eq!(outbox.queued_bytes(), 10);
        assert_eq!(drain(&outbox, 7), b"hellowo");
        assert_eq!(outbox.queued_bytes(), 3);
        assert_eq!(drain(&outbox, 100), b"rld");
        assert!(!outbox.has_frames());
    }

    /// A socket that takes up to `room` bytes, then would block.
    #[derive(Debug, Default)]
    struct FakeSocket {
        written: Mutex<Vec<u8>>,
        room: Mutex<usize>,
    }

    impl DirectWrite for FakeSocket {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock();
            if *room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.written.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    /// An outbox of 100 bytes attached to a socket with `room` bytes of room.
    fn attached(room: usize) -> (Outbox, Arc<FakeSocket>) {
        let outbox = Outbox::new(100);
        let socket = Arc::new(FakeSocket::default());
        *socket.room.lock() = room;
        outbox.attach(socket.clone());
        (outbox, socket)
    }

    #[test]
    fn pushes_to_an_empty_queue_go_straight_into_the_socket() {
        let (outbox, socket) = attached(8);
        assert_eq!(
            outbox.push(Bytes::from_static(b"one")),
            PushOutcome::Written
        );
        // The socket's room runs out: the next frame waits in the queue, and so does
        // what follows it even when the socket has room again (order).
        assert_eq!(
            outbox.push(Bytes::from_static(b"two-2")),
            PushOutcome::Written
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"three")),
            PushOutcome::Queued
        );
        assert_eq!(socket.written.lock().as_slice(), b"onetwo-2");
        *socket.room.lock() = 100;
        assert_eq!(
            outbox.push(Bytes::from_static(b"four")),
            PushOutcome::Queued
        );
        assert_eq!(drain(&outbox, 100), b"threefour");
        assert_eq!(outbox.take_direct_bytes(), 8);
        assert_eq!(outbox.take_direct_bytes(), 0);
        // Empty again: direct writes resume.
        assert_eq!(
            outbox.push(Bytes::from_static(b"five")),
            PushOutcome::Written
        );
        // Detached: nothing reaches the socket any more.
        assert!(outbox.detach().is_some());
        assert_eq!(outbox.push(Bytes::from_static(b"six")), PushOutcome::Queued);
        assert_eq!(socket.written.lock().as_slice(), b"onetwo-2five");
    }

    #[test]
    fn a_partial_direct_write_keeps_the_rest_of_the_frame_first() {
        let (outbox, _socket) = attached(2);
        assert_eq!(
            outbox.push(Bytes::from_static(b"hello")),
            PushOutcome::Queued
        );
        assert_eq!(outbox.queued_bytes(), 3);
        assert_eq!(
            outbox.push(Bytes::from_static(b"world")),
            PushOutcome::Queued
        );
        assert_eq!(drain(&outbox, 100), b"lloworld");
        assert_eq!(outbox.take_direct_bytes(), 2);
    }

    #[test]
    fn nothing_follows_the_close_frame() {
        let (outbox, socket) = attached(100);
        outbox.push_close(Bytes::from_static(b"CLOSE"));
        assert_eq!(
            outbox.push(Bytes::from_static(b"data")),
            PushOutcome::Closed
        );
        assert_eq!(
            outbox.push_as(
                Bytes::from_static(b"data"),
                Push {
                    lossy: true,
                    direct: true
                }
            ),
            PushOutcome::Closed
        );
        assert!(
            socket.written.lock().is_empty(),
            "the close frame is queued, not direct"
        );
        assert_eq!(drain(&outbox, 100), b"CLOSE");
        // Attaching after the close does not reopen direct writes.
        outbox.attach(socket.clone());
        assert!(outbox.detach().is_none());
    }

    #[test]
    fn overflow_marks_slow_consumer() {
        let outbox = Outbox::new(8);
        assert_eq!(
            outbox.push(Bytes::from_static(b"12345")),
            PushOutcome::Queued
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"6789")),
            PushOutcome::Overflow
        );
        assert_eq!(outbox.pending_disconnect(), Some(codes::SLOW));
        assert_eq!(outbox.push(Bytes::from_static(b"x")), PushOutcome::Closed);
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.ready().await })
        };
        outbox.push(Bytes::from_static(b"x"));
        waiter.await.expect("woken");
    }

    #[test]
    fn pongs_coalesce_beyond_the_pending_limit() {
        let outbox = Outbox::new(100);
        let pong = |n: u8| Bytes::from(vec![0x8A, 1, n]);
        // A data frame first, partly written: it must never be replaced.
        outbox.push(Bytes::from_static(b"data"));
        assert_eq!(drain(&outbox, 2), b"da");
        let mut replaced = 0;
        for n in 0..=255u8 {
            if outbox.push_pong(pong(n)) {
                replaced += 1;
            }
        }
        assert_eq!(replaced, 256 - usize::from(MAX_PENDING_PONGS));
        let bound = 2 + 3 * usize::from(MAX_PENDING_PONGS);
        assert_eq!(outbox.queued_bytes(), bound, "bounded, however many pings");
        let mut out = Vec::new();
        while outbox.has_frames() {
            out.extend(drain(&outbox, 10_000));
        }
        assert_eq!(&out[..2], b"ta");
        // The first 15 pongs in order, then the newest in the 16th place.
        let sent: Vec<u8> = out[2..].chunks(3).map(|c| c[2]).collect();
        let mut expected: Vec<u8> = (0..MAX_PENDING_PONGS - 1).collect();
        expected.push(255);
        assert_eq!(sent, expected);
        // Once they are written, the next pings are answered one by one again.
        for n in 0..3 {
            assert!(!outbox.push_pong(pong(n)));
        }
        assert_eq!(outbox.queued_bytes(), 9);
    }

    #[test]
    fn pong_count_follows_partial_writes() {
        let outbox = Outbox::new(100);
        let pong = |n: u8| Bytes::from(vec![0x8A, 1, n]);
        for n in 0..MAX_PENDING_PONGS {
            assert!(!outbox.push_pong(pong(n)));
        }
        // Write all but the last byte: the newest pong is the (partly written) front.
        let total = outbox.queued_bytes();
        drain(&outbox, total - 1);
        // It is not replaced; the new pong queues behind it.
        assert!(!outbox.push_pong(pong(100)));
        assert_eq!(
            drain(&outbox, 100),
            vec![MAX_PENDING_PONGS - 1, 0x8A, 1, 100]
        );
        assert!(!outbox.has_frames());
    }
}
