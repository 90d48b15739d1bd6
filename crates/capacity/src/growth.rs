//! The growth table: the same per-user workload at 100, 10,000, 1 million and 100
//! million users, side by side, in the source analysis's columns (users, connections,
//! server load, network traffic, data storage) with the first resource to run out.

use serde::{Deserialize, Serialize};

use crate::CapacityError;
use crate::figures::Figures;
use crate::load::{DAY, Load};
use crate::plan::{Engine, Resource, plan};
use crate::workload::Workload;

/// The scales of the source analysis's table.
pub const SCALES: [f64; 4] = [100.0, 10_000.0, 1_000_000.0, 100_000_000.0];

/// One row: one number of users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrowthRow {
    pub users: f64,
    pub connections: f64,
    pub publications_per_s: f64,
    pub deliveries_per_s: f64,
    pub engine: Engine,
    pub nodes: u64,
    /// Cores busy over all nodes.
    pub cores_used: f64,
    pub shards: u64,
    pub balancers: u64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    /// The data alone, per day (the source analysis's "logs").
    pub payload_per_day: f64,
    /// The message log's writes per day (a single node's log, or a cluster's archive
    /// journals when it archives; a cluster that does not archive keeps none).
    pub log_per_day: Option<f64>,
    /// The archive's growth per day, when it is on.
    pub archive_per_day: Option<f64>,
    /// The first resource to run out, its utilization and headroom.
    pub bottleneck: Resource,
    pub utilization: f64,
    pub headroom: Option<f64>,
    pub feasible: bool,
}

/// The rows for `scales` users, the rest of `w` unchanged.
pub fn growth(w: &Workload, f: &Figures, scales: &[f64]) -> Result<Vec<GrowthRow>, CapacityError> {
    scales
        .iter()
        .map(|&users| {
            let w = w.with_users(users);
            w.validate()?;
            let load = Load::of(&w, f);
            let plan = plan(&load, &w, f)?;
            let first = plan.first();
            let cores_used = plan
                .usage(Resource::NodeCpu)
                .map_or(0.0, |u| u.used * plan.nodes as f64);
            Ok(GrowthRow {
                users,
                connections: load.connections,
                publications_per_s: load.publications_per_s,
                deliveries_per_s: load.deliveries_per_s,
                engine: plan.engine,
                nodes: plan.nodes,
                cores_used,
                shards: plan.shards,
                balancers: plan.balancers,
                bytes_in_per_s: load.bytes_in_per_s,
                bytes_out_per_s: load.bytes_out_per_s,
                payload_per_day: load.payload_in_per_s * DAY,
                log_per_day: (plan.engine == Engine::Memory || plan.archive.is_some())
                    .then_some(load.log_bytes_per_s * DAY),
                archive_per_day: plan.archive.as_ref().map(|a| a.bytes_per_day),
                bottleneck: plan.bottleneck,
                utilization: first.map_or(0.0, |u| u.utilization),
                headroom: first.and_then(|u| u.headroom),
                feasible: plan.feasible,
            })
        })
        .collect()
}

/// Users from 100 to 100 million, four points a decade (the plot).
pub fn plot_scales() -> Vec<f64> {
    (0..=24)
        .map(|i| 100.0 * 10f64.powf(i as f64 / 4.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source analysis's table with Starling's figures: 1 KB at 1 message/s each.
    #[test]
    fn the_rows_of_the_source_analysis() {
        let f = Figures::default();
        let rows = growth(&Workload::new(1.0, 1.0, 1024.0, 1.0), &f, &SCALES).expect("rows");
        assert_eq!(rows.len(), 4);
        let users: Vec<f64> = rows.iter().map(|r| r.users).collect();
        assert_eq!(users, vec![100.0, 1e4, 1e6, 1e8]);
        for r in &rows {
            assert_eq!(r.connections, r.users);
            assert_eq!(r.publications_per_s, r.users);
            assert_eq!(r.deliveries_per_s, r.users);
            assert_eq!(r.payload_per_day, r.users * 1024.0 * DAY);
            assert!(r.feasible, "{r:?}");
        }
        // 100 and 10,000 users: one node; 1M and 100M: a cluster through Redis.
        assert_eq!(rows[0].engine, Engine::Memory);
        assert_eq!(rows[1].engine, Engine::Memory);
        assert_eq!((rows[1].nodes, rows[1].shards), (1, 0));
        assert!(rows[1].log_per_day.is_some());
        assert_eq!(rows[2].engine, Engine::Redis);
        assert_eq!((rows[2].nodes, rows[2].shards), (14, 72));
        assert!(rows[2].log_per_day.is_none(), "a cluster keeps no log");
        assert_eq!(rows[2].bottleneck, Resource::ShardCpu);
        assert!(rows[3].nodes > 100 * rows[2].nodes - 100, "roughly linear");
        assert!(rows.windows(2).all(|p| p[0].nodes <= p[1].nodes));
        // 10,000 users: 0.45 cores, 10.2 MB/s of payload in.
        assert!(
            (rows[1].cores_used - 0.452).abs() < 0.001,
            "{}",
            rows[1].cores_used
        );
        assert_eq!(rows[1].bottleneck, Resource::NodeCpu);
    }

    #[test]
    fn a_bad_scale_is_refused() {
        let f = Figures::default();
        let w = Workload::new(1.0, 1.0, 1024.0, 1.0);
        assert!(growth(&w, &f, &[0.0]).is_err());
        assert_eq!(plot_scales().first(), Some(&100.0));
        let last = plot_scales().last().copied().unwrap_or(0.0);
        assert!((last - 1e8).abs() < 1.0, "{last}");
    }
}
