//! A client session: the protocol commands of one connection, after the WebSocket layer.
//!
//! Commands decode from a message, run against the hub, and their replies leave in one
//! frame per incoming message (a batch in, a batch out). A frame that cannot be decoded
//! at all, or a command before `connect`, ends the session with a disconnect code.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use std::collections::VecDeque;
use std::task::{Context, Poll};

use starling_archive::EventKind;
use starling_core::engine::{EngineFuture, Step};
use starling_core::{
    ClientKey, ConnectionBucket, FrameFormat, HistoryQuery, HistoryReadError, Outbox, Publish,
    PublishError, PushOutcome, RecoverFrom, SubscribeError, Subscriber,
};
use starling_protocol::codes::{self, DisconnectCode};
use starling_protocol::{
    ClientInfo, Command, CommandError, ConnectRequest, ConnectResult, Encoding, Error,
    HistoryRequest, HistoryResult, Method, PresenceResult, PresenceStatsResult, Publication,
    PublishRequest, PublishResult, RefreshResult, Reply, ReplyBody, SubscribeRequest,
    SubscribeResult, UnsubscribeResult, decode_commands, encode_reply,
};
use tracing::debug;

use crate::app::AppState;
use crate::auth::AuthError;
use crate::encoder::WireEncoder;
use crate::limits::Limit;
use crate::metrics::{Recovery, Source};
use crate::subscriptions::Subscriptions;

/// The authenticated side of a session.
#[derive(Debug)]
struct Identity {
    user: Arc<str>,
    info: Arc<ClientInfo>,
    /// Channels the token limits subscriptions to (`None`: no limit). Boxed: few tokens
    /// carry a list, and inline the set took 48 of every session's bytes (the session
    /// is then 160 bytes, a size class below 224).
    #[expect(
        clippy::box_collection,
        reason = "the extra allocation is paid by the few tokens with a list; the inline set cost every session 48 bytes"
    )]
    allowed: Option<Box<HashSet<String>>>,
    /// Token expiry, seconds since the Unix epoch (non-zero: 8 bytes with its `None`,
    /// not 16, which keeps the session in 128 bytes; an `exp` of 0 is kept as 1, as
    /// expired).
    expires_at: Option<NonZeroU64>,
}

/// The `unsubscribe` push code of a subscription ended through the server API.
pub const SERVER_UNSUBSCRIBE: u32 = 2000;

thread_local! {
    /// The user id of anonymous connections, one per thread (no shared counter to
    /// contend on).
    static ANONYMOUS: Arc<str> = Arc::from("");
}

/// One connection's protocol state.
pub struct Session {
    key: ClientKey,
    state: Arc<AppState>,
    outbox: Arc<Outbox>,
    format: FrameFormat,
    identity: Option<Identity>,
    subscriptions: Subscriptions,
    /// Command budget (`client.command_rate`); `None` when unlimited.
    commands: Option<ConnectionBucket>,
    /// Channel-creation budget (`client.channel_creation_rate`); `None` when unlimited.
    creations: Option<ConnectionBucket>,
    /// A command waiting for the cluster engine (never with the memory engine).
    pending: Option<Box<Pending>>,
}

/// Decoded commands of one message, in order.
type Commands = std::vec::IntoIter<Result<Command, CommandError>>;

/// A command waiting for the cluster engine. Commands run in order: what follows it (in
/// its message, and the messages that arrive meanwhile) waits with it.
struct Pending {
    op: EngineFuture<Done>,
    /// The rest of the pending command's message.
    rest: Commands,
    /// Messages that arrived meanwhile (the driver stops reading, so these are at most
    /// one read's worth).
    later: VecDeque<Bytes>,
}

/// Most messages held behind a pending command before the connection is refused as
/// misbehaving (the driver does not read while a command is pending, so one read
/// cannot hold more).
const MAX_HELD_MESSAGES: usize = 4096;

/// A finished engine command.
struct Done {
    id: u32,
    result: Result<Finished, Error>,
}

/// What a finished engine command produced.
enum Finished {
    /// The subscription exists (its reply is queued already).
    Subscribed(Arc<str>),
    /// A reply body.
    Body(ReplyBody),
}

/// How a command ended for now.
enum Outcome {
    /// Answered (or needs no answer).
    Reply(Option<Reply>),
    /// Waits for the engine.
    Pending(EngineFuture<Done>),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("subscriptions", &self.subscriptions.len())
            .finish()
    }
}

/// The reply error for a channel name the namespaces refuse.
fn channel_error(e: starling_core::ChannelError) -> Error {
    match e {
        starling_core::ChannelError::Invalid => {
            codes::BAD_REQUEST.with_message("invalid channel name")
        }
        e => codes::UNKNOWN_CHANNEL.with_message(e.to_string()),
    }
}

/// Milliseconds since the node started: the clock of the connection budgets.
fn node_ms(state: &AppState, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(state.started).as_millis()).unwrap_or(u64::MAX)
}

/// Takes one channel creation from a connection's budget (`None`: unlimited).
fn creation_allowed(bucket: &mut Option<ConnectionBucket>, state: &AppState) -> bool {
    let client = &state.config.client;
    bucket.as_mut().is_none_or(|b| {
        b.try_take(
            client.channel_creation_rate,
            client.channel_creation_burst,
            node_ms(state, Instant::now()),
        )
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Session {
    /// A session for connection `key` writing into `outbox` in `format`.
    pub fn new(
        key: ClientKey,
        state: Arc<AppState>,
        outbox: Arc<Outbox>,
        format: FrameFormat,
    ) -> Self {
        let client = &state.config.client;
        let now = node_ms(&state, Instant::now());
        let commands =
            (client.command_rate > 0).then(|| ConnectionBucket::full(client.command_burst, now));
        let creations = (client.channel_creation_rate > 0)
            .then(|| ConnectionBucket::full(client.channel_creation_burst, now));
        Self {
            key,
            state,
            outbox,
            format,
            identity: None,
            subscriptions: Subscriptions::default(),
            commands,
            creations,
            pending: None,
        }
    }

    /// Whether a command waits for the cluster engine (the driver stops reading then).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether `connect` succeeded.
    pub fn connected(&self) -> bool {
        self.identity.is_some()
    }

    /// Time left until the connection token expires, if it does.
    pub fn expires_in(&self) -> Option<Duration> {
        let at = self.identity.as_ref()?.expires_at?.get();
        Some(Duration::from_secs(at.saturating_sub(now_secs())))
    }

    fn encoding(&self) -> Encoding {
        WireEncoder::encoding(self.format)
    }

    /// Sends a connection event of this connection to the archive, when there is one.
    fn archive_event(&self, kind: EventKind, channel: Option<&str>, code: Option<u16>) {
        if let (Some(archive), Some(identity)) = (self.state.archive.get(), &self.identity) {
            let info = &identity.info;
            archive.event(kind, Some(&info.user), Some(&info.client), channel, code);
        }
    }

    /// The connection ends (`code`: the close code the server sent, if it closed it).
    pub fn end(&mut self, code: Option<u16>) {
        self.archive_event(EventKind::Disconnect, None, code);
        self.close();
    }

    /// Leaves `channel` because the server asked (the unsubscribe API): the subscription
    /// ends as an `unsubscribe` command would end it, and the client gets an
    /// `unsubscribe` push with code 2000. Nothing happens when it is not subscribed.
    pub fn leave_by_server(&mut self, channel: &str) {
        let Some(name) = self.subscriptions.take(channel) else {
            return;
        };
        self.state.node.unsubscribe(&name, self.key);
        let code = u16::try_from(SERVER_UNSUBSCRIBE).ok();
        self.archive_event(EventKind::Unsubscribe, Some(&name), code);
        let push = starling_protocol::Push::Unsubscribe {
            channel: channel.to_string(),
            code: SERVER_UNSUBSCRIBE,
            reason: "unsubscribed by the server".into(),
        };
        let mut out = Vec::new();
        starling_protocol::encode_push(self.encoding(), &push, &mut out);
        self.flush(&mut out);
    }

    /// Handles one WebSocket message holding one or more commands.
    pub fn handle(&mut self, payload: &[u8]) -> Result<(), DisconnectCode> {
        if let Some(pending) = &mut self.pending {
            if pending.later.len() >= MAX_HELD_MESSAGES {
                return Err(codes::POLICY_VIOLATION);
            }
            pending.later.push_back(Bytes::copy_from_slice(payload));
            return Ok(());
        }
        let commands = decode_commands(self.encoding(), payload).map_err(|e| {
            debug!(key = self.key, "undecodable frame: {e}");
            codes::BAD_REQUEST_DISCONNECT
        })?;
        let mut out = Vec::new();
        let result = self.run(commands.into_iter(), &mut out);
        self.flush(&mut out);
        result
    }

    /// Runs commands in order until they are done or one waits for the engine (then the
    /// rest waits with it).
    fn run(&mut self, mut commands: Commands, out: &mut Vec<u8>) -> Result<(), DisconnectCode> {
        let now = Instant::now();
        while let Some(command) = commands.next() {
            // Before `connect` nothing but a valid command is answered: a malformed one
            // ends the session like an undecodable frame, so an unauthenticated peer gets
            // no replies to probe with (and costs no reply encoding).
            if self.identity.is_none()
                && let Err(err) = &command
            {
                debug!(key = self.key, "malformed command before connect: {err}");
                return Err(codes::BAD_REQUEST_DISCONNECT);
            }
            let reply = match command {
                // A heartbeat costs nothing and is never answered: not counted.
                Ok(command) if command.method == Method::Pong => None,
                Ok(command) if !self.within_rate(now) => {
                    Some(Reply::error(command.id, codes::TOO_MANY_REQUESTS))
                }
                Ok(command) => match self.dispatch(command, out, now)? {
                    Outcome::Reply(reply) => reply,
                    Outcome::Pending(op) => {
                        self.pending = Some(Box::new(Pending {
                            op,
                            rest: commands,
                            later: VecDeque::new(),
                        }));
                        return Ok(());
                    }
                },
                Err(err) if !self.within_rate(now) => {
                    let reply = err.reply();
                    Some(Reply::error(reply.id, codes::TOO_MANY_REQUESTS))
                }
                Err(err) => Some(err.reply()),
            };
            if let Some(reply) = reply {
                self.encode(&reply, out);
            }
        }
        Ok(())
    }

    fn encode(&self, reply: &Reply, out: &mut Vec<u8>) {
        if let Err(e) = &reply.body {
            self.state.metrics.error(e.code);
        }
        encode_reply(self.encoding(), reply, out);
    }

    /// Drives the pending command: when it finishes, answers it and runs what waited
    /// behind it. Ready once nothing is pending any more (or the session must end).
    pub fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DisconnectCode>> {
        loop {
            let Some(pending) = &mut self.pending else {
                return Poll::Ready(Ok(()));
            };
            let done = match pending.op.as_mut().poll(cx) {
                Poll::Ready(done) => done,
                Poll::Pending => return Poll::Pending,
            };
            let Some(pending) = self.pending.take() else {
                return Poll::Ready(Ok(()));
            };
            let Pending { rest, later, .. } = *pending;
            let mut out = Vec::new();
            match done.result {
                Ok(Finished::Subscribed(name)) => {
                    self.archive_event(EventKind::Subscribe, Some(&name), None);
                    self.subscriptions.insert(name);
                }
                Ok(Finished::Body(body)) => self.encode(
                    &Reply {
                        id: done.id,
                        body: Ok(body),
                    },
                    &mut out,
                ),
                Err(e) => self.encode(&Reply::error(done.id, e), &mut out),
            }
            let result = self.resume(rest, later, &mut out);
            self.flush(&mut out);
            result?;
            // A new pending command is polled at once (it may be ready already).
        }
    }

    /// Runs the rest of a message and the messages that waited, until one command
    /// waits again (it takes the remaining messages with it).
    fn resume(
        &mut self,
        rest: Commands,
        mut later: VecDeque<Bytes>,
        out: &mut Vec<u8>,
    ) -> Result<(), DisconnectCode> {
        self.run(rest, out)?;
        while self.pending.is_none() {
            let Some(payload) = later.pop_front() else {
                return Ok(());
            };
            let commands = decode_commands(self.encoding(), &payload).map_err(|e| {
                debug!(key = self.key, "undecodable frame: {e}");
                codes::BAD_REQUEST_DISCONNECT
            })?;
            self.run(commands.into_iter(), out)?;
        }
        if let Some(pending) = &mut self.pending {
            pending.later = later;
        }
        Ok(())
    }

    /// Takes one command from the connection's budget; false (counted) when it is spent.
    fn within_rate(&mut self, now: Instant) -> bool {
        let Some(bucket) = &mut self.commands else {
            return true;
        };
        let client = &self.state.config.client;
        let ok = bucket.try_take(
            client.command_rate,
            client.command_burst,
            node_ms(&self.state, now),
        );
        if !ok {
            self.state.metrics.refused(Limit::Rate);
        }
        ok
    }

    fn flush(&self, out: &mut Vec<u8>) {
        if !out.is_empty() {
            let frame = self.state.encoder.frame(self.format, out);
            if self.outbox.push(frame) == PushOutcome::Overflow {
                // Cut by its own replies: a slow consumer as much as one cut by fan-out.
                crate::metrics::Metrics::add(&self.state.hub.counters().slow_consumers, 1);
            }
            out.clear();
        }
    }

    /// Runs one command, which arrived at `now`. A reply of `None` means no reply (a
    /// client pong). Replies that must precede later pushes (subscribe) are queued
    /// directly together with `out`.
    fn dispatch(
        &mut self,
        command: Command,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Outcome, DisconnectCode> {
        let id = command.id;
        let method = match command.method {
            Method::Connect(req) => return self.connect(id, req).map(|r| Outcome::Reply(Some(r))),
            // A client heartbeat is fine at any time and never answered.
            Method::Pong => return Ok(Outcome::Reply(None)),
            other => other,
        };
        if self.identity.is_none() {
            return Err(codes::CONNECT_REQUIRED);
        }
        let step = match method {
            Method::Connect(_) | Method::Pong => return Ok(Outcome::Reply(None)),
            Method::Subscribe(req) => return Ok(self.subscribe(id, req, out)),
            Method::Unsubscribe(req) => {
                if let Some(name) = self.subscriptions.take(req.channel.as_str()) {
                    self.state.node.unsubscribe(&name, self.key);
                    self.archive_event(EventKind::Unsubscribe, Some(&name), None);
                }
                Step::Ready(Ok(ReplyBody::Unsubscribe(UnsubscribeResult {})))
            }
            Method::Publish(req) => self.publish(req, now),
            Method::Presence(req) => self.presence(&req.channel, false),
            Method::PresenceStats(req) => self.presence(&req.channel, true),
            Method::History(req) => self.history(req),
            Method::Refresh(req) => Step::Ready(self.refresh(&req.token)?),
            Method::Ping => Step::Ready(Ok(ReplyBody::Ping)),
        };
        Ok(match step {
            Step::Ready(body) => Outcome::Reply(Some(Reply { id, body })),
            Step::Pending(op) => Outcome::Pending(Box::pin(async move {
                Done {
                    id,
                    result: op.await.map(Finished::Body),
                }
            })),
        })
    }

    fn connect(&mut self, id: u32, req: ConnectRequest) -> Result<Reply, DisconnectCode> {
        if self.identity.is_some() {
            return Ok(Reply::error(id, codes::ALREADY_CONNECTED));
        }
        let config = &self.state.config;
        let (user, allowed, expires_at, conn_info) = match req.token.as_deref() {
            Some(token) if !token.is_empty() => match self.state.auth.verify_connect(token) {
                Ok(claims) => {
                    let allowed = (!claims.channels.is_empty())
                        .then(|| Box::new(claims.channels.into_iter().collect::<HashSet<_>>()));
                    let info = claims
                        .info
                        .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()));
                    (claims.sub, allowed, claims.exp, info)
                }
                Err(AuthError::Expired) => return Ok(Reply::error(id, codes::TOKEN_EXPIRED)),
                Err(AuthError::Invalid(reason)) => {
                    debug!(key = self.key, "connect refused: {reason}");
                    return Err(codes::UNAUTHORIZED_DISCONNECT);
                }
            },
            _ if config.client.allow_anonymous => (String::new(), None, None, None),
            _ => return Err(codes::UNAUTHORIZED_DISCONNECT),
        };
        let client = format!("{}-{:x}", self.state.name, self.key);
        // Anonymous connections share one "" (an `Arc<str>` is an allocation even when
        // empty: 16 bytes of every anonymous connection).
        let user: Arc<str> = if user.is_empty() {
            ANONYMOUS.with(Arc::clone)
        } else {
            Arc::from(user)
        };
        // Anonymous connections share the user id "", so they are not one user to limit.
        let per_user = if user.is_empty() {
            0
        } else {
            config.client.max_connections_per_user
        };
        if self
            .state
            .registry
            .try_set_user(self.key, user.clone(), per_user)
            .is_none()
        {
            self.state.metrics.refused(Limit::UserConnections);
            return Err(codes::CONNECTION_LIMIT);
        }
        let ttl = expires_at.map(|at| at.saturating_sub(now_secs()));
        self.identity = Some(Identity {
            info: Arc::new(ClientInfo {
                user: user.to_string(),
                client: client.clone(),
                conn_info,
                chan_info: None,
            }),
            user,
            allowed,
            expires_at: expires_at.map(|at| NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN)),
        });
        self.archive_event(EventKind::Connect, None, None);
        Ok(Reply::ok(
            id,
            ReplyBody::Connect(ConnectResult {
                client,
                version: env!("CARGO_PKG_VERSION").to_string(),
                ping: u32::try_from(config.websocket.ping_interval_secs).unwrap_or(u32::MAX),
                expires: ttl.is_some(),
                ttl: ttl.map(|t| u32::try_from(t).unwrap_or(u32::MAX)),
            }),
        ))
    }

    /// `refresh`: a new token of the same user moves the connection's expiry (and
    /// replaces its channel list for later subscribes) without a reconnect. An expired
    /// token is error 109 (the client gets another); an invalid one, or one for another
    /// user, closes the connection as an invalid `connect` token would.
    fn refresh(&mut self, token: &str) -> Result<Result<ReplyBody, Error>, DisconnectCode> {
        let Some(identity) = &mut self.identity else {
            return Err(codes::CONNECT_REQUIRED);
        };
        let claims = match self.state.auth.verify_connect(token) {
            Ok(claims) => claims,
            Err(AuthError::Expired) => return Ok(Err(codes::TOKEN_EXPIRED.error())),
            Err(AuthError::Invalid(reason)) => {
                debug!(key = self.key, "refresh refused: {reason}");
                return Err(codes::UNAUTHORIZED_DISCONNECT);
            }
        };
        if claims.sub != *identity.user {
            debug!(key = self.key, "refresh refused: token is for another user");
            return Err(codes::UNAUTHORIZED_DISCONNECT);
        }
        identity.allowed = (!claims.channels.is_empty())
            .then(|| Box::new(claims.channels.into_iter().collect::<HashSet<_>>()));
        identity.expires_at = claims
            .exp
            .map(|at| NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN));
        let ttl = claims.exp.map(|at| at.saturating_sub(now_secs()));
        Ok(Ok(ReplyBody::Refresh(RefreshResult {
            expires: ttl.is_some(),
            ttl: ttl.map(|t| u32::try_from(t).unwrap_or(u32::MAX)),
        })))
    }

    fn subscribe(&mut self, id: u32, req: SubscribeRequest, out: &mut Vec<u8>) -> Outcome {
        let error = |e: Error| Outcome::Reply(Some(Reply::error(id, e)));
        let Some(identity) = &self.identity else {
            return error(codes::INTERNAL.error());
        };
        let rules = match self.state.namespaces.resolve(&req.channel) {
            Ok(rules) => rules,
            Err(starling_core::ChannelError::Invalid) => {
                return error(codes::BAD_REQUEST.with_message("invalid channel name"));
            }
            Err(e @ starling_core::ChannelError::UnknownNamespace(_)) => {
                return error(codes::UNKNOWN_CHANNEL.with_message(e.to_string()));
            }
        };
        if self.subscriptions.contains(req.channel.as_str()) {
            return error(codes::ALREADY_SUBSCRIBED.error());
        }
        let max = self.state.config.client.max_subscriptions;
        if max > 0 && self.subscriptions.len() >= max {
            self.state.metrics.refused(Limit::Subscriptions);
            return error(codes::LIMIT_EXCEEDED.with_message(format!(
                "at most {max} subscriptions per connection (client.max_subscriptions)"
            )));
        }
        let anonymous = identity.user.is_empty();
        if anonymous && !rules.options.allow_anonymous {
            return error(
                codes::PERMISSION_DENIED.with_message("anonymous clients may not subscribe here"),
            );
        }
        if let Some(owner) = rules.owner
            && owner != &*identity.user
        {
            return error(
                codes::PERMISSION_DENIED.with_message("personal channel of another user"),
            );
        }
        if let Some(allowed) = &identity.allowed
            && !allowed.contains(&req.channel)
        {
            return error(
                codes::PERMISSION_DENIED
                    .with_message("channel not allowed by the connection token"),
            );
        }
        let mut info = identity.info.clone();
        if rules.options.private {
            let Some(token) = req.token.as_deref().filter(|t| !t.is_empty()) else {
                return error(
                    codes::PERMISSION_DENIED
                        .with_message("private channel: subscription token required"),
                );
            };
            match self
                .state
                .auth
                .verify_subscribe(token, &identity.user, &req.channel)
            {
                Ok(claims) => {
                    if let Some(raw) = claims.info {
                        let mut with_chan = (*info).clone();
                        with_chan.chan_info = Some(Bytes::copy_from_slice(raw.get().as_bytes()));
                        info = Arc::new(with_chan);
                    }
                }
                Err(AuthError::Expired) => return error(codes::TOKEN_EXPIRED.error()),
                Err(AuthError::Invalid(reason)) => {
                    return error(
                        codes::PERMISSION_DENIED
                            .with_message(format!("subscription token: {reason}")),
                    );
                }
            }
        }
        // Only `fossil` decodes (anything else is refused as 107 with the command).
        let delta = req.delta.is_some();
        if delta && !rules.options.allow_delta {
            return error(codes::NOT_AVAILABLE.with_message(
                "delta is not allowed in this namespace (namespaces.<ns>.allow_delta)",
            ));
        }
        let subscriber =
            Subscriber::new(self.key, self.outbox.clone(), self.format, info).with_delta(delta);
        let recover = req.recover.then(|| RecoverFrom {
            offset: req.offset.unwrap_or(0),
            epoch: req.epoch.clone().unwrap_or_default(),
            // A first, estimated bound that saves copying a hopeless recovery; the
            // encoded reply is measured below.
            max_bytes: self.state.config.client.max_queue_bytes,
        });
        // Replies to the message's earlier commands leave first: the subscribe reply is
        // a frame of its own, queued when the subscriber joins.
        self.flush(out);
        let first = subscribe_reply(
            self.state.clone(),
            self.format,
            id,
            self.reply_cap(),
            delta,
            req.recover.then_some(rules.options.index),
        );
        let (creations, node) = (&mut self.creations, &*self.state);
        let mut may_create = || creation_allowed(creations, node);
        let step = self.state.node.subscribe(
            &req.channel,
            subscriber,
            rules.options.channel_options(),
            recover,
            &mut may_create,
            first,
        );
        match step {
            Step::Ready(result) => match subscribed(&self.state, result) {
                Ok(Finished::Subscribed(name)) => {
                    self.archive_event(EventKind::Subscribe, Some(&name), None);
                    self.subscriptions.insert(name);
                    Outcome::Reply(None)
                }
                Ok(Finished::Body(body)) => Outcome::Reply(Some(Reply { id, body: Ok(body) })),
                Err(e) => error(e),
            },
            Step::Pending(op) => {
                let state = self.state.clone();
                Outcome::Pending(Box::pin(async move {
                    Done {
                        id,
                        result: subscribed(&state, op.await),
                    }
                }))
            }
        }
    }

    /// The most a recovery reply (measured) or a history page (estimated) may hold: half
    /// the connection's queue, leaving the other half for what is queued already and
    /// the live publications that follow, so that such a reply never cuts its own
    /// connection as a slow consumer.
    fn reply_cap(&self) -> usize {
        self.state.config.client.max_queue_bytes / 2
    }

    fn publish(&mut self, req: PublishRequest, arrived: Instant) -> Step<Result<ReplyBody, Error>> {
        match self.publish_step(req, arrived) {
            Ok(step) => step,
            Err(e) => Step::Ready(Err(e)),
        }
    }

    /// A client's publish, which arrived at `arrived`: its latency to the hub's (or the
    /// broker's) acceptance is observed when the result comes.
    fn publish_step(
        &mut self,
        req: PublishRequest,
        arrived: Instant,
    ) -> Result<Step<Result<ReplyBody, Error>>, Error> {
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| codes::INTERNAL.error())?;
        let rules = self
            .state
            .namespaces
            .resolve(&req.channel)
            .map_err(channel_error)?;
        if !rules.options.allow_publish {
            return Err(
                codes::NOT_AVAILABLE.with_message("clients may not publish in this namespace")
            );
        }
        if identity.user.is_empty() && !rules.options.allow_anonymous {
            return Err(
                codes::PERMISSION_DENIED.with_message("anonymous clients may not publish here")
            );
        }
        if rules.owner.is_some_and(|owner| owner != &*identity.user) {
            return Err(codes::PERMISSION_DENIED.with_message("personal channel of another user"));
        }
        // A private channel admits only holders of a subscription token; publishing needs
        // the same proof, and a subscription is where it was checked.
        if rules.options.private && !self.subscriptions.contains(req.channel.as_str()) {
            return Err(codes::PERMISSION_DENIED.with_message(
                "private channel: subscribe (with a subscription token) to publish",
            ));
        }
        let info = Some(identity.info.clone());
        let (namespace, bytes) = (rules.options.index, req.data.len());
        // Publishing into a history namespace creates the channel (to keep the history):
        // the same per-connection creation budget as `subscribe`.
        let (creations, node) = (&mut self.creations, &*self.state);
        let mut may_create = || creation_allowed(creations, node);
        let step = self.state.node.publish(
            Publish {
                channel: &req.channel,
                data: req.data,
                info,
                options: rules.options.channel_options(),
                durable: false,
                idempotency: None,
            },
            &mut may_create,
        );
        let state = self.state.clone();
        Ok(step.map(move |result| {
            let published = result.map_err(|e| publish_error(&state, e))?;
            state
                .metrics
                .published(namespace, Source::Client, arrived.elapsed(), bytes);
            Ok(ReplyBody::Publish(PublishResult {
                offset: published.position.offset,
                epoch: published.position.epoch.to_string(),
            }))
        }))
    }

    fn presence(&self, channel: &str, stats: bool) -> Step<Result<ReplyBody, Error>> {
        let rules = match self.state.namespaces.resolve(channel) {
            Ok(rules) => rules,
            Err(e) => return Step::Ready(Err(channel_error(e))),
        };
        if !rules.options.presence {
            return Step::Ready(Err(
                codes::NOT_AVAILABLE.with_message("presence is disabled for this namespace")
            ));
        }
        if !self.subscriptions.contains(channel) {
            return Step::Ready(Err(
                codes::NOT_SUBSCRIBED.with_message("subscribe to the channel first")
            ));
        }
        if stats {
            return self.state.node.presence_stats(channel).map(|result| {
                let (clients, users) = result.map_err(engine_error)?;
                Ok(ReplyBody::PresenceStats(PresenceStatsResult {
                    num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
                    num_users: u32::try_from(users).unwrap_or(u32::MAX),
                }))
            });
        }
        // A snapshot shared until the membership changes (memory engine); the reply is
        // built from it outside the channel's lock.
        self.state.node.presence(channel).map(|result| {
            let infos = result.map_err(engine_error)?;
            let clients: BTreeMap<String, ClientInfo> = infos
                .iter()
                .map(|i| (i.client.clone(), (**i).clone()))
                .collect();
            Ok(ReplyBody::Presence(PresenceResult { clients }))
        })
    }

    fn history(&self, req: HistoryRequest) -> Step<Result<ReplyBody, Error>> {
        let rules = match self.state.namespaces.resolve(&req.channel) {
            Ok(rules) => rules,
            Err(e) => return Step::Ready(Err(channel_error(e))),
        };
        if !rules.options.history.enabled() {
            return Step::Ready(Err(
                codes::NOT_AVAILABLE.with_message("history is not kept for this namespace")
            ));
        }
        if !self.subscriptions.contains(req.channel.as_str()) {
            return Step::Ready(Err(
                codes::NOT_SUBSCRIBED.with_message("subscribe to the channel first")
            ));
        }
        let limit = req.limit.map_or(rules.options.history.size, |l| {
            usize::try_from(l).unwrap_or(usize::MAX)
        });
        let query = HistoryQuery {
            since: req.since.as_ref().map(|s| s.offset),
            limit,
            reverse: req.reverse,
            // A page always fits the queue; the client pages on with `since`.
            max_bytes: self.reply_cap(),
        };
        let epoch = req.since.as_ref().map(|s| s.epoch.as_str());
        self.state
            .node
            .history(&req.channel, query, epoch, rules.options.channel_options())
            .map(|result| {
                let (publications, position) = result.map_err(history_error)?;
                Ok(ReplyBody::History(HistoryResult {
                    publications,
                    epoch: position.epoch.to_string(),
                    offset: position.offset,
                }))
            })
    }

    /// Leaves every channel (the connection is closing).
    pub fn close(&mut self) {
        // A join still pending is abandoned with its future (its ticket releases the
        // channel).
        self.pending = None;
        for name in self.subscriptions.drain() {
            self.state.node.unsubscribe(&name, self.key);
        }
    }
}

/// The subscribe reply, built when the subscriber joins: it carries the recovered
/// publications unless their encoded size passes `cap` (then the client pages through
/// history instead of being cut as a slow consumer by its own reply), and says whether
/// delta mode is on. (Recovered publications are in full, as history always is.) A
/// recovery (`recovery`: the namespace slot, when asked for) counts its outcome.
fn subscribe_reply(
    state: Arc<AppState>,
    format: FrameFormat,
    id: u32,
    cap: usize,
    delta: bool,
    recovery: Option<u16>,
) -> starling_core::FirstFrame {
    Box::new(move |joined| {
        let encoding = WireEncoder::encoding(format);
        let reply = |recovered: Option<&Vec<Publication>>| {
            Reply::ok(
                id,
                ReplyBody::Subscribe(SubscribeResult {
                    epoch: joined.position.epoch.to_string(),
                    offset: joined.position.offset,
                    recoverable: joined.recoverable,
                    recovered: recovered.is_some(),
                    publications: recovered.cloned().unwrap_or_default(),
                    delta,
                }),
            )
        };
        let mut out = Vec::new();
        encode_reply(encoding, &reply(joined.recovered.as_ref()), &mut out);
        let mut outcome = match (&joined.recovered, joined.too_large) {
            (Some(_), _) => Recovery::Recovered,
            (None, true) => Recovery::TooLarge,
            (None, false) => Recovery::NotRecovered,
        };
        if joined.recovered.is_some() && out.len() > cap {
            out.clear();
            encode_reply(encoding, &reply(None), &mut out);
            state
                .hub
                .counters()
                .recoveries_too_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            outcome = Recovery::TooLarge;
        }
        if let Some(namespace) = recovery {
            state.metrics.recovery(namespace, outcome);
        }
        Some(state.encoder.frame(format, &out))
    })
}

/// A subscribe's outcome as the session records it, with refusals counted.
fn subscribed(
    state: &AppState,
    result: Result<(Arc<str>, starling_core::Joined), SubscribeError>,
) -> Result<Finished, Error> {
    match result {
        Ok((name, _)) => Ok(Finished::Subscribed(name)),
        Err(SubscribeError::AlreadySubscribed) => Err(codes::ALREADY_SUBSCRIBED.error()),
        Err(SubscribeError::ChannelLimit) => {
            state.metrics.refused(Limit::Channels);
            Err(codes::CHANNEL_LIMIT.error())
        }
        Err(SubscribeError::CreationLimit) => {
            state.metrics.refused(Limit::ChannelCreation);
            Err(creation_limit(state))
        }
        Err(SubscribeError::Unavailable(reason)) => Err(codes::SERVER_BUSY.with_message(format!(
            "the cluster broker cannot be reached ({reason}); retry"
        ))),
    }
}

fn creation_limit(state: &AppState) -> Error {
    codes::LIMIT_EXCEEDED.with_message(format!(
        "creating channels too fast: at most {} per second (client.channel_creation_rate)",
        state.config.client.channel_creation_rate
    ))
}

/// A publish refusal as the client sees it, counted.
fn publish_error(state: &AppState, e: PublishError) -> Error {
    match e {
        PublishError::ChannelLimit => {
            state.metrics.refused(Limit::Channels);
            codes::CHANNEL_LIMIT.error()
        }
        PublishError::CreationLimit => {
            state.metrics.refused(Limit::ChannelCreation);
            creation_limit(state)
        }
        PublishError::Overloaded | PublishError::NotPersisted => codes::SERVER_BUSY
            .with_message("the message log cannot take the publication now; retry"),
        PublishError::Unavailable(reason) => codes::SERVER_BUSY.with_message(format!(
            "the cluster broker cannot be reached ({reason}); retry"
        )),
        PublishError::IdempotencyConflict => codes::IDEMPOTENCY_CONFLICT.error(),
    }
}

fn engine_error(e: starling_core::engine::EngineError) -> Error {
    codes::SERVER_BUSY.with_message(format!("the cluster broker cannot be reached ({e}); retry"))
}

fn history_error(e: HistoryReadError) -> Error {
    match e {
        HistoryReadError::Disabled => codes::NOT_AVAILABLE.error(),
        HistoryReadError::Unrecoverable => codes::UNRECOVERABLE_POSITION.error(),
        HistoryReadError::Unavailable(reason) => codes::SERVER_BUSY.with_message(format!(
            "the cluster broker cannot be reached ({reason}); retry"
        )),
    }
}

#[cfg(test)]
mod size_tests {
    /// Every client connection holds one boxed session: jemalloc serves it from the
    /// 128-byte size class (the next are 160, then 192 and 224, where it was with the
    /// token's channel set inline, 160 with the subscription table and the expiry's tag
    /// inline). Keep it from growing into the next class unnoticed.
    #[test]
    fn session_fits_its_size_class() {
        let size = size_of::<super::Session>();
        assert!(size <= 128, "Session is {size} bytes");
    }
}
