//! `GET /connection/websocket`: the checks of an upgrade request (draining, subprotocol,
//! RFC 6455 handshake, origin, connection limits and admission pacing), in one place for
//! both ways in:
//!
//! - the accept path (`crate::accept`), which reads the first request head of every
//!   socket itself, answers 101 (or the refusal) with its own bytes and runs the
//!   connection in the same task;
//! - the axum route [`websocket`], for an upgrade that comes after earlier requests on a
//!   keep-alive connection (rare), answered through hyper.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use starling_protocol::Encoding;
use starling_websocket::{Accepted, HandshakeConfig, HeaderLines, accept};
use tracing::{debug, warn};

use crate::accept::Prefixed;
use crate::app::AppState;
use crate::connection::{self, Negotiated};
use crate::encoder::WireEncoder;
use crate::limits::{Admission, IpSlot, Limit};
use crate::metrics::Metrics;

/// The path of the WebSocket endpoint.
pub const PATH: &str = "/connection/websocket";

/// What to answer an upgrade request that is refused (counted in
/// `starling_upgrades_refused_total` when made).
#[derive(Debug)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// Extra headers (`Retry-After`, `Sec-WebSocket-Version`).
    pub headers: HeaderMap,
    /// Why, for people: the body (a newline is added).
    pub reason: String,
}

impl Refusal {
    /// The answer as an axum response (the route).
    pub fn into_response(self) -> Response {
        let mut response = (self.status, self.headers, self.reason + "\n").into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    /// The answer as a complete HTTP/1.1 response that closes the connection (the
    /// accept path), dated `date` (an IMF-fixdate).
    pub fn to_bytes(&self, date: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(192 + self.reason.len());
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            self.status.as_str(),
            self.status.canonical_reason().unwrap_or(""),
            self.reason.len() + 1
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(
            out,
            "connection: close\r\ndate: {date}\r\n\r\n{}\n",
            self.reason
        );
        out
    }
}

/// A refusal, counted. Boxed: refusals are the rare way, and a `HeaderMap` would make
/// every result and future that may carry one large.
pub(crate) fn refuse(
    state: &AppState,
    status: StatusCode,
    headers: HeaderMap,
    reason: String,
) -> Box<Refusal> {
    Metrics::add(&state.metrics.upgrades_refused, 1);
    Box::new(Refusal {
        status,
        headers,
        reason,
    })
}

/// A 503 with a jittered `Retry-After`, so refused clients do not return together.
fn unavailable(state: &AppState, reason: &str) -> Box<Refusal> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.limits.retry_after_secs()),
    );
    refuse(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        headers,
        reason.into(),
    )
}

fn shutting_down(state: &AppState) -> Box<Refusal> {
    refuse(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        HeaderMap::new(),
        "server is shutting down".into(),
    )
}

/// A connection's places: among the node's connections (`server.max_connections`) and
/// among its source address's (`server.max_connections_per_ip`). Both are given back
/// when this is dropped: when the connection ends (the driver holds it to the end), or
/// when the upgrade does not happen after all.
pub struct Slots {
    state: Arc<AppState>,
    /// A place among the node's connections is held.
    node: bool,
    address: Option<IpSlot>,
}

impl Slots {
    /// Holds no place: for tests that run a connection without the upgrade.
    #[cfg(test)]
    pub(crate) fn none(state: Arc<AppState>) -> Self {
        Self {
            state,
            node: false,
            address: None,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(address) = &self.address {
            self.state.limits.release(address);
        }
        if self.node {
            self.state.registry.release_slot();
        }
    }
}

/// A header value as text, when it is visible ASCII (as `HeaderValue::to_str` wants).
fn visible(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Whether a browser page from `origin` may open a connection. Requests without an
/// `Origin` header come from non-browser clients, which cross-site hijacking cannot use.
fn origin_allowed(allowed: &[String], origin: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(origin) = visible(origin) else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// Every `Sec-WebSocket-Protocol` line (the text ones) joined with ",", `None` when that
/// is blank. Borrowed when there is one line, as from every browser.
fn offered_subprotocols<H: HeaderLines + ?Sized>(headers: &H) -> Option<Cow<'_, str>> {
    let mut offered: Option<Cow<'_, str>> = None;
    for value in headers
        .values(&header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(visible)
    {
        match &mut offered {
            None => offered = Some(Cow::Borrowed(value)),
            Some(joined) => {
                let joined = joined.to_mut();
                joined.push(',');
                joined.push_str(value);
            }
        }
    }
    offered.filter(|o| !o.trim().is_empty())
}

/// The checks that need only the request, in this order: draining, subprotocol, the
/// RFC 6455 handshake, origin. Gives what to answer with 101 and what the connection
/// negotiated.
pub fn check<H: HeaderLines + ?Sized>(
    state: &AppState,
    method: &Method,
    version: Version,
    headers: &H,
) -> Result<(Accepted, Negotiated), Box<Refusal>> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(shutting_down(state));
    }
    // The client's first supported subprotocol wins; offering only unknown ones is an error
    // (a browser would fail the connection anyway when none is echoed).
    let offered = offered_subprotocols(headers);
    let Some((encoding, token)) = Encoding::negotiate(offered.as_deref()) else {
        return Err(refuse(
            state,
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            format!(
                "unsupported subprotocol; use one of: {}",
                starling_protocol::SUBPROTOCOLS.join(", ")
            ),
        ));
    };
    let config = HandshakeConfig {
        deflate: state.config.websocket.compression,
        subprotocols: token.map(str::to_string).into_iter().collect(),
    };
    let accepted = match accept(method, version, headers, &config) {
        Ok(accepted) => accepted,
        Err(e) => {
            debug!("bad upgrade request: {e}");
            return Err(refuse(
                state,
                e.status(),
                e.response_headers(),
                e.to_string(),
            ));
        }
    };
    if !origin_allowed(
        &state.config.websocket.allowed_origins,
        headers.values(&header::ORIGIN).next(),
    ) {
        return Err(refuse(
            state,
            StatusCode::FORBIDDEN,
            HeaderMap::new(),
            "origin not allowed (websocket.allowed_origins)".into(),
        ));
    }
    let negotiated = Negotiated {
        format: WireEncoder::format(encoding, accepted.deflate.as_ref()),
        deflate: accepted.deflate,
    };
    Ok((accepted, negotiated))
}

/// Takes the connection's places and its turn: the source address's place, the node's,
/// then admission pacing (which may wait, at most the handshake timeout).
pub async fn admit(state: &Arc<AppState>, peer: Option<IpAddr>) -> Result<Slots, Box<Refusal>> {
    let mut slots = Slots {
        state: state.clone(),
        node: false,
        address: None,
    };
    // The source address's share first, so that an address at its limit takes no place
    // among the node's connections, not even for a moment.
    if let Some(ip) = peer {
        match state.limits.acquire(ip) {
            Some(slot) => slots.address = Some(slot),
            None => {
                state.metrics.refused(Limit::IpConnections);
                return Err(unavailable(
                    state,
                    "too many connections from this address (server.max_connections_per_ip)",
                ));
            }
        }
    }
    // Reserve the place before pacing: a full node refuses at once, without spending an
    // admission token or making the client wait for nothing.
    if !state
        .registry
        .try_reserve_slot(state.config.server.max_connections)
    {
        state.metrics.refused(Limit::NodeConnections);
        return Err(unavailable(
            state,
            "connection limit reached (server.max_connections)",
        ));
    }
    slots.node = true;
    // Pacing: during a reconnect storm upgrades queue up here, at most the handshake
    // timeout, and leave at `server.admission_rate`; established connections are served
    // meanwhile because waiting here holds no lock and no worker.
    let max_wait = Duration::from_secs(state.config.websocket.handshake_timeout_secs);
    let admission = match &slots.address {
        Some(ip) => state.limits.admit_from(ip, max_wait),
        None => state.limits.admit(max_wait),
    };
    match admission {
        Admission::After(wait) if wait.is_zero() => {}
        Admission::After(wait) => {
            Metrics::add(&state.metrics.upgrades_paced, 1);
            tokio::time::sleep(wait).await;
            if state.draining.load(Ordering::SeqCst) {
                return Err(shutting_down(state));
            }
        }
        Admission::Refused => {
            state.metrics.refused(Limit::Admission);
            return Err(unavailable(
                state,
                "too many new connections (server.admission_rate)",
            ));
        }
        Admission::RefusedForAddress => {
            state.metrics.refused(Limit::IpAdmission);
            return Err(unavailable(
                state,
                "too many new connections from this address (server.admission_rate_per_ip)",
            ));
        }
    }
    Ok(slots)
}

/// The upgrade route, for an upgrade after earlier requests on a keep-alive connection
/// (the first request of every connection is read by `crate::accept`).
pub async fn websocket(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let (accepted, negotiated) = match check(&state, &parts.method, parts.version, &parts.headers) {
        Ok(checked) => checked,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            "connection cannot be upgraded".into(),
        )
        .into_response();
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let slots = match admit(&state, peer).await {
        Ok(slots) => slots,
        Err(refusal) => return refusal.into_response(),
    };
    let task_state = state.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                debug!("upgrade failed: {e}");
                return;
            }
        };
        // Take the raw socket back from hyper: the driver reads by readiness into a
        // per-thread buffer instead of keeping hyper's per-connection buffers.
        match upgraded.downcast::<TokioIo<Prefixed>>() {
            Ok(parts) => {
                let (stream, unread) = parts.io.into_inner().into_parts();
                // `read_buf` is a slice of hyper's 8 KiB read buffer (and `unread` of the
                // first head's): holding either (even empty) pins that buffer for the
                // connection's whole life. Copy what they hold (usually nothing) and let
                // the buffers go now. hyper read `read_buf` before `unread` comes.
                let leftover = if unread.is_empty() {
                    Bytes::copy_from_slice(&parts.read_buf)
                } else {
                    Bytes::from([&parts.read_buf[..], &unread[..]].concat())
                };
                drop(parts.read_buf);
                drop(unread);
                connection::run(stream, leftover, negotiated, task_state, slots).await;
            }
            Err(_) => warn!("upgraded connection is not a TCP stream"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = accepted.response_headers();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let list = vec!["https://app.example.com".to_string()];
        let ok = b"https://app.example.com".as_slice();
        let bad = b"https://evil.example.com".as_slice();
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some(ok)));
        assert!(origin_allowed(&list, Some(b"HTTPS://APP.example.com")));
        assert!(!origin_allowed(&list, Some(bad)));
        assert!(!origin_allowed(&[], Some(ok)));
        assert!(origin_allowed(&["*".to_string()], Some(bad)));
        // Not text: refused, as `HeaderValue::to_str` failing was.
        assert!(!origin_allowed(&["*".to_string()], Some(b"https://\xffx")));
    }

    #[test]
    fn subprotocol_lines_are_joined() {
        let mut h = HeaderMap::new();
        assert_eq!(offered_subprotocols(&h), None);
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(" "),
        );
        assert_eq!(offered_subprotocols(&h), None);
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("a, b"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"\xff").expect("obs-text"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("c"),
        );
        assert_eq!(offered_subprotocols(&h).as_deref(), Some(" ,a, b,c"));
        let mut one = HeaderMap::new();
        one.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v1.json"),
        );
        assert!(matches!(
            offered_subprotocols(&one),
            Some(Cow::Borrowed("v1.json"))
        ));
    }

    #[test]
    fn refusal_bytes_are_a_closing_http_response() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(3u32));
        let refusal = Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers,
            reason: "full".into(),
        };
        let bytes = refusal.to_bytes("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            String::from_utf8(bytes).expect("text"),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 5\r\nretry-after: 3\r\nconnection: close\r\n\
             date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nfull\n"
        );
    }
}
