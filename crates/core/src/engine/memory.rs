//! The memory engine's broker: channel streams kept in this process, shared by several
//! hubs (nodes) through their [`MemoryLink`]s.
//!
//! A single node does not need it: its hub holds the streams itself (see
//! [`crate::node::Node::local`]). This broker is the reference implementation of the
//! [`Broker`], [`PresenceStore`] and [`ControlBus`] contracts, and it runs the cluster
//! path (replicas, recovery across nodes, gap healing) in one process, where tests can
//! drop deliveries or make the broker forget its streams at will.
//!
//! Every call is answered at once. Publications are handed to the subscribed nodes'
//! handlers under the broker's lock, so each node sees a channel's publications in
//! offset order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use starling_protocol::{ClientInfo, Publication};

use super::{
    Accepted, Broker, ControlBus, ControlMessage, EngineError, EngineHandler, HistoryPage,
    PresenceStore, PublishRequest, Step,
};
use crate::history::{History, HistoryPolicy, HistoryQuery};
use crate::hub::{StreamPosition, now_ms};

/// One channel's stream.
#[derive(Default)]
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: History,
    /// Idempotency key -> (fingerprint, result).
    keys: HashMap<String, (u64, Accepted)>,
}

/// One attached node.
struct Attached {
    handler: Option<Arc<dyn EngineHandler>>,
    /// Deliveries to drop before the next one goes through (fault injection).
    drop_next: usize,
    /// Whether the node's link is cut (fault injection): publishes from it fail,
    /// nothing reaches it.
    cut: bool,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<Arc<str>, Stream>,
    nodes: Vec<Attached>,
    presence: HashMap<Arc<str>, HashMap<String, ClientInfo>>,
    epochs: u64,
}

impl Inner {
    /// `channel`'s stream, created with a fresh epoch when missing.
    fn stream(&mut self, channel: &str) -> &mut Stream {
        // The stored key when the stream exists (a reference count, no allocation).
        let key = match self.streams.get_key_value(channel) {
            Some((key, _)) => key.clone(),
            None => Arc::from(channel),
        };
        let epochs = &mut self.epochs;
        self.streams.entry(key).or_insert_with(|| {
            *epochs += 1;
            let epoch = format!("m{:x}{:x}", *epochs, now_ms());
            Stream {
                epoch: Arc::from(epoch.as_str()),
                ..Stream::default()
            }
        })
    }
}

/// Streams, presence and control shared by the nodes of one process.
///
/// Lock order: `inner`, then the hubs' locks (a delivery); `interest` is taken alone
/// (a hub unsubscribes while holding its own locks, so it must never wait for `inner`).
#[derive(Default)]
pub struct MemoryBroker {
    inner: Mutex<Inner>,
    /// The channels each node subscribed to, by node index.
    interest: Mutex<Vec<HashSet<Arc<str>>>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBroker")
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A new node's link to this broker; [`MemoryLink::attach`] it to the node's handler.
    pub fn link(self: &Arc<Self>) -> Arc<MemoryLink> {
        let mut inner = self.inner.lock();
        inner.nodes.push(Attached {
            handler: None,
            drop_next: 0,
            cut: false,
        });
        self.interest.lock().push(HashSet::new());
        Arc::new(MemoryLink {
            broker: self.clone(),
            node: inner.nodes.len() - 1,
        })
    }

    /// Forgets every stream, as a broker restarted without persistence would: the next
    /// publication of each channel starts a new epoch at offset 1.
    pub fn forget_streams(&self) {
        self.inner.lock().streams.clear();
    }

    /// The position of `channel`'s stream.
    pub fn position(&self, channel: &str) -> StreamPosition {
        let inner = self.inner.lock();
        inner
            .streams
            .get(channel)
            .map_or_else(empty_position, |s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch.clone(),
            })
    }

    /// Hands a publication to the subscribed nodes; called with `inner` held, so that
    /// each node gets a channel's publications in offset order.
    fn deliver(
        &self,
        inner: &mut Inner,
        channel: &Arc<str>,
        epoch: &str,
        publication: &Publication,
    ) {
        let interested: Vec<usize> = {
            let interest = self.interest.lock();
            (0..interest.len())
                .filter(|&i| interest[i].contains(channel))
                .collect()
        };
        for i in interested {
            let Some(node) = inner.nodes.get_mut(i) else {
                continue;
            };
            if node.cut {
                continue;
            }
            if node.drop_next > 0 {
                node.drop_next -= 1;
                continue;
            }
            if let Some(handler) = &node.handler {
                handler.publication(channel, epoch, publication.clone());
            }
        }
    }

    fn interested(&self, node: usize, channel: &str) -> bool {
        self.interest
            .lock()
            .get(node)
            .is_some_and(|set| set.contains(channel))
    }
}

fn empty_position() -> StreamPosition {
    StreamPosition {
        offset: 0,
        epoch: Arc::from(""),
    }
}

/// One node's view of a [`MemoryBroker`]: its interest, its handler.
pub struct MemoryLink {
    broker: Arc<MemoryBroker>,
    node: usize,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("node", &self.node)
            .finish()
    }
}

impl MemoryLink {
    /// Delivers this node's publications and control messages to `handler`.
    pub fn attach(&self, handler: Arc<dyn EngineHandler>) {
        if let Some(node) = self.broker.inner.lock().nodes.get_mut(self.node) {
            node.handler = Some(handler);
        }
    }

    /// Drops the next `n` publications meant for this node (a lossy broker link).
    pub fn drop_next(&self, n: usize) {
        if let Some(node) = self.broker.inner.lock().nodes.get_mut(self.node) {
            node.drop_next = n;
        }
    }

    /// Cuts (or restores) this node's link: while cut, its calls fail with
    /// [`EngineError::Unavailable`] and nothing reaches it. Restoring it calls the
    /// handler's `resync`, as a reconnecting engine does.
    pub fn cut(&self, cut: bool) {
        let handler = {
            let mut inner = self.broker.inner.lock();
            let Some(node) = inner.nodes.get_mut(self.node) else {
                return;
            };
            node.cut = cut;
            node.handler.clone()
        };
        if !cut && let Some(handler) = handler {
            handler.resync(None);
        }
    }

    /// Whether this node subscribed to `channel`.
    pub fn interested(&self, channel: &str) -> bool {
        self.broker.interested(self.node, channel)
    }

    fn check_link(&self, inner: &Inner) -> Result<(), EngineError> {
        match inner.nodes.get(self.node) {
            Some(node) if !node.cut => Ok(()),
            _ => Err(EngineError::Unavailable("link cut".into())),
        }
    }

    fn publish_now(&self, request: PublishRequest) -> Result<Accepted, EngineError> {
        let mut guard = self.broker.inner.lock();
        let inner = &mut *guard;
        self.check_link(inner)?;
        let stream = inner.stream(&request.channel);
        if let Some(key) = &request.idempotency
            && let Some((fingerprint, accepted)) = stream.keys.get(&key.key)
        {
            if *fingerprint != key.fingerprint {
                return Err(EngineError::IdempotencyConflict);
            }
            let mut replay = accepted.clone();
            replay.replayed = true;
            return Ok(replay);
        }
        stream.offset += 1;
        let publication = Publication {
            data: request.data,
            offset: stream.offset,
            info: request.info.map(|i| (*i).clone()),
            tags: None,
            delta: false,
        };
        if request.history.enabled() {
            stream
                .history
                .push(now_ms(), publication.clone(), request.history);
        }
        let epoch = stream.epoch.clone();
        let position = StreamPosition {
            offset: stream.offset,
            epoch: epoch.clone(),
        };
        let receivers = (0..inner.nodes.len())
            .filter(|&i| !inner.nodes[i].cut && self.broker.interested(i, &request.channel))
            .count();
        let accepted = Accepted {
            position,
            receivers,
            replayed: false,
        };
        if let Some(key) = request.idempotency
            && let Some(stream) = inner.streams.get_mut(&request.channel)
        {
            stream
                .keys
                .insert(key.key, (key.fingerprint, accepted.clone()));
        }
        self.broker
            .deliver(inner, &request.channel, &epoch, &publication);
        Ok(accepted)
    }

    fn history_now(
        &self,
        channel: &str,
        query: HistoryQuery,
        policy: HistoryPolicy,
    ) -> Result<HistoryPage, EngineError> {
        let mut guard = self.broker.inner.lock();
        let inner = &mut *guard;
        self.check_link(inner)?;
        // A read creates the stream's epoch: a subscriber learns the epoch that later
        // publications belong to, even before the first one.
        let stream = inner.stream(channel);
        stream.history.evict(now_ms(), policy);
        let position = StreamPosition {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
        };
        if query.limit == 0 {
            return Ok(HistoryPage {
                publications: Vec::new(),
                position,
                complete: true,
            });
        }
        let (publications, complete) = match stream.history.read(query) {
            Ok(publications) => {
                let complete = query.reverse
                    || match (query.since, publications.first()) {
                        (Some(since), Some(first)) => first.offset == since + 1,
                        (Some(since), None) => since == stream.offset,
                        (None, _) => true,
                    };
                (publications, complete)
            }
            Err(_) => (Vec::new(), false),
        };
        Ok(HistoryPage {
            publications,
            position,
            complete,
        })
    }
}

impl Broker for MemoryLink {
    fn publish(&self, request: PublishRequest) -> Step<Result<Accepted, EngineError>> {
        Step::Ready(self.publish_now(request))
    }

    fn subscribe(&self, channel: &Arc<str>) -> Step<Result<(), EngineError>> {
        if let Err(e) = self.check_link(&self.broker.inner.lock()) {
            return Step::Ready(Err(e));
        }
        if let Some(set) = self.broker.interest.lock().get_mut(self.node) {
            set.insert(channel.clone());
        }
        Step::Ready(Ok(()))
    }

    fn unsubscribe(&self, channel: &Arc<str>) {
        if let Some(set) = self.broker.interest.lock().get_mut(self.node) {
            set.remove(channel);
        }
    }

    fn join_leave(&self, channel: &Arc<str>, join: bool, info: &Arc<ClientInfo>) {
        let inner = self.broker.inner.lock();
        if self.check_link(&inner).is_err() {
            return;
        }
        for (i, node) in inner.nodes.iter().enumerate() {
            if node.cut || !self.broker.interested(i, channel) {
                continue;
            }
            if let Some(handler) = &node.handler {
                handler.join_leave(channel, join, (**info).clone());
            }
        }
    }

    fn history(
        &self,
        channel: &Arc<str>,
        query: HistoryQuery,
        policy: HistoryPolicy,
    ) -> Step<Result<HistoryPage, EngineError>> {
        Step::Ready(self.history_now(channel, query, policy))
    }
}

impl PresenceStore for MemoryLink {
    fn join(&self, channel: &Arc<str>, info: &Arc<ClientInfo>) {
        let mut inner = self.broker.inner.lock();
        inner
            .presence
            .entry(channel.clone())
            .or_default()
            .insert(info.client.clone(), (**info).clone());
    }

    fn leave(&self, channel: &Arc<str>, client: &str) {
        let mut inner = self.broker.inner.lock();
        if let Some(members) = inner.presence.get_mut(channel) {
            members.remove(client);
            if members.is_empty() {
                inner.presence.remove(channel);
            }
        }
    }

    fn presence(&self, channel: &Arc<str>) -> Step<Result<Vec<ClientInfo>, EngineError>> {
        let inner = self.broker.inner.lock();
        let list = inner
            .presence
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        Step::Ready(Ok(list))
    }

    fn stats(&self, channel: &Arc<str>) -> Step<Result<(usize, usize), EngineError>> {
        let inner = self.broker.inner.lock();
        let stats = inner.presence.get(channel).map_or((0, 0), |m| {
            let users: HashSet<&str> = m.values().map(|i| i.user.as_str()).collect();
            (m.len(), users.len())
        });
        Step::Ready(Ok(stats))
    }
}

impl ControlBus for MemoryLink {
    fn send(&self, message: ControlMessage) -> Step<Result<(), EngineError>> {
        let handlers: Vec<Arc<dyn EngineHandler>> = {
            let inner = self.broker.inner.lock();
            if let Err(e) = self.check_link(&inner) {
                return Step::Ready(Err(e));
            }
            inner
                .nodes
                .iter()
                .filter(|n| !n.cut)
                .filter_map(|n| n.handler.clone())
                .collect()
        };
        for handler in handlers {
            handler.control(message.clone());
        }
        Step::Ready(Ok(()))
    }
}
