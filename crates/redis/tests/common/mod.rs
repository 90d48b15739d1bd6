//! Shared test support: nodes (engines) with a handler that records what it gets.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_core::engine::HistoryPage;
use starling_core::engine::{
    Accepted, Broker, ControlMessage, EngineHandler, Idempotency, NodeInfo, PublishRequest,
};
use starling_core::{HistoryPolicy, HistoryQuery};
use starling_protocol::Publication;
use starling_redis::{RedisConfig, RedisEngine};
use starling_testkit::redis::RedisServer;
use tokio::sync::mpsc;

/// Upper bound of any wait for an event: a failure, not a synchronisation.
pub const WAIT: Duration = Duration::from_secs(10);

/// A publication as the handler got it.
#[derive(Debug, Clone)]
pub struct Got {
    pub channel: String,
    pub epoch: String,
    pub publication: Publication,
}

struct Recorder {
    /// Held by a test to stall delivery (the engine's task blocks on it).
    gate: Arc<std::sync::Mutex<()>>,
    pubs: mpsc::UnboundedSender<Got>,
    resyncs: mpsc::UnboundedSender<Option<Vec<Arc<str>>>>,
    controls: mpsc::UnboundedSender<ControlMessage>,
}

impl EngineHandler for Recorder {
    fn publication(&self, channel: &str, epoch: &str, publication: Publication) {
        // A held gate blocks this thread. On a multi-thread runtime tokio is told first,
        // so that another thread takes over this worker's queue and the I/O driver: a
        // worker blocked unannounced once left the driver unpolled while the other
        // worker slept, and the stalling test hung.
        let wait = || drop(self.gate.lock());
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
        let _ = self.pubs.send(Got {
            channel: channel.to_owned(),
            epoch: epoch.to_owned(),
            publication,
        });
    }

    fn resync(&self, channels: Option<&[Arc<str>]>) {
        let _ = self.resyncs.send(channels.map(<[Arc<str>]>::to_vec));
    }

    fn control(&self, message: ControlMessage) {
        let _ = self.controls.send(message);
    }
}

/// One node: its engine and what its handler received.
pub struct Node {
    pub engine: Arc<RedisEngine>,
    /// Lock it to stall this node's deliveries.
    pub gate: Arc<std::sync::Mutex<()>>,
    pub pubs: mpsc::UnboundedReceiver<Got>,
    pub resyncs: mpsc::UnboundedReceiver<Option<Vec<Arc<str>>>>,
    pub controls: mpsc::UnboundedReceiver<ControlMessage>,
}

/// Stalls `node`'s deliveries until the returned function is called: a thread holds
/// the gate (a test must not hold a lock across its awaits).
pub fn stall(node: &Node) -> impl FnOnce() {
    let gate = node.gate.clone();
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _guard = gate.lock().expect("gate");
        held_tx.send(()).expect("signal");
        let _ = hold.recv();
    });
    held.recv().expect("the gate is held");
    move || {
        let _ = release.send(());
        holder.join().expect("holder thread");
    }
}

/// The test configuration: short timeouts so that fault tests finish quickly.
pub fn config(urls: &[String], name: &str) -> RedisConfig {
    RedisConfig {
        addresses: urls.to_vec(),
        node: name.to_owned(),
        command_timeout: Duration::from_millis(1000),
        presence_ttl: Duration::from_millis(900),
        probe_interval: Duration::from_millis(200),
        heartbeat_interval: Duration::from_secs(3600),
        ..RedisConfig::default()
    }
}

/// Starts a node on `urls`.
pub async fn node(urls: &[String], name: &str) -> Node {
    node_with(config(urls, name)).await
}

/// Starts a node with `config`.
pub async fn node_with(config: RedisConfig) -> Node {
    let name = config.node.clone();
    let engine = RedisEngine::connect(config).await.expect("connect");
    let (pubs, pubs_rx) = mpsc::unbounded_channel();
    let (resyncs, resyncs_rx) = mpsc::unbounded_channel();
    let (controls, controls_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(std::sync::Mutex::new(()));
    engine.start(
        Arc::new(Recorder {
            gate: gate.clone(),
            pubs,
            resyncs,
            controls,
        }),
        Arc::new(move || NodeInfo {
            name: name.clone(),
            version: "test".into(),
            connections: 1,
            ..NodeInfo::default()
        }),
    );
    Node {
        engine,
        gate,
        pubs: pubs_rx,
        resyncs: resyncs_rx,
        controls: controls_rx,
    }
}

/// Two nodes on `redis`; the second subscribed to `channel`.
pub async fn pair(redis: &RedisServer, channel: &str) -> (Node, Node) {
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let b = node(&urls, "b").await;
    b.engine
        .subscribe(&channel.into())
        .wait()
        .await
        .expect("subscribe");
    (a, b)
}

/// The next item, or a panic after [`WAIT`].
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("handler gone")
}

/// Polls `check` until it holds, or panics after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes, expecting success.
pub async fn publish(engine: &RedisEngine, request: PublishRequest) -> Accepted {
    engine.publish(request).wait().await.expect("publish")
}

/// Reads history, expecting success.
pub async fn read_history(
    engine: &RedisEngine,
    channel: &str,
    since: Option<u64>,
    limit: usize,
    reverse: bool,
    policy: HistoryPolicy,
) -> HistoryPage {
    let query = HistoryQuery {
        since,
        limit,
        reverse,
        max_bytes: usize::MAX,
    };
    engine
        .history(&channel.into(), query, policy)
        .wait()
        .await
        .expect("history")
}

/// Publishes until it succeeds (a node that has not noticed a restart yet fails its
/// first tries), or panics after [`WAIT`].
pub async fn publish_eventually(
    engine: &RedisEngine,
    request: impl Fn() -> PublishRequest,
) -> Accepted {
    let start = tokio::time::Instant::now();
    loop {
        match engine.publish(request()).wait().await {
            Ok(a) => return a,
            Err(e) => assert!(start.elapsed() < WAIT, "publish kept failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publish request with history `size` (no age limit).
pub fn request(channel: &str, data: &str, size: usize) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        data: Bytes::copy_from_slice(data.as_bytes()),
        info: None,
        history: HistoryPolicy {
            size,
            ttl_ms: 0,
            max_bytes: 0,
        },
        idempotency: None,
    }
}

/// A publish request with an idempotency key.
pub fn idempotent(channel: &str, data: &str, key: &str, fingerprint: u64) -> PublishRequest {
    PublishRequest {
        idempotency: Some(Idempotency {
            key: key.to_owned(),
            fingerprint,
            ttl_ms: 60_000,
        }),
        ..request(channel, data, 10)
    }
}

/// Runs a raw command (name and arguments) on `url`.
pub async fn raw(url: &str, command: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.expect("raw command")
}
