//! What a given topology would use: the model's prediction for `nodes` Starling nodes and
//! `shards` Redis shards under a workload, resource by resource. The plan ([`crate::plan`])
//! chooses the counts; this states what the same formulas say about counts you chose, so
//! that they can be checked against a measured run (docs/SCALING.md, *Validation*) or
//! against a running cluster.

use serde::{Deserialize, Serialize};

use crate::CapacityError;
use crate::figures::Figures;
use crate::load::Load;
use crate::plan::{Engine, GBPS, MIB, mean_hearing, node_share, redis_cpu, redis_messages};
use crate::workload::Workload;

/// The model's figures for one topology (per node and per shard, evenly shared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub engine: Engine,
    pub nodes: u64,
    pub shards: u64,
    pub connections_per_node: f64,
    /// Starling's memory per node (the process's RSS over its empty start), MiB.
    pub process_memory_mib: f64,
    /// The kernel's socket memory per node (not in the RSS), MiB.
    pub kernel_memory_mib: f64,
    /// CPU per node, cores, and its parts.
    pub cpu_cores_per_node: f64,
    pub cpu_deliveries: f64,
    pub cpu_publications: f64,
    pub cpu_heard: f64,
    pub cpu_compression: f64,
    pub cpu_upkeep: f64,
    /// Bytes per second out of and into each node, Gbit/s.
    pub out_gbps_per_node: f64,
    pub in_gbps_per_node: f64,
    /// Mean nodes hearing one publication.
    pub hearing_nodes: f64,
    /// Redis messages per second per shard (0 on the memory engine).
    pub redis_messages_per_shard: f64,
    /// Redis CPU per shard, cores (a shard has one; 0 on the memory engine).
    pub redis_cpu_cores_per_shard: f64,
}

/// The prediction for `nodes` nodes and `shards` Redis shards (0 shards: one node on the
/// memory engine).
pub fn predict(
    load: &Load,
    w: &Workload,
    f: &Figures,
    nodes: u64,
    shards: u64,
) -> Result<Prediction, CapacityError> {
    if nodes == 0 {
        return Err(CapacityError::Invalid {
            what: "--nodes".into(),
            rule: "at least 1",
            value: nodes.to_string(),
        });
    }
    if shards == 0 && nodes > 1 {
        return Err(CapacityError::Invalid {
            what: "--shards".into(),
            rule: "at least 1 with more than one node (nodes share streams through Redis)",
            value: shards.to_string(),
        });
    }
    let cluster = shards > 0;
    let n = nodes as f64;
    let share = node_share(load, w, f, n, cluster);
    let hearing = if cluster { mean_hearing(load, n) } else { 1.0 };
    Ok(Prediction {
        engine: if cluster {
            Engine::Redis
        } else {
            Engine::Memory
        },
        nodes,
        shards,
        connections_per_node: share.connections,
        process_memory_mib: share.process_memory / MIB,
        kernel_memory_mib: share.kernel_memory / MIB,
        cpu_cores_per_node: share.cores(),
        cpu_deliveries: share.cpu_deliveries,
        cpu_publications: share.cpu_publications,
        cpu_heard: share.cpu_heard,
        cpu_compression: share.cpu_compression,
        cpu_upkeep: share.cpu_upkeep,
        out_gbps_per_node: share.out_per_s / GBPS,
        in_gbps_per_node: share.in_per_s / GBPS,
        hearing_nodes: hearing,
        redis_messages_per_shard: if cluster {
            redis_messages(load, hearing) / shards as f64
        } else {
            0.0
        },
        redis_cpu_cores_per_shard: if cluster {
            redis_cpu(
                load.publications_per_s,
                hearing,
                load.presence_writes_per_s,
                f,
            ) / shards as f64
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Id;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    /// One channel of 9,000 subscribers over 3 nodes, 20 publications a second: every
    /// node hears every publication, each delivers a third, Redis carries the script
    /// call and three pub/sub messages per publication.
    #[test]
    fn fan_out_over_three_nodes() {
        let f = Figures::default();
        let w = Workload::new(9_000.0, 20.0 / 9_000.0, 100.0, 9_000.0);
        let load = Load::of(&w, &f);
        let p = predict(&load, &w, &f, 3, 1).expect("prediction");
        assert_eq!(p.engine, Engine::Redis);
        assert!(close(p.connections_per_node, 3_000.0));
        assert!((p.hearing_nodes - 3.0).abs() < 1e-6, "{}", p.hearing_nodes);
        assert!(close(
            p.cpu_deliveries,
            60_000.0 / f[Id::DeliveriesPerCoreCluster]
        ));
        assert!(close(
            p.cpu_heard,
            20.0 * f[Id::HeardPublicationCpu] / 1e6 * p.hearing_nodes / 3.0
        ));
        assert!((p.redis_messages_per_shard - 20.0 * 4.0).abs() < 1e-3);
        let three_shards = predict(&load, &w, &f, 3, 3).expect("prediction");
        assert!((three_shards.redis_messages_per_shard * 3.0 - 80.0).abs() < 1e-3);
        // 20 publications × (46.4 µs + 2 further nodes × 2 µs), over 3 shards.
        let cpu = 20.0 * (f[Id::RedisPublicationCpu] + 2.0 * 1e6 / f[Id::ShardMessages]) / 1e6;
        assert!((three_shards.redis_cpu_cores_per_shard * 3.0 - cpu).abs() < 1e-6);
    }

    /// Idle connections: the process memory is connections × the measured memory per
    /// connection (the cluster's figure on Redis) plus the base; the kernel's is apart.
    #[test]
    fn idle_memory_per_node() {
        let f = Figures::default();
        let w = Workload::new(57_000.0, 0.0, 100.0, 1.0);
        let load = Load::of(&w, &f);
        let one = predict(&load, &w, &f, 1, 0).expect("prediction");
        assert_eq!(one.engine, Engine::Memory);
        let want = 57_000.0 * f[Id::MemoryPerConnection] / 1024.0 + f[Id::NodeBaseMemory];
        assert!(
            close(one.process_memory_mib, want),
            "{}",
            one.process_memory_mib
        );
        let three = predict(&load, &w, &f, 3, 1).expect("prediction");
        let want = 19_000.0 * f[Id::MemoryPerConnectionCluster] / 1024.0 + f[Id::NodeBaseMemory];
        assert!(
            close(three.process_memory_mib, want),
            "{}",
            three.process_memory_mib
        );
        assert!(close(
            three.kernel_memory_mib,
            19_000.0 * f[Id::KernelPerSocket] / 1024.0
        ));
        assert_eq!(three.cpu_deliveries, 0.0);
    }

    #[test]
    fn topologies_that_cannot_be() {
        let f = Figures::default();
        let w = Workload::new(100.0, 1.0, 100.0, 1.0);
        let load = Load::of(&w, &f);
        assert!(predict(&load, &w, &f, 0, 1).is_err());
        assert!(
            predict(&load, &w, &f, 2, 0).is_err(),
            "two nodes need Redis"
        );
        assert_eq!(
            predict(&load, &w, &f, 1, 1)
                .expect("one node on Redis")
                .engine,
            Engine::Redis
        );
    }
}
