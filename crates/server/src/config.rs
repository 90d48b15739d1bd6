//! Configuration: one set of names for the TOML file, the environment and the command line.
//!
//! Every setting has a dotted key (`websocket.max_message_size`). The same key is
//! accepted in the TOML file (as `[websocket] max_message_size = ...`), in the environment
//! (`STARLING_WEBSOCKET_MAX_MESSAGE_SIZE`) and on the command line (`--set
//! websocket.max_message_size=...`; common keys also have a short flag). Later sources win:
//! defaults < file < environment < command line. Unknown keys and bad values fail at start
//! with a message naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix are configuration overrides.
pub const ENV_PREFIX: &str = "STARLING_";

/// Environment variables with the prefix that are not settings (used by scripts).
const ENV_IGNORED: &[&str] = &["STARLING_CACHE", "STARLING_LOG"];

/// A configuration problem, reported at start with the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has wrong keys or values.
    #[error("config file {path}: {message}")]
    File {
        /// File path.
        path: String,
        /// Parser message, naming the key.
        message: String,
    },
    /// An override (environment or `--set`) names no known setting.
    #[error(
        "{source_name}: unknown setting `{key}` (see `starling serve --help` and docs/OPERATIONS.md)"
    )]
    UnknownKey {
        /// Where the override came from.
        source_name: String,
        /// The dotted key.
        key: String,
    },
    /// An override has a malformed `key=value` form.
    #[error("--set {0}: expected key=value")]
    BadOverride(String),
    /// The merged configuration has a bad value.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and mode.
    pub server: ServerConfig,
    /// WebSocket transport.
    pub websocket: WebSocketConfig,
    /// Client connections: auth and limits.
    pub client: ClientConfig,
    /// HTTP API for application backends.
    pub api: ApiConfig,
    /// Channel namespaces (`ns:name`), keyed by namespace name.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Logging.
    pub log: LogConfig,
    /// The durable message log.
    pub storage: StorageConfig,
    /// Many nodes as one: the engine that holds the streams.
    pub cluster: ClusterConfig,
    /// The Redis engine (`cluster.engine = "redis"`).
    pub redis: RedisConfig,
    /// The web dashboard at `/admin`.
    pub admin: AdminConfig,
    /// The PostgreSQL archive of every publication and connection event.
    pub archive: ArchiveConfig,
    /// `STARLING_*` environment variables that name no section, so were not read as
    /// settings (reported at start).
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// The archive: every publication (read from the message log) and the connection events,
/// written to PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Archive to PostgreSQL. Needs `url` and `storage.dir`: a single node's archive
    /// reads its message log (at least once); a cluster node keeps an archive journal of
    /// what it publishes itself in `<storage.dir>/cluster-archive` and archives that, so
    /// that each publication is archived by the one node that published it.
    pub enabled: bool,
    /// PostgreSQL connection string, as `key=value` pairs (`host=127.0.0.1 user=starling
    /// dbname=starling password=...`) or a URL (`postgresql://starling@127.0.0.1/starling`).
    /// No TLS: a loopback or Unix-socket address, or a TLS proxy.
    pub url: String,
    /// Also archive connection events (connect, disconnect with its code, subscribe,
    /// unsubscribe), best effort: dropped (and counted) when the queue is full.
    pub events: bool,
    /// Rows in one batch (one `COPY`) at most.
    pub batch_rows: usize,
    /// Milliseconds the first row of a batch waits for more.
    pub linger_ms: u64,
    /// Days of daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// Days of archive kept: older daily partitions are dropped (hourly). 0 = keep all.
    pub retention_days: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: String::new(),
            events: true,
            batch_rows: 5000,
            linger_ms: 200,
            partitions_ahead_days: 2,
            retention_days: 0,
        }
    }
}

/// The web dashboard at `/admin` and the JSON API behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the dashboard. Off by default; `--dev` turns it on (dev listens on loopback
    /// only, and there the dashboard asks for no password unless one is set).
    pub enabled: bool,
    /// The password that logs in to the dashboard; required when `enabled` outside dev.
    pub password: String,
    /// HMAC secret that signs dashboard sessions; empty = a random one per process (every
    /// session then ends when the node restarts, and each node of a cluster signs its own).
    pub secret: String,
    /// Seconds a dashboard session lasts after logging in.
    pub session_ttl_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            password: String::new(),
            secret: String::new(),
            session_ttl_secs: 8 * 3600,
        }
    }
}

/// Many nodes as one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `memory`: one node, streams in this process (and its message log); `redis`: many
    /// nodes, streams, presence and node-to-node messages in Redis (see `[redis]`).
    pub engine: String,
    /// Seconds between checks of every replicated channel's position against the
    /// broker (catches publications lost silently; 0 disables).
    pub position_check_secs: u64,
    /// Seconds between a node's heartbeats to the others.
    pub heartbeat_secs: u64,
    /// A node whose heartbeat is older than this many seconds is gone.
    pub node_timeout_secs: u64,
    /// Seconds a presence entry lives without being refreshed (a dead node's subscribers
    /// leave presence within this time).
    pub presence_ttl_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            engine: "memory".into(),
            position_check_secs: 30,
            heartbeat_secs: 3,
            node_timeout_secs: 10,
            presence_ttl_secs: 60,
        }
    }
}

/// The Redis engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One URL per shard (`redis://host:port/db`); channels are spread over them by a
    /// consistent hash of their names.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub channel (several clusters can share a Redis).
    pub prefix: String,
    /// Milliseconds a Redis command may take before the call fails as unavailable.
    pub command_timeout_ms: u64,
    /// Seconds between liveness probes (`PING`) of each Redis connection.
    pub probe_interval_secs: u64,
    /// The addresses are seed nodes of one Redis Cluster (sharded pub/sub, Redis >= 7)
    /// instead of independent shards.
    pub cluster: bool,
    /// When a Redis restart starts new epochs: `auto` (unless Redis reports
    /// `appendfsync always`, which loses nothing acknowledged), `always` (also catches a
    /// failover to a lagging replica), `never`.
    pub restart_epochs: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            prefix: "starling".into(),
            command_timeout_ms: 2000,
            probe_interval_secs: 1,
            cluster: false,
            restart_epochs: "auto".into(),
        }
    }
}

/// The durable message log: every publication is appended; history is rebuilt from it
/// at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the log's segment files; empty keeps everything in memory only.
    pub dir: String,
    /// A segment is closed and a new one started past this size, in bytes.
    pub segment_bytes: u64,
    /// Bytes kept on disk; the oldest segments are deleted beyond it.
    pub max_bytes: u64,
    /// Segments whose newest record is older than this many seconds are deleted.
    pub max_age_secs: u64,
    /// Milliseconds between fsyncs of publications not published with `durable: true`.
    pub sync_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: "starling-data".into(),
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            max_age_secs: 24 * 3600,
            sync_interval_ms: 100,
        }
    }
}

/// Listener and mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Development mode: any origin, anonymous clients, a fixed API key, all channels open.
    /// Refused on a non-loopback `listen` address unless `dev_allow_public` is set.
    pub dev: bool,
    /// Lets `dev` run on a non-loopback address (reachable from other machines). Off by
    /// default: dev mode opens everything, with a well-known API key.
    pub dev_allow_public: bool,
    /// Echo mode: the WebSocket endpoint echoes every message (for conformance testing).
    pub echo: bool,
    /// Node name reported by the info API; empty = host name + port.
    pub name: String,
    /// Seconds a graceful shutdown may take before the remaining connections are dropped.
    pub shutdown_timeout_secs: u64,
    /// Most WebSocket connections this node holds at once; 0 = no limit. Upgrades beyond
    /// it get HTTP 503 with `Retry-After`.
    pub max_connections: usize,
    /// Most channels this node holds at once; a subscribe or publish that would create
    /// one more gets error 115. 0 = no limit.
    pub max_channels: u64,
    /// New WebSocket upgrades admitted per second (burst = rate); upgrades beyond it wait
    /// for their turn. 0 = no pacing.
    pub admission_rate: u32,
    /// Accept backlog of the listening socket (capped by the kernel's
    /// `net.core.somaxconn`): room for a storm of simultaneous connects.
    pub listen_backlog: u32,
    /// Most WebSocket connections from one source address (IPv6: one /64) at once;
    /// upgrades beyond it get HTTP 503 with `Retry-After`. 0 = no limit. Behind a
    /// reverse proxy every client shares the proxy's address: raise it or set 0.
    pub max_connections_per_ip: usize,
    /// New WebSocket upgrades admitted per second from one source address (burst =
    /// rate), so that one address cannot take the whole `admission_rate`; upgrades
    /// beyond it wait for their turn like those beyond `admission_rate`. 0 = no limit.
    pub admission_rate_per_ip: u32,
    /// Bytes of history the node keeps over all channels. A publication that does not
    /// fit evicts its own channel's oldest entries; if that is not enough it is not kept
    /// in history (counted in `starling_history_dropped_total`). 0 = no limit.
    pub history_max_bytes: u64,
}

/// WebSocket transport settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message (after reassembly and decompression), in bytes; larger ones close with 1009.
    pub max_message_size: usize,
    /// Largest single frame, in bytes; 0 means the same as `max_message_size`.
    pub max_frame_size: usize,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it.
    pub compression: bool,
    /// Messages shorter than this are sent uncompressed even when compression is negotiated.
    pub compression_min_size: usize,
    /// Seconds between server pings on an idle connection.
    pub ping_interval_secs: u64,
    /// Seconds to wait for any traffic after a ping before closing the connection.
    pub pong_timeout_secs: u64,
    /// Seconds a new TCP connection may take to complete the HTTP upgrade.
    pub handshake_timeout_secs: u64,
    /// Allowed `Origin` values (e.g. `https://app.example.com`); `*` allows any. Requests
    /// without an `Origin` header (non-browser clients) are allowed.
    pub allowed_origins: Vec<String>,
}

/// Client connection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Allow connections without a token (user id "").
    pub allow_anonymous: bool,
    /// HMAC secret for HS256 connection and subscription tokens.
    pub token_hmac_secret: String,
    /// HMAC secret for HS256 subscription tokens when they should not share
    /// `token_hmac_secret`; empty = the same secret as connection tokens.
    pub subscription_token_hmac_secret: String,
    /// PEM-encoded RSA public key (or a path to a file holding it) for RS256 tokens.
    pub token_rsa_public_key: String,
    /// Tokens (connection and subscription) must carry `exp`; a token without one is
    /// refused like an invalid token.
    pub token_require_exp: bool,
    /// When set, tokens must carry an `aud` claim equal to (or a list containing) it.
    /// Empty: `aud` is not checked.
    pub token_audience: String,
    /// When set, tokens must carry an `iss` claim equal to it. Empty: not checked.
    pub token_issuer: String,
    /// Bytes a connection's outbound queue may hold before it is closed as a slow consumer.
    pub max_queue_bytes: usize,
    /// Seconds a connection may stay open without a `connect` command.
    pub connect_timeout_secs: u64,
    /// Commands per second a connection may send on average (token bucket); commands
    /// over the budget get error 114. 0 = no limit.
    pub command_rate: u32,
    /// Commands a connection may send at once before `command_rate` applies.
    pub command_burst: u32,
    /// Subscriptions one connection may hold; more get error 106. 0 = no limit.
    pub max_subscriptions: usize,
    /// Connections one (authenticated) user may hold on this node; one more is closed
    /// with 4005 at `connect`. 0 = no limit.
    pub max_connections_per_user: usize,
    /// Channels one connection may create per second on average (token bucket), by
    /// subscribing to a channel that does not exist yet; a subscribe over the budget gets
    /// error 106. Subscribing to existing channels is not limited. 0 = no limit.
    pub channel_creation_rate: u32,
    /// Channels a connection may create at once before `channel_creation_rate` applies.
    pub channel_creation_burst: u32,
    /// Shortest reconnect delay advised in `disconnect` pushes, in milliseconds.
    pub reconnect_delay_min_ms: u32,
    /// Longest reconnect delay advised in `disconnect` pushes, in milliseconds.
    pub reconnect_delay_max_ms: u32,
}

/// HTTP API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Key expected in `Authorization: apikey <key>`; empty disables the API (except in dev).
    pub key: String,
    /// Seconds a publish's `idempotency_key` is remembered: a retry within this window
    /// gets the original result instead of publishing again.
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered; the oldest are forgotten first.
    pub idempotency_max_keys: usize,
}

/// Options of a channel namespace. Channels without a `ns:` prefix use the `default`
/// namespace; a channel in a namespace that is not configured is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Clients may publish into channels of this namespace.
    pub allow_publish: bool,
    /// Anonymous clients may subscribe.
    pub allow_anonymous: bool,
    /// Subscribing needs a subscription token.
    pub private: bool,
    /// Presence information is kept and may be queried.
    pub presence: bool,
    /// Join and leave pushes are sent to subscribers.
    pub join_leave: bool,
    /// Publications kept per channel for history and recovery; 0 disables history.
    pub history_size: usize,
    /// Seconds a publication stays in history; 0 = until pushed out by newer ones.
    pub history_ttl_secs: u64,
    /// Bytes of history kept per channel; the oldest publications are dropped beyond
    /// it. 0 = no per-channel byte limit (`server.history_max_bytes` still applies).
    pub history_max_bytes: usize,
    /// A subscriber whose queue is full skips publications (seeing a gap in offsets)
    /// instead of being disconnected as a slow consumer.
    pub lossy: bool,
    /// Subscribers may ask for publications as fossil deltas against the previous one
    /// (`subscribe` with `delta: "fossil"`). On by default in dev mode.
    pub allow_delta: bool,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `starling=debug,info`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            dev: false,
            dev_allow_public: false,
            echo: false,
            name: String::new(),
            shutdown_timeout_secs: 10,
            max_connections: 0,
            max_channels: 1_000_000,
            admission_rate: 2000,
            listen_backlog: 4096,
            max_connections_per_ip: 10_000,
            admission_rate_per_ip: 200,
            history_max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_frame_size: 0,
            compression: true,
            compression_min_size: 128,
            ping_interval_secs: 25,
            pong_timeout_secs: 10,
            handshake_timeout_secs: 10,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            token_hmac_secret: String::new(),
            subscription_token_hmac_secret: String::new(),
            token_rsa_public_key: String::new(),
            token_require_exp: true,
            token_audience: String::new(),
            token_issuer: String::new(),
            max_queue_bytes: 1024 * 1024,
            connect_timeout_secs: 10,
            command_rate: 100,
            command_burst: 200,
            max_subscriptions: 256,
            max_connections_per_user: 0,
            channel_creation_rate: 10,
            channel_creation_burst: 64,
            reconnect_delay_min_ms: 500,
            reconnect_delay_max_ms: 5000,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: String::new(),
            idempotency_window_secs: 300,
            idempotency_max_keys: 100_000,
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            allow_publish: false,
            allow_anonymous: false,
            private: false,
            presence: true,
            join_leave: false,
            history_size: 0,
            history_ttl_secs: 300,
            history_max_bytes: 1024 * 1024,
            lossy: false,
            allow_delta: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert("default".to_string(), NamespaceConfig::default());
        Self {
            server: ServerConfig::default(),
            websocket: WebSocketConfig::default(),
            client: ClientConfig::default(),
            api: ApiConfig::default(),
            namespaces,
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            redis: RedisConfig::default(),
            admin: AdminConfig::default(),
            archive: ArchiveConfig::default(),
            ignored_env: Vec::new(),
        }
    }
}

/// The API key used in `--dev` mode when none is configured.
pub const DEV_API_KEY: &str = "dev-api-key";

/// What `starling config` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// A copy with every secret (`api.key`, `client.token_hmac_secret`,
    /// `client.subscription_token_hmac_secret`, `admin.password`, `admin.secret`) replaced by
    /// [`REDACTED`] when set, for printing. An empty secret stays empty: that it is unset
    /// is worth seeing.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for secret in [
            &mut c.api.key,
            &mut c.client.token_hmac_secret,
            &mut c.client.subscription_token_hmac_secret,
            &mut c.admin.password,
            &mut c.admin.secret,
        ] {
            if !secret.is_empty() {
                *secret = REDACTED.to_string();
            }
        }
        if !c.archive.url.is_empty() {
            c.archive.url = REDACTED.to_string();
        }
        // A Redis URL may carry a password: `redis://user:pass@host` shows the host only.
        for address in &mut c.redis.addresses {
            if let Some((scheme, rest)) = address.split_once("://")
                && let Some((_, host)) = rest.rsplit_once('@')
            {
                *address = format!("{scheme}://{REDACTED}@{host}");
            }
        }
        c
    }
}

impl Config {
    /// Builds the configuration from an optional file, environment variables and `--set`
    /// overrides (in that order of precedence, lowest first).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: name.clone(),
                source,
            })?;
            // Validate the file alone first so that its errors name the file.
            let file_value: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: name.clone(),
                message: e.to_string(),
            })?;
            toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                path: name.clone(),
                message: e.to_string(),
            })?;
            merge(&mut tree, file_value, true);
        }
        let mut ignored_env = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if ENV_IGNORED.contains(&name.as_str()) {
                continue;
            }
            // A variable that names no section is not meant for us (Kubernetes' service
            // links make STARLING_PORT, STARLING_SERVICE_HOST for a service named
            // `starling`; scripts set STARLING_BIN): ignored, and reported at start. One
            // that names a section but no key there is a typo: refused.
            let section = rest.to_ascii_lowercase();
            let section = section.split('_').next().unwrap_or_default();
            if tree.get(section).is_none() {
                ignored_env.push(name);
                continue;
            }
            let path = env_key_path(&tree, rest).ok_or_else(|| ConfigError::UnknownKey {
                source_name: format!("environment variable {name}"),
                key: rest.to_ascii_lowercase(),
            })?;
            set_path(&mut tree, &path, &value);
        }
        for (key, value) in overrides {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            if !path_exists(&tree, &path) && !is_namespace_path(&path) {
                return Err(ConfigError::UnknownKey {
                    source_name: "--set".into(),
                    key: key.clone(),
                });
            }
            set_path(&mut tree, &path, value);
        }
        let mut config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.ignored_env = ignored_env;
        config.finish()?;
        Ok(config)
    }

    /// Applies dev-mode defaults and checks cross-field rules.
    fn finish(&mut self) -> Result<(), ConfigError> {
        if self.server.dev
            && !self.server.listen.ip().is_loopback()
            && !self.server.dev_allow_public
        {
            return Err(ConfigError::Invalid(format!(
                "--dev (server.dev) opens every channel to anonymous clients with the well-known \
                 API key `{DEV_API_KEY}`; it listens only on a loopback address, not {}. Listen \
                 on 127.0.0.1, or set server.dev_allow_public = true to force it",
                self.server.listen
            )));
        }
        if self.server.dev {
            self.client.allow_anonymous = true;
            if self.websocket.allowed_origins.is_empty() {
                self.websocket.allowed_origins = vec!["*".into()];
            }
            if self.api.key.is_empty() {
                self.api.key = DEV_API_KEY.into();
            }
            for ns in self.namespaces.values_mut() {
                ns.allow_publish = true;
                ns.allow_anonymous = true;
                ns.allow_delta = true;
            }
            self.admin.enabled = true;
        }
        if self.admin.enabled && !self.server.dev && self.admin.password.is_empty() {
            return Err(ConfigError::Invalid(
                "admin.enabled needs admin.password (the dashboard's login); `starling genconfig` makes one"
                    .into(),
            ));
        }
        if self.archive.enabled {
            if self.archive.url.is_empty() {
                return Err(ConfigError::Invalid(
                    "archive.enabled needs archive.url (a PostgreSQL connection string)".into(),
                ));
            }
            if let Err(e) = self
                .archive
                .url
                .parse::<starling_archive::tokio_postgres::Config>()
            {
                return Err(ConfigError::Invalid(format!("archive.url: {e}")));
            }
            if self.server.echo {
                return Err(ConfigError::Invalid(
                    "archive.enabled in echo mode: an echo server publishes nothing".into(),
                ));
            }
            if self.storage.dir.is_empty() {
                return Err(ConfigError::Invalid(
                    "archive.enabled needs the message log (storage.dir): the archive reads it"
                        .into(),
                ));
            }
            if self.archive.batch_rows == 0 {
                return Err(ConfigError::Invalid(
                    "archive.batch_rows must be positive".into(),
                ));
            }
        }
        if self.admin.session_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "admin.session_ttl_secs must be positive".into(),
            ));
        }
        if self.websocket.max_message_size < 125 {
            return Err(ConfigError::Invalid(
                "websocket.max_message_size must be at least 125 bytes".into(),
            ));
        }
        if self.websocket.max_frame_size == 0 {
            self.websocket.max_frame_size = self.websocket.max_message_size;
        }
        if self.websocket.ping_interval_secs == 0 || self.websocket.pong_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "websocket.ping_interval_secs and websocket.pong_timeout_secs must be positive"
                    .into(),
            ));
        }
        if self.client.max_queue_bytes < self.websocket.max_message_size {
            return Err(ConfigError::Invalid(
                "client.max_queue_bytes must be at least websocket.max_message_size".into(),
            ));
        }
        if self.client.reconnect_delay_min_ms > self.client.reconnect_delay_max_ms {
            return Err(ConfigError::Invalid(
                "client.reconnect_delay_min_ms must not exceed client.reconnect_delay_max_ms"
                    .into(),
            ));
        }
        if self.client.channel_creation_rate > 0 && self.client.channel_creation_burst == 0 {
            return Err(ConfigError::Invalid(
                "client.channel_creation_burst must be at least 1 (or set client.channel_creation_rate = 0)"
                    .into(),
            ));
        }
        if self.client.command_rate > 0 && self.client.command_burst == 0 {
            return Err(ConfigError::Invalid(
                "client.command_burst must be at least 1 (or set client.command_rate = 0)".into(),
            ));
        }
        match self.cluster.engine.as_str() {
            "memory" => {}
            "redis" => {
                if self.redis.addresses.is_empty() {
                    return Err(ConfigError::Invalid(
                        "cluster.engine = \"redis\" needs at least one address in redis.addresses"
                            .into(),
                    ));
                }
                if self.cluster.heartbeat_secs == 0
                    || self.cluster.node_timeout_secs <= self.cluster.heartbeat_secs
                {
                    return Err(ConfigError::Invalid(
                        "cluster.heartbeat_secs must be positive and below cluster.node_timeout_secs"
                            .into(),
                    ));
                }
                if !matches!(
                    self.redis.restart_epochs.as_str(),
                    "auto" | "always" | "never"
                ) {
                    return Err(ConfigError::Invalid(format!(
                        "redis.restart_epochs must be `auto`, `always` or `never`, not `{}`",
                        self.redis.restart_epochs
                    )));
                }
                if self.redis.probe_interval_secs == 0 {
                    return Err(ConfigError::Invalid(
                        "redis.probe_interval_secs must be positive".into(),
                    ));
                }
                if self.cluster.presence_ttl_secs == 0 || self.redis.command_timeout_ms == 0 {
                    return Err(ConfigError::Invalid(
                        "cluster.presence_ttl_secs and redis.command_timeout_ms must be positive"
                            .into(),
                    ));
                }
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "cluster.engine must be `memory` or `redis`, not `{other}`"
                )));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be `text` or `json`, not `{}`",
                self.log.format
            )));
        }
        if !self.client.token_rsa_public_key.is_empty()
            && !self.client.token_rsa_public_key.contains("BEGIN")
        {
            let path = self.client.token_rsa_public_key.clone();
            self.client.token_rsa_public_key = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "client.token_rsa_public_key: cannot read {path}: {e}"
                ))
            })?;
        }
        Ok(())
    }
}

/// `namespaces.<name>.<option>` may create a namespace that the defaults do not have.
fn is_namespace_path(path: &[String]) -> bool {
    path.len() == 3
        && path[0] == "namespaces"
        && toml::Value::try_from(NamespaceConfig::default())
            .ok()
            .and_then(|v| v.get(&path[2]).cloned())
            .is_some()
}

/// Maps `WEBSOCKET_MAX_MESSAGE_SIZE` to `["websocket", "max_message_size"]` by matching the
/// known sections (their names have no underscore).
fn env_key_path(tree: &toml::Value, rest: &str) -> Option<Vec<String>> {
    let lower = rest.to_ascii_lowercase();
    let (section, key) = lower.split_once('_')?;
    let path = vec![section.to_string(), key.to_string()];
    if path_exists(tree, &path) {
        return Some(path);
    }
    // namespaces: STARLING_NAMESPACES_<NS>_<OPTION>, where NS has no underscore.
    if section == "namespaces" {
        let (ns, option) = key.split_once('_')?;
        let path = vec![section.to_string(), ns.to_string(), option.to_string()];
        return is_namespace_path(&path).then_some(path);
    }
    None
}

fn path_exists(tree: &toml::Value, path: &[String]) -> bool {
    let mut node = tree;
    for part in path {
        match node.get(part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// Sets a string override, read as a TOML literal when it is one (numbers, booleans,
/// arrays), else as a string.
fn set_path(tree: &mut toml::Value, path: &[String], raw: &str) {
    let value = parse_literal(raw);
    let mut node = tree;
    for (i, part) in path.iter().enumerate() {
        let Some(table) = node.as_table_mut() else {
            return;
        };
        if i + 1 == path.len() {
            table.insert(part.clone(), value);
            return;
        }
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::map::Map::new()));
    }
}

fn parse_literal(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Deep-merges `from` into `into`. A namespace table from a file replaces the default
/// namespace set when `replace_namespaces` is set, so a file lists exactly its namespaces.
fn merge(into: &mut toml::Value, from: toml::Value, replace_namespaces: bool) {
    match (into, from) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (k, v) in b {
                if replace_namespaces && k == "namespaces" {
                    let mut namespaces = toml::map::Map::new();
                    if let toml::Value::Table(list) = v {
                        for (name, opts) in list {
                            let mut base = toml::Value::try_from(NamespaceConfig::default())
                                .unwrap_or(toml::Value::Table(toml::map::Map::new()));
                            merge(&mut base, opts, false);
                            namespaces.insert(name, base);
                        }
                    }
                    a.insert(k, toml::Value::Table(namespaces));
                    continue;
                }
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v, false),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::load(None, env(&[]), &[]).expect("defaults load");
        assert!(!c.client.allow_anonymous);
        assert!(c.api.key.is_empty());
        assert_eq!(c.websocket.max_message_size, 65536);
        assert_eq!(c.websocket.max_frame_size, 65536);
        assert!(c.websocket.allowed_origins.is_empty());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8000");
        // Fairness and memory bounds are on by default.
        assert_eq!(c.server.max_connections_per_ip, 10_000);
        assert_eq!(c.server.admission_rate_per_ip, 200);
        assert_eq!(c.server.history_max_bytes, 256 * 1024 * 1024);
        assert_eq!(c.client.channel_creation_rate, 10);
        assert_eq!(c.namespaces["default"].history_max_bytes, 1024 * 1024);
        let err = Config::load(
            None,
            env(&[]),
            &[("client.channel_creation_burst".into(), "0".into())],
        )
        .expect_err("a rate without a burst");
        assert!(err.to_string().contains("channel_creation_burst"), "{err}");
    }

    #[test]
    fn env_and_set_override_in_order() {
        let c = Config::load(
            None,
            env(&[
                ("STARLING_WEBSOCKET_MAX_MESSAGE_SIZE", "1000"),
                ("STARLING_SERVER_LISTEN", "127.0.0.1:9000"),
                ("STARLING_CACHE", "/tmp/x"),
                ("PATH", "/bin"),
            ]),
            &[("websocket.max_message_size".into(), "2000".into())],
        )
        .expect("loads");
        assert_eq!(c.websocket.max_message_size, 2000);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
    }

    /// Variables that name no section belong to someone else (service links, scripts):
    /// ignored and listed; a known section with an unknown key is still a typo.
    #[test]
    fn env_variables_of_no_section_are_ignored() {
        let c = Config::load(
            None,
            env(&[
                ("STARLING_PORT", "tcp://10.0.0.1:8000"),
                ("STARLING_SERVICE_HOST", "10.0.0.1"),
                ("STARLING_BIN", "/usr/bin/starling"),
                ("STARLING_SERVER_NAME", "n1"),
            ]),
            &[],
        )
        .expect("loads");
        assert_eq!(c.server.name, "n1");
        assert_eq!(
            c.ignored_env,
            ["STARLING_PORT", "STARLING_SERVICE_HOST", "STARLING_BIN"]
        );
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = Config::load(None, env(&[("STARLING_WEBSOCKET_MAX_MESAGE", "1")]), &[])
            .expect_err("unknown key");
        assert!(
            err.to_string().contains("STARLING_WEBSOCKET_MAX_MESAGE"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::load(
            None,
            env(&[]),
            &[("websocket.max_message_size".into(), "lots".into())],
        )
        .expect_err("bad value");
        assert!(err.to_string().contains("max_message_size"), "{err}");
    }

    #[test]
    fn file_with_unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("starling-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[websocket]\nmax_mesage_size = 10\n").expect("write");
        let err = Config::load(Some(&path), env(&[]), &[]).expect_err("unknown key");
        assert!(err.to_string().contains("max_mesage_size"), "{err}");

        std::fs::write(
            &path,
            "[namespaces.chat]\nallow_publish = true\n[api]\nkey = \"k\"\n",
        )
        .expect("write");
        let c = Config::load(Some(&path), env(&[]), &[]).expect("good file");
        assert!(c.namespaces["chat"].allow_publish);
        assert!(c.namespaces["chat"].presence, "unset options keep defaults");
        assert!(
            !c.namespaces.contains_key("default"),
            "file lists its namespaces"
        );
        assert_eq!(c.api.key, "k");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn namespace_override_creates_namespace() {
        let c = Config::load(
            None,
            env(&[("STARLING_NAMESPACES_CHAT_ALLOW_PUBLISH", "true")]),
            &[("namespaces.news.private".into(), "true".into())],
        )
        .expect("loads");
        assert!(c.namespaces["chat"].allow_publish);
        assert!(c.namespaces["news"].private);
    }

    #[test]
    fn dev_mode_refuses_a_public_address_unless_forced() {
        let dev_on = |listen: &str, force: bool| {
            Config::load(
                None,
                env(&[]),
                &[
                    ("server.dev".into(), "true".into()),
                    ("server.listen".into(), format!("\"{listen}\"")),
                    ("server.dev_allow_public".into(), force.to_string()),
                ],
            )
        };
        let err = dev_on("0.0.0.0:8000", false).expect_err("public dev");
        assert!(err.to_string().contains("dev_allow_public"), "{err}");
        assert!(dev_on("0.0.0.0:8000", true).is_ok());
        assert!(dev_on("127.0.0.1:8000", false).is_ok());
        assert!(dev_on("[::1]:8000", false).is_ok());
        // Without dev, a public address is fine.
        let c = Config::load(
            None,
            env(&[]),
            &[("server.listen".into(), "\"0.0.0.0:8000\"".into())],
        );
        assert!(c.is_ok());
    }

    #[test]
    fn redacted_hides_secrets_only() {
        let c = Config::load(
            None,
            env(&[]),
            &[
                ("api.key".into(), "\"k1\"".into()),
                ("client.token_hmac_secret".into(), "\"s1\"".into()),
                (
                    "client.subscription_token_hmac_secret".into(),
                    "\"s2\"".into(),
                ),
                ("admin.password".into(), "\"p1\"".into()),
                ("admin.secret".into(), "\"a1\"".into()),
            ],
        )
        .expect("loads");
        let text = toml::to_string_pretty(&c.redacted()).expect("toml");
        for secret in ["k1", "s1", "s2", "p1", "a1"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        assert_eq!(text.matches(REDACTED).count(), 5, "{text}");
        assert!(c.redacted().client.token_rsa_public_key.is_empty());
        assert_eq!(c.api.key, "k1", "the original is untouched");
    }

    #[test]
    fn the_dashboard_needs_a_password_outside_dev() {
        let on = ("admin.enabled".to_string(), "true".to_string());
        let err = Config::load(None, env(&[]), std::slice::from_ref(&on)).expect_err("refused");
        assert!(err.to_string().contains("admin.password"), "{err}");
        let c = Config::load(
            None,
            env(&[]),
            &[on, ("admin.password".into(), "\"pw\"".into())],
        )
        .expect("loads");
        assert!(c.admin.enabled);
        let dev =
            Config::load(None, env(&[]), &[("server.dev".into(), "true".into())]).expect("loads");
        assert!(dev.admin.enabled, "--dev opens the dashboard");
        assert!(!Config::default().admin.enabled, "off by default");
    }

    #[test]
    fn the_archive_needs_a_url_and_the_log() {
        let on = ("archive.enabled".to_string(), "true".to_string());
        let load = |extra: &[(&str, &str)]| {
            let mut overrides = vec![on.clone()];
            overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Config::load(None, env(&[]), &overrides)
        };
        let url = (
            "archive.url",
            "\"host=127.0.0.1 user=u password=pw dbname=d\"",
        );
        let err = load(&[]).expect_err("no url");
        assert!(err.to_string().contains("archive.url"), "{err}");
        let err = load(&[("archive.url", "\"host=a bogus\"")]).expect_err("bad url");
        assert!(err.to_string().contains("archive.url"), "{err}");
        let err = load(&[url, ("storage.dir", "\"\"")]).expect_err("no log");
        assert!(err.to_string().contains("storage.dir"), "{err}");
        let cluster = load(&[
            url,
            ("cluster.engine", "\"redis\""),
            ("redis.addresses", "[\"redis://127.0.0.1:1\"]"),
        ])
        .expect("a cluster node archives what it publishes");
        assert!(cluster.archive.enabled);
        let c = load(&[url]).expect("loads");
        assert!(c.archive.enabled);
        let shown = toml::to_string_pretty(&c.redacted()).expect("toml");
        assert!(
            !shown.contains("pw"),
            "the URL may hold a password: {shown}"
        );
    }

    #[test]
    fn dev_mode_opens_up() {
        let c =
            Config::load(None, env(&[]), &[("server.dev".into(), "true".into())]).expect("loads");
        assert!(c.client.allow_anonymous);
        assert_eq!(c.api.key, DEV_API_KEY);
        assert_eq!(c.websocket.allowed_origins, vec!["*".to_string()]);
        assert!(
            c.namespaces["default"].allow_delta,
            "delta subscriptions to try out"
        );
        assert!(!NamespaceConfig::default().allow_delta);
    }
}
