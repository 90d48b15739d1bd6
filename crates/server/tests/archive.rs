//! The archive against a real PostgreSQL (an instance of the test's own, so that it can
//! stop and restart it) and the real binary: publications arrive once each across node
//! restarts, connection events with their codes, and a PostgreSQL outage only delays
//! the archive while the node keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, storage_dir, token};
use serde_json::json;
use starling_testkit::postgres::PostgresServer;

/// A node on `storage` archiving into `db` of `pg`.
fn node(pg: &PostgresServer, db: &str, storage: &std::path::Path) -> Server {
    let url = format!("archive.url=\"{}\"", pg.conninfo(db));
    Server::start_with_storage(
        storage,
        &[
            "--dev",
            "--set",
            "archive.enabled=true",
            "--set",
            &url,
            "--set",
            "archive.linger_ms=20",
        ],
    )
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
