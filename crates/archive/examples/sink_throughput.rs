//! How fast the archive sink writes 1 KB publications into PostgreSQL, and what they
//! take on disk.
//!
//! ```sh
//! CARGO_TARGET_DIR=... cargo run --release -p starling-archive --example sink_throughput -- \
//!     [--rows 200000] [--size 1024] [--batches 1000,5000] [--fsync on|off]
//! ```
//!
//! Starts its own PostgreSQL 15 (initdb in a temporary directory, as the tests do; as root
//! it runs as the `postgres` user), with PostgreSQL's default settings (`fsync=on`,
//! `synchronous_commit=on`) unless `--fsync off`. For each batch size it writes `--rows`
//! publications of `--size` bytes on 100 channels, two ways:
//!
//! - `direct`: `write_publications` called in a loop with a cursor, one batch after the
//!   other on one connection (the sink alone);
//! - `writer`: the background `Writer` fed with `send` as fast as it takes them (queue,
//!   batching, the same one connection): what a node's log reader would see.
//!
//! after an unmeasured warm-up of 50,000 rows, and reports rows/s, payload MB/s, and the bytes of the partitions (table, TOAST and
//! indexes, `pg_total_relation_size`) per million rows.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use starling_archive::tokio_postgres::{Client, Config, NoTls};
use starling_archive::{
    LogPosition, PublicationRow, Writer, WriterConfig, migrate, write_publications,
};
use starling_testkit::postgres::{PostgresServer, TEST_SETTINGS};

struct Args {
    rows: u64,
    size: usize,
    batches: Vec<usize>,
    fsync: bool,
}

fn args() -> Args {
    let mut args = Args {
        rows: 200_000,
        size: 1024,
        batches: vec![1_000, 5_000],
        fsync: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--rows" => args.rows = value.parse().expect("--rows N"),
            "--size" => args.size = value.parse().expect("--size BYTES"),
            "--batches" => {
                args.batches = value
                    .split(',')
                    .map(|b| b.parse().expect("--batches N,M"))
                    .collect()
            }
            "--fsync" => args.fsync = value != "off",
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn rows(n: u64, size: usize, base: u64) -> Vec<PublicationRow> {
    let data = Bytes::from(vec![b'x'; size]);
    let t0 = SystemTime::now();
    (0..n)
        .map(|i| PublicationRow {
            channel: format!("chat:room-{}", i % 100),
            epoch: "a1b2c3d4".into(),
            offset: base + i / 100 + 1,
            time: t0 + Duration::from_micros(i),
            user_id: Some(format!("user-{}", i % 1_000)),
            client_id: Some(format!("client-{}", i % 5_000)),
            data: data.clone(),
        })
        .collect()
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// (table + TOAST, indexes) bytes of the publication partitions.
async fn sizes(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_table_size(inhrelid)), 0)::bigint,
                    coalesce(sum(pg_indexes_size(inhrelid)), 0)::bigint
             FROM pg_inherits WHERE inhparent = 'starling_publications'::regclass",
            &[],
        )
        .await
        .expect("sizes");
    (row.get(0), row.get(1))
}

fn report(mode: &str, batch: usize, args: &Args, took: Duration, (table, index): (i64, i64)) {
    let secs = took.as_secs_f64();
    let rows = args.rows as f64;
    let per_million = |b: i64| b as f64 / rows * 1e6 / (1u64 << 30) as f64;
    println!(
        "{mode:>6} batch {batch:>5}: {rows:.0} rows in {secs:.2} s = {:>7.0} rows/s, {:>6.1} MB/s payload; \
         per million rows: table {:.2} GiB + indexes {:.2} GiB = {:.2} GiB",
        rows / secs,
        rows * args.size as f64 / secs / 1e6,
        per_million(table),
        per_million(index),
        per_million(table + index),
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let pg = if args.fsync {
        PostgresServer::start_args(&[])
    } else {
        PostgresServer::start_args(TEST_SETTINGS)
    };
    let config: Config = pg.conninfo("postgres").parse().expect("conninfo");
    let mut client = connect(&config).await;
    migrate(&mut client).await.expect("migrate");
    let settings: Vec<String> = client
        .query(
            "SELECT name || '=' || setting FROM pg_settings
             WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'wal_level', 'server_version')",
            &[],
        )
        .await
        .expect("settings")
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "PostgreSQL {}; {} rows of {} bytes per run",
        settings.join(", "),
        args.rows,
        args.size
    );

    // Warm-up, not measured: the first writes of a fresh cluster also create its WAL
    // segment files (later runs recycle them) and the partitions.
    let warm = rows(50_000, args.size, 0);
    for chunk in warm.chunks(5_000) {
        write_publications(&mut client, "warm-up", chunk, None)
            .await
            .expect("warm-up");
    }

    for &batch in &args.batches {
        // direct: the sink's one call, batch after batch.
        client
            .batch_execute("TRUNCATE starling_publications; CHECKPOINT")
            .await
            .expect("truncate");
        let all = rows(args.rows, args.size, 0);
        let log: Arc<str> = Arc::from("bench");
        // In a task, as the writer runs: from `main`'s thread (block_on) every message to
        // the connection's task would cross threads, which measured ~30 % slower.
        let (took, back) = tokio::spawn({
            let log = log.clone();
            async move {
                let started = Instant::now();
                let mut position = 0;
                for chunk in all.chunks(batch) {
                    position += chunk.len() as u64;
                    let cursor = LogPosition {
                        log_id: log.clone(),
                        position,
                    };
                    let r = write_publications(&mut client, "bench", chunk, Some(&cursor))
                        .await
                        .expect("write");
                    assert_eq!(r.inserted, chunk.len() as u64);
                }
                (started.elapsed(), client)
            }
        })
        .await
        .expect("direct run");
        client = back;
        report("direct", batch, &args, took, sizes(&client).await);

        // writer: the background writer fed as fast as it takes rows.
        client
            .batch_execute("TRUNCATE starling_publications; CHECKPOINT")
            .await
            .expect("truncate");
        let mut wc = WriterConfig::new(config.clone(), "bench-writer");
        wc.batch_rows = batch;
        wc.batch_bytes = 64 << 20;
        wc.queue_rows = batch * 4;
        wc.queue_bytes = 256 << 20;
        wc.linger = Duration::from_millis(50);
        let writer = Writer::start(wc);
        let all = rows(args.rows, args.size, 0);
        let started = Instant::now();
        for (i, row) in all.into_iter().enumerate() {
            let cursor = LogPosition {
                log_id: log.clone(),
                position: i as u64 + 1,
            };
            writer.send(row, Some(cursor)).await.expect("send");
        }
        while writer.stats().queued_publications > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        let stats = writer.stats();
        assert_eq!(stats.publications, args.rows);
        writer.shutdown(Duration::from_secs(10)).await;
        report("writer", batch, &args, took, sizes(&client).await);
        println!(
            "        writer: {} batches, mean {:.1} ms per batch",
            stats.batches,
            stats.batch_seconds_sum * 1e3 / stats.batches.max(1) as f64
        );
    }
}
