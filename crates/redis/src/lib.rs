//! The Redis engine: many Starling nodes as one system, with channel streams, pub/sub,
//! presence and the control bus in Redis.
//!
//! [`RedisEngine`] implements the core's engine seam ([`Broker`], [`PresenceStore`],
//! [`ControlBus`]) over one or more Redis servers ("shards").
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
//! both or neither of the newest offset and its epoch, with one exception named below.
//! - **No persistence, or a `FLUSHALL`**: the meta is gone, the next publish creates a
//!   new epoch; nodes and clients holding the old epoch see the change and recover.
//! - **AOF with `appendfsync always`**: every write the script made is on disk before
//!   Redis answers, so a restart loses nothing that was acknowledged; the epoch stays.
//! - **AOF with `appendfsync everysec`** (or RDB snapshots): a crash may lose the last
//!   second. If the meta key itself is lost, the epoch rule holds (new epoch). If the
//!   meta survives at an older offset (it existed before the lost second), offsets
//!   already handed out are **reused** under the same epoch: the engine cannot detect
//!   this from Redis' data alone. A node that holds a higher offset than the stream's
//!   position for the same epoch does see it (the hub's position check after
//!   [`EngineHandler::resync`]), but a node that was not connected cannot. Use
//!   `appendfsync always` when recovery must be exact.
//! - **Replicas**: a failover to a replica that missed the tail has the same problem as
//!   `everysec`; `WAIT 1 <ms>` after the publish (not done here) narrows it to a
//!   replica that acknowledged. Redis gives no stronger guarantee.
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
            cluster: false,
        }
    }
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
