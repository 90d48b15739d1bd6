//! Latency over time: the samples of each second of a run (p50, p99, how many), for
//! the plot ([`crate::plot`]) and the JSON output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::stats::{LatencyShards, Percentiles};

/// The samples of one interval of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// End of the interval, seconds since the sampler started.
    pub at_s: f64,
    /// Length of the interval, seconds (1 but for the last one).
    pub span_s: f64,
    /// Latency percentiles of the deliveries in the interval (µs); `count` of them.
    pub latency: Percentiles,
}

impl Point {
    /// Deliveries per second in the interval.
    pub fn per_s(&self) -> f64 {
        if self.span_s <= 0.0 {
            0.0
        } else {
            self.latency.count as f64 / self.span_s
        }
    }
}

/// The points as a JSON array (`t` seconds, `deliveries`, µs percentiles).
pub fn points_json(points: &[Point]) -> Value {
    points
        .iter()
        .map(|p| {
            json!({"t": (p.at_s * 1000.0).round() / 1000.0, "span": p.span_s,
                   "deliveries": p.latency.count, "p50": p.latency.p50,
                   "p99": p.latency.p99, "max": p.latency.max})
        })
        .collect()
}

/// Takes the samples recorded into a [`LatencyShards`] once a second.
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Point>>,
}

impl Sampler {
    /// Starts sampling `shards` (which only the sampler may [`LatencyShards::take`]).
    pub fn start(shards: Arc<LatencyShards>) -> Sampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = Duration::ZERO;
            let mut points = Vec::new();
            let every = Duration::from_secs(1);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                let last_one = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                let now = started.elapsed();
                let point = Point {
                    at_s: now.as_secs_f64(),
                    span_s: (now - last).as_secs_f64(),
                    latency: Percentiles::of(&shards.take()),
                };
                last = now;
                if last_one {
                    // A last sliver of a second without deliveries says nothing.
                    if point.latency.count > 0 || point.span_s >= 0.5 {
                        points.push(point);
                    }
                    return points;
                }
                points.push(point);
            }
        });
        Sampler { stop, task }
    }

    /// Stops sampling; the points, the last interval included.
    pub async fn finish(self) -> Vec<Point> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_interval_is_kept() {
        let shards = Arc::new(LatencyShards::new(2));
        let sampler = Sampler::start(shards.clone());
        shards.record(0, &[100, 200, 300]);
        shards.record(1, &[1000]);
        // Stopped before the first tick: one point, with every sample.
        let points = sampler.finish().await;
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].latency.count, 4);
        assert_eq!(points[0].latency.max, 1000);
        assert!(points[0].span_s <= points[0].at_s);
        let json = points_json(&points);
        assert_eq!(json[0]["deliveries"], 4);
        assert_eq!(json[0]["max"], 1000);
    }

    #[test]
    fn rate_of_a_point() {
        let p = Point {
            at_s: 2.5,
            span_s: 0.5,
            latency: Percentiles {
                count: 40,
                ..Percentiles::default()
            },
        };
        assert_eq!(p.per_s(), 80.0);
        assert_eq!(Point { span_s: 0.0, ..p }.per_s(), 0.0);
    }
}
