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
    /// client.subscription_token_hmac_secret, admin.password, admin.secret) print as
    /// `<redacted>` unless `--show-secrets`.
    Config(ConfigArgs),
    /// Check a configuration (file, environment and flags, as `serve` would load it)
    /// and exit: 0 when it is valid, 2 with the reason when not.
    Checkconfig(ServeArgs),
    /// Write a production configuration with fresh random secrets (API key, token
    /// secret, dashboard password) to FILE (`-` for standard output).
    Genconfig(GenconfigArgs),
    /// Sign a connection token (HS256, with client.token_hmac_secret from the
    /// configuration) for trying a node out; prints the token alone on standard output.
    Gentoken(GentokenArgs),
    /// Sign a subscription token for a private channel (HS256, with
    /// client.subscription_token_hmac_secret or else client.token_hmac_secret).
    Gensubtoken(GensubtokenArgs),
    /// Verify a token as the configured node would and say what it grants; exit 0 when
    /// valid, 1 when refused.
    Checktoken(ChecktokenArgs),
    /// The PostgreSQL archive (archive.url from the configuration).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Estimate what a workload takes (Starling nodes, Redis shards, balancers, archive
    /// storage), which resource runs out first, and the growth from 100 to 100 million
    /// users, from measured figures (docs/SCALING.md, "Planning capacity"). Every number
    /// says where it came from.
    Capacity(CapacityArgs),
    /// Print the version and exit.
    Version,
}

/// `starling archive ...`.
#[derive(Subcommand, Debug)]
enum ArchiveCommand {
    /// Create or migrate the archive's schema in PostgreSQL (the node also does it when
    /// it starts with archive.enabled), then exit.
    Migrate(ConfigSource),
}

/// Where the token tools find the secret: the configuration as `serve` loads it.
#[derive(Args, Debug)]
struct ConfigSource {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set any setting by its dotted key (e.g. `--set client.token_hmac_secret=...`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigSource {
    fn load(&self) -> anyhow::Result<Config> {
        ServeArgs {
            config: self.config.clone(),
            listen: None,
            dev: false,
            echo: false,
            api_key: None,
            token_hmac_secret: None,
            log_format: None,
            redis: Vec::new(),
            set: self.set.clone(),
        }
        .load()
    }
}

/// `starling genconfig`.
#[derive(Args, Debug)]
struct GenconfigArgs {
    /// The file to write; `-` prints to standard output.
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        default_value = "starling.toml"
    )]
    output: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// `starling gentoken`.
#[derive(Args, Debug)]
struct GentokenArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// The user id (`sub`).
    #[arg(long, short = 'u')]
    user: String,
    /// Lifetime: 90s, 30m, 1h, 7d, 1h30m; `0` makes a token without `exp`.
    #[arg(long, short = 't', default_value = "1h")]
    ttl: String,
    /// Limit the connection to these channels (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Connection info shown in presence, as JSON (e.g. `{"name":"Ann"}`).
    #[arg(long)]
    info: Option<String>,
}

/// `starling gensubtoken`.
#[derive(Args, Debug)]
struct GensubtokenArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// The user id (`sub`); must be the connection's user.
    #[arg(long, short = 'u')]
    user: String,
    /// The channel it grants.
    #[arg(long)]
    channel: String,
    /// Lifetime: 90s, 30m, 1h, 7d, 1h30m; `0` makes a token without `exp`.
    #[arg(long, short = 't', default_value = "1h")]
    ttl: String,
    /// Channel info shown in presence, as JSON.
    #[arg(long)]
    info: Option<String>,
}

/// `starling checktoken`.
#[derive(Args, Debug)]
struct ChecktokenArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// The token (JWT) to verify.
    token: String,
}

/// `starling capacity`.
#[derive(Args, Debug)]
struct CapacityArgs {
    /// Users (each with --connections-per-user connections).
    #[arg(long, value_name = "N")]
    users: u64,
    /// Publications per user per second (0.1: one every ten seconds).
    #[arg(long, allow_negative_numbers = true, value_name = "R")]
    msg_rate: f64,
    /// Bytes of data per publication.
    #[arg(long, value_name = "BYTES")]
    msg_size: u64,
    /// Subscribers each publication reaches (default 1: personal channels).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "F",
        conflicts_with = "channel_mix"
    )]
    fanout: Option<f64>,
    /// Channel classes instead of one fan-out: JSON lines (or a JSON array) of
    /// {"name": "group", "share": 0.2, "subscribers": 100}, shares adding up to 1;
    /// "subscribers": "all" is a broadcast to every connection.
    #[arg(long, value_name = "FILE")]
    channel_mix: Option<PathBuf>,
    /// Connections per user (tabs, devices).
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        default_value_t = 1.0
    )]
    connections_per_user: f64,
    /// History entries kept per channel (namespaces.<ns>.history_size).
    #[arg(long, value_name = "N", default_value_t = 0)]
    history: u64,
    /// Seconds a quiet channel's history is kept (namespaces.<ns>.history_ttl_secs).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    history_ttl: u64,
    /// Presence on every subscription.
    #[arg(long)]
    presence: bool,
    /// Days the PostgreSQL archive keeps (archive.retention_days); 0: no archive.
    #[arg(long, value_name = "D", default_value_t = 0)]
    archive_days: u64,
    /// The clients' encoding.
    #[arg(long, value_enum, default_value = "json")]
    encoding: CapacityEncoding,
    /// permessage-deflate on deliveries (default none; deflate when --compression-ratio
    /// is given).
    #[arg(long, value_enum)]
    compression: Option<CapacityCompression>,
    /// Deflated size over plain size, instead of the measured chat-like ratio.
    #[arg(long, allow_negative_numbers = true, value_name = "RATIO")]
    compression_ratio: Option<f64>,
    /// Coefficients measured by the load tool: `starling-bench ... --json` output,
    /// bench/peers.sh's runs.jsonl, or {"figures": {NAME: VALUE}} (repeatable).
    #[arg(long = "from-bench", value_name = "FILE")]
    from_bench: Vec<PathBuf>,
    /// Set any coefficient by name, e.g. `--figure redis_shard_messages_per_s=800000`
    /// (repeatable; the names are listed under Figures in the report).
    #[arg(long = "figure", value_name = "NAME=VALUE")]
    figure: Vec<String>,
    /// Assumption: cores of a production node (8).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    node_cores: Option<f64>,
    /// Assumption: memory of a production node, GiB (32).
    #[arg(long, allow_negative_numbers = true, value_name = "GIB")]
    node_memory_gib: Option<f64>,
    /// Assumption: each machine's network interface, Gbit/s (10).
    #[arg(long, allow_negative_numbers = true, value_name = "GBPS")]
    nic_gbps: Option<f64>,
    /// Assumption: open-files limit per process in production (1048576).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    max_files: Option<f64>,
    /// Assumption: kernel memory per TCP socket, buffers included, KiB (10).
    #[arg(long, allow_negative_numbers = true, value_name = "KIB")]
    kernel_kib_per_socket: Option<f64>,
    /// Assumption: memory of a Redis shard, GiB (16).
    #[arg(long, allow_negative_numbers = true, value_name = "GIB")]
    redis_memory_gib: Option<f64>,
    /// Assumption: the share of any resource the plan may use (0.7).
    #[arg(long, allow_negative_numbers = true, value_name = "FRACTION")]
    max_utilization: Option<f64>,
    /// Also predict what this many nodes would use (per node: memory, CPU, network), to
    /// check the model against a measured run or a running cluster.
    #[arg(long, value_name = "N")]
    nodes: Option<u64>,
    /// With --nodes: Redis shards (default 0 with one node: the memory engine; else 1).
    #[arg(long, value_name = "S")]
    shards: Option<u64>,
    /// Also write an SVG of nodes, shards, balancers and bandwidth against users.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print only the growth table.
    #[arg(long)]
    growth: bool,
    /// Print the report as JSON (with --growth: the growth table's rows).
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CapacityEncoding {
    Json,
    Msgpack,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CapacityCompression {
    None,
    Deflate,
}

/// `starling capacity`: figures (defaults, then --from-bench, the assumption flags and
/// --figure), the workload, then the report.
fn capacity(args: CapacityArgs) -> anyhow::Result<()> {
    use starling_capacity::figures::{Figures, Id};
    use starling_capacity::workload::{self, Compression, Encoding};
    use starling_capacity::{Workload, bench_input, growth, plot, render};
    use std::io::Write as _;

    let mut figures = Figures::default();
    let inputs = args
        .from_bench
        .iter()
        .map(|path| bench_input::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let notes = bench_input::apply(&inputs, &mut figures)?;
    for (id, value) in [
        (Id::NodeCores, args.node_cores),
        (Id::NodeMemory, args.node_memory_gib),
        (Id::Nic, args.nic_gbps),
        (Id::MaxFiles, args.max_files),
        (Id::KernelPerSocket, args.kernel_kib_per_socket),
        (Id::RedisMemory, args.redis_memory_gib),
        (Id::MaxUtilization, args.max_utilization),
    ] {
        if let Some(value) = value {
            figures.set_flag(id, value)?;
        }
    }
    for arg in &args.figure {
        figures.set_from_arg(arg)?;
    }

    let mut w = Workload::new(
        args.users as f64,
        args.msg_rate,
        args.msg_size as f64,
        args.fanout.unwrap_or(1.0),
    );
    if let Some(path) = &args.channel_mix {
        w.mix = workload::read_mix(path)?;
    }
    w.connections_per_user = args.connections_per_user;
    w.history = args.history as f64;
    w.history_ttl_s = args.history_ttl as f64;
    w.presence = args.presence;
    w.archive_days = args.archive_days as f64;
    w.encoding = match args.encoding {
        CapacityEncoding::Json => Encoding::Json,
        CapacityEncoding::Msgpack => Encoding::Msgpack,
    };
    w.compression = match (args.compression, args.compression_ratio) {
        (Some(CapacityCompression::None), Some(_)) => {
            anyhow::bail!("--compression-ratio needs --compression deflate")
        }
        (Some(CapacityCompression::None), None) | (None, None) => Compression::None,
        (_, ratio) => Compression::Deflate { ratio },
    };

    let mut report = starling_capacity::report(&w, &figures)?;
    report.inputs = notes;
    if let Some(nodes) = args.nodes {
        // One node runs the memory engine unless shards are given; more share Redis.
        let shards = args.shards.unwrap_or(if nodes == 1 { 0 } else { 1 });
        report.topology = Some(starling_capacity::predict::predict(
            &report.load,
            &w,
            &figures,
            nodes,
            shards,
        )?);
    } else if args.shards.is_some() {
        anyhow::bail!("--shards goes with --nodes (the topology to predict)");
    }
    if let Some(path) = &args.plot {
        let rows = growth::growth(&w, &figures, &growth::plot_scales())?;
        let title = format!(
            "Predicted cost against users: {}",
            render::describe_per_user(&w)
        );
        std::fs::write(path, plot::svg(&rows, &title))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let out = match (args.json, args.growth) {
        (true, false) => render::json(&report)?,
        (true, true) => serde_json::to_string_pretty(&report.growth)?,
        (false, false) => render::text(&report),
        (false, true) => render::growth_text(&report.growth, true),
    };
    // A reader that stops early (`| head`) is not an error.
    match writeln!(std::io::stdout().lock(), "{}", out.trim_end()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A `--ttl` value: zero means no expiry.
fn ttl(text: &str) -> anyhow::Result<Option<std::time::Duration>> {
    let d = starling::tools::parse_duration(text)?;
    Ok((!d.is_zero()).then_some(d))
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
  admin.enabled admin.password admin.secret admin.session_ttl_secs
  archive.enabled archive.url archive.events archive.batch_rows archive.linger_ms
  archive.partitions_ahead_days archive.retention_days
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

/// `checktoken` found the token refused (exit code 1; the reason is already printed).
#[derive(Debug, thiserror::Error)]
#[error("token refused")]
struct Refused;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<Refused>() => ExitCode::from(1),
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
        Command::Checkconfig(args) => {
            let config = args.load()?;
            starling::auth::Auth::new(&config.client).context("the token keys")?;
            let from = args
                .config
                .as_ref()
                .map_or("defaults, environment and flags".to_string(), |p| {
                    p.display().to_string()
                });
            println!("configuration OK ({from})");
            Ok(())
        }
        Command::Genconfig(args) => {
            let text = starling::tools::generate_config()?;
            if args.output.as_os_str() == "-" {
                print!("{text}");
                return Ok(());
            }
            let mut file = std::fs::OpenOptions::new();
            file.write(true);
            if args.force {
                file.create(true).truncate(true);
            } else {
                file.create_new(true);
            }
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            let mut f = file.open(&args.output).with_context(|| {
                format!(
                    "writing {} (use --force to overwrite)",
                    args.output.display()
                )
            })?;
            std::io::Write::write_all(&mut f, text.as_bytes())
                .with_context(|| format!("writing {}", args.output.display()))?;
            eprintln!(
                "wrote {} (mode 600: it holds secrets); check it with `starling checkconfig --config {}`",
                args.output.display(),
                args.output.display()
            );
            Ok(())
        }
        Command::Gentoken(args) => {
            let config = args.source.load()?;
            let req = starling::tools::TokenRequest {
                user: args.user,
                ttl: ttl(&args.ttl)?,
                channels: args.channels,
                info: args.info,
                ..Default::default()
            };
            println!("{}", starling::tools::mint_token(&config, &req)?);
            Ok(())
        }
        Command::Gensubtoken(args) => {
            let config = args.source.load()?;
            let req = starling::tools::TokenRequest {
                user: args.user,
                ttl: ttl(&args.ttl)?,
                channel: Some(args.channel),
                info: args.info,
                ..Default::default()
            };
            println!("{}", starling::tools::mint_token(&config, &req)?);
            Ok(())
        }
        Command::Checktoken(args) => {
            let config = args.source.load()?;
            let verdict = starling::tools::check_token(&config, args.token.trim())?;
            println!("{}", starling::tools::describe(&verdict));
            if matches!(verdict, starling::tools::Verdict::Refused(_)) {
                return Err(Refused.into());
            }
            Ok(())
        }
        Command::Archive(ArchiveCommand::Migrate(source)) => {
            let config = source.load()?;
            if config.archive.url.is_empty() {
                anyhow::bail!("archive.url is not set (the PostgreSQL connection string)");
            }
            let postgres: starling_archive::tokio_postgres::Config =
                config.archive.url.parse().context("archive.url")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(async {
                let (mut client, connection) = postgres
                    .connect(starling_archive::tokio_postgres::NoTls)
                    .await
                    .context("connecting to PostgreSQL (archive.url)")?;
                let task = tokio::spawn(connection);
                let report = starling_archive::migrate(&mut client)
                    .await
                    .context("migrating the archive schema")?;
                drop(client);
                let _ = task.await;
                anyhow::Ok(report)
            })?;
            if report.from == report.to {
                println!("archive schema is current (version {})", report.to);
            } else {
                println!(
                    "archive schema migrated from version {} to {}",
                    report.from, report.to
                );
            }
            Ok(())
        }
        Command::Capacity(args) => capacity(args),
        Command::Version => {
            println!(
                "starling {} (commit {}, rustc {})",
                env!("CARGO_PKG_VERSION"),
                env!("BUILD_INFO_COMMIT"),
                env!("BUILD_INFO_RUSTC")
            );
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.load()?;
            starling::logging::init(&config.log)?;
            if !config.ignored_env.is_empty() {
                tracing::warn!(
                    variables = %config.ignored_env.join(" "),
                    "environment variables with the STARLING_ prefix that name no settings \
                     section were ignored (settings are STARLING_<SECTION>_<KEY>)"
                );
            }
            match starling::rlimit::raise_open_files() {
                Ok(r) if r.before < r.soft => tracing::info!(
                    before = r.before,
                    now = r.soft,
                    "raised the open-files limit to its hard limit"
                ),
                Ok(r) => tracing::info!(limit = r.soft, "open-files limit"),
                Err(e) => tracing::warn!("reading the open-files limit: {e}"),
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(starling::app::serve(config))
        }
    }
}
