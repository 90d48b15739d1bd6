//! One task per accepted socket. It reads the first request head itself: a WebSocket
//! upgrade is answered here (101 or a refusal, written as plain bytes) and the socket goes
//! on to the connection driver in the same task, with no HTTP machinery in between; a
//! plain `POST /api/publish` is served here too, by the lean lane (`crate::lane`); any
//! other request (the rest of the HTTP API, health, metrics, 404s) goes to hyper with the
//! bytes read so far replayed first.
//!
//! Why: hyper's connection (8 KiB read and write buffers, the router, a `HeaderMap`)
//! and a second task per upgrade cost connect rate and memory during reconnect storms,
//! and WebSocket upgrades are nearly all the connections a node accepts.

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Version};
use bytes::{Buf, BufMut, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use starling_websocket::{Accepted, HeaderLines};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::app::AppState;
use crate::connection::{self, Negotiated};
use crate::lane::{self, LeanHead};
use crate::upgrade::{self, Refusal, Slots};

/// The HTTP service every non-upgrade request goes to.
pub type HttpService = TowerToHyperService<Router>;

/// The longest request head read here; a longer upgrade request gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header lines parsed here; a request with more goes to hyper (which allows
/// 100 and answers for itself).
const MAX_HEADERS: usize = 64;
/// The head buffer's first size: a browser's upgrade request fits (without big cookies).
const FIRST_READ: usize = 1024;
/// How long a refused client may take to close after our answer, and how much of what it
/// still sends is read meanwhile (see [`close_after_refusal`]).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 64 * 1024;

/// Serves one accepted socket (from `ip`) to its end.
pub fn serve(stream: TcpStream, ip: IpAddr, state: Arc<AppState>, http: HttpService) -> SocketTask {
    SocketTask::Handshake(Box::pin(handshake(stream, ip, state, http)))
}

/// The first request, to its end unless it is an upgrade: then the connection, ready
/// to run.
async fn handshake(
    stream: TcpStream,
    ip: IpAddr,
    state: Arc<AppState>,
    http: HttpService,
) -> Option<connection::ConnectionTask> {
    match first_request(&stream, ip, &state).await {
        First::Upgraded(u) => Some(connection::run(
            stream,
            u.leftover,
            u.negotiated,
            state,
            u.slots,
        )),
        other => {
            not_upgraded(other, stream, &state, http).await;
            None
        }
    }
}

/// The task of one accepted socket. The handshake (and hyper, for a socket that is not
/// a WebSocket) runs boxed, and is freed when the connection starts: an idle
/// connection's task then holds only the connection (see `connection::run`), and tokio
/// sizes its cell by the largest state, so a handshake inline would grow every one.
#[expect(
    clippy::large_enum_variant,
    reason = "the connection is the state that lasts; boxing it would add an allocation per connection"
)]
pub enum SocketTask {
    /// Reading and answering the first request.
    Handshake(Pin<Box<dyn Future<Output = Option<connection::ConnectionTask>> + Send>>),
    /// A WebSocket connection.
    Connection(connection::ConnectionTask),
    /// Over.
    Done,
}

impl Future for SocketTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every variant is `Unpin` (the handshake is boxed).
        let this = self.get_mut();
        loop {
            match this {
                SocketTask::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(connection)) => *this = SocketTask::Connection(connection),
                    Poll::Ready(None) => {
                        *this = SocketTask::Done;
                        return Poll::Ready(());
                    }
                },
                SocketTask::Connection(connection) => {
                    let done = Pin::new(connection).poll(cx);
                    if done.is_ready() {
                        // The connection's cleanup (its driver's `Drop`) runs now.
                        *this = SocketTask::Done;
                    }
                    return done;
                }
                SocketTask::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A socket whose first request is not a successful upgrade: the lean lane's (then
/// hyper's, if it sends something else), hyper's, or answered and closed.
async fn not_upgraded(first: First, stream: TcpStream, state: &Arc<AppState>, http: HttpService) {
    match first {
        // Boxed: inline, the lane (larger than hyper's connection) would grow the boxed
        // handshake that every socket, WebSocket or not, allocates.
        First::Lean(buf, head) => Box::pin(lean_then_http(stream, buf, head, state, http)).await,
        First::Http(prefix) => {
            serve_http(stream, prefix, http, handshake_timeout(state)).await;
        }
        First::Refused(refusal) => close_after_refusal(stream, refusal).await,
        First::Upgraded(_) | First::Gone => {}
    }
}

/// A socket for the lean lane, then hyper's if it sends something else.
async fn lean_then_http(
    stream: TcpStream,
    buf: Vec<u8>,
    head: LeanHead,
    state: &Arc<AppState>,
    http: HttpService,
) {
    let timeout = handshake_timeout(state);
    if let Some((stream, prefix)) = lane::serve(stream, buf, head, state, timeout).await {
        serve_http(stream, prefix, http, timeout).await;
    }
}

/// An upgraded socket's state, for the connection driver.
pub(crate) struct Upgraded {
    /// Bytes that came after the request head (frames sent without waiting for 101).
    leftover: Bytes,
    negotiated: Negotiated,
    slots: Slots,
}

/// What the first request of a socket turned out to be.
pub(crate) enum First {
    /// A WebSocket upgrade, answered with 101: the connection driver's.
    Upgraded(Upgraded),
    /// A publish for the lean lane: the bytes read so far, the head first.
    Lean(Vec<u8>, LeanHead),
    /// Anything else: hyper's, with the bytes read so far.
    Http(Bytes),
    /// An upgrade to refuse with this answer.
    Refused(Box<Refusal>),
    /// The client went away, sent nothing in time, or the 101 could not be written.
    Gone,
}

fn handshake_timeout(state: &AppState) -> Duration {
    Duration::from_secs(state.config.websocket.handshake_timeout_secs)
}

/// Reads the first request head (within the handshake timeout) and serves a WebSocket
/// upgrade up to its 101. The socket's task is this future until the connection starts,
/// so little lives across its awaits: the head becomes the 101's bytes before the wait
/// for admission (see [`prepare`]).
pub(crate) async fn first_request(stream: &TcpStream, ip: IpAddr, state: &Arc<AppState>) -> First {
    // Allocated at the first byte (see `read_head`): a socket that sends nothing costs no
    // buffer while it waits out the timeout.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        handshake_timeout(state),
        read_head(stream, &mut buf, state, true),
    )
    .await;
    let (leftover, negotiated) = match prepare(read, &mut buf, ip, state) {
        Ok(prepared) => prepared,
        Err(first) => return first,
    };
    let slots = match upgrade::admit(state, Some(ip)).await {
        Ok(slots) => slots,
        Err(refusal) => return First::Refused(refusal),
    };
    if let Err(e) = write_all(stream, &buf).await {
        debug!(%ip, "writing 101: {e}");
        return First::Gone;
    }
    First::Upgraded(Upgraded {
        leftover,
        negotiated,
        slots,
    })
}

/// What the head read gives: for an upgrade that passed the checks, the bytes after the
/// head and what the connection negotiated, with the 101 written into `buf` in place of
/// the head; otherwise where the socket goes.
fn prepare(
    read: Result<io::Result<Head>, tokio::time::error::Elapsed>,
    buf: &mut Vec<u8>,
    ip: IpAddr,
    state: &AppState,
) -> Result<(Bytes, Negotiated), First> {
    let head = match read {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            debug!(%ip, "no request head: {e}");
            return Err(First::Gone);
        }
        Err(_) => {
            debug!(%ip, "request head timeout");
            return Err(First::Gone);
        }
    };
    let (len, checked) = match head {
        Head::Upgrade { len, checked } => (len, checked),
        Head::Publish(head) => return Err(First::Lean(std::mem::take(buf), head)),
        Head::Http => return Err(First::Http(Bytes::from(std::mem::take(buf)))),
        Head::TooLarge => {
            return Err(First::Refused(upgrade::refuse(
                state,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                HeaderMap::new(),
                format!("request head over {MAX_HEAD} bytes"),
            )));
        }
        // `read_head` returns only decisions.
        Head::Incomplete => return Err(First::Gone),
    };
    let (accepted, negotiated) = checked.map_err(First::Refused)?;
    // Copied, so that the head's buffer can go with the handshake.
    let leftover = match buf.get(len..) {
        Some(rest) if !rest.is_empty() => Bytes::copy_from_slice(rest),
        _ => Bytes::new(),
    };
    buf.clear();
    accepted.write_response(buf);
    Ok((leftover, negotiated))
}

/// Writes all of `bytes` by readiness (the socket is only borrowed).
pub(crate) async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // `poll_fn` over the readiness: no waiter future kept in the task.
                std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the bytes read so far are.
pub(crate) enum Head {
    /// More is needed.
    Incomplete,
    /// A `GET` of the WebSocket path, `len` bytes long, checked.
    Upgrade {
        len: usize,
        checked: Result<(Accepted, Negotiated), Box<Refusal>>,
    },
    /// A `GET` of the WebSocket path whose head does not fit in [`MAX_HEAD`].
    TooLarge,
    /// A publish the lean lane serves.
    Publish(LeanHead),
    /// Anything else (including what does not parse): hyper's.
    Http,
}

/// Reads by readiness into `buf` (grown as needed, at most [`MAX_HEAD`]) until the bytes
/// decide where the socket goes. Bytes already in `buf` (a request pipelined behind one
/// the lean lane served) are looked at first. WebSocket upgrades are told apart only when
/// `upgrades` is set (a socket's first request); later ones are hyper's.
pub(crate) async fn read_head(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    state: &AppState,
    upgrades: bool,
) -> io::Result<Head> {
    if buf.len() >= MAX_HEAD || has_empty_line(buf, 0) {
        match parse_head(buf, state, upgrades) {
            Head::Incomplete => {}
            decided => return Ok(decided),
        }
    }
    loop {
        // `poll_fn` over the readiness rather than `readable()`: no waiter future (about
        // 150 bytes) kept in the task.
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        let before = buf.len();
        if buf.len() == buf.capacity() {
            // The first size, then doubling, up to the limit.
            buf.reserve(
                buf.len()
                    .max(FIRST_READ)
                    .min(MAX_HEAD.saturating_sub(buf.len())),
            );
        }
        let room = MAX_HEAD.saturating_sub(buf.len());
        let free = room.min(buf.capacity().saturating_sub(buf.len()));
        match crate::readiness::try_read(stream, free, || {
            stream.try_read_buf(&mut (&mut *buf).limit(room))
        }) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        // Parse only once an empty line has arrived (or the buffer is full): a head sent
        // byte by byte is then parsed once, not once per byte.
        if buf.len() < MAX_HEAD && !has_empty_line(buf, before) {
            continue;
        }
        match parse_head(buf, state, upgrades) {
            Head::Incomplete => continue,
            decided => return Ok(decided),
        }
    }
}

/// Whether an empty line (`\n\n` or `\n\r\n`) ends in `buf[from..]`.
fn has_empty_line(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf.get(start..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
}

/// A parsed head's header lines, for the handshake checks.
struct Parsed<'h, 'b>(&'h [httparse::Header<'b>]);

impl HeaderLines for Parsed<'_, '_> {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let name = name.as_str();
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Whether a request target is `path` (the query aside).
pub(crate) fn is_path(target: Option<&str>, path: &str) -> bool {
    target.is_some_and(|t| t.split_once('?').map_or(t, |(p, _)| p) == path)
}

/// Whether a request target is the WebSocket path (the query aside).
fn is_websocket(target: Option<&str>) -> bool {
    is_path(target, upgrade::PATH)
}

/// Parses the head and, for an upgrade (when `upgrades`), runs the checks that need only
/// the request. Synchronous, so that the header array never lives in the task's future.
fn parse_head(buf: &[u8], state: &AppState, upgrades: bool) -> Head {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => {
            if let Some(head) = lane::recognise(&req, buf, len) {
                return Head::Publish(head);
            }
            if !upgrades || req.method != Some("GET") || !is_websocket(req.path) {
                return Head::Http;
            }
            let version = match req.version {
                Some(1) => Version::HTTP_11,
                _ => Version::HTTP_10,
            };
            Head::Upgrade {
                len,
                checked: upgrade::check(state, &Method::GET, version, &Parsed(req.headers)),
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Incomplete,
        Ok(httparse::Status::Partial) => {
            if upgrades && req.method == Some("GET") && is_websocket(req.path) {
                Head::TooLarge
            } else {
                Head::Http
            }
        }
        // hyper parses alike and answers 400 (or serves what has more than 64 lines).
        Err(_) => Head::Http,
    }
}

/// Answers a refused upgrade and closes. The socket is shut down for writing first and
/// what the client still sends is read (briefly, boundedly) before it is dropped: closing
/// with unread bytes would send a reset, which can destroy the answer before the client
/// reads it.
async fn close_after_refusal(mut stream: TcpStream, refusal: Box<Refusal>) {
    let bytes = refusal.to_bytes(&http_date(SystemTime::now()));
    if stream.write_all(&bytes).await.is_ok() {
        linger_close(stream).await;
    }
}

/// Closes a socket after an answer: shut down for writing, then what the client still
/// sends is read (briefly, boundedly) before the socket is dropped, so that unread bytes
/// do not turn into a reset that destroys the answer.
pub(crate) async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut unread = (&mut stream).take(LINGER_BYTES);
    let _ =
        tokio::time::timeout(LINGER, tokio::io::copy(&mut unread, &mut tokio::io::sink())).await;
}

/// Serves a socket with hyper, as every connection was served before the accept path.
async fn serve_http(stream: TcpStream, prefix: Bytes, http: HttpService, header_timeout: Duration) {
    // The address with its port (for the log) is asked here rather than carried by every
    // socket's task: most sockets are upgrades, which need only the IP.
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    // The peer's address travels with WebSocket upgrade requests, for the per-address
    // limits (only those: the extension costs an allocation).
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if req.uri().path() == upgrade::PATH {
                req.extensions_mut().insert(ConnectInfo(peer));
            }
            hyper::service::Service::call(&http, req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(Prefixed::new(prefix, stream)), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%peer, "http connection ended: {e}");
    }
}

/// A socket whose first bytes were already read: reads give those back first, then
/// what the socket brings. Writes go straight to the socket.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl Prefixed {
    /// `stream`, with `prefix` to be read before it.
    pub fn new(prefix: Bytes, stream: TcpStream) -> Self {
        Self { prefix, stream }
    }

    /// The socket and the bytes of the prefix not read yet.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // An empty slice still holds the whole buffer: let it go.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// `time` as an HTTP date (IMF-fixdate, RFC 9110 5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`; the refusals carry one, as hyper's answers did.
fn http_date(time: SystemTime) -> String {
    HttpDate(time).to_string()
}

/// The length of every IMF-fixdate of years 1000-9999.
const HTTP_DATE_LEN: usize = 29;

/// Appends the current time as an HTTP date to `out`. The text changes once a second, so
/// each thread keeps the last one it wrote (as hyper caches its `date` header): formatting
/// it for every answer was about 2 % of the server's CPU on a run of small publishes.
pub(crate) fn write_http_date_now(out: &mut Vec<u8>) {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(u64, [u8; HTTP_DATE_LEN])> =
            const { Cell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let (at, text) = last.get();
        if at == secs {
            out.extend_from_slice(&text);
            return;
        }
        let start = out.len();
        // Writing into a Vec cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("{}", HttpDate(now)));
        if let Ok(text) = <[u8; HTTP_DATE_LEN]>::try_from(&out[start..]) {
            last.set((secs, text));
        }
    });
}

/// A time shown as an HTTP date (see [`http_date`]); written straight into an answer's
/// buffer, with no string of its own.
pub(crate) struct HttpDate(pub(crate) SystemTime);

impl fmt::Display for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (days, rest) = (secs / 86_400, secs % 86_400);
        // Days to a civil date in the proleptic Gregorian calendar (H. Hinnant's
        // `civil_from_days`), shifted so that years start on 1 March.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        write!(
            f,
            "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
            DAYS[(days % 7) as usize],
            MONTHS[(month - 1) as usize],
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let at = |secs| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn the_cached_date_is_the_formatted_one() {
        let mut a = Vec::new();
        write_http_date_now(&mut a);
        let mut b = b"x".to_vec();
        write_http_date_now(&mut b);
        assert_eq!(a.len(), HTTP_DATE_LEN);
        assert_eq!(&b[..1], b"x");
        // Within the same second (or the next, if the clock ticked in between) and in
        // the format of `http_date`.
        let fresh = http_date(SystemTime::now());
        let cached = std::str::from_utf8(&b[1..]).expect("ascii");
        assert!(
            cached.ends_with(" GMT") && cached.len() == fresh.len(),
            "{cached}"
        );
    }

    #[test]
    fn empty_lines_are_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(has_empty_line(head, 0));
        // The last byte alone arrived: the line ends across the two reads.
        assert!(has_empty_line(head, head.len() - 1));
        assert!(has_empty_line(head, head.len() - 2));
        assert!(!has_empty_line(&head[..head.len() - 1], 0));
        assert!(has_empty_line(b"GET / HTTP/1.1\n\n", 15));
        assert!(!has_empty_line(b"GET / HTTP/1.1\r\nHost: h\r\n", 0));
    }

    #[test]
    fn websocket_targets() {
        assert!(is_websocket(Some("/connection/websocket")));
        assert!(is_websocket(Some("/connection/websocket?x=1")));
        assert!(!is_websocket(Some("/connection/websocket/")));
        assert!(!is_websocket(Some("/connection/websockets")));
        assert!(!is_websocket(Some("/api/publish")));
        assert!(!is_websocket(None));
    }

    /// A prefix is read first, in as many reads as the reader's buffer needs, then the
    /// socket; what is left of it comes back with the socket.
    #[tokio::test]
    async fn prefixed_replays_then_reads_the_socket() {
        let crate::testing::TcpPair {
            mut client, server, ..
        } = crate::testing::tcp_pair().await;
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut small = [0u8; 3];
        io.read_exact(&mut small).await.expect("read");
        assert_eq!(&small, b"hel");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"lo world");
        let (_, unread) = io.into_parts();
        assert!(unread.is_empty());
    }

    /// A socket's task holds the boxed handshake until the connection starts, then the
    /// connection (bounded in `connection::size_tests`): what the task adds to the
    /// connection must stay within a word, and the boxed handshake (freed once the
    /// connection starts) small. The whole boxed future also holds what a socket that is
    /// not a WebSocket runs next (hyper's connection, inline; the lean lane, boxed), so
    /// it is bounded too: every socket allocates it. (Measured in the test profile:
    /// first request 328 bytes; boxed handshake 1224, 1216 before the lean lane; task
    /// 264 = the connection's 264.)
    #[tokio::test]
    async fn socket_task_futures_stay_small() {
        let first = crate::testing::tcp_pair().await;
        let second = crate::testing::tcp_pair().await;
        let third = crate::testing::tcp_pair().await;
        let peer = first.peer;
        let mut config = crate::config::Config::default();
        config.storage.dir = String::new();
        let state = AppState::new(config, first.listen).expect("state");
        let handshake = first_request(&first.server, peer.ip(), &state);
        let handshake_size = std::mem::size_of_val(&handshake);
        let http = TowerToHyperService::new(crate::app::router(state.clone()));
        let task = serve(second.server, peer.ip(), state.clone(), http);
        let task_size = std::mem::size_of_val(&task);
        let SocketTask::Handshake(boxed) = &task else {
            panic!("a new socket's task starts with the handshake");
        };
        let boxed_size = std::mem::size_of_val(&**boxed);
        let negotiated = Negotiated {
            deflate: None,
            format: starling_core::FrameFormat(0),
        };
        let driver = connection::run(
            third.server,
            Bytes::new(),
            negotiated,
            state.clone(),
            Slots::none(state.clone()),
        );
        let driver_size = std::mem::size_of_val(&driver);
        eprintln!(
            "handshake future: {handshake_size} bytes; socket task: {task_size} bytes \
             (connection driver: {driver_size}); boxed handshake: {boxed_size} bytes"
        );
        assert!(
            handshake_size <= 352,
            "handshake future is {handshake_size} bytes"
        );
        assert!(
            boxed_size <= 1248,
            "the boxed handshake is {boxed_size} bytes"
        );
        assert!(
            task_size <= driver_size + 8,
            "socket task is {task_size} bytes, driver {driver_size}"
        );
    }
}
