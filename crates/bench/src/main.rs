//! `starling-bench`: Starling's own load generator.
//!
//! - `idle`: memory per idle, subscribed connection (server RSS delta / N), and the
//!   connect + subscribe rate of the first connections.
//! - `fanout`: deliveries per second and end-to-end latency to N subscribers of one
//!   channel.
//! - `churn`: N clients drop at once and reconnect; time to re-admit them all and
//!   the ping latency of clients that stayed.
//! - `slow`: a stalled subscriber on a busy channel: healthy subscribers' latency,
//!   the server's RSS and the slow-consumer cut.
//! - `publish`: publications per second one node accepts (message log on/off,
//!   `durable: true`), with concurrent HTTP publishers.
//! - `users`: N users with a personal and a group channel each, every personal channel
//!   published to once a second over HTTP: latency, loss, server CPU.
//!
//! `idle` and `fanout` also speak the peers' protocols (`--protocol`: Socket.IO, NATS,
//! Nchan, plain WebSocket), for bench/peers.sh; the package's second binary,
//! `baseline`, is the featureless broadcast server of that comparison.
//!
//! Clients are raw tokio sockets driving the websocket crate's client framing (no
//! per-connection 64 KiB buffers), so 10,000 connections fit in one process. The
//! process's open-files limit bounds how many: one descriptor per connection.

mod churn;
mod client;
mod cpu;
mod fanout;
mod frame;
mod httppub;
mod idle;
mod peer;
mod plot;
mod publish;
mod report;
mod server;
mod slow;
mod stats;
mod sub;
mod table;
mod timeline;
mod users;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "starling-bench", version, about = "Starling load generator")]
struct Cli {
    /// Worker threads of the bench's runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Server memory per idle subscribed connection, and the connect + subscribe rate.
    ///
    /// --protocol runs it against a peer (bench/peers.sh): each connection on its own
    /// channel. Connections may be spread over several nodes (--url repeated). One process
    /// holds at most ~19,900 connections (one descriptor each; the open-files limit is
    /// 20,000 per process), and each source address has its own ephemeral ports
    /// (--source-ips): for more, run several processes with distinct --first, e.g.
    /// 57,000 connections over 3 nodes = 3 processes of 19,000 (scripts/cluster-bench.sh
    /// held).
    Idle(idle::IdleArgs),
    /// Fan-out throughput and latency to the subscribers of one channel.
    ///
    /// Subscribers may be spread over several nodes of a cluster (--url repeated); the
    /// figures are then also given per node, the publisher's node (same-node
    /// deliveries) next to the others (cross-node). --protocol runs the same workload
    /// against Socket.IO, NATS, Nchan or a plain WebSocket server (bench/peers). One
    /// process holds at most ~19,900
    /// connections (the open-files limit is 20,000 per process): for more, run
    /// several processes.
    Fanout(fanout::FanoutArgs),
    /// N clients drop at once and reconnect; observers measure ping latency meanwhile.
    Churn(churn::ChurnArgs),
    /// A stalled subscriber on a busy channel: others' latency, server RSS, the cut.
    Slow(slow::SlowArgs),
    /// Publications per second accepted by one node (HTTP API, concurrent publishers).
    Publish(publish::PublishArgs),
    /// N users, each on a personal and a group channel; HTTP publications to every
    /// personal channel once a second: latency over time, loss, server CPU.
    Users(users::UsersArgs),
    /// Bytes on the wire per delivered publication by encoding (JSON, MessagePack, each
    /// plain and as fossil deltas, with and without permessage-deflate), for chat-like
    /// and state-like payloads, with the encode CPU; no server needed.
    Wire(wire::WireArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starling-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    stats::now_us(); // fix the clock origin
    warn_fd_limit(&cli.command);
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Idle(args) => idle::run(args).await,
            Cmd::Fanout(args) => fanout::run(args).await,
            Cmd::Churn(args) => churn::run(args).await,
            Cmd::Slow(args) => slow::run(args).await,
            Cmd::Publish(args) => publish::run(args).await,
            Cmd::Users(args) => users::run(args).await,
            Cmd::Wire(args) => {
                wire::run(&args);
                Ok(())
            }
        }
    });
    // Do not wait for lingering connection tasks.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each connection takes a descriptor; say so before running out.
fn warn_fd_limit(cmd: &Cmd) {
    let wanted = match cmd {
        Cmd::Idle(a) => a.connections,
        Cmd::Fanout(a) => a.subscribers + 1,
        Cmd::Churn(a) => a.connections + a.observers,
        Cmd::Slow(a) => a.subscribers + 2,
        Cmd::Publish(a) => a.publishers,
        Cmd::Users(a) => a.users + a.http_connections * 2,
        Cmd::Wire(_) => 0,
    };
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(limit) = limit
        && wanted + 64 > limit
    {
        eprintln!(
            "warning: {wanted} connections need about {} descriptors; the open-files limit is {limit}",
            wanted + 64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fanout_and_users_take_plot_and_server_pids() {
        let cli = Cli::try_parse_from([
            "starling-bench",
            "fanout",
            "--plot",
            "f.svg",
            "--server-pid",
            "7",
            "--json",
        ])
        .unwrap();
        let Cmd::Fanout(a) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(a.plot.as_deref(), Some(std::path::Path::new("f.svg")));
        assert_eq!(a.server_pids, vec![7]);
        let cli =
            Cli::try_parse_from(["starling-bench", "--threads", "2", "users", "--users", "5"])
                .unwrap();
        assert_eq!(cli.threads, Some(2));
        let Cmd::Users(a) = cli.command else {
            panic!("not users")
        };
        assert_eq!(a.users, 5);
        assert!(Cli::try_parse_from(["starling-bench", "users", "--plot"]).is_err());
    }
}
