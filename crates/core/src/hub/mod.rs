//! The hub: channels, their subscribers, their history and fan-out.
//!
//! A channel exists while it has subscribers or retained history. Every publication
//! gets the channel's next offset; each channel incarnation has a random epoch, so a
//! client can tell that offsets started over. Fan-out happens under the channel's lock,
//! which keeps publications in order for every subscriber and makes the hand-over from
//! history to the live stream exact (a recovering subscriber gets the missed
//! publications and then the live ones, with no gap and no duplicate); each publication
//! is encoded at most once per frame format, never per subscriber.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_protocol::{ClientInfo, Publication, delta};

use crate::engine::Broker;
use crate::history::{History, HistoryError, HistoryPolicy, HistoryQuery};
use crate::journal::{DurableAck, Journal, JournalError};
use crate::metrics::HubCounters;
use crate::outbox::{Outbox, Push, PushOutcome};
use crate::presence::UserCounts;
use extras::Extras;
use members::Members;

mod extras;
mod members;
mod replica;
pub use replica::{Delivery, JoinOutcome, JoinTicket};

/// A connection's key inside this node.
pub type ClientKey = u64;

/// Index of the wire format a subscriber wants (encoding and compression); the encoder
/// gives it meaning. At most [`MAX_FORMATS`] formats exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameFormat(pub u8);

/// Upper bound on distinct frame formats (sizes the per-publication frame cache).
pub const MAX_FORMATS: usize = 32;

/// What one sweep over a channel's subscribers queued, cut or dropped.
#[derive(Default)]
struct Tally {
    queued: usize,
    bytes: u64,
    slow: u64,
    dropped: u64,
    /// Of `queued`, those sent as a delta (see `Hub::send_with_deltas`).
    deltas: u64,
}

/// Turns pushes into complete WebSocket frames, once per format.
pub trait FrameEncoder: Send + Sync + 'static {
    /// The frame carrying `publication` on `channel`.
    fn publication(&self, channel: &str, publication: &Publication, format: FrameFormat) -> Bytes;
    /// The frame carrying `publication` on `channel` to a delta subscription: its data
    /// in full (`delta` is `None`) or as `delta`, a fossil delta against the data of the
    /// channel's previous publication. The payload must reach the client as exact bytes
    /// (see `starling_protocol::encode_delta_publication`).
    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&[u8]>,
        format: FrameFormat,
    ) -> Bytes;
    /// The frame carrying a join (or leave) of `info` on `channel`.
    fn join_leave(
        &self,
        channel: &str,
        join: bool,
        info: &ClientInfo,
        format: FrameFormat,
    ) -> Bytes;
}

/// One subscription of one connection.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection.
    pub key: ClientKey,
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
    /// The frame format it negotiated.
    pub format: FrameFormat,
    /// Who it is (presence, join/leave).
    pub info: Arc<ClientInfo>,
    /// Delta mode: publications may come as fossil deltas against the previous one.
    pub delta: bool,
    /// (Delta mode) it was queued the channel's latest publication, so the next one may
    /// come as a delta. False at the start and after a publication it missed.
    synced: bool,
}

impl Subscriber {
    /// A subscription of connection `key`, frames in `format` into `outbox`, without
    /// delta mode.
    pub fn new(
        key: ClientKey,
        outbox: Arc<Outbox>,
        format: FrameFormat,
        info: Arc<ClientInfo>,
    ) -> Self {
        Subscriber {
            key,
            outbox,
            format,
            info,
            delta: false,
            synced: false,
        }
    }

    /// The same subscription with delta mode on or off.
    pub fn with_delta(mut self, delta: bool) -> Self {
        self.delta = delta;
        self.synced = false;
        self
    }
}

/// Position of a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 before the first).
    pub offset: u64,
    /// The channel incarnation.
    pub epoch: Arc<str>,
}

/// Options of a channel that come from its namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Send join and leave pushes to subscribers.
    pub join_leave: bool,
    /// History kept for the channel.
    pub history: HistoryPolicy,
    /// A subscriber whose queue is full misses publications (and sees a gap in offsets)
    /// instead of being disconnected as a slow consumer.
    pub lossy: bool,
    /// Subscribers are listed in presence (kept in the cluster's presence store when a
    /// cluster engine runs).
    pub presence: bool,
    /// The namespace's metric slot (`NamespaceOptions::index`): which of the per-namespace
    /// histograms (`HubCounters::broadcast`) the channel's fan-out is measured into.
    pub namespace: u16,
}

/// Subscription refused by the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// This connection already subscribed to the channel.
    #[error("already subscribed")]
    AlreadySubscribed,
    /// The channel does not exist and the node already holds its maximum of channels.
    #[error("channel limit reached")]
    ChannelLimit,
    /// The channel does not exist and the subscriber may not create one now (its
    /// channel-creation budget is spent).
    #[error("channel creation limit reached")]
    CreationLimit,
    /// The cluster's broker cannot be reached now. Temporary.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Publication refused by the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The publication would create a channel (to keep its history) and the node already
    /// holds its maximum of channels.
    #[error("channel limit reached")]
    ChannelLimit,
    /// The publication would create a channel (to keep its history) and the publisher
    /// may not create one now (its channel-creation budget is spent).
    #[error("channel creation limit reached")]
    CreationLimit,
    /// The message log cannot keep up (its queue is full): nothing was published, no
    /// offset used. Temporary.
    #[error("message log busy")]
    Overloaded,
    /// Durability was asked for and the message log is failed: nothing was published,
    /// no offset used. Temporary (the log retries).
    #[error("message log unavailable")]
    NotPersisted,
    /// The cluster's broker cannot be reached now (or did not answer in time): nothing
    /// was published. Temporary.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The idempotency key was used before for a publication with other content.
    #[error("idempotency key reused with different content")]
    IdempotencyConflict,
}

/// Why a new channel was refused.
#[derive(Debug)]
enum NotCreated {
    /// The node holds `max_channels` already.
    ChannelLimit,
    /// The creator's channel-creation budget is spent.
    CreationLimit,
}

impl From<NotCreated> for SubscribeError {
    fn from(e: NotCreated) -> Self {
        match e {
            NotCreated::ChannelLimit => SubscribeError::ChannelLimit,
            NotCreated::CreationLimit => SubscribeError::CreationLimit,
        }
    }
}

impl From<NotCreated> for PublishError {
    fn from(e: NotCreated) -> Self {
        match e {
            NotCreated::ChannelLimit => PublishError::ChannelLimit,
            NotCreated::CreationLimit => PublishError::CreationLimit,
        }
    }
}

/// What a subscriber asked to recover: everything after this position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverFrom {
    /// Last offset the client saw.
    pub offset: u64,
    /// Epoch of that offset.
    pub epoch: String,
    /// Largest recovery, in estimated reply bytes (`History::wire_bytes`): when the
    /// missed publications are more, nothing is recovered (the client pages through
    /// history instead) and nothing is copied. The caller may apply a tighter bound to
    /// the encoded reply.
    pub max_bytes: usize,
}

/// The state a subscriber joins at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The stream position: every publication after it reaches the subscriber live.
    pub position: StreamPosition,
    /// Whether the channel keeps history (so recovery is possible in principle).
    pub recoverable: bool,
    /// For a recovery request: the missed publications, oldest first, when the history
    /// covers the whole gap in the same epoch within the recovery's byte cap; `None`
    /// when it does not.
    pub recovered: Option<Vec<Publication>>,
    /// `recovered` is `None` because the missed publications passed the byte cap (not
    /// because they are gone or in another epoch): the recovery outcome `too_large`.
    pub too_large: bool,
}

/// Result of a publish.
pub struct Published {
    /// Where the publication sits in the channel's stream.
    pub position: StreamPosition,
    /// Subscribers it was queued to.
    pub delivered: usize,
    /// Resolves once the publication is on disk, when a durable append was asked for.
    pub durable: Option<DurableAck>,
}

/// Why a history read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryReadError {
    /// The namespace keeps no history.
    #[error("history is not kept for this channel")]
    Disabled,
    /// The requested position is gone (too old, or another epoch).
    #[error("position is no longer in history")]
    Unrecoverable,
    /// The cluster's broker cannot be reached now. Temporary.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("position", &self.position)
            .field("delivered", &self.delivered)
            .field("durable", &self.durable.is_some())
            .finish()
    }
}

struct Channel {
    state: Mutex<ChannelState>,
}

struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    options: ChannelOptions,
    subscribers: Members,
    /// Subscriptions per user id, kept on subscribe and unsubscribe so that
    /// `presence_stats` is O(1).
    users: UserCounts,
    history: History,
    /// When the channel last had a subscriber or a publication, in whole seconds since
    /// the Unix epoch rounded up (so that a quiet channel is never dropped early); 32
    /// bits, so that it shares a word with `gone` (until 2106).
    active_s: u32,
    /// Removed from the hub; a publisher that still holds it must not deliver.
    gone: bool,
    /// The replica's sync state (set when a broker holds the stream), the delta
    /// subscribers' kept data (while there are some) and the presence list (built on
    /// the first `presence` after a membership change and shared until the next one, so
    /// repeated queries do not walk the subscribers).
    extras: Extras,
}

/// What a channel keeps for its delta subscribers.
#[derive(Debug, Default)]
struct DeltaChannel {
    /// Delta subscribers.
    subscribers: usize,
    /// The latest publication's data: the source of the next publication's delta.
    last: Option<Bytes>,
}

impl ChannelState {
    fn new(options: ChannelOptions, epoch: Arc<str>) -> Self {
        Self {
            epoch,
            offset: 0,
            options,
            subscribers: Members::default(),
            users: UserCounts::default(),
            history: History::default(),
            active_s: active_secs(now_ms()),
            gone: false,
            extras: Extras::default(),
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Adds a subscriber and counts its user (and its delta mode).
    fn add_member(&mut self, mut subscriber: Subscriber) {
        self.users.add(&subscriber.info.user);
        self.extras.clear_presence();
        if subscriber.delta {
            // It has none of the channel's publications yet: its first one is in full.
            subscriber.synced = false;
            self.extras.delta_or_default().subscribers += 1;
        }
        self.subscribers.insert(subscriber);
    }

    /// Removes a subscriber and uncounts its user. The last delta subscriber takes the
    /// kept data with it.
    fn remove_member(&mut self, key: ClientKey) -> Option<Subscriber> {
        let removed = self.subscribers.remove(key)?;
        self.users.remove(&removed.info.user);
        self.extras.clear_presence();
        if removed.delta
            && let Some(delta) = self.extras.delta_mut()
        {
            delta.subscribers = delta.subscribers.saturating_sub(1);
            if delta.subscribers == 0 {
                self.extras.clear_delta();
            }
        }
        Some(removed)
    }

    /// Nothing keeps the channel alive: no subscriber, no retained history, and — in a
    /// namespace with history — no recent activity. A history channel keeps its epoch and
    /// offset for its history's age limit after it went quiet, so clients that all lost
    /// their connections at once still recover (an empty gap) instead of being told that
    /// the stream started over.
    fn idle(&self, now: u64, linger_ms: u64) -> bool {
        if let Some(replica) = self.extras.replica() {
            // A replica's history is a cache: the broker keeps the stream. The node stops
            // listening shortly after its last subscriber left (a linger, so that a
            // reconnecting client does not make it unsubscribe and subscribe again).
            return self.subscribers.is_empty()
                && replica.joining == 0
                && now.saturating_sub(replica.quiet_since_ms) > linger_ms;
        }
        if !self.subscribers.is_empty() || !self.history.is_empty() {
            return false;
        }
        let policy = self.options.history;
        if !policy.enabled() {
            return true;
        }
        let keep = if policy.ttl_ms > 0 {
            policy.ttl_ms
        } else {
            QUIET_CHANNEL_KEEP_MS
        };
        now.saturating_sub(u64::from(self.active_s).saturating_mul(1000)) > keep
    }
}

type Shard = Mutex<HashMap<Arc<str>, Arc<Channel>>>;

/// Channels and subscribers of this node.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    encoder: Arc<dyn FrameEncoder>,
    journal: Option<Arc<dyn Journal>>,
    counters: Arc<HubCounters>,
    /// Most channels that may exist at once (`u64::MAX`: no limit).
    max_channels: u64,
    /// Most bytes of history the node keeps, over all channels (`u64::MAX`: no limit).
    max_history_bytes: u64,
    /// The broker holding the channels' streams; `None`: this hub holds them (the
    /// memory engine).
    broker: Option<Arc<dyn Broker>>,
    /// How long a replica channel stays after its last subscriber left.
    linger_ms: u64,
    /// The epoch new channels start with (see [`Hub::creation_epoch`]).
    fresh_epoch: Mutex<Option<Arc<str>>>,
}

/// Channels of up to this many subscribers are written directly by the publishing
/// thread (see [`Hub::send_all`]).
const SMALL_SWEEP: usize = 16;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.shards.len())
            .finish()
    }
}

const SHARDS: usize = 64;

/// How long a quiet history channel without an age limit keeps its epoch.
const QUIET_CHANNEL_KEEP_MS: u64 = 300_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Hub {
    /// A hub encoding frames with `encoder` and counting into `counters`.
    pub fn new(encoder: Arc<dyn FrameEncoder>, counters: Arc<HubCounters>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            encoder,
            journal: None,
            counters,
            max_channels: u64::MAX,
            max_history_bytes: u64::MAX,
            broker: None,
            linger_ms: replica::LINGER_MS,
            fresh_epoch: Mutex::new(None),
        }
    }

    /// The epoch for a channel created now. Channels share one epoch string until one
    /// of them is removed (an epoch names a channel's incarnation, and a channel has
    /// one incarnation at a time: sharing among *different* channels is harmless), so
    /// that a node of many small channels keeps one string instead of one per channel.
    /// The removal of a channel that holds the shared epoch retires it (see
    /// [`Hub::retire_epoch`]), so a channel created again after its removal always
    /// starts in an epoch its previous incarnation never had. Lock order: taken inside
    /// the shard lock, nothing taken inside it.
    fn creation_epoch(&self) -> Arc<str> {
        self.fresh_epoch
            .lock()
            .get_or_insert_with(new_epoch)
            .clone()
    }

    /// A channel in `epoch` is being removed: if new channels would get that epoch, the
    /// next one gets a new epoch instead. Called under the shard lock, before the
    /// channel's name can be created again.
    fn retire_epoch(&self, epoch: &Arc<str>) {
        let mut fresh = self.fresh_epoch.lock();
        if fresh.as_ref().is_some_and(|e| Arc::ptr_eq(e, epoch)) {
            *fresh = None;
        }
    }

    /// Keeps a replica channel (and the node's broker subscription) `ms` milliseconds
    /// after its last subscriber left (default 2 s).
    pub fn with_linger_ms(mut self, ms: u64) -> Self {
        self.linger_ms = ms;
        self
    }

    /// Makes this hub a replica of streams that `broker` holds (a cluster engine): it
    /// keeps local subscribers, the position it delivered up to and a cache of recent
    /// publications, and learns publications from [`Hub::deliver`].
    pub fn with_broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The broker, when a cluster engine holds the streams.
    pub fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.as_ref()
    }

    /// Keeps at most `max` bytes of history node-wide (0: no limit). A publication that
    /// does not fit first evicts its own channel's oldest entries; when even an empty
    /// channel history leaves no room, it is not kept (and counted).
    pub fn with_max_history_bytes(mut self, max: u64) -> Self {
        self.max_history_bytes = if max == 0 { u64::MAX } else { max };
        self
    }

    /// Refuses to create channels beyond `max` (0: no limit).
    pub fn with_max_channels(mut self, max: u64) -> Self {
        self.max_channels = if max == 0 { u64::MAX } else { max };
        self
    }

    /// Appends every publication to `journal` (the durable message log).
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The counters this hub updates.
    pub fn counters(&self) -> &Arc<HubCounters> {
        &self.counters
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % self.shards.len()]
    }

    fn channel(&self, channel: &str) -> Option<Arc<Channel>> {
        self.shard(channel).lock().get(channel).cloned()
    }

    /// The channel entry, created if missing unless `limit` channels exist already or
    /// `may_create` (asked only when the channel would be created, so a creation budget
    /// is spent on creations alone) says no. The shard lock is held by the caller.
    fn get_or_create(
        &self,
        shard: &mut HashMap<Arc<str>, Arc<Channel>>,
        channel: &str,
        options: ChannelOptions,
        limit: u64,
        may_create: &mut dyn FnMut() -> bool,
    ) -> Result<(Arc<str>, Arc<Channel>), NotCreated> {
        if let Some((name, entry)) = shard.get_key_value(channel) {
            return Ok((name.clone(), entry.clone()));
        }
        if !may_create() {
            return Err(NotCreated::CreationLimit);
        }
        // Count first, then check: creations in other shards race with us, and
        // increment-then-undo never lets two of them take the last slot.
        let before = self.counters.channels.fetch_add(1, Ordering::Relaxed);
        if before >= limit {
            self.counters.channels.fetch_sub(1, Ordering::Relaxed);
            return Err(NotCreated::ChannelLimit);
        }
        let name: Arc<str> = Arc::from(channel);
        let entry = Arc::new(Channel {
            state: Mutex::new(ChannelState::new(options, self.creation_epoch())),
        });
        shard.insert(name.clone(), entry.clone());
        Ok((name, entry))
    }

    /// Adds a subscriber; creates the channel if needed. Returns the shared channel name
    /// (for the connection to keep) and what it joined at.
    ///
    /// With `recover`, the missed publications are read from history under the channel
    /// lock, so nothing can be published between them and the live stream. `first`
    /// builds a frame (the subscribe reply, carrying them) from the [`Joined`] state; it
    /// is queued under the same lock, before the subscriber is added, so it precedes
    /// every live publication.
    pub fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        options: ChannelOptions,
        recover: Option<&RecoverFrom>,
        first: impl FnOnce(&Joined) -> Option<Bytes>,
    ) -> Result<(Arc<str>, Joined), SubscribeError> {
        self.subscribe_limited(channel, subscriber, options, recover, &mut || true, first)
    }

    /// [`Hub::subscribe`], asking `may_create` (under the shard lock, so exactly when a
    /// channel would be created) whether this subscriber may create the channel.
    pub fn subscribe_limited(
        &self,
        channel: &str,
        subscriber: Subscriber,
        options: ChannelOptions,
        recover: Option<&RecoverFrom>,
        may_create: &mut dyn FnMut() -> bool,
        first: impl FnOnce(&Joined) -> Option<Bytes>,
    ) -> Result<(Arc<str>, Joined), SubscribeError> {
        let mut shard = self.shard(channel).lock();
        let (name, entry) =
            self.get_or_create(&mut shard, channel, options, self.max_channels, may_create)?;
        let mut state = entry.state.lock();
        drop(shard);
        if state.subscribers.contains_key(subscriber.key) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        // The namespace may have changed since the channel was created.
        state.options = options;
        self.evict(&mut state, now_ms(), options.history);
        let mut too_large = false;
        let recovered = recover.and_then(|from| {
            if *from.epoch != *state.epoch {
                return None;
            }
            match state
                .history
                .since(from.offset, state.offset, from.max_bytes)
            {
                Ok(publications) => Some(publications),
                Err(HistoryError::TooLarge) => {
                    self.counters
                        .recoveries_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    too_large = true;
                    None
                }
                Err(HistoryError::Unrecoverable) => None,
            }
        });
        let joined = Joined {
            position: state.position(),
            recoverable: options.history.enabled(),
            recovered,
            too_large,
        };
        if let Some(frame) = first(&joined) {
            self.push_first(&subscriber, frame);
        }
        if state.options.join_leave {
            self.announce(&name, &state, true, &subscriber.info);
        }
        state.add_member(subscriber);
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok((name, joined))
    }

    /// Removes a subscriber; removes the channel when nothing keeps it alive. Returns
    /// whether it was subscribed.
    pub fn unsubscribe(&self, channel: &str, key: ClientKey) -> bool {
        self.leave(channel, key).is_some()
    }

    /// [`Hub::unsubscribe`], returning who left and the channel's options.
    pub fn leave(
        &self,
        channel: &str,
        key: ClientKey,
    ) -> Option<(Arc<ClientInfo>, ChannelOptions)> {
        let mut shard = self.shard(channel).lock();
        let entry = shard.get(channel).cloned()?;
        let mut state = entry.state.lock();
        let removed = state.remove_member(key)?;
        self.counters.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let now = now_ms();
        state.active_s = active_secs(now);
        if let Some(replica) = state.extras.replica_mut() {
            replica.quiet_since_ms = now;
        }
        if state.idle(now, self.linger_ms) {
            state.gone = true;
            self.retire_epoch(&state.epoch);
            shard.remove(channel);
            self.counters.channels.fetch_sub(1, Ordering::Relaxed);
        } else if state.options.join_leave && state.extras.replica().is_none() {
            // (A replica's leaves travel through the broker, to every node.)
            self.announce(channel, &state, false, &removed.info);
        }
        Some((removed.info, state.options))
    }

    /// A join or leave that a broker delivered (a replica channel's announcements travel
    /// through the broker, so that every node's subscribers get them).
    pub fn deliver_join_leave(&self, channel: &str, join: bool, info: &ClientInfo) {
        let Some(entry) = self.channel(channel) else {
            return;
        };
        let state = entry.state.lock();
        if state.options.join_leave && !state.gone {
            self.announce(channel, &state, join, info);
        }
    }

    /// The options a channel was last used with, if it exists.
    pub fn options(&self, channel: &str) -> Option<ChannelOptions> {
        let entry = self.channel(channel)?;
        let state = entry.state.lock();
        Some(state.options)
    }

    /// Queues a subscriber's first frame (its subscribe reply), counting a queue it
    /// overflows as a slow consumer like fan-out does.
    fn push_first(&self, subscriber: &Subscriber, frame: Bytes) {
        if subscriber.outbox.push(frame) == PushOutcome::Overflow {
            self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Delivers the channel's next publication to its local subscribers (one shared
    /// frame per format), advances the position and keeps the publication in history.
    /// The one path every publication takes to local subscribers: the memory engine's
    /// publish and a broker's delivery both end here. Returns the subscribers it was
    /// queued to.
    ///
    /// The sweep over the subscribers (encoding and queueing) is timed into the
    /// namespace's broadcast histogram, once per publication and only when the channel
    /// has local subscribers: two clock reads and two relaxed atomic adds, no lock and
    /// no allocation.
    fn fan_out(
        &self,
        channel: &str,
        state: &mut ChannelState,
        publication: Publication,
        now: u64,
    ) -> usize {
        state.offset = publication.offset;
        state.active_s = active_secs(now);
        let lossy = state.options.lossy;
        let mut tally = Tally::default();
        let timer = if state.subscribers.is_empty() {
            None
        } else {
            self.counters
                .broadcast
                .get(usize::from(state.options.namespace))
                .map(|histogram| (histogram, Instant::now()))
        };
        if state.extras.delta().is_some() {
            self.send_with_deltas(channel, state, &publication, lossy, &mut tally);
        } else {
            self.send_all(state, lossy, &mut tally, None, |format| {
                self.encoder.publication(channel, &publication, format)
            });
        }
        if let Some((histogram, start)) = timer {
            histogram.observe(start.elapsed());
        }
        let delivered = tally.queued;
        self.count(tally);
        let policy = state.options.history;
        if policy.enabled() {
            self.keep(state, now, publication, policy);
        }
        delivered
    }

    /// Queues a join (or leave) of `info` to the channel's subscribers, except the one
    /// it is about.
    fn announce(&self, channel: &str, state: &ChannelState, join: bool, info: &ClientInfo) {
        let mut tally = Tally::default();
        self.send_all(
            state,
            state.options.lossy,
            &mut tally,
            Some(&info.client),
            |format| self.encoder.join_leave(channel, join, info, format),
        );
        self.count(tally);
    }

    /// Queues one frame per format (made by `encode`, once per format) to every
    /// subscriber of a channel; the connection `skip` (a join's own client) gets nothing.
    ///
    /// A small channel's subscribers are written directly (see [`Outbox::push`]): no task
    /// wake-up for a personal channel's publication. A big channel's are only queued and
    /// their tasks woken: the sweep runs under the channel lock, and writing thousands of
    /// sockets from here would hold that lock for tens of milliseconds, keep the other
    /// workers idle, and, under load, cost one `send` per publication where a task that
    /// fell behind writes all of its queued publications in one vectored write.
    fn send_all(
        &self,
        state: &ChannelState,
        lossy: bool,
        tally: &mut Tally,
        skip: Option<&str>,
        encode: impl Fn(FrameFormat) -> Bytes,
    ) {
        let mut frames: [Option<Bytes>; MAX_FORMATS] = Default::default();
        let direct = state.subscribers.len() <= SMALL_SWEEP;
        for sub in state.subscribers.values() {
            if skip.is_some_and(|client| sub.info.client == client) {
                continue;
            }
            let slot = &mut frames[usize::from(sub.format.0) % MAX_FORMATS];
            let frame = slot.get_or_insert_with(|| encode(sub.format));
            self.queue(sub, frame.clone(), lossy, direct, tally);
        }
    }

    /// [`Hub::send_all`] for a publication on a channel with delta subscribers. The delta
    /// against the previous publication's data is computed at most once, and only when a
    /// subscriber can use it; each frame is encoded at most once per kind (plain, full
    /// for delta subscribers, delta) and format. A delta subscriber gets the delta frame
    /// when it was queued the previous publication, else the full one; it is in step
    /// again once a frame is queued to it, out of step after one it missed (a lossy
    /// drop). A delta that is not smaller than the data is not sent: everyone gets the
    /// data in full. Either way the kept data moves on to this publication.
    fn send_with_deltas(
        &self,
        channel: &str,
        state: &mut ChannelState,
        publication: &Publication,
        lossy: bool,
        tally: &mut Tally,
    ) {
        let previous = match state.extras.delta_mut() {
            Some(kept) => kept.last.replace(publication.data.clone()),
            None => None,
        };
        // `None`: not computed yet; `Some(None)`: no delta worth sending.
        let mut patch: Option<Option<Vec<u8>>> = None;
        let mut plain: [Option<Bytes>; MAX_FORMATS] = Default::default();
        let mut full: [Option<Bytes>; MAX_FORMATS] = Default::default();
        let mut deltas: [Option<Bytes>; MAX_FORMATS] = Default::default();
        let direct = state.subscribers.len() <= SMALL_SWEEP;
        for sub in state.subscribers.values_mut() {
            let slot = usize::from(sub.format.0) % MAX_FORMATS;
            let mut as_delta = false;
            let frame = if !sub.delta {
                plain[slot].get_or_insert_with(|| {
                    self.encoder.publication(channel, publication, sub.format)
                })
            } else {
                let delta = if sub.synced {
                    patch
                        .get_or_insert_with(|| {
                            let source = previous.as_ref()?;
                            let d = delta::encode(source, &publication.data);
                            (d.len() < publication.data.len()).then_some(d)
                        })
                        .as_deref()
                } else {
                    None
                };
                as_delta = delta.is_some();
                let cache = if as_delta {
                    &mut deltas[slot]
                } else {
                    &mut full[slot]
                };
                cache.get_or_insert_with(|| {
                    self.encoder
                        .delta_publication(channel, publication, delta, sub.format)
                })
            };
            let outcome = self.queue(sub, frame.clone(), lossy, direct, tally);
            if sub.delta {
                sub.synced = matches!(outcome, PushOutcome::Queued | PushOutcome::Written);
                if sub.synced && as_delta {
                    tally.deltas += 1;
                }
            }
        }
    }

    /// Queues `frame` to one subscriber, counting the outcome in `tally` (the node's
    /// counters are shared by every core: they are updated once per sweep, not once per
    /// subscriber).
    fn queue(
        &self,
        sub: &Subscriber,
        frame: Bytes,
        lossy: bool,
        direct: bool,
        tally: &mut Tally,
    ) -> PushOutcome {
        let len = frame.len();
        let outcome = sub.outbox.push_as(frame, Push { lossy, direct });
        match outcome {
            PushOutcome::Queued | PushOutcome::Written => {
                tally.queued += 1;
                tally.bytes += len as u64;
            }
            PushOutcome::Overflow => tally.slow += 1,
            PushOutcome::Dropped => tally.dropped += 1,
            PushOutcome::Closed => {}
        }
        outcome
    }

    /// Adds a sweep's tally to the node's counters.
    fn count(&self, tally: Tally) {
        let c = &self.counters;
        if tally.queued > 0 {
            c.messages_out
                .fetch_add(tally.queued as u64, Ordering::Relaxed);
            c.bytes_out.fetch_add(tally.bytes, Ordering::Relaxed);
        }
        if tally.slow > 0 {
            c.slow_consumers.fetch_add(tally.slow, Ordering::Relaxed);
        }
        if tally.dropped > 0 {
            c.lossy_drops.fetch_add(tally.dropped, Ordering::Relaxed);
        }
        if tally.deltas > 0 {
            c.delta_deliveries
                .fetch_add(tally.deltas, Ordering::Relaxed);
        }
    }

    /// Publishes `data` to `channel`: assigns the next offset, keeps it in history (when
    /// the namespace keeps history), appends it to the journal, and queues one shared
    /// frame per format to every subscriber, in order. A channel with neither
    /// subscribers nor history does not exist: the publication reaches nobody and gets
    /// offset 0 with an empty epoch. Fails when keeping history would create a channel
    /// beyond the node's limit, and when the journal refuses the record (busy, or failed
    /// while `durable` is asked): then nothing is delivered and no offset is used.
    pub fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<Arc<ClientInfo>>,
        options: ChannelOptions,
        durable: bool,
    ) -> Result<Published, PublishError> {
        self.publish_limited(channel, data, info, options, durable, &mut || true)
    }

    /// [`Hub::publish`], asking `may_create` (under the shard lock, so exactly when the
    /// publication would create a channel to keep its history) whether this publisher
    /// may create the channel.
    pub fn publish_limited(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<Arc<ClientInfo>>,
        options: ChannelOptions,
        durable: bool,
        may_create: &mut dyn FnMut() -> bool,
    ) -> Result<Published, PublishError> {
        // Counted once accepted (below): a refused publish (channel limit, busy log) is not.
        let accepted = || {
            self.counters.publications.fetch_add(1, Ordering::Relaxed);
        };
        // The shard lock is held until the channel is locked, so a sweep cannot remove a
        // channel between our lookup and our append to its history.
        let mut shard = self.shard(channel).lock();
        let entry = if options.history.enabled() {
            let created =
                self.get_or_create(&mut shard, channel, options, self.max_channels, may_create);
            Some(created?.1)
        } else {
            shard.get(channel).cloned()
        };
        let nowhere = || Published {
            position: StreamPosition {
                offset: 0,
                epoch: Arc::from(""),
            },
            delivered: 0,
            durable: None,
        };
        let Some(entry) = entry else {
            accepted();
            return Ok(nowhere());
        };
        let mut state = entry.state.lock();
        drop(shard);
        if state.gone {
            accepted();
            return Ok(nowhere());
        }
        // The journal first: a refusal must leave the channel untouched (offset unused,
        // nothing delivered, nothing in history).
        let publication = Publication {
            data,
            offset: state.offset + 1,
            info: info.map(|i| (*i).clone()),
            tags: None,
            delta: false,
        };
        let now = now_ms();
        let durable = match &self.journal {
            None => None,
            Some(journal) => {
                match journal.append(channel, &state.epoch, &publication, now, durable) {
                    Ok(ack) => ack,
                    Err(JournalError::Busy) => {
                        self.counters.journal_busy.fetch_add(1, Ordering::Relaxed);
                        return Err(PublishError::Overloaded);
                    }
                    Err(e @ JournalError::Failed(_)) => {
                        // The log reports (and rate-limits) its own failure: no line per publish.
                        self.counters.journal_errors.fetch_add(1, Ordering::Relaxed);
                        if durable {
                            return Err(PublishError::NotPersisted);
                        }
                        Some(Box::pin(std::future::ready(Err(e))) as DurableAck)
                    }
                }
            }
        };
        accepted();
        state.options = options;
        let delivered = self.fan_out(channel, &mut state, publication, now);
        Ok(Published {
            position: state.position(),
            delivered,
            durable,
        })
    }

    /// Puts a publication read back from the journal into its channel's history (at
    /// start, before any client connects). Records must come in journal order.
    pub fn restore(
        &self,
        channel: &str,
        epoch: &str,
        publication: Publication,
        time_ms: u64,
        options: ChannelOptions,
    ) {
        if !options.history.enabled() {
            return;
        }
        let mut shard = self.shard(channel).lock();
        // What the log holds was acknowledged: restore it even beyond the channel limit.
        let Ok((_, entry)) =
            self.get_or_create(&mut shard, channel, options, u64::MAX, &mut || true)
        else {
            return;
        };
        let mut state = entry.state.lock();
        drop(shard);
        if *state.epoch != *epoch || publication.offset != state.offset + 1 {
            // A new incarnation (or a gap the log cannot explain): start over from it.
            state.epoch = Arc::from(epoch);
            self.clear_history(&mut state);
        }
        state.offset = publication.offset;
        self.keep(&mut state, time_ms, publication, options.history);
    }

    /// Replays an epoch change read back from the journal: `channel` continues at
    /// `offset` under `epoch`. Its history is kept when it ends at `offset`, else (the
    /// older records are gone) the channel restarts empty at `offset`.
    pub fn restore_epoch(&self, channel: &str, epoch: &str, offset: u64, options: ChannelOptions) {
        if !options.history.enabled() {
            return;
        }
        let mut shard = self.shard(channel).lock();
        let Ok((_, entry)) =
            self.get_or_create(&mut shard, channel, options, u64::MAX, &mut || true)
        else {
            return;
        };
        let mut state = entry.state.lock();
        drop(shard);
        if state.offset != offset {
            state.history = History::default();
            state.offset = offset;
        }
        state.epoch = Arc::from(epoch);
    }

    /// Gives every channel a new epoch, keeping offsets and history, and returns the new
    /// positions (to be written to the journal). For the start after an unclean stop,
    /// before any client connects: the journal may miss publications that clients saw,
    /// so no position from before may be recovered and no offset reused in an old epoch.
    pub fn renew_epochs(&self) -> Vec<(Arc<str>, StreamPosition)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                let mut state = entry.state.lock();
                state.epoch = new_epoch();
                out.push((name.clone(), state.position()));
            }
        }
        out
    }

    /// A page of a channel's history and the stream position. `since` must be in the
    /// current epoch.
    pub fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        epoch: Option<&str>,
        options: ChannelOptions,
    ) -> Result<(Vec<Publication>, StreamPosition), HistoryReadError> {
        if !options.history.enabled() {
            return Err(HistoryReadError::Disabled);
        }
        let Some(entry) = self.channel(channel) else {
            if query.since.is_some_and(|s| s > 0) {
                return Err(HistoryReadError::Unrecoverable);
            }
            return Ok((
                Vec::new(),
                StreamPosition {
                    offset: 0,
                    epoch: Arc::from(""),
                },
            ));
        };
        let mut state = entry.state.lock();
        self.evict(&mut state, now_ms(), options.history);
        if query.since.is_some() && epoch.is_some_and(|e| *e != *state.epoch) {
            return Err(HistoryReadError::Unrecoverable);
        }
        let page = state
            .history
            .read(query)
            .map_err(|_| HistoryReadError::Unrecoverable)?;
        Ok((page, state.position()))
    }

    /// Drops expired history and removes channels that nothing keeps alive any more.
    /// Called periodically by the server.
    pub fn sweep(&self) {
        for index in 0..self.shard_count() {
            self.sweep_shard(index);
        }
    }

    /// How many shards the channels are spread over (see [`Hub::sweep_shard`]).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// [`Hub::sweep`] for one shard (`index` below [`Hub::shard_count`]; others do
    /// nothing). A sweep of every shard at once walks every channel in one go: the
    /// server sweeps shard by shard and yields between them, so that no runtime worker
    /// is held for the whole walk.
    pub fn sweep_shard(&self, index: usize) {
        let Some(shard) = self.shards.get(index) else {
            return;
        };
        let now = now_ms();
        shard.lock().retain(|name, entry| {
            let mut state = entry.state.lock();
            let policy = state.options.history;
            self.evict(&mut state, now, policy);
            if state.idle(now, self.linger_ms) {
                state.gone = true;
                self.retire_epoch(&state.epoch);
                self.counters.channels.fetch_sub(1, Ordering::Relaxed);
                // Under the shard lock: a join that recreates the channel asks the
                // broker to subscribe only after this unsubscribe was issued, and
                // the broker applies them in call order.
                if let Some(broker) = state.extras.replica().and(self.broker.as_ref()) {
                    broker.unsubscribe(name);
                }
                false
            } else {
                true
            }
        });
    }

    /// Who is subscribed to `channel`. The list is built once per membership change and
    /// shared by the queries until the next one (O(1) for a channel whose members did
    /// not change; the walk happens at most once per change, not once per query).
    pub fn presence(&self, channel: &str) -> Arc<[Arc<ClientInfo>]> {
        let Some(entry) = self.channel(channel) else {
            return Arc::from(Vec::new());
        };
        let mut state = entry.state.lock();
        if let Some(list) = state.extras.presence() {
            return list.clone();
        }
        let list: Arc<[Arc<ClientInfo>]> =
            state.subscribers.values().map(|s| s.info.clone()).collect();
        state.extras.set_presence(list.clone());
        list
    }

    /// Subscriptions and distinct users of `channel`, in O(1) (counts kept on subscribe
    /// and unsubscribe).
    pub fn presence_stats(&self, channel: &str) -> (usize, usize) {
        let Some(entry) = self.channel(channel) else {
            return (0, 0);
        };
        let state = entry.state.lock();
        (state.subscribers.len(), state.users.len())
    }

    /// Keeps `publication` in the channel's history within the channel's and the node's
    /// byte budgets (the channel lock is held by the caller).
    fn keep(
        &self,
        state: &mut ChannelState,
        now: u64,
        publication: Publication,
        policy: HistoryPolicy,
    ) {
        if !policy.enabled() {
            self.clear_history(state);
            return;
        }
        let cost = History::entry_bytes(&publication) as u64;
        // Reserve room in the node's budget, giving up this channel's own oldest entries
        // until it fits: one channel never evicts another's history.
        loop {
            let reserved = self
                .counters
                .history_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(cost)
                        .filter(|next| *next <= self.max_history_bytes)
                })
                .is_ok();
            if reserved {
                break;
            }
            match state.history.pop_oldest() {
                Some(freed) => {
                    self.counters
                        .history_bytes
                        .fetch_sub(freed as u64, Ordering::Relaxed);
                }
                None => {
                    // The history is empty now and starts after this publication, so a
                    // recovery from before it is refused, never answered with a hole.
                    self.counters
                        .history_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let before = state.history.bytes() as u64;
        state.history.push(now, publication, policy);
        // `cost` is counted already; account for what the push evicted.
        self.account(before.saturating_add(cost), state.history.bytes() as u64);
    }

    /// Evicts what `policy` no longer allows, keeping the node's count.
    fn evict(&self, state: &mut ChannelState, now: u64, policy: HistoryPolicy) {
        let before = state.history.bytes() as u64;
        state.history.evict(now, policy);
        self.account(before, state.history.bytes() as u64);
    }

    /// Empties the channel's history, keeping the node's count.
    fn clear_history(&self, state: &mut ChannelState) {
        let before = state.history.bytes() as u64;
        state.history.clear();
        self.account(before, 0);
    }

    /// Moves the node's history byte count from `before` to `after` for one channel.
    fn account(&self, before: u64, after: u64) {
        let bytes = &self.counters.history_bytes;
        if after > before {
            bytes.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Channels with subscribers, with their subscriber counts, optionally only those
    /// whose name contains `filter`.
    pub fn channels(&self, filter: Option<&str>) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                if filter.is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                let n = entry.state.lock().subscribers.len();
                if n > 0 {
                    out.push((name.clone(), n));
                }
            }
        }
        out.sort();
        out
    }

    /// Every channel with its subscriber count and latest offset: two readings some
    /// seconds apart give each channel's publication rate (the dashboard's top channels).
    /// Walks the shards one by one, each under its own lock, like [`Hub::channels`].
    pub fn channel_offsets(&self) -> Vec<(Arc<str>, usize, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                let state = entry.state.lock();
                if !state.gone {
                    out.push((
                        name.clone(),
                        state.subscribers.len(),
                        state.position().offset,
                    ));
                }
            }
        }
        out
    }

    /// The current stream position of a channel, if it exists.
    pub fn position(&self, channel: &str) -> Option<StreamPosition> {
        let entry = self.channel(channel)?;
        let state = entry.state.lock();
        (!state.gone).then(|| state.position())
    }
}

/// A short random epoch: 8 bytes from the standard library's random hasher keys.
/// `now_ms` in whole seconds, rounded up, for [`ChannelState::active_s`].
fn active_secs(now_ms: u64) -> u32 {
    u32::try_from(now_ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

fn new_epoch() -> Arc<str> {
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    Arc::from(format!("{h:016x}").as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    /// Every channel is one `Arc<Channel>`: 16 bytes of counts and the channel, served
    /// from jemalloc's 160-byte class while it stays within 144 bytes (it was 208, in
    /// the 224-byte class; a channel per connection makes this per-connection memory).
    #[test]
    fn a_channel_fits_the_160_byte_class() {
        let size = std::mem::size_of::<Channel>();
        assert!(size <= 144, "Channel is {size} bytes");
    }

    /// Frames are "format|channel|offset|data" so tests can read them back; a delta
    /// subscription's are "format|channel|offset|full|data" or "...|delta|delta".
    struct TextEncoder;
    impl FrameEncoder for TextEncoder {
        fn publication(&self, channel: &str, p: &Publication, format: FrameFormat) -> Bytes {
            let data = String::from_utf8_lossy(&p.data);
            Bytes::from(format!("{}|{channel}|{}|{data}", format.0, p.offset))
        }
        fn delta_publication(
            &self,
            channel: &str,
            p: &Publication,
            delta: Option<&[u8]>,
            format: FrameFormat,
        ) -> Bytes {
            let payload = String::from_utf8_lossy(delta.unwrap_or(&p.data));
            let kind = if delta.is_some() { "delta" } else { "full" };
            Bytes::from(format!(
                "{}|{channel}|{}|{kind}|{payload}",
                format.0, p.offset
            ))
        }
        fn join_leave(
            &self,
            channel: &str,
            join: bool,
            info: &ClientInfo,
            _: FrameFormat,
        ) -> Bytes {
            let kind = if join { "join" } else { "leave" };
            Bytes::from(format!("{kind}|{channel}|{}", info.client))
        }
    }

    fn opts(join_leave: bool) -> ChannelOptions {
        ChannelOptions {
            join_leave,
            ..ChannelOptions::default()
        }
    }

    fn hub() -> Hub {
        Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()))
    }

    fn subscriber(key: ClientKey, format: u8) -> Subscriber {
        Subscriber::new(
            key,
            Arc::new(Outbox::new(1 << 20)),
            FrameFormat(format),
            Arc::new(ClientInfo {
                user: format!("u{key}"),
                client: format!("c{key}"),
                conn_info: None,
                chan_info: None,
            }),
        )
    }

    fn take(outbox: &Outbox) -> Vec<String> {
        let mut all = Vec::new();
        // One vectored write takes at most MAX_WRITE_FRAMES frames.
        while outbox.has_frames() {
            outbox
                .write_with::<()>(usize::MAX, |slices| {
                    let mut n = 0;
                    for s in slices {
                        all.push(String::from_utf8_lossy(s).into_owned());
                        n += s.len();
                    }
                    Ok(n)
                })
                .expect("drain");
        }
        all
    }

    #[test]
    fn channels_come_and_go() {
        let hub = hub();
        let a = subscriber(1, 0);
        let (_, pos) = hub
            .subscribe("c", a.clone(), opts(false), None, |_| None)
            .expect("sub");
        assert_eq!(pos.position.offset, 0);
        assert_eq!(hub.channels(None).len(), 1);
        assert_eq!(
            hub.subscribe("c", a, opts(false), None, |_| None)
                .expect_err("twice"),
            SubscribeError::AlreadySubscribed
        );
        assert!(hub.unsubscribe("c", 1));
        assert!(!hub.unsubscribe("c", 1));
        assert!(hub.channels(None).is_empty());
        assert_eq!(hub.counters().channels.load(Ordering::Relaxed), 0);
        assert_eq!(hub.counters().subscriptions.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn publications_are_ordered_and_encoded_once_per_format() {
        let hub = hub();
        let subs: Vec<_> = (0..4).map(|k| subscriber(k, (k % 2) as u8)).collect();
        for s in &subs {
            hub.subscribe("c", s.clone(), opts(false), None, |_| None)
                .expect("sub");
        }
        for i in 0..3 {
            let p = hub
                .publish(
                    "c",
                    Bytes::from(format!("m{i}")),
                    None,
                    ChannelOptions::default(),
                    false,
                )
                .expect("publish");
            assert_eq!(p.position.offset, i + 1);
            assert_eq!(p.delivered, 4);
        }
        for s in &subs {
            let got = take(&s.outbox);
            let f = s.format.0;
            assert_eq!(
                got,
                vec![
                    format!("{f}|c|1|m0"),
                    format!("{f}|c|2|m1"),
                    format!("{f}|c|3|m2")
                ]
            );
        }
        // Same format -> the very same buffer (shared, not re-encoded).
        hub.publish(
            "c",
            Bytes::from_static(b"x"),
            None,
            ChannelOptions::default(),
            false,
        )
        .expect("publish");
        let mut ptrs = Vec::new();
        for s in subs.iter().filter(|s| s.format.0 == 0) {
            s.outbox
                .write_with::<()>(1, |sl| {
                    ptrs.push(sl[0].as_ptr() as usize);
                    Ok(sl[0].len())
                })
                .expect("drain");
        }
        assert_eq!(ptrs.len(), 2);
        assert_eq!(ptrs[0], ptrs[1]);
    }

    #[test]
    fn channels_beyond_the_limit_are_refused() {
        let hub = hub().with_max_channels(2);
        for (key, name) in [(1, "a"), (2, "b")] {
            hub.subscribe(name, subscriber(key, 0), opts(false), None, |_| None)
                .expect("within the limit");
        }
        assert_eq!(
            hub.subscribe("c", subscriber(3, 0), opts(false), None, |_| None)
                .expect_err("third channel"),
            SubscribeError::ChannelLimit
        );
        // Existing channels still take subscribers and publications.
        hub.subscribe("a", subscriber(3, 0), opts(false), None, |_| None)
            .expect("existing channel");
        // A publish that keeps history would create a channel: refused too.
        assert_eq!(
            hub.publish("h", Bytes::from_static(b"x"), None, with_history(5), false)
                .expect_err("would create"),
            PublishError::ChannelLimit
        );
        // Without history it creates nothing, so it is not limited.
        hub.publish("z", Bytes::from_static(b"x"), None, opts(false), false)
            .expect("creates nothing");
        assert_eq!(hub.counters().channels.load(Ordering::Relaxed), 2);
        // Only the accepted publish counts as a publication.
        assert_eq!(hub.counters().publications.load(Ordering::Relaxed), 1);
        hub.unsubscribe("b", 2);
        hub.subscribe("c", subscriber(3, 0), opts(false), None, |_| None)
            .expect("a slot came free");
    }

    #[test]
    fn publish_to_empty_channel_reaches_nobody() {
        let hub = hub();
        let p = hub
            .publish(
                "nobody",
                Bytes::from_static(b"x"),
                None,
                ChannelOptions::default(),
                false,
            )
            .expect("publish");
        assert_eq!(p.delivered, 0);
        assert_eq!(p.position.offset, 0);
    }

    #[test]
    fn join_and_leave_are_announced_to_others() {
        let hub = hub();
        let a = subscriber(1, 0);
        let b = subscriber(2, 0);
        hub.subscribe("c", a.clone(), opts(true), None, |_| None)
            .expect("a");
        hub.subscribe("c", b.clone(), opts(true), None, |_| None)
            .expect("b");
        hub.unsubscribe("c", 2);
        assert_eq!(take(&a.outbox), vec!["join|c|c2", "leave|c|c2"]);
        assert!(take(&b.outbox).is_empty());
    }

    #[test]
    fn epoch_changes_when_channel_is_recreated() {
        let hub = hub();
        let (_, first) = hub
            .subscribe("c", subscriber(1, 0), opts(false), None, |_| None)
            .expect("sub");
        hub.unsubscribe("c", 1);
        let (_, second) = hub
            .subscribe("c", subscriber(1, 0), opts(false), None, |_| None)
            .expect("sub");
        assert_ne!(first.position.epoch, second.position.epoch);
    }

    /// Channels share the epoch string until a removal retires it; a recreated channel
    /// never gets an epoch its earlier incarnation had, even while other channels keep
    /// the old one.
    #[test]
    fn channels_share_an_epoch_until_one_is_removed() {
        let hub = hub();
        let epoch = |channel: &str, key| {
            let (_, joined) = hub
                .subscribe(channel, subscriber(key, 0), opts(false), None, |_| None)
                .expect("sub");
            joined.position.epoch
        };
        let a = epoch("a", 1);
        let b = epoch("b", 2);
        assert!(Arc::ptr_eq(&a, &b), "one string for both");
        hub.unsubscribe("a", 1);
        let a2 = epoch("a", 1);
        assert_ne!(a2, a, "a new incarnation, a new epoch");
        let c = epoch("c", 3);
        assert!(Arc::ptr_eq(&a2, &c), "shared again after the removal");
        // Removing a channel whose epoch is no longer the shared one retires nothing.
        hub.unsubscribe("b", 2);
        assert!(Arc::ptr_eq(&epoch("d", 4), &c));
        hub.unsubscribe("a", 1);
        hub.unsubscribe("c", 3);
        let a3 = epoch("a", 1);
        assert!(a3 != a && a3 != a2);
    }

    #[test]
    fn presence_lists_subscribers() {
        let hub = hub();
        hub.subscribe("c", subscriber(1, 0), opts(false), None, |_| None)
            .expect("sub");
        hub.subscribe("c", subscriber(2, 0), opts(false), None, |_| None)
            .expect("sub");
        let mut users: Vec<_> = hub.presence("c").iter().map(|i| i.user.clone()).collect();
        users.sort();
        assert_eq!(users, vec!["u1", "u2"]);
    }

    fn with_history(size: usize) -> ChannelOptions {
        ChannelOptions {
            history: HistoryPolicy {
                size,
                ttl_ms: 0,
                max_bytes: 0,
            },
            ..ChannelOptions::default()
        }
    }

    fn data_of(frames: &[String]) -> Vec<String> {
        frames
            .iter()
            .map(|f| f.rsplit('|').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn history_outlives_subscribers_until_swept() {
        let hub = hub();
        let o = with_history(2);
        for i in 0..3 {
            hub.publish("h", Bytes::from(format!("m{i}")), None, o, false)
                .expect("publish");
        }
        let (page, pos) = hub
            .history(
                "h",
                HistoryQuery {
                    since: None,
                    limit: 10,
                    reverse: false,
                    max_bytes: usize::MAX,
                },
                None,
                o,
            )
            .expect("history");
        assert_eq!(pos.offset, 3);
        assert_eq!(
            page.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![2, 3]
        );
        // Shrink the policy to nothing: the sweep removes the channel.
        hub.history(
            "h",
            HistoryQuery {
                since: None,
                limit: 0,
                reverse: false,
                max_bytes: usize::MAX,
            },
            None,
            with_history(0),
        )
        .expect_err("disabled");
        hub.publish("h", Bytes::from_static(b"x"), None, with_history(1), false)
            .expect("publish");
        hub.sweep();
        assert!(hub.position("h").is_some(), "history keeps the channel");
    }

    #[test]
    fn recovery_returns_the_gap_or_refuses() {
        let hub = hub();
        let o = with_history(3);
        for i in 1..=4 {
            hub.publish("r", Bytes::from(format!("m{i}")), None, o, false)
                .expect("publish");
        }
        let epoch = hub
            .position("r")
            .expect("history keeps it")
            .epoch
            .to_string();
        let from = |offset: u64, epoch: &str| RecoverFrom {
            offset,
            epoch: epoch.to_string(),
            max_bytes: usize::MAX,
        };
        let (_, joined) = hub
            .subscribe("r", subscriber(2, 0), o, Some(&from(2, &epoch)), |_| None)
            .expect("sub");
        let got: Vec<u64> = joined
            .recovered
            .expect("covered")
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(got, vec![3, 4]);
        let (_, joined) = hub
            .subscribe("r", subscriber(3, 0), o, Some(&from(0, &epoch)), |_| None)
            .expect("sub");
        assert!(
            joined.recovered.is_none(),
            "offset 1 fell out of a 3-entry history"
        );
        let (_, joined) = hub
            .subscribe("r", subscriber(4, 0), o, Some(&from(4, "other")), |_| None)
            .expect("sub");
        assert!(joined.recovered.is_none(), "another epoch");
    }

    /// The hard part: publishers race a recovering subscriber; it must see every
    /// publication exactly once, in order (recovered ones, then live ones).
    #[test]
    fn recovery_hand_over_under_concurrent_publishing() {
        let hub = Arc::new(hub());
        let o = with_history(100_000);
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 1..=20_000u64 {
                    hub.publish("race", Bytes::from(i.to_string()), None, o, false)
                        .expect("publish");
                }
            })
        };
        // Subscribe with recovery from offset 0 while publishing is under way.
        let (mut seen, outbox) = loop {
            let Some(position) = hub.position("race").filter(|p| p.offset > 1000) else {
                std::thread::yield_now();
                continue;
            };
            let sub = subscriber(9, 0);
            let outbox = sub.outbox.clone();
            let from = RecoverFrom {
                offset: 0,
                epoch: position.epoch.to_string(),
                max_bytes: usize::MAX,
            };
            let (_, joined) = hub
                .subscribe("race", sub, o, Some(&from), |_| None)
                .expect("sub");
            let recovered: Vec<u64> = joined
                .recovered
                .expect("all in history")
                .iter()
                .map(|p| p.offset)
                .collect();
            break (recovered, outbox);
        };
        publisher.join().expect("publisher");
        seen.extend(
            data_of(&take(&outbox))
                .iter()
                .map(|d| d.parse::<u64>().unwrap_or(0)),
        );
        assert_eq!(seen, (1..=20_000u64).collect::<Vec<_>>());
    }

    #[test]
    fn journal_sees_every_publication_in_order() {
        #[derive(Default)]
        struct Memory(Mutex<Vec<(String, u64)>>);
        impl Journal for Memory {
            fn append(
                &self,
                channel: &str,
                _epoch: &str,
                p: &Publication,
                _t: u64,
                _durable: bool,
            ) -> Result<Option<DurableAck>, crate::journal::JournalError> {
                self.0.lock().push((channel.to_string(), p.offset));
                Ok(None)
            }
        }
        let journal = Arc::new(Memory::default());
        let hub = Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()))
            .with_journal(journal.clone());
        for _ in 0..3 {
            hub.publish("j", Bytes::from_static(b"x"), None, with_history(10), false)
                .expect("publish");
        }
        assert_eq!(
            *journal.0.lock(),
            vec![
                ("j".to_string(), 1),
                ("j".to_string(), 2),
                ("j".to_string(), 3)
            ]
        );
    }

    #[test]
    fn restore_rebuilds_history_and_epoch() {
        let hub = hub();
        let o = with_history(10);
        for offset in 1..=3 {
            let p = Publication {
                data: Bytes::from_static(b"d"),
                offset,
                info: None,
                tags: None,
                delta: false,
            };
            hub.restore("x", "e1", p, now_ms(), o);
        }
        let pos = hub.position("x").expect("restored");
        assert_eq!((pos.offset, &*pos.epoch), (3, "e1"));
        let next = hub
            .publish("x", Bytes::from_static(b"d"), None, o, false)
            .expect("publish");
        assert_eq!(next.position.offset, 4, "offsets continue after a restart");
    }

    #[test]
    fn lossy_subscribers_skip_instead_of_being_cut() {
        let hub = hub();
        let o = ChannelOptions {
            lossy: true,
            ..ChannelOptions::default()
        };
        let sub = Subscriber {
            outbox: Arc::new(Outbox::new(16)),
            ..subscriber(1, 0)
        };
        hub.subscribe("l", sub.clone(), o, None, |_| None)
            .expect("sub");
        for i in 0..5 {
            hub.publish("l", Bytes::from(format!("m{i}")), None, o, false)
                .expect("publish");
        }
        assert_eq!(sub.outbox.pending_disconnect(), None, "not cut");
        let first = take(&sub.outbox);
        assert_eq!(first.len(), 2, "only what fits: {first:?}");
        hub.publish("l", Bytes::from_static(b"m5"), None, o, false)
            .expect("publish");
        assert_eq!(
            data_of(&take(&sub.outbox)),
            vec!["m5"],
            "then the newest again"
        );
        assert!(hub.counters().lossy_drops.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn quiet_history_channel_keeps_its_epoch_for_recovery() {
        let hub = hub();
        let o = with_history(10);
        let (_, joined) = hub
            .subscribe("q", subscriber(1, 0), o, None, |_| None)
            .expect("sub");
        let epoch = joined.position.epoch.to_string();
        // Everybody leaves a channel nobody published to...
        hub.unsubscribe("q", 1);
        hub.sweep();
        // ... and comes back: same epoch, nothing missed, recovered.
        let from = RecoverFrom {
            offset: 0,
            epoch,
            max_bytes: usize::MAX,
        };
        let (_, joined) = hub
            .subscribe("q", subscriber(1, 0), o, Some(&from), |_| None)
            .expect("sub");
        assert_eq!(joined.recovered, Some(Vec::new()));
        // Without history the channel goes at once.
        hub.subscribe("n", subscriber(2, 0), opts(false), None, |_| None)
            .expect("sub");
        hub.unsubscribe("n", 2);
        assert!(hub.position("n").is_none());
    }

    fn publish_n(hub: &Hub, channel: &str, n: u64, o: ChannelOptions) {
        for i in 0..n {
            hub.publish(channel, Bytes::from(format!("m{i:03}")), None, o, false)
                .expect("publish");
        }
    }

    fn from_start(hub: &Hub, channel: &str, offset: u64) -> RecoverFrom {
        RecoverFrom {
            offset,
            epoch: hub.position(channel).expect("exists").epoch.to_string(),
            max_bytes: usize::MAX,
        }
    }

    #[test]
    fn node_history_budget_evicts_own_entries_then_drops() {
        let o = with_history(100);
        let each = History::entry_bytes(&Publication {
            data: Bytes::from_static(b"m000"),
            offset: 1,
            info: None,
            tags: None,
            delta: false,
        }) as u64;
        let hub = hub().with_max_history_bytes(4 * each);
        publish_n(&hub, "a", 3, o);
        assert_eq!(
            hub.counters().history_bytes.load(Ordering::Relaxed),
            3 * each
        );
        // "b" fills the last slot, then makes room from its own history only.
        publish_n(&hub, "b", 3, o);
        assert_eq!(
            hub.counters().history_bytes.load(Ordering::Relaxed),
            4 * each
        );
        let page = |ch: &str| {
            hub.history(
                ch,
                HistoryQuery {
                    since: None,
                    limit: 100,
                    reverse: false,
                    max_bytes: usize::MAX,
                },
                None,
                o,
            )
            .expect("history")
            .0
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>()
        };
        assert_eq!(page("a"), vec![1, 2, 3], "a is untouched");
        assert_eq!(page("b"), vec![3], "b kept its newest");
        assert_eq!(hub.counters().history_dropped.load(Ordering::Relaxed), 0);
        // "c" has nothing to give up: its publication is not kept...
        let p = hub
            .publish("c", Bytes::from_static(b"m000"), None, o, false)
            .expect("publish");
        assert_eq!(p.position.offset, 1, "still published, with its offset");
        assert_eq!(hub.counters().history_dropped.load(Ordering::Relaxed), 1);
        assert!(page("c").is_empty());
        // ... and a recovery from before it is refused, never answered with a hole.
        let (_, joined) = hub
            .subscribe(
                "c",
                subscriber(1, 0),
                o,
                Some(&from_start(&hub, "c", 0)),
                |_| None,
            )
            .expect("sub");
        assert!(joined.recovered.is_none(), "offset 1 is not in history");
        // Room comes back when history goes: "c" keeps its next publication, and the
        // history starts after the one it could not keep.
        hub.history(
            "a",
            HistoryQuery {
                since: None,
                limit: 0,
                reverse: false,
                max_bytes: 0,
            },
            None,
            with_history(1),
        )
        .expect("read evicts to the smaller policy");
        hub.publish("c", Bytes::from_static(b"m001"), None, o, false)
            .expect("publish");
        assert_eq!(page("c"), vec![2]);
        let (_, joined) = hub
            .subscribe(
                "c",
                subscriber(2, 0),
                o,
                Some(&from_start(&hub, "c", 0)),
                |_| None,
            )
            .expect("sub");
        assert!(joined.recovered.is_none(), "offset 1 is still missing");
        let (_, joined) = hub
            .subscribe(
                "c",
                subscriber(3, 0),
                o,
                Some(&from_start(&hub, "c", 1)),
                |_| None,
            )
            .expect("sub");
        assert_eq!(
            joined.recovered.map(|r| r.len()),
            Some(1),
            "after the hole it recovers"
        );
        // The gauge matches what the channels hold.
        let held: usize = ["a", "b", "c"].iter().map(|c| page(c).len()).sum();
        assert_eq!(
            hub.counters().history_bytes.load(Ordering::Relaxed),
            held as u64 * each
        );
    }

    #[test]
    fn channel_history_budget_evicts_oldest() {
        let each = History::entry_bytes(&Publication {
            data: Bytes::from_static(b"m000"),
            offset: 1,
            info: None,
            tags: None,
            delta: false,
        });
        let o = ChannelOptions {
            history: HistoryPolicy {
                size: 100,
                ttl_ms: 0,
                max_bytes: 2 * each,
            },
            ..ChannelOptions::default()
        };
        let hub = hub();
        publish_n(&hub, "h", 5, o);
        assert_eq!(
            hub.counters().history_bytes.load(Ordering::Relaxed),
            2 * each as u64
        );
        let (_, joined) = hub
            .subscribe(
                "h",
                subscriber(1, 0),
                o,
                Some(&from_start(&hub, "h", 3)),
                |_| None,
            )
            .expect("sub");
        assert_eq!(joined.recovered.map(|r| r.len()), Some(2));
    }

    #[test]
    fn oversized_recovery_is_refused_not_sent() {
        let hub = hub();
        let o = with_history(100);
        publish_n(&hub, "r", 10, o);
        let one = History::wire_bytes(&Publication {
            data: Bytes::from_static(b"m000"),
            offset: 1,
            info: None,
            tags: None,
            delta: false,
        });
        let mut from = from_start(&hub, "r", 0);
        from.max_bytes = 10 * one - 1;
        let (_, joined) = hub
            .subscribe("r", subscriber(1, 0), o, Some(&from), |_| None)
            .expect("sub");
        assert!(joined.recovered.is_none());
        assert!(joined.too_large);
        assert_eq!(
            hub.counters().recoveries_too_large.load(Ordering::Relaxed),
            1
        );
        from.max_bytes = 10 * one;
        let (_, joined) = hub
            .subscribe("r", subscriber(2, 0), o, Some(&from), |_| None)
            .expect("sub");
        assert!(!joined.too_large);
        assert_eq!(joined.recovered.map(|r| r.len()), Some(10));
    }

    /// One broadcast observation per publication that reached local subscribers, in
    /// the histogram of the channel's namespace slot; none without subscribers, and
    /// none for a slot without a histogram.
    #[test]
    fn fan_out_is_timed_once_per_publication_in_its_namespace() {
        let hub = Hub::new(
            Arc::new(TextEncoder),
            Arc::new(HubCounters::with_namespaces(2)),
        );
        let slot = |namespace| ChannelOptions {
            namespace,
            ..ChannelOptions::default()
        };
        for key in 0..3 {
            hub.subscribe("a", subscriber(key, 0), slot(1), None, |_| None)
                .expect("sub");
        }
        let publish = |channel: &str, options| {
            hub.publish(channel, Bytes::from_static(b"x"), None, options, false)
                .expect("publish")
        };
        for _ in 0..4 {
            assert_eq!(publish("a", slot(1)).delivered, 3);
        }
        publish("nobody", slot(0));
        let counts: Vec<u64> = hub
            .counters()
            .broadcast
            .iter()
            .map(Histogram::count)
            .collect();
        assert_eq!(counts, [0, 4]);
        hub.subscribe("b", subscriber(9, 0), slot(7), None, |_| None)
            .expect("sub");
        publish("b", slot(7));
        let counts: Vec<u64> = hub
            .counters()
            .broadcast
            .iter()
            .map(Histogram::count)
            .collect();
        assert_eq!(counts, [0, 4]);
    }

    /// A subscribe reply that overflows the subscriber's queue cuts it as a slow
    /// consumer, and is counted like one cut by fan-out.
    #[test]
    fn a_first_frame_that_overflows_counts_a_slow_consumer() {
        let hub = hub();
        let small = Subscriber {
            outbox: Arc::new(Outbox::new(4)),
            ..subscriber(1, 0)
        };
        hub.subscribe("c", small, opts(false), None, |_| {
            Some(Bytes::from_static(b"too long for four bytes"))
        })
        .expect("sub");
        assert_eq!(hub.counters().slow_consumers.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn presence_stats_and_snapshot_follow_membership() {
        let hub = hub();
        let named = |key: ClientKey, user: &str| Subscriber {
            info: Arc::new(ClientInfo {
                user: user.to_string(),
                client: format!("c{key}"),
                conn_info: None,
                chan_info: None,
            }),
            ..subscriber(key, 0)
        };
        for (key, user) in [(1, "alice"), (2, "alice"), (3, "bob"), (4, ""), (5, "")] {
            hub.subscribe("p", named(key, user), opts(false), None, |_| None)
                .expect("sub");
        }
        assert_eq!(hub.presence_stats("p"), (5, 3));
        let first = hub.presence("p");
        assert_eq!(first.len(), 5);
        assert!(
            Arc::ptr_eq(&first, &hub.presence("p")),
            "no change, no rebuild"
        );
        hub.unsubscribe("p", 1);
        assert_eq!(hub.presence_stats("p"), (4, 3), "alice still has one");
        let second = hub.presence("p");
        assert!(!Arc::ptr_eq(&first, &second), "rebuilt after a change");
        assert_eq!(second.len(), 4);
        hub.unsubscribe("p", 2);
        hub.unsubscribe("p", 4);
        assert_eq!(hub.presence_stats("p"), (2, 2));
        let mut users: Vec<_> = hub.presence("p").iter().map(|i| i.user.clone()).collect();
        users.sort();
        assert_eq!(users, vec!["", "bob"]);
        assert_eq!(hub.presence_stats("none"), (0, 0));
    }

    #[test]
    fn creation_budget_applies_only_to_new_channels() {
        let hub = hub();
        hub.subscribe("old", subscriber(1, 0), opts(false), None, |_| None)
            .expect("sub");
        let mut asked = 0;
        let mut never = || {
            asked += 1;
            false
        };
        hub.subscribe_limited(
            "old",
            subscriber(2, 0),
            opts(false),
            None,
            &mut never,
            |_| None,
        )
        .expect("an existing channel needs no budget");
        assert_eq!(
            hub.subscribe_limited(
                "new",
                subscriber(2, 0),
                opts(false),
                None,
                &mut never,
                |_| None
            )
            .expect_err("would create"),
            SubscribeError::CreationLimit
        );
        assert_eq!(asked, 1);
        assert!(hub.position("new").is_none());
    }

    /// A state-like JSON document: most of it stays, a few values change.
    fn state_doc(i: u64) -> String {
        format!(
            "{{\"seq\":{i},\"price\":{},\"venue\":\"an exchange with a long name\",\"currency\":\"EUR\",\"volume\":{}}}",
            100 + i % 7,
            i * 31
        )
    }

    /// A delta subscription's frames, replayed as a client would: `(offset, kind, data)`
    /// with every delta applied to the data before it.
    fn replay(frames: &[String]) -> Vec<(u64, String, String)> {
        let mut last: Vec<u8> = Vec::new();
        frames
            .iter()
            .map(|f| {
                let parts: Vec<&str> = f.splitn(5, '|').collect();
                let offset = parts[2].parse().expect("offset");
                let data = match parts[3] {
                    "full" => parts[4].as_bytes().to_vec(),
                    "delta" => delta::apply(&last, parts[4].as_bytes(), 1 << 20).expect("applies"),
                    other => panic!("not a delta subscription's frame: {other} in {f}"),
                };
                last = data.clone();
                (
                    offset,
                    parts[3].to_string(),
                    String::from_utf8(data).expect("utf-8"),
                )
            })
            .collect()
    }

    fn kinds(replayed: &[(u64, String, String)]) -> Vec<&str> {
        replayed.iter().map(|(_, k, _)| k.as_str()).collect()
    }

    #[test]
    fn delta_subscribers_get_full_then_deltas_that_apply() {
        let hub = hub();
        let a = subscriber(1, 0).with_delta(true);
        let b = subscriber(2, 0);
        let c = subscriber(3, 0).with_delta(true);
        let d = subscriber(4, 1).with_delta(true);
        for s in [&a, &b, &c, &d] {
            hub.subscribe("d", s.clone(), opts(false), None, |_| None)
                .expect("sub");
        }
        let docs: Vec<String> = (1..=4).map(state_doc).collect();
        for doc in &docs {
            hub.publish("d", Bytes::from(doc.clone()), None, opts(false), false)
                .expect("publish");
        }
        // Nothing alike: the delta would not be smaller, so the data goes in full, and
        // the next one is a delta against it again.
        let unlike = "#".repeat(40);
        let like = format!("{unlike}!");
        for doc in [&unlike, &like] {
            hub.publish("d", Bytes::from(doc.clone()), None, opts(false), false)
                .expect("publish");
        }
        let want: Vec<String> = docs.iter().chain([&unlike, &like]).cloned().collect();
        for s in [&a, &c, &d] {
            let replayed = replay(&take(&s.outbox));
            assert_eq!(
                kinds(&replayed),
                vec!["full", "delta", "delta", "delta", "full", "delta"],
                "subscriber {}",
                s.key
            );
            let data: Vec<&String> = replayed.iter().map(|(_, _, d)| d).collect();
            assert_eq!(data, want.iter().collect::<Vec<_>>());
            let offsets: Vec<u64> = replayed.iter().map(|(o, _, _)| *o).collect();
            assert_eq!(offsets, (1..=6).collect::<Vec<_>>());
        }
        // The plain subscriber of the same channel gets plain frames.
        assert_eq!(data_of(&take(&b.outbox)), want);
        // One frame per kind and format: the two format-0 delta subscribers share it.
        hub.publish(
            "d",
            Bytes::from(format!("{like}?")),
            None,
            opts(false),
            false,
        )
        .expect("publish");
        let mut ptrs = Vec::new();
        for s in [&a, &c] {
            s.outbox
                .write_with::<()>(1, |sl| {
                    ptrs.push(sl[0].as_ptr() as usize);
                    Ok(sl[0].len())
                })
                .expect("drain");
        }
        assert_eq!(ptrs[0], ptrs[1]);
        let first_d = take(&d.outbox);
        assert!(first_d[0].starts_with("1|d|7|delta|"), "{first_d:?}");
    }

    #[test]
    fn a_lossy_drop_sends_the_next_publication_in_full() {
        let hub = hub();
        let o = ChannelOptions {
            lossy: true,
            ..ChannelOptions::default()
        };
        // Room for one full frame and a delta or two, not for more.
        let sub = Subscriber {
            outbox: Arc::new(Outbox::new(200)),
            ..subscriber(1, 0).with_delta(true)
        };
        hub.subscribe("l", sub.clone(), o, None, |_| None)
            .expect("sub");
        let mut frames = Vec::new();
        let mut offset = 0;
        for round in 0..3 {
            for _ in 0..6 {
                offset += 1;
                hub.publish("l", Bytes::from(state_doc(offset)), None, o, false)
                    .expect("publish");
            }
            assert!(
                hub.counters().lossy_drops.load(Ordering::Relaxed) > round,
                "the queue overflowed"
            );
            frames.extend(take(&sub.outbox));
        }
        let replayed = replay(&frames);
        let mut previous = 0;
        let mut deltas = 0;
        for (offset, kind, data) in &replayed {
            assert_eq!(*data, state_doc(*offset), "offset {offset}");
            if *offset != previous + 1 {
                assert_eq!(
                    kind, "full",
                    "after a gap (at {offset}) the data comes in full"
                );
            }
            deltas += usize::from(kind == "delta");
            previous = *offset;
        }
        assert!(deltas >= 3, "{replayed:?}");
        assert!(previous < 18, "some were dropped");
    }

    #[test]
    fn resubscribing_starts_in_full_and_the_last_one_out_drops_the_kept_data() {
        let hub = hub();
        let a = subscriber(1, 0).with_delta(true);
        hub.subscribe("r", a.clone(), opts(false), None, |_| None)
            .expect("sub");
        // A plain subscriber keeps the channel when the delta subscriber leaves.
        hub.subscribe("r", subscriber(2, 0), opts(false), None, |_| None)
            .expect("sub");
        let publish = |i: u64| {
            hub.publish("r", Bytes::from(state_doc(i)), None, opts(false), false)
                .expect("publish");
        };
        publish(1);
        publish(2);
        assert_eq!(kinds(&replay(&take(&a.outbox))), vec!["full", "delta"]);
        let kept = |hub: &Hub| {
            let entry = hub.channel("r").expect("channel");
            let state = entry.state.lock();
            state.extras.delta().map(|d| d.subscribers)
        };
        assert_eq!(kept(&hub), Some(1));
        hub.unsubscribe("r", 1);
        assert_eq!(kept(&hub), None, "no delta subscriber: nothing kept");
        publish(3);
        hub.subscribe("r", a.clone(), opts(false), None, |_| None)
            .expect("again");
        publish(4);
        publish(5);
        let replayed = replay(&take(&a.outbox));
        assert_eq!(kinds(&replayed), vec!["full", "delta"]);
        assert_eq!(replayed[0].2, state_doc(4));
        assert_eq!(replayed[1].2, state_doc(5));
    }
}
