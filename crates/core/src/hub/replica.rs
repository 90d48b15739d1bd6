//! The hub as a replica of streams that a broker holds (cluster engines).
//!
//! Each channel with local subscribers keeps the position this node delivered up to
//! (epoch and offset) and a cache of recent publications (the namespace's history
//! policy). Publications arrive from the broker through [`Hub::deliver`], in offset
//! order but possibly with holes; a hole is healed from the broker's history before
//! anything newer is delivered ([`Delivery::Heal`], [`Hub::heal`]). Only when history
//! no longer covers it, or the stream restarted under a new epoch, are the channel's
//! subscribers disconnected with `INSUFFICIENT_STATE` (4006), to come back with
//! recovery.
//!
//! A subscriber joins in two steps: [`Hub::prepare_join`] registers the interest (the
//! channel stays and the node stays subscribed to the broker while the join runs), then
//! [`Hub::join`] adds it under the channel lock at the replica's position. Recovery is
//! served from the cache when it covers the gap, else from a broker read merged with the
//! cache: the read covers the client's gap up to some offset, the cache what arrived
//! since, so every publication is handed over exactly once and in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use starling_protocol::Publication;
use starling_protocol::codes;

use super::{
    Channel, ChannelOptions, ChannelState, Hub, Joined, RecoverFrom, SubscribeError, Subscriber,
    now_ms,
};
use crate::engine::HistoryPage;
use crate::history::HistoryError;

/// How long a replica channel stays after its last subscriber left, by default (the
/// node stays subscribed to the broker meanwhile), so that a client that reconnects at
/// once does not make the node unsubscribe and subscribe again.
pub(super) const LINGER_MS: u64 = 2_000;

/// Most publications held while a channel syncs or heals; a heal that needs more tells
/// the subscribers to recover instead.
const MAX_HELD: usize = 4096;

/// Sync state of one replica channel.
#[derive(Debug, Default)]
pub(super) struct Replica {
    /// The position is known: publications are checked against it and delivered.
    synced: bool,
    /// Joins in progress; they keep the channel (and the broker subscription) alive.
    pub(super) joining: u32,
    /// A history read is filling a hole; newer publications wait in `held`.
    healing: bool,
    /// Publications that arrived before the channel synced or while it heals, in order.
    held: VecDeque<(Arc<str>, Publication)>,
    /// When the channel last lost its last subscriber or join (ms since the Unix
    /// epoch): the linger counts from here, not from the last publication, so that a
    /// busy channel nobody here watches any more is still let go.
    pub(super) quiet_since_ms: u64,
}

/// What the node must do after a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing more.
    Done,
    /// A hole: read the channel's history after `after` (forward) and pass the page to
    /// [`Hub::heal`].
    Heal {
        /// The channel.
        channel: Arc<str>,
        /// The last offset delivered in order.
        after: u64,
    },
}

/// A join in progress (see [`Hub::prepare_join`]). Dropping it without joining (the
/// connection went away, the broker failed) releases the channel.
pub struct JoinTicket {
    name: Arc<str>,
    entry: Arc<Channel>,
    joined: bool,
}

impl JoinTicket {
    /// The channel's shared name.
    pub fn channel(&self) -> &Arc<str> {
        &self.name
    }
}

impl std::fmt::Debug for JoinTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTicket")
            .field("channel", &self.name)
            .finish()
    }
}

impl Drop for JoinTicket {
    fn drop(&mut self) {
        if !self.joined {
            let mut state = self.entry.state.lock();
            if let Some(replica) = state.extras.replica_mut() {
                replica.joining = replica.joining.saturating_sub(1);
                // The sweeper removes the channel once it is idle.
                replica.quiet_since_ms = now_ms();
            }
        }
    }
}

/// The outcome of [`Hub::join`].
#[derive(Debug)]
pub enum JoinOutcome {
    /// The subscriber is in; its first frame was queued.
    Joined(Arc<str>, Joined),
    /// Read from the broker (forward from `since`, or the position only) and call
    /// [`Hub::join`] again with the page.
    Read {
        /// Forward read start (the client's offset), `None`: the position only.
        since: Option<u64>,
    },
}

impl Hub {
    /// Registers a join of `channel` (creating the channel as a replica when missing,
    /// within the node's limits and the subscriber's creation budget). Returns the
    /// ticket and whether the node must (still) subscribe to the broker for the
    /// channel: true until the channel is synced.
    pub fn prepare_join(
        &self,
        channel: &str,
        options: ChannelOptions,
        may_create: &mut dyn FnMut() -> bool,
    ) -> Result<(JoinTicket, bool), SubscribeError> {
        let mut shard = self.shard(channel).lock();
        let (name, entry) =
            self.get_or_create(&mut shard, channel, options, self.max_channels, may_create)?;
        let mut state = entry.state.lock();
        drop(shard);
        let replica = state.extras.replica_or_default();
        replica.joining = replica.joining.saturating_add(1);
        replica.quiet_since_ms = now_ms();
        let synced = replica.synced;
        drop(state);
        Ok((
            JoinTicket {
                name,
                entry,
                joined: false,
            },
            !synced,
        ))
    }

    /// Adds the subscriber of `ticket` at the replica's position, with recovery when
    /// asked. `page` is a broker read made after the broker confirmed the node's
    /// subscription (see [`JoinOutcome::Read`]). `first` builds the subscriber's first
    /// frame (it is called once, when the subscriber joins), queued under the channel
    /// lock before any live publication.
    pub fn join(
        &self,
        ticket: &mut JoinTicket,
        subscriber: Subscriber,
        options: ChannelOptions,
        recover: Option<&RecoverFrom>,
        page: Option<&HistoryPage>,
        first: &mut (dyn FnMut(&Joined) -> Option<Bytes> + Send),
    ) -> Result<JoinOutcome, SubscribeError> {
        let entry = ticket.entry.clone();
        let mut guard = entry.state.lock();
        let state = &mut *guard;
        if state.subscribers.contains_key(subscriber.key) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        state.options = options;
        let synced = state.extras.replica().is_some_and(|r| r.synced);
        if !synced {
            let Some(page) = page else {
                return Ok(JoinOutcome::Read {
                    since: recover.map(|r| r.offset),
                });
            };
            self.sync(&ticket.name, state, page);
            if !state.extras.replica().is_some_and(|r| r.synced) {
                // What was held meanwhile came from another epoch than the read: read
                // again.
                return Ok(JoinOutcome::Read {
                    since: recover.map(|r| r.offset),
                });
            }
        }
        let now = now_ms();
        self.evict(state, now, options.history);
        let (recovered, too_large) = match recover {
            None => (None, false),
            Some(from) => match self.recover(state, from, page) {
                Some(Recovery::Recovered(publications)) => (Some(publications), false),
                Some(Recovery::TooLarge) => (None, true),
                Some(Recovery::Lost) => (None, false),
                None => {
                    return Ok(JoinOutcome::Read {
                        since: Some(from.offset),
                    });
                }
            },
        };
        let joined = Joined {
            position: state.position(),
            recoverable: options.history.enabled(),
            recovered,
            too_large,
        };
        if let Some(frame) = first(&joined) {
            self.push_first(&subscriber, frame);
        }
        // (The join is announced through the broker, to every node.)
        state.add_member(subscriber);
        if let Some(replica) = state.extras.replica_mut() {
            replica.joining = replica.joining.saturating_sub(1);
        }
        ticket.joined = true;
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(JoinOutcome::Joined(ticket.name.clone(), joined))
    }

    /// Takes the position of a first read: publications held meanwhile that come after
    /// it are delivered (cached) in order, the rest dropped.
    fn sync(&self, channel: &str, state: &mut ChannelState, page: &HistoryPage) {
        self.clear_history(state);
        state.epoch = page.position.epoch.clone();
        state.offset = page.position.offset;
        // A complete forward page that ends at the position seeds the cache.
        let seeds = page.complete
            && page
                .publications
                .last()
                .is_some_and(|p| p.offset == page.position.offset);
        if seeds && state.options.history.enabled() {
            let now = now_ms();
            let policy = state.options.history;
            for p in &page.publications {
                self.keep(state, now, p.clone(), policy);
            }
        }
        let held = match state.extras.replica_mut() {
            Some(replica) => {
                replica.synced = true;
                std::mem::take(&mut replica.held)
            }
            None => VecDeque::new(),
        };
        self.release(channel, state, held);
    }

    /// Delivers held publications in order after a sync or a heal; stops at the next
    /// hole (and holds the rest again).
    fn release(
        &self,
        channel: &str,
        state: &mut ChannelState,
        mut held: VecDeque<(Arc<str>, Publication)>,
    ) -> Option<u64> {
        let now = now_ms();
        while let Some((epoch, publication)) = held.pop_front() {
            if *epoch != *state.epoch && !state.epoch.is_empty() {
                // Another stream incarnation: what is held is of no use any more.
                self.lose(state);
                return None;
            }
            if publication.offset <= state.offset && !state.epoch.is_empty() {
                continue;
            }
            if publication.offset == state.offset + 1 || state.epoch.is_empty() {
                state.epoch = epoch;
                self.fan_out(channel, state, publication, now);
                continue;
            }
            // Still a hole: hold the rest and heal from here.
            held.push_front((epoch, publication));
            if let Some(replica) = state.extras.replica_mut() {
                replica.held = held;
            }
            return Some(state.offset);
        }
        None
    }

    /// The publications a recovering subscriber missed, or why they cannot be recovered
    /// (another epoch or gone from history: `Lost`; over the byte cap: `TooLarge`);
    /// `None` when a broker read is needed first.
    fn recover(
        &self,
        state: &ChannelState,
        from: &RecoverFrom,
        page: Option<&HistoryPage>,
    ) -> Option<Recovery> {
        if *from.epoch != *state.epoch {
            return Some(Recovery::Lost);
        }
        match state
            .history
            .since(from.offset, state.offset, from.max_bytes)
        {
            Ok(publications) => return Some(Recovery::Recovered(publications)),
            Err(HistoryError::TooLarge) => {
                self.counters
                    .recoveries_too_large
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Recovery::TooLarge);
            }
            Err(HistoryError::Unrecoverable) => {}
        }
        // The cache does not reach back far enough: the broker's history, then the
        // cache for what arrived after the read.
        let page = page?;
        if page.position.epoch != state.epoch || !page.complete {
            return Some(Recovery::Lost);
        }
        let mut out: Vec<Publication> = page
            .publications
            .iter()
            .filter(|p| p.offset > from.offset && p.offset <= state.offset)
            .cloned()
            .collect();
        let mut bytes = out.iter().map(crate::history::History::wire_bytes).sum();
        if bytes > from.max_bytes {
            self.counters
                .recoveries_too_large
                .fetch_add(1, Ordering::Relaxed);
            return Some(Recovery::TooLarge);
        }
        let read_to = out.last().map_or(from.offset, |p| p.offset);
        if read_to < state.offset {
            bytes = from.max_bytes - bytes;
            match state.history.since(read_to, state.offset, bytes) {
                Ok(rest) => out.extend(rest),
                Err(HistoryError::TooLarge) => {
                    self.counters
                        .recoveries_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(Recovery::TooLarge);
                }
                // The read stopped short (its limit) and the cache does not bridge
                // the rest: the client pages through history.
                Err(HistoryError::Unrecoverable) => return Some(Recovery::Lost),
            }
        }
        Some(Recovery::Recovered(out))
    }

    /// A publication from the broker. Delivered at once when it is the next one; held
    /// while the channel syncs or heals; a hole starts a heal.
    pub fn deliver(&self, channel: &str, epoch: &str, publication: Publication) -> Delivery {
        let Some(entry) = self.channel(channel) else {
            return Delivery::Done;
        };
        let mut guard = entry.state.lock();
        let state = &mut *guard;
        if state.gone {
            return Delivery::Done;
        }
        let Some(replica) = state.extras.replica_mut() else {
            return Delivery::Done;
        };
        if !replica.synced || replica.healing {
            if replica.held.len() >= MAX_HELD {
                if replica.synced {
                    // Too far behind to heal in memory.
                    self.lose(state);
                } else {
                    // Not synced yet: the first read will refill what is dropped.
                    replica.held.clear();
                }
                return Delivery::Done;
            }
            replica.held.push_back((Arc::from(epoch), publication));
            return Delivery::Done;
        }
        let now = now_ms();
        if !self.same_stream(state, epoch) {
            return Delivery::Done;
        }
        if publication.offset <= state.offset {
            return Delivery::Done;
        }
        if publication.offset == state.offset + 1 {
            self.fan_out(channel, state, publication, now);
            return Delivery::Done;
        }
        self.counters.stream_gaps.fetch_add(1, Ordering::Relaxed);
        if !state.options.history.enabled() {
            // Nothing to heal from: the subscribers see the jump in offsets.
            self.fan_out(channel, state, publication, now);
            return Delivery::Done;
        }
        let after = state.offset;
        if let Some(replica) = state.extras.replica_mut() {
            replica.healing = true;
            replica.held.push_back((Arc::from(epoch), publication));
        }
        Delivery::Heal {
            channel: entry_name(channel),
            after,
        }
    }

    /// The broker's history after a heal's position (`Err`: the read failed and will not
    /// be retried, so the subscribers recover on their own).
    pub fn heal(&self, channel: &str, page: Result<&HistoryPage, ()>) -> Delivery {
        let Some(entry) = self.channel(channel) else {
            return Delivery::Done;
        };
        let mut guard = entry.state.lock();
        let state = &mut *guard;
        let healing = state.extras.replica().is_some_and(|r| r.healing);
        if state.gone || !healing {
            return Delivery::Done;
        }
        let page = match page {
            Ok(page) if page.position.epoch == state.epoch => page,
            _ => {
                self.lose(state);
                return Delivery::Done;
            }
        };
        let now = now_ms();
        let mut progressed = false;
        for p in &page.publications {
            if p.offset == state.offset + 1 {
                self.fan_out(channel, state, p.clone(), now);
                progressed = true;
            }
        }
        let held = match state.extras.replica_mut() {
            Some(replica) => {
                replica.healing = false;
                std::mem::take(&mut replica.held)
            }
            None => VecDeque::new(),
        };
        match self.release(channel, state, held) {
            None => {
                self.counters.stream_heals.fetch_add(1, Ordering::Relaxed);
                Delivery::Done
            }
            Some(after) if progressed => {
                // More to read (the page was limited): heal on.
                if let Some(replica) = state.extras.replica_mut() {
                    replica.healing = true;
                }
                Delivery::Heal {
                    channel: entry_name(channel),
                    after,
                }
            }
            Some(_) => {
                // History no longer holds the hole.
                self.lose(state);
                Delivery::Done
            }
        }
    }

    /// Compares the replica with the broker's `position` of the channel (a periodic
    /// check, or after the broker link came back): a newer position means publications
    /// were missed, another epoch that the stream restarted.
    pub fn check(&self, channel: &str, epoch: &str, offset: u64) -> Delivery {
        let Some(entry) = self.channel(channel) else {
            return Delivery::Done;
        };
        let mut guard = entry.state.lock();
        let state = &mut *guard;
        let live = state
            .extras
            .replica()
            .is_some_and(|r| r.synced && !r.healing);
        if !live || state.gone {
            return Delivery::Done;
        }
        if !self.same_stream(state, epoch) {
            return Delivery::Done;
        }
        if offset <= state.offset {
            return Delivery::Done;
        }
        self.counters.stream_gaps.fetch_add(1, Ordering::Relaxed);
        if !state.options.history.enabled() {
            // Nothing to heal from; continue from the broker's position.
            state.offset = offset;
            return Delivery::Done;
        }
        if let Some(replica) = state.extras.replica_mut() {
            replica.healing = true;
        }
        Delivery::Heal {
            channel: entry_name(channel),
            after: state.offset,
        }
    }

    /// Whether `epoch` is the replica's stream. A replica that never saw an epoch adopts
    /// it (the stream did not exist at the first read: this is its start); another
    /// epoch means the broker restarted the stream, and the subscribers' positions mean
    /// nothing in it: the replica is lost.
    fn same_stream(&self, state: &mut ChannelState, epoch: &str) -> bool {
        if *state.epoch == *epoch {
            return true;
        }
        if state.epoch.is_empty() && state.offset == 0 {
            state.epoch = Arc::from(epoch);
            return true;
        }
        self.counters.stream_resets.fetch_add(1, Ordering::Relaxed);
        self.lose(state);
        false
    }

    /// The replica lost its stream's order: disconnect the subscribers (4006, so they
    /// come back with recovery) and start over at the next join.
    fn lose(&self, state: &mut ChannelState) {
        self.counters.stream_losses.fetch_add(1, Ordering::Relaxed);
        for sub in state.subscribers.values() {
            sub.outbox.disconnect(codes::INSUFFICIENT_STATE);
        }
        self.clear_history(state);
        if let Some(replica) = state.extras.replica_mut() {
            replica.synced = false;
            replica.healing = false;
            replica.held.clear();
        }
    }

    /// Replica channels this node listens to (for a position check).
    pub fn replica_channels(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                let state = entry.state.lock();
                if state.extras.replica().is_some_and(|r| r.synced) {
                    out.push(name.clone());
                }
            }
        }
        out
    }
}

/// How a recovery from the replica ended (see `Hub::recover`).
enum Recovery {
    /// The missed publications, oldest first.
    Recovered(Vec<Publication>),
    /// They passed the recovery's byte cap.
    TooLarge,
    /// Another epoch, or no longer in history.
    Lost,
}

fn entry_name(channel: &str) -> Arc<str> {
    Arc::from(channel)
}
