//! The node facade: what sessions and the HTTP API call, whichever engine runs.
//!
//! With the memory engine (one node, the default) the hub holds every channel's stream
//! and each call is answered at once ([`Step::Ready`]): no allocation, no task, the same
//! cost as calling the hub. With a cluster engine the streams live in the broker:
//! publishes and history reads go to it, subscriptions join the hub's replica of the
//! stream (see `hub::replica`), presence goes to the presence store, and publications
//! come back from the broker through [`NodeHandler`] into the same fan-out.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use starling_protocol::{ClientInfo, Publication};
use tracing::{debug, warn};

use crate::engine::{
    Accepted, Broker, ControlBus, ControlMessage, EngineError, EngineHandler, HistoryPage,
    Idempotency, PresenceStore, PublishRequest, Step,
};
use crate::history::HistoryQuery;
use crate::hub::{
    ChannelOptions, ClientKey, Delivery, HistoryReadError, Hub, JoinOutcome, Joined, PublishError,
    Published, RecoverFrom, StreamPosition, SubscribeError, Subscriber,
};
use crate::journal::{DurableAck, Journal, JournalError};

/// Builds a subscriber's first frame (the subscribe reply) from what it joined at;
/// called once, under the channel lock, before any live publication is queued.
pub type FirstFrame = Box<dyn FnMut(&Joined) -> Option<Bytes> + Send>;

/// Receives control messages from other nodes (the server acts on them).
pub type ControlSink = Arc<dyn Fn(ControlMessage) + Send + Sync>;

/// The cluster engine's parts.
#[derive(Clone)]
pub struct Cluster {
    /// Holds the streams.
    pub broker: Arc<dyn Broker>,
    /// Holds presence.
    pub presence: Arc<dyn PresenceStore>,
    /// Carries node-to-node messages.
    pub control: Arc<dyn ControlBus>,
}

/// One publish, as the facade takes it.
#[derive(Debug)]
pub struct Publish<'a> {
    /// The channel.
    pub channel: &'a str,
    /// Payload.
    pub data: Bytes,
    /// Publisher, when exposed.
    pub info: Option<Arc<ClientInfo>>,
    /// The channel's namespace options.
    pub options: ChannelOptions,
    /// Wait for the message log (memory engine only).
    pub durable: bool,
    /// An idempotency key kept by the broker (cluster engines; the memory engine's
    /// caller keeps its own).
    pub idempotency: Option<Idempotency>,
}

/// An acknowledgement that is already decided.
fn ready_ack(result: Result<(), JournalError>) -> DurableAck {
    Box::pin(std::future::ready(result))
}

/// Attempts a heal makes to read history before it gives up on a channel.
const HEAL_ATTEMPTS: u32 = 3;

/// The facade. Cheap to share (`Arc<Node>`).
pub struct Node {
    hub: Arc<Hub>,
    cluster: Option<Cluster>,
    /// A cluster node's record of what it published (for the archive): every
    /// publication its broker accepted, with the broker's position. `None` on a single
    /// node (its hub writes the journal) and on a cluster node that does not archive.
    journal: Option<Arc<dyn Journal>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("cluster", &self.cluster.is_some())
            .finish()
    }
}

impl Node {
    /// A single node: `hub` holds the streams (the memory engine).
    pub fn local(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            cluster: None,
            journal: None,
        })
    }

    /// A cluster node: `hub` (built [`Hub::with_broker`]) replicates the streams the
    /// cluster's broker holds. Returns the node and the handler the engine must deliver
    /// to; `control` receives control messages. With `journal`, every publication this
    /// node publishes is appended to it once the broker accepted it (each publication is
    /// journaled by the one node that published it: the archive reads it from there).
    pub fn clustered(
        hub: Arc<Hub>,
        cluster: Cluster,
        control: ControlSink,
        journal: Option<Arc<dyn Journal>>,
    ) -> (Arc<Self>, Arc<NodeHandler>) {
        let node = Arc::new(Self {
            hub,
            cluster: Some(cluster),
            journal,
        });
        let handler = Arc::new(NodeHandler {
            node: Arc::downgrade(&node),
            control,
        });
        (node, handler)
    }

    /// The hub (local subscribers and fan-out).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The cluster engine, when one runs.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Publishes into a channel. `may_create` is asked (memory engine) when keeping the
    /// publication's history would create the channel.
    pub fn publish(
        &self,
        publish: Publish<'_>,
        may_create: &mut dyn FnMut() -> bool,
    ) -> Step<Result<Published, PublishError>> {
        let Some(cluster) = &self.cluster else {
            return Step::Ready(self.hub.publish_limited(
                publish.channel,
                publish.data,
                publish.info,
                publish.options,
                publish.durable,
                may_create,
            ));
        };
        if publish.durable && self.journal.is_none() {
            // Durability in a cluster is the broker's (see OPERATIONS.md: Redis AOF); a
            // node that archives can wait for its own journal.
            return Step::Ready(Err(PublishError::NotPersisted));
        }
        let durable = publish.durable;
        let request = PublishRequest {
            channel: Arc::from(publish.channel),
            data: publish.data,
            info: publish.info,
            history: publish.options.history,
            idempotency: publish.idempotency,
        };
        let counters = self.hub.counters().clone();
        let finish = move |result: Result<Accepted, EngineError>| {
            if result.as_ref().is_ok_and(|a| !a.replayed) {
                counters
                    .publications
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            result
                .map(|accepted| Published {
                    position: accepted.position,
                    delivered: accepted.receivers,
                    durable: None,
                })
                .map_err(|e| match e {
                    EngineError::IdempotencyConflict => PublishError::IdempotencyConflict,
                    EngineError::Busy => PublishError::Overloaded,
                    e => PublishError::Unavailable(e.to_string()),
                })
        };
        let Some(journal) = self.journal.clone() else {
            return cluster.broker.publish(request).map(finish);
        };
        // What the journal needs once the broker gave the offset (cheap clones: the
        // payload and the publisher are shared).
        let (channel, data, info) = (
            request.channel.clone(),
            request.data.clone(),
            request.info.clone(),
        );
        let errors = self.hub.counters().clone();
        let step = cluster.broker.publish(request);
        Step::Pending(Box::pin(async move {
            let accepted = step.wait().await;
            let ack = match &accepted {
                // A replay was journaled by the publish it repeats.
                Ok(a) if a.replayed => durable.then(|| ready_ack(Ok(()))),
                Ok(a) => {
                    let publication = Publication {
                        data,
                        offset: a.position.offset,
                        info: info.map(|i| (*i).clone()),
                        tags: None,
                        delta: false,
                    };
                    let appended = journal
                        .append_waiting(
                            &channel,
                            &a.position.epoch,
                            &publication,
                            crate::hub::now_ms(),
                            durable,
                        )
                        .await;
                    match appended {
                        Ok(ack) => ack,
                        Err(e) => {
                            // Published and delivered, but not journaled (the log is
                            // failed, or stayed full): the archive will miss it. The log
                            // reports its own failure; a durable publish learns it here.
                            errors
                                .journal_errors
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            debug!(%channel, "a published publication was not journaled: {e}");
                            durable.then(|| ready_ack(Err(e)))
                        }
                    }
                }
                Err(_) => None,
            };
            finish(accepted).map(|published| Published {
                durable: ack,
                ..published
            })
        }))
    }

    /// Subscribes a connection. With `recover`, the reply built by `first` carries the
    /// missed publications when they can be recovered. Returns the channel's shared name
    /// and what the subscriber joined at.
    pub fn subscribe(
        &self,
        channel: &str,
        subscriber: Subscriber,
        options: ChannelOptions,
        recover: Option<RecoverFrom>,
        may_create: &mut dyn FnMut() -> bool,
        mut first: FirstFrame,
    ) -> Step<Result<(Arc<str>, Joined), SubscribeError>> {
        let Some(cluster) = &self.cluster else {
            return Step::Ready(self.hub.subscribe_limited(
                channel,
                subscriber,
                options,
                recover.as_ref(),
                may_create,
                |joined| first(joined),
            ));
        };
        let (mut ticket, must_subscribe) = match self.hub.prepare_join(channel, options, may_create)
        {
            Ok(prepared) => prepared,
            Err(e) => return Step::Ready(Err(e)),
        };
        let info = subscriber.info.clone();
        if !must_subscribe {
            // The replica is live: most joins need no broker round trip.
            match self.hub.join(
                &mut ticket,
                subscriber.clone(),
                options,
                recover.as_ref(),
                None,
                &mut *first,
            ) {
                Ok(JoinOutcome::Joined(name, joined)) => {
                    joined_cluster(cluster, &name, &info, options);
                    return Step::Ready(Ok((name, joined)));
                }
                Ok(JoinOutcome::Read { .. }) => {}
                Err(e) => return Step::Ready(Err(e)),
            }
        }
        let hub = self.hub.clone();
        let cluster = cluster.clone();
        Step::Pending(Box::pin(async move {
            let name = ticket.channel().clone();
            let unavailable = |e: EngineError| SubscribeError::Unavailable(e.to_string());
            if must_subscribe {
                cluster
                    .broker
                    .subscribe(&name)
                    .wait()
                    .await
                    .map_err(unavailable)?;
            }
            let mut page: Option<HistoryPage> = None;
            // With a fresh page the join settles (it reads again only when the stream
            // changed epoch during the read).
            for _ in 0..4 {
                match hub.join(
                    &mut ticket,
                    subscriber.clone(),
                    options,
                    recover.as_ref(),
                    page.as_ref(),
                    &mut *first,
                )? {
                    JoinOutcome::Joined(name, joined) => {
                        joined_cluster(&cluster, &name, &info, options);
                        return Ok((name, joined));
                    }
                    JoinOutcome::Read { since } => {
                        let query = HistoryQuery {
                            since,
                            limit: since.map_or(0, |_| options.history.size),
                            reverse: false,
                            max_bytes: recover.as_ref().map_or(usize::MAX, |r| r.max_bytes),
                        };
                        let read = cluster.broker.history(&name, query, options.history);
                        page = Some(read.wait().await.map_err(unavailable)?);
                    }
                }
            }
            Err(SubscribeError::Unavailable(
                "the join did not settle".into(),
            ))
        }))
    }

    /// Removes a connection's subscription. Returns whether it was subscribed.
    pub fn unsubscribe(&self, channel: &str, key: ClientKey) -> bool {
        let Some((info, options)) = self.hub.leave(channel, key) else {
            return false;
        };
        if let Some(cluster) = &self.cluster {
            let channel: Arc<str> = Arc::from(channel);
            if options.presence {
                cluster.presence.leave(&channel, &info.client);
            }
            if options.join_leave {
                cluster.broker.join_leave(&channel, false, &info);
            }
        }
        true
    }

    /// A page of a channel's history and its stream position; `since` must be in
    /// `epoch` when both are given.
    pub fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        epoch: Option<&str>,
        options: ChannelOptions,
    ) -> Step<Result<(Vec<Publication>, StreamPosition), HistoryReadError>> {
        let Some(cluster) = &self.cluster else {
            return Step::Ready(self.hub.history(channel, query, epoch, options));
        };
        if !options.history.enabled() {
            return Step::Ready(Err(HistoryReadError::Disabled));
        }
        let epoch = epoch.map(str::to_owned);
        let read = cluster
            .broker
            .history(&Arc::from(channel), query, options.history);
        read.map(move |result| {
            let page = result.map_err(|e| HistoryReadError::Unavailable(e.to_string()))?;
            if let Some(since) = query.since {
                let other_epoch = epoch.is_some_and(|e| *e != *page.position.epoch);
                let forward_hole = !query.reverse && !page.complete;
                if (other_epoch || forward_hole) && since > 0 {
                    return Err(HistoryReadError::Unrecoverable);
                }
            }
            Ok((page.publications, page.position))
        })
    }

    /// Who is subscribed to `channel`, on every node.
    pub fn presence(&self, channel: &str) -> Step<Result<Vec<Arc<ClientInfo>>, EngineError>> {
        let Some(cluster) = &self.cluster else {
            return Step::Ready(Ok(self.hub.presence(channel).to_vec()));
        };
        cluster
            .presence
            .presence(&Arc::from(channel))
            .map(|r| r.map(|list| list.into_iter().map(Arc::new).collect()))
    }

    /// Subscriptions and distinct users of `channel`, on every node.
    pub fn presence_stats(&self, channel: &str) -> Step<Result<(usize, usize), EngineError>> {
        let Some(cluster) = &self.cluster else {
            return Step::Ready(Ok(self.hub.presence_stats(channel)));
        };
        cluster.presence.stats(&Arc::from(channel))
    }

    /// Sends a control message to every node (this one included); `Ready(Ok)` at once
    /// on a single node, after handing it to `sink`.
    pub fn broadcast_control(
        &self,
        message: ControlMessage,
        sink: &ControlSink,
    ) -> Step<Result<(), EngineError>> {
        match &self.cluster {
            None => {
                sink(message);
                Step::Ready(Ok(()))
            }
            Some(cluster) => cluster.control.send(message),
        }
    }

    /// Reads the broker's position of every replica channel (or of `channels`) and
    /// heals what fell behind. Spawned on the runtime; a no-op on a single node.
    pub fn check_positions(self: &Arc<Self>, channels: Option<Vec<Arc<str>>>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let node = Arc::downgrade(self);
        let channels = channels.unwrap_or_else(|| self.hub.replica_channels());
        if channels.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for channel in channels {
                let Some(this) = node.upgrade() else {
                    return;
                };
                let Some(options) = this.hub.options(&channel) else {
                    continue;
                };
                let query = HistoryQuery {
                    since: None,
                    limit: 0,
                    reverse: false,
                    max_bytes: usize::MAX,
                };
                let read = cluster.broker.history(&channel, query, options.history);
                drop(this);
                let Ok(page) = read.wait().await else {
                    // The link is down; its return triggers another check.
                    continue;
                };
                let Some(this) = node.upgrade() else {
                    return;
                };
                let position = &page.position;
                if let Delivery::Heal { channel, after } =
                    this.hub.check(&channel, &position.epoch, position.offset)
                {
                    this.spawn_heal(channel, after);
                }
            }
        });
    }

    /// Reads the history after `after` and hands it to the hub until the hole is
    /// filled (or cannot be).
    fn spawn_heal(self: &Arc<Self>, channel: Arc<str>, after: u64) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut after = after;
            let mut attempt = 0;
            loop {
                let Some(options) = node.upgrade().and_then(|n| n.hub.options(&channel)) else {
                    return;
                };
                let query = HistoryQuery {
                    since: Some(after),
                    limit: options.history.size.max(1),
                    reverse: false,
                    max_bytes: usize::MAX,
                };
                let read = cluster.broker.history(&channel, query, options.history);
                let result = read.wait().await;
                let Some(this) = node.upgrade() else {
                    return;
                };
                let outcome = match &result {
                    Ok(page) => this.hub.heal(&channel, Ok(page)),
                    Err(e) if attempt + 1 < HEAL_ATTEMPTS => {
                        attempt += 1;
                        debug!(%channel, "heal read failed ({e}); retrying");
                        drop(this);
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        continue;
                    }
                    Err(e) => {
                        warn!(%channel, "cannot heal a gap ({e}): subscribers must recover");
                        this.hub.heal(&channel, Err(()))
                    }
                };
                match outcome {
                    Delivery::Done => return,
                    Delivery::Heal { after: next, .. } => {
                        after = next;
                        attempt = 0;
                    }
                }
            }
        });
    }
}

/// Tells the cluster about a subscriber that joined: presence, and the join push.
fn joined_cluster(
    cluster: &Cluster,
    channel: &Arc<str>,
    info: &Arc<ClientInfo>,
    options: ChannelOptions,
) {
    if options.presence {
        cluster.presence.join(channel, info);
    }
    if options.join_leave {
        cluster.broker.join_leave(channel, true, info);
    }
}

/// Delivers what a cluster engine receives into the node.
pub struct NodeHandler {
    node: Weak<Node>,
    control: ControlSink,
}

impl std::fmt::Debug for NodeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeHandler")
    }
}

impl EngineHandler for NodeHandler {
    fn publication(&self, channel: &str, epoch: &str, publication: Publication) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        if let Delivery::Heal { channel, after } = node.hub.deliver(channel, epoch, publication) {
            node.spawn_heal(channel, after);
        }
    }

    fn join_leave(&self, channel: &str, join: bool, info: ClientInfo) {
        if let Some(node) = self.node.upgrade() {
            node.hub.deliver_join_leave(channel, join, &info);
        }
    }

    fn resync(&self, channels: Option<&[Arc<str>]>) {
        if let Some(node) = self.node.upgrade() {
            node.check_positions(channels.map(<[Arc<str>]>::to_vec));
        }
    }

    fn control(&self, message: ControlMessage) {
        (self.control)(message);
    }
}
