//! The HTTP API for application backends: JSON over `POST /api/<method>`, protected by
//! `Authorization: apikey <key>`. Documented in docs/API.md and by the OpenAPI document
//! served at `/api/openapi.json`.

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use starling_core::{ChannelError, Publish, PublishError};
use starling_protocol::codes;

use crate::app::AppState;
use crate::idempotency::{Claim, MAX_KEY_LEN, Recorded, Reservation};
use crate::limits::Limit;
use crate::metrics::{Metrics, Source};

/// The OpenAPI document, kept true by the `openapi` integration test.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Room for the JSON around `data` in a request body.
const ENVELOPE_ALLOWANCE: usize = 16 * 1024;

/// An API error: HTTP status plus the protocol error code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
    /// Seconds for a `Retry-After` header (temporary refusals).
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: codes::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After: 1` and code 116: the message log cannot take the
    /// publication now (counted).
    fn busy(state: &AppState, message: impl Into<String>) -> Self {
        state.metrics.error(codes::SERVER_BUSY.code);
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, codes::SERVER_BUSY, message)
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The protocol error code.
    pub fn code(&self) -> u32 {
        self.code
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    fn channel(err: ChannelError) -> Self {
        match err {
            ChannelError::Invalid => Self::bad_request("invalid channel name"),
            // Well formed, but names nothing that exists here: 404, not 400 (400 means the
            // request breaks the documented schema).
            ChannelError::UnknownNamespace(ns) => Self::new(
                StatusCode::NOT_FOUND,
                codes::UNKNOWN_CHANNEL,
                format!("unknown channel namespace `{ns}`"),
            ),
        }
    }

    /// A refused publication (counted): the channel limit, or the message log.
    fn publish(state: &AppState, err: PublishError) -> Self {
        match err {
            // The API's publications carry no per-connection creation budget, so only
            // the node's limit can refuse them; both read as the channel limit.
            PublishError::ChannelLimit | PublishError::CreationLimit => {
                state.metrics.refused(Limit::Channels);
                state.metrics.error(codes::CHANNEL_LIMIT.code);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::CHANNEL_LIMIT,
                    "channel limit reached (server.max_channels)",
                )
            }
            PublishError::Overloaded => Self::busy(
                state,
                "the message log cannot keep up; nothing was published: retry",
            ),
            PublishError::NotPersisted => Self::busy(
                state,
                "the message log is failed (see /ready); nothing was published: retry",
            ),
            PublishError::Unavailable(reason) => Self::busy(
                state,
                format!(
                    "the cluster broker cannot be reached ({reason}); nothing was published: retry"
                ),
            ),
            PublishError::IdempotencyConflict => {
                state.metrics.error(codes::IDEMPOTENCY_CONFLICT.code);
                Self::new(
                    StatusCode::CONFLICT,
                    codes::IDEMPOTENCY_CONFLICT,
                    "idempotency_key was used for a different request",
                )
            }
        }
    }

    /// The cluster broker could not answer (counted): temporary.
    fn unavailable(state: &AppState, reason: impl std::fmt::Display) -> Self {
        Self::busy(
            state,
            format!("the cluster broker cannot be reached ({reason}); retry"),
        )
    }
}

impl ApiError {
    /// The JSON body of this error.
    fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Reply::Failed(self).into_response()
    }
}

/// A publish's outcome, neutral as to the transport: axum's route renders it as a
/// `Response`, the accept path's lean lane (`crate::lane`) as bytes; both take the status,
/// `Retry-After` and the JSON body from here, so the two cannot drift apart.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Published: 200 `{"result": {...}}`.
    Published(PublishResult),
    /// The response recorded under the request's idempotency key, sent again.
    Replayed(Arc<Recorded>),
    /// Refused, or failed.
    Failed(ApiError),
}

/// Where a publication went: the `result` of a successful publish.
#[derive(Debug)]
pub(crate) struct PublishResult {
    offset: u64,
    epoch: Arc<str>,
    delivered: usize,
}

impl PublishResult {
    /// The whole response body as a `Value`, for the idempotency record. Built by hand:
    /// `json!` would copy the inner object through the serializer.
    fn body(&self) -> Value {
        let result = serde_json::Map::from_iter([
            ("offset".to_string(), Value::from(self.offset)),
            ("epoch".to_string(), Value::from(&*self.epoch)),
            ("delivered".to_string(), Value::from(self.delivered)),
        ]);
        Value::Object(serde_json::Map::from_iter([(
            "result".to_string(),
            Value::Object(result),
        )]))
    }
}

impl Reply {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Reply::Published(_) => StatusCode::OK,
            Reply::Replayed(recorded) => {
                StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK)
            }
            Reply::Failed(e) => e.status,
        }
    }

    /// Seconds for a `Retry-After` header, when the refusal is temporary.
    pub(crate) fn retry_after(&self) -> Option<u32> {
        match self {
            Reply::Failed(e) => e.retry_after,
            Reply::Published(_) | Reply::Replayed(_) => None,
        }
    }

    /// Appends the JSON body to `out`. A success is written without building a `Value`,
    /// in the bytes serde_json gives for [`PublishResult::body`] (keys sorted: its `Map`
    /// is a `BTreeMap` without the `preserve_order` feature), so that a replay of the
    /// recorded body is byte for byte the first answer (tested).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, nor can serializing a `Value` or a `str`.
        match self {
            Reply::Published(p) => {
                let _ = write!(out, r#"{{"result":{{"delivered":{},"epoch":"#, p.delivered);
                let _ = serde_json::to_writer(&mut *out, &*p.epoch);
                let _ = write!(out, r#","offset":{}}}}}"#, p.offset);
            }
            Reply::Replayed(recorded) => {
                let _ = serde_json::to_writer(out, &recorded.body);
            }
            Reply::Failed(e) => {
                let _ = serde_json::to_writer(out, &e.body());
            }
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(128);
        self.write_json(&mut body);
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The most body bytes an API request may send: the message limit plus the envelope.
pub(crate) fn body_limit(state: &AppState) -> usize {
    state
        .config
        .websocket
        .max_message_size
        .saturating_add(ENVELOPE_ALLOWANCE)
}

/// A body that could not be read whole: longer than the limit, or its sender failed.
#[derive(Debug)]
pub(crate) struct BodyError;

/// Where an API request's key and body come from: an axum request, or the accept path's
/// lean lane, which parsed the head itself and reads the body from the socket into its
/// own buffer. The body is read only after the key check (and the in-flight count), as
/// the handlers always did.
pub(crate) trait ApiInput: Send {
    /// The value of the request's first `Authorization` header.
    fn authorization(&self) -> Option<&[u8]>;

    /// The whole body, at most `limit` bytes, read now unless it was already.
    fn body(&mut self, limit: usize) -> impl Future<Output = Result<&[u8], BodyError>> + Send;
}

/// An axum request as an [`ApiInput`].
struct AxumInput {
    headers: HeaderMap,
    body: Option<Body>,
    read: Bytes,
}

impl From<Request> for AxumInput {
    fn from(req: Request) -> Self {
        let (parts, body) = req.into_parts();
        Self {
            headers: parts.headers,
            body: Some(body),
            read: Bytes::new(),
        }
    }
}

impl ApiInput for AxumInput {
    fn authorization(&self) -> Option<&[u8]> {
        self.headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
    }

    async fn body(&mut self, limit: usize) -> Result<&[u8], BodyError> {
        if let Some(body) = self.body.take() {
            self.read = axum::body::to_bytes(body, limit)
                .await
                .map_err(|_| BodyError)?;
        }
        Ok(&self.read)
    }
}

type ApiResult = Result<Response, ApiError>;

/// API requests in progress, so that a graceful shutdown can let them finish.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Set once shutdown waits for the count: only then is reaching zero worth a
    /// wake-up (the notify takes a lock, on every request otherwise).
    watched: std::sync::atomic::AtomicBool,
}

/// One request counted in [`InFlight`] until it is dropped (also when the caller hangs up
/// and the handler's future is dropped).
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        // SeqCst on both sides: either `wait_idle` sees the count at zero, or this sees
        // `watched` and wakes it.
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.watched.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts a new request, unless `draining` is set. The count is raised before the flag
    /// is read, and shutdown sets the flag before it waits for the count: a request is
    /// either refused or waited for, never lost in between.
    pub fn enter<'a>(
        &'a self,
        draining: &std::sync::atomic::AtomicBool,
    ) -> Option<InFlightGuard<'a>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self);
        (!draining.load(Ordering::SeqCst)).then_some(guard)
    }

    /// Requests in progress.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once no request is in progress.
    pub async fn wait_idle(&self) {
        loop {
            self.watched.store(true, Ordering::SeqCst);
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up between the two is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// `{"result": result}`, the body of every success.
fn result_body(result: Value) -> Value {
    Value::Object(serde_json::Map::from_iter([("result".to_string(), result)]))
}

fn ok(result: Value) -> ApiResult {
    Ok(axum::Json(result_body(result)).into_response())
}

/// Admits an API request: while the node drains (graceful shutdown) it is refused with
/// 503 and code 4000 (`shutdown`: retry on another node); otherwise checks the API key
/// and reads a JSON body of at most the message limit plus envelope. The guard counts
/// the request as in flight until the handler ends, and shutdown waits for it (up to
/// `server.shutdown_timeout_secs`). Done here rather than in a middleware layer, which
/// cost every request a boxed future and several allocations.
async fn authorized<'s, T: ApiBody>(
    state: &'s AppState,
    input: &mut impl ApiInput,
) -> Result<(InFlightGuard<'s>, T), ApiError> {
    let Some(guard) = state.api_in_flight.enter(&state.draining) else {
        let e = ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: u32::from(codes::SHUTDOWN.code),
            message: "the node is shutting down: retry on another node".into(),
            retry_after: None,
        };
        state.metrics.error(e.code);
        return Err(e);
    };
    Metrics::add(&state.metrics.api_requests, 1);
    let result = check_and_parse(state, input).await;
    if let Err(e) = &result {
        state.metrics.error(e.code);
    }
    result.map(|body| (guard, body))
}

async fn check_and_parse<T: ApiBody>(
    state: &AppState,
    input: &mut impl ApiInput,
) -> Result<T, ApiError> {
    check_key(state, input.authorization())?;
    let limit = body_limit(state);
    let body = input.body(limit).await.map_err(|BodyError| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::MESSAGE_TOO_LARGE,
            format!("request body over {limit} bytes"),
        )
    })?;
    parse_body(body)
}

/// A request body: its JSON shape (serde) plus the rules JSON cannot state by type alone
/// (channel name syntax, lengths), all as the OpenAPI document states them.
trait ApiBody: DeserializeOwned {
    /// Checks what deserializing did not.
    fn validate(&self) -> Result<(), ApiError>;
}

/// Parses and validates one request body; an empty body reads as `{}` (so the methods
/// without required fields, `channels` and `info`, need none).
fn parse_body<T: ApiBody>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    // serde's derived structs also accept a JSON array, matched by position
    // (`["chat:x", 1]` would publish): only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let parsed: T = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))?;
    parsed.validate()?;
    Ok(parsed)
}

/// Parses a request body for API method `method` (`publish`, `broadcast`, ...) exactly as
/// its handler does, without acting on it: the entry point of the `api_body` fuzz target.
/// An unknown method is an error like a bad body.
pub fn parse_request(method: &str, body: &[u8]) -> Result<(), ApiError> {
    match method {
        "publish" => parse_body::<PublishRequest>(body).map(drop),
        "broadcast" => parse_body::<BroadcastRequest>(body).map(drop),
        "history" => parse_body::<HistoryApiRequest>(body).map(drop),
        "channels" => parse_body::<ChannelsRequest>(body).map(drop),
        "presence" => parse_body::<PresenceRequest>(body).map(drop),
        "disconnect" => parse_body::<UserRequest>(body).map(drop),
        "unsubscribe" => parse_body::<UnsubscribeRequest>(body).map(drop),
        "user" => parse_body::<UserRequest>(body).map(drop),
        "info" => parse_body::<InfoRequest>(body).map(drop),
        "analytics" => parse_body::<AnalyticsRequest>(body).map(drop),
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            codes::METHOD_NOT_FOUND,
            format!("no API method `{other}`"),
        )),
    }
}

/// The one channel name check (shared with the WebSocket commands), for field `field`.
fn check_channel(field: &str, channel: &str) -> Result<(), ApiError> {
    starling_core::validate_channel_name(channel).map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: invalid channel name (1 to {} characters, no control or whitespace \
             characters, `ns:name` with neither part empty, not `#` alone)",
            starling_core::MAX_CHANNEL_LEN
        ))
    })
}

/// An idempotency key is 1 to [`MAX_KEY_LEN`] characters.
fn check_idempotency_key(key: Option<&str>) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let len = key.chars().count();
    if len == 0 || len > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "idempotency_key must be 1 to {MAX_KEY_LEN} characters, not {len}"
        )));
    }
    Ok(())
}

/// Checks the `Authorization` header's value (`apikey <key>`). A value with bytes other
/// than visible ASCII and tabs reads as no key, as `HeaderValue::to_str` made it read.
fn check_key(state: &AppState, authorization: Option<&[u8]>) -> Result<(), ApiError> {
    // A dashboard session stands in for the key (the dashboard acts through the API).
    if let (Some(admin), Some(value)) = (&state.admin, authorization)
        && admin.authorizes(value)
    {
        return Ok(());
    }
    let expected = state.config.api.key.as_bytes();
    if expected.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "the HTTP API is disabled: set api.key",
        ));
    }
    let given = authorization
        .filter(|v| v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .and_then(|v| v.strip_prefix(b"apikey "))
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    if !constant_time_eq(given, expected) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing or wrong API key (Authorization: apikey <key>)",
        ));
    }
    Ok(())
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn data_bytes(state: &AppState, data: &RawValue) -> Result<Bytes, ApiError> {
    let text = data.get();
    if text.len() > state.config.websocket.max_message_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::MESSAGE_TOO_LARGE,
            format!(
                "data is {} bytes; the limit is websocket.max_message_size = {}",
                text.len(),
                state.config.websocket.max_message_size
            ),
        ));
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
    /// Reply only once the publication is in the message log on disk.
    #[serde(default)]
    durable: bool,
    /// Makes retries safe: a repeat within `api.idempotency_window_secs` gets the
    /// original result and publishes nothing.
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl ApiBody for PublishRequest {
    fn validate(&self) -> Result<(), ApiError> {
        check_channel("channel", &self.channel)?;
        check_idempotency_key(self.idempotency_key.as_deref())
    }
}

/// The broker-kept idempotency of a cluster publish: the key scoped by endpoint, and a
/// fingerprint every node computes alike.
fn cluster_key(
    state: &AppState,
    endpoint: &str,
    key: Option<&str>,
    parts: &[&[u8]],
) -> Option<starling_core::engine::Idempotency> {
    let key = key?;
    let mut all = Vec::with_capacity(parts.len() + 1);
    all.push(endpoint.as_bytes());
    all.extend_from_slice(parts);
    Some(starling_core::engine::Idempotency {
        key: format!("{endpoint}:{key}"),
        fingerprint: crate::idempotency::stable_fingerprint(&all),
        ttl_ms: state
            .config
            .api
            .idempotency_window_secs
            .saturating_mul(1000),
    })
}

/// What to do with a request after its idempotency key was checked.
enum Keyed {
    /// Go ahead (holding the key's reservation, when the request has a key).
    Proceed(Option<Reservation>),
    /// The key's recorded response: send it again, publish nothing.
    Replay(Arc<Recorded>),
}

/// Checks an idempotency key (its length was checked with the rest of the body) and
/// reserves it for the request whose content is `parts`, or returns the recorded
/// response. The key is scoped by endpoint, so a publish and a broadcast never share a
/// response.
async fn claim_key(
    state: &AppState,
    endpoint: &str,
    key: Option<&str>,
    parts: &[&[u8]],
) -> Result<Keyed, ApiError> {
    let Some(key) = key else {
        return Ok(Keyed::Proceed(None));
    };
    let refuse = |e: ApiError| {
        state.metrics.error(e.code);
        Err(e)
    };
    let mut all = Vec::with_capacity(parts.len() + 1);
    all.push(endpoint.as_bytes());
    all.extend_from_slice(parts);
    let fingerprint = state.idempotency.fingerprint(&all);
    match state
        .idempotency
        .claim(&format!("{endpoint}:{key}"), fingerprint)
        .await
    {
        Claim::Fresh(reservation) => Ok(Keyed::Proceed(Some(reservation))),
        Claim::Done(recorded) => Ok(Keyed::Replay(recorded)),
        Claim::Conflict => refuse(ApiError::new(
            StatusCode::CONFLICT,
            codes::IDEMPOTENCY_CONFLICT,
            "idempotency_key was used for a different request",
        )),
        Claim::Full => refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TOO_MANY_REQUESTS,
            "too many requests with an idempotency key in flight (api.idempotency_max_keys)",
        )),
    }
}

/// Records `result` (the outcome of a request that published) under its key, when it
/// has one: an error as its body, a success as `body` makes it (a 200). Only then is the
/// body built as a `Value`.
fn record<R>(
    reservation: Option<Reservation>,
    result: Result<R, ApiError>,
    body: impl FnOnce(&R) -> Value,
) -> Result<R, ApiError> {
    if let Some(reservation) = reservation {
        match &result {
            Ok(r) => reservation.complete(StatusCode::OK.as_u16(), body(r)),
            Err(e) => reservation.complete(e.status.as_u16(), e.body()),
        };
    }
    result
}

/// `POST /api/publish` through axum (hyper): requests the accept path's lean lane does
/// not take (chunked bodies, HTTP/1.0, `Expect`, ...).
pub async fn publish(State(state): State<Arc<AppState>>, req: Request) -> Response {
    publish_reply(&state, &mut AxumInput::from(req))
        .await
        .into_response()
}

/// The whole of `POST /api/publish`, whichever way the request came (axum's route or the
/// accept path's lean lane): the drain check and in-flight count, the key, the metrics,
/// the body, the namespace, the data size, `durable`, the idempotency key, the publish
/// and the durable wait. The caller only renders the reply.
pub(crate) async fn publish_reply(state: &Arc<AppState>, input: &mut impl ApiInput) -> Reply {
    publish_with(state, input)
        .await
        .unwrap_or_else(Reply::Failed)
}

async fn publish_with(state: &Arc<AppState>, input: &mut impl ApiInput) -> Result<Reply, ApiError> {
    let (_in_flight, body): (_, PublishRequest) = authorized(state, input).await?;
    // The request is read and decoded: the publication has arrived.
    let arrived = Instant::now();
    let rules = state
        .namespaces
        .resolve(&body.channel)
        .map_err(ApiError::channel)?;
    let data = data_bytes(state, &body.data)?;
    let (namespace, bytes) = (rules.options.index, data.len());
    if body.durable && state.journal.is_none() {
        // Refused before anything is published, not after.
        let why = if state.engine.is_some() {
            "durable publish in a cluster needs the archive (archive.enabled): it waits for \
             the node's archive journal"
        } else {
            "durable publish needs the message log (storage.dir)"
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::NOT_AVAILABLE,
            why,
        ));
    }
    // Reserved before publishing, so that a concurrent retry waits instead of publishing.
    let parts: [&[u8]; 3] = [
        body.channel.as_bytes(),
        body.data.get().as_bytes(),
        if body.durable { b"durable" } else { b"" },
    ];
    let key = body.idempotency_key.as_deref();
    // In a cluster the broker keeps the keys (a retry may reach another node); on one
    // node this node's cache does.
    let (reservation, idempotency) = if state.node.cluster().is_some() {
        (None, cluster_key(state, "publish", key, &parts))
    } else {
        match claim_key(state, "publish", key, &parts).await? {
            Keyed::Proceed(reservation) => (reservation, None),
            Keyed::Replay(recorded) => return Ok(Reply::Replayed(recorded)),
        }
    };
    // Refused before publishing: the reservation is dropped and the key freed.
    let published = state
        .node
        .publish(
            Publish {
                channel: &body.channel,
                data,
                info: None,
                options: rules.options.channel_options(),
                durable: body.durable,
                idempotency,
            },
            &mut || true,
        )
        .wait()
        .await
        .map_err(|e| ApiError::publish(state, e))?;
    // Accepted (a durable publish's fsync wait is not part of it).
    state
        .metrics
        .published(namespace, Source::Api, arrived.elapsed(), bytes);
    let result = PublishResult {
        offset: published.position.offset,
        epoch: published.position.epoch,
        delivered: published.delivered,
    };
    if !body.durable {
        return record(reservation, Ok(result), PublishResult::body).map(Reply::Published);
    }
    // The publication exists now: its outcome is recorded by a task of its own, so a
    // caller hanging up during the fsync wait cannot free the key (its retry would be
    // delivered a second time).
    let ack = published.durable;
    let finish = tokio::spawn({
        let state = state.clone();
        async move {
            let persisted = await_durable(&state, ack).await;
            record(reservation, persisted.map(|()| result), PublishResult::body)
        }
    });
    finish
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                format!("publish task failed: {e}"),
            ))
        })
        .map(Reply::Published)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
    /// As for publish: a retry gets the original per-channel results.
    #[serde(default)]
    idempotency_key: Option<String>,
}

impl ApiBody for BroadcastRequest {
    /// A malformed name refuses the whole request (as `publish` would); a name that is
    /// well formed but refused later (unknown namespace, channel limit) gets an error of
    /// its own among the per-channel results.
    fn validate(&self) -> Result<(), ApiError> {
        if self.channels.is_empty() {
            return Err(ApiError::bad_request("channels must not be empty"));
        }
        for (i, channel) in self.channels.iter().enumerate() {
            check_channel(&format!("channels[{i}]"), channel)?;
        }
        check_idempotency_key(self.idempotency_key.as_deref())
    }
}

/// `POST /api/broadcast`: the same data to many channels; one result per channel.
pub async fn broadcast(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, BroadcastRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let arrived = Instant::now();
    let data = data_bytes(&state, &body.data)?;
    let mut parts: Vec<&[u8]> = body.channels.iter().map(|c| c.as_bytes()).collect();
    parts.push(body.data.get().as_bytes());
    let key = body.idempotency_key.as_deref();
    // In a cluster each channel's publish carries the key to the broker, which answers
    // a retry with that channel's first result.
    let (reservation, idempotency) = if state.node.cluster().is_some() {
        (None, cluster_key(&state, "broadcast", key, &parts))
    } else {
        match claim_key(&state, "broadcast", key, &parts).await? {
            Keyed::Proceed(reservation) => (reservation, None),
            Keyed::Replay(recorded) => return Ok(Reply::Replayed(recorded).into_response()),
        }
    };
    let mut responses = Vec::with_capacity(body.channels.len());
    // Started together: with a cluster engine the publishes run concurrently.
    let steps: Vec<_> = body
        .channels
        .iter()
        .map(|channel| {
            state.namespaces.resolve(channel).map(|rules| {
                let namespace = rules.options.index;
                let step = state.node.publish(
                    Publish {
                        channel,
                        data: data.clone(),
                        info: None,
                        options: rules.options.channel_options(),
                        durable: false,
                        idempotency: idempotency.clone(),
                    },
                    &mut || true,
                );
                (namespace, step)
            })
        })
        .collect();
    for (channel, step) in body.channels.iter().zip(steps) {
        let published = match step {
            Err(e) => Err(ApiError::channel(e)),
            Ok((namespace, step)) => {
                let result = step.wait().await;
                if result.is_ok() {
                    state
                        .metrics
                        .published(namespace, Source::Api, arrived.elapsed(), data.len());
                }
                result.map_err(|e| ApiError::publish(&state, e))
            }
        };
        match published {
            Ok(p) => {
                responses.push(json!({
                    "channel": channel,
                    "offset": p.position.offset,
                    "epoch": &*p.position.epoch,
                    "delivered": p.delivered,
                }));
            }
            Err(e) => {
                responses.push(json!({
                    "channel": channel,
                    "error": {"code": e.code, "message": e.message},
                }));
            }
        }
    }
    // With the memory engine nothing awaits since the first publication, so the handler
    // cannot be cancelled in between; with a cluster engine the publications are
    // already on their way when the first await runs, and a cancelled handler drops
    // the reservation (a retry publishes again: at least once).
    let result = record(reservation, Ok(json!({ "responses": responses })), |r| {
        result_body(r.clone())
    })?;
    ok(result)
}

/// Waits for the message log's fsync of a durable publish (the caller checked that a log
/// exists: no acknowledgement then means the publication was stored nowhere).
async fn await_durable(
    state: &AppState,
    ack: Option<starling_core::DurableAck>,
) -> Result<(), ApiError> {
    let Some(ack) = ack else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::NOT_AVAILABLE,
            "durable publish: the publication was stored nowhere (its channel keeps no \
             history and has no subscribers: offset 0), so nothing is on disk",
        ));
    };
    // The log failed after taking the record: it was delivered live, but is not on disk.
    ack.await.map_err(|e| {
        ApiError::busy(
            state,
            format!("delivered but not persisted ({e}); the message log is failed (see /ready)"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryApiRequest {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<Position>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    offset: u64,
    epoch: String,
}

impl ApiBody for HistoryApiRequest {
    fn validate(&self) -> Result<(), ApiError> {
        check_channel("channel", &self.channel)
    }
}

/// `POST /api/history`: a page of a channel's history.
pub async fn history(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, HistoryApiRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let rules = state
        .namespaces
        .resolve(&body.channel)
        .map_err(ApiError::channel)?;
    let query = starling_core::HistoryQuery {
        since: body.since.as_ref().map(|p| p.offset),
        limit: body.limit.unwrap_or(rules.options.history.size),
        reverse: body.reverse,
        // An API reply is not held in a connection's queue; the channel's byte budget
        // bounds it.
        max_bytes: usize::MAX,
    };
    let epoch = body.since.as_ref().map(|p| p.epoch.as_str());
    let (publications, position) = state
        .node
        .history(&body.channel, query, epoch, rules.options.channel_options())
        .wait()
        .await
        .map_err(|e| match e {
            starling_core::HistoryReadError::Disabled => ApiError::new(
                StatusCode::CONFLICT,
                codes::NOT_AVAILABLE,
                "history is not kept for this namespace",
            ),
            starling_core::HistoryReadError::Unrecoverable => ApiError::new(
                StatusCode::CONFLICT,
                codes::UNRECOVERABLE_POSITION,
                "position is no longer in history",
            ),
            starling_core::HistoryReadError::Unavailable(reason) => {
                ApiError::unavailable(&state, reason)
            }
        })?;
    let publications: Vec<Value> = publications.iter().map(publication_json).collect();
    ok(json!({
        "publications": publications,
        "offset": position.offset,
        "epoch": &*position.epoch,
    }))
}

/// A publication as the API shows it: `data` raw when it is JSON, else `b64data`.
fn publication_json(p: &starling_protocol::Publication) -> Value {
    let mut out = serde_json::Map::new();
    match serde_json::from_slice::<Value>(&p.data) {
        Ok(v) => out.insert("data".into(), v),
        Err(_) => out.insert(
            "b64data".into(),
            Value::String(starling_protocol::b64_encode(&p.data)),
        ),
    };
    out.insert("offset".into(), p.offset.into());
    if let Some(info) = &p.info {
        out.insert(
            "info".into(),
            json!({"user": &info.user, "client": &info.client}),
        );
    }
    Value::Object(out)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ChannelsRequest {
    pattern: Option<String>,
}

impl ApiBody for ChannelsRequest {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// `POST /api/channels`: channels with subscribers, with their counts.
pub async fn channels(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, ChannelsRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    // In a cluster every node answers for its own subscribers (within a second).
    let (channels, _nodes) =
        crate::cluster::cluster_channels(&state, body.pattern, Duration::from_secs(1))
            .await
            .map_err(|e| ApiError::unavailable(&state, e))?;
    let mut map = serde_json::Map::new();
    for (name, n) in channels {
        map.insert(name, json!({ "num_clients": n }));
    }
    ok(json!({ "channels": map }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceRequest {
    channel: String,
}

impl ApiBody for PresenceRequest {
    fn validate(&self) -> Result<(), ApiError> {
        check_channel("channel", &self.channel)
    }
}

/// `POST /api/presence`: who is subscribed to a channel.
pub async fn presence(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, PresenceRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let rules = state
        .namespaces
        .resolve(&body.channel)
        .map_err(ApiError::channel)?;
    if !rules.options.presence {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::NOT_AVAILABLE,
            "presence is disabled for this namespace",
        ));
    }
    let infos = state
        .node
        .presence(&body.channel)
        .wait()
        .await
        .map_err(|e| ApiError::unavailable(&state, e))?;
    let mut clients = serde_json::Map::new();
    for info in infos.iter() {
        clients.insert(
            info.client.clone(),
            json!({"user": &info.user, "client": &info.client}),
        );
    }
    ok(json!({ "clients": clients }))
}

/// The body of `disconnect` and `user`: a user id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRequest {
    user: String,
}

impl ApiBody for UserRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if self.user.is_empty() {
            return Err(ApiError::bad_request("user must not be empty"));
        }
        Ok(())
    }
}

/// Sends `message` to every other node of a cluster (nothing on a single node), for the
/// methods that act on a user wherever the user is connected.
async fn to_other_nodes(
    state: &Arc<AppState>,
    message: starling_core::engine::ControlMessage,
) -> Result<(), ApiError> {
    if state.node.cluster().is_none() {
        return Ok(());
    }
    let sink = crate::cluster::control_sink(Arc::downgrade(state));
    state
        .node
        .broadcast_control(message, &sink)
        .wait()
        .await
        .map_err(|e| ApiError::unavailable(state, e))
}

/// `POST /api/disconnect`: closes every connection of a user on this node (code 4503).
pub async fn disconnect(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, UserRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let n = state
        .registry
        .disconnect_user(&body.user, codes::DISCONNECTED_BY_API);
    // Every other node acts on the message (this one finds nothing left to close).
    let message = starling_core::engine::ControlMessage::Disconnect {
        user: body.user,
        code: codes::DISCONNECTED_BY_API.code,
    };
    to_other_nodes(&state, message).await?;
    ok(json!({ "disconnected": n }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    user: String,
    channel: String,
}

impl ApiBody for UnsubscribeRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if self.user.is_empty() {
            return Err(ApiError::bad_request("user must not be empty"));
        }
        check_channel("channel", &self.channel)
    }
}

/// `POST /api/unsubscribe`: ends every subscription of a user to a channel (the client
/// gets an `unsubscribe` push with code 2000 and stays connected).
pub async fn unsubscribe(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, UnsubscribeRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let n = state.registry.unsubscribe_user(&body.user, &body.channel);
    let message = starling_core::engine::ControlMessage::Unsubscribe {
        user: body.user,
        channel: body.channel,
    };
    to_other_nodes(&state, message).await?;
    ok(json!({ "unsubscribed": n }))
}

/// `POST /api/user`: how many connections a user holds on this node.
pub async fn user(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, UserRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    ok(json!({
        "user": body.user,
        "node": &state.name,
        "connections": state.registry.user_connections(&body.user),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InfoRequest {}

impl ApiBody for InfoRequest {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// `POST /api/info`: node id, version, uptime and counts.
pub async fn info(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, _): (_, InfoRequest) = authorized(&state, &mut AxumInput::from(req)).await?;
    ok(info_json(&state))
}

/// The body of `/api/info` (also in the dashboard's snapshot).
pub fn info_json(state: &AppState) -> Value {
    let h = state.hub.counters();
    let nodes: Vec<Value> = if state.node.cluster().is_some() {
        // This node's own entry is read now, not taken from its last heartbeat.
        let mut live = state.nodes.live();
        live.retain(|n| n.name != state.name);
        live.push(crate::cluster::node_info(state));
        live.sort_by(|a, b| a.name.cmp(&b.name));
        live.into_iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "version": n.version,
                    "uptime": n.uptime_secs,
                    "connections": n.connections,
                    "users": n.users,
                    "subscriptions": n.subscriptions,
                    "channels": n.channels,
                })
            })
            .collect()
    } else {
        vec![json!({
            "name": &state.name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": state.started.elapsed().as_secs(),
            "connections": state.registry.connections(),
            "users": state.registry.users(),
            "subscriptions": h.subscriptions.load(Ordering::Relaxed),
            "channels": h.channels.load(Ordering::Relaxed),
        })]
    };
    json!({
        "nodes": nodes,
        "node": &state.name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": state.started.elapsed().as_secs(),
        "connections": state.registry.connections(),
        "users": state.registry.users(),
        "channels": h.channels.load(Ordering::Relaxed),
        "subscriptions": h.subscriptions.load(Ordering::Relaxed),
        "publications": h.publications.load(Ordering::Relaxed),
    })
}

/// The longest `window_secs` of `/api/analytics`: 31 days, the archive's usual reach.
const MAX_ANALYTICS_WINDOW_SECS: u64 = 31 * 24 * 3600;
/// The most rows `/api/analytics` lists in its top lists.
const MAX_ANALYTICS_LIMIT: u32 = 100;

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AnalyticsBucket {
    Minute,
    Hour,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct AnalyticsRequest {
    window_secs: Option<u64>,
    bucket: Option<AnalyticsBucket>,
    limit: Option<u32>,
    namespace: Option<String>,
}

impl ApiBody for AnalyticsRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(w) = self.window_secs
            && !(1..=MAX_ANALYTICS_WINDOW_SECS).contains(&w)
        {
            return Err(ApiError::bad_request(format!(
                "window_secs must be 1 to {MAX_ANALYTICS_WINDOW_SECS}, not {w}"
            )));
        }
        if let Some(l) = self.limit
            && !(1..=MAX_ANALYTICS_LIMIT).contains(&l)
        {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_ANALYTICS_LIMIT}, not {l}"
            )));
        }
        Ok(())
    }
}

impl AnalyticsRequest {
    fn query(self) -> crate::analytics::Query {
        use crate::analytics::Width;
        let window = Duration::from_secs(self.window_secs.unwrap_or(3600));
        crate::analytics::Query {
            window,
            width: match self.bucket {
                Some(AnalyticsBucket::Minute) => Width::Minute,
                Some(AnalyticsBucket::Hour) => Width::Hour,
                None => Width::for_window(window),
            },
            limit: self.limit.unwrap_or(10),
            namespace: self.namespace,
        }
    }
}

/// How long `/api/analytics` waits for PostgreSQL (connect and the five queries).
const ANALYTICS_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/analytics`: traffic, top channels and publishers, connections,
/// disconnects by code and publish latency over a window; from the archive when it is
/// configured, else from this node's counters (`crate::analytics`).
pub async fn analytics(State(state): State<Arc<AppState>>, req: Request) -> ApiResult {
    let (_in_flight, body): (_, AnalyticsRequest) =
        authorized(&state, &mut AxumInput::from(req)).await?;
    let query = body.query();
    let Some(archive) = state.archive.get() else {
        return ok(crate::analytics::node_answer(&state, &query).await);
    };
    let answer = tokio::time::timeout(ANALYTICS_TIMEOUT, async {
        let client = archive.connect().await?;
        crate::analytics::archive_answer(&state, &client, &query).await
    })
    .await;
    let message = match answer {
        Ok(Ok(result)) => return ok(result),
        Ok(Err(e)) => format!("the archive (PostgreSQL) cannot answer: {e}; retry"),
        Err(_) => format!(
            "the archive (PostgreSQL) did not answer within {} s; retry",
            ANALYTICS_TIMEOUT.as_secs()
        ),
    };
    state.metrics.error(codes::NOT_AVAILABLE.code);
    Err(ApiError {
        retry_after: Some(5),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::NOT_AVAILABLE,
            message,
        )
    })
}

/// `GET /api/openapi.json` (no key needed: it describes, it does not act).
pub async fn openapi() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(OPENAPI))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A success written by hand is byte for byte the recorded `Value` a replay sends
    /// (whatever the epoch holds), and an error is its `Value` body.
    #[test]
    fn replies_are_the_bytes_of_their_values() {
        for epoch in ["", "9f1c2a7be0d45e11", "quote\" back\\ nl\n é \u{1}"] {
            let result = PublishResult {
                offset: u64::MAX,
                epoch: epoch.into(),
                delivered: 7,
            };
            let recorded = serde_json::to_vec(&result.body()).expect("json");
            let mut written = Vec::new();
            Reply::Published(result).write_json(&mut written);
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&recorded)
            );
        }
        let error = ApiError::bad_request("bad \"JSON\"");
        let expected = serde_json::to_vec(&error.body()).expect("json");
        let mut written = Vec::new();
        Reply::Failed(error).write_json(&mut written);
        assert_eq!(written, expected);
    }
}
