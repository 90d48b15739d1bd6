//! A client session: the protocol commands of one connection, after the WebSocket layer.
//!
//! Commands decode from a message, run against the hub, and their replies leave in one
//! frame per incoming message (a batch in, a batch out). A frame that cannot be decoded
//! at all, or a command before `connect`, ends the session with a disconnect code.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use starling_core::{
    ClientKey, ConnectionBucket, FrameFormat, HistoryQuery, HistoryReadError, Outbox, PublishError,
    RecoverFrom, SubscribeError, Subscriber,
};
use starling_protocol::codes::{self, DisconnectCode};
use starling_protocol::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Encoding, Error, HistoryRequest,
    HistoryResult, Method, PresenceResult, PresenceStatsResult, Publication, PublishRequest,
    PublishResult, Reply, ReplyBody, SubscribeRequest, SubscribeResult, UnsubscribeResult,
    decode_commands, encode_reply,
};
use tracing::debug;

use crate::app::AppState;
use crate::auth::AuthError;
use crate::encoder::WireEncoder;
use crate::limits::Limit;

/// The authenticated side of a session.
#[derive(Debug)]
struct Identity {
    user: Arc<str>,
    info: Arc<ClientInfo>,
    /// Channels the token limits subscriptions to (`None`: no limit).
    allowed: Option<HashSet<String>>,
    /// Token expiry, seconds since the Unix epoch.
    expires_at: Option<u64>,
}

/// One connection's protocol state.
pub struct Session {
    key: ClientKey,
    state: Arc<AppState>,
    outbox: Arc<Outbox>,
    format: FrameFormat,
    identity: Option<Identity>,
    subscriptions: HashSet<Arc<str>>,
    /// Command budget (`client.command_rate`); `None` when unlimited.
    commands: Option<ConnectionBucket>,
    /// Channel-creation budget (`client.channel_creation_rate`); `None` when unlimited.
    creations: Option<ConnectionBucket>,
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
            subscriptions: HashSet::new(),
            commands,
            creations,
        }
    }

    /// Whether `connect` succeeded.
    pub fn connected(&self) -> bool {
        self.identity.is_some()
    }

    /// Time left until the connection token expires, if it does.
    pub fn expires_in(&self) -> Option<Duration> {
        let at = self.identity.as_ref()?.expires_at?;
        Some(Duration::from_secs(at.saturating_sub(now_secs())))
    }

    fn encoding(&self) -> Encoding {
        WireEncoder::encoding(self.format)
    }

    /// Handles one WebSocket message holding one or more commands.
    pub fn handle(&mut self, payload: &[u8]) -> Result<(), DisconnectCode> {
        let commands = decode_commands(self.encoding(), payload).map_err(|e| {
            debug!(key = self.key, "undecodable frame: {e}");
            codes::BAD_REQUEST_DISCONNECT
        })?;
        let mut out = Vec::new();
        let now = Instant::now();
        for command in commands {
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
                Ok(command) => self.dispatch(command, &mut out)?,
                Err(err) if !self.within_rate(now) => {
                    let reply = err.reply();
                    Some(Reply::error(reply.id, codes::TOO_MANY_REQUESTS))
                }
                Err(err) => Some(err.reply()),
            };
            if let Some(reply) = reply {
                if let Err(e) = &reply.body {
                    self.state.metrics.error(e.code);
                }
                encode_reply(self.encoding(), &reply, &mut out);
            }
        }
        self.flush(&mut out);
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
            self.outbox.push(self.state.encoder.frame(self.format, out));
            out.clear();
        }
    }

    /// Runs one command. `None` means no reply (a client pong). Replies that must precede
    /// later pushes (subscribe) are queued directly together with `out`.
    fn dispatch(
        &mut self,
        command: Command,
        out: &mut Vec<u8>,
    ) -> Result<Option<Reply>, DisconnectCode> {
        let id = command.id;
        let method = match command.method {
            Method::Connect(req) => return self.connect(id, req).map(Some),
            // A client heartbeat is fine at any time and never answered.
            Method::Pong => return Ok(None),
            other => other,
        };
        if self.identity.is_none() {
            return Err(codes::CONNECT_REQUIRED);
        }
        let body = match method {
            Method::Connect(_) | Method::Pong => return Ok(None),
            Method::Subscribe(req) => return Ok(self.subscribe(id, req, out)),
            Method::Unsubscribe(req) => {
                if let Some(name) = self.subscriptions.take(req.channel.as_str()) {
                    self.state.hub.unsubscribe(&name, self.key);
                }
                Ok(ReplyBody::Unsubscribe(UnsubscribeResult {}))
            }
            Method::Publish(req) => self.publish(req),
            Method::Presence(req) => self.presence(&req.channel, false),
            Method::PresenceStats(req) => self.presence(&req.channel, true),
            Method::History(req) => self.history(req),
            Method::Ping => Ok(ReplyBody::Ping),
        };
        Ok(Some(Reply { id, body }))
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
                        .then(|| claims.channels.into_iter().collect::<HashSet<_>>());
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
        let client = format!("{}-{:x}", self.state.node, self.key);
        let user: Arc<str> = Arc::from(user);
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
            expires_at,
        });
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

    fn subscribe(&mut self, id: u32, req: SubscribeRequest, out: &mut Vec<u8>) -> Option<Reply> {
        let error = |e: Error| Some(Reply::error(id, e));
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
        let subscriber = Subscriber {
            key: self.key,
            outbox: self.outbox.clone(),
            format: self.format,
            info,
        };
        let encoding = self.encoding();
        let state = self.state.clone();
        let format = self.format;
        let recover = req.recover.then(|| RecoverFrom {
            offset: req.offset.unwrap_or(0),
            epoch: req.epoch.clone().unwrap_or_default(),
            // A first, estimated bound that saves copying a hopeless recovery; the
            // encoded reply is measured below.
            max_bytes: self.state.config.client.max_queue_bytes,
        });
        let cap = self.reply_cap();
        let (creations, node) = (&mut self.creations, &*self.state);
        let mut may_create = || creation_allowed(creations, node);
        let result = state.hub.subscribe_limited(
            &req.channel,
            subscriber,
            rules.options.channel_options(),
            recover.as_ref(),
            &mut may_create,
            |joined| {
                let reply = |recovered: Option<&Vec<Publication>>| {
                    Reply::ok(
                        id,
                        ReplyBody::Subscribe(SubscribeResult {
                            epoch: joined.position.epoch.to_string(),
                            offset: joined.position.offset,
                            recoverable: joined.recoverable,
                            recovered: recovered.is_some(),
                            publications: recovered.cloned().unwrap_or_default(),
                        }),
                    )
                };
                let start = out.len();
                encode_reply(encoding, &reply(joined.recovered.as_ref()), out);
                if joined.recovered.is_some() && out.len() - start > cap {
                    // Queued, it could cut this very connection as a slow consumer (and
                    // again after every reconnect): not recovered, the client pages
                    // through history instead.
                    out.truncate(start);
                    encode_reply(encoding, &reply(None), out);
                    state
                        .hub
                        .counters()
                        .recoveries_too_large
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let frame = state.encoder.frame(format, out);
                out.clear();
                Some(frame)
            },
        );
        match result {
            Ok((name, _)) => {
                self.subscriptions.insert(name);
                None
            }
            Err(SubscribeError::AlreadySubscribed) => error(codes::ALREADY_SUBSCRIBED.error()),
            Err(SubscribeError::ChannelLimit) => {
                self.state.metrics.refused(Limit::Channels);
                error(codes::CHANNEL_LIMIT.error())
            }
            Err(SubscribeError::CreationLimit) => {
                self.state.metrics.refused(Limit::ChannelCreation);
                error(codes::LIMIT_EXCEEDED.with_message(format!(
                    "creating channels too fast: at most {} per second \
                     (client.channel_creation_rate)",
                    self.state.config.client.channel_creation_rate
                )))
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

    fn publish(&mut self, req: PublishRequest) -> Result<ReplyBody, Error> {
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
        // Publishing into a history namespace creates the channel (to keep the history):
        // the same per-connection creation budget as `subscribe`.
        let (creations, node) = (&mut self.creations, &*self.state);
        let mut may_create = || creation_allowed(creations, node);
        let published = self
            .state
            .hub
            .publish_limited(
                &req.channel,
                req.data,
                Some(identity.info.clone()),
                rules.options.channel_options(),
                false,
                &mut may_create,
            )
            .map_err(|e| match e {
                PublishError::ChannelLimit => {
                    self.state.metrics.refused(Limit::Channels);
                    codes::CHANNEL_LIMIT.error()
                }
                PublishError::CreationLimit => {
                    self.state.metrics.refused(Limit::ChannelCreation);
                    codes::LIMIT_EXCEEDED.with_message(format!(
                        "creating channels too fast: at most {} per second \
                         (client.channel_creation_rate)",
                        self.state.config.client.channel_creation_rate
                    ))
                }
                PublishError::Overloaded | PublishError::NotPersisted => codes::SERVER_BUSY
                    .with_message("the message log cannot take the publication now; retry"),
            })?;
        Ok(ReplyBody::Publish(PublishResult {
            offset: published.position.offset,
            epoch: published.position.epoch.to_string(),
        }))
    }

    fn presence(&self, channel: &str, stats: bool) -> Result<ReplyBody, Error> {
        let rules = self
            .state
            .namespaces
            .resolve(channel)
            .map_err(channel_error)?;
        if !rules.options.presence {
            return Err(
                codes::NOT_AVAILABLE.with_message("presence is disabled for this namespace")
            );
        }
        if !self.subscriptions.contains(channel) {
            return Err(codes::NOT_SUBSCRIBED.with_message("subscribe to the channel first"));
        }
        if stats {
            let (clients, users) = self.state.hub.presence_stats(channel);
            return Ok(ReplyBody::PresenceStats(PresenceStatsResult {
                num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
                num_users: u32::try_from(users).unwrap_or(u32::MAX),
            }));
        }
        // A snapshot shared until the membership changes; the reply is built from it
        // outside the channel's lock.
        let infos = self.state.hub.presence(channel);
        let clients: BTreeMap<String, ClientInfo> = infos
            .iter()
            .map(|i| (i.client.clone(), (**i).clone()))
            .collect();
        Ok(ReplyBody::Presence(PresenceResult { clients }))
    }

    fn history(&self, req: HistoryRequest) -> Result<ReplyBody, Error> {
        let rules = self
            .state
            .namespaces
            .resolve(&req.channel)
            .map_err(channel_error)?;
        if !rules.options.history.enabled() {
            return Err(codes::NOT_AVAILABLE.with_message("history is not kept for this namespace"));
        }
        if !self.subscriptions.contains(req.channel.as_str()) {
            return Err(codes::NOT_SUBSCRIBED.with_message("subscribe to the channel first"));
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
        match self
            .state
            .hub
            .history(&req.channel, query, epoch, rules.options.channel_options())
        {
            Ok((publications, position)) => Ok(ReplyBody::History(HistoryResult {
                publications,
                epoch: position.epoch.to_string(),
                offset: position.offset,
            })),
            Err(HistoryReadError::Disabled) => Err(codes::NOT_AVAILABLE.error()),
            Err(HistoryReadError::Unrecoverable) => Err(codes::UNRECOVERABLE_POSITION.error()),
        }
    }

    /// Leaves every channel (the connection is closing).
    pub fn close(&mut self) {
        for name in self.subscriptions.drain() {
            self.state.hub.unsubscribe(&name, self.key);
        }
    }
}
