//! The lean lane: `POST /api/publish` served in the socket's task, without hyper or axum.
//!
//! The accept path (`crate::accept`) hands a socket here when its request head is a
//! publish the lane can take whole: HTTP/1.1, the exact path (the query aside), a
//! `Content-Length`, and none of `Transfer-Encoding`, `Expect` or `Upgrade`. The body is
//! read into the head's buffer, `api::publish_reply` (the same function axum's route
//! calls) decides the answer, and the answer is written with one write. After it the
//! socket stays the lane's while it sends such publishes; anything else goes to hyper
//! with every byte read so far replayed (`accept::Prefixed`).
//!
//! Why: profiles of publishing through the API showed a good part of the server's CPU in
//! per-request HTTP work rather than in the publish: hyper's connection machinery, axum's
//! routing, the `HeaderMap`, the body collection, and the allocations and copies of a
//! reply built as a `serde_json::Value`.

use std::io::{self, Write as _};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::accept::{self, Head, MAX_HEAD};
use crate::api::{self, ApiInput, BodyError, Reply};
use crate::app::AppState;

/// The path the lane serves.
const PATH: &str = "/api/publish";

/// A request head the lane takes (the head only: the body follows it in the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeanHead {
    /// The head's length in the buffer; the body starts there.
    len: usize,
    /// The body's length (`Content-Length`), as the client said.
    content_length: u64,
    /// The request asked for `Connection: close`.
    close: bool,
    /// Where the first `Authorization` header's value is in the buffer.
    authorization: Option<Range<usize>>,
}

impl LeanHead {
    /// Where the body ends in the buffer, unless it is longer than `limit`.
    fn body_end(&self, limit: usize) -> Option<usize> {
        let length = usize::try_from(self.content_length)
            .ok()
            .filter(|&n| n <= limit)?;
        self.len.checked_add(length)
    }
}

/// The lane's part of a parsed head of `len` bytes in `buf`: `Some` for a publish it can
/// serve. Anything doubtful (no or repeated `Content-Length`, a value that is not plain
/// digits, HTTP/1.0) is left to hyper, which answers it as it always did.
pub(crate) fn recognise(
    req: &httparse::Request<'_, '_>,
    buf: &[u8],
    len: usize,
) -> Option<LeanHead> {
    if req.method != Some("POST") || req.version != Some(1) || !accept::is_path(req.path, PATH) {
        return None;
    }
    let mut content_length = None;
    let mut close = false;
    let mut authorization = None;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return None;
            }
            content_length = Some(parse_length(header.value)?);
        } else if ["transfer-encoding", "expect", "upgrade"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if authorization.is_none() && name.eq_ignore_ascii_case("authorization") {
            authorization = Some(range_in(buf, header.value)?);
        }
    }
    Some(LeanHead {
        len,
        content_length: content_length?,
        close,
        authorization,
    })
}

/// A `Content-Length` value: ASCII digits only (what hyper accepts beyond that, such as a
/// repeated value in a list, goes to hyper).
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Where `part` (a slice of `buf`, as httparse gives header values) lies in `buf`: kept
/// as offsets, so that the buffer can grow while the body is read.
fn range_in(buf: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = part.as_ptr().addr().checked_sub(buf.as_ptr().addr())?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then_some(start..end)
}

/// A lean request as an [`ApiInput`]: the key from the parsed head, the body read from
/// the socket into the head's buffer.
struct LaneInput<'a> {
    stream: &'a TcpStream,
    buf: &'a mut Vec<u8>,
    head: &'a LeanHead,
    /// Reading the body failed (the client went away).
    failed: bool,
}

impl ApiInput for LaneInput<'_> {
    fn authorization(&self) -> Option<&[u8]> {
        self.buf.get(self.head.authorization.clone()?)
    }

    async fn body(&mut self, limit: usize) -> Result<&[u8], BodyError> {
        let end = self.head.body_end(limit).ok_or(BodyError)?;
        if fill(self.stream, self.buf, end).await.is_err() {
            self.failed = true;
            return Err(BodyError);
        }
        self.buf.get(self.head.len..end).ok_or(BodyError)
    }
}

/// Serves lean publishes on `stream`, the first one's head (`head`) at the start of
/// `buf`, until the client closes, sends something else, or stays idle too long.
/// Something else is returned with the bytes read so far, for hyper.
///
/// Idle keep-alive sockets: the next head must arrive whole within `timeout`, counted
/// from the end of the last answer. That is what hyper does with the same value
/// (`accept::serve_http` sets `header_read_timeout` to the handshake timeout, and hyper
/// starts that timer when it begins to read the next head), so a socket idles the same
/// time in either. The body has no timeout of its own, as in hyper.
///
/// One timer per socket, moved forward after each answer: a `tokio::time::timeout` per
/// request inserted a timer entry into the wheel and removed it again each time (under
/// the wheel's lock; 0.6 % of server CPU under `wrk`). Moving a registered deadline later
/// is an atomic store; the wheel re-files the entry only when the old deadline comes.
pub(crate) async fn serve(
    stream: TcpStream,
    mut buf: Vec<u8>,
    mut head: LeanHead,
    state: &Arc<AppState>,
    timeout: Duration,
) -> Option<(TcpStream, Bytes)> {
    let limit = api::body_limit(state);
    let idle = tokio::time::sleep(timeout);
    let mut idle = std::pin::pin!(idle);
    loop {
        let mut input = LaneInput {
            stream: &stream,
            buf: &mut buf,
            head: &head,
            failed: false,
        };
        let reply = api::publish_reply(state, &mut input).await;
        // A body over the limit is not read (413): the socket cannot go on.
        let end = head
            .body_end(limit)
            .filter(|_| !head.close && !input.failed);
        if write_reply(&stream, &mut buf, &reply, end.is_some())
            .await
            .is_err()
        {
            return None;
        }
        let Some(end) = end else {
            accept::linger_close(stream).await;
            return None;
        };
        // A body the answer did not need (refused before it was read: 401, 503) is
        // skipped, as hyper drains one.
        if fill(&stream, &mut buf, end).await.is_err() {
            return None;
        }
        buf.drain(..end.min(buf.len()));
        if buf.capacity() > MAX_HEAD && buf.len() <= MAX_HEAD {
            // A large body's room is not kept for the socket's life.
            buf.shrink_to(MAX_HEAD);
        }
        idle.as_mut().reset(tokio::time::Instant::now() + timeout);
        let next = tokio::select! {
            biased;
            next = accept::read_head(&stream, &mut buf, state, false) => next,
            // Idle too long: dropped, as hyper drops it.
            () = &mut idle => return None,
        };
        match next {
            Ok(Head::Publish(next)) => head = next,
            Ok(_) => return Some((stream, Bytes::from(buf))),
            // Closed or failed: dropped, as hyper drops it.
            Err(_) => return None,
        }
    }
}

/// Reads until `buf` holds `end` bytes (more, when the socket has them: the next
/// request's, kept).
async fn fill(stream: &TcpStream, buf: &mut Vec<u8>, end: usize) -> io::Result<()> {
    while let Some(missing) = end.checked_sub(buf.len()).filter(|&n| n > 0) {
        buf.reserve(missing);
        let free = buf.capacity().saturating_sub(buf.len());
        match crate::readiness::try_read(stream, free, || stream.try_read_buf(buf)) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // `poll_fn` over the readiness: no waiter future kept in the task.
                std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `reply` as axum's route would send it (the same status, headers and body), with
/// one write: the answer is put together at the end of `buf` (after the bytes of the
/// request) and taken off again.
async fn write_reply(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    reply: &Reply,
    keep_alive: bool,
) -> io::Result<()> {
    let start = buf.len();
    // The body first, for its length; the head is then rotated in front of it.
    reply.write_json(buf);
    let body_len = buf.len().saturating_sub(start);
    write_head(buf, reply, body_len, keep_alive);
    let result = match buf.get_mut(start..) {
        Some(answer) => {
            answer.rotate_left(body_len);
            accept::write_all(stream, answer).await
        }
        None => Ok(()),
    };
    buf.truncate(start);
    result
}

/// Appends the head of an answer with a JSON body of `body_len` bytes.
fn write_head(out: &mut Vec<u8>, reply: &Reply, body_len: usize, keep_alive: bool) {
    let status = reply.status();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    if let Some(secs) = reply.retry_after() {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    let _ = write!(out, "content-length: {body_len}\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    accept::write_http_date_now(out);
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `head` and asks the lane.
    fn lean(head: &str) -> Option<LeanHead> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head.as_bytes()) {
            Ok(httparse::Status::Complete(len)) => recognise(&req, head.as_bytes(), len),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publishes_with_a_length_are_lean() {
        let head = "POST /api/publish HTTP/1.1\r\nHost: h\r\nauthorization: apikey k\r\n\
                    Content-Length: 12\r\n\r\n";
        let found = lean(head).expect("lean");
        assert_eq!(found.len, head.len());
        assert_eq!(found.content_length, 12);
        assert!(!found.close);
        let range = found.authorization.expect("authorization");
        assert_eq!(&head[range], "apikey k");
        let with_query = "POST /api/publish?x=1 HTTP/1.1\r\ncontent-length: 0\r\n\
                          Connection: keep-alive, Close\r\n\r\n";
        let found = lean(with_query).expect("lean");
        assert!(found.close);
        assert_eq!(found.authorization, None);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "POST /api/publish HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST /api/publish HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST /api/publish/ HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /api/broadcast HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /api/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "PUT /api/publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(lean(head), None, "{head}");
        }
    }

    #[test]
    fn bodies_over_the_limit_have_no_end() {
        let head = LeanHead {
            len: 100,
            content_length: 10,
            close: false,
            authorization: None,
        };
        assert_eq!(head.body_end(10), Some(110));
        assert_eq!(head.body_end(9), None);
        let huge = LeanHead {
            content_length: u64::MAX,
            ..head
        };
        assert_eq!(huge.body_end(usize::MAX), None);
    }
}
