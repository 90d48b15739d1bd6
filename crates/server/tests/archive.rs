//! The archive against a real PostgreSQL (an instance of the test's own, so that it can
//! stop and restart it) and the real binary: publications arrive once each across node
//! restarts, connection events with their codes, and a PostgreSQL outage only delays
//! the archive while the node keeps serving. In a cluster (real `redis-server`), each
//! node archives what it published, so every publication is archived once.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, storage_dir, token};
use serde_json::json;
use starling_testkit::postgres::PostgresServer;
use starling_testkit::redis::RedisServer;

/// A node on `storage` archiving into `db` of `pg`, with `extra` arguments.
fn archiving(pg: &PostgresServer, db: &str, storage: &std::path::Path, extra: &[&str]) -> Server {
    let url = format!("archive.url=\"{}\"", pg.conninfo(db));
    let mut args = vec![
        "--dev",
        "--set",
        "archive.enabled=true",
        "--set",
        &url,
        "--set",
        "archive.linger_ms=20",
    ];
    args.extend_from_slice(extra);
    Server::start_with_storage(storage, &args)
}

/// A node on `storage` archiving into `db` of `pg`.
fn node(pg: &PostgresServer, db: &str, storage: &std::path::Path) -> Server {
    archiving(pg, db, storage, &[])
}

/// Waits (bounded) until `sql` on `db` answers `want` (once the node has made the
/// archive's tables).
fn wait_for(pg: &PostgresServer, db: &str, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let schema = "SELECT to_regclass('starling_connection_events') IS NOT NULL";
    while pg.psql(db, schema).trim() != "t" {
        assert!(
            Instant::now() < deadline,
            "the node never made the archive's tables"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let got = pg.psql(db, sql);
        if got.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{sql}` gave {got:?}, waited for {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const COUNT: &str = "SELECT count(*) FROM starling_publications";
const DISTINCT: &str =
    "SELECT count(DISTINCT (channel, epoch, \"offset\")) FROM starling_publications";

#[tokio::test(flavor = "multi_thread")]
async fn publications_and_events_reach_postgres_once_across_node_restarts() {
    let pg = PostgresServer::start();
    pg.create_database("archive");
    let storage = storage_dir();
    let mut server = node(&pg, "archive", &storage);

    let alice = token(json!({"sub": "alice"}));
    let (mut c, _) = Client::connect(&server, Some(&alice)).await;
    let r = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    for n in 0..3 {
        let r = c
            .call("publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    for n in 3..8 {
        let (status, r) = server
            .api("publish", json!({"channel": "chat:room", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let (_, r) = server.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(r["result"]["disconnected"], 1);
    c.expect_close().await;

    wait_for(&pg, "archive", COUNT, "8");
    let by_client = pg.psql(
        "archive",
        "SELECT namespace, user_id, convert_from(data, 'UTF8'), size FROM starling_publications \
         WHERE channel = 'news' ORDER BY \"offset\"",
    );
    assert_eq!(
        by_client.trim(),
        "default|alice|{\"n\":0}|7\ndefault|alice|{\"n\":1}|7\ndefault|alice|{\"n\":2}|7"
    );
    let by_api = pg.psql(
        "archive",
        "SELECT namespace, coalesce(user_id, '-'), count(*) FROM starling_publications \
         WHERE channel = 'chat:room' GROUP BY 1, 2",
    );
    assert_eq!(by_api.trim(), "chat|-|5", "API publications have no user");
    wait_for(
        &pg,
        "archive",
        "SELECT string_agg(kind || ':' || coalesce(code::text, '-') || ':' || coalesce(channel, '-'), ',' \
         ORDER BY kind) FROM starling_connection_events WHERE user_id = 'alice'",
        "connect:-:-,disconnect:4503:-,subscribe:-:news",
    );

    // An orderly restart: the reader resumes from the stored cursor, nothing twice.
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    drop(server);
    let server = node(&pg, "archive", &storage);
    for n in 8..10 {
        let (status, _) = server
            .api("publish", json!({"channel": "chat:room", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200);
    }
    wait_for(&pg, "archive", COUNT, "10");
    assert_eq!(pg.psql("archive", DISTINCT).trim(), "10");
    assert_eq!(
        pg.psql(
            "archive",
            "SELECT count(*) FROM starling_connection_events WHERE kind = 'node_start'"
        )
        .trim(),
        "2"
    );
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("starling_archive_rows_total 2"),
        "this run archived the two new ones: {metrics}"
    );
    let _ = std::fs::remove_dir_all(&storage);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_delays_the_archive_and_the_node_keeps_serving() {
    let mut pg = PostgresServer::start();
    pg.create_database("archive");
    let storage = storage_dir();
    let server = node(&pg, "archive", &storage);
    for n in 0..2 {
        server
            .api("publish", json!({"channel": "chat:feed", "data": n}))
            .await;
    }
    wait_for(&pg, "archive", COUNT, "2");

    pg.kill();
    for n in 2..7 {
        let (status, r) = server
            .api("publish", json!({"channel": "chat:feed", "data": n}))
            .await;
        assert_eq!(status, 200, "the node serves without PostgreSQL: {r}");
    }
    // /ready stays 200 and says the archive is cut off.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get("/ready").await;
        assert_eq!(status, 200, "{body}");
        let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
        if ready["archive"]["connected"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw the archive cut off: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pg.restart();
    wait_for(&pg, "archive", COUNT, "7");
    assert_eq!(pg.psql("archive", DISTINCT).trim(), "7");
    let data = pg.psql(
        "archive",
        "SELECT string_agg(convert_from(data, 'UTF8'), ',' ORDER BY \"offset\") FROM starling_publications",
    );
    assert_eq!(data.trim(), "0,1,2,3,4,5,6");
    let _ = std::fs::remove_dir_all(&storage);
}

/// A cluster node `name` on Redis at `redis`, archiving into `db` of `pg`.
fn cluster_node(
    pg: &PostgresServer,
    db: &str,
    redis: &RedisServer,
    name: &str,
    storage: &std::path::Path,
) -> Server {
    let name = format!("server.name={name}");
    archiving(
        pg,
        db,
        storage,
        &[
            "--redis",
            &redis.url(),
            "--set",
            &name,
            "--set",
            "namespaces.chat.history_size=100",
        ],
    )
}

/// The offsets of `channel` in the archive, in order, comma-separated.
fn archived_offsets(pg: &PostgresServer, db: &str, channel: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT string_agg(\"offset\"::text, ',' ORDER BY \"offset\") \
             FROM starling_publications WHERE channel = '{channel}'"
        ),
    )
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_each_publication_is_archived_once_by_the_node_that_published_it() {
    let pg = PostgresServer::start();
    pg.create_database("cluster");
    let redis = RedisServer::start();
    let (storage_a, storage_b) = (storage_dir(), storage_dir());
    let mut a = cluster_node(&pg, "cluster", &redis, "a", &storage_a);
    let b = cluster_node(&pg, "cluster", &redis, "b", &storage_b);

    // Both nodes publish into one channel: 3 through a's API, 2 from a client on b.
    for n in 0..3 {
        let (status, r) = a
            .api("publish", json!({"channel": "chat:room", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let alice = token(json!({"sub": "alice"}));
    let (mut c, _) = Client::connect(&b, Some(&alice)).await;
    for n in 3..5 {
        let r = c
            .call("publish", json!({"channel": "chat:room", "data": {"n": n}}))
            .await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    // An idempotent publish, repeated on the other node: the broker replays it, and it is
    // archived once (by a).
    let keyed = json!({"channel": "chat:room", "data": {"n": 5}, "idempotency_key": "k5"});
    let (status, first) = a.api("publish", keyed.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = b.api("publish", keyed).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first["result"]["offset"], again["result"]["offset"]);
    // A durable publish in a cluster: acknowledged once a's archive journal has it on
    // disk (without the archive a cluster node refuses `durable`).
    let (status, r) = a
        .api(
            "publish",
            json!({"channel": "chat:room", "data": {"n": 6}, "durable": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["offset"], 7);

    wait_for(&pg, "cluster", COUNT, "7");
    assert_eq!(
        archived_offsets(&pg, "cluster", "chat:room"),
        "1,2,3,4,5,6,7"
    );
    assert_eq!(
        pg.psql(
            "cluster",
            "SELECT string_agg(node || ':' || n, ',' ORDER BY node) FROM \
             (SELECT node, count(*) AS n FROM starling_publications GROUP BY node) t"
        )
        .trim(),
        "a:5,b:2",
        "each publication archived by the node that published it"
    );
    assert_eq!(
        pg.psql(
            "cluster",
            "SELECT string_agg(coalesce(user_id, '-'), ',' ORDER BY \"offset\") \
             FROM starling_publications"
        )
        .trim(),
        "-,-,-,alice,alice,-,-"
    );

    // Node a dies without a word (SIGKILL) right after an acknowledged durable publish,
    // and starts again: its journal still holds what it has not archived, nothing is
    // archived twice, and both nodes go on.
    let (status, _) = a
        .api(
            "publish",
            json!({"channel": "chat:room", "data": {"n": 7}, "durable": true}),
        )
        .await;
    assert_eq!(status, 200);
    a.kill();
    drop(a);
    let a = cluster_node(&pg, "cluster", &redis, "a", &storage_a);
    let (status, _) = a
        .api("publish", json!({"channel": "chat:room", "data": {"n": 8}}))
        .await;
    assert_eq!(status, 200);
    let r = c
        .call("publish", json!({"channel": "chat:room", "data": {"n": 9}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    wait_for(&pg, "cluster", COUNT, "10");
    assert_eq!(pg.psql("cluster", DISTINCT).trim(), "10");
    assert_eq!(
        archived_offsets(&pg, "cluster", "chat:room"),
        "1,2,3,4,5,6,7,8,9,10"
    );
    let data = pg.psql(
        "cluster",
        "SELECT string_agg(convert_from(data, 'UTF8'), ',' ORDER BY \"offset\") \
         FROM starling_publications",
    );
    assert_eq!(
        data.trim(),
        (0..10)
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&storage_a);
    let _ = std::fs::remove_dir_all(&storage_b);
}

#[test]
fn archive_migrate_creates_the_schema_once() {
    let pg = PostgresServer::start();
    pg.create_database("cli");
    let url = format!("archive.url=\"{}\"", pg.conninfo("cli"));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["archive", "migrate", "--set", &url])
            .output()
            .expect("run starling")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "archive schema migrated from version 0 to 1"
    );
    let again = run();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "archive schema is current (version 1)"
    );
    assert_eq!(
        pg.psql(
            "cli",
            "SELECT to_regclass('starling_publications') IS NOT NULL"
        )
        .trim(),
        "t"
    );
}

/// With the archive, `/api/analytics` answers from PostgreSQL: the namespace traffic,
/// the top channels and publishers with their counts, and the connects and disconnects
/// by code (4503 from the disconnect API); latency and current connections from the
/// node.
#[tokio::test(flavor = "multi_thread")]
async fn analytics_answer_from_the_archive() {
    let mut pg = PostgresServer::start();
    pg.create_database("analytics");
    let storage = storage_dir();
    let server = node(&pg, "analytics", &storage);

    let alice = token(json!({"sub": "alice"}));
    let bob = token(json!({"sub": "bob"}));
    let (mut a, _) = Client::connect(&server, Some(&alice)).await;
    let (mut b, _) = Client::connect(&server, Some(&bob)).await;
    // A publication to a channel without subscribers nor history goes nowhere (not in
    // the log, not archived): subscribe first.
    for (client, channel) in [(0, "news"), (1, "news"), (1, "sport")] {
        let client = if client == 0 { &mut a } else { &mut b };
        let r = client.call("subscribe", json!({"channel": channel})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    // alice 3 on news, bob 2 on news and 1 on sport (N = 6), the API 4 on chat:room (M).
    for (client, channel, n) in [(0, "news", 3), (1, "news", 2), (1, "sport", 1)] {
        let client = if client == 0 { &mut a } else { &mut b };
        for i in 0..n {
            let r = client
                .call("publish", json!({"channel": channel, "data": {"n": i}}))
                .await;
            assert!(r.get("publish").is_some(), "{r}");
        }
    }
    for i in 0..4 {
        let (status, r) = server
            .api("publish", json!({"channel": "chat:room", "data": [i]}))
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let (_, r) = server.api("disconnect", json!({"user": "alice"})).await;
    assert_eq!(r["result"]["disconnected"], 1);
    a.expect_close().await;
    wait_for(&pg, "analytics", COUNT, "10");
    wait_for(
        &pg,
        "analytics",
        "SELECT count(*) FROM starling_connection_events WHERE kind = 'disconnect' AND code = 4503",
        "1",
    );

    let (status, r) = server.api("analytics", json!({"limit": 2})).await;
    assert_eq!(status, 200, "{r}");
    let result = &r["result"];
    assert_eq!(result["source"], "archive", "{r}");
    assert_eq!(result["bucket"], "minute");
    let sum = |ns: &str| -> i64 {
        result["traffic"]
            .as_array()
            .expect("traffic")
            .iter()
            .filter(|t| t["namespace"] == ns)
            .map(|t| t["messages"].as_i64().expect("n"))
            .sum()
    };
    assert_eq!((sum("default"), sum("chat")), (6, 4), "{r}");
    let all: i64 = result["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .map(|t| t["messages"].as_i64().expect("n"))
        .sum();
    assert_eq!(all, 10, "N + M: {r}");
    assert_eq!(
        result["top_channels"],
        json!([
            {"channel": "news", "namespace": "default", "messages": 5, "bytes": 35},
            {"channel": "chat:room", "namespace": "chat", "messages": 4, "bytes": 12},
        ]),
        "{r}"
    );
    assert_eq!(
        result["top_publishers"],
        json!([
            {"user": null, "messages": 4, "bytes": 12},
            {"user": "alice", "messages": 3, "bytes": 21},
        ]),
        "{r}"
    );
    let events = result["events_by_code"].as_array().expect("events");
    assert_eq!(
        events[0],
        json!({"kind": "connect", "code": null, "events": 2}),
        "{r}"
    );
    assert!(
        events.contains(&json!({"kind": "disconnect", "code": 4503, "events": 1})),
        "{r}"
    );
    assert_eq!(result["connections"]["current"], 1, "bob is still on");
    let peaks = result["connections"]["peaks"].as_array().expect("peaks");
    assert!(peaks.iter().any(|p| p["peak"] == 2), "{r}");
    assert!(
        !result["publish_latency_p99"]
            .as_array()
            .expect("p99")
            .is_empty(),
        "{r}"
    );
    let (_, r) = server
        .api(
            "analytics",
            json!({"namespace": "chat", "window_secs": 86_400}),
        )
        .await;
    assert_eq!(r["result"]["bucket"], "hour");
    let traffic = r["result"]["traffic"].as_array().expect("traffic");
    assert_eq!(traffic.len(), 1, "{r}");
    assert_eq!(traffic[0]["messages"], 4);

    // PostgreSQL away: a clear 503, and the node keeps serving.
    pg.kill();
    let (status, r) = server.api("analytics", json!({})).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], 108, "{r}");
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.contains("PostgreSQL"), "{message}");
    drop(b);
    let _ = std::fs::remove_dir_all(&storage);
}
