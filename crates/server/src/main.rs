//! The `starling` command: `starling serve` runs a node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use starling::config::Config;

/// jemalloc (the default): fewer bytes per idle connection than glibc's allocator, whose
/// per-thread arenas fragment (docs/BENCHMARKS.md, "Where the idle memory goes now").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starling: a real-time messaging server (WebSocket pub/sub).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no options it listens on 127.0.0.1:8000 with safe production
    /// defaults (no anonymous clients, API disabled until a key is set); `--dev` opens it
    /// up for local development.
    #[command(after_help = SETTINGS_HELP)]
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, environment and flags merged) as
    /// TOML, then exit. Secrets (api.key, client.token_hmac_secret,
    /// client.subscription_token_hmac_secret) print as `<redacted>` unless `--show-secrets`.
    Config(ConfigArgs),
}

/// `starling config`: the options of `serve`, plus whether to print secrets.
#[derive(Args, Debug)]
struct ConfigArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Print the secrets as they are instead of `<redacted>`.
    #[arg(long)]
    show_secrets: bool,
}

/// Printed after the flags of `serve --help`.
const SETTINGS_HELP: &str = "\
Settings: every setting has a dotted key, usable in the TOML file (--config), as an
environment variable STARLING_<SECTION>_<KEY> and with --set key=value (later wins:
defaults < file < environment < flags). `starling config` prints them all with their
current values. The keys:
  server.listen server.dev server.dev_allow_public server.echo server.name server.shutdown_timeout_secs server.listen_backlog
  server.max_connections server.max_channels server.admission_rate
  server.max_connections_per_ip server.admission_rate_per_ip server.history_max_bytes
  websocket.max_message_size websocket.max_frame_size websocket.compression
  websocket.compression_min_size websocket.ping_interval_secs websocket.pong_timeout_secs
  websocket.handshake_timeout_secs websocket.allowed_origins
  client.allow_anonymous client.token_hmac_secret client.subscription_token_hmac_secret
  client.token_rsa_public_key client.token_require_exp client.token_audience
  client.token_issuer
  client.max_queue_bytes client.connect_timeout_secs client.command_rate
  client.command_burst client.max_subscriptions client.max_connections_per_user
  client.channel_creation_rate client.channel_creation_burst
  client.reconnect_delay_min_ms client.reconnect_delay_max_ms
  api.key api.idempotency_window_secs api.idempotency_max_keys
  namespaces.<ns>.allow_publish namespaces.<ns>.allow_anonymous namespaces.<ns>.private
  namespaces.<ns>.presence namespaces.<ns>.join_leave namespaces.<ns>.history_size
  namespaces.<ns>.history_ttl_secs namespaces.<ns>.history_max_bytes namespaces.<ns>.lossy
  namespaces.<ns>.allow_delta
  log.format log.level
  storage.dir storage.segment_bytes storage.max_bytes storage.max_age_secs
  storage.sync_interval_ms
  cluster.engine cluster.position_check_secs cluster.heartbeat_secs cluster.node_timeout_secs
  cluster.presence_ttl_secs
  redis.addresses redis.prefix redis.command_timeout_ms redis.probe_interval_secs
  redis.cluster redis.restart_epochs
Each is explained in docs/OPERATIONS.md.";

/// Every setting also has a dotted key usable in the config file, as an environment
/// variable `STARLING_<SECTION>_<KEY>` and with `--set section.key=value`; see
/// docs/OPERATIONS.md for the full list.
#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Development mode (server.dev): any origin, anonymous clients, API key `dev-api-key`
    /// unless api.key is set, every namespace open for publish and subscribe.
    #[arg(long)]
    dev: bool,
    /// Echo mode (server.echo): the WebSocket endpoint echoes messages back; for
    /// conformance tests (Autobahn).
    #[arg(long)]
    echo: bool,
    /// Key for the HTTP API, sent as `Authorization: apikey <key>` (api.key).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// HMAC secret for HS256 connection tokens (client.token_hmac_secret).
    #[arg(long, value_name = "SECRET")]
    token_hmac_secret: Option<String>,
    /// Log format, `text` or `json` (log.format).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Join a cluster through Redis at URL (cluster.engine = "redis", redis.addresses);
    /// repeat it for each shard of a sharded setup.
    #[arg(long, value_name = "URL")]
    redis: Vec<String>,
    /// Set any setting by its dotted key, e.g. `--set websocket.max_message_size=1048576`.
    /// May be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = Vec::new();
        let mut flag = |key: &str, value: String| overrides.push((key.to_string(), value));
        if let Some(v) = &self.listen {
            flag("server.listen", toml_string(v));
        }
        if self.dev {
            flag("server.dev", "true".into());
        }
        if self.echo {
            flag("server.echo", "true".into());
        }
        if let Some(v) = &self.api_key {
            flag("api.key", toml_string(v));
        }
        if let Some(v) = &self.token_hmac_secret {
            flag("client.token_hmac_secret", toml_string(v));
        }
        if let Some(v) = &self.log_format {
            flag("log.format", toml_string(v));
        }
        if !self.redis.is_empty() {
            flag("cluster.engine", toml_string("redis"));
            let urls = self.redis.iter().map(|u| toml::Value::String(u.clone()));
            flag(
                "redis.addresses",
                toml::Value::Array(urls.collect()).to_string(),
            );
        }
        for item in &self.set {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| starling::config::ConfigError::BadOverride(item.clone()))?;
            overrides.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &overrides,
        )?)
    }
}

/// Quotes a flag value as a TOML string so it is never read as a number or boolean.
fn toml_string(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("starling: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config(args) => {
            let config = args.serve.load()?;
            let shown = if args.show_secrets {
                config
            } else {
                config.redacted()
            };
            print!(
                "{}",
                toml::to_string_pretty(&shown).context("rendering the configuration")?
            );
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.load()?;
            starling::logging::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(starling::app::serve(config))
        }
    }
}
