//! Operational endpoints: health, readiness, metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// `GET /health`: the process is up.
pub async fn health() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

/// `GET /ready`: 200 while the node accepts connections; 503 while it drains, while the
/// message log is failed (publications are not persisted then), and while the cluster
/// engine cannot reach its broker. With the archive on, the body says how it is doing
/// (`archive`: connected, lag, queued rows, last error), without changing the status.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            "{\"status\":\"draining\"}".to_string(),
        );
    }
    if let Some(failure) = state.journal.as_ref().and_then(|j| j.log().failure()) {
        let body = serde_json::json!({
            "status": "degraded",
            "reason": "message log failed: publications are delivered but not persisted",
            "error": failure.to_string(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string());
    }
    if let Some(Err(reason)) = state.engine.as_ref().map(|e| e.health()) {
        let body = serde_json::json!({
            "status": "degraded",
            "reason": "cluster broker unreachable: publications of the affected channels fail",
            "error": reason,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string());
    }
    // The archive lags or is cut off from PostgreSQL without making the node unready:
    // it keeps serving, and the log holds what the archive has not taken yet.
    match state.archive.get() {
        Some(archive) => {
            let body = serde_json::json!({"status": "ready", "archive": archive.health()});
            (StatusCode::OK, json, body.to_string())
        }
        None => (StatusCode::OK, json, "{\"status\":\"ready\"}".to_string()),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state),
    )
}

/// Any other path.
pub async fn not_found() -> Response {
    not_found_response()
}

/// The 404 answer of every unknown path.
pub fn not_found_response() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"error\":{\"code\":404,\"message\":\"not found\"}}",
    )
        .into_response()
}
