//! The background writer against a real PostgreSQL: batching, the cursor, a node that
//! restarts, PostgreSQL down (queues fill, drops counted, the publication path waits) and
//! a PostgreSQL crash while writing (kill -9, restart on the same port and data).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use starling_archive::{
    EventKind, LogPosition, PublicationRow, SendError, Writer, WriterConfig, read_cursor,
};
use starling_testkit::postgres::PostgresServer;

fn writer_config(pg: &PostgresServer, node: &str) -> WriterConfig {
    let mut config = WriterConfig::new(config(pg), node);
    config.linger = Duration::from_millis(20);
    config.batch_rows = 500;
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.timeout = Duration::from_secs(5);
    config
}

fn at(log: &str, position: u64) -> Option<LogPosition> {
    Some(LogPosition {
        log_id: Arc::from(log),
        position,
    })
}

fn row(offset: u64) -> PublicationRow {
    publication(
        "chat:room",
        "ep",
        offset,
        SystemTime::now(),
        Some("alice"),
        256,
    )
}

/// Waits until the writer has nothing queued or in flight.
async fn drained(writer: &Writer) {
    eventually("the writer to drain", || async {
        let s = writer.stats();
        s.queued_publications == 0 && s.queued_events == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_batches_rows_and_events_and_moves_the_cursor() {
    let pg = server();
    let writer = Writer::start(writer_config(&pg, "n1"));
    for offset in 1..=2_500 {
        writer.send(row(offset), at("L", offset)).await.unwrap();
    }
    for i in 0..10u16 {
        let kind = if i % 2 == 0 {
            EventKind::Connect
        } else {
            EventKind::Disconnect
        };
        writer
            .try_send_event(event(SystemTime::now(), kind, Some(3000 + i)))
            .unwrap();
    }
    drained(&writer).await;
    let stats = writer.stats();
    assert_eq!(stats.publications, 2_500);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.events, 10);
    assert!(stats.batches >= 6, "at most 500 rows a batch: {stats:?}");
    assert_eq!(
        stats.batch_seconds_buckets.last().copied(),
        Some(stats.batches),
        "every batch is in the histogram"
    );
    assert!(stats.batch_seconds_sum > 0.0);
    assert!(stats.connected);
    assert_eq!(stats.connects, 1);
    assert_eq!(stats.cursor, at("L", 2_500));
    assert_eq!(stats.lag(SystemTime::now()), Some(Duration::ZERO));
    assert!(stats.newest_archived.is_some());
    assert_eq!((stats.dropped_events, stats.dropped_publications), (0, 0));

    let client = connect(&pg).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_publications").await,
        2_500
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_connection_events").await,
        10
    );
    assert_eq!(read_cursor(&client, "n1").await.unwrap(), at("L", 2_500));
    // The partitions ahead were made at connect: today and two days more.
    assert!(count(&client, "SELECT count(*) FROM pg_inherits").await >= 6);

    assert!(writer.shutdown(Duration::from_secs(5)).await);
    assert_eq!(
        writer.send(row(9_999), None).await,
        Err(SendError::Closed),
        "a closed writer takes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reads_again_from_its_cursor_without_duplicates() {
    let pg = server();
    let rows: Vec<PublicationRow> = (1..=1_500).map(row).collect();
    let first = Writer::start(writer_config(&pg, "n1"));
    for r in &rows[..1_000] {
        first.send(r.clone(), at("L", r.offset)).await.unwrap();
    }
    assert!(first.shutdown(Duration::from_secs(10)).await, "flushed");
    assert_eq!(first.stats().publications, 1_000);
    drop(first);

    // The node comes back; its log reader starts from the stored cursor, and (at least
    // once) delivers some records that were already archived.
    let client = connect(&pg).await;
    let cursor = read_cursor(&client, "n1").await.unwrap();
    assert_eq!(cursor, at("L", 1_000));
    let second = Writer::start(writer_config(&pg, "n1"));
    for r in &rows[899..] {
        second.send(r.clone(), at("L", r.offset)).await.unwrap();
    }
    drained(&second).await;
    let stats = second.stats();
    assert_eq!((stats.publications, stats.duplicates), (500, 101));
    assert_eq!(stats.cursor, at("L", 1_500));
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_publications").await,
        1_500
    );
}

#[tokio::test(flavor = "current_thread")]
async fn postgres_down_fills_the_queues_counts_drops_and_catches_up_when_back() {
    let mut pg = server();
    pg.kill();
    let mut config = writer_config(&pg, "n1");
    config.queue_rows = 100;
    config.event_queue_rows = 10;
    config.batch_rows = 50;
    let writer = Arc::new(Writer::start(config));

    // On a current-thread runtime the writer's task does not run between these calls.
    for i in 0..15 {
        let sent = writer.try_send_event(event(SystemTime::now(), EventKind::Connect, None));
        assert_eq!(sent.is_ok(), i < 10, "event {i}");
    }
    for offset in 1..=100 {
        writer.try_send(row(offset), at("L", offset)).unwrap();
    }
    assert_eq!(writer.try_send(row(0), None), Err(SendError::Full));
    let stats = writer.stats();
    assert_eq!((stats.dropped_events, stats.dropped_publications), (5, 1));

    // The task takes one batch of each, fails to connect, and holds them while it
    // retries; the queue takes another 50, then the publication path has to wait.
    eventually("the writer to take a batch and fail", || async {
        let s = writer.stats();
        s.in_batch == 60 && s.last_error.is_some()
    })
    .await;
    for offset in 101..=150 {
        writer.try_send(row(offset), at("L", offset)).unwrap();
    }
    let waiting = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.send(row(151), at("L", 151)).await })
    };
    // Not a synchronisation: the send must still be waiting after the writer retried a
    // few times (its backoff is at most 200 ms).
    let before = writer.stats().batch_errors;
    eventually("a few more failed tries", || async {
        writer.stats().batch_errors >= before + 3
    })
    .await;
    assert!(!waiting.is_finished(), "send waits for room");
    let stats = writer.stats();
    assert!(!stats.connected);
    assert_eq!(stats.queued_publications, 150);
    assert_eq!(stats.publications, 0);
    assert_eq!(stats.lag(SystemTime::now()), None, "nothing archived yet");

    // PostgreSQL comes back: the writer reconnects by itself and catches up.
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .expect("restart");
    waiting.await.expect("task").expect("send");
    drained(&writer).await;
    let stats = writer.stats();
    assert!(stats.connected);
    assert_eq!(stats.publications, 151);
    assert_eq!(stats.events, 10);
    assert_eq!(stats.cursor, at("L", 151));
    let client = connect(&pg).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM starling_publications").await,
        151
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_while_writing_loses_nothing_acknowledged() {
    const ROWS: u64 = 20_000;
    let mut pg = server();
    let mut config = writer_config(&pg, "n1");
    config.batch_rows = 200;
    config.queue_rows = 2_000;
    let writer = Arc::new(Writer::start(config));
    let producer = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for offset in 1..=ROWS {
                writer
                    .send(row(offset), at("L", offset))
                    .await
                    .expect("send");
            }
        })
    };
    eventually("some batches to commit", || async {
        writer.stats().publications >= 2_000
    })
    .await;

    // kill -9 of the postmaster and every backend, mid-stream.
    tokio::task::block_in_place(|| pg.kill());
    let acknowledged = writer
        .stats()
        .cursor
        .map(|c| c.position)
        .expect("a cursor before the crash");
    assert!(acknowledged < ROWS, "the crash came mid-stream");
    eventually("the writer to notice", || async {
        !writer.stats().connected
    })
    .await;
    tokio::task::block_in_place(|| pg.restart());

    // What was acknowledged survived the crash.
    let client = connect(&pg).await;
    let stored = read_cursor(&client, "n1")
        .await
        .unwrap()
        .expect("cursor")
        .position;
    assert!(stored >= acknowledged, "{stored} < {acknowledged}");
    let position = i64::try_from(acknowledged).unwrap();
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM starling_publications WHERE \"offset\" <= $1",
            &[&position],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, position, "every row up to the acknowledged cursor");

    // The writer reconnects by itself and writes the rest, exactly once.
    producer.await.expect("producer");
    drained(&writer).await;
    let stats = writer.stats();
    assert!(stats.connects >= 2, "{stats:?}");
    assert_eq!(stats.cursor.as_ref().map(|c| c.position), Some(ROWS));
    assert_eq!(
        stats.publications, ROWS,
        "each row inserted once: {stats:?}"
    );
    let r = client
        .query_one(
            "SELECT count(*), count(DISTINCT \"offset\"), min(\"offset\"), max(\"offset\")
             FROM starling_publications",
            &[],
        )
        .await
        .unwrap();
    let total = i64::try_from(ROWS).unwrap();
    assert_eq!(
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3)
        ),
        (total, total, 1, total)
    );
    assert_eq!(
        read_cursor(&client, "n1")
            .await
            .unwrap()
            .map(|c| c.position),
        Some(ROWS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_is_skipped_alone_and_the_cursor_moves_past_it() {
    let pg = server();
    let writer = Writer::start(writer_config(&pg, "n1"));
    writer.send(row(1), at("L", 1)).await.unwrap();
    drained(&writer).await;
    // A constraint the archive does not know about refuses large rows (SQLSTATE 23514).
    let client = connect(&pg).await;
    client
        .batch_execute("ALTER TABLE starling_publications ADD CONSTRAINT small CHECK (size < 1000)")
        .await
        .unwrap();
    let mut big = row(3);
    big.data = bytes::Bytes::from(vec![0u8; 2_000]);
    for (r, position) in [(row(2), 2), (big, 3), (row(4), 4)] {
        writer.send(r, at("L", position)).await.unwrap();
    }
    drained(&writer).await;
    let stats = writer.stats();
    assert_eq!(stats.rejected_publications, 1, "{stats:?}");
    assert_eq!(stats.publications, 3);
    assert_eq!(stats.cursor, at("L", 4));
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("small")),
        "{stats:?}"
    );
    let offsets: Vec<i64> = client
        .query(
            "SELECT \"offset\" FROM starling_publications ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(offsets, vec![1, 2, 4]);
}
