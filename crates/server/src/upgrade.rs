//! `GET /connection/websocket`: validates the upgrade request, checks the origin, answers
//! 101 and hands the raw TCP stream to the connection driver.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use starling_protocol::Encoding;
use starling_websocket::{HandshakeConfig, accept};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::app::AppState;
use crate::connection::{self, Negotiated};
use crate::encoder::WireEncoder;
use crate::limits::{Admission, IpSlot, Limit};
use crate::metrics::Metrics;

/// The path of the WebSocket endpoint.
pub const PATH: &str = "/connection/websocket";

fn refuse(state: &AppState, status: StatusCode, headers: HeaderMap, reason: String) -> Response {
    Metrics::add(&state.metrics.upgrades_refused, 1);
    let mut response = (status, headers, reason + "\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A 503 with a jittered `Retry-After`, so refused clients do not return together.
fn unavailable(state: &AppState, reason: &str) -> Response {
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

/// A place among the node's connections (`server.max_connections`), given back when
/// dropped: when the connection ends, or when the upgrade does not happen after all.
struct Slot(Arc<AppState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.registry.release_slot();
    }
}

/// A place among one source address's connections (`server.max_connections_per_ip`),
/// given back when dropped, like [`Slot`].
struct AddressSlot(Arc<AppState>, IpSlot);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.0.limits.release(&self.1);
    }
}

/// Whether a browser page from `origin` may open a connection. Requests without an
/// `Origin` header come from non-browser clients, which cross-site hijacking cannot use.
fn origin_allowed(allowed: &[String], origin: Option<&HeaderValue>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// The upgrade handler.
pub async fn websocket(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    if state.draining.load(Ordering::SeqCst) {
        return refuse(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            "server is shutting down".into(),
        );
    }
    // The client's first supported subprotocol wins; offering only unknown ones is an error
    // (a browser would fail the connection anyway when none is echoed).
    let offered = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let offered = (!offered.trim().is_empty()).then_some(offered.as_str());
    let Some((encoding, token)) = Encoding::negotiate(offered) else {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            format!(
                "unsupported subprotocol; use one of: {}",
                starling_protocol::SUBPROTOCOLS.join(", ")
            ),
        );
    };
    let config = HandshakeConfig {
        deflate: state.config.websocket.compression,
        subprotocols: token.map(str::to_string).into_iter().collect(),
    };
    let accepted = match accept(&parts.method, parts.version, &parts.headers, &config) {
        Ok(accepted) => accepted,
        Err(e) => {
            debug!("bad upgrade request: {e}");
            return refuse(&state, e.status(), e.response_headers(), e.to_string());
        }
    };
    if !origin_allowed(
        &state.config.websocket.allowed_origins,
        parts.headers.get(header::ORIGIN),
    ) {
        return refuse(
            &state,
            StatusCode::FORBIDDEN,
            HeaderMap::new(),
            "origin not allowed (websocket.allowed_origins)".into(),
        );
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            "connection cannot be upgraded".into(),
        );
    };
    // The source address's share first, so that an address at its limit takes no place
    // among the node's connections, not even for a moment.
    let peer = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let address_slot = match peer {
        Some(ip) => match state.limits.acquire(ip) {
            Some(slot) => Some(AddressSlot(state.clone(), slot)),
            None => {
                state.metrics.refused(Limit::IpConnections);
                return unavailable(
                    &state,
                    "too many connections from this address (server.max_connections_per_ip)",
                );
            }
        },
        None => None,
    };
    // Reserve the place before pacing: a full node refuses at once, without spending an
    // admission token or making the client wait for nothing.
    if !state
        .registry
        .try_reserve_slot(state.config.server.max_connections)
    {
        state.metrics.refused(Limit::NodeConnections);
        return unavailable(&state, "connection limit reached (server.max_connections)");
    }
    let slot = Slot(state.clone());
    // Pacing: during a reconnect storm upgrades queue up here, at most the handshake
    // timeout, and leave at `server.admission_rate`; established connections are served
    // meanwhile because waiting here holds no lock and no worker.
    let max_wait = Duration::from_secs(state.config.websocket.handshake_timeout_secs);
    let admission = match &address_slot {
        Some(AddressSlot(_, ip)) => state.limits.admit_from(ip, max_wait),
        None => state.limits.admit(max_wait),
    };
    match admission {
        Admission::After(wait) if wait.is_zero() => {}
        Admission::After(wait) => {
            Metrics::add(&state.metrics.upgrades_paced, 1);
            tokio::time::sleep(wait).await;
            if state.draining.load(Ordering::SeqCst) {
                return refuse(
                    &state,
                    StatusCode::SERVICE_UNAVAILABLE,
                    HeaderMap::new(),
                    "server is shutting down".into(),
                );
            }
        }
        Admission::Refused => {
            state.metrics.refused(Limit::Admission);
            return unavailable(&state, "too many new connections (server.admission_rate)");
        }
        Admission::RefusedForAddress => {
            state.metrics.refused(Limit::IpAdmission);
            return unavailable(
                &state,
                "too many new connections from this address (server.admission_rate_per_ip)",
            );
        }
    }
    let negotiated = Negotiated {
        format: WireEncoder::format(encoding, accepted.deflate.as_ref()),
        deflate: accepted.deflate,
    };
    let task_state = state.clone();
    tokio::spawn(async move {
        // Held for the connection's life; freed on every way out of this task.
        let _slot = slot;
        let _address_slot = address_slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                debug!("upgrade failed: {e}");
                return;
            }
        };
        // Take the raw socket back from hyper: the driver reads by readiness into a
        // per-thread buffer instead of keeping hyper's per-connection buffers.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // `read_buf` is a slice of hyper's 8 KiB read buffer: holding it (even
                // empty) pins that buffer for the connection's whole life. Copy what it
                // holds (usually nothing) and let the buffer go now.
                let leftover = Bytes::copy_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                connection::run(parts.io.into_inner(), leftover, negotiated, task_state).await;
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
        let ok = HeaderValue::from_static("https://app.example.com");
        let bad = HeaderValue::from_static("https://evil.example.com");
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some(&ok)));
        assert!(!origin_allowed(&list, Some(&bad)));
        assert!(!origin_allowed(&[], Some(&ok)));
        assert!(origin_allowed(&["*".to_string()], Some(&bad)));
    }
}
