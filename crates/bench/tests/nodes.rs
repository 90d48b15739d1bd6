//! `starling-bench` against several real nodes: the multi-URL plumbing of `fanout`
//! and `idle` (subscribers spread round-robin, figures per node, JSON output) with
//! independent Starling nodes, and the NATS client mode against two routed
//! nats-servers. The Starling binary is the workspace's own build (`cargo test
//! --workspace` builds it next to starling-bench).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use starling_testkit::{free_port, wait_listening};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_starling-bench"))
}

/// The `starling` binary beside starling-bench (debug), or the release one.
fn starling_bin() -> PathBuf {
    let bench = bench_bin();
    let dir = bench.parent().expect("bench binary directory");
    let candidates = [dir.join("starling"), dir.join("../release/starling")];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("build the server first: cargo build -p starling (cargo test --workspace does)")
}

/// A dev-mode Starling node on a free port, without a message log.
fn starling_node() -> (Proc, u16) {
    let port = free_port();
    let mut child = Command::new(starling_bin())
        .args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--set",
            "log.level=warn",
            "--set",
            "storage.dir=",
            "--set",
            "client.command_rate=0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start starling");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &mut child, "starling");
    (Proc(child), port)
}

/// Runs starling-bench with `args` (bounded by its own --timeout) and parses the JSON
/// document it prints on stdout.
fn bench_json(args: &[String]) -> Value {
    let out = Command::new(bench_bin())
        .args(args)
        .output()
        .expect("run starling-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "starling-bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The body of `GET path` on 127.0.0.1:port ("" on any failure: the caller retries).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return String::new();
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ws(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/connection/websocket")
}

#[test]
fn fanout_spreads_subscribers_and_reports_each_node() {
    let (_a, pa) = starling_node();
    let (_b, pb) = starling_node();
    let mut args = strings(&["fanout", "--url"]);
    args.extend([ws(pa), "--url".into(), ws(pb)]);
    args.extend(strings(&[
        "--subscribers",
        "20",
        "--messages",
        "10",
        "--rate",
        "500",
        "--via",
        "http",
        "--json",
    ]));
    // Independent nodes: publishing through both reaches every subscriber once.
    let mut both = args.clone();
    both.extend([
        "--publish-url".into(),
        format!("http://127.0.0.1:{pa}"),
        "--publish-url".into(),
        format!("http://127.0.0.1:{pb}"),
        "--timeout".into(),
        "30".into(),
    ]);
    let doc = bench_json(&both);
    assert_eq!(doc["subscribed"], 20, "{doc}");
    assert_eq!(doc["deliveries"], 200, "{doc}");
    assert_eq!(doc["missing"], 0, "{doc}");
    assert_eq!(doc["gaps"], 0, "{doc}");
    assert!(doc["latency_us"]["p99"].as_u64().unwrap() > 0, "{doc}");
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for node in nodes {
        assert_eq!(node["subscribed"], 10, "{doc}");
        assert_eq!(node["deliveries"], 100, "{doc}");
        assert_eq!(node["publishes"], true, "{doc}");
    }

    // Through node A only: A's subscribers get everything, B's (another engine)
    // nothing, and the figures say which is which. The run ends at its timeout.
    let mut only_a = args;
    only_a.extend([
        "--publish-url".into(),
        format!("http://127.0.0.1:{pa}"),
        "--timeout".into(),
        "3".into(),
    ]);
    let doc = bench_json(&only_a);
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["publishes"], true, "{doc}");
    assert_eq!(nodes[0]["deliveries"], 100, "{doc}");
    assert_eq!(nodes[1]["publishes"], false, "{doc}");
    assert_eq!(nodes[1]["deliveries"], 0, "{doc}");
    assert_eq!(doc["complete"], 10, "{doc}");
    assert_eq!(doc["stopped"], 10, "{doc}");
}

#[test]
fn users_get_their_personal_and_group_publications() {
    let (node, port) = starling_node();
    let plot = std::env::temp_dir().join(format!("users-{}.svg", std::process::id()));
    let mut args = strings(&["users", "--url"]);
    args.extend([
        ws(port),
        "--server-pid".into(),
        node.0.id().to_string(),
        "--plot".into(),
        plot.display().to_string(),
    ]);
    // 30 users in groups of 10, 2 publications/s each and 1/s per group, for 1 s.
    args.extend(strings(&[
        "--users",
        "30",
        "--group-size",
        "10",
        "--rate",
        "2",
        "--group-rate",
        "1",
        "--duration",
        "1",
        "--http-connections",
        "4",
        "--json",
    ]));
    let doc = bench_json(&args);
    assert_eq!(doc["subscribed"], 30, "{doc}");
    assert_eq!(doc["groups"], 3, "{doc}");
    assert_eq!(doc["publications"]["sent"], 63, "{doc}");
    assert_eq!(doc["publications"]["accepted"], 63, "{doc}");
    // Each user: its 2 personal publications and its group's 1, once each.
    assert_eq!(doc["expected"], 90, "{doc}");
    assert_eq!(doc["delivered"], 90, "{doc}");
    assert_eq!(doc["missing"], 0, "{doc}");
    assert_eq!(doc["extra"], 0, "{doc}");
    assert_eq!(doc["latency_us"]["count"], 90, "{doc}");
    assert!(doc["server_cpu"][0]["percent_of_core"].is_number(), "{doc}");
    let timeline = doc["timeline"].as_array().expect("timeline");
    let points: u64 = timeline
        .iter()
        .map(|p| p["deliveries"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(points, 90, "{doc}");
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}

#[test]
fn idle_spreads_connections_and_reads_each_node() {
    let (a, pa) = starling_node();
    let (b, pb) = starling_node();
    let mut args = strings(&["idle", "--url"]);
    args.extend([ws(pa), "--url".into(), ws(pb)]);
    args.extend([
        "--server-pid".into(),
        a.0.id().to_string(),
        "--server-pid".into(),
        b.0.id().to_string(),
    ]);
    args.extend(strings(&[
        "--connections",
        "31",
        "--first",
        "1",
        "--timeout",
        "30",
        "--json",
    ]));
    let doc = bench_json(&args);
    assert_eq!(doc["held"], 31, "{doc}");
    let nodes = doc["nodes"].as_array().unwrap();
    // Counted from --first 1: connections 1..=31, odd ones on node 1.
    assert_eq!(nodes[0]["held"], 15, "{doc}");
    assert_eq!(nodes[1]["held"], 16, "{doc}");
    assert_eq!(nodes[0]["server_connections"], 15.0, "{doc}");
    assert_eq!(nodes[1]["server_connections"], 16.0, "{doc}");
    assert!(nodes[0]["rss_after"].as_u64().unwrap() > 0, "{doc}");
}

/// Two routed nats-servers with WebSocket listeners; skipped where nats-server is
/// not installed (Debian package `nats-server`).
#[test]
fn nats_protocol_across_two_routed_servers() {
    let Some(nats) = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("nats-server is not installed: skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = [free_port(), free_port()];
    let wss = [free_port(), free_port()];
    let monitors = [free_port(), free_port()];
    let mut servers = Vec::new();
    for k in 0..2 {
        let conf = dir.join(format!("n{k}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{k}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                 websocket {{ listen: \"127.0.0.1:{}\", no_tls: true }}\n\
                 cluster {{ name: t, listen: 127.0.0.1:{}, routes: [\"nats-route://127.0.0.1:{}\"] }}\n",
                free_port(),
                monitors[k],
                wss[k],
                routes[k],
                routes[1 - k]
            ),
        )
        .unwrap();
        let mut child = Command::new(&nats)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let addr: SocketAddr = format!("127.0.0.1:{}", wss[k]).parse().unwrap();
        wait_listening(addr, &mut child, "nats-server");
        servers.push(Proc(child));
    }
    // The route is up on both sides (bounded).
    let start = std::time::Instant::now();
    for port in monitors {
        loop {
            let routez = http_get(port, "/routez");
            if serde_json::from_str::<Value>(&routez)
                .is_ok_and(|v| v["num_routes"].as_u64() == Some(1))
            {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "routes did not form"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let mut args = strings(&["fanout", "--protocol", "nats"]);
    for p in wss {
        args.extend(["--url".into(), format!("ws://127.0.0.1:{p}/")]);
    }
    args.extend([
        "--publish-url".into(),
        format!("ws://127.0.0.1:{}/", wss[0]),
    ]);
    args.extend(strings(&[
        "--subscribers",
        "10",
        "--messages",
        "20",
        "--rate",
        "500",
        "--settle-ms",
        "500",
        "--timeout",
        "30",
        "--json",
    ]));
    let doc = bench_json(&args);
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(doc["protocol"], "nats", "{doc}");
    assert_eq!(doc["deliveries"], 200, "{doc}");
    assert_eq!(doc["out_of_order"], 0, "{doc}");
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["publishes"], true, "{doc}");
    assert_eq!(nodes[1]["publishes"], false, "{doc}");
    assert_eq!(nodes[1]["deliveries"], 100, "{doc}");
}

/// The plain `ws` protocol against the `baseline` server of this package: fan-out
/// through its `POST /publish/<channel>` (raw data, timestamps parsed back), then
/// idle connections on their own channels with the connect + subscribe rate.
#[test]
fn ws_protocol_against_the_baseline_server() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baseline"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baseline");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &mut child, "baseline");
    let server = Proc(child);
    let url = format!("ws://127.0.0.1:{port}/sub/");
    let mut args = strings(&["fanout", "--protocol", "ws", "--url", &url]);
    args.extend(["--publish-url".into(), format!("http://127.0.0.1:{port}")]);
    args.extend(strings(&[
        "--subscribers",
        "10",
        "--messages",
        "20",
        "--rate",
        "500",
        "--http-connections",
        "2",
        "--timeout",
        "30",
        "--json",
    ]));
    let doc = bench_json(&args);
    assert_eq!(doc["protocol"], "ws", "{doc}");
    assert_eq!(doc["publications"]["accepted"], 20, "{doc}");
    assert_eq!(doc["deliveries"], 200, "{doc}");
    assert_eq!(doc["missing"], 0, "{doc}");
    assert_eq!(doc["out_of_order"], 0, "{doc}");
    assert_eq!(doc["latency_us"]["count"], 200, "{doc}");

    let pid = server.0.id().to_string();
    let mut args = strings(&["idle", "--protocol", "ws", "--url", &url]);
    args.extend(strings(&[
        "--connections",
        "12",
        "--rate-first",
        "10",
        "--server-pid",
        &pid,
        "--timeout",
        "30",
        "--json",
    ]));
    let doc = bench_json(&args);
    assert_eq!(doc["held"], 12, "{doc}");
    assert_eq!(doc["shared_channel"], false, "{doc}");
    assert_eq!(doc["connect_rate"]["first"], 10, "{doc}");
    assert!(
        doc["connect_rate"]["per_s"].as_f64().unwrap() > 0.0,
        "{doc}"
    );
    assert!(doc["nodes"][0]["rss_after"].as_u64().unwrap() > 0, "{doc}");
}

/// `users` against the `baseline` server with the plain `ws` protocol: each user
/// subscribes to its personal and its group channel on one connection
/// (`/sub/<personal>,<group>`), and the backend publishes through
/// `POST /publish/<channel>` with the data alone as body.
#[test]
fn users_over_the_plain_protocol_get_both_channels_on_one_connection() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baseline"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baseline");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr, &mut child, "baseline");
    let server = Proc(child);
    let mut args = strings(&["users", "--protocol", "ws", "--url"]);
    args.extend([
        format!("ws://127.0.0.1:{port}/sub/"),
        "--server-pid".into(),
        server.0.id().to_string(),
    ]);
    // 20 users in groups of 10, 2 publications/s each and 1/s per group, for 1 s.
    args.extend(strings(&[
        "--users",
        "20",
        "--group-size",
        "10",
        "--rate",
        "2",
        "--group-rate",
        "1",
        "--duration",
        "1",
        "--http-connections",
        "2",
        "--json",
    ]));
    let doc = bench_json(&args);
    assert_eq!(doc["protocol"], "ws", "{doc}");
    assert_eq!(
        doc["publish_via"], "HTTP /publish/<channel> on 2 connection(s)",
        "{doc}"
    );
    assert_eq!(doc["subscribed"], 20, "{doc}");
    assert_eq!(doc["publications"]["accepted"], 42, "{doc}");
    // Each user: its 2 personal publications and its group's 1, once each.
    assert_eq!(doc["expected"], 60, "{doc}");
    assert_eq!(doc["delivered"], 60, "{doc}");
    assert_eq!(doc["extra"], 0, "{doc}");
    assert_eq!(doc["latency_us"]["count"], 60, "{doc}");
    assert!(doc["server_cpu"][0]["percent_of_core"].is_number(), "{doc}");
}

/// `users` against a nats-server (skipped where it is not installed): the backend
/// publishes as a NATS client (`PUB` over WebSocket), each user has two `SUB`s.
#[test]
fn users_over_nats_publish_as_a_nats_client() {
    let Some(nats) = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("nats-server is not installed: skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("bench-nats-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ws_port = free_port();
    let conf = dir.join("n.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{}\nwebsocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true }}\n",
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(&nats)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse().unwrap();
    wait_listening(addr, &mut child, "nats-server");
    let server = Proc(child);
    let url = format!("ws://127.0.0.1:{ws_port}/");
    let mut args = strings(&["users", "--protocol", "nats", "--url", &url]);
    args.extend(["--publish-url".into(), url.clone()]);
    args.extend(strings(&[
        "--users",
        "20",
        "--group-size",
        "10",
        "--rate",
        "2",
        "--group-rate",
        "1",
        "--duration",
        "1",
        "--json",
    ]));
    let doc = bench_json(&args);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(doc["protocol"], "nats", "{doc}");
    assert_eq!(doc["publish_via"], "NATS PUB on 1 connection(s)", "{doc}");
    assert_eq!(doc["subscribed"], 20, "{doc}");
    assert_eq!(doc["publications"]["sent"], 42, "{doc}");
    assert_eq!(doc["publications"]["accepted"], 42, "{doc}");
    assert_eq!(doc["expected"], 60, "{doc}");
    assert_eq!(doc["delivered"], 60, "{doc}");
    assert_eq!(doc["extra"], 0, "{doc}");
}
