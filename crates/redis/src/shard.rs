//! One Redis server (or one Redis Cluster): its two links, their supervision, the
//! subscribe batcher and the background key writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::cluster::ClusterClientBuilder;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, PushInfo, PushKind, RedisResult, Value,
};
use starling_core::engine::{EngineError, EngineHandler};
use starling_protocol::ClientInfo;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::codec;
use crate::link::{self, Link};
use crate::scripts;
use crate::{RedisConfig, RedisCounters, RedisError, RestartEpochs};

/// Longest pause between reconnect attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Background key writes sent in one pipeline.
const WRITE_BATCH: usize = 256;

/// Where a subscribe's confirmation goes.
pub type Confirm = oneshot::Sender<Result<(), EngineError>>;

/// Presence entries by (channel, client).
type Joined = HashMap<(Arc<str>, String), Arc<ClientInfo>>;

/// A subscribe-side request, queued so that one task sends them in order and batched.
pub enum SubRequest {
    /// Subscribe the channel; answer when Redis confirmed.
    Subscribe(Arc<str>, Confirm),
    /// Unsubscribe the channel.
    Unsubscribe(Arc<str>),
}

/// A background key write, queued so that writes of one shard apply in order.
pub enum KeyWrite {
    /// Add or refresh a presence entry.
    Join(Arc<str>, Arc<ClientInfo>),
    /// Remove a presence entry.
    Leave(Arc<str>, String),
    /// Extend the channel meta's expiry to the quiet keep (never shorten it): a channel
    /// some node subscribes keeps its epoch however quiet it is.
    KeepEpoch(Arc<str>),
}

/// Names of keys and pub/sub channels.
#[derive(Debug, Clone)]
pub struct Names {
    /// The key prefix.
    pub prefix: Arc<str>,
    /// The control bus channel.
    pub control: Arc<str>,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
            control: format!("{prefix}:control").into(),
        }
    }

    /// `<prefix>:{<channel>}:<suffix>`.
    pub fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.prefix)
    }

    /// The pub/sub channel carrying `channel`'s publications.
    pub fn pub_channel(&self, channel: &str) -> String {
        self.key(channel, "pub")
    }

    /// The channel of a pub/sub channel name, when it is one of ours.
    pub fn channel_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(&*self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:pub")
    }

    /// The presence keys of `channel`: info hash, users hash, expiry sorted set.
    pub fn presence_keys(&self, channel: &str) -> [String; 3] {
        [
            self.key(channel, "presence"),
            self.key(channel, "presence:users"),
            self.key(channel, "presence:expiry"),
        ]
    }
}

/// Settings every shard task reads.
pub struct Shared {
    /// The configuration.
    pub config: RedisConfig,
    /// Key and channel names.
    pub names: Names,
    /// What the engine counts.
    pub counters: Arc<RedisCounters>,
}

/// One Redis server (or one Redis Cluster).
pub struct Shard {
    /// Position in the address list.
    pub index: usize,
    /// The address without credentials, for messages.
    pub address: String,
    target: Target,
    /// The command link and the incarnation to pass to scripts (see `incarnation`),
    /// read together so they always belong to the same server.
    cmd: RwLock<Option<(Link, Arc<str>)>>,
    pubsub: RwLock<Option<Link>>,
    up: AtomicBool,
    /// Channels this node wants from this shard (the set resubscribed after a reconnect).
    channels: Mutex<HashSet<Arc<str>>>,
    /// Presence entries this node joined here: refreshed until left.
    joined: Mutex<Joined>,
    /// Subscribe/unsubscribe requests for the batcher.
    pub requests: mpsc::Sender<SubRequest>,
    requests_rx: Mutex<Option<mpsc::Receiver<SubRequest>>>,
    /// Background key writes for the writer.
    pub writes: mpsc::Sender<KeyWrite>,
    writes_rx: Mutex<Option<mpsc::Receiver<KeyWrite>>>,
    pushes: mpsc::Sender<PushInfo>,
    pushes_rx: Mutex<Option<mpsc::Receiver<PushInfo>>>,
    /// Incremented per pub/sub connection, so a stale link's disconnection is ignored.
    generation: AtomicU64,
    /// The generation whose link reported its loss.
    lost: Arc<AtomicU64>,
    /// Pushes were dropped (queue full): the shard's channels need a resync.
    overflow: Arc<AtomicBool>,
    /// Someone saw a link fail: probe now.
    suspect: Arc<Notify>,
}

/// What a shard connects to.
enum Target {
    /// One server.
    Single(Client),
    /// The seed nodes of a Redis Cluster.
    Cluster(Vec<ConnectionInfo>),
}

/// RESP3 connection settings for `address`: pub/sub messages arrive as pushes on an
/// ordinary connection.
fn resp3(address: &str) -> Result<ConnectionInfo, RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(address)
        .map_err(|e| RedisError::Config(format!("address {}: {e}", redact(address))))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

/// The incarnation a server's scripts get (see [`RestartEpochs`]): its `run_id` (new at
/// every start, different on a replica), `c:` prefixed when metas written by another
/// run must start a new epoch, `n:` when it is only recorded (restarts lose nothing).
/// Every node records the `run_id`, so nodes that disagree on the rule cannot make
/// epochs flap.
async fn incarnation(conn: &mut Link, rule: RestartEpochs) -> RedisResult<String> {
    let durable = match rule {
        RestartEpochs::Never => true,
        RestartEpochs::Always => false,
        RestartEpochs::Auto => {
            // CONFIG may be disabled (managed Redis): then assume the worst.
            let get = |name: &str| {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg(name);
                cmd
            };
            let aof: RedisResult<HashMap<String, String>> =
                get("appendonly").query_async(conn).await;
            let fsync: RedisResult<HashMap<String, String>> =
                get("appendfsync").query_async(conn).await;
            matches!((aof, fsync), (Ok(a), Ok(f))
                if a.get("appendonly").is_some_and(|v| v == "yes")
                    && f.get("appendfsync").is_some_and(|v| v == "always"))
        }
    };
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let check = if durable { "n" } else { "c" };
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| format!("{check}:{}", id.trim()))
        .ok_or_else(|| redis::RedisError::from(std::io::Error::other("INFO server has no run_id")))
}

/// `address` without its credentials (`redis://user:secret@host` becomes
/// `redis://***@host`), for logs and error messages.
pub fn redact(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => address.to_owned(),
    }
}

/// Runs `f` within `timeout`; network failures and timeouts are `Unavailable` and make
/// the shard probe its links.
pub async fn bounded<T>(
    shard: &Shard,
    timeout: Duration,
    f: impl Future<Output = RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(timeout, f).await {
        Err(_) => {
            shard.suspect.notify_one();
            Err(EngineError::Unavailable(format!(
                "redis shard {} did not answer in {timeout:?}",
                shard.address
            )))
        }
        Ok(Err(e)) => {
            let e = map_error(&shard.address, &e);
            if matches!(e, EngineError::Unavailable(_)) {
                shard.suspect.notify_one();
            }
            Err(e)
        }
        Ok(Ok(v)) => Ok(v),
    }
}

/// Temporary failures (link down, server loading or failing over) are `Unavailable`,
/// everything else a broker error.
pub fn map_error(address: &str, e: &redis::RedisError) -> EngineError {
    let temporary = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY")
        );
    if temporary {
        EngineError::Unavailable(format!("redis shard {address}: {e}"))
    } else {
        EngineError::Broker(format!("redis shard {address}: {e}"))
    }
}

/// A random fraction in [0.5, 1) for backoff jitter.
fn jitter() -> f64 {
    let r = RandomState::new().hash_one(std::time::SystemTime::now());
    0.5 + (r % 1000) as f64 / 2000.0
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(6));
    exp.min(BACKOFF_CAP).mul_f64(jitter())
}

impl Shard {
    /// A shard for `address`, not connected yet.
    pub fn single(index: usize, address: &str, config: &RedisConfig) -> Result<Self, RedisError> {
        let client = Client::open(resp3(address)?)
            .map_err(|e| RedisError::Config(format!("address {}: {e}", redact(address))))?;
        Ok(Self::new(
            index,
            redact(address),
            Target::Single(client),
            config,
        ))
    }

    /// The one shard of a Redis Cluster reached through `seeds`, not connected yet.
    pub fn cluster(seeds: &[String], config: &RedisConfig) -> Result<Self, RedisError> {
        let infos = seeds
            .iter()
            .map(|a| resp3(a))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = seeds.iter().map(|a| redact(a)).collect();
        Ok(Self::new(
            0,
            names.join(","),
            Target::Cluster(infos),
            config,
        ))
    }

    fn new(index: usize, address: String, target: Target, config: &RedisConfig) -> Self {
        let (requests, requests_rx) = mpsc::channel(config.request_queue.max(1));
        let (writes, writes_rx) = mpsc::channel(config.presence_queue.max(1));
        let (pushes, pushes_rx) = mpsc::channel(config.pubsub_queue.max(1));
        Self {
            index,
            address,
            target,
            cmd: RwLock::new(None),
            pubsub: RwLock::new(None),
            up: AtomicBool::new(false),
            channels: Mutex::new(HashSet::new()),
            joined: Mutex::new(HashMap::new()),
            requests,
            requests_rx: Mutex::new(Some(requests_rx)),
            writes,
            writes_rx: Mutex::new(Some(writes_rx)),
            pushes,
            pushes_rx: Mutex::new(Some(pushes_rx)),
            generation: AtomicU64::new(0),
            lost: Arc::new(AtomicU64::new(0)),
            overflow: Arc::new(AtomicBool::new(false)),
            suspect: Arc::new(Notify::new()),
        }
    }

    /// The publish command: sharded on a cluster.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Whether this is a Redis Cluster (which reconnects its nodes by itself).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Whether both links are up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The command connection, or `Unavailable` at once while the shard is down.
    pub fn command(&self) -> Result<(Link, Arc<str>), EngineError> {
        if !self.is_up() {
            return Err(self.down());
        }
        self.cmd.read().clone().ok_or_else(|| self.down())
    }

    fn down(&self) -> EngineError {
        EngineError::Unavailable(format!("redis shard {} is down", self.address))
    }

    /// Marks `channel` wanted (resubscribed after reconnects).
    pub fn want(&self, channel: &Arc<str>) {
        self.channels.lock().insert(channel.clone());
    }

    /// Marks `channel` no longer wanted.
    pub fn unwant(&self, channel: &str) {
        self.channels.lock().remove(channel);
    }

    fn wanted(&self) -> Vec<Arc<str>> {
        self.channels.lock().iter().cloned().collect()
    }

    /// Remembers a presence entry for refreshing.
    pub fn remember(&self, channel: &Arc<str>, info: &Arc<ClientInfo>) {
        self.joined
            .lock()
            .insert((channel.clone(), info.client.clone()), info.clone());
    }

    /// Forgets a presence entry.
    pub fn forget(&self, channel: &Arc<str>, client: &str) {
        self.joined
            .lock()
            .remove(&(channel.clone(), client.to_owned()));
    }

    /// Opens both links (command, then pub/sub) and installs them.
    pub async fn connect(&self, shared: &Shared) -> Result<(), RedisError> {
        let timeout = shared.config.command_timeout;
        let unreachable = |reason: String| RedisError::Unreachable {
            address: self.address.clone(),
            reason,
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let pushes = self.pushes.clone();
        let lost = self.lost.clone();
        let overflow = self.overflow.clone();
        let suspect = self.suspect.clone();
        let counters = shared.counters.clone();
        let sender = move |info: PushInfo| -> Result<(), ()> {
            if info.kind == PushKind::Disconnection {
                // Recorded apart from the queue, so a full queue cannot hide it.
                lost.store(generation, Ordering::Release);
                suspect.notify_one();
                return Ok(());
            }
            match pushes.try_send(info) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    RedisCounters::add(&counters.dropped_messages, 1);
                    overflow.store(true, Ordering::Release);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            }
        };
        let fail = |e: redis::RedisError| unreachable(e.to_string());
        let (mut cmd, mut pubsub) = match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let cmd = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(fail)?;
                let pubsub = client
                    .get_multiplexed_async_connection_with_config(&config.set_push_sender(sender))
                    .await
                    .map_err(fail)?;
                (Link::Single(cmd), Link::Single(pubsub))
            }
            Target::Cluster(seeds) => {
                // One retry: the command timeout bounds every call anyway.
                let builder = || {
                    ClusterClientBuilder::new(seeds.clone())
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(1)
                };
                let cmd = builder().build().map_err(fail)?;
                let pubsub = builder().push_sender(sender).build().map_err(fail)?;
                let cmd = tokio::time::timeout(timeout, cmd.get_async_connection())
                    .await
                    .map_err(|_| unreachable("cluster connect timed out".into()))?
                    .map_err(fail)?;
                let pubsub = tokio::time::timeout(timeout, pubsub.get_async_connection())
                    .await
                    .map_err(|_| unreachable("cluster connect timed out".into()))?
                    .map_err(fail)?;
                (Link::Cluster(cmd), Link::Cluster(pubsub))
            }
        };
        // Both links must answer before the shard counts as up.
        for conn in [&mut cmd, &mut pubsub] {
            let pong: RedisResult<Value> = redis::cmd("PING").query_async(conn).await;
            pong.map_err(|e| unreachable(e.to_string()))?;
        }
        if self.index == 0 {
            // The control bus rides on shard 0's link from the start.
            let names = [shared.names.control.to_string()];
            let control = pubsub.subscribe(&names);
            tokio::time::timeout(timeout, control)
                .await
                .map_err(|_| unreachable("control subscription timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let incarnation = match &cmd {
            Link::Single(_) => incarnation(&mut cmd, shared.config.restart_epochs)
                .await
                .map_err(|e| unreachable(e.to_string()))?,
            // A cluster connection spreads commands over nodes: no one server identity.
            Link::Cluster(_) => String::new(),
        };
        *self.cmd.write() = Some((cmd, incarnation.into()));
        *self.pubsub.write() = Some(pubsub);
        Ok(())
    }

    /// Marks the shard up (after the first connect, before any channel is wanted).
    pub fn mark_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// Marks the shard down and drops its links.
    pub fn teardown(&self) {
        self.up.store(false, Ordering::Release);
        *self.cmd.write() = None;
        *self.pubsub.write() = None;
    }

    /// Subscribes `names` on the pub/sub link, in batches.
    async fn subscribe_all(&self, shared: &Shared, names: &[String]) -> Result<(), EngineError> {
        let conn = self.pubsub.read().clone();
        let Some(mut conn) = conn else {
            return Err(self.down());
        };
        for batch in names.chunks(shared.config.subscribe_batch.max(1)) {
            bounded(self, shared.config.command_timeout, conn.subscribe(batch)).await?;
        }
        Ok(())
    }

    /// PINGs both links.
    async fn probe(&self, shared: &Shared) -> Result<(), EngineError> {
        let links = [
            self.cmd.read().as_ref().map(|(link, _)| link.clone()),
            self.pubsub.read().clone(),
        ];
        for conn in links {
            let Some(mut conn) = conn else {
                return Err(self.down());
            };
            let ping = async move { redis::cmd("PING").query_async::<Value>(&mut conn).await };
            bounded(self, shared.config.command_timeout, ping).await?;
        }
        // A cluster connection reconnects its nodes itself; a single link is dead.
        if !self.is_cluster()
            && self.lost.load(Ordering::Acquire) == self.generation.load(Ordering::Acquire)
        {
            return Err(self.down());
        }
        Ok(())
    }

    /// Keeps the links up and delivers pub/sub messages until shutdown.
    pub async fn supervise(
        self: Arc<Self>,
        shared: Arc<Shared>,
        handler: Arc<dyn EngineHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut pushes) = self.pushes_rx.lock().take() else {
            return;
        };
        let mut attempt = 0u32;
        let mut connected_before = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let linked = self.cmd.read().is_some() && self.pubsub.read().is_some();
            // Bounded as a whole: a server that accepts but never answers must not
            // hold the loop.
            let limit = shared.config.command_timeout.saturating_mul(3);
            let ready = if linked {
                Ok(())
            } else {
                match tokio::time::timeout(limit, self.connect(&shared)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(EngineError::Unavailable(e.to_string())),
                    Err(_) => Err(EngineError::Unavailable(format!(
                        "redis shard {} did not connect in {limit:?}",
                        self.address
                    ))),
                }
            };
            let channels = self.wanted();
            let ready = match ready {
                Ok(()) => {
                    let names: Vec<String> = channels
                        .iter()
                        .map(|c| shared.names.pub_channel(c))
                        .collect();
                    self.subscribe_all(&shared, &names).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = ready {
                self.teardown();
                let pause = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(shard = %self.address, error = %e, ?pause, "redis shard down, reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            attempt = 0;
            self.overflow.store(false, Ordering::Release);
            self.up.store(true, Ordering::Release);
            if connected_before {
                RedisCounters::add(&shared.counters.reconnects, 1);
                tracing::info!(shard = %self.address, channels = channels.len(), "redis shard back, resyncing");
                handler.resync(Some(&channels));
            }
            connected_before = true;
            let stop = self
                .run(&shared, handler.as_ref(), &mut pushes, &mut shutdown)
                .await;
            self.teardown();
            if stop {
                return;
            }
        }
    }

    /// Delivers messages and probes until a link fails (false) or shutdown (true).
    async fn run(
        &self,
        shared: &Shared,
        handler: &dyn EngineHandler,
        pushes: &mut mpsc::Receiver<PushInfo>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut probe = tokio::time::interval(shared.config.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        loop {
            tokio::select! {
                // Link checks first: a flood of messages must not starve them.
                biased;
                _ = shutdown.changed() => return true,
                _ = self.suspect.notified() => {
                    if !self.recheck(shared, handler).await {
                        return false;
                    }
                }
                _ = probe.tick() => {
                    if let Err(e) = self.probe(shared).await {
                        tracing::warn!(shard = %self.address, error = %e, "redis link probe failed");
                        return false;
                    }
                }
                push = pushes.recv() => {
                    let Some(info) = push else { return true };
                    self.on_push(shared, handler, info);
                }
            }
        }
    }

    /// Handles one push message from the pub/sub link.
    fn on_push(&self, shared: &Shared, handler: &dyn EngineHandler, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => deliver(shared, handler, info.data),
            // The server drops sharded subscriptions of a slot that moved: a wanted
            // channel must be subscribed again.
            PushKind::SUnsubscribe
                if self.is_cluster() && self.unsubscribed_wanted(shared, &info.data) =>
            {
                self.lost
                    .store(self.generation.load(Ordering::Acquire), Ordering::Release);
                self.suspect.notify_one();
            }
            _ => {}
        }
        if self.overflow.swap(false, Ordering::AcqRel) {
            handler.resync(Some(&self.wanted()));
        }
    }

    /// After a suspected failure: whether the links still work. A cluster connection
    /// that lost a node (or a slot) and is back gets its channels subscribed again and
    /// resynced.
    async fn recheck(&self, shared: &Shared, handler: &dyn EngineHandler) -> bool {
        if let Err(e) = self.probe(shared).await {
            tracing::warn!(shard = %self.address, error = %e, "redis link lost");
            return false;
        }
        if self.is_cluster() && self.lost.swap(0, Ordering::AcqRel) != 0 {
            let channels = self.wanted();
            let names: Vec<String> = channels
                .iter()
                .map(|c| shared.names.pub_channel(c))
                .collect();
            if let Err(e) = self.subscribe_all(shared, &names).await {
                tracing::warn!(shard = %self.address, error = %e, "resubscribe failed");
                return false;
            }
            RedisCounters::add(&shared.counters.reconnects, 1);
            handler.resync(Some(&channels));
        }
        true
    }

    /// Whether an unsubscribe push names a channel this node still wants.
    fn unsubscribed_wanted(&self, shared: &Shared, data: &[Value]) -> bool {
        let Some(Value::BulkString(name)) = data.first() else {
            return false;
        };
        let Some(channel) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| shared.names.channel_of(n))
        else {
            return false;
        };
        self.channels.lock().contains(channel)
    }

    /// Sends queued subscribe/unsubscribe requests, batching consecutive ones of a kind.
    pub async fn batch_requests(
        self: Arc<Self>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.requests_rx.lock().take() else {
            return;
        };
        let max = shared.config.subscribe_batch.max(1);
        loop {
            let first = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = shutdown.changed() => return,
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut subs = Vec::new();
            let mut unsubs = Vec::new();
            for r in batch {
                match r {
                    SubRequest::Subscribe(c, tx) => {
                        if !unsubs.is_empty() {
                            self.unsubscribe_now(&shared, std::mem::take(&mut unsubs))
                                .await;
                        }
                        subs.push((c, tx));
                    }
                    SubRequest::Unsubscribe(c) => {
                        if !subs.is_empty() {
                            self.subscribe_now(&shared, std::mem::take(&mut subs)).await;
                        }
                        unsubs.push(c);
                    }
                }
            }
            self.subscribe_now(&shared, subs).await;
            self.unsubscribe_now(&shared, unsubs).await;
        }
    }

    async fn subscribe_now(&self, shared: &Shared, subs: Vec<(Arc<str>, Confirm)>) {
        if subs.is_empty() {
            return;
        }
        let names: Vec<String> = subs
            .iter()
            .map(|(c, _)| shared.names.pub_channel(c))
            .collect();
        let result = self.subscribe_all(shared, &names).await;
        for (channel, tx) in subs {
            if result.is_err() {
                // Not subscribed: not resubscribed later either.
                self.unwant(&channel);
            }
            let _ = tx.send(result.clone());
        }
    }

    async fn unsubscribe_now(&self, shared: &Shared, channels: Vec<Arc<str>>) {
        if channels.is_empty() {
            return;
        }
        let conn = self.pubsub.read().clone();
        let Some(mut conn) = conn else { return };
        let names: Vec<String> = channels
            .iter()
            .map(|c| shared.names.pub_channel(c))
            .collect();
        // A lost unsubscribe costs only traffic (contract); a reconnect drops it anyway.
        if let Err(e) = bounded(
            self,
            shared.config.command_timeout,
            conn.unsubscribe(&names),
        )
        .await
        {
            tracing::debug!(shard = %self.address, error = %e, "unsubscribe failed");
        }
    }

    /// Writes queued presence joins/leaves in pipelines, refreshes this node's presence
    /// entries every third of the presence ttl and the metas of its channels every
    /// third of the quiet keep.
    pub async fn write_keys(
        self: Arc<Self>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.writes_rx.lock().take() else {
            return;
        };
        let every = |ttl: Duration| {
            let mut t = tokio::time::interval_at(
                tokio::time::Instant::now() + ttl / 3,
                (ttl / 3).max(Duration::from_millis(10)),
            );
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut refresh = every(shared.config.presence_ttl);
        let mut keep = every(shared.config.quiet_keep);
        loop {
            let ops = tokio::select! {
                op = rx.recv() => {
                    let Some(op) = op else { return };
                    let mut ops = vec![op];
                    while ops.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(op) => ops.push(op),
                            Err(_) => break,
                        }
                    }
                    ops
                }
                _ = refresh.tick() => {
                    let joined: Vec<KeyWrite> = self
                        .joined
                        .lock()
                        .iter()
                        .map(|((c, _), info)| KeyWrite::Join(c.clone(), info.clone()))
                        .collect();
                    joined
                }
                _ = keep.tick() => self.wanted().into_iter().map(KeyWrite::KeepEpoch).collect(),
                _ = shutdown.changed() => return,
            };
            for chunk in ops.chunks(WRITE_BATCH) {
                let n = chunk.len() as u64;
                if let Err(e) = self.write_pipeline(&shared, chunk).await {
                    RedisCounters::add(&shared.counters.presence_failures, n);
                    tracing::warn!(shard = %self.address, error = %e, ops = n, "key writes failed");
                }
            }
        }
    }

    /// Writes `ops` in order, in one pipeline (on a cluster: one per slot, concurrently,
    /// as a pipeline may not cross slots).
    async fn write_pipeline(&self, shared: &Shared, ops: &[KeyWrite]) -> Result<(), EngineError> {
        let ttl_ms = u64::try_from(shared.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let keep_ms = u64::try_from(shared.config.quiet_keep.as_millis()).unwrap_or(u64::MAX);
        let mut pipes: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
        for op in ops {
            let channel = match op {
                KeyWrite::Join(c, _) | KeyWrite::Leave(c, _) | KeyWrite::KeepEpoch(c) => c,
            };
            let slot = if self.is_cluster() {
                link::slot(channel.as_bytes())
            } else {
                0
            };
            let pipe = pipes.entry(slot).or_default();
            match op {
                KeyWrite::Join(channel, info) => {
                    let keys = shared.names.presence_keys(channel);
                    let mut inv = scripts::JOIN.prepare_invoke();
                    inv.key(&keys[0]).key(&keys[1]).key(&keys[2]);
                    inv.arg(&info.client)
                        .arg(codec::encode_client(info))
                        .arg(&info.user)
                        .arg(ttl_ms);
                    pipe.invoke_script(&inv).ignore();
                }
                KeyWrite::Leave(channel, client) => {
                    let keys = shared.names.presence_keys(channel);
                    pipe.hdel(&keys[0], client).ignore();
                    pipe.hdel(&keys[1], client).ignore();
                    pipe.zrem(&keys[2], client).ignore();
                }
                KeyWrite::KeepEpoch(channel) => {
                    pipe.cmd("PEXPIRE")
                        .arg(shared.names.key(channel, "meta"))
                        .arg(keep_ms)
                        .arg("GT")
                        .ignore();
                }
            }
        }
        let (conn, _) = self.command()?;
        let mut tasks = tokio::task::JoinSet::new();
        for pipe in pipes.into_values() {
            let mut conn = conn.clone();
            tasks.spawn(async move {
                match pipe.query_async::<()>(&mut conn).await {
                    // The script cache was emptied (restart, SCRIPT FLUSH): load, retry.
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        scripts::JOIN.prepare_invoke().load_async(&mut conn).await?;
                        pipe.query_async::<()>(&mut conn).await
                    }
                    other => other,
                }
            });
        }
        // Dropping the set on a timeout aborts what is left.
        let all = async move {
            let mut result = Ok(());
            while let Some(done) = tasks.join_next().await {
                let done = done.unwrap_or_else(|e| {
                    Err(redis::RedisError::from(std::io::Error::other(
                        e.to_string(),
                    )))
                });
                if result.is_ok() {
                    result = done;
                }
            }
            result
        };
        bounded(self, shared.config.command_timeout, all).await
    }
}

/// Hands one pub/sub message to the handler; undecodable messages are counted and
/// skipped.
fn deliver(shared: &Shared, handler: &dyn EngineHandler, data: Vec<Value>) {
    let mut it = data.into_iter();
    let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) = (it.next(), it.next())
    else {
        RedisCounters::add(&shared.counters.decode_errors, 1);
        return;
    };
    let Ok(name) = std::str::from_utf8(&name) else {
        RedisCounters::add(&shared.counters.decode_errors, 1);
        return;
    };
    if name == &*shared.names.control {
        match codec::decode_control(&payload) {
            Ok(msg) => handler.control(msg),
            Err(e) => {
                RedisCounters::add(&shared.counters.decode_errors, 1);
                tracing::debug!(error = %e, "undecodable control message skipped");
            }
        }
        return;
    }
    let Some(channel) = shared.names.channel_of(name) else {
        return;
    };
    match codec::decode_incoming(&payload) {
        Ok(codec::Incoming::Publication(m)) => {
            handler.publication(channel, &m.epoch, m.publication)
        }
        Ok(codec::Incoming::JoinLeave(join, info)) => handler.join_leave(channel, join, info),
        Err(e) => {
            RedisCounters::add(&shared.counters.decode_errors, 1);
            tracing::debug!(channel, error = %e, "undecodable publication skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6380"), "redis://127.0.0.1:6380");
        assert_eq!(redact("redis://:s3cret@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://u:p@ss@host"), "redis://***@host");
        assert_eq!(redact("redis://host/a@b"), "redis://host/a@b");
        assert_eq!(redact("nonsense"), "nonsense");
        let config = RedisConfig {
            addresses: vec!["redis://:s3cret@host:1".into()],
            ..RedisConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn names_round_trip() {
        let names = Names::new("p");
        assert_eq!(names.key("a:b", "meta"), "p:{a:b}:meta");
        assert_eq!(names.channel_of(&names.pub_channel("a}b")), Some("a}b"));
        assert_eq!(names.channel_of("q:{a}:pub"), None);
        assert_eq!(names.channel_of("p:{a}:stream"), None);
    }
}
