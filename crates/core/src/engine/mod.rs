//! The engine seam: what a node needs from the outside world to be one of many.
//!
//! A channel's *stream* (its epoch, its offsets and its history) belongs to a [`Broker`];
//! the node's [`Hub`](crate::Hub) holds only the local subscribers, a replica of the
//! stream's position and a short tail of recent publications, and fans out what the
//! broker delivers through [`EngineHandler::publication`]. Presence lives in a
//! [`PresenceStore`], node-to-node messages travel over a [`ControlBus`].
//!
//! The memory engine is the default for one node: its hub holds the streams itself and
//! needs no broker (see [`crate::node::Node::local`]). [`memory::MemoryBroker`] implements
//! the traits in one process for several hubs (the reference implementation, and the
//! cluster path under test without a network); the Redis engine (crate
//! `starling-redis`) implements them for many nodes. Both deliver into the same hub
//! path ([`crate::Hub::deliver`], then the fan-out the local publish uses too).
//!
//! Methods return a [`Step`]: the memory engine answers [`Step::Ready`] without
//! allocating; a remote engine answers [`Step::Pending`] with a boxed future.

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use starling_protocol::{ClientInfo, Publication};

use crate::history::{HistoryPolicy, HistoryQuery};
use crate::hub::StreamPosition;

/// A future returned by a remote engine.
pub type EngineFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The answer to an engine call: at once (memory engine) or later (remote engines).
pub enum Step<T> {
    /// The result is here.
    Ready(T),
    /// The result comes when the future resolves.
    Pending(EngineFuture<T>),
}

impl<T: Send + 'static> Step<T> {
    /// Waits for the result.
    pub async fn wait(self) -> T {
        match self {
            Step::Ready(t) => t,
            Step::Pending(f) => f.await,
        }
    }

    /// Applies `f` to the result, now or when it comes.
    pub fn map<U: Send + 'static>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Step<U> {
        match self {
            Step::Ready(t) => Step::Ready(f(t)),
            Step::Pending(fut) => Step::Pending(Box::pin(async move { f(fut.await) })),
        }
    }
}

impl<T> std::fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Ready(_) => "Step::Ready",
            Step::Pending(_) => "Step::Pending",
        })
    }
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The broker (or the shard that holds the channel) cannot be reached now, or did
    /// not answer in time. Temporary: nothing was published, the caller may retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the command (a bug or a misconfigured broker); not retried.
    #[error("broker error: {0}")]
    Broker(String),
    /// An earlier publication with the same idempotency key had other content.
    #[error("idempotency key reused with different content")]
    IdempotencyConflict,
    /// The broker cannot take more now (its queue is full): nothing was published, no
    /// offset used. Temporary.
    #[error("broker busy")]
    Busy,
}

/// An idempotency key of a publication, kept by the broker with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key the publisher chose (scoped to the channel by the broker).
    pub key: String,
    /// A digest of the publication's content: the same key with another fingerprint is an
    /// [`EngineError::IdempotencyConflict`].
    pub fingerprint: u64,
    /// How long the broker remembers the key, in milliseconds.
    pub ttl_ms: u64,
}

/// One publication to add to a channel's stream.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The channel.
    pub channel: Arc<str>,
    /// Payload.
    pub data: Bytes,
    /// Publisher, when the namespace exposes it.
    pub info: Option<Arc<ClientInfo>>,
    /// History the channel keeps (its namespace's policy). Size 0: none, but offsets
    /// and epochs are still assigned, so subscribers can detect gaps.
    pub history: HistoryPolicy,
    /// An idempotency key: a publish repeated with it returns the first result.
    pub idempotency: Option<Idempotency>,
}

/// What a broker answered to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Where the publication sits in the channel's stream (cluster-wide).
    pub position: StreamPosition,
    /// How many receivers the broker handed it to: subscribers for the memory engine,
    /// subscribed nodes for a remote engine (Redis: the `PUBLISH` reply).
    pub receivers: usize,
    /// This is the stored result of an earlier publish with the same idempotency key:
    /// nothing was published now.
    pub replayed: bool,
}

/// A page of a channel's history and the stream's position when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Publications, in the order the query asked for.
    pub publications: Vec<Publication>,
    /// The channel's stream position at the read (epoch `""` and offset 0: no stream).
    pub position: StreamPosition,
    /// Whether the page starts right after `since` (forward reads): false when the
    /// history no longer holds the publication after `since`, so the gap cannot be
    /// filled from it.
    pub complete: bool,
}

/// Where a channel's stream lives and how its publications travel between nodes.
///
/// Contract:
/// - **Atomic per channel**: assigning the offset, appending to history and handing the
///   publication to every subscribed node are one step per channel; every node sees the
///   same offset for the same publication, and offsets of a channel are consecutive
///   within an epoch.
/// - **Ordered**: each node receives a channel's publications in offset order, though
///   some may be missing (a lost message, a reconnect); the hub detects and heals gaps
///   by reading history.
/// - **Epoch rule**: when a channel's stream may have lost publications it handed out
///   (the broker lost data, a failover dropped a tail), the stream gets a new epoch;
///   offsets are never reused for other data under one epoch.
/// - **Interest**: a node receives only the channels it subscribed to; [`Broker::subscribe`]
///   resolves once publications made after it are sure to arrive. Subscribe and
///   unsubscribe calls of one channel take effect in call order.
pub trait Broker: Send + Sync + 'static {
    /// Publishes one publication. An idempotency key seen before returns the stored
    /// result with `replayed` set (and publishes nothing).
    fn publish(&self, request: PublishRequest) -> Step<Result<Accepted, EngineError>>;

    /// Starts delivering `channel` to this node's handler. Resolves when the broker
    /// confirmed the subscription.
    fn subscribe(&self, channel: &Arc<str>) -> Step<Result<(), EngineError>>;

    /// Stops delivering `channel` (the last local subscriber left). Never fails: a lost
    /// unsubscribe only costs traffic.
    fn unsubscribe(&self, channel: &Arc<str>);

    /// Sends a join (`join`) or leave of `info` to every node subscribed to `channel`,
    /// this one included, for their subscribers' join/leave pushes. Not part of the
    /// stream (no offset); best effort.
    fn join_leave(&self, channel: &Arc<str>, join: bool, info: &Arc<ClientInfo>) {
        let _ = (channel, join, info);
    }

    /// Reads a page of `channel`'s history with the stream's current position (a query
    /// with limit 0 reads only the position). `policy` is the channel's namespace policy
    /// (for a broker that applies age limits on read). A read creates the stream's epoch
    /// when the stream does not exist yet (offset 0), so that a subscriber always learns
    /// the epoch its later publications belong to.
    fn history(
        &self,
        channel: &Arc<str>,
        query: HistoryQuery,
        policy: HistoryPolicy,
    ) -> Step<Result<HistoryPage, EngineError>>;
}

/// Who is subscribed where, across nodes.
///
/// Contract: an entry added by a node stays while the node keeps refreshing it and is
/// gone within the store's stated expiry after the node stops (a node that dies leaves
/// no lasting ghosts). Reads may lag writes by the time a command takes.
pub trait PresenceStore: Send + Sync + 'static {
    /// Adds (or refreshes) `info` as a subscriber of `channel`.
    fn join(&self, channel: &Arc<str>, info: &Arc<ClientInfo>);
    /// Removes client `client` from `channel`.
    fn leave(&self, channel: &Arc<str>, client: &str);
    /// Everyone subscribed to `channel`.
    fn presence(&self, channel: &Arc<str>) -> Step<Result<Vec<ClientInfo>, EngineError>>;
    /// Subscriptions and distinct users of `channel`.
    fn stats(&self, channel: &Arc<str>) -> Step<Result<(usize, usize), EngineError>>;
}

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// A node is alive; sent periodically.
    Heartbeat(NodeInfo),
    /// Disconnect every connection of `user` (all nodes, including the sender).
    Disconnect {
        /// The user.
        user: String,
        /// Disconnect code to close with.
        code: u16,
    },
    /// Unsubscribe every connection of `user` from `channel` (all nodes, including the
    /// sender).
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// A node is shutting down and leaves the cluster now.
    Leaving {
        /// Its name.
        node: String,
    },
    /// Node `from` asks every node for its channels with subscribers (whose name
    /// contains `pattern`, when given); each answers with [`ControlMessage::Channels`].
    ChannelsQuery {
        /// Matches the answers to the question.
        id: u64,
        /// The asking node.
        from: String,
        /// Substring filter.
        pattern: Option<String>,
    },
    /// Node `node`'s answer to a [`ControlMessage::ChannelsQuery`] of node `to`.
    Channels {
        /// The question's id.
        id: u64,
        /// The asking node.
        to: String,
        /// The answering node.
        node: String,
        /// Channel name and local subscriber count.
        channels: Vec<(String, u64)>,
    },
}

/// A node's identity and counts, as its heartbeat carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Unique node name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Open client connections.
    pub connections: u64,
    /// Distinct users connected.
    pub users: u64,
    /// Subscriptions of its connections.
    pub subscriptions: u64,
    /// Channels it holds.
    pub channels: u64,
    /// Seconds since it started.
    pub uptime_secs: u64,
}

/// Node-to-node messages.
///
/// Contract: a message sent reaches every live node's handler (the sender's too), at
/// most once; messages sent while the bus is down are lost (heartbeats repeat,
/// disconnects are best effort and say so in the API).
pub trait ControlBus: Send + Sync + 'static {
    /// Sends `message` to every node.
    fn send(&self, message: ControlMessage) -> Step<Result<(), EngineError>>;
}

/// What an engine delivers to its node. The hub implements the publication path; the
/// server the control path.
pub trait EngineHandler: Send + Sync + 'static {
    /// A publication of `channel` in stream `epoch`. Per channel, calls come in the
    /// order the broker assigned offsets, one at a time; some may be missing.
    fn publication(&self, channel: &str, epoch: &str, publication: Publication);

    /// A join or leave of `channel` (see [`Broker::join_leave`]).
    fn join_leave(&self, channel: &str, join: bool, info: ClientInfo) {
        let _ = (channel, join, info);
    }

    /// The engine lost its link to the broker for some channels and has it back (or
    /// suspects silent loss): their positions must be checked and gaps healed. `None`:
    /// every channel.
    fn resync(&self, channels: Option<&[Arc<str>]>);

    /// A control message from a node.
    fn control(&self, message: ControlMessage);
}
