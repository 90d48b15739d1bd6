//! The node's place in a cluster: the engine it runs, the nodes it knows of, and what it
//! does with their control messages.
//!
//! With `cluster.engine = "memory"` (the default) there is no cluster: nothing here
//! runs. With `redis`, the engine carries publications, presence and control messages;
//! every node sends a heartbeat with its counts, and [`Nodes`] keeps the ones heard from
//! within `cluster.node_timeout_secs` (the `info` API lists them).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use starling_core::engine::{ControlMessage, EngineHandler, NodeInfo};
use starling_core::{Cluster, ControlSink};
use starling_protocol::codes;
use tracing::{debug, info};

use crate::app::AppState;

/// Gives the node's current counts (for its heartbeat).
pub type InfoFn = Arc<dyn Fn() -> NodeInfo + Send + Sync>;

/// A cluster engine as the server runs it.
pub trait ClusterEngine: Send + Sync + 'static {
    /// The engine's broker, presence store and control bus.
    fn parts(&self) -> Cluster;
    /// Starts delivering to `handler` (publications, control messages) and sending
    /// heartbeats built by `info`.
    fn start(&self, handler: Arc<dyn EngineHandler>, info: InfoFn);
    /// Whether every link to the broker is up (for `/ready`); the reason when not.
    fn health(&self) -> Result<(), String>;
    /// Stops the engine's tasks (at shutdown, after the node left the cluster).
    fn shutdown(&self);
    /// The engine's own counters for `/metrics`: name, help, value.
    fn counters(&self) -> Vec<(&'static str, &'static str, u64)>;
}

/// The nodes of the cluster, as their heartbeats tell, and this node's questions to
/// them in flight.
#[derive(Debug)]
pub struct Nodes {
    seen: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    timeout: Duration,
    /// Open `channels` questions: id -> where the answers go.
    queries: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Answer>>>,
    next_query: std::sync::atomic::AtomicU64,
}

/// One node's answer to a `channels` question.
#[derive(Debug)]
pub struct Answer {
    /// The answering node.
    pub node: String,
    /// Its channels and local subscriber counts.
    pub channels: Vec<(String, u64)>,
}

/// Most answers one question takes (bounds the queue; more nodes than this answer late).
const MAX_ANSWERS: usize = 1024;

impl Nodes {
    /// Forgets a node after `timeout` without a heartbeat.
    pub fn new(timeout: Duration) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            timeout,
            queries: Mutex::new(HashMap::new()),
            next_query: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Opens a question: its id and the receiver of its answers (closed by
    /// [`Nodes::close_query`]).
    pub fn open_query(&self) -> (u64, tokio::sync::mpsc::Receiver<Answer>) {
        let id = self
            .next_query
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_ANSWERS);
        self.queries.lock().insert(id, tx);
        (id, rx)
    }

    /// Closes a question; later answers are dropped.
    pub fn close_query(&self, id: u64) {
        self.queries.lock().remove(&id);
    }

    fn answer(&self, id: u64, answer: Answer) {
        if let Some(tx) = self.queries.lock().get(&id) {
            // A full queue drops the answer: the question reports the nodes it heard.
            let _ = tx.try_send(answer);
        }
    }

    /// Records a heartbeat; true when it comes from a node not known before.
    pub fn heartbeat(&self, info: NodeInfo) -> bool {
        let mut seen = self.seen.lock();
        let new = !seen.contains_key(&info.name);
        if new {
            info!(node = %info.name, "node joined the cluster");
        }
        seen.insert(info.name.clone(), (info, Instant::now()));
        new
    }

    /// A node said it leaves.
    pub fn leaving(&self, name: &str) {
        if self.seen.lock().remove(name).is_some() {
            info!(node = %name, "node left the cluster");
        }
    }

    /// The live nodes, by name (forgets those not heard from in time).
    pub fn live(&self) -> Vec<NodeInfo> {
        let mut seen = self.seen.lock();
        let timeout = self.timeout;
        seen.retain(|name, (_, at)| {
            let alive = at.elapsed() <= timeout;
            if !alive {
                info!(node = %name, "node timed out");
            }
            alive
        });
        let mut out: Vec<NodeInfo> = seen.values().map(|(info, _)| info.clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// This node's counts, as its heartbeat carries them.
pub fn node_info(state: &AppState) -> NodeInfo {
    use std::sync::atomic::Ordering;
    let counters = state.hub.counters();
    NodeInfo {
        name: state.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        connections: state.registry.connections() as u64,
        users: state.registry.users() as u64,
        subscriptions: counters.subscriptions.load(Ordering::Relaxed),
        channels: counters.channels.load(Ordering::Relaxed),
        uptime_secs: state.started.elapsed().as_secs(),
    }
}

/// What the node does with control messages (its own included).
pub fn control_sink(state: Weak<AppState>) -> ControlSink {
    Arc::new(move |message| {
        let Some(state) = state.upgrade() else {
            return;
        };
        match message {
            ControlMessage::Heartbeat(info) => {
                let from_other = info.name != state.name;
                if state.nodes.heartbeat(info)
                    && from_other
                    && let Some(cluster) = state.node.cluster()
                {
                    // A newcomer learns every node within one round trip, not one
                    // heartbeat period: each answers its first heartbeat with its own.
                    let send = cluster
                        .control
                        .send(ControlMessage::Heartbeat(node_info(&state)));
                    tokio::spawn(async move {
                        if let Err(e) = send.wait().await {
                            debug!("heartbeat answer not sent: {e}");
                        }
                    });
                }
            }
            ControlMessage::Leaving { node } => state.nodes.leaving(&node),
            ControlMessage::ChannelsQuery { id, from, pattern } => {
                let channels = state
                    .hub
                    .channels(pattern.as_deref())
                    .into_iter()
                    .map(|(name, n)| (name.to_string(), n as u64))
                    .collect();
                let answer = ControlMessage::Channels {
                    id,
                    to: from,
                    node: state.name.clone(),
                    channels,
                };
                if let Some(cluster) = state.node.cluster() {
                    let send = cluster.control.send(answer);
                    tokio::spawn(async move {
                        if let Err(e) = send.wait().await {
                            debug!("channels answer not sent: {e}");
                        }
                    });
                }
            }
            ControlMessage::Channels {
                id,
                to,
                node,
                channels,
            } => {
                if to == state.name {
                    state.nodes.answer(id, Answer { node, channels });
                }
            }
            ControlMessage::Disconnect { user, code } => {
                let disconnect = codes::DISCONNECTS
                    .iter()
                    .find(|d| d.code == code)
                    .copied()
                    .unwrap_or(codes::DISCONNECTED_BY_API);
                let n = state.registry.disconnect_user(&user, disconnect);
                debug!(%user, n, "disconnected by a cluster message");
            }
            ControlMessage::Unsubscribe { user, channel } => {
                let n = state.registry.unsubscribe_user(&user, &channel);
                debug!(%user, %channel, n, "unsubscribed by a cluster message");
            }
        }
    })
}

/// Connects the engine `cluster.engine` names; `None` for the memory engine.
pub async fn connect(
    config: &crate::config::Config,
    node: &str,
) -> anyhow::Result<Option<Arc<dyn ClusterEngine>>> {
    if config.cluster.engine != "redis" {
        return Ok(None);
    }
    let r = &config.redis;
    let settings = starling_redis::RedisConfig {
        addresses: r.addresses.clone(),
        prefix: r.prefix.clone(),
        node: node.to_string(),
        command_timeout: Duration::from_millis(r.command_timeout_ms),
        presence_ttl: Duration::from_secs(config.cluster.presence_ttl_secs),
        probe_interval: Duration::from_secs(r.probe_interval_secs),
        heartbeat_interval: Duration::from_secs(config.cluster.heartbeat_secs),
        cluster: r.cluster,
        restart_epochs: match r.restart_epochs.as_str() {
            "always" => starling_redis::RestartEpochs::Always,
            "never" => starling_redis::RestartEpochs::Never,
            _ => starling_redis::RestartEpochs::Auto,
        },
        ..starling_redis::RedisConfig::default()
    };
    let engine = starling_redis::RedisEngine::connect(settings)
        .await
        .context("connecting to Redis (cluster.engine = \"redis\", redis.addresses)")?;
    info!(
        shards = r.addresses.len(),
        cluster = r.cluster,
        "joined the cluster through Redis"
    );
    Ok(Some(Arc::new(Redis(engine))))
}

/// The Redis engine as the server runs it.
struct Redis(Arc<starling_redis::RedisEngine>);

impl ClusterEngine for Redis {
    fn parts(&self) -> Cluster {
        Cluster {
            broker: self.0.clone(),
            presence: self.0.clone(),
            control: self.0.clone(),
        }
    }

    fn start(&self, handler: Arc<dyn EngineHandler>, info: InfoFn) {
        self.0.start(handler, info);
    }

    fn health(&self) -> Result<(), String> {
        if self.0.healthy() {
            Ok(())
        } else {
            Err("a Redis shard is unreachable (the node reconnects with backoff)".into())
        }
    }

    fn shutdown(&self) {
        self.0.shutdown();
    }

    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.0.counters();
        vec![
            (
                "starling_redis_decode_errors_total",
                "Messages from Redis that did not decode (skipped).",
                c.decode_errors.load(Relaxed),
            ),
            (
                "starling_redis_dropped_messages_total",
                "Pub/sub messages dropped on a full delivery queue (their channels are resynced).",
                c.dropped_messages.load(Relaxed),
            ),
            (
                "starling_redis_presence_failures_total",
                "Presence writes that failed or were dropped.",
                c.presence_failures.load(Relaxed),
            ),
            (
                "starling_redis_reconnects_total",
                "Reconnects of a shard's links.",
                c.reconnects.load(Relaxed),
            ),
            (
                "starling_redis_heartbeat_failures_total",
                "Heartbeats that could not be sent.",
                c.heartbeat_failures.load(Relaxed),
            ),
        ]
    }
}

/// Channels with subscribers on every live node, with their subscriber counts summed;
/// waits for every node heard from (at most `wait`), and says which answered.
pub async fn cluster_channels(
    state: &Arc<AppState>,
    pattern: Option<String>,
    wait: Duration,
) -> Result<
    (std::collections::BTreeMap<String, u64>, Vec<String>),
    starling_core::engine::EngineError,
> {
    let Some(cluster) = state.node.cluster() else {
        let local = state.hub.channels(pattern.as_deref());
        let map = local
            .into_iter()
            .map(|(n, c)| (n.to_string(), c as u64))
            .collect();
        return Ok((map, vec![state.name.clone()]));
    };
    let mut expected: std::collections::HashSet<String> =
        state.nodes.live().into_iter().map(|n| n.name).collect();
    expected.insert(state.name.clone());
    let (id, mut answers) = state.nodes.open_query();
    let asked = cluster.control.send(ControlMessage::ChannelsQuery {
        id,
        from: state.name.clone(),
        pattern,
    });
    if let Err(e) = asked.wait().await {
        state.nodes.close_query(id);
        return Err(e);
    }
    let mut totals = std::collections::BTreeMap::new();
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while heard.len() < expected.len() {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some(answer)) => {
                if heard.contains(&answer.node) {
                    continue;
                }
                for (name, n) in answer.channels {
                    *totals.entry(name).or_insert(0u64) += n;
                }
                heard.push(answer.node);
            }
            Ok(None) | Err(_) => break,
        }
    }
    state.nodes.close_query(id);
    heard.sort();
    Ok((totals, heard))
}
