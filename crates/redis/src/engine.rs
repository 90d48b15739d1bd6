//! [`RedisEngine`]: the engine traits over the shards.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{FromRedisValue, Script, ScriptInvocation, Value};
use starling_core::engine::{
    Accepted, Broker, ControlBus, ControlMessage, EngineError, EngineHandler, HistoryPage,
    NodeInfo, PresenceStore, PublishRequest, Step,
};
use starling_core::history::History;
use starling_core::hub::StreamPosition;
use starling_core::{HistoryPolicy, HistoryQuery};
use starling_protocol::{ClientInfo, Publication};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec;
use crate::hash::shard_of;
use crate::scripts;
use crate::shard::{KeyWrite, Names, Shard, Shared, SubRequest, bounded};
use crate::{RedisConfig, RedisCounters, RedisError};

/// Gives the node's counts for its heartbeats.
pub type NodeInfoProvider = Arc<dyn Fn() -> NodeInfo + Send + Sync>;

/// Most entries one history read asks Redis for (bounds the script's work).
const MAX_HISTORY_READ: usize = 10_000;

/// The Redis engine (see the crate docs).
pub struct RedisEngine {
    shared: Arc<Shared>,
    shards: Vec<Arc<Shard>>,
    shutdown: watch::Sender<bool>,
    started: AtomicBool,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("node", &self.shared.config.node)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// A fresh random epoch (16 hex digits; never contains a space, the message separator).
fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = RandomState::new().hash_one((std::time::SystemTime::now(), n, std::process::id()));
    format!("{h:016x}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A reply that does not have the shape the script returns.
fn bad_reply(what: &str) -> EngineError {
    EngineError::Broker(format!("unexpected reply to {what}"))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The offset of a stream entry id `<offset>-0`.
fn entry_offset(v: &Value) -> Option<u64> {
    let id = as_bytes(v)?;
    let id = std::str::from_utf8(id).ok()?;
    id.split_once('-')?.0.parse().ok()
}

impl RedisEngine {
    /// Connects to every shard; fails with the first unreachable one. Call
    /// [`RedisEngine::start`] before using it.
    pub async fn connect(config: RedisConfig) -> Result<Arc<RedisEngine>, RedisError> {
        if config.addresses.is_empty() {
            return Err(RedisError::Config("no redis address".into()));
        }
        if config.prefix.is_empty() || config.prefix.contains(['{', '}']) {
            return Err(RedisError::Config(
                "the key prefix must be non-empty without '{' or '}'".into(),
            ));
        }
        if config.node.is_empty() {
            return Err(RedisError::Config("the node name is empty".into()));
        }
        let durations = [
            config.command_timeout,
            config.probe_interval,
            config.presence_ttl,
            config.heartbeat_interval,
            config.quiet_keep,
        ];
        if durations.iter().any(Duration::is_zero) {
            return Err(RedisError::Config(
                "timeouts, intervals, the presence ttl and the quiet keep must be positive".into(),
            ));
        }
        let shared = Arc::new(Shared {
            names: Names::new(&config.prefix),
            counters: Arc::new(RedisCounters::default()),
            config,
        });
        let mut shards = Vec::with_capacity(shared.config.addresses.len());
        if shared.config.cluster {
            shards.push(Shard::cluster(&shared.config.addresses, &shared.config)?);
        } else {
            for (i, address) in shared.config.addresses.iter().enumerate() {
                shards.push(Shard::single(i, address, &shared.config)?);
            }
        }
        let shards: Vec<Arc<Shard>> = shards.into_iter().map(Arc::new).collect();
        for shard in &shards {
            shard.connect(&shared).await?;
            shard.mark_up();
        }
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Self {
            shared,
            shards,
            shutdown,
            started: AtomicBool::new(false),
        }))
    }

    /// Spawns the per-shard tasks (pub/sub delivery and link supervision, subscribe
    /// batching, presence writes and refreshes) and the heartbeat task, which sends
    /// `node_info()` every [`RedisConfig::heartbeat_interval`]. Call once, inside a tokio
    /// runtime; later calls do nothing.
    pub fn start(self: &Arc<Self>, handler: Arc<dyn EngineHandler>, node_info: NodeInfoProvider) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for shard in &self.shards {
            let rx = || self.shutdown.subscribe();
            tokio::spawn(
                shard
                    .clone()
                    .supervise(self.shared.clone(), handler.clone(), rx()),
            );
            tokio::spawn(shard.clone().batch_requests(self.shared.clone(), rx()));
            tokio::spawn(shard.clone().write_keys(self.shared.clone(), rx()));
        }
        let engine = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        let period = self.shared.config.heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let sent = engine
                    .send(ControlMessage::Heartbeat(node_info()))
                    .wait()
                    .await;
                if let Err(e) = sent {
                    RedisCounters::add(&engine.shared.counters.heartbeat_failures, 1);
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
        });
    }

    /// Whether every shard's command and pub/sub links are up.
    pub fn healthy(&self) -> bool {
        self.shards.iter().all(|s| s.is_up())
    }

    /// Stops every task; calls fail with `Unavailable` afterwards. Presence entries of
    /// this node expire after the presence ttl.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for shard in &self.shards {
            shard.teardown();
        }
    }

    /// What the engine counted.
    pub fn counters(&self) -> &RedisCounters {
        &self.shared.counters
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// The shard index holding `channel`.
    pub fn shard_index(&self, channel: &str) -> usize {
        shard_of(channel, self.shards.len())
    }

    fn shard(&self, channel: &str) -> &Arc<Shard> {
        // shard_of is always < len (and len >= 1, checked in connect).
        &self.shards[self.shard_index(channel).min(self.shards.len() - 1)]
    }

    fn timeout(&self) -> Duration {
        self.shared.config.command_timeout
    }

    /// Runs `script` on `channel`'s shard within the command timeout; `Unavailable` at
    /// once while the shard is down.
    /// `finish` adds the arguments that depend on the server the command goes to (its
    /// incarnation, see [`crate::RestartEpochs`]).
    fn run_script<T: FromRedisValue + Send + 'static>(
        &self,
        channel: &str,
        mut script: ScriptInvocation<'static>,
        finish: impl FnOnce(&mut ScriptInvocation<'static>, &str),
    ) -> Step<Result<T, EngineError>> {
        let shard = self.shard(channel).clone();
        let (mut conn, incarnation) = match shard.command() {
            Ok(c) => c,
            Err(e) => return Step::Ready(Err(e)),
        };
        finish(&mut script, &incarnation);
        let timeout = self.timeout();
        Step::Pending(Box::pin(async move {
            bounded(&shard, timeout, script.invoke_async(&mut conn)).await
        }))
    }

    /// A presence script (`PRESENCE` or `STATS`) invocation for `channel`.
    fn presence_script(&self, channel: &str, script: &'static Script) -> ScriptInvocation<'static> {
        let keys = self.shared.names.presence_keys(channel);
        let mut inv = script.prepare_invoke();
        inv.key(&keys[0]).key(&keys[1]).key(&keys[2]);
        inv
    }

    /// Queues a presence write; a full queue is counted (the refresh repairs a lost
    /// join within a third of the ttl, a lost leave expires within the ttl).
    fn queue_presence(&self, channel: &str, op: KeyWrite) {
        if self.shard(channel).writes.try_send(op).is_err() {
            RedisCounters::add(&self.shared.counters.presence_failures, 1);
        }
    }
}

/// Reads the publish script's reply.
fn parse_accepted(reply: &[Value]) -> Result<Accepted, EngineError> {
    let [status, offset, epoch, receivers] = reply else {
        return Err(bad_reply("publish"));
    };
    let status = as_u64(status).ok_or_else(|| bad_reply("publish"))?;
    if status == 2 {
        return Err(EngineError::IdempotencyConflict);
    }
    Ok(Accepted {
        position: StreamPosition {
            offset: as_u64(offset).ok_or_else(|| bad_reply("publish"))?,
            epoch: as_string(epoch).ok_or_else(|| bad_reply("publish"))?.into(),
        },
        receivers: as_u64(receivers)
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(0),
        replayed: status == 1,
    })
}

impl Broker for RedisEngine {
    /// Publishes `J <client>` / `L <client>` on the channel's topic, in the background:
    /// best effort (a shard that is down loses it; presence itself is in the store).
    fn join_leave(&self, channel: &Arc<str>, join: bool, info: &Arc<ClientInfo>) {
        let shard = self.shard(channel).clone();
        let Ok((mut conn, _)) = shard.command() else {
            return;
        };
        let topic = self.shared.names.pub_channel(channel);
        let payload = codec::encode_join_leave(join, info);
        let timeout = self.timeout();
        tokio::spawn(async move {
            let mut publish = redis::cmd(shard.publish_command());
            publish.arg(topic).arg(payload);
            if let Err(e) = bounded(&shard, timeout, publish.query_async::<i64>(&mut conn)).await {
                tracing::debug!(error = %e, "join/leave not sent");
            }
        });
    }

    fn publish(&self, request: PublishRequest) -> Step<Result<Accepted, EngineError>> {
        let names = &self.shared.names;
        let channel = &*request.channel;
        let body = codec::encode_publication(&request.data, request.info.as_deref(), None);
        let (fingerprint, idem_key, idem_ttl) = match &request.idempotency {
            Some(i) => (
                i.fingerprint.to_string(),
                names.key(channel, &format!("idem:{}", i.key)),
                i.ttl_ms.max(1),
            ),
            None => (String::new(), names.key(channel, "idem:"), 0),
        };
        let mut inv = scripts::PUBLISH.prepare_invoke();
        inv.key(names.key(channel, "meta"))
            .key(names.key(channel, "stream"))
            .key(idem_key)
            .arg(body)
            .arg(new_epoch())
            .arg(request.history.size)
            .arg(request.history.ttl_ms)
            .arg(millis(self.shared.config.quiet_keep))
            .arg(fingerprint)
            .arg(idem_ttl)
            .arg(names.pub_channel(channel))
            .arg(self.shard(channel).publish_command());
        self.run_script::<Vec<Value>>(channel, inv, |inv, incarnation| {
            inv.arg(incarnation);
        })
        .map(|reply| parse_accepted(&reply?))
    }

    fn subscribe(&self, channel: &Arc<str>) -> Step<Result<(), EngineError>> {
        let shard = self.shard(channel).clone();
        if !shard.is_up() {
            return Step::Ready(Err(EngineError::Unavailable(format!(
                "redis shard {} is down",
                shard.address
            ))));
        }
        shard.want(channel);
        let (tx, rx) = oneshot::channel();
        match shard
            .requests
            .try_send(SubRequest::Subscribe(channel.clone(), tx))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                shard.unwant(channel);
                return Step::Ready(Err(EngineError::Busy));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                shard.unwant(channel);
                return Step::Ready(Err(EngineError::Unavailable("engine stopped".into())));
            }
        }
        // The batcher may wait for earlier batches: allow it two command timeouts.
        let timeout = self.timeout().saturating_mul(2);
        Step::Pending(Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(EngineError::Unavailable("engine stopped".into())),
                Err(_) => Err(EngineError::Unavailable(format!(
                    "redis shard {} did not confirm the subscription in time",
                    shard.address
                ))),
            }
        }))
    }

    fn unsubscribe(&self, channel: &Arc<str>) {
        let shard = self.shard(channel);
        shard.unwant(channel);
        // Queue full or stopped: the subscription stays until the next reconnect, which
        // only costs traffic.
        let _ = shard
            .requests
            .try_send(SubRequest::Unsubscribe(channel.clone()));
    }

    fn history(
        &self,
        channel: &Arc<str>,
        query: HistoryQuery,
        policy: HistoryPolicy,
    ) -> Step<Result<HistoryPage, EngineError>> {
        let names = &self.shared.names;
        // Mode and start id; a start beyond the id range reads the position only.
        let (mode, start) = if query.limit == 0 {
            ("p", String::new())
        } else if query.reverse {
            match query.since {
                None => ("r", "+".to_owned()),
                Some(since) => match since.checked_sub(1) {
                    Some(s) => ("r", format!("{s}-0")),
                    None => ("p", String::new()),
                },
            }
        } else {
            match query.since {
                None => ("f", "-".to_owned()),
                Some(since) => match since.checked_add(1) {
                    Some(s) => ("f", format!("{s}-0")),
                    None => ("p", String::new()),
                },
            }
        };
        let count = query.limit.min(MAX_HISTORY_READ);
        let mut inv = scripts::HISTORY.prepare_invoke();
        inv.key(names.key(channel, "meta"))
            .key(names.key(channel, "stream"))
            .arg(mode)
            .arg(start)
            .arg(count)
            .arg(policy.ttl_ms);
        let counters = self.shared.counters.clone();
        let keep = millis(self.shared.config.quiet_keep);
        self.run_script::<Vec<Value>>(channel, inv, move |inv, incarnation| {
            inv.arg(incarnation).arg(new_epoch()).arg(keep);
        })
        .map(move |reply| {
            let reply = reply?;
            let (head, entries) = reply
                .split_at_checked(2)
                .ok_or_else(|| bad_reply("history"))?;
            let epoch = as_string(&head[0]).ok_or_else(|| bad_reply("history"))?;
            let offset = as_u64(&head[1]).ok_or_else(|| bad_reply("history"))?;
            let mut publications = Vec::new();
            let mut first_offset = None;
            let mut bytes = 0usize;
            for pair in entries.chunks_exact(2) {
                let Some(o) = entry_offset(&pair[0]) else {
                    RedisCounters::add(&counters.decode_errors, 1);
                    continue;
                };
                let decoded = as_bytes(&pair[1])
                    .ok_or(codec::DecodeError::Truncated)
                    .and_then(|b| codec::decode_publication(b, o));
                let p: Publication = match decoded {
                    Ok(p) => p,
                    Err(_) => {
                        // A hole now: the page must not claim to be complete past it.
                        RedisCounters::add(&counters.decode_errors, 1);
                        break;
                    }
                };
                first_offset.get_or_insert(o);
                bytes = bytes.saturating_add(History::wire_bytes(&p));
                if bytes > query.max_bytes && !publications.is_empty() {
                    break;
                }
                publications.push(p);
            }
            let complete = if mode == "p" {
                query.since.map_or(offset == 0, |s| s == offset)
            } else if query.reverse {
                // Newest first: complete when it starts right before `since` (or at the
                // newest offset), or there is nothing before it.
                let expected = query
                    .since
                    .map_or(offset, |s| s.saturating_sub(1).min(offset));
                expected == 0 || first_offset == Some(expected)
            } else {
                let since = query.since.unwrap_or(0);
                since == offset || first_offset == since.checked_add(1)
            };
            Ok(HistoryPage {
                publications,
                position: StreamPosition {
                    offset,
                    epoch: epoch.into(),
                },
                complete,
            })
        })
    }
}

impl PresenceStore for RedisEngine {
    fn join(&self, channel: &Arc<str>, info: &Arc<ClientInfo>) {
        self.shard(channel).remember(channel, info);
        self.queue_presence(channel, KeyWrite::Join(channel.clone(), info.clone()));
    }

    fn leave(&self, channel: &Arc<str>, client: &str) {
        self.shard(channel).forget(channel, client);
        self.queue_presence(channel, KeyWrite::Leave(channel.clone(), client.to_owned()));
    }

    fn presence(&self, channel: &Arc<str>) -> Step<Result<Vec<ClientInfo>, EngineError>> {
        let inv = self.presence_script(channel, &scripts::PRESENCE);
        let counters = self.shared.counters.clone();
        self.run_script::<Vec<Vec<u8>>>(channel, inv, |_, _| {})
            .map(move |values| {
                Ok(values?
                    .iter()
                    .filter_map(|v| match codec::decode_client(v) {
                        Ok(info) => Some(info),
                        Err(_) => {
                            RedisCounters::add(&counters.decode_errors, 1);
                            None
                        }
                    })
                    .collect())
            })
    }

    fn stats(&self, channel: &Arc<str>) -> Step<Result<(usize, usize), EngineError>> {
        let inv = self.presence_script(channel, &scripts::STATS);
        self.run_script(channel, inv, |_, _| {})
    }
}

impl ControlBus for RedisEngine {
    fn send(&self, message: ControlMessage) -> Step<Result<(), EngineError>> {
        let shard = self.shards[0].clone();
        let (mut conn, _) = match shard.command() {
            Ok(c) => c,
            Err(e) => return Step::Ready(Err(e)),
        };
        let channel = self.shared.names.control.to_string();
        let payload = codec::encode_control(&message);
        let timeout = self.timeout();
        Step::Pending(Box::pin(async move {
            let mut publish = redis::cmd(shard.publish_command());
            publish.arg(channel).arg(payload);
            bounded(&shard, timeout, publish.query_async::<i64>(&mut conn))
                .await
                .map(|_| ())
        }))
    }
}
