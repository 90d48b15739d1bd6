//! Publish throughput of the message log.
//!
//! ```text
//! cargo run --release -p starling-log --example log_throughput [-- DIR]
//! ```
//!
//! Appends 1,000,000 records with 100-byte payloads without durability (timed until
//! `sync()` returns, so the final fsync is included), then 10,000 durable records with
//! 1, 8 and 64 appenders that each wait for their record's fsync before the next append
//! (1, 8, 64 concurrent waiters). DIR defaults to a fresh directory under /tmp; the
//! filesystem holding it is printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_log::{Log, LogConfig, Record};

const PAYLOAD: usize = 100;

fn record(i: u64, payload: &Bytes) -> Record {
    Record {
        channel: format!("bench:chan-{}", i % 100),
        epoch: "Xq3f".into(),
        offset: i,
        time_ms: 1_700_000_000_000 + i,
        payload: payload.clone(),
    }
}

fn filesystem_of(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || !dir.starts_with(fields[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| fields[1].len() > *len) {
            best = Some((
                fields[1].len(),
                format!("{} on {} ({})", fields[2], fields[1], fields[0]),
            ));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown".into())
}

fn report(what: &str, records: u64, bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what:<34} {records:>9} records in {:>8.3} s = {:>11.0} records/s, {:>7.1} MB/s",
        secs,
        records as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn open(dir: &Path) -> Result<Log, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    let config = LogConfig {
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(365 * 24 * 3600 * 100),
        ..LogConfig::new(dir)
    };
    Ok(Log::open(config, |_| {})?.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("starling-log-bench-{}", std::process::id()))
        });
    std::fs::create_dir_all(&root)?;
    println!("directory: {}", root.display());
    println!("filesystem: {}", filesystem_of(&root));
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);

    // Non-durable: 1,000,000 records, one appender.
    let dir = root.join("plain");
    let log = open(&dir)?;
    let n = 1_000_000u64;
    let start = Instant::now();
    for i in 0..n {
        log.append_blocking(record(i, &payload), false)?;
    }
    log.sync()?;
    let elapsed = start.elapsed();
    let stats = log.stats();
    report("non-durable, 1 appender", n, stats.bytes, elapsed);
    println!(
        "  ({} segments, {} bytes on disk)",
        stats.segments, stats.bytes
    );
    drop(log);

    // Durable: 10,000 records, W appenders each waiting for its fsync.
    for waiters in [1u64, 8, 64] {
        let dir = root.join(format!("durable-{waiters}"));
        let log = Arc::new(open(&dir)?);
        let total = 10_000u64;
        let per = total / waiters;
        let start = Instant::now();
        let threads: Vec<_> = (0..waiters)
            .map(|w| {
                let log = log.clone();
                let payload = payload.clone();
                std::thread::spawn(move || -> Result<(), starling_log::LogError> {
                    for i in 0..per {
                        let rx = log.append_blocking(record(w * per + i, &payload), true)?;
                        if let Some(rx) = rx {
                            rx.blocking_recv()
                                .map_err(|_| starling_log::LogError::Closed)??;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| "appender panicked")??;
        }
        let elapsed = start.elapsed();
        let records = per * waiters;
        report(
            &format!("durable, {waiters} concurrent waiters"),
            records,
            log.stats().bytes,
            elapsed,
        );
        println!(
            "  (mean wait per durable append {:.3} ms)",
            elapsed.as_secs_f64() * 1e3 / (records / waiters) as f64
        );
    }
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
