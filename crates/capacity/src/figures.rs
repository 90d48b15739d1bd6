//! The coefficients of the model: each a value, its unit and where it came from.
//!
//! The defaults are the figures measured on this project's test machine
//! (docs/BENCHMARKS.md, docs/SCALING.md), the configuration's defaults, or, where
//! production differs from the test machine, an assumption that says so and names the
//! flag that overrides it. `--from-bench` replaces the measurable ones with the load
//! tool's results (`bench_input`), `--figure NAME=VALUE` any of them.

use std::fmt;
use std::ops::Index;

use serde::{Deserialize, Serialize};

use crate::CapacityError;

/// What kind of source a figure has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Measured on this project's machine (docs/BENCHMARKS.md, docs/SCALING.md).
    Measured,
    /// A figure published elsewhere, not measured here.
    Published,
    /// A default of Starling's configuration or a constant of its code.
    Code,
    /// A production assumption (the test machine cannot tell).
    Assumption,
    /// Read from the load tool's results (`--from-bench`).
    Bench,
    /// Given on the command line (`--figure`, or an assumption flag).
    Flag,
}

/// Where a figure came from, in words a reader can follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub kind: SourceKind,
    pub text: String,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One coefficient: its value, unit and source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub value: f64,
    pub unit: String,
    pub source: Source,
}

/// The default deliveries per core of a cluster node (see [`Id::DeliveriesPerCoreCluster`]).
const CLUSTER_DELIVERIES: f64 = 164_000.0;

/// The values a figure may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// Above zero.
    Positive,
    /// Zero or above.
    NonNegative,
    /// Above zero, at most one.
    Fraction,
}

macro_rules! figure_ids {
    ($($(#[$doc:meta])* $id:ident = $name:literal,)*) => {
        /// The name of each coefficient.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Id {
            $($(#[$doc])* $id,)*
        }

        impl Id {
            /// Every coefficient, in the order they are listed.
            pub const ALL: &'static [Id] = &[$(Id::$id,)*];

            /// The name used by `--figure NAME=VALUE` and in JSON.
            pub fn name(self) -> &'static str {
                match self {
                    $(Id::$id => $name,)*
                }
            }
        }
    };
}

figure_ids! {
    /// Starling's memory per idle subscribed connection, one node (KiB).
    MemoryPerConnection = "memory_per_connection_kib",
    /// The same on a node of a cluster (KiB).
    MemoryPerConnectionCluster = "memory_per_connection_cluster_kib",
    /// A node's memory with no connection (MiB).
    NodeBaseMemory = "node_base_memory_mib",
    /// Open files a node keeps for itself (listener, log, Redis, headroom).
    OpenFilesReserve = "open_files_reserve",
    /// Deliveries one core makes per second.
    DeliveriesPerCore = "deliveries_per_core_s",
    /// HTTP publications one core accepts per second.
    PublishesPerCore = "publishes_per_core_s",
    /// Server CPU per connection set up and closed (µs).
    ConnectCpu = "connect_cpu_us",
    /// Server CPU per publication a cluster node hears from Redis (µs).
    HeardPublicationCpu = "heard_publication_cpu_us",
    /// Server CPU to deflate one publication (µs).
    DeflateCpu = "deflate_cpu_us",
    /// Keepalive ping interval (s).
    PingInterval = "ping_interval_s",
    /// A ping and its pong, in deliveries' worth of CPU.
    PingCost = "ping_delivery_equivalents",
    /// Reconnections per connection per hour.
    Reconnects = "reconnects_per_connection_hour",
    /// New connections a node admits per second.
    AdmissionRate = "admission_rate_per_s",
    /// The JSON push's bytes around the data.
    JsonEnvelope = "json_envelope_bytes",
    /// The MessagePack push's bytes around the data.
    MsgpackEnvelope = "msgpack_envelope_bytes",
    /// Deflated size over plain size, JSON pushes.
    DeflateRatioJson = "deflate_ratio_json",
    /// Deflated size over plain size, MessagePack pushes.
    DeflateRatioMsgpack = "deflate_ratio_msgpack",
    /// Frames below this size are sent uncompressed (bytes).
    CompressionMin = "compression_min_bytes",
    /// TCP/IP/Ethernet and WebSocket headers per delivery (bytes).
    PacketOverhead = "packet_overhead_bytes",
    /// An HTTP publish request's bytes around the data.
    PublishRequest = "publish_request_bytes",
    /// Pub/sub messages one Redis shard carries per second.
    ShardMessages = "redis_shard_messages_per_s",
    /// Bytes a Redis entry or pub/sub message adds to its payload.
    RedisEntryOverhead = "redis_entry_overhead_bytes",
    /// Presence bytes per subscription.
    PresenceBytes = "presence_bytes_per_subscription",
    /// Presence time to live (s); each entry is rewritten three times per TTL.
    PresenceTtl = "presence_ttl_s",
    /// A message log record's bytes around the data.
    LogRecordOverhead = "log_record_overhead_bytes",
    /// Rows per second one archive writer stores.
    ArchiveRows = "archive_rows_per_s",
    /// An archived row's bytes on disk around the data (table and indexes).
    ArchiveRowOverhead = "archive_row_overhead_bytes",
    /// Daily partitions created ahead.
    ArchivePartitionsAhead = "archive_partitions_ahead_days",
    /// Cores of a production node.
    NodeCores = "node_cores",
    /// Memory of a production node (GiB).
    NodeMemory = "node_memory_gib",
    /// Network interface of a machine (Gbit/s).
    Nic = "nic_gbps",
    /// Open-files limit per process in production.
    MaxFiles = "max_files",
    /// Kernel memory per TCP socket, buffers included (KiB).
    KernelPerSocket = "kernel_kib_per_socket",
    /// Memory of a Redis shard (GiB).
    RedisMemory = "redis_memory_gib",
    /// The share of any resource a plan may use.
    MaxUtilization = "max_utilization",
    /// Redis CPU per publication (µs): the publish script, its pub/sub message to one
    /// node, and the background work a publication brings (presence, join/leave).
    RedisPublicationCpu = "redis_publication_cpu_us",
    /// Deliveries per second one core of a cluster node makes (the replica's fan-out).
    DeliveriesPerCoreCluster = "deliveries_per_core_cluster_s",
}

impl Id {
    /// The coefficient called `name`.
    pub fn from_name(name: &str) -> Option<Id> {
        Id::ALL.iter().copied().find(|id| id.name() == name)
    }

    /// Its place in the list (1-based): the marker `[n]` the report cites it by.
    pub fn marker(self) -> usize {
        self as usize + 1
    }

    /// The flag that overrides an assumption, if it has one of its own.
    pub fn flag(self) -> Option<&'static str> {
        Some(match self {
            Id::NodeCores => "--node-cores",
            Id::NodeMemory => "--node-memory-gib",
            Id::Nic => "--nic-gbps",
            Id::MaxFiles => "--max-files",
            Id::KernelPerSocket => "--kernel-kib-per-socket",
            Id::RedisMemory => "--redis-memory-gib",
            Id::MaxUtilization => "--max-utilization",
            _ => return None,
        })
    }

    fn range(self) -> Range {
        match self {
            Id::OpenFilesReserve
            | Id::HeardPublicationCpu
            | Id::DeflateCpu
            | Id::PingCost
            | Id::Reconnects
            | Id::ConnectCpu
            | Id::JsonEnvelope
            | Id::MsgpackEnvelope
            | Id::CompressionMin
            | Id::PacketOverhead
            | Id::PublishRequest
            | Id::RedisEntryOverhead
            | Id::PresenceBytes
            | Id::LogRecordOverhead
            | Id::ArchiveRowOverhead
            | Id::ArchivePartitionsAhead
            | Id::NodeBaseMemory
            | Id::KernelPerSocket => Range::NonNegative,
            Id::DeflateRatioJson | Id::DeflateRatioMsgpack | Id::MaxUtilization => Range::Fraction,
            _ => Range::Positive,
        }
    }

    /// The default value, its unit and its source.
    fn default_figure(self) -> Figure {
        const BENCH: &str = "default: docs/BENCHMARKS.md";
        let (value, unit, kind, text): (f64, &str, SourceKind, String) = match self {
            Id::MemoryPerConnection => (
                1500.0 / 1024.0,
                "KiB",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Side by side with the peers, Fifth pass, measured 2026-12-06: RSS \
                     delta of 18,500 idle subscribed connections on one node, one channel \
                     each, 1,500 B (median of 3 runs)"
                ),
            ),
            Id::MemoryPerConnectionCluster => (
                1.92,
                "KiB",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T2 idle: 19,000 idle subscribed connections on each of 2 nodes \
                 through one Redis, RSS growth 1.92 KiB each (1.92-1.93 on 3 nodes; 3.50 \
                 before issue 8's memory work)"
                    .into(),
            ),
            Id::NodeBaseMemory => (
                9.3,
                "MiB",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Cluster, measured 2026-12-01: a node's RSS with no connection, \
                     8.4-9.3 MiB"
                ),
            ),
            Id::OpenFilesReserve => (
                1000.0,
                "files",
                SourceKind::Measured,
                "default: docs/SCALING.md, What a node costs, measured 2026-12-01: 19,000 \
                 connections per node under an open-files limit of 20,000"
                    .into(),
            ),
            Id::DeliveriesPerCore => (
                181_272.0,
                "deliveries/s per core",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T1 fanout and T1 users solved together: 0.983 cores at 177,362 \
                 deliveries/s (20 publications/s to 9,000 subscribers, one write per \
                 delivery; on loopback it includes the receiver's TCP work)"
                    .into(),
            ),
            Id::PublishesPerCore => (
                25_497.0,
                "publications/s per core",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T1 fanout and T1 users solved together: 0.452 cores at 9,999 HTTP \
                 publications/s (32 keep-alive connections, one publication a request, \
                 message log on) each delivered once; the HTTP path at saturation costs \
                 less (10.5 µs in docs/BENCHMARKS.md, Fourth pass)"
                    .into(),
            ),
            Id::ConnectCpu => (
                79.0,
                "µs",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Side by side with the peers, What this machine allows (issue 8, \
                     2026-12): 57-79 µs of server CPU per connection set up and closed; the \
                     upper end"
                ),
            ),
            Id::HeardPublicationCpu => (
                32.0,
                "µs",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T2 users: the 2 nodes' CPU the single-node figures leave, per \
                 publication heard (the publishing node's script call and reply, the pub/sub \
                 message read, the replica's order check)"
                    .into(),
            ),
            Id::DeflateCpu => (
                19.0,
                "µs",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Bandwidth per delivery: deflating a 1 KiB publication takes \
                     17-19 µs, once per publication and node, not per subscriber"
                ),
            ),
            Id::PingInterval => (
                25.0,
                "s",
                SourceKind::Code,
                "default: websocket.ping_interval_secs (docs/OPERATIONS.md)".into(),
            ),
            Id::PingCost => (
                2.0,
                "deliveries",
                SourceKind::Assumption,
                "assumption: a ping written and its pong read cost about two deliveries \
                 (not measured)"
                    .into(),
            ),
            Id::Reconnects => (
                1.0,
                "per connection per hour",
                SourceKind::Assumption,
                "assumption: clients reconnect about once an hour (networks change, tabs \
                 reload)"
                    .into(),
            ),
            Id::AdmissionRate => (
                2000.0,
                "connections/s per node",
                SourceKind::Code,
                "default: server.admission_rate (docs/OPERATIONS.md)".into(),
            ),
            Id::JsonEnvelope => (
                71.0,
                "bytes",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Bandwidth per delivery (starling-bench wire): 1,024 bytes of \
                     JSON data travel as a 1,095-byte push"
                ),
            ),
            Id::MsgpackEnvelope => (
                56.0,
                "bytes",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Bandwidth per delivery (starling-bench wire): 1,024 bytes of \
                     data travel as a 1,080-byte MessagePack push"
                ),
            ),
            Id::DeflateRatioJson => (
                0.39,
                "of the plain size",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Bandwidth per delivery: chat-like 1 KiB JSON pushes deflate to \
                     432 of 1,095 bytes"
                ),
            ),
            Id::DeflateRatioMsgpack => (
                0.41,
                "of the plain size",
                SourceKind::Measured,
                format!(
                    "{BENCH}, Bandwidth per delivery: chat-like 1 KiB MessagePack pushes \
                     deflate to 451 of 1,080 bytes"
                ),
            ),
            Id::CompressionMin => (
                128.0,
                "bytes",
                SourceKind::Code,
                "default: websocket.compression_min_size (docs/OPERATIONS.md)".into(),
            ),
            Id::PacketOverhead => (
                70.0,
                "bytes",
                SourceKind::Assumption,
                "assumption: one TCP segment per delivery, 66 bytes of Ethernet, IP and TCP \
                 headers and 4 of WebSocket frame header"
                    .into(),
            ),
            Id::PublishRequest => (
                200.0,
                "bytes",
                SourceKind::Assumption,
                "assumption: an HTTP publish's request line, headers (API key) and JSON \
                 envelope around the data"
                    .into(),
            ),
            Id::ShardMessages => (
                500_000.0,
                "messages/s per shard",
                SourceKind::Published,
                "default: docs/SCALING.md, Sizing a cluster: a Redis instance carries \
                 500,000-1,000,000 pub/sub messages/s (published figures for 100-byte \
                 messages, not measured here); the low end"
                    .into(),
            ),
            Id::RedisEntryOverhead => (
                100.0,
                "bytes",
                SourceKind::Published,
                "default: docs/SCALING.md, Sizing a cluster: a history entry takes its \
                 payload + about 100 bytes (also used for a pub/sub message and for an entry \
                 of a node's own history)"
                    .into(),
            ),
            Id::PresenceBytes => (
                150.0,
                "bytes",
                SourceKind::Published,
                "default: docs/SCALING.md, Sizing a cluster: about 150 bytes per \
                 subscription plus the client's info"
                    .into(),
            ),
            Id::PresenceTtl => (
                60.0,
                "s",
                SourceKind::Code,
                "default: cluster.presence_ttl_secs; each entry is rewritten every TTL / 3 \
                 (docs/SCALING.md)"
                    .into(),
            ),
            Id::LogRecordOverhead => (
                128.0,
                "bytes",
                SourceKind::Code,
                "default: crates/log/src/format.rs: 36 bytes of framing and lengths and a \
                 16-byte epoch per record, the 56-byte MessagePack push envelope it stores, \
                 and a 20-byte channel name (assumed)"
                    .into(),
            ),
            Id::ArchiveRows => (
                70_000.0,
                "rows/s per writer",
                SourceKind::Measured,
                format!(
                    "{BENCH}, The PostgreSQL archive (issue 10), measured 2026-12-07: one \
                     writer, batches of 5,000 1 KiB rows, 69,000-70,600 rows/s with PostgreSQL \
                     on the same 2 cores"
                ),
            ),
            Id::ArchiveRowOverhead => (
                1.24 * 1024.0 * 1024.0 * 1024.0 / 1e6 - 1024.0,
                "bytes",
                SourceKind::Measured,
                format!(
                    "{BENCH}, The PostgreSQL archive (issue 10), measured 2026-12-07: 1.24 GiB \
                     per million 1 KiB rows, table and indexes (1,331 bytes per row)"
                ),
            ),
            Id::ArchivePartitionsAhead => (
                2.0,
                "days",
                SourceKind::Code,
                "default: archive.partitions_ahead_days (docs/OPERATIONS.md)".into(),
            ),
            Id::NodeCores => (
                8.0,
                "cores",
                SourceKind::Assumption,
                "assumption: a production node (--node-cores)".into(),
            ),
            Id::NodeMemory => (
                32.0,
                "GiB",
                SourceKind::Assumption,
                "assumption: a production node (--node-memory-gib)".into(),
            ),
            Id::Nic => (
                10.0,
                "Gbit/s",
                SourceKind::Assumption,
                "assumption: each machine's network interface, 10 Gbit/s = 1,250 MB/s \
                 (--nic-gbps; 1 Gbit/s carries about 125 MB/s)"
                    .into(),
            ),
            Id::MaxFiles => (
                1_048_576.0,
                "files per process",
                SourceKind::Assumption,
                "assumption: LimitNOFILE=1048576 as in deploy/'s systemd unit \
                 (docs/OPERATIONS.md, Kernel tuning; 20,000 on the test machine) \
                 (--max-files)"
                    .into(),
            ),
            Id::KernelPerSocket => (
                10.0,
                "KiB",
                SourceKind::Assumption,
                "assumption: the kernel's socket structures and small buffers of a mostly \
                 idle TCP connection; RSS does not show them (--kernel-kib-per-socket)"
                    .into(),
            ),
            Id::RedisMemory => (
                16.0,
                "GiB",
                SourceKind::Assumption,
                "assumption: a Redis shard's memory (--redis-memory-gib)".into(),
            ),
            Id::MaxUtilization => (
                0.7,
                "of each resource",
                SourceKind::Assumption,
                "assumption: plan for at most 70 % of any resource, for spikes and a failed \
                 machine's load (--max-utilization)"
                    .into(),
            ),
            Id::RedisPublicationCpu => (
                50.2,
                "µs of Redis CPU per publication",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T2 users: one Redis at 0.476 cores under 9,493 publications/s to \
                 personal channels with presence (about 9.5 commands each, the script's own \
                 included); a shard runs its commands on one core"
                    .into(),
            ),
            Id::DeliveriesPerCoreCluster => (
                CLUSTER_DELIVERIES,
                "deliveries/s per core",
                SourceKind::Measured,
                "default: docs/SCALING.md, Validation, measured 2026-12-07 (2 cores shared with Redis and the load tool), T2 fanout: each of 2 nodes on one Redis delivering 88,700/s to its \
                 4,500 subscribers of one channel at 0.54 cores (a cluster node's replica \
                 fan-out costs more per delivery than the single node's)"
                    .into(),
            ),
        };
        Figure {
            value,
            unit: unit.to_string(),
            source: Source { kind, text },
        }
    }
}

/// Every coefficient of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    values: Vec<Figure>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            values: Id::ALL.iter().map(|id| id.default_figure()).collect(),
        }
    }
}

impl Index<Id> for Figures {
    type Output = f64;

    fn index(&self, id: Id) -> &f64 {
        &self.values[id as usize].value
    }
}

impl Figures {
    /// The figure `id`, with its unit and source.
    pub fn figure(&self, id: Id) -> &Figure {
        &self.values[id as usize]
    }

    /// Every figure with its id, in list order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, &Figure)> {
        Id::ALL.iter().copied().zip(self.values.iter())
    }

    /// Sets `id` to `value` from `source`, refusing values the model cannot use.
    pub fn set(&mut self, id: Id, value: f64, source: Source) -> Result<(), CapacityError> {
        check(id, value)?;
        let figure = &mut self.values[id as usize];
        figure.value = value;
        figure.source = source;
        Ok(())
    }

    /// Applies `NAME=VALUE` from the command line (`--figure`).
    pub fn set_from_arg(&mut self, arg: &str) -> Result<(), CapacityError> {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| CapacityError::FigureSyntax(arg.to_string()))?;
        let id = Id::from_name(name.trim()).ok_or_else(|| unknown(name.trim()))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| CapacityError::FigureSyntax(arg.to_string()))?;
        self.set(id, value, flag_source(&format!("--figure {}", id.name())))
    }

    /// Sets an assumption from its own flag (`--node-cores 16`).
    pub fn set_flag(&mut self, id: Id, value: f64) -> Result<(), CapacityError> {
        let flag = id.flag().unwrap_or(id.name());
        self.set(id, value, flag_source(flag))
    }

    /// Whether any figure in `ids` is an assumption (the report says so).
    pub fn any_assumed(&self, ids: &[Id]) -> bool {
        ids.iter()
            .any(|&id| self.figure(id).source.kind == SourceKind::Assumption)
    }
}

fn flag_source(flag: &str) -> Source {
    Source {
        kind: SourceKind::Flag,
        text: format!("from {flag}"),
    }
}

/// The error for a name that is no figure, listing the names.
pub(crate) fn unknown(name: &str) -> CapacityError {
    let names: Vec<&str> = Id::ALL.iter().map(|id| id.name()).collect();
    CapacityError::UnknownFigure(name.to_string(), names.join(", "))
}

/// Refuses a value outside the figure's range.
fn check(id: Id, value: f64) -> Result<(), CapacityError> {
    let (ok, rule) = match id.range() {
        Range::Positive => (value.is_finite() && value > 0.0, "a number above 0"),
        Range::NonNegative => (value.is_finite() && value >= 0.0, "a number of 0 or more"),
        Range::Fraction => (
            value.is_finite() && value > 0.0 && value <= 1.0,
            "a fraction above 0 and at most 1",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(CapacityError::Invalid {
            what: format!("figure {}", id.name()),
            rule,
            value: value.to_string(),
        })
    }
}

/// One figure with its name, as the JSON report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedFigure {
    pub name: String,
    #[serde(flatten)]
    pub figure: Figure,
}

impl Serialize for Figures {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let list: Vec<NamedFigure> = self
            .iter()
            .map(|(id, figure)| NamedFigure {
                name: id.name().to_string(),
                figure: figure.clone(),
            })
            .collect();
        list.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Figures {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let list = Vec::<NamedFigure>::deserialize(deserializer)?;
        let mut figures = Figures::default();
        for named in list {
            let id = Id::from_name(&named.name).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown figure `{}`", named.name))
            })?;
            check(id, named.figure.value).map_err(serde::de::Error::custom)?;
            figures.values[id as usize] = named.figure;
        }
        Ok(figures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_in_range_and_sourced() {
        let figures = Figures::default();
        for (id, figure) in figures.iter() {
            check(id, figure.value).unwrap_or_else(|e| panic!("{}: {e}", id.name()));
            assert!(!figure.unit.is_empty(), "{}", id.name());
            assert!(
                figure.source.text.starts_with("default: ")
                    || figure.source.text.starts_with("assumption: "),
                "{}: {}",
                id.name(),
                figure.source
            );
            assert_eq!(
                figure.source.kind == SourceKind::Assumption,
                figure.source.text.starts_with("assumption: "),
                "{}",
                id.name()
            );
            assert_eq!(Id::from_name(id.name()), Some(id));
        }
        assert_eq!(Id::MemoryPerConnection.marker(), 1);
    }

    #[test]
    fn measured_defaults_are_the_documented_figures() {
        let f = Figures::default();
        assert!((f[Id::MemoryPerConnection] - 1.465).abs() < 0.001);
        assert_eq!(f[Id::MemoryPerConnectionCluster], 1.92);
        assert_eq!(f[Id::DeliveriesPerCore], 181_272.0);
        assert_eq!(f[Id::DeliveriesPerCoreCluster], 164_000.0);
        assert_eq!(f[Id::PublishesPerCore], 25_497.0);
        assert_eq!(f[Id::HeardPublicationCpu], 32.0);
        assert_eq!(f[Id::RedisPublicationCpu], 50.2);
        assert_eq!(f[Id::ArchiveRows], 70_000.0);
        // 1.24 GiB per million 1 KiB rows: 1,331 bytes a row.
        assert!((f[Id::ArchiveRowOverhead] + 1024.0 - 1331.4).abs() < 0.1);
        assert_eq!(f[Id::MaxFiles], 1_048_576.0);
    }

    #[test]
    fn figure_args_are_checked() {
        let mut f = Figures::default();
        f.set_from_arg("node_cores=16").expect("valid");
        assert_eq!(f[Id::NodeCores], 16.0);
        assert_eq!(
            f.figure(Id::NodeCores).source.text,
            "from --figure node_cores"
        );
        f.set_flag(Id::NodeCores, 4.0).expect("valid");
        assert_eq!(f.figure(Id::NodeCores).source.text, "from --node-cores");

        let e = f.set_from_arg("node_core=16").expect_err("unknown");
        assert!(e.to_string().contains("node_cores"), "{e}");
        assert!(matches!(
            f.set_from_arg("node_cores"),
            Err(CapacityError::FigureSyntax(_))
        ));
        assert!(f.set_from_arg("node_cores=lots").is_err());
        for bad in ["0", "-1", "NaN", "inf"] {
            let e = f.set_from_arg(&format!("node_cores={bad}")).expect_err(bad);
            assert!(e.to_string().contains("above 0"), "{e}");
        }
        assert!(f.set_from_arg("max_utilization=1.5").is_err());
        assert!(f.set_from_arg("open_files_reserve=0").is_ok());
        assert_eq!(f[Id::NodeCores], 4.0, "a refused value changes nothing");
    }

    /// docs/SCALING.md's table of coefficients lists every one, with its marker.
    #[test]
    fn every_figure_is_documented() {
        let doc = include_str!("../../../docs/SCALING.md");
        for id in Id::ALL {
            assert!(doc.contains(&format!("`{}`", id.name())), "{}", id.name());
        }
        let last = Id::ALL.len();
        assert!(
            doc.contains(&format!("| {last} | `{}` |", Id::ALL[last - 1].name())),
            "the markers in the doc follow the list"
        );
    }

    #[test]
    fn figures_round_trip_through_json() {
        let mut f = Figures::default();
        f.set_from_arg("nic_gbps=25").expect("valid");
        let text = serde_json::to_string(&f).expect("json");
        let back: Figures = serde_json::from_str(&text).expect("parse");
        for ((id, a), (_, b)) in f.iter().zip(back.iter()) {
            assert!((a.value - b.value).abs() <= a.value.abs() * 1e-12, "{id:?}");
            assert_eq!(a.source, b.source);
        }
        let bad = r#"[{"name":"nope","value":1,"unit":"x","source":{"kind":"flag","text":"t"}}]"#;
        assert!(serde_json::from_str::<Figures>(bad).is_err());
    }
}
