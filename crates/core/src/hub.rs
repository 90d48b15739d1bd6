//! The hub: channels, their subscribers and fan-out.
//!
//! Channels appear on first subscription and vanish when the last subscriber leaves.
//! Every publication gets the channel's next offset; each channel incarnation has a
//! random epoch, so a client can tell that offsets started over. Fan-out happens under
//! the channel's lock, which keeps publications in order for every subscriber; each
//! publication is encoded at most once per frame format, never per subscriber.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_protocol::{ClientInfo, Publication};

use crate::metrics::HubCounters;
use crate::outbox::{Outbox, PushOutcome};

/// A connection's key inside this node.
pub type ClientKey = u64;

/// Index of the wire format a subscriber wants (encoding and compression); the encoder
/// gives it meaning. At most [`MAX_FORMATS`] formats exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameFormat(pub u8);

/// Upper bound on distinct frame formats (sizes the per-publication frame cache).
pub const MAX_FORMATS: usize = 32;

/// Turns pushes into complete WebSocket frames, once per format.
pub trait FrameEncoder: Send + Sync + 'static {
    /// The frame carrying `publication` on `channel`.
    fn publication(&self, channel: &str, publication: &Publication, format: FrameFormat) -> Bytes;
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
}

/// Position of a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 before the first).
    pub offset: u64,
    /// The channel incarnation.
    pub epoch: Arc<str>,
}

/// Subscription refused by the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// This connection already subscribed to the channel.
    #[error("already subscribed")]
    AlreadySubscribed,
}

/// Result of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Where the publication sits in the channel's stream.
    pub position: StreamPosition,
    /// Subscribers it was queued to.
    pub delivered: usize,
}

struct Channel {
    state: Mutex<ChannelState>,
}

struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    join_leave: bool,
    subscribers: HashMap<ClientKey, Subscriber>,
    /// Removed from the hub; a publisher that still holds it must not deliver.
    gone: bool,
}

type Shard = Mutex<HashMap<Arc<str>, Arc<Channel>>>;

/// Channels and subscribers of this node.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    encoder: Arc<dyn FrameEncoder>,
    counters: Arc<HubCounters>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.shards.len())
            .finish()
    }
}

const SHARDS: usize = 64;

impl Hub {
    /// A hub encoding frames with `encoder` and counting into `counters`.
    pub fn new(encoder: Arc<dyn FrameEncoder>, counters: Arc<HubCounters>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            encoder,
            counters,
        }
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

    /// Adds a subscriber; creates the channel if needed. Returns the shared channel name
    /// (for the connection to keep) and the stream position at the moment of joining:
    /// every publication with a larger offset reaches the subscriber.
    ///
    /// `first` builds a frame (the subscribe reply) from that position; it is queued to
    /// the subscriber under the channel lock, so it precedes every publication it did
    /// not include.
    pub fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        join_leave: bool,
        first: impl FnOnce(&StreamPosition) -> Option<Bytes>,
    ) -> Result<(Arc<str>, StreamPosition), SubscribeError> {
        let mut shard = self.shard(channel).lock();
        let (name, entry) = match shard.get_key_value(channel) {
            Some((name, entry)) => (name.clone(), entry.clone()),
            None => {
                let name: Arc<str> = Arc::from(channel);
                let entry = Arc::new(Channel {
                    state: Mutex::new(ChannelState {
                        epoch: new_epoch(),
                        offset: 0,
                        join_leave,
                        subscribers: HashMap::new(),
                        gone: false,
                    }),
                });
                shard.insert(name.clone(), entry.clone());
                self.counters.channels.fetch_add(1, Ordering::Relaxed);
                (name, entry)
            }
        };
        let mut state = entry.state.lock();
        drop(shard);
        if state.subscribers.contains_key(&subscriber.key) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        let position = StreamPosition {
            offset: state.offset,
            epoch: state.epoch.clone(),
        };
        if let Some(frame) = first(&position) {
            subscriber.outbox.push(frame);
        }
        if state.join_leave {
            self.announce(&name, &state, true, &subscriber.info);
        }
        state.subscribers.insert(subscriber.key, subscriber);
        self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok((name, position))
    }

    /// Removes a subscriber; removes the channel when it was the last. Returns whether it
    /// was subscribed.
    pub fn unsubscribe(&self, channel: &str, key: ClientKey) -> bool {
        let mut shard = self.shard(channel).lock();
        let Some(entry) = shard.get(channel).cloned() else {
            return false;
        };
        let mut state = entry.state.lock();
        let Some(removed) = state.subscribers.remove(&key) else {
            return false;
        };
        self.counters.subscriptions.fetch_sub(1, Ordering::Relaxed);
        if state.subscribers.is_empty() {
            state.gone = true;
            shard.remove(channel);
            self.counters.channels.fetch_sub(1, Ordering::Relaxed);
        } else if state.join_leave {
            self.announce(channel, &state, false, &removed.info);
        }
        true
    }

    fn announce(&self, channel: &str, state: &ChannelState, join: bool, info: &ClientInfo) {
        let mut frames: [Option<Bytes>; MAX_FORMATS] = Default::default();
        for sub in state.subscribers.values() {
            let slot = &mut frames[usize::from(sub.format.0) % MAX_FORMATS];
            let frame = slot
                .get_or_insert_with(|| self.encoder.join_leave(channel, join, info, sub.format));
            self.queue(sub, frame.clone());
        }
    }

    fn queue(&self, sub: &Subscriber, frame: Bytes) -> bool {
        let len = frame.len();
        match sub.outbox.push(frame) {
            PushOutcome::Queued => {
                self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_out
                    .fetch_add(len as u64, Ordering::Relaxed);
                true
            }
            PushOutcome::Overflow => {
                self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                false
            }
            PushOutcome::Closed => false,
        }
    }

    /// Publishes `data` to `channel`: assigns the next offset and queues one shared frame
    /// per format to every subscriber, in order. A channel without subscribers does not
    /// exist, so the publication reaches nobody and gets offset 0 with an empty epoch.
    pub fn publish(&self, channel: &str, data: Bytes, info: Option<Arc<ClientInfo>>) -> Published {
        self.counters.publications.fetch_add(1, Ordering::Relaxed);
        let Some(entry) = self.channel(channel) else {
            return Published {
                position: StreamPosition {
                    offset: 0,
                    epoch: Arc::from(""),
                },
                delivered: 0,
            };
        };
        let mut state = entry.state.lock();
        if state.gone {
            return Published {
                position: StreamPosition {
                    offset: 0,
                    epoch: Arc::from(""),
                },
                delivered: 0,
            };
        }
        state.offset += 1;
        let publication = Publication {
            data,
            offset: state.offset,
            info: info.map(|i| (*i).clone()),
            tags: None,
        };
        let mut frames: [Option<Bytes>; MAX_FORMATS] = Default::default();
        let mut delivered = 0;
        for sub in state.subscribers.values() {
            let slot = &mut frames[usize::from(sub.format.0) % MAX_FORMATS];
            let frame = slot
                .get_or_insert_with(|| self.encoder.publication(channel, &publication, sub.format));
            if self.queue(sub, frame.clone()) {
                delivered += 1;
            }
        }
        Published {
            position: StreamPosition {
                offset: state.offset,
                epoch: state.epoch.clone(),
            },
            delivered,
        }
    }

    /// Who is subscribed to `channel`.
    pub fn presence(&self, channel: &str) -> Vec<Arc<ClientInfo>> {
        let Some(entry) = self.channel(channel) else {
            return Vec::new();
        };
        let state = entry.state.lock();
        state.subscribers.values().map(|s| s.info.clone()).collect()
    }

    /// Channels with their subscriber counts, optionally only those whose name contains
    /// `filter`.
    pub fn channels(&self, filter: Option<&str>) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                if filter.is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                out.push((name.clone(), entry.state.lock().subscribers.len()));
            }
        }
        out.sort();
        out
    }

    /// The current stream position of a channel, if it exists.
    pub fn position(&self, channel: &str) -> Option<StreamPosition> {
        let entry = self.channel(channel)?;
        let state = entry.state.lock();
        (!state.gone).then(|| StreamPosition {
            offset: state.offset,
            epoch: state.epoch.clone(),
        })
    }
}

/// A short random epoch: 8 bytes from the standard library's random hasher keys.
fn new_epoch() -> Arc<str> {
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    Arc::from(format!("{h:016x}").as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames are "channel|offset|data" so tests can read them back.
    struct TextEncoder;
    impl FrameEncoder for TextEncoder {
        fn publication(&self, channel: &str, p: &Publication, format: FrameFormat) -> Bytes {
            let data = String::from_utf8_lossy(&p.data);
            Bytes::from(format!("{}|{channel}|{}|{data}", format.0, p.offset))
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

    fn hub() -> Hub {
        Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()))
    }

    fn subscriber(key: ClientKey, format: u8) -> Subscriber {
        Subscriber {
            key,
            outbox: Arc::new(Outbox::new(1 << 20)),
            format: FrameFormat(format),
            info: Arc::new(ClientInfo {
                user: format!("u{key}"),
                client: format!("c{key}"),
                conn_info: None,
                chan_info: None,
            }),
        }
    }

    fn take(outbox: &Outbox) -> Vec<String> {
        let mut all = Vec::new();
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
        all
    }

    #[test]
    fn channels_come_and_go() {
        let hub = hub();
        let a = subscriber(1, 0);
        let (_, pos) = hub.subscribe("c", a.clone(), false, |_| None).expect("sub");
        assert_eq!(pos.offset, 0);
        assert_eq!(hub.channels(None).len(), 1);
        assert_eq!(
            hub.subscribe("c", a, false, |_| None).expect_err("twice"),
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
            hub.subscribe("c", s.clone(), false, |_| None).expect("sub");
        }
        for i in 0..3 {
            let p = hub.publish("c", Bytes::from(format!("m{i}")), None);
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
        hub.publish("c", Bytes::from_static(b"x"), None);
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
    fn publish_to_empty_channel_reaches_nobody() {
        let hub = hub();
        let p = hub.publish("nobody", Bytes::from_static(b"x"), None);
        assert_eq!(p.delivered, 0);
        assert_eq!(p.position.offset, 0);
    }

    #[test]
    fn join_and_leave_are_announced_to_others() {
        let hub = hub();
        let a = subscriber(1, 0);
        let b = subscriber(2, 0);
        hub.subscribe("c", a.clone(), true, |_| None).expect("a");
        hub.subscribe("c", b.clone(), true, |_| None).expect("b");
        hub.unsubscribe("c", 2);
        assert_eq!(take(&a.outbox), vec!["join|c|c2", "leave|c|c2"]);
        assert!(take(&b.outbox).is_empty());
    }

    #[test]
    fn epoch_changes_when_channel_is_recreated() {
        let hub = hub();
        let (_, first) = hub
            .subscribe("c", subscriber(1, 0), false, |_| None)
            .expect("sub");
        hub.unsubscribe("c", 1);
        let (_, second) = hub
            .subscribe("c", subscriber(1, 0), false, |_| None)
            .expect("sub");
        assert_ne!(first.epoch, second.epoch);
    }

    #[test]
    fn presence_lists_subscribers() {
        let hub = hub();
        hub.subscribe("c", subscriber(1, 0), false, |_| None)
            .expect("sub");
        hub.subscribe("c", subscriber(2, 0), false, |_| None)
            .expect("sub");
        let mut users: Vec<_> = hub.presence("c").iter().map(|i| i.user.clone()).collect();
        users.sort();
        assert_eq!(users, vec!["u1", "u2"]);
    }
}
