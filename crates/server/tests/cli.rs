//! The command-line tools beside `serve`, run as the real binary: `genconfig`,
//! `checkconfig`, `gentoken`, `gensubtoken`, `checktoken`, `version`, `capacity`.

mod common;

use std::process::{Command, Output};

use common::{Client, SECRET, Server};
use serde_json::json;

fn starling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .env_remove("STARLING_CLIENT_TOKEN_HMAC_SECRET")
        .output()
        .expect("run starling")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn genconfig_writes_a_valid_config_with_fresh_secrets_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("starling.toml");
    let file = path.to_str().expect("utf-8 path");
    let o = starling(&["genconfig", "--output", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "secrets are not world-readable");
    }
    let first = std::fs::read_to_string(&path).expect("read");

    let o = starling(&["genconfig", "--output", file]);
    assert_eq!(o.status.code(), Some(2), "no silent overwrite");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = starling(&["genconfig", "--output", file, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read_to_string(&path).expect("read"), first);

    let o = starling(&["checkconfig", "--config", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("configuration OK"), "{}", stdout(&o));

    // A token made from the file verifies against the file, and not against another secret.
    let o = starling(&["gentoken", "--config", file, "--user", "42", "--ttl", "10m"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o);
    let o = starling(&["checktoken", "--config", file, &token]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("valid connection token for user \"42\", expires in"),
        "{}",
        stdout(&o)
    );
    let o = starling(&[
        "checktoken",
        "--config",
        file,
        "--set",
        "client.token_hmac_secret=\"another\"",
        &token,
    ]);
    assert_eq!(o.status.code(), Some(1), "refused");
    assert!(
        stdout(&o).starts_with("refused: invalid token"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn checkconfig_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8000\"\nlisen = 1\n").expect("write");
    let o = starling(&["checkconfig", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lisen"), "{}", stderr(&o));
    let o = starling(&["checkconfig", "--set", "admin.enabled=true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("admin.password"), "{}", stderr(&o));
    let o = starling(&["gentoken", "--user", "u"]);
    assert_eq!(o.status.code(), Some(2), "no secret to sign with");
    assert!(
        stderr(&o).contains("client.token_hmac_secret"),
        "{}",
        stderr(&o)
    );
    let o = starling(&["gentoken", "--user", "u", "--ttl", "soon"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn version_prints_the_package_version_commit_and_compiler() {
    let o = starling(&["version"]);
    assert!(o.status.success());
    let line = stdout(&o);
    let head = format!("starling {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&head), "{line}");
    assert!(line.contains(", rustc "), "{line}");
}

/// The tokens the tools make open a real node: a connection token with a channel list,
/// and a subscription token for a private channel.
#[tokio::test]
async fn minted_tokens_open_a_real_node() {
    let server = Server::start(&["--set", "namespaces.secret.private=true"]);
    let secret = format!("client.token_hmac_secret=\"{SECRET}\"");
    let o = starling(&[
        "gentoken",
        "--set",
        &secret,
        "--user",
        "ann",
        "--channels",
        "news,secret:plans",
        "--info",
        r#"{"name":"Ann"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut c, reply) = Client::connect(&server, Some(&stdout(&o))).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let r = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = c.call("subscribe", json!({"channel": "other"})).await;
    assert_eq!(r["error"]["code"], 103, "not in the token's list: {r}");

    let o = starling(&[
        "gensubtoken",
        "--set",
        &secret,
        "--user",
        "ann",
        "--channel",
        "secret:plans",
        "--ttl",
        "5m",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sub = stdout(&o);
    let r = c
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": sub}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let o = starling(&["checktoken", "--set", &secret, &sub]);
    assert!(
        stdout(&o)
            .starts_with("valid subscription token for user \"ann\" on channel \"secret:plans\""),
        "{}",
        stdout(&o)
    );
}

/// The source analysis's example: 10,000 users, 1 publication/s each of 1 KB.
const EXAMPLE: [&str; 7] = [
    "capacity",
    "--users",
    "10000",
    "--msg-rate",
    "1",
    "--msg-size",
    "1024",
];

fn capacity(extra: &[&str]) -> Output {
    let mut args = EXAMPLE.to_vec();
    args.extend_from_slice(extra);
    starling(&args)
}

#[test]
fn capacity_plans_the_source_analysis_example() {
    let o = capacity(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for expected in [
        "Capacity plan: 10,000 users × 1 publication/s × 1,024 B, fan-out 1, JSON",
        "\nLoad\n",
        "\nWhat it takes\n",
        "\nFirst bottleneck",
        "\nGrowth table",
        "10,000/s",
        "10.2 MB/s",
        "36.9 GB/h",
        "node CPU runs out first",
        "default: docs/BENCHMARKS.md",
        "assumption: a production node (--node-cores)",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    // One node on the memory engine, no Redis.
    // The value after a row's name ("  Starling nodes    1    memory engine ...").
    let field = |name: &str| {
        let line = text.lines().find_map(|l| l.trim_start().strip_prefix(name));
        line.and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(field("Starling nodes"), "1", "{text}");
    assert_eq!(field("Redis shards"), "0", "{text}");
    assert_eq!(field("deliveries"), "10,000/s", "{text}");

    let o = capacity(&["--growth"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(rows.len(), 7, "title, header, 4 scales, the note: {rows:?}");
    assert!(rows[5].trim_start().starts_with("100M"), "{rows:?}");
}

#[test]
fn capacity_json_plot_and_bench_results() {
    let dir = tempfile::tempdir().expect("dir");
    let plot = dir.path().join("cost.svg");
    let bench = dir.path().join("idle.json");
    // What `starling-bench idle --server-pid PID --json` prints (crates/bench/src/idle.rs).
    std::fs::write(
        &bench,
        r#"{"scenario":"idle","protocol":"starling","stage":"subscribe","connections":10000,"ready":10000,"failed":0,"held":10000,"nodes":[{"url":"ws://127.0.0.1:4000/connection/websocket","held":10000,"rss_before":8912896,"rss_after":24272896,"rss_settled":true,"rss_delta_per_connection":1536}]}"#,
    )
    .expect("write");
    let o = capacity(&[
        "--json",
        "--plot",
        plot.to_str().expect("utf-8"),
        "--from-bench",
        bench.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("--json is JSON");
    assert_eq!(v["load"]["publications_per_s"], 10_000.0);
    assert_eq!(v["load"]["deliveries_per_s"], 10_000.0);
    assert_eq!(v["load"]["payload_in_per_s"], 10_240_000.0);
    assert_eq!(v["plan"]["nodes"], 1);
    assert_eq!(v["plan"]["engine"], "memory");
    assert_eq!(v["growth"].as_array().map(Vec::len), Some(4));
    let figures = v["figures"].as_array().expect("figures");
    assert!(
        figures
            .iter()
            .all(|f| f["source"]["text"].as_str().is_some_and(|t| !t.is_empty()))
    );
    let memory = &figures[0];
    assert_eq!(memory["name"], "memory_per_connection_kib");
    assert_eq!(memory["value"], 1.5, "1,536 B from the bench file");
    assert!(
        memory["source"]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("from "),
        "{memory}"
    );
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("Starling nodes"),
        "{svg}"
    );
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));
}

#[test]
fn capacity_refuses_bad_input_clearly() {
    let o = capacity(&["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unexpected argument '--bogus'"),
        "{}",
        stderr(&o)
    );
    for (args, says) in [
        (
            vec![
                "capacity",
                "--users",
                "0",
                "--msg-rate",
                "1",
                "--msg-size",
                "1",
            ],
            "--users must be",
        ),
        (
            vec![
                "capacity",
                "--users",
                "10",
                "--msg-rate",
                "-1",
                "--msg-size",
                "1",
            ],
            "--msg-rate must be",
        ),
        (
            vec![
                "capacity",
                "--users",
                "10",
                "--msg-rate",
                "NaN",
                "--msg-size",
                "1",
            ],
            "--msg-rate must be",
        ),
        (
            vec!["capacity", "--users", "10", "--msg-rate", "1"],
            "--msg-size",
        ),
    ] {
        let o = starling(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    let o = capacity(&["--figure", "nope=1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown figure `nope`"),
        "{}",
        stderr(&o)
    );
    let o = capacity(&["--from-bench", "/nonexistent/results.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reading /nonexistent/results.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn capacity_predicts_a_given_topology() {
    let o = starling(&[
        "capacity",
        "--users",
        "9000",
        "--msg-rate",
        "0.0022222222",
        "--msg-size",
        "100",
        "--fanout",
        "9000",
        "--nodes",
        "3",
        "--shards",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let t = &report["topology"];
    assert_eq!(
        (t["nodes"].as_u64(), t["shards"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(t["connections_per_node"].as_f64(), Some(3000.0));
    let near = |field: &str, want: f64| {
        let got = t[field].as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() < 0.01 * want,
            "{field}: {got}, want {want}"
        );
    };
    // 20 publications/s, each heard by the 3 nodes: (1 + 3) messages, over 3 shards.
    near("hearing_nodes", 3.0);
    near("redis_messages_per_shard", 20.0 * 4.0 / 3.0);
    let o = capacity(&["--shards", "2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--shards goes with --nodes"),
        "{}",
        stderr(&o)
    );
    let o = capacity(&["--nodes", "2", "--shards", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--shards"), "{}", stderr(&o));
}
