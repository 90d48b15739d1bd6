//! The load tool's results as coefficients (`--from-bench FILE`).
//!
//! What it reads, as `starling-bench` and the scripts write them:
//!
//! - `starling-bench idle --json` (`"scenario": "idle"`): each node's
//!   `rss_delta_per_connection` (bytes) is the memory per connection; one node gives
//!   `memory_per_connection_kib`, several (`--url` repeated: a cluster) give
//!   `memory_per_connection_cluster_kib`. Needs `--server-pid` (else no RSS figure).
//! - `starling-bench fanout --json` (`"scenario": "fanout"`): `deliveries` over the
//!   servers' CPU seconds (`server_cpu[].cpu_s`, measured over the publishing phase with
//!   `--server-pid`) is `deliveries_per_core_s`. With several nodes every node hears every
//!   publication, so `publications.per_s` × (1 + nodes) went through Redis: a lower bound
//!   of what one shard carries (`redis_shard_messages_per_s` is raised to it, never
//!   lowered; one shard unless the line says `"shards": N`).
//! - bench/peers.sh's `runs.jsonl` (one line per run: `server`, `scenario`, `variant`,
//!   `server_cpu_s`, `ok`, `result`): Starling's runs only. `idle` and `fanout` /
//!   `sustained` as above (without a CPU figure in the result, `server_cpu_s` of the whole
//!   run, set-up included: an upper bound per delivery); `http` (wrk, variant `log`):
//!   `result.requests` over `server_cpu_s` is `publishes_per_core_s`.
//! - scripts/cluster-bench.sh's `held.nodes.json` (`rss_kib_before`, `rss_kib_after`,
//!   `starling_connections` per node): `memory_per_connection_cluster_kib`.
//! - `{"figures": {"archive_rows_per_s": 65000, ...}}` (or a list of `{"name", "value"}`,
//!   as `starling capacity --json` prints them): any coefficient by name, for figures the
//!   load tool does not measure (the archive sink's rows/s comes from
//!   `crates/archive/examples/sink_throughput.rs`).
//!
//! A file holds one JSON document, an array of them, or JSON lines (lines that do not
//! start with `{` are skipped, so a captured stderr does no harm). Unknown fields are
//! ignored; a run that gives nothing usable is listed with the reason. Several runs of
//! one figure give their median. Measurable figures a file did not give keep their
//! default, and their source says so.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::CapacityError;
use crate::figures::{Figures, Id, Source, SourceKind};

/// The figures the load tool's results can give.
pub const MEASURABLE: [Id; 5] = [
    Id::MemoryPerConnection,
    Id::MemoryPerConnectionCluster,
    Id::DeliveriesPerCore,
    Id::PublishesPerCore,
    Id::ShardMessages,
];

/// Why a `users` run (or an unknown scenario) gives no coefficient.
const UNUSED: &str = "it mixes publishing and delivery costs, or measures no coefficient";

/// How several observations of one figure combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// A measurement of the figure itself: the median.
    Median,
    /// A lower bound (a run that did not saturate the resource): the largest, and only
    /// if above the figure.
    AtLeast,
    /// Given by name: the last one.
    Given,
}

/// One figure one run gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub id: Id,
    pub value: f64,
    pub combine: Combine,
    /// The run, in words (`line 3: idle, 18,500 connections`).
    pub what: String,
}

/// What one results file gave.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BenchInput {
    /// The file's name.
    pub origin: String,
    pub observations: Vec<Observation>,
    /// Runs that gave nothing, with the reason.
    pub ignored: Vec<String>,
}

/// Reads a results file.
pub fn read(path: &Path) -> Result<BenchInput, CapacityError> {
    let text = crate::read_text(path)?;
    parse(&text, &path.display().to_string())
}

/// Reads results from `text` (named `origin` in sources and errors).
pub fn parse(text: &str, origin: &str) -> Result<BenchInput, CapacityError> {
    let error = |detail: String| CapacityError::BenchInput {
        origin: origin.to_string(),
        detail,
    };
    let mut input = BenchInput {
        origin: origin.to_string(),
        ..BenchInput::default()
    };
    for (place, doc) in documents(text).map_err(error)? {
        observe(&doc, &place, &mut input).map_err(error)?;
    }
    Ok(input)
}

/// The JSON documents of `text`, each with where it is.
fn documents(text: &str) -> Result<Vec<(String, Value)>, String> {
    let trimmed = text.trim();
    if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
        return Ok(match value {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("item {}", i + 1), v))
                .collect(),
            other => vec![("document".to_string(), other)],
        });
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let value = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        docs.push((format!("line {}", i + 1), value));
    }
    if docs.is_empty() {
        return Err(
            "no JSON document: expected the output of `starling-bench ... --json`, \
                    bench/peers.sh's runs.jsonl, or {\"figures\": {...}}"
                .into(),
        );
    }
    Ok(docs)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn text<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(Value::as_str)
}

/// Takes what `doc` gives.
fn observe(doc: &Value, place: &str, input: &mut BenchInput) -> Result<(), String> {
    if let Some(figures) = doc.get("figures") {
        return given(figures, place, input);
    }
    if doc.get("result").is_some() || doc.get("ok").is_some() {
        return run_line(doc, doc.get("result").unwrap_or(&Value::Null), place, input);
    }
    if doc.get("rss_kib_after").is_some() {
        held_node(doc, place, input);
        return Ok(());
    }
    if doc.get("scenario").is_some() {
        bench_doc(doc, place, None, input);
        return Ok(());
    }
    let keys: Vec<&str> = doc
        .as_object()
        .map(|m| m.keys().map(String::as_str).take(6).collect())
        .unwrap_or_default();
    input.ignored.push(format!(
        "{place}: not a result of the load tool (keys: {})",
        keys.join(", ")
    ));
    Ok(())
}

/// `{"figures": {...}}` or `{"figures": [{"name", "value"}, ...]}`.
fn given(figures: &Value, place: &str, input: &mut BenchInput) -> Result<(), String> {
    let mut push = |name: &str, value: Option<f64>| -> Result<(), String> {
        let id = Id::from_name(name)
            .ok_or_else(|| format!("{place}: {}", crate::figures::unknown(name)))?;
        let value = value.ok_or_else(|| format!("{place}: figure `{name}` has no number"))?;
        input.observations.push(Observation {
            id,
            value,
            combine: Combine::Given,
            what: format!("{place}, figure {name}"),
        });
        Ok(())
    };
    match figures {
        Value::Object(map) => {
            for (name, v) in map {
                push(name, num(v).or_else(|| v.get("value").and_then(num)))?;
            }
        }
        Value::Array(items) => {
            for item in items {
                let name = text(item, "name")
                    .ok_or_else(|| format!("{place}: a figure without \"name\""))?;
                push(name, item.get("value").and_then(num))?;
            }
        }
        _ => return Err(format!("{place}: \"figures\" must be an object or a list")),
    }
    Ok(())
}

/// One line of bench/peers.sh's runs.jsonl.
fn run_line(
    doc: &Value,
    result: &Value,
    place: &str,
    input: &mut BenchInput,
) -> Result<(), String> {
    let scenario = text(doc, "scenario").unwrap_or("?");
    if let Some(server) = text(doc, "server").filter(|s| *s != "starling") {
        input
            .ignored
            .push(format!("{place}: {scenario} run of {server} (a peer)"));
        return Ok(());
    }
    if doc.get("ok").and_then(Value::as_bool) == Some(false) {
        input
            .ignored
            .push(format!("{place}: {scenario} run that failed"));
        return Ok(());
    }
    let cpu = doc.get("server_cpu_s").and_then(num);
    match scenario {
        "http" => {
            let variant = text(doc, "variant").unwrap_or("");
            let requests = result.get("requests").and_then(num);
            match (variant, requests, cpu) {
                ("nolog", ..) | ("log-archive", ..) => input.ignored.push(format!(
                    "{place}: HTTP publish, variant {variant} (the figure is with the message \
                     log alone)"
                )),
                (_, Some(r), Some(c)) if r > 0.0 && c > 0.0 => {
                    input.observations.push(Observation {
                        id: Id::PublishesPerCore,
                        value: r / c,
                        combine: Combine::Median,
                        what: format!(
                            "{place}: HTTP publish, {r:.0} requests over {c:.2} s of server CPU"
                        ),
                    })
                }
                _ => input.ignored.push(format!(
                    "{place}: HTTP publish without requests or server_cpu_s"
                )),
            }
        }
        "idle" | "fanout" | "sustained" => {
            let shards = doc.get("shards").and_then(num);
            bench_doc(result, place, Some(RunContext { cpu, shards }), input);
        }
        other => input
            .ignored
            .push(format!("{place}: {other} run (not used: {UNUSED})")),
    }
    Ok(())
}

/// What a runs.jsonl line adds to its bench result.
#[derive(Debug, Clone, Copy)]
struct RunContext {
    /// Server CPU over the whole run, set-up included.
    cpu: Option<f64>,
    shards: Option<f64>,
}

/// A `starling-bench --json` document.
fn bench_doc(doc: &Value, place: &str, context: Option<RunContext>, input: &mut BenchInput) {
    let scenario = text(doc, "scenario").unwrap_or("?");
    if let Some(protocol) = text(doc, "protocol").filter(|p| *p != "starling") {
        input
            .ignored
            .push(format!("{place}: {scenario} run over {protocol} (a peer)"));
        return;
    }
    let nodes = doc
        .get("nodes")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    match scenario {
        "idle" => {
            if let Some(stage) = text(doc, "stage").filter(|s| *s != "subscribe") {
                input.ignored.push(format!(
                    "{place}: idle run at stage {stage} (not subscribed connections)"
                ));
                return;
            }
            let id = if nodes.len() > 1 {
                Id::MemoryPerConnectionCluster
            } else {
                Id::MemoryPerConnection
            };
            let before = input.observations.len();
            for (k, node) in nodes.iter().enumerate() {
                let held = node.get("held").and_then(num).unwrap_or(0.0);
                if let Some(bytes) = node
                    .get("rss_delta_per_connection")
                    .and_then(num)
                    .filter(|b| *b > 0.0)
                {
                    input.observations.push(Observation {
                        id,
                        value: bytes / 1024.0,
                        combine: Combine::Median,
                        what: format!(
                            "{place}: idle, node {k} of {}, {held:.0} connections, {bytes:.0} B each",
                            nodes.len()
                        ),
                    });
                }
            }
            if input.observations.len() == before {
                input.ignored.push(format!(
                    "{place}: idle run without server RSS (run it with --server-pid)"
                ));
            }
        }
        "fanout" => {
            let deliveries = doc.get("deliveries").and_then(num).unwrap_or(0.0);
            let measured: Vec<f64> = doc
                .get("server_cpu")
                .and_then(Value::as_array)
                .map(|procs| {
                    procs
                        .iter()
                        .filter_map(|p| p.get("cpu_s").and_then(num))
                        .collect()
                })
                .unwrap_or_default();
            let (cpu, how) = if measured.is_empty() {
                (
                    context.and_then(|c| c.cpu),
                    "server CPU of the whole run, set-up included: an upper bound per delivery",
                )
            } else {
                (Some(measured.iter().sum()), "server CPU while publishing")
            };
            match cpu {
                Some(cpu) if cpu > 0.0 && deliveries > 0.0 => {
                    input.observations.push(Observation {
                        id: Id::DeliveriesPerCore,
                        value: deliveries / cpu,
                        combine: Combine::Median,
                        what: format!(
                            "{place}: fan-out, {deliveries:.0} deliveries over {cpu:.2} s of {how}"
                        ),
                    })
                }
                _ => input.ignored.push(format!(
                    "{place}: fan-out without server CPU (run it with --server-pid) or \
                     without deliveries"
                )),
            }
            let pubs = doc
                .get("publications")
                .and_then(|p| p.get("per_s"))
                .and_then(num)
                .unwrap_or(0.0);
            if nodes.len() > 1 && pubs > 0.0 {
                let shards = context.and_then(|c| c.shards).unwrap_or(1.0).max(1.0);
                let through = pubs * (1.0 + nodes.len() as f64) / shards;
                input.observations.push(Observation {
                    id: Id::ShardMessages,
                    value: through,
                    combine: Combine::AtLeast,
                    what: format!(
                        "{place}: fan-out over {} nodes, {pubs:.0} publications/s × (1 + {}) \
                         through {shards:.0} shard(s)",
                        nodes.len(),
                        nodes.len()
                    ),
                });
            }
        }
        other => input
            .ignored
            .push(format!("{place}: {other} run (not used: {UNUSED})")),
    }
}

/// A line of scripts/cluster-bench.sh's held.nodes.json.
fn held_node(doc: &Value, place: &str, input: &mut BenchInput) {
    let before = doc.get("rss_kib_before").and_then(num);
    let after = doc.get("rss_kib_after").and_then(num);
    let conns = doc.get("starling_connections").and_then(num);
    match (before, after, conns) {
        (Some(b), Some(a), Some(c)) if c > 0.0 && a > b => input.observations.push(Observation {
            id: Id::MemoryPerConnectionCluster,
            value: (a - b) / c,
            combine: Combine::Median,
            what: format!("{place}: held connections, {c:.0} on a cluster node"),
        }),
        _ => input.ignored.push(format!(
            "{place}: held node without connections or RSS growth"
        )),
    }
}

/// Applies every file's figures to `figures`; returns what was taken and ignored, for
/// the report.
pub fn apply(inputs: &[BenchInput], figures: &mut Figures) -> Result<Vec<String>, CapacityError> {
    let mut notes = Vec::new();
    let mut by_id: BTreeMap<Id, Vec<(&Observation, &str)>> = BTreeMap::new();
    for input in inputs {
        for o in &input.observations {
            by_id.entry(o.id).or_default().push((o, &input.origin));
        }
        for why in &input.ignored {
            notes.push(format!("{}: ignored {why}", input.origin));
        }
    }
    let origins: Vec<&str> = inputs.iter().map(|i| i.origin.as_str()).collect();
    for (&id, list) in &by_id {
        let mut files: Vec<&str> = list.iter().map(|(_, origin)| *origin).collect();
        files.dedup();
        let files = files.join(", ");
        let observed: Vec<&Observation> = list.iter().map(|(o, _)| *o).collect();
        let Some((value, detail)) = combine(&observed, figures[id]) else {
            notes.push(format!(
                "{files}: {} observed below the figure used ({:.0}): kept",
                id.name(),
                figures[id]
            ));
            continue;
        };
        let source = Source {
            kind: SourceKind::Bench,
            text: format!("from {files}: {detail}"),
        };
        figures
            .set(id, value, source)
            .map_err(|e| CapacityError::BenchInput {
                origin: files.clone(),
                detail: e.to_string(),
            })?;
        notes.push(format!("{files}: {} = {}", id.name(), round(value)));
    }
    if !origins.is_empty() {
        for id in MEASURABLE {
            if by_id.contains_key(&id) {
                continue;
            }
            let figure = figures.figure(id);
            if matches!(
                figure.source.kind,
                SourceKind::Measured | SourceKind::Published
            ) {
                let text = figure.source.text.replacen("default: ", "", 1).to_string();
                let kind = figure.source.kind;
                let value = figure.value;
                figures.set(
                    id,
                    value,
                    Source {
                        kind,
                        text: format!("default ({} gave none): {text}", origins.join(", ")),
                    },
                )?;
            }
        }
    }
    Ok(notes)
}

/// One value from several observations of a figure now at `current`: the last one given
/// by name, else the median of the measurements, else the largest lower bound if it is
/// above `current` (`None`: it is not, keep the figure).
fn combine(list: &[&Observation], current: f64) -> Option<(f64, String)> {
    let of = |kind: Combine| -> Vec<&Observation> {
        list.iter().copied().filter(|o| o.combine == kind).collect()
    };
    if let Some(o) = of(Combine::Given).last() {
        return Some((o.value, o.what.clone()));
    }
    let measured = of(Combine::Median);
    if let Some(first) = measured.first() {
        let mut values: Vec<f64> = measured.iter().map(|o| o.value).collect();
        values.sort_by(f64::total_cmp);
        let detail = if measured.len() == 1 {
            first.what.clone()
        } else {
            format!(
                "median of {} runs ({}; first: {})",
                measured.len(),
                short_list(&values),
                first.what
            )
        };
        return Some((median(&values), detail));
    }
    of(Combine::AtLeast)
        .into_iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .filter(|best| best.value > current)
        .map(|best| {
            (
                best.value,
                format!("at least this much went through ({})", best.what),
            )
        })
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn round(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

fn short_list(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().take(5).map(|v| round(*v)).collect();
    let more = if values.len() > 5 { ", ..." } else { "" };
    format!("{}{more}", shown.join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/bench.sh idle`: `starling-bench idle --server-pid PID --json`, one node
    /// (fields as crates/bench/src/idle.rs writes them).
    const IDLE: &str = r#"{"scenario":"idle","protocol":"starling","stage":"subscribe","shared_channel":true,"pipeline":false,"deflate":false,"connect_rate":{"first":10000,"seconds":0.58,"per_s":17241.0},"connections":10000,"ready":10000,"failed":0,"dropped":0,"held":10000,"setup_s":0.63,"nodes":[{"url":"ws://127.0.0.1:40001/connection/websocket","held":10000,"server_connections":10000.0,"server_subscriptions":20000.0,"server_channels":10001.0,"rss_before":8912896,"rss_after":24272896,"rss_settled":true,"rss_delta_per_connection":1536}]}"#;

    /// `starling-bench fanout --server-pid PID --json` (crates/bench/src/fanout.rs).
    const FANOUT: &str = r#"{"scenario":"fanout","protocol":"starling","channel":"bench:fanout","subscribers":10000,"messages":100,"rate":10,"subscribed":10000,"setup_failed":0,"complete":true,"stopped":false,"failed":0,"publish_urls":["127.0.0.1:40001"],"publications":{"sent":100,"accepted":100,"refused":0,"per_s":10.0},"expected":1000000,"deliveries":1000000,"missing":0,"gaps":0,"out_of_order":0,"duration_s":10.2,"deliveries_per_s":98039.0,"latency_us":{"count":1000000,"p50":38000,"p90":60000,"p99":79000,"p999":90000,"max":120000},"nodes":[{"url":"ws://127.0.0.1:40001/connection/websocket","publishes":100,"subscribed":10000,"deliveries":1000000,"deliveries_per_s":98039.0,"latency_us":{"count":1000000,"p50":38000,"p90":60000,"p99":79000,"p999":90000,"max":120000}}],"server_cpu":[{"pid":4242,"cpu_s":5.0,"percent_of_core":49.0}],"timeline":[]}"#;

    /// bench/peers.sh's runs.jsonl (bench/peers/summarize.py record: sorted keys).
    const RUNS: &str = r#"{"exit": 0, "ok": true, "result": {"connect_rate": {"first": 10000, "per_s": 18970.0, "seconds": 0.527}, "connections": 18500, "failed": 0, "held": 18500, "nodes": [{"held": 18500, "rss_delta_per_connection": 1492, "url": "ws://127.0.0.1:41000/connection/websocket"}], "protocol": "starling", "scenario": "idle", "stage": "subscribe"}, "run": 1, "scenario": "idle", "server": "starling", "server_cpu_s": 1.28, "variant": ""}
{"exit": 0, "ok": true, "result": {"connections": 18500, "nodes": [{"held": 18500, "rss_delta_per_connection": 1500}], "protocol": "starling", "scenario": "idle"}, "run": 2, "scenario": "idle", "server": "starling", "server_cpu_s": 1.29, "variant": ""}
{"exit": 0, "ok": true, "result": {"connections": 18500, "nodes": [{"held": 18500, "rss_delta_per_connection": 1505}], "protocol": "starling", "scenario": "idle"}, "run": 3, "scenario": "idle", "server": "starling", "server_cpu_s": 1.03, "variant": ""}
{"exit": 0, "ok": true, "result": {"connections": 18500, "nodes": [{"held": 18500, "rss_delta_per_connection": 12318}], "protocol": "nchan", "scenario": "idle"}, "run": 1, "scenario": "idle", "server": "nchan", "server_cpu_s": 1.0, "variant": ""}
{"exit": 0, "ok": true, "result": {"latency_p50_ms": 0.41, "latency_p99_ms": 2.1, "non_2xx": 0, "requests": 1369870, "requests_per_s": 136987.0, "socket_errors": 0}, "run": 1, "scenario": "http", "server": "starling", "server_cpu_s": 13.5, "variant": "log"}
{"exit": 0, "ok": true, "result": {"requests": 1455810, "requests_per_s": 145581.0}, "run": 1, "scenario": "http", "server": "starling", "server_cpu_s": 12.0, "variant": "nolog"}
{"exit": 0, "ok": true, "rate": 100, "result": {"deliveries": 10000000, "nodes": [{"deliveries": 10000000}], "protocol": "starling", "publications": {"per_s": 100.0}, "scenario": "fanout", "server_cpu": []}, "run": 1, "scenario": "fanout", "server": "starling", "server_cpu_s": 11.3, "variant": ""}
{"error": "exit 124: timeout", "exit": 124, "ok": false, "run": 2, "scenario": "fanout", "server": "starling", "server_cpu_s": 0.5, "variant": ""}
{"exit": 0, "ok": true, "result": {"delivered": 200000, "scenario": "users"}, "run": 1, "scenario": "users", "server": "starling", "server_cpu_s": 5.34, "variant": ""}
"#;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn an_idle_result_gives_the_memory_per_connection() {
        let input = parse(IDLE, "idle.json").expect("parse");
        assert_eq!(input.observations.len(), 1);
        let o = &input.observations[0];
        assert_eq!(o.id, Id::MemoryPerConnection);
        assert_eq!(o.value, 1.5, "1,536 B");
        let mut f = Figures::default();
        let notes = apply(&[input], &mut f).expect("apply");
        assert_eq!(f[Id::MemoryPerConnection], 1.5);
        let source = &f.figure(Id::MemoryPerConnection).source;
        assert_eq!(source.kind, SourceKind::Bench);
        assert!(
            source.text.starts_with("from idle.json: document: idle"),
            "{source}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("memory_per_connection_kib = 1.500"))
        );
        // What the file did not give keeps its default, and says so.
        let kept = &f.figure(Id::DeliveriesPerCore).source.text;
        assert!(
            kept.starts_with("default (idle.json gave none): docs/SCALING.md"),
            "{kept}"
        );
        assert!(close(f[Id::DeliveriesPerCore], 181_272.0));
        // Assumptions are not the load tool's to give: untouched.
        assert!(
            f.figure(Id::NodeCores)
                .source
                .text
                .starts_with("assumption:")
        );
    }

    #[test]
    fn a_fanout_result_gives_deliveries_per_core() {
        let input = parse(FANOUT, "fanout.json").expect("parse");
        let mut f = Figures::default();
        apply(&[input], &mut f).expect("apply");
        assert_eq!(
            f[Id::DeliveriesPerCore],
            200_000.0,
            "1,000,000 over 5 s of CPU"
        );
        assert!(
            f.figure(Id::DeliveriesPerCore)
                .source
                .text
                .contains("server CPU while publishing")
        );
        // One node: nothing said about Redis.
        assert_eq!(f[Id::ShardMessages], 500_000.0);
    }

    #[test]
    fn a_cluster_fanout_is_a_lower_bound_for_a_shard() {
        let mut doc: Value = serde_json::from_str(FANOUT).expect("json");
        let node = doc["nodes"][0].clone();
        doc["nodes"] = Value::Array(vec![node.clone(), node.clone(), node]);
        doc["publications"]["per_s"] = 200_000.0.into();
        let input = parse(&doc.to_string(), "cluster.json").expect("parse");
        let shard = input
            .observations
            .iter()
            .find(|o| o.id == Id::ShardMessages)
            .expect("shard");
        assert_eq!(shard.value, 800_000.0, "200,000 × (1 + 3 nodes)");
        assert_eq!(shard.combine, Combine::AtLeast);
        let mut f = Figures::default();
        apply(std::slice::from_ref(&input), &mut f).expect("apply");
        assert_eq!(f[Id::ShardMessages], 800_000.0, "raised");
        // Below the figure it changes nothing.
        let mut f = Figures::default();
        f.set_from_arg("redis_shard_messages_per_s=900000")
            .expect("set");
        let notes = apply(&[input], &mut f).expect("apply");
        assert_eq!(f[Id::ShardMessages], 900_000.0);
        assert!(notes.iter().any(|n| n.contains("kept")), "{notes:?}");
    }

    #[test]
    fn runs_jsonl_takes_starlings_runs_and_says_what_it_ignored() {
        let input = parse(RUNS, "runs.jsonl").expect("parse");
        let mut f = Figures::default();
        let notes = apply(&[input], &mut f).expect("apply");
        // Median of 1,492 / 1,500 / 1,505 B; nchan's 12,318 B is not Starling's.
        assert!(close(f[Id::MemoryPerConnection], 1500.0 / 1024.0));
        let text = &f.figure(Id::MemoryPerConnection).source.text;
        assert!(text.contains("median of 3 runs"), "{text}");
        // 1,369,870 requests over 13.5 s of server CPU; the nolog run is not used.
        assert!(close(f[Id::PublishesPerCore], 1_369_870.0 / 13.5));
        // The fan-out without a CPU figure of its own: the run's server CPU.
        assert!(close(f[Id::DeliveriesPerCore], 10_000_000.0 / 11.3));
        assert!(
            f.figure(Id::DeliveriesPerCore)
                .source
                .text
                .contains("set-up included")
        );
        for why in [
            "nchan (a peer)",
            "variant nolog",
            "that failed",
            "users run",
        ] {
            assert!(notes.iter().any(|n| n.contains(why)), "{why}: {notes:?}");
        }
    }

    #[test]
    fn held_nodes_and_given_figures() {
        let held = "{\"node\":0,\"port\":4000,\"starling_connections\":19000,\"rss_kib_before\":8400,\"rss_kib_after\":74900,\"settled\":true}\n\
                    {\"node\":1,\"port\":4001,\"starling_connections\":19000,\"rss_kib_before\":8300,\"rss_kib_after\":74800,\"settled\":true}\n";
        let given = r#"{"figures": {"archive_rows_per_s": 65000, "node_cores": {"value": 16}}}"#;
        let inputs = [
            parse(held, "held.nodes.json").expect("held"),
            parse(given, "figures.json").expect("given"),
        ];
        let mut f = Figures::default();
        apply(&inputs, &mut f).expect("apply");
        assert!(close(
            f[Id::MemoryPerConnectionCluster],
            66_500.0 / 19_000.0
        ));
        assert_eq!(f[Id::ArchiveRows], 65_000.0);
        assert_eq!(f[Id::NodeCores], 16.0);
        assert!(
            f.figure(Id::ArchiveRows)
                .source
                .text
                .starts_with("from figures.json")
        );
        // A figure given by name wins over a measurement of it.
        let inputs = [
            parse(IDLE, "idle.json").expect("idle"),
            parse(r#"{"figures": {"memory_per_connection_kib": 2}}"#, "f.json").expect("f"),
        ];
        let mut f = Figures::default();
        apply(&inputs, &mut f).expect("apply");
        assert_eq!(f[Id::MemoryPerConnection], 2.0);
        // The report's own JSON list of figures reads back too.
        let listed = r#"{"figures": [{"name": "nic_gbps", "value": 25, "unit": "Gbit/s"}]}"#;
        let mut f = Figures::default();
        apply(&[parse(listed, "report.json").expect("list")], &mut f).expect("apply");
        assert_eq!(f[Id::Nic], 25.0);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_place() {
        let e = parse("", "empty.json").expect_err("empty");
        assert!(
            e.to_string().starts_with("empty.json: no JSON document"),
            "{e}"
        );
        let e = parse("starting\n{\"scenario\": \"idle\",\n", "cut.json").expect_err("cut");
        assert!(e.to_string().contains("cut.json: line 2: not JSON"), "{e}");
        let e = parse(r#"{"figures": {"node_core": 4}}"#, "typo.json").expect_err("name");
        assert!(e.to_string().contains("unknown figure `node_core`"), "{e}");
        let e = parse(r#"{"figures": {"node_cores": "many"}}"#, "f.json").expect_err("value");
        assert!(e.to_string().contains("has no number"), "{e}");
        let input = parse(r#"{"figures": {"node_cores": -4}}"#, "neg.json").expect("parses");
        let e = apply(&[input], &mut Figures::default()).expect_err("negative");
        assert!(
            e.to_string()
                .starts_with("neg.json: figure node_cores must be"),
            "{e}"
        );
        // A document of no known kind is ignored, not an error; human lines are skipped.
        let input = parse("progress 10%\n{\"hello\": 1}\n", "other.json").expect("parse");
        assert!(input.observations.is_empty());
        assert!(
            input.ignored[0].contains("keys: hello"),
            "{:?}",
            input.ignored
        );
        // An idle run without --server-pid has no RSS: said, not guessed.
        let no_rss =
            r#"{"scenario":"idle","protocol":"starling","nodes":[{"held":19000,"url":"ws://a"}]}"#;
        let input = parse(no_rss, "held.0.json").expect("parse");
        assert!(
            input.ignored[0].contains("--server-pid"),
            "{:?}",
            input.ignored
        );
    }
}
