//! The node: shared state, the accept loop, routes and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use hyper_util::service::TowerToHyperService;
use starling_core::{
    HistoryPolicy, Hub, HubCounters, NamespaceOptions, Namespaces, Node, NodeHandler, Registry,
};
use starling_protocol::codes;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::cluster::ClusterEngine;
use crate::config::{Config, NamespaceConfig};
use crate::encoder::WireEncoder;
use crate::metrics::Metrics;
use starling_core::engine::ControlMessage;

/// Everything a request or connection handler needs.
pub struct AppState {
    /// The effective configuration.
    pub config: Config,
    /// Channels and fan-out (local subscribers).
    pub hub: Arc<Hub>,
    /// The node facade: publish, subscribe, history and presence, whichever engine runs.
    pub node: Arc<Node>,
    /// Open connections.
    pub registry: Registry,
    /// Namespace rules.
    pub namespaces: Namespaces,
    /// Token verification.
    pub auth: Auth,
    /// The node's per-minute counter snapshots (`POST /api/analytics` without the
    /// archive, and its latency with it).
    pub analytics: crate::analytics::Ring,
    /// The PostgreSQL archive, once started (`archive.enabled`).
    pub archive: std::sync::OnceLock<Arc<crate::archive::ArchiveSink>>,
    /// Dashboard sessions (`None` unless `admin.enabled`).
    pub admin: Option<crate::admin::Admin>,
    /// Server-level counters.
    pub metrics: Metrics,
    /// Encodes pushes and replies into frames.
    pub encoder: Arc<WireEncoder>,
    /// The durable message log, unless storage is disabled.
    pub journal: Option<Arc<crate::journal::LogJournal>>,
    /// Node name.
    pub name: String,
    /// When the node started.
    pub started: Instant,
    /// Set once graceful shutdown began: `/ready` fails and upgrades are refused.
    pub draining: AtomicBool,
    /// Admission pacing and reconnect advice.
    pub limits: crate::limits::Limits,
    /// Results of publishes made with an idempotency key.
    pub idempotency: crate::idempotency::IdempotencyCache,
    /// HTTP API requests in progress (graceful shutdown waits for them).
    pub api_in_flight: crate::api::InFlight,
    /// The cluster engine, when `cluster.engine` names one.
    pub engine: Option<Arc<dyn ClusterEngine>>,
    /// Where the cluster engine delivers (set with `engine`).
    pub handler: Option<Arc<NodeHandler>>,
    /// The other nodes, as their heartbeats tell.
    pub nodes: crate::cluster::Nodes,
    /// Connection deadlines (keepalive, timeouts), driven by one task from [`run`].
    pub wheel: Arc<crate::wheel::TimerWheel<starling_core::Outbox>>,
    next_key: AtomicU64,
}

impl AppState {
    /// Builds the state for a single node (memory engine) listening on `addr`.
    pub fn new(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Self>> {
        Self::with_engine(config, addr, None)
    }

    /// Builds the state for a node listening on `addr`, joined to a cluster through
    /// `engine` when one is given (the engine is started by [`serve`]).
    pub fn with_engine(
        config: Config,
        addr: SocketAddr,
        engine: Option<Arc<dyn ClusterEngine>>,
    ) -> anyhow::Result<Arc<Self>> {
        let encoder = Arc::new(WireEncoder::new(config.websocket.compression_min_size));
        let mut map: HashMap<String, NamespaceOptions> = config
            .namespaces
            .iter()
            .map(|(name, ns)| {
                (
                    name.clone(),
                    NamespaceOptions {
                        allow_publish: ns.allow_publish,
                        allow_anonymous: ns.allow_anonymous,
                        private: ns.private,
                        presence: ns.presence,
                        join_leave: ns.join_leave,
                        history: HistoryPolicy {
                            size: ns.history_size,
                            ttl_ms: ns.history_ttl_secs.saturating_mul(1000),
                            max_bytes: ns.history_max_bytes,
                        },
                        lossy: ns.lossy,
                        allow_delta: ns.allow_delta,
                        // Given by `Namespaces::new`.
                        index: 0,
                    },
                )
            })
            .collect();
        // In dev mode every namespace exists and is open, so the quick start can use any.
        // ... and keeps a little history, so recovery can be tried out, with presence.
        let fallback = config.server.dev.then_some(NamespaceOptions {
            allow_publish: true,
            allow_anonymous: true,
            presence: true,
            allow_delta: true,
            history: HistoryPolicy {
                size: 100,
                ttl_ms: 300_000,
                max_bytes: NamespaceConfig::default().history_max_bytes,
            },
            ..NamespaceOptions::default()
        });
        // The demo chat's rooms (`chat:<room>`) also push join/leave (its "here now" list),
        // unless the configuration says otherwise. Only there: a join or leave goes to
        // every subscriber, so in a channel of N subscribers N joins cost N² pushes, which
        // would swamp any load test run on a dev node.
        if let Some(open) = &fallback {
            map.entry("chat".to_string())
                .or_insert_with(|| NamespaceOptions {
                    join_leave: true,
                    ..open.clone()
                });
        }
        let namespaces = Namespaces::new(map, fallback);
        // One broadcast histogram per namespace (the configured ones are fixed from here).
        let counters = Arc::new(HubCounters::with_namespaces(namespaces.metric_slots()));
        let mut hub = Hub::new(encoder.clone(), counters)
            .with_max_channels(config.server.max_channels)
            .with_max_history_bytes(config.server.history_max_bytes);
        // Echo mode has no channels, so nothing to log; in a cluster the broker holds
        // the streams (and their durability).
        let journal = if config.storage.dir.is_empty() || config.server.echo {
            None
        } else if engine.is_some() {
            // A cluster node journals only for the archive: what it publishes itself.
            config
                .archive
                .enabled
                .then(|| crate::journal::open_cluster_archive(&config.storage))
                .transpose()?
        } else {
            let journal = crate::journal::open(&config.storage, &hub, &namespaces)?;
            hub = hub.with_journal(journal.clone());
            Some(journal)
        };
        let auth = Auth::new(&config.client).context("loading token keys")?;
        let admin = crate::admin::Admin::new(&config.admin, config.server.dev)
            .context("the dashboard's session key")?;
        let name = node_name(&config, addr);
        if let Some(engine) = &engine {
            hub = hub.with_broker(engine.parts().broker);
        }
        let hub = Arc::new(hub);
        let metrics = Metrics::new(namespaces.metric_slots());
        // The counters start at zero now: the first interval runs from here.
        let analytics = crate::analytics::Ring::new(
            Duration::from_secs(60),
            crate::analytics::RING_MINUTES,
            crate::analytics::Snapshot {
                at_ms: crate::analytics::now_ms(),
                counters: metrics.reading(),
                connections: 0,
                peak: 0,
                log_position: crate::analytics::full_log(journal.as_ref(), engine.is_some())
                    .map(|log| log.synced_position()),
            },
        );
        let node_timeout = Duration::from_secs(config.cluster.node_timeout_secs);
        Ok(Arc::new_cyclic(|weak| {
            let (node, handler) = match &engine {
                None => (Node::local(hub.clone()), None),
                Some(engine) => {
                    let sink = crate::cluster::control_sink(weak.clone());
                    let archive = journal
                        .clone()
                        .map(|j| j as Arc<dyn starling_core::Journal>);
                    let (node, handler) =
                        Node::clustered(hub.clone(), engine.parts(), sink, archive);
                    (node, Some(handler))
                }
            };
            Self {
                namespaces,
                hub,
                node,
                name,
                journal,
                registry: Registry::default(),
                auth,
                analytics,
                archive: std::sync::OnceLock::new(),
                admin,
                metrics,
                encoder,
                started: Instant::now(),
                draining: AtomicBool::new(false),
                limits: crate::limits::Limits::new(&config),
                idempotency: crate::idempotency::IdempotencyCache::new(
                    Duration::from_secs(config.api.idempotency_window_secs),
                    config.api.idempotency_max_keys,
                ),
                api_in_flight: crate::api::InFlight::default(),
                engine,
                handler,
                nodes: crate::cluster::Nodes::new(node_timeout),
                wheel: Arc::default(),
                next_key: AtomicU64::new(1),
                config,
            }
        }))
    }

    /// A fresh key for a new connection.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}

/// The HTTP routes of a node.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/publish", post(crate::api::publish))
        .route("/api/broadcast", post(crate::api::broadcast))
        .route("/api/channels", post(crate::api::channels))
        .route("/api/presence", post(crate::api::presence))
        .route("/api/history", post(crate::api::history))
        .route("/api/disconnect", post(crate::api::disconnect))
        .route("/api/unsubscribe", post(crate::api::unsubscribe))
        .route("/api/user", post(crate::api::user))
        .route("/api/info", post(crate::api::info))
        .route("/api/analytics", post(crate::api::analytics));
    Router::new()
        .route(crate::upgrade::PATH, get(crate::upgrade::websocket))
        .route("/health", get(crate::ops::health))
        .route("/ready", get(crate::ops::ready))
        .route("/metrics", get(crate::ops::metrics))
        .route("/api/openapi.json", get(crate::api::openapi))
        .route("/", get(crate::web::demo))
        .route("/admin", get(crate::web::admin))
        .route("/admin/", get(crate::web::admin))
        .route("/admin/api/session", get(crate::admin::session))
        .route("/admin/api/login", post(crate::admin::login))
        .route("/admin/api/snapshot", get(crate::admin::snapshot))
        .route("/static/{*file}", get(crate::web::static_file))
        .merge(api)
        .fallback(crate::ops::not_found)
        .with_state(state)
}

/// Binds the configured address and runs until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen;
    let listener = bind(addr, config.server.listen_backlog)
        .with_context(|| format!("binding {addr} (server.listen)"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let engine = crate::cluster::connect(&config, &node_name(&config, local)).await?;
    let state = AppState::with_engine(config, local, engine)?;
    if state.config.archive.enabled
        && let Some(journal) = &state.journal
    {
        let sink = crate::archive::ArchiveSink::start(
            &state.config.archive,
            &state.name,
            journal.log().clone(),
        )
        .context("starting the archive")?;
        let _ = state.archive.set(sink);
    }
    tokio::spawn(crate::analytics::run_sampler(Arc::downgrade(&state)));
    // Before the announcement: whoever reads it may send a signal at once.
    let shutdown = shutdown_signal();
    announce(&state, local);
    run(listener, state, shutdown).await
}

/// The node's name: `server.name`, or `starling-<port>`.
fn node_name(config: &Config, addr: SocketAddr) -> String {
    if config.server.name.is_empty() {
        format!("starling-{}", addr.port())
    } else {
        config.server.name.clone()
    }
}

/// Binds the listener with an explicit accept backlog: tokio's default (1024) drops most
/// SYNs of a reconnect storm, and every dropped SYN costs its client a 1-3-7 s
/// retransmission wait. The kernel caps it at `net.core.somaxconn`.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn announce(state: &AppState, local: SocketAddr) {
    let mode = match (state.config.server.echo, state.config.server.dev) {
        (true, _) => " (echo mode)",
        (false, true) => " (dev mode: anonymous clients, any origin, open namespaces)",
        _ => "",
    };
    // Printed to stdout, not only logged: the quick start reads it and tests wait for it.
    println!("starling listening on http://{local}{mode}");
    println!("  WebSocket: ws://{local}/connection/websocket");
    if state.config.server.dev {
        println!("  Demo chat: http://{local}/ (open it in two tabs)");
    }
    if state.config.admin.enabled {
        println!("  Dashboard: http://{local}/admin");
    }
    if !state.config.api.key.is_empty() {
        println!("  HTTP API:  http://{local}/api/publish (Authorization: apikey <key>)");
    }
    info!(%local, node = %state.name, "listening");
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: the accept loop may not poll it before
/// the first connection is served, and a signal before then would kill the process
/// without the orderly stop (no log sync, no clean marker).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        warn!("cannot listen for {name}: {e}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait(int, "SIGINT") => {}
                _ = wait(term, "SIGTERM") => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the cluster engine (deliveries, heartbeats) and the periodic position check;
/// `None` on a single node.
fn start_engine(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let (engine, handler) = (state.engine.as_ref()?, state.handler.as_ref()?);
    let info: crate::cluster::InfoFn = {
        let weak = Arc::downgrade(state);
        Arc::new(move || {
            weak.upgrade()
                .map(|s| crate::cluster::node_info(&s))
                .unwrap_or_default()
        })
    };
    engine.start(handler.clone(), info);
    let every = state.config.cluster.position_check_secs;
    if every == 0 {
        return None;
    }
    let node = state.node.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.tick().await;
        loop {
            tick.tick().await;
            node.check_positions(None);
        }
    }))
}

/// Accepts connections until `shutdown` completes, then drains: refuse new upgrades, ask
/// every client to reconnect elsewhere, wait for them to leave (at most
/// `server.shutdown_timeout_secs`).
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let service = TowerToHyperService::new(router(state.clone()));
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            // Expired history and idle channels go away within a second.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut trim = crate::allocator::TrimPolicy::default();
            loop {
                tick.tick().await;
                // Shard by shard, yielding between them: a sweep of every channel in
                // one go (10,100 with history in the `users` benchmark) held a worker
                // for the whole walk, and whatever was queued behind it waited.
                for index in 0..state.hub.shard_count() {
                    state.hub.sweep_shard(index);
                    tokio::task::yield_now().await;
                }
                state.limits.sweep();
                if trim.tick(state.registry.connections()) {
                    // Walks (and locks) the allocator's arenas: not on a runtime worker.
                    drop(tokio::task::spawn_blocking(crate::allocator::trim));
                }
            }
        })
    };
    let checker = start_engine(&state);
    let wheel = tokio::spawn(state.wheel.clone().drive());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // One task per socket: it reads the first request head itself, runs a
                // WebSocket connection to its end, and hands anything else to hyper.
                let task = crate::accept::serve(stream, peer.ip(), state.clone(), service.clone());
                tokio::spawn(task);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state.draining.store(true, Ordering::SeqCst);
    let asked = state.registry.disconnect_all(codes::SHUTDOWN);
    info!(
        connections = asked,
        "shutting down: asked clients to reconnect"
    );
    let grace = Duration::from_secs(state.config.server.shutdown_timeout_secs);
    // Connections deregister themselves as their close handshakes finish; API requests
    // already running finish too (new ones get 503 since `draining` is set).
    let _ = tokio::time::timeout(grace, async {
        tokio::join!(state.registry.wait_empty(), state.api_in_flight.wait_idle())
    })
    .await;
    let left = state.registry.connections();
    if left > 0 {
        warn!(
            connections = left,
            "shutdown timeout: dropping remaining connections"
        );
    }
    let api_left = state.api_in_flight.count();
    if api_left > 0 {
        warn!(
            requests = api_left,
            "shutdown timeout: dropping unfinished API requests"
        );
    }
    sweeper.abort();
    wheel.abort();
    if let Some(checker) = checker {
        checker.abort();
    }
    if let Some(engine) = &state.engine {
        let leaving = engine.parts().control.send(ControlMessage::Leaving {
            node: state.name.clone(),
        });
        if let Err(e) = leaving.wait().await {
            warn!("could not tell the cluster that this node leaves: {e}");
        }
        engine.shutdown();
    }
    if let Some(journal) = &state.journal {
        let log = journal.log().clone();
        // fsync waits on the writer thread: keep it off the async workers. `close` also
        // leaves the clean marker when nothing was lost, so the next start keeps epochs.
        match tokio::task::spawn_blocking(move || log.close()).await {
            Ok(Ok(true)) => info!("message log synced and closed clean"),
            Ok(Ok(false)) => warn!(
                "message log synced, but records were lost during this run: \
                 the next start gives every channel a new epoch"
            ),
            Ok(Err(e)) => warn!("message log sync at shutdown failed: {e}"),
            Err(e) => warn!("message log sync task failed: {e}"),
        }
    }
    if let Some(archive) = state.archive.get() {
        // What is queued is written now; what the reader has not reached yet is read
        // again from the stored cursor at the next start.
        if !archive.shutdown(Duration::from_secs(5)).await {
            warn!("archive: rows still queued at shutdown are archived after the next start");
        }
    }
    info!("stopped");
    Ok(())
}
