//! Metrics as Prometheus and Grafana see them: the exposition follows the conventions
//! (every family with `# HELP` and `# TYPE`, `_total` counters, histograms in base
//! units with cumulative buckets), the dashboard in `deploy/grafana/` queries only
//! metrics a node exposes (a single node, or a cluster node for the cluster-only ones),
//! and the latency histograms and recovery outcomes move with the traffic.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Client, Server};
use serde_json::{Value, json};
use starling_testkit::redis::RedisServer;

/// A single node with a history namespace `chat`, a small queue (so that a recovery can
/// be too large) and no command rate limit.
const SINGLE: &[&str] = &[
    "--dev",
    "--set",
    "namespaces.chat.history_size=1000",
    "--set",
    "websocket.max_message_size=1024",
    "--set",
    "client.max_queue_bytes=4096",
    "--set",
    "client.command_rate=0",
];

/// The families of one `/metrics` text: name -> type, after checking the conventions.
type Families = BTreeMap<String, String>;

/// Parses a Prometheus text exposition, asserts the conventions every family must follow
/// and returns the families.
fn families(text: &str) -> Families {
    let mut types = Families::new();
    let mut helps = BTreeSet::new();
    let mut sampled = BTreeSet::new();
    // (histogram series without `le`) -> (last cumulative bucket, +Inf bucket seen)
    let mut buckets: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            assert!(helps.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                helps.contains(name),
                "TYPE before HELP (or no HELP) for {name}"
            );
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{name}: type {kind}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice for {name}"
            );
            assert!(
                name.starts_with("starling_")
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}: not a starling_ snake_case name"
            );
            match kind {
                "counter" => assert!(name.ends_with("_total"), "counter {name} without _total"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge {name} named _total"),
                _ => assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "histogram {name} not in a base unit"
                ),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        if line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().expect("name");
        let family = types
            .get(name)
            .map(|_| name)
            .or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base)? == "histogram").then_some(base)
                })
            })
            .unwrap_or_else(|| panic!("sample {line} before its TYPE"));
        if types[family] == "histogram" && family != name {
            let labels = series
                .strip_prefix(name)
                .unwrap_or_default()
                .trim_start_matches('{')
                .trim_end_matches('}');
            if name.ends_with("_bucket") {
                let (rest, le) = labels.rsplit_once("le=").expect("le last");
                let key = format!("{family}{{{}}}", rest.trim_end_matches(','));
                let n = value as u64;
                let entry = buckets.entry(key.clone()).or_insert((0, None));
                assert!(n >= entry.0, "{key}: buckets not cumulative at {le}");
                assert!(entry.1.is_none(), "{key}: a bucket after +Inf");
                entry.0 = n;
                if le == "\"+Inf\"" {
                    entry.1 = Some(n);
                }
            } else if name.ends_with("_count") {
                counts.insert(format!("{family}{{{labels}}}"), value as u64);
            }
        }
        sampled.insert(name.to_string());
    }
    for name in types.keys() {
        assert!(
            sampled.contains(name) || sampled.contains(&format!("{name}_count")),
            "{name} has no sample"
        );
    }
    for (series, (_, inf)) in &buckets {
        let inf = inf.unwrap_or_else(|| panic!("{series} has no +Inf bucket"));
        assert_eq!(
            counts.get(series),
            Some(&inf),
            "{series}: _count is not +Inf"
        );
    }
    types
}

/// Every PromQL query of the dashboard: panel targets' `expr`, template variables'
/// queries, wherever they nest (collapsed rows hold their panels).
fn queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(v, Some(k), out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
                out.push(s.clone());
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, None, &mut out);
    out
}

/// The metric names a PromQL expression reads: identifiers outside string literals that
/// start with `starling_` (functions, keywords, label names and `$variables` never do).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut flush = |word: &mut String| {
        if word.starts_with("starling_") {
            names.insert(std::mem::take(word));
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word);
                // Skip the string literal (backslash escapes, except in raw strings).
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '$' => {
                // A Grafana variable (`$instance`, `$__rate_interval`) is not a name.
                flush(&mut word);
                while chars.peek().is_some_and(|d| ident(*d)) {
                    chars.next();
                }
            }
            c if ident(c) => word.push(c),
            _ => flush(&mut word),
        }
    }
    flush(&mut word);
    names
}

/// The metric names the dashboard queries that no family in `exposed` provides: a
/// histogram's `_bucket`, `_sum` and `_count` belong to it.
fn missing(dashboard: &Value, exposed: &Families) -> BTreeSet<String> {
    let provided = |name: &str| {
        exposed.get(name).is_some_and(|kind| kind != "histogram")
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| exposed.get(base).is_some_and(|k| k == "histogram"))
            })
    };
    queries(dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|name| !provided(name))
        .collect()
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/starling.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of the sample `series` (name with its labels, as rendered) in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
}

async fn metrics(server: &Server) -> String {
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    text
}

/// Subscribes `c` to `channel`, recovering from `(offset, epoch)` when given.
async fn subscribe(c: &mut Client, channel: &str, recover: Option<(u64, &str)>) -> Value {
    let mut params = json!({"channel": channel});
    if let Some((offset, epoch)) = recover {
        params["recover"] = true.into();
        params["offset"] = offset.into();
        params["epoch"] = epoch.into();
    }
    let reply = c.call("subscribe", params).await;
    reply
        .get("subscribe")
        .unwrap_or_else(|| panic!("subscribe failed: {reply}"))
        .clone()
}

/// Some of everything the dashboard shows: subscribes, API and client publishes, a
/// recovery.
async fn traffic(server: &Server) {
    let (mut sub, _) = Client::connect(server, None).await;
    let reply = subscribe(&mut sub, "chat:room", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    let (status, body) = server
        .api("publish", json!({"channel": "chat:room", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    // From another client: `call` skips the pushes that come before its reply.
    let (mut publisher, _) = Client::connect(server, None).await;
    let reply = publisher
        .call("publish", json!({"channel": "chat:room", "data": {"n": 2}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    sub.next_publication().await;
    sub.next_publication().await;
    let (mut back, _) = Client::connect(server, None).await;
    let reply = subscribe(&mut back, "chat:room", Some((0, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
}

#[test]
fn promql_names_are_found_outside_strings_and_variables() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(starling_x_seconds_bucket{instance=~\"$instance\",a=\"starling_no\"}[$__rate_interval]))) / on() starling_y_total"
        ),
        ["starling_x_seconds_bucket", "starling_y_total"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

/// Every metric the dashboard queries exists on a single node (with the message log)
/// or on a cluster node (the cluster-only ones), and a panel with a misspelt metric
/// would be caught.
#[tokio::test]
async fn the_dashboard_queries_only_metrics_that_exist() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(39),
        "schemaVersion"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for name in ["instance", "namespace"] {
        assert!(variables.contains(&name), "variable {name}: {variables:?}");
    }
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        ["Overview", "Connections", "Traffic", "API", "Errors"]
    );

    let single = Server::start(SINGLE);
    traffic(&single).await;
    let mut exposed = families(&metrics(&single).await);
    let redis = RedisServer::start();
    let node = Server::start(&["--dev", "--redis", &redis.url(), "--set", "server.name=g"]);
    traffic(&node).await;
    let text = metrics(&node).await;
    let cluster = families(&text);
    // In a cluster the publish is accepted by Redis (the session's pending step) and
    // the recovery comes from the replica: counted the same way. `chat` is not
    // configured there: dev mode's own `chat` (its demo chat's namespace).
    let other = "namespace=\"chat\"";
    for source in ["api", "client"] {
        let series =
            format!("starling_publish_duration_seconds_count{{{other},source=\"{source}\"}}");
        assert_eq!(sample(&text, &series), 1.0, "{series}");
    }
    assert_eq!(
        sample(
            &text,
            &format!("starling_recoveries_total{{{other},outcome=\"recovered\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("starling_broadcast_duration_seconds_count{{{other}}}")
        ),
        2.0
    );
    let cluster_only: BTreeSet<String> = cluster
        .keys()
        .filter(|name| !exposed.contains_key(*name))
        .cloned()
        .collect();
    assert!(
        cluster_only.contains("starling_cluster_broker_up"),
        "{cluster_only:?}"
    );
    exposed.extend(cluster);

    let queried: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    assert!(queried.len() > 40, "the dashboard's metrics: {queried:?}");
    let absent = missing(&dashboard, &exposed);
    assert!(
        absent.is_empty(),
        "the dashboard queries metrics no node exposes: {absent:?}"
    );

    // The same check fails on a panel with a misspelt metric.
    let mut typo = dashboard.clone();
    typo["panels"]
        .as_array_mut()
        .expect("panels")
        .push(json!({"type": "timeseries", "targets": [{"expr": "sum(rate(starling_conections_accepted_total[5m]))"}]}));
    assert_eq!(
        missing(&typo, &exposed),
        BTreeSet::from(["starling_conections_accepted_total".to_string()])
    );
}

/// The latency histograms and the per-namespace counters move with publications, and
/// recoveries are counted by outcome.
#[tokio::test]
async fn publish_histograms_and_recovery_outcomes_move() {
    const API: u64 = 5;
    const CLIENT: u64 = 3;
    let server = Server::start(SINGLE);
    let before = metrics(&server).await;
    families(&before);
    let (mut sub, _) = Client::connect(&server, None).await;
    let reply = subscribe(&mut sub, "chat:room", None).await;
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    let (mut publisher, _) = Client::connect(&server, None).await;
    let mut bytes = 0;
    for i in 0..API {
        let data = json!({"api": i});
        bytes += data.to_string().len();
        let (status, body) = server
            .api("publish", json!({"channel": "chat:room", "data": data}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..CLIENT {
        let data = json!({"client": i});
        bytes += data.to_string().len();
        let reply = publisher
            .call("publish", json!({"channel": "chat:room", "data": data}))
            .await;
        assert!(reply.get("publish").is_some(), "{reply}");
    }
    // An unconfigured namespace (dev mode opens it) is counted under `:other`.
    let (status, _) = server
        .api("publish", json!({"channel": "news:x", "data": 1}))
        .await;
    assert_eq!(status, 200);
    for _ in 0..API + CLIENT {
        sub.next_publication().await;
    }

    // Recovered (from offset 2), not recovered (another epoch), too large (every
    // publication since 0 with 800 bytes each passes half of the 4 KiB queue).
    let (mut back, _) = Client::connect(&server, None).await;
    let reply = subscribe(&mut back, "chat:room", Some((2, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let (mut stranger, _) = Client::connect(&server, None).await;
    let reply = subscribe(&mut stranger, "chat:room", Some((2, "another-epoch"))).await;
    assert_ne!(reply["recovered"], true, "{reply}");
    for _ in 0..6 {
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "chat:room", "data": "x".repeat(800)}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (mut late, _) = Client::connect(&server, None).await;
    let reply = subscribe(&mut late, "chat:room", Some((0, &epoch))).await;
    assert_ne!(reply["recovered"], true, "{reply}");

    let after = metrics(&server).await;
    families(&after);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    let chat = "namespace=\"chat\"";
    assert_eq!(
        moved(&format!(
            "starling_publish_duration_seconds_count{{{chat},source=\"api\"}}"
        )),
        (API + 6) as f64
    );
    assert_eq!(
        moved(&format!(
            "starling_publish_duration_seconds_count{{{chat},source=\"client\"}}"
        )),
        CLIENT as f64
    );
    assert_eq!(
        sample(
            &after,
            &format!(
                "starling_publish_duration_seconds_bucket{{{chat},source=\"client\",le=\"+Inf\"}}"
            )
        ),
        CLIENT as f64
    );
    assert!(
        moved(&format!(
            "starling_publish_duration_seconds_sum{{{chat},source=\"api\"}}"
        )) > 0.0
    );
    // Every publication to chat:room had a local subscriber: one fan-out each.
    assert_eq!(
        moved(&format!(
            "starling_broadcast_duration_seconds_count{{{chat}}}"
        )),
        (API + CLIENT + 6) as f64
    );
    assert_eq!(
        moved(&format!("starling_namespace_publications_total{{{chat}}}")),
        (API + CLIENT + 6) as f64
    );
    assert_eq!(
        moved(&format!("starling_namespace_bytes_total{{{chat}}}")),
        (bytes + 6 * 802) as f64
    );
    assert_eq!(
        moved("starling_namespace_publications_total{namespace=\":other\"}"),
        1.0
    );
    // Nobody listens on news:x: no fan-out to time.
    assert_eq!(
        moved("starling_broadcast_duration_seconds_count{namespace=\":other\"}"),
        0.0
    );
    assert_eq!(
        moved("starling_namespace_publications_total{namespace=\"default\"}"),
        0.0
    );
    for (outcome, n) in [
        ("recovered", 1.0),
        ("not_recovered", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            moved(&format!(
                "starling_recoveries_total{{{chat},outcome=\"{outcome}\"}}"
            )),
            n,
            "{outcome}"
        );
    }
    // The older, unlabelled counter still counts the same too-large recoveries.
    assert_eq!(moved("starling_recoveries_too_large_total"), 1.0);
    let build = after
        .lines()
        .find(|l| l.starts_with("starling_build_info{"))
        .expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.contains("rustc=\"")
            && build.ends_with("} 1"),
        "{build}"
    );
}
