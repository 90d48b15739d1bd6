//! The archive's PostgreSQL side against a real PostgreSQL 15 started per test: schema
//! and migrations, partitions, retention, binary COPY with the cursor, analytics.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use starling_archive::analytics::{
    self, Bucket, ChannelTraffic, CodeCount, ConnectionPeak, NamespaceTraffic, PublisherTraffic,
    Window,
};
use starling_archive::time::Day;
use starling_archive::tokio_postgres::error::SqlState;
use starling_archive::{
    EventKind, LogPosition, MigrateReport, drop_partitions_older_than, ensure_days,
    ensure_partitions, list_partitions, migrate, read_cursor, schema_version, write_events,
    write_publications,
};

fn position(log: &str, position: u64) -> LogPosition {
    LogPosition {
        log_id: Arc::from(log),
        position,
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_from_two_connections_at_once() {
    let pg = server();
    let mut a = connect(&pg).await;
    let mut b = connect(&pg).await;
    assert_eq!(schema_version(&a).await.unwrap(), 0);

    let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let mut reports = vec![ra.expect("first migrate"), rb.expect("second migrate")];
    reports.sort_by_key(|r| r.from);
    assert_eq!(
        reports,
        vec![
            MigrateReport { from: 0, to: 1 },
            MigrateReport { from: 1, to: 1 }
        ],
        "one migrated, the other waited for the lock and found the schema current"
    );

    assert_eq!(
        migrate(&mut a).await.unwrap(),
        MigrateReport { from: 1, to: 1 }
    );
    assert_eq!(schema_version(&b).await.unwrap(), 1);
    assert_eq!(
        count(&a, "SELECT count(*) FROM starling_archive_schema").await,
        1
    );
    for view in [
        "starling_traffic_per_minute",
        "starling_traffic_per_hour",
        "starling_top_channels_last_hour",
        "starling_top_publishers_last_hour",
        "starling_connection_events_by_code_last_day",
        "starling_peak_connections_per_minute",
    ] {
        a.query(&format!("SELECT * FROM {view}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
    }

    // A newer schema than this build knows is refused.
    a.execute(
        "INSERT INTO starling_archive_schema (version, description) VALUES (99, 'future')",
        &[],
    )
    .await
    .unwrap();
    let err = migrate(&mut b).await.expect_err("schema from the future");
    assert!(
        matches!(
            err,
            starling_archive::ArchiveError::SchemaTooNew {
                found: 99,
                known: 1
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn partitions_are_made_ahead_with_utc_bounds_and_on_demand_for_an_old_day() {
    let pg = server();
    let mut client = migrated(&pg).await;
    // Bounds must not depend on the session's time zone.
    client
        .batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let now = utc(2024, 6, 1, 12, 0, 0);
    let created = ensure_partitions(&mut client, now, 2).await.unwrap();
    let mut expected = Vec::new();
    for day in ["20240601", "20240602", "20240603"] {
        expected.push(format!("starling_publications_p{day}"));
        expected.push(format!("starling_connection_events_p{day}"));
    }
    assert_eq!(created, expected);
    assert!(
        ensure_partitions(&mut client, now, 2)
            .await
            .unwrap()
            .is_empty(),
        "the second run finds them all"
    );
    assert_eq!(list_partitions(&client).await.unwrap().len(), 6);
    // Two nodes making the same partitions at once take turns on the DDL lock.
    let mut other = migrated(&pg).await;
    let later = utc(2024, 7, 1, 0, 0, 0);
    let (a, b) = tokio::join!(
        ensure_partitions(&mut client, later, 1),
        ensure_partitions(&mut other, later, 1)
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.len() + b.len(), 4, "each made once: {a:?} {b:?}");
    assert_eq!(list_partitions(&client).await.unwrap().len(), 10);
    let bound: String = client
        .query_one(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c
             WHERE c.relname = 'starling_publications_p20240602'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Shown in the session's zone: midnight UTC is 20:00 the day before in New York.
    assert_eq!(
        bound,
        "FOR VALUES FROM ('2024-06-01 20:00:00-04') TO ('2024-06-02 20:00:00-04')"
    );

    // Rows at the edges of a UTC day, and one for a day long gone (a catch-up after an
    // outage): its partitions are created before the insert.
    let rows = [
        publication("chat:a", "e", 1, utc(2024, 5, 20, 8, 0, 0), Some("u"), 10),
        publication(
            "chat:a",
            "e",
            2,
            utc(2024, 6, 1, 23, 59, 59) + Duration::from_micros(999_999),
            Some("u"),
            10,
        ),
        publication("chat:a", "e", 3, utc(2024, 6, 2, 0, 0, 0), Some("u"), 10),
    ];
    let report = write_publications(&mut client, "n1", &rows, None)
        .await
        .unwrap();
    assert_eq!(report.inserted, 3);
    assert_eq!(
        report.created_partitions,
        vec![
            "starling_publications_p20240520".to_owned(),
            "starling_connection_events_p20240520".to_owned()
        ]
    );
    let placed: Vec<(i64, String)> = client
        .query(
            "SELECT \"offset\", tableoid::regclass::text FROM starling_publications ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        placed,
        vec![
            (1, "starling_publications_p20240520".to_owned()),
            (2, "starling_publications_p20240601".to_owned()),
            (3, "starling_publications_p20240602".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_default_partition_would_block_creating_the_days_partition_later() {
    // Why the archive has no DEFAULT partition: rows caught there (a day without a
    // partition) make creating that day's partition fail until they are moved out.
    let pg = server();
    let client = connect(&pg).await;
    client
        .batch_execute(
            "CREATE TABLE t (at timestamptz NOT NULL) PARTITION BY RANGE (at);
             CREATE TABLE t_default PARTITION OF t DEFAULT;
             INSERT INTO t VALUES ('2024-06-05 10:00:00+00');",
        )
        .await
        .unwrap();
    let err = client
        .batch_execute(
            "CREATE TABLE t_p20240605 PARTITION OF t
             FOR VALUES FROM ('2024-06-05 00:00:00+00') TO ('2024-06-06 00:00:00+00')",
        )
        .await
        .expect_err("the default partition holds a row of that day");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("would be violated by some row")),
        "{message:?}"
    );
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_wholly_older_than_the_limit() {
    let pg = server();
    let mut client = migrated(&pg).await;
    let days: Vec<Day> = (0..10)
        .map(|n| Day::from_civil(2024, 5, 25).plus(n))
        .collect(); // 05-25 .. 06-03
    ensure_days(&mut client, &days).await.unwrap();
    // A partition attached by hand under another name is not the archive's to drop.
    client
        .batch_execute(
            "CREATE TABLE starling_publications_old PARTITION OF starling_publications
             FOR VALUES FROM ('2000-01-01 00:00:00+00') TO ('2000-01-02 00:00:00+00')",
        )
        .await
        .unwrap();
    let now = utc(2024, 6, 1, 12, 0, 0);
    let rows = [
        // 3 days and 13 hours old: its partition (05-28) ended before the cutoff.
        publication("a", "e", 1, utc(2024, 5, 28, 23, 0, 0), None, 1),
        // Younger than 3 days (the cutoff is 05-29 12:00): its partition stays.
        publication("a", "e", 2, utc(2024, 5, 29, 13, 0, 0), None, 1),
        // Older than 3 days, but in the same partition as the row above: stays too.
        publication("a", "e", 3, utc(2024, 5, 29, 1, 0, 0), None, 1),
    ];
    write_publications(&mut client, "n", &rows, None)
        .await
        .unwrap();

    let dropped = drop_partitions_older_than(&mut client, now, 3)
        .await
        .unwrap();
    let names: Vec<&str> = dropped.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "starling_connection_events_p20240525",
            "starling_publications_p20240525",
            "starling_connection_events_p20240526",
            "starling_publications_p20240526",
            "starling_connection_events_p20240527",
            "starling_publications_p20240527",
            "starling_connection_events_p20240528",
            "starling_publications_p20240528",
        ]
    );
    let left: Vec<String> = list_partitions(&client)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.table == "starling_publications")
        .map(|p| p.day.suffix())
        .collect();
    assert_eq!(
        left,
        [
            "20240529", "20240530", "20240531", "20240601", "20240602", "20240603"
        ]
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_publications").await,
        2
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname = 'starling_publications_old'"
        )
        .await,
        1
    );
    assert!(
        drop_partitions_older_than(&mut client, now, 3)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn copy_with_the_cursor_then_the_same_batch_again_adds_no_duplicates() {
    let pg = server();
    let mut client = migrated(&pg).await;
    let t0 = SystemTime::now();
    let batch = |from: u64, to: u64| -> Vec<_> {
        (from..=to)
            .map(|o| {
                publication(
                    "chat:room",
                    "ep1",
                    o,
                    t0 + Duration::from_millis(o),
                    Some("alice"),
                    1024,
                )
            })
            .collect()
    };
    let first = batch(1, 1000);
    let report = write_publications(&mut client, "n1", &first, Some(&position("log-A", 1000)))
        .await
        .unwrap();
    assert_eq!((report.inserted, report.duplicates), (1000, 0));
    assert_eq!(report.cursor, Some(position("log-A", 1000)));

    // The same batch again (a restart re-read it): nothing new, the cursor unchanged.
    let again = write_publications(&mut client, "n1", &first, Some(&position("log-A", 1000)))
        .await
        .unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 1000));
    assert_eq!(again.cursor, Some(position("log-A", 1000)));

    // Overlapping: the new half goes in, the cursor advances.
    let overlap = write_publications(
        &mut client,
        "n1",
        &batch(501, 1500),
        Some(&position("log-A", 1500)),
    )
    .await
    .unwrap();
    assert_eq!((overlap.inserted, overlap.duplicates), (500, 500));
    assert_eq!(overlap.cursor, Some(position("log-A", 1500)));

    // An older position in the same log never moves the cursor back.
    let back = write_publications(&mut client, "n1", &[], Some(&position("log-A", 700)))
        .await
        .unwrap();
    assert_eq!(back.cursor, Some(position("log-A", 1500)));
    // A new log (its directory was replaced) starts over.
    let fresh = write_publications(&mut client, "n1", &[], Some(&position("log-B", 5)))
        .await
        .unwrap();
    assert_eq!(fresh.cursor, Some(position("log-B", 5)));
    assert_eq!(
        read_cursor(&client, "n1").await.unwrap(),
        Some(position("log-B", 5))
    );
    assert_eq!(read_cursor(&client, "n2").await.unwrap(), None);

    // Another epoch is another publication; a NUL in a string does not poison a row.
    let mut other = publication("lobby", "ep2", 1, t0, Some("bad\0user"), 3);
    other.data = bytes::Bytes::from_static(b"\x00\xffz");
    let r = write_publications(&mut client, "n2", &[other.clone()], None)
        .await
        .unwrap();
    assert_eq!(r.inserted, 1);
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_publications").await,
        1501
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT (channel, epoch, \"offset\")) FROM starling_publications"
        )
        .await,
        1501
    );
    let row = client
        .query_one(
            "SELECT namespace, user_id, client_id, size, data, node, published_at
             FROM starling_publications WHERE channel = 'lobby'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "default");
    assert_eq!(row.get::<_, String>(1), "bad\u{FFFD}user");
    assert_eq!(row.get::<_, String>(2), "client-of-bad\u{FFFD}user");
    assert_eq!(row.get::<_, i32>(3), 3);
    assert_eq!(row.get::<_, Vec<u8>>(4), b"\x00\xffz");
    assert_eq!(row.get::<_, String>(5), "n2");
    let at: SystemTime = row.get(6);
    let micros = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    };
    assert_eq!(micros(at), micros(t0), "microsecond precision");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM starling_publications WHERE namespace = 'chat' AND size = 1024"
        )
        .await,
        1500
    );

    // An offset PostgreSQL's bigint cannot hold is refused before anything is sent.
    let huge = publication("a", "e", u64::MAX, t0, None, 1);
    assert!(matches!(
        write_publications(&mut client, "n1", &[huge], None).await,
        Err(starling_archive::ArchiveError::OutOfRange { .. })
    ));
    // The client is still usable (nothing was left open).
    assert_eq!(count(&client, "SELECT 1::bigint").await, 1);
}

#[tokio::test]
async fn analytics_queries_answer_on_known_data() {
    let pg = server();
    let mut client = migrated(&pg).await;
    let at = |mi: u64, s: u64| utc(2024, 6, 1, 10, mi, s);
    let pubs = [
        publication("chat:a", "e", 1, at(0, 10), Some("alice"), 100),
        publication("chat:a", "e", 2, at(0, 20), Some("alice"), 100),
        publication("chat:a", "e", 3, at(1, 5), Some("bob"), 50),
        publication("chat:b", "e", 1, at(0, 30), Some("bob"), 10),
        publication("lobby", "e", 1, at(2, 0), None, 5),
        publication("lobby", "e", 2, at(2, 0), None, 5),
        // Outside [10:00, 11:00).
        publication(
            "chat:a",
            "e",
            0,
            utc(2024, 6, 1, 9, 59, 59),
            Some("carol"),
            1,
        ),
        publication(
            "chat:a",
            "e",
            9,
            utc(2024, 6, 1, 11, 0, 0),
            Some("carol"),
            1,
        ),
    ];
    write_publications(&mut client, "n1", &pubs, None)
        .await
        .unwrap();
    let window = Window {
        from: at(0, 0),
        to: utc(2024, 6, 1, 11, 0, 0),
    };

    let per_minute = analytics::namespace_traffic(&client, window, Bucket::Minute, None)
        .await
        .unwrap();
    let traffic = |mi: u64, ns: &str, messages: i64, bytes: i64| NamespaceTraffic {
        bucket: at(mi, 0),
        namespace: ns.into(),
        messages,
        bytes,
    };
    assert_eq!(
        per_minute,
        vec![
            traffic(0, "chat", 3, 210),
            traffic(1, "chat", 1, 50),
            traffic(2, "default", 2, 10),
        ]
    );
    let per_hour = analytics::namespace_traffic(&client, window, Bucket::Hour, None)
        .await
        .unwrap();
    assert_eq!(
        per_hour,
        vec![traffic(0, "chat", 4, 260), traffic(0, "default", 2, 10)]
    );
    let chat_only = analytics::namespace_traffic(&client, window, Bucket::Minute, Some("chat"))
        .await
        .unwrap();
    assert_eq!(chat_only, per_minute[..2].to_vec());

    let top = analytics::top_channels(&client, window, 2).await.unwrap();
    let channel = |name: &str, ns: &str, messages: i64, bytes: i64| ChannelTraffic {
        channel: name.into(),
        namespace: ns.into(),
        messages,
        bytes,
    };
    assert_eq!(
        top,
        vec![
            channel("chat:a", "chat", 3, 250),
            channel("lobby", "default", 2, 10)
        ]
    );
    let publishers = analytics::top_publishers(&client, window, 10)
        .await
        .unwrap();
    let publisher = |user: Option<&str>, messages: i64, bytes: i64| PublisherTraffic {
        user_id: user.map(str::to_owned),
        messages,
        bytes,
    };
    assert_eq!(
        publishers,
        vec![
            publisher(Some("alice"), 2, 200),
            publisher(Some("bob"), 2, 60),
            publisher(None, 2, 10),
        ]
    );

    // Connection events of two nodes. n1 started at 09:00 and has one connection from
    // 09:10; n2 started at 09:30 with one connection from 09:45, then restarted at
    // 10:01:10 (a crash: that connection wrote no disconnect).
    use EventKind::*;
    let ev = |node_time: SystemTime, kind, code| event(node_time, kind, code);
    let n1 = [
        ev(utc(2024, 6, 1, 9, 0, 0), NodeStart, None),
        ev(utc(2024, 6, 1, 9, 10, 0), Connect, None),
        ev(at(0, 5), Connect, None),
        ev(at(0, 10), Connect, None),
        ev(at(0, 50), Disconnect, Some(4006)),
        ev(at(1, 0), Connect, None),
        ev(at(1, 30), Disconnect, Some(3000)),
        ev(at(2, 10), Disconnect, Some(3000)),
        ev(at(2, 20), Subscribe, None),
    ];
    let n2 = [
        ev(utc(2024, 6, 1, 9, 30, 0), NodeStart, None),
        ev(utc(2024, 6, 1, 9, 45, 0), Connect, None),
        ev(at(0, 20), Connect, None),
        ev(at(0, 40), Disconnect, Some(4006)),
        ev(at(1, 10), NodeStart, None),
        ev(at(1, 20), Connect, None),
    ];
    assert_eq!(write_events(&mut client, "n1", &n1).await.unwrap(), 9);
    assert_eq!(write_events(&mut client, "n2", &n2).await.unwrap(), 6);

    let codes = analytics::events_by_code(&client, window).await.unwrap();
    let code = |kind, code: Option<i32>, events| CodeCount { kind, code, events };
    assert_eq!(
        codes,
        vec![
            code(Connect, None, 5),
            code(Disconnect, Some(3000), 2),
            code(Disconnect, Some(4006), 2),
        ]
    );

    // Open connections: 2 at 10:00; 3, 4, 5 (n2 at 10:00:20), 4, 3 in minute 0;
    // 4, 3 (n2's restart drops its 2 to 0... its 1 left), 4, 3 in minute 1; 2 at 10:02:10.
    let peaks = analytics::peak_connections(&client, window, Bucket::Minute)
        .await
        .unwrap();
    assert_eq!(peaks.len(), 60, "every minute of the window");
    let peak = |mi: u64, peak: i64, at_end: i64| ConnectionPeak {
        bucket: at(mi, 0),
        peak,
        at_end,
    };
    assert_eq!(peaks[0], peak(0, 5, 3));
    assert_eq!(peaks[1], peak(1, 4, 3));
    assert_eq!(peaks[2], peak(2, 3, 2));
    assert!(
        peaks[3..]
            .iter()
            .enumerate()
            .all(|(i, p)| *p == peak(i as u64 + 3, 2, 2)),
        "{:?}",
        &peaks[3..6]
    );
    let hourly = analytics::peak_connections(&client, window, Bucket::Hour)
        .await
        .unwrap();
    assert_eq!(hourly, vec![peak(0, 5, 2)]);
    // A window after n2's restart starts from that restart for n2.
    let later = Window {
        from: at(2, 0),
        to: at(4, 0),
    };
    let peaks = analytics::peak_connections(&client, later, Bucket::Minute)
        .await
        .unwrap();
    assert_eq!(peaks, vec![peak(2, 3, 2), peak(3, 2, 2)]);
}

#[tokio::test]
async fn the_views_show_the_recent_window() {
    let pg = server();
    let mut client = migrated(&pg).await;
    let now = SystemTime::now();
    ensure_partitions(&mut client, now, 1).await.unwrap();
    let recent = now - Duration::from_secs(30);
    write_publications(
        &mut client,
        "n1",
        &[
            publication("chat:x", "e", 1, recent, Some("u1"), 7),
            publication("chat:x", "e", 2, recent, Some("u1"), 7),
            // Two days old: in no view.
            publication(
                "chat:x",
                "e",
                0,
                now - Duration::from_secs(2 * 86_400),
                None,
                7,
            ),
        ],
        None,
    )
    .await
    .unwrap();
    write_events(
        &mut client,
        "n1",
        &[
            event(recent, EventKind::NodeStart, None),
            event(recent, EventKind::Connect, None),
            event(recent, EventKind::Disconnect, Some(3001)),
        ],
    )
    .await
    .unwrap();
    let one = |sql: &str| {
        let client = &client;
        let sql = sql.to_owned();
        async move {
            client
                .query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    let r =
        one("SELECT sum(messages)::bigint, sum(bytes)::bigint FROM starling_traffic_per_minute")
            .await;
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (2, 14));
    let r = one("SELECT sum(messages)::bigint FROM starling_traffic_per_hour").await;
    assert_eq!(r.get::<_, i64>(0), 2);
    let r = one("SELECT channel, messages FROM starling_top_channels_last_hour").await;
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, i64>(1)),
        ("chat:x".into(), 2)
    );
    let r = one("SELECT user_id, messages FROM starling_top_publishers_last_hour").await;
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, i64>(1)),
        ("u1".into(), 2)
    );
    let r = one(
        "SELECT events FROM starling_connection_events_by_code_last_day
         WHERE kind = 'disconnect' AND code = 3001",
    )
    .await;
    assert_eq!(r.get::<_, i64>(0), 1);
    let r =
        one("SELECT max(peak)::bigint, count(*) FROM starling_peak_connections_per_minute").await;
    assert_eq!(r.get::<_, i64>(0), 1);
    assert!(r.get::<_, i64>(1) >= 60);
}
