//! The Redis engine: many Starling nodes as one system, with channel streams, pub/sub,
//! presence and the control bus in Redis.
//!
//! [`RedisEngine`] implements the core's engine seam ([`Broker`], [`PresenceStore`],
//! [`ControlBus`]) over one or more Redis servers ("shards").
//!
//! # Wiring
//!
//! ```no_run
//! use std::sync::Arc;
//! use starling_core::engine::{Broker, ControlBus, EngineHandler, NodeInfo, PresenceStore};
//! use starling_redis::{RedisConfig, RedisEngine};
//!
//! # async fn wire(handler: Arc<dyn EngineHandler>) -> Result<(), starling_redis::RedisError> {
//! let engine = RedisEngine::connect(RedisConfig {
//!     addresses: vec!["redis://127.0.0.1:6380".into()],
//!     node: "node-1".into(),
//!     ..RedisConfig::default()
//! })
//! .await?; // fails when a shard is unreachable
//! engine.start(handler, Arc::new(NodeInfo::default)); // heartbeats carry NodeInfo
//! let broker: Arc<dyn Broker> = engine.clone();
//! let presence: Arc<dyn PresenceStore> = engine.clone();
//! let control: Arc<dyn ControlBus> = engine.clone();
//! assert!(engine.healthy()); // for /ready
//! engine.shutdown();
//! # Ok(()) }
//! ```
//!
//! # Client library
//!
//! It uses `redis` (redis-rs) 1.x with only the `tokio-comp`, `script`, `streams` and
//! `cluster-async` features: it is actively released, speaks RESP3 with push messages
//! (so the pub/sub link is an ordinary multiplexed connection that also answers `PING`
//! while subscribed, and reports its own disconnection as a push), and its cluster
//! client has the sharded `SSUBSCRIBE` of Redis 7 (`SPUBLISH` works from a script; the
//! cluster tests use both). `fred`, the other full-featured client, had its last
//! release in February 2025.
//!
//! # Key layout
//!
//! Every key of a channel carries the channel in a hash tag, so one channel's keys
//! share a Redis Cluster slot and one script can touch them all (`<p>` is
//! [`RedisConfig::prefix`]):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<p>:{<channel>}:meta` | hash | `e`: epoch, `s`: newest offset |
//! | `<p>:{<channel>}:stream` | stream | entry id `<offset>-0`, fields `d` (encoded publication), `t` (publish time, ms, Redis clock) |
//! | `<p>:{<channel>}:idem:<key>` | hash | `f` fingerprint, `o` offset, `e` epoch, `r` receivers; expires with the key's ttl |
//! | `<p>:{<channel>}:pub` | pub/sub channel | `<offset> <epoch> <encoded publication>` |
//! | `<p>:{<channel>}:presence` | hash | client id -> encoded client info |
//! | `<p>:{<channel>}:presence:users` | hash | client id -> user id (for distinct-user counts) |
//! | `<p>:{<channel>}:presence:expiry` | sorted set | client id scored by its expiry (ms) |
//! | `<p>:control` | pub/sub channel (shard 0; sharded channel in cluster mode) | encoded control messages |
//!
//! # Publish script (one atomic step per channel)
//!
//! 1. With an idempotency key: the stored result with the same fingerprint is returned
//!    (flagged replayed, nothing published); another fingerprint is a conflict.
//! 2. A missing meta gets the epoch the caller passed (fresh random per call).
//! 3. `HINCRBY meta s 1` is the offset.
//! 4. History kept (size > 0): `XADD stream MAXLEN <size> <offset>-0 d <body> t <now>`,
//!    the stream expires after the history ttl and the meta after max(ttl, 300 s quiet
//!    keep) (neither expires when the ttl is 0). No history: the stream is deleted, the
//!    meta still counts offsets (so nodes see gaps) and expires after the quiet keep.
//!    While any node subscribes the channel it extends the meta's expiry (`PEXPIRE ..
//!    GT`, every third of the quiet keep), so a quiet channel with subscribers keeps
//!    its epoch; one nobody watched starts a new epoch after the quiet keep.
//! 5. `PUBLISH <p>:{<channel>}:pub <offset> <epoch> <body>`.
//! 6. The idempotency result is stored; the script returns offset, epoch and the
//!    `PUBLISH` count (the nodes that subscribed the channel).
//!
//! History reads are one script too: the meta position and the page are read together,
//! entries older than the age limit are trimmed first.
//!
//! # Durability and the epoch rule
//!
//! The epoch lives in the same hash as the offset, so whatever Redis loses, it loses
//! both or neither of them. What it can lose depends on its persistence:
//! - **No persistence, or a `FLUSHALL`**: the meta is gone, the next publish creates a
//!   new epoch; nodes and clients holding the old epoch see the change and recover.
//! - **AOF with `appendfsync always`**: every write the script made is on disk before
//!   Redis answers, so a restart loses nothing that was acknowledged; the epoch stays
//!   (tested: SIGKILL and restart keep epoch and offsets).
//! - **AOF with `appendfsync everysec`** (or RDB snapshots): a crash may lose the last
//!   second, and the meta may come back at an *older* offset under the same epoch, so
//!   offsets already handed out would be handed out again. The meta's own data cannot
//!   show this; the server's `run_id` can: every meta records the `run_id` of the
//!   server that wrote it, and with [`RestartEpochs::Auto`] (the default) a server that
//!   does not report `appendfsync always` gives every stream written by an earlier run
//!   a new epoch at its first publish or history read (offset 0, history dropped).
//!   The cost: every restart starts new epochs (clients re-sync instead of recovering).
//! - **Replicas and failover**: a promoted replica has another `run_id`, so
//!   [`RestartEpochs::Always`] catches a failover that dropped a tail the same way.
//!   `WAIT` after the publish (not done here) would only narrow the window; Redis
//!   replication gives no stronger guarantee.
//! - **Redis Cluster**: commands spread over nodes, the engine cannot name the server
//!   a script runs on: only a lost meta starts a new epoch; use `appendfsync always`.
//!
//! # Links and failure
//!
//! Each shard has a command connection and a separate pub/sub connection (RESP3). A
//! task per shard reads pub/sub messages in arrival order and hands them to the
//! handler, probes both links every [`RedisConfig::probe_interval`] (`PING`), and on a
//! lost link reconnects with exponential backoff and jitter (capped at 2 s),
//! resubscribes every channel in batches and calls [`EngineHandler::resync`] for them.
//! While a shard is down, calls for its channels fail at once with
//! [`EngineError::Unavailable`]; other shards are not affected.
//!
//! # Sharding
//!
//! With several addresses a channel lives on the shard chosen by jump consistent hash
//! of its name ([`hash`]): adding a shard at the end of the list moves about 1/N of
//! the channels. All nodes must list the shards in the same order.
//!
//! # Redis Cluster
//!
//! With [`RedisConfig::cluster`] the addresses are seed nodes of one Redis Cluster, which
//! places channels itself (by the slot of the hash tag, so a channel's keys and its
//! pub/sub channel share a node). Publications go out with `SPUBLISH` and are
//! subscribed with `SSUBSCRIBE` (grouped by slot), so they stay on the slot's node
//! instead of being broadcast to the whole cluster. The cluster client reconnects to a
//! node that dropped by itself; the engine then subscribes its channels again and calls
//! [`EngineHandler::resync`] for them, and does the same when Redis drops a sharded
//! subscription because its slot moved. The cluster client queues push messages
//! unboundedly inside redis-rs before they reach the engine's bounded queue.
//!
//! # Limits
//!
//! - Needs Redis 7.0 or newer (RESP3, `PEXPIRE .. GT`, sharded pub/sub).
//! - History is bounded by count (`MAXLEN`, exact) and age (trimmed on read, at most
//!   4096 old entries per read; the stream also expires after the age limit); the
//!   policy's byte cap is not applied in Redis. A read asks for at most 10 000 entries.
//! - A history age limit of 0 keeps the stream and its meta forever (no expiry).
//! - Publication tags are encoded and decoded, but [`PublishRequest`] carries none.
//! - In cluster mode a channel name must not be empty (its keys would hash apart).
//! - The per-shard queues are bounded ([`RedisConfig`]); redis-rs queues internally
//!   without bound only in cluster mode (see above).
//!
//! [`PublishRequest`]: starling_core::engine::PublishRequest
//! [`Broker`]: starling_core::engine::Broker
//! [`PresenceStore`]: starling_core::engine::PresenceStore
//! [`ControlBus`]: starling_core::engine::ControlBus
//! [`EngineHandler::resync`]: starling_core::engine::EngineHandler::resync
//! [`EngineError::Unavailable`]: starling_core::engine::EngineError::Unavailable

pub mod codec;
mod engine;
pub mod hash;
mod link;
mod scripts;
mod shard;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use engine::{NodeInfoProvider, RedisEngine};

/// How the engine reaches Redis. Its `Debug` output hides credentials in addresses.
#[derive(Clone)]
pub struct RedisConfig {
    /// One `redis://host:port[/db]` address per shard; every node lists them in the
    /// same order.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel (no `{` or `}`).
    pub prefix: String,
    /// This node's unique name.
    pub node: String,
    /// Upper bound of one command (publish, history, presence read, subscribe).
    pub command_timeout: Duration,
    /// A presence entry not refreshed for this long is gone; the engine refreshes what
    /// this node joined every third of it.
    pub presence_ttl: Duration,
    /// How often each link is probed with `PING`.
    pub probe_interval: Duration,
    /// How often a heartbeat goes out on the control bus.
    pub heartbeat_interval: Duration,
    /// How long a channel's meta (epoch and offset) outlives its last publication when
    /// its history ttl is shorter; a channel that some node subscribes is kept alive
    /// (every third of this) however quiet it is.
    pub quiet_keep: Duration,
    /// Pub/sub messages buffered per shard between the socket and the delivering task;
    /// beyond it messages are dropped (counted) and the shard's channels resynced.
    pub pubsub_queue: usize,
    /// Subscribe/unsubscribe requests queued per shard; beyond it subscribe is `Busy`.
    pub request_queue: usize,
    /// Most channels in one `SUBSCRIBE` command.
    pub subscribe_batch: usize,
    /// When a channel's stream gets a new epoch because the Redis server restarted or
    /// failed over (see [`RestartEpochs`]).
    pub restart_epochs: RestartEpochs,
    /// The addresses are seed nodes of one Redis Cluster (sharded pub/sub, slots placed
    /// by Redis) instead of independent shards.
    pub cluster: bool,
    /// Background key writes (presence joins/leaves and refreshes, epoch keep-alives)
    /// queued per shard; beyond it they are dropped (counted as presence failures).
    pub presence_queue: usize,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(|a| shard::redact(a)).collect();
        f.debug_struct("RedisConfig")
            .field("addresses", &addresses)
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("command_timeout", &self.command_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .field("probe_interval", &self.probe_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("quiet_keep", &self.quiet_keep)
            .field("pubsub_queue", &self.pubsub_queue)
            .field("request_queue", &self.request_queue)
            .field("subscribe_batch", &self.subscribe_batch)
            .field("presence_queue", &self.presence_queue)
            .field("restart_epochs", &self.restart_epochs)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            prefix: "starling".into(),
            node: "node".into(),
            command_timeout: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(60),
            probe_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(3),
            quiet_keep: Duration::from_secs(300),
            pubsub_queue: 16_384,
            request_queue: 16_384,
            subscribe_batch: 512,
            presence_queue: 16_384,
            restart_epochs: RestartEpochs::Auto,
            cluster: false,
        }
    }
}

/// Whether a stream written before a Redis server (re)started gets a new epoch.
///
/// Redis restarted from an append-only file synced every second, or a replica promoted
/// after a failover, may hold a channel's meta at an older offset than it acknowledged:
/// offsets would be handed out again under the same epoch. To rule that out, every
/// channel meta records the `run_id` of the server that wrote it (new at every start,
/// different on every replica); the first publish or history read on a server with
/// another `run_id` starts a new epoch (offset 0, history dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartEpochs {
    /// New epochs after a restart unless the server reports `appendonly yes` and
    /// `appendfsync always` (nothing acknowledged is lost; a failover to a lagging
    /// replica is then not caught). When `CONFIG` is disabled: as `Always`.
    #[default]
    Auto,
    /// New epochs after every restart or failover (safe with any persistence or
    /// replication).
    Always,
    /// Never for restarts (only a lost meta starts a new epoch): for a server whose
    /// restarts lose nothing and that never fails over.
    Never,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The configuration is unusable.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// A shard did not answer at start.
    #[error("redis shard {address} is unreachable: {reason}")]
    Unreachable {
        /// The shard's address.
        address: String,
        /// What failed.
        reason: String,
    },
}

/// What the engine counts (monotonic).
#[derive(Debug, Default)]
pub struct RedisCounters {
    /// Messages from Redis that did not decode (skipped).
    pub decode_errors: AtomicU64,
    /// Pub/sub messages dropped because a shard's queue was full.
    pub dropped_messages: AtomicU64,
    /// Presence writes that failed or were dropped.
    pub presence_failures: AtomicU64,
    /// Successful reconnects of a shard's links.
    pub reconnects: AtomicU64,
    /// Heartbeats that could not be sent.
    pub heartbeat_failures: AtomicU64,
}

impl RedisCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
