//! Structured logs through `tracing`.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber: `RUST_LOG` (or `STARLING_LOG`) wins over `log.level`.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("STARLING_LOG"))
        .unwrap_or_else(|_| config.level.clone());
    let filter = EnvFilter::try_new(&filter).with_context(|| format!("log filter `{filter}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in files and log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let result = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
