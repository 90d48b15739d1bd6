//! What the load takes: Starling nodes, Redis shards, load balancer processes, the
//! archive; how much of each resource the plan uses, which runs out first and the
//! headroom.
//!
//! Each machine's resources, one named formula each (n nodes, S shards; C, P, D, sizes
//! from [`Load`]; `hear` = P × H(n), the publications all nodes together hear from Redis,
//! where H(n) = Σ share × n (1 − (1 − 1/n)^subscribers) is the mean number of nodes that
//! have subscribers of a publication's channel, subscribers spread at random):
//!
//! - node open files = C / n of (max files − reserve)
//! - node memory = C / n × (Starling's memory per connection + kernel per socket) + base
//!   (+ history, on a single node)
//! - node CPU = D / n / deliveries per core + P / n / publishes per core + hear / n ×
//!   heard publication CPU + (hear / n, or P on one node) × deflate CPU when compressed +
//!   C / n × (pings per connection per second × ping cost / deliveries per core +
//!   reconnects per second × connect CPU)
//! - node network = max(in, out): out = D / n × bytes per delivery (+ P / n × (size +
//!   Redis overhead) to Redis); in = P / n × bytes per publication (+ hear / n × (size +
//!   Redis overhead) from Redis)
//! - Redis messages = P × (1 + H(n)) (a script call and one pub/sub message per node
//!   hearing) + presence writes, over S shards; Redis memory = history + presence; Redis
//!   network = P × H(n) × (size + overhead) out; one channel lives on one shard
//! - balancer sockets = 2 C (client and upstream side), network = D × bytes per delivery
//!   + P × bytes per publication each way
//! - archive writer = archive rows / rows per writer (one writer per node)
//!
//! The node count is the smallest n for which every node resource is within
//! `max_utilization`, found per resource (each shrinks as n grows) and then the maximum.
//! A load one node carries runs on the memory engine (no Redis); beyond, a cluster, whose
//! nodes use the cluster's memory per connection and keep history in Redis.

use serde::{Deserialize, Serialize};

use crate::CapacityError;
use crate::figures::{Figures, Id};
use crate::load::{DAY, Load};
use crate::workload::Workload;

/// The most machines of one kind the search considers.
const MAX_UNITS: u64 = 1_000_000_000_000;
pub(crate) const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
pub(crate) const MIB: f64 = 1024.0 * 1024.0;
/// Bytes per second in one Gbit/s.
pub(crate) const GBPS: f64 = 1e9 / 8.0;
/// The archive's partitioned tables (publications, connection events), one partition a
/// day each (crates/archive/src/schema.rs).
const ARCHIVE_TABLES: f64 = 2.0;

/// A resource that can run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    NodeFiles,
    NodeMemory,
    NodeCpu,
    NodeNetwork,
    ShardCpu,
    ShardMemory,
    ShardNetwork,
    HotChannel,
    BalancerSockets,
    BalancerNetwork,
    ArchiveWriter,
}

impl Resource {
    /// What it is, in words.
    pub fn label(self) -> &'static str {
        match self {
            Resource::NodeFiles => "node open files (connections)",
            Resource::NodeMemory => "node memory",
            Resource::NodeCpu => "node CPU",
            Resource::NodeNetwork => "node network",
            Resource::ShardCpu => "Redis shard CPU",
            Resource::ShardMemory => "Redis shard memory",
            Resource::ShardNetwork => "Redis shard network",
            Resource::HotChannel => "busiest channel's Redis shard",
            Resource::BalancerSockets => "balancer sockets",
            Resource::BalancerNetwork => "balancer network",
            Resource::ArchiveWriter => "archive writer rows/s",
        }
    }

    /// The short name for tables.
    pub fn short(self) -> &'static str {
        match self {
            Resource::NodeFiles => "open files",
            Resource::NodeMemory => "memory",
            Resource::NodeCpu => "CPU",
            Resource::NodeNetwork => "network",
            Resource::ShardCpu => "Redis CPU",
            Resource::ShardMemory => "Redis memory",
            Resource::ShardNetwork => "Redis network",
            Resource::HotChannel => "hot channel",
            Resource::BalancerSockets => "LB sockets",
            Resource::BalancerNetwork => "LB network",
            Resource::ArchiveWriter => "archive writer",
        }
    }

    /// The figures its formula uses (the report cites them).
    pub fn figures(self) -> &'static [Id] {
        match self {
            Resource::NodeFiles => &[Id::MaxFiles, Id::OpenFilesReserve],
            Resource::NodeMemory => &[
                Id::MemoryPerConnection,
                Id::MemoryPerConnectionCluster,
                Id::KernelPerSocket,
                Id::NodeBaseMemory,
                Id::NodeMemory,
            ],
            Resource::NodeCpu => &[
                Id::DeliveriesPerCore,
                Id::DeliveriesPerCoreCluster,
                Id::PublishesPerCore,
                Id::HeardPublicationCpu,
                Id::DeflateCpu,
                Id::PingInterval,
                Id::PingCost,
                Id::Reconnects,
                Id::ConnectCpu,
                Id::NodeCores,
            ],
            Resource::NodeNetwork | Resource::BalancerNetwork | Resource::ShardNetwork => {
                &[Id::PacketOverhead, Id::PublishRequest, Id::Nic]
            }
            Resource::ShardCpu | Resource::HotChannel => {
                &[Id::RedisPublicationCpu, Id::ShardMessages]
            }
            Resource::ShardMemory => &[Id::RedisEntryOverhead, Id::PresenceBytes, Id::RedisMemory],
            Resource::BalancerSockets => &[Id::MaxFiles, Id::OpenFilesReserve],
            Resource::ArchiveWriter => &[Id::ArchiveRows],
        }
    }
}

/// How much of one resource the plan uses, per machine of its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub resource: Resource,
    /// Used per machine, in `unit`.
    pub used: f64,
    /// What one machine has, in `unit`.
    pub capacity: f64,
    pub unit: String,
    /// used / capacity.
    pub utilization: f64,
    /// capacity / used: how many times the load fits before it runs out (`None`: unused).
    pub headroom: Option<f64>,
    /// Machines of its kind this resource alone needs (`None`: no number is enough).
    pub needs: Option<u64>,
}

impl Usage {
    fn new(resource: Resource, used: f64, capacity: f64, unit: &str) -> Usage {
        let utilization = if capacity > 0.0 {
            used / capacity
        } else {
            f64::MAX
        };
        Usage {
            resource,
            used,
            capacity,
            unit: unit.to_string(),
            utilization,
            headroom: (used > 0.0).then(|| capacity / used),
            needs: None,
        }
    }
}

/// Which engine the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// One node, streams in the process (no Redis).
    Memory,
    /// Nodes sharing streams through Redis.
    Redis,
}

/// What goes through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broker {
    pub messages_per_s: f64,
    /// Redis CPU in all, cores (a shard has one).
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub net_out_per_s: f64,
    pub net_in_per_s: f64,
    /// The class whose one channel asks most of its shard, and how much (cores).
    pub hottest_class: String,
    pub hottest_channel_cpu_cores: f64,
}

/// The archive's needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archive {
    pub rows_per_s: f64,
    pub writers_needed: u64,
    pub bytes_per_day: f64,
    pub rows_kept: f64,
    pub bytes_kept: f64,
    pub partitions: f64,
}

/// The machines and how full they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub engine: Engine,
    pub nodes: u64,
    pub connections_per_node: f64,
    /// Connections of this workload one node carries within `max_utilization` of its
    /// first-limiting resource (`None`: nothing limits).
    pub node_holds: Option<f64>,
    /// Mean nodes that hear one publication (1 on one node).
    pub hearing_nodes: f64,
    /// Redis shards (0 on the memory engine).
    pub shards: u64,
    pub broker: Option<Broker>,
    pub balancers: u64,
    pub balancer_sockets: f64,
    pub archive: Option<Archive>,
    /// Every resource, per machine of its kind.
    pub usages: Vec<Usage>,
    /// The resource with the highest utilization: the first to run out.
    pub bottleneck: Resource,
    /// Nothing is over its capacity.
    pub feasible: bool,
    /// Seconds for one node's clients to be re-admitted by the others after it fails
    /// (by the node itself after a restart, on one node).
    pub storm_s: f64,
    pub notes: Vec<String>,
}

impl Plan {
    /// The usage of `resource`, if the plan has it.
    pub fn usage(&self, resource: Resource) -> Option<&Usage> {
        self.usages.iter().find(|u| u.resource == resource)
    }

    /// The first resource to run out.
    pub fn first(&self) -> Option<&Usage> {
        self.usage(self.bottleneck)
    }
}

/// Mean number of nodes (of `n`) with at least one of `subscribers` placed at random.
pub fn hearing(subscribers: f64, n: f64) -> f64 {
    if n <= 1.0 {
        return 1.0;
    }
    // n (1 − (1 − 1/n)^s), computed without cancellation.
    (-n * (subscribers * (-1.0 / n).ln_1p()).exp_m1()).clamp(1.0, n)
}

pub(crate) fn mean_hearing(load: &Load, n: f64) -> f64 {
    load.classes
        .iter()
        .map(|c| c.share * hearing(c.subscribers, n))
        .sum()
}

/// One node's share of the load with `n` nodes: what [`node_usages`] rates against a
/// node's capacity, and what [`crate::predict`] states for a given topology.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeShare {
    /// Connections held.
    pub connections: f64,
    /// Starling's own memory (what the process's RSS shows), bytes.
    pub process_memory: f64,
    /// The kernel's memory for the node's sockets (not in RSS), bytes.
    pub kernel_memory: f64,
    /// CPU, cores: fan-out deliveries.
    pub cpu_deliveries: f64,
    /// CPU, cores: publishes taken (decode, checks, history, broker or log).
    pub cpu_publications: f64,
    /// CPU, cores: publications heard from Redis (a cluster's replica step).
    pub cpu_heard: f64,
    /// CPU, cores: permessage-deflate.
    pub cpu_compression: f64,
    /// CPU, cores: pings and reconnects of idle connections.
    pub cpu_upkeep: f64,
    /// Bytes per second out and in.
    pub out_per_s: f64,
    pub in_per_s: f64,
}

impl NodeShare {
    /// All CPU, cores.
    pub fn cores(&self) -> f64 {
        self.cpu_deliveries
            + self.cpu_publications
            + self.cpu_heard
            + self.cpu_compression
            + self.cpu_upkeep
    }
}

/// Redis messages per second in all for a load heard by `hearing` nodes per publication
/// on average: the publish script call, one pub/sub message per node hearing, and the
/// presence writes.
pub(crate) fn redis_messages(load: &Load, hearing: f64) -> f64 {
    load.publications_per_s * (1.0 + hearing) + load.presence_writes_per_s
}

/// Redis CPU, cores, of `publications` per second each heard by `hearing` nodes: the
/// measured cost per publication (its script and one pub/sub message), one more
/// pub/sub message per further node hearing it, and `writes` presence writes, each
/// message or write at the shard's message rate.
pub(crate) fn redis_cpu(publications: f64, hearing: f64, writes: f64, f: &Figures) -> f64 {
    let message_us = 1e6 / f[Id::ShardMessages];
    (publications * (f[Id::RedisPublicationCpu] + (hearing - 1.0).max(0.0) * message_us)
        + writes * message_us)
        / 1e6
}

/// One node's share with `n` nodes (`cluster`: on Redis).
pub(crate) fn node_share(
    load: &Load,
    w: &Workload,
    f: &Figures,
    n: f64,
    cluster: bool,
) -> NodeShare {
    let conns = load.connections / n;
    let pubs = load.publications_per_s;
    let heard = if cluster {
        pubs * mean_hearing(load, n) / n
    } else {
        0.0
    };
    let per_conn_kib = if cluster {
        f[Id::MemoryPerConnectionCluster]
    } else {
        f[Id::MemoryPerConnection]
    };
    let mut process_memory = conns * per_conn_kib * 1024.0 + f[Id::NodeBaseMemory] * MIB;
    if !cluster {
        process_memory += load.history_bytes + load.presence_bytes;
    }
    let cpu_compression = if load.compressed {
        (if cluster { heard } else { pubs }) * f[Id::DeflateCpu] / 1e6
    } else {
        0.0
    };
    let cpu_upkeep = conns
        * (f[Id::PingCost] / f[Id::PingInterval] / f[Id::DeliveriesPerCore]
            + f[Id::Reconnects] / 3600.0 * f[Id::ConnectCpu] / 1e6);
    let redis_message = w.msg_size + f[Id::RedisEntryOverhead];
    let mut out = load.bytes_out_per_s / n;
    let mut inbound = load.bytes_in_per_s / n;
    if cluster {
        out += pubs / n * redis_message;
        inbound += heard * redis_message;
    }
    NodeShare {
        connections: conns,
        process_memory,
        kernel_memory: conns * f[Id::KernelPerSocket] * 1024.0,
        cpu_deliveries: load.deliveries_per_s
            / n
            / if cluster {
                f[Id::DeliveriesPerCoreCluster]
            } else {
                f[Id::DeliveriesPerCore]
            },
        cpu_publications: pubs / n / f[Id::PublishesPerCore],
        cpu_heard: heard * f[Id::HeardPublicationCpu] / 1e6,
        cpu_compression,
        cpu_upkeep,
        out_per_s: out,
        in_per_s: inbound,
    }
}

/// The four node resources with `n` nodes.
fn node_usages(load: &Load, w: &Workload, f: &Figures, n: f64, cluster: bool) -> [Usage; 4] {
    let share = node_share(load, w, f, n, cluster);
    let files = Usage::new(
        Resource::NodeFiles,
        share.connections,
        f[Id::MaxFiles] - f[Id::OpenFilesReserve],
        "connections",
    );
    let memory = Usage::new(
        Resource::NodeMemory,
        (share.process_memory + share.kernel_memory) / GIB,
        f[Id::NodeMemory],
        "GiB",
    );
    let cpu = Usage::new(Resource::NodeCpu, share.cores(), f[Id::NodeCores], "cores");
    let network = Usage::new(
        Resource::NodeNetwork,
        share.out_per_s.max(share.in_per_s) / GBPS,
        f[Id::Nic],
        "Gbit/s",
    );
    [files, memory, cpu, network]
}

/// The smallest n (≥ `min`) for which `resource` is within `limit`, if any.
fn nodes_for(
    load: &Load,
    w: &Workload,
    f: &Figures,
    index: usize,
    cluster: bool,
    min: u64,
    limit: f64,
) -> Option<u64> {
    let fits = |n: u64| node_usages(load, w, f, n as f64, cluster)[index].utilization <= limit;
    if fits(min) {
        return Some(min);
    }
    let (mut lo, mut hi) = (min, min.saturating_mul(2).max(min + 1));
    while !fits(hi) {
        if hi >= MAX_UNITS {
            return None;
        }
        lo = hi;
        hi = hi.saturating_mul(2).min(MAX_UNITS);
    }
    // fits(hi), !fits(lo): usage shrinks as n grows.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Machines needed to carry `used` at `capacity` each within `limit` (at least 1).
fn units(used: f64, capacity: f64, limit: f64) -> u64 {
    let n = (used / (capacity * limit)).ceil();
    if n.is_finite() && n >= 1.0 {
        // Saturates at u64::MAX for absurd loads; the inputs are bounded well below.
        n as u64
    } else {
        1
    }
}

/// The plan for `load` of workload `w` under figures `f`.
pub fn plan(load: &Load, w: &Workload, f: &Figures) -> Result<Plan, CapacityError> {
    if f[Id::MaxFiles] <= f[Id::OpenFilesReserve] {
        return Err(CapacityError::Invalid {
            what: "--max-files".into(),
            rule: "above the open files a node keeps for itself (open_files_reserve)",
            value: f[Id::MaxFiles].to_string(),
        });
    }
    let limit = f[Id::MaxUtilization];
    let mut notes = Vec::new();

    let single = node_usages(load, w, f, 1.0, false);
    // Each node archives what it publishes, with one writer: an archive that needs more
    // writers than one needs that many nodes.
    let writers = if w.archive_days > 0.0 {
        units(load.archive_rows_per_s, f[Id::ArchiveRows], limit)
    } else {
        0
    };
    let cluster = single.iter().any(|u| u.utilization > limit) || writers > 1;
    let (nodes, node_usage) = if cluster {
        let mut needs = [None; 4];
        for (i, need) in needs.iter_mut().enumerate() {
            *need = nodes_for(load, w, f, i, true, 2, limit);
        }
        let by_nodes = needs.iter().flatten().copied().max().unwrap_or(2).max(2);
        let nodes = by_nodes.max(writers);
        if nodes > by_nodes {
            notes.push(format!(
                "{nodes} nodes where {by_nodes} would carry the connections and deliveries: \
                 the archive needs {writers} writers, and each node has one (it archives \
                 what it publishes)"
            ));
        }
        let mut usages = node_usages(load, w, f, nodes as f64, true);
        for (usage, need) in usages.iter_mut().zip(needs) {
            usage.needs = need;
            if need.is_none() {
                notes.push(format!(
                    "no number of nodes brings {} under {:.0} %: a node's share does not \
                     shrink below what every node hears from Redis",
                    usage.resource.label(),
                    limit * 100.0
                ));
            }
        }
        (nodes, usages)
    } else {
        let mut usages = single;
        for usage in &mut usages {
            usage.needs = Some(1);
        }
        (1, usages)
    };
    let n = nodes as f64;
    let hearing_nodes = if cluster { mean_hearing(load, n) } else { 1.0 };
    let worst_node = node_usage.iter().map(|u| u.utilization).fold(0.0, f64::max);
    let node_holds = (worst_node > 0.0).then(|| load.connections / n * limit / worst_node);
    let mut usages: Vec<Usage> = node_usage.to_vec();

    // Redis, for a cluster.
    let (shards, broker) = if cluster {
        let pubs = load.publications_per_s;
        let message = w.msg_size + f[Id::RedisEntryOverhead];
        let messages = redis_messages(load, hearing_nodes);
        // A shard runs its commands on one thread: one core each.
        let cpu = redis_cpu(pubs, hearing_nodes, load.presence_writes_per_s, f);
        let memory = load.history_bytes + load.presence_bytes;
        let net_out = pubs * hearing_nodes * message;
        let net_in = pubs * message;
        let by_cpu = units(cpu, 1.0, limit);
        let by_memory = units(memory / GIB, f[Id::RedisMemory], limit);
        let by_network = units(net_out.max(net_in) / GBPS, f[Id::Nic], limit);
        let shards = by_cpu.max(by_memory).max(by_network).max(1);
        let s = shards as f64;
        // The busiest channel: its Redis CPU, all on its one shard.
        let mut hottest = (String::new(), 0.0);
        for class in &load.classes {
            let c = redis_cpu(
                class.per_channel_per_s,
                hearing(class.subscribers, n),
                0.0,
                f,
            );
            if c > hottest.1 {
                hottest = (class.name.clone(), c);
            }
        }
        let mut add = |resource, used, capacity, unit: &str, needs| {
            let mut usage = Usage::new(resource, used, capacity, unit);
            usage.needs = needs;
            usages.push(usage);
        };
        add(Resource::ShardCpu, cpu / s, 1.0, "cores", Some(by_cpu));
        add(
            Resource::ShardMemory,
            memory / GIB / s,
            f[Id::RedisMemory],
            "GiB",
            Some(by_memory),
        );
        add(
            Resource::ShardNetwork,
            net_out.max(net_in) / GBPS / s,
            f[Id::Nic],
            "Gbit/s",
            Some(by_network),
        );
        let hot_fits = hottest.1 <= limit;
        add(
            Resource::HotChannel,
            hottest.1,
            1.0,
            "cores",
            hot_fits.then_some(1),
        );
        if !hot_fits {
            notes.push(format!(
                "one `{}` channel needs {:.2} cores of Redis, over {:.0} % of a shard's one \
                 core: a channel is never split over shards",
                hottest.0,
                hottest.1,
                limit * 100.0
            ));
        }
        (
            shards,
            Some(Broker {
                messages_per_s: messages,
                cpu_cores: cpu,
                memory_bytes: memory,
                net_out_per_s: net_out,
                net_in_per_s: net_in,
                hottest_class: hottest.0,
                hottest_channel_cpu_cores: hottest.1,
            }),
        )
    } else {
        (0, None)
    };

    // The balancer: a client socket and an upstream socket per connection.
    let sockets = 2.0 * load.connections;
    let per_process = f[Id::MaxFiles] - f[Id::OpenFilesReserve];
    let lb_bytes = load.bytes_out_per_s + load.bytes_in_per_s;
    let lb_by_sockets = units(sockets, per_process, limit);
    let lb_by_network = units(lb_bytes / GBPS, f[Id::Nic], limit);
    let balancers = lb_by_sockets.max(lb_by_network).max(1);
    let b = balancers as f64;
    let mut lb_sockets = Usage::new(
        Resource::BalancerSockets,
        sockets / b,
        per_process,
        "sockets",
    );
    lb_sockets.needs = Some(lb_by_sockets);
    let mut lb_network = Usage::new(
        Resource::BalancerNetwork,
        lb_bytes / GBPS / b,
        f[Id::Nic],
        "Gbit/s",
    );
    lb_network.needs = Some(lb_by_network);
    usages.push(lb_sockets);
    usages.push(lb_network);

    // The archive: one writer per node, each archiving what its node publishes (the
    // balancer spreads publishers, so each writer takes about 1/nodes of the rows).
    let archive = (w.archive_days > 0.0).then(|| {
        let rows = load.archive_rows_per_s;
        let mut usage = Usage::new(
            Resource::ArchiveWriter,
            rows / n,
            f[Id::ArchiveRows],
            "rows/s",
        );
        usage.needs = Some(writers);
        usages.push(usage);
        Archive {
            rows_per_s: rows,
            writers_needed: writers,
            bytes_per_day: load.archive_bytes_per_s * DAY,
            rows_kept: load.archive_rows_kept,
            bytes_kept: load.archive_bytes_kept,
            partitions: ARCHIVE_TABLES * (w.archive_days + 1.0 + f[Id::ArchivePartitionsAhead]),
        }
    });

    let (bottleneck, worst) = usages.iter().map(|u| (u.resource, u.utilization)).fold(
        (Resource::NodeCpu, f64::MIN),
        |best, (r, x)| {
            if x > best.1 { (r, x) } else { best }
        },
    );
    let connections_per_node = load.connections / n;
    let storm_s = if nodes > 1 {
        connections_per_node / (f[Id::AdmissionRate] * (n - 1.0))
    } else {
        load.connections / f[Id::AdmissionRate]
    };
    if w.msg_size > 65_536.0 {
        notes.push(
            "--msg-size is above websocket.max_message_size's default (64 KiB): raise it".into(),
        );
    }
    Ok(Plan {
        engine: if cluster {
            Engine::Redis
        } else {
            Engine::Memory
        },
        nodes,
        connections_per_node,
        node_holds,
        hearing_nodes,
        shards,
        broker,
        balancers,
        balancer_sockets: sockets,
        archive,
        usages,
        bottleneck,
        feasible: worst <= 1.0,
        storm_s,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{AllTag, ChannelClass, Subscribers};

    fn plan_of(w: &Workload, f: &Figures) -> Plan {
        w.validate().expect("valid workload");
        plan(&Load::of(w, f), w, f).expect("plan")
    }

    #[test]
    fn hearing_nodes() {
        assert_eq!(hearing(1.0, 1.0), 1.0);
        assert_eq!(hearing(1.0, 10.0), 1.0, "a personal channel: one node");
        assert!((hearing(2.0, 2.0) - 1.5).abs() < 1e-12);
        assert!(
            (hearing(1e6, 10.0) - 10.0).abs() < 1e-9,
            "a big channel: every node"
        );
        let h = hearing(50.0, 1e6);
        assert!((h - 50.0).abs() < 0.01, "more nodes than subscribers: {h}");
    }

    /// The source analysis's 10,000 users fit one node on the memory engine.
    #[test]
    fn one_node_when_it_fits() {
        let f = Figures::default();
        let p = plan_of(&Workload::new(10_000.0, 1.0, 1024.0, 1.0), &f);
        assert_eq!(p.engine, Engine::Memory);
        assert_eq!((p.nodes, p.shards, p.balancers), (1, 0, 1));
        assert!(p.broker.is_none() && p.archive.is_none());
        assert!(p.feasible);
        assert_eq!(p.bottleneck, Resource::NodeCpu);
        // CPU: 10,000 deliveries at 181,272 a core + 10,000 publishes at 25,497 a core
        // + upkeep (pings at two deliveries each, an hourly reconnect at 79 µs).
        let cpu = p.usage(Resource::NodeCpu).expect("cpu");
        let upkeep = 10_000.0 * (2.0 / 25.0 / 181_272.0 + 79e-6 / 3600.0);
        assert!(
            (cpu.used - (10_000.0 / 181_272.0 + 10_000.0 / 25_497.0 + upkeep)).abs() < 1e-9,
            "{}",
            cpu.used
        );
        assert_eq!(p.balancer_sockets, 20_000.0);
        assert_eq!(p.storm_s, 5.0, "10,000 clients at 2,000/s");
    }

    /// Nodes = the largest count any resource needs, each rounded up.
    #[test]
    fn nodes_are_the_largest_need_rounded_up() {
        let f = Figures::default();
        let w = Workload::new(1_000_000.0, 1.0, 1024.0, 1.0);
        let p = plan_of(&w, &f);
        assert_eq!(p.engine, Engine::Redis);
        // CPU over all nodes: 6.10 (deliveries at 164,000 a core) + 39.22 (publishes at
        // 25,497) + 32 (heard from Redis, 32 µs each) + 0.46 (pings and reconnects) =
        // 77.78 cores; 5.6 usable per node (8 × 0.7): 13.9, so 14 nodes.
        let cpu = p.usage(Resource::NodeCpu).expect("cpu");
        assert!(
            (cpu.used * 14.0 - 77.781).abs() < 0.001,
            "{}",
            cpu.used * 14.0
        );
        assert_eq!(cpu.needs, Some(14));
        assert_eq!(p.nodes, 14);
        let needs: Vec<u64> = p.usages[..4].iter().filter_map(|u| u.needs).collect();
        assert_eq!(p.nodes, needs.iter().copied().max().expect("needs"));
        // One node fewer is over the limit.
        let at_four = node_usages(&Load::of(&w, &f), &w, &f, 4.0, true);
        assert!(at_four[2].utilization > 0.7);
        assert!(p.usages[..4].iter().all(|u| u.utilization <= 0.7));
    }

    /// Redis CPU = P × (50.2 µs + 2 µs per further node hearing), over one core × 0.7
    /// per shard; messages = P × (1 + nodes hearing).
    #[test]
    fn shards_carry_the_script_call_and_one_message_per_node_hearing() {
        let f = Figures::default();
        let p = plan_of(&Workload::new(1_000_000.0, 1.0, 1024.0, 1.0), &f);
        let broker = p.broker.as_ref().expect("redis");
        assert_eq!(p.hearing_nodes, 1.0);
        assert_eq!(broker.messages_per_s, 2_000_000.0);
        assert!(
            (broker.cpu_cores - 50.2).abs() < 1e-9,
            "{}",
            broker.cpu_cores
        );
        assert_eq!(p.shards, 72, "50.2 cores / 0.7 = 71.7");
        assert_eq!(p.usage(Resource::ShardCpu).and_then(|u| u.needs), Some(72));
        // A channel of 100 subscribers over 5 nodes: nearly every node hears it.
        let p = plan_of(&Workload::new(1_000_000.0, 0.01, 1024.0, 100.0), &f);
        let h = hearing(100.0, p.nodes as f64);
        assert!((p.hearing_nodes - h).abs() < 1e-12);
        let broker = p.broker.as_ref().expect("redis");
        assert!((broker.messages_per_s - 10_000.0 * (1.0 + h)).abs() < 1e-6);
        let cpu = 10_000.0 * (f[Id::RedisPublicationCpu] + (h - 1.0) * 2.0) / 1e6;
        assert!(
            (broker.cpu_cores - cpu).abs() < 1e-9,
            "{}",
            broker.cpu_cores
        );
    }

    /// Changing one coefficient moves the first bottleneck to its resource.
    #[test]
    fn the_bottleneck_follows_the_coefficient() {
        let w = Workload::new(10_000.0, 1.0, 1024.0, 1.0);
        let base = Figures::default();
        assert_eq!(plan_of(&w, &base).bottleneck, Resource::NodeCpu);
        for (arg, resource) in [
            ("node_memory_gib=0.2", Resource::NodeMemory),
            ("max_files=12000", Resource::BalancerSockets),
            ("nic_gbps=0.2", Resource::NodeNetwork),
            ("node_cores=0.1", Resource::NodeCpu),
        ] {
            let mut f = base.clone();
            f.set_from_arg(arg).expect(arg);
            let p = plan_of(&w, &f);
            assert_eq!(p.bottleneck, resource, "{arg}");
        }
        // Open files: more nodes, not balancers, when only the nodes' limit is low.
        let mut f = base.clone();
        f.set_from_arg("open_files_reserve=1040000")
            .expect("reserve");
        let p = plan_of(&w, &f);
        assert_eq!(p.usage(Resource::NodeFiles).and_then(|u| u.needs), Some(2));
        assert_eq!(p.nodes, 2);
    }

    #[test]
    fn the_archive_is_one_writer_per_node() {
        let f = Figures::default();
        let mut w = Workload::new(100_000.0, 1.0, 1024.0, 1.0);
        w.archive_days = 7.0;
        let p = plan_of(&w, &f);
        let a = p.archive.as_ref().expect("archive");
        assert_eq!(a.rows_per_s, 100_000.0);
        assert_eq!(a.writers_needed, 3, "100,000 / (70,000 × 0.7)");
        assert_eq!(a.partitions, 2.0 * (7.0 + 1.0 + 2.0));
        // One node would carry the rest: the archive alone makes it three.
        assert_eq!(p.nodes, 3);
        assert!(p.feasible);
        let u = p.usage(Resource::ArchiveWriter).expect("writer usage");
        assert!((u.used - 100_000.0 / 3.0).abs() < 1e-6, "{}", u.used);
        assert!(
            p.notes.iter().any(|n| n.contains("3 writers")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn in_a_cluster_each_node_archives_its_share() {
        let f = Figures::default();
        let mut w = Workload::new(4_000_000.0, 0.025, 1024.0, 1.0);
        w.archive_days = 7.0;
        let p = plan_of(&w, &f);
        assert!(p.nodes >= 3, "a cluster: {}", p.nodes);
        let a = p.archive.as_ref().expect("archive");
        assert_eq!(a.writers_needed, 3, "100,000 / (70,000 × 0.7)");
        let u = p.usage(Resource::ArchiveWriter).expect("writer usage");
        let per_node = 100_000.0 / (70_000.0 * p.nodes as f64);
        assert!((u.utilization - per_node).abs() < 1e-9, "{}", u.utilization);
        assert!(
            !p.notes.iter().any(|n| n.contains("writers")),
            "{:?}",
            p.notes
        );
    }

    /// A broadcast channel lives on one shard and every node hears it: past some rate
    /// no number of machines carries it, and the plan says so.
    #[test]
    fn a_hot_broadcast_channel_is_not_feasible() {
        let f = Figures::default();
        // 1,000 publications/s to one channel of 1,000,000 subscribers: a billion
        // deliveries/s, about 1,200 nodes, each hearing every publication, so the
        // channel's shard carries 1,000 × (1 + 1,200) messages/s.
        let mut w = Workload::new(1_000_000.0, 0.001, 100.0, 1.0);
        w.mix = vec![ChannelClass {
            name: "news".into(),
            share: 1.0,
            subscribers: Subscribers::All(AllTag::All),
            channels: Some(1.0),
        }];
        let p = plan_of(&w, &f);
        assert!(p.nodes > 1000, "{}", p.nodes);
        assert!(
            (p.hearing_nodes - p.nodes as f64).abs() < 1e-6,
            "every node hears it"
        );
        let b = p.broker.as_ref().expect("redis");
        let cpu = 1000.0 * (f[Id::RedisPublicationCpu] + (p.hearing_nodes - 1.0) * 2.0) / 1e6;
        assert!((b.hottest_channel_cpu_cores - cpu).abs() < 1e-9);
        assert!(!p.feasible);
        assert_eq!(p.bottleneck, Resource::HotChannel);
        assert_eq!(p.usage(Resource::HotChannel).and_then(|u| u.needs), None);
        assert!(
            p.notes.iter().any(|n| n.contains("never split")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_limit_below_the_reserve_is_refused() {
        let mut f = Figures::default();
        f.set_from_arg("max_files=500").expect("valid alone");
        let w = Workload::new(10.0, 1.0, 10.0, 1.0);
        let e = plan(&Load::of(&w, &f), &w, &f).expect_err("below reserve");
        assert!(e.to_string().contains("--max-files"), "{e}");
    }
}
