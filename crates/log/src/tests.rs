use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::format::{HEADER_LEN, frame_len, parse_segment_name};

mod reader;

fn rec(i: u64) -> Record {
    Record {
        channel: format!("chan-{}", i % 3),
        epoch: "epoch-1".into(),
        offset: i,
        time_ms: 1_000 + i * 10,
        payload: Bytes::from(vec![i as u8; (i % 23) as usize + 1]),
    }
}

/// A config whose writer never acts on its own timer during a test, with a clock at the
/// epoch (so that no test record is ever old).
fn cfg(dir: &Path) -> LogConfig {
    LogConfig {
        sync_interval: Duration::from_secs(3600),
        retry_interval: Duration::from_secs(3600),
        clock: Arc::new(|| 0),
        ..LogConfig::new(dir)
    }
}

/// Opens the log and collects the replayed records.
fn open_all(config: LogConfig) -> Result<(Log, Vec<Record>), LogError> {
    let mut records = Vec::new();
    Log::open(config, |r| records.push(r)).map(|(log, _)| (log, records))
}

/// Opens the log, collecting the replayed records and the report.
fn open_report(config: LogConfig) -> (Log, Vec<Record>, OpenReport) {
    let mut records = Vec::new();
    let (log, report) = Log::open(config, |r| records.push(r)).unwrap();
    assert_eq!(report.records, records.len() as u64);
    (log, records, report)
}

fn clock_at(now: &Arc<AtomicU64>) -> Clock {
    let now = now.clone();
    Arc::new(move || now.load(Ordering::SeqCst))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

fn wait(rx: Option<DurableReceiver>) -> Result<(), LogError> {
    rx.expect("durable append returns a receiver")
        .blocking_recv()
        .expect("writer resolves every waiter")
}

fn copy_dir(from: &Path, to: &Path) {
    for p in segments(from) {
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn log_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
}

#[test]
fn round_trip_durable_and_not() {
    let dir = tempfile::tempdir().unwrap();
    let (log, old) = open_all(cfg(dir.path())).unwrap();
    assert!(old.is_empty());
    let mut waits = Vec::new();
    for i in 0..500 {
        let durable = i % 3 == 0;
        let rx = log.append(rec(i), durable).unwrap();
        assert_eq!(rx.is_some(), durable);
        waits.extend(rx);
    }
    for rx in waits {
        wait(Some(rx)).unwrap();
    }
    drop(log);
    let (_log, back) = open_all(cfg(dir.path())).unwrap();
    assert_eq!(back, (0..500).map(rec).collect::<Vec<_>>());
}

#[test]
fn drop_flushes_non_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    for i in 0..1000 {
        assert!(log.append(rec(i), false).unwrap().is_none());
    }
    drop(log);
    let (_log, back) = open_all(cfg(dir.path())).unwrap();
    assert_eq!(back, (0..1000).map(rec).collect::<Vec<_>>());
}

#[test]
fn empty_strings_and_payloads_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let r = Record {
        channel: String::new(),
        epoch: String::new(),
        offset: u64::MAX,
        time_ms: 0,
        payload: Bytes::new(),
    };
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    wait(log.append(r.clone(), true).unwrap()).unwrap();
    drop(log);
    assert_eq!(open_all(cfg(dir.path())).unwrap().1, vec![r]);
}

#[test]
fn rotation_spreads_records_over_segments_and_reopen_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..100 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    let stats = log.stats();
    let files = segments(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    assert_eq!(stats.segments, files.len() as u64);
    let on_disk: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(stats.bytes, on_disk);
    // Each segment is named after its first record's sequence number.
    assert_eq!(parse_segment_name("00000000000000000000.seg"), Some(0));
    assert!(files[0].ends_with("00000000000000000000.seg"));
    drop(log);

    let (log, back) = open_all(config.clone()).unwrap();
    assert_eq!(back, (0..100).map(rec).collect::<Vec<_>>());
    for i in 100..150 {
        log.append(rec(i), i % 10 == 0).unwrap();
    }
    drop(log);
    let (_log, back) = open_all(config).unwrap();
    assert_eq!(back, (0..150).map(rec).collect::<Vec<_>>());
}

/// `back` must be the newest records of `0..n`, in order, with nothing missing.
fn assert_suffix(back: &[Record], n: u64) -> u64 {
    let first = n - back.len() as u64;
    assert_eq!(back, (first..n).map(rec).collect::<Vec<_>>());
    first
}

#[test]
fn retention_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 300,
        max_bytes: 1_500,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..400 {
        log.append(rec(i), false).unwrap();
    }
    log.enforce_retention().unwrap();
    let stats = log.stats();
    assert!(stats.bytes <= 1_500, "{stats:?}");
    let on_disk: u64 = segments(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(stats.bytes, on_disk);
    drop(log);

    let (_log, back) = open_all(config).unwrap();
    let first = assert_suffix(&back, 400);
    assert!(
        first > 0 && back.len() > 20,
        "kept {} from {first}",
        back.len()
    );
}

#[test]
fn retention_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_bytes: 0,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    log.enforce_retention().unwrap();
    assert_eq!(log.stats().segments, 1);
    drop(log);
    assert_eq!(open_all(config).unwrap().1.len(), 10);
}

#[test]
fn retention_by_age_with_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(0));
    let config = LogConfig {
        segment_bytes: 300,
        max_age: Duration::from_millis(1_000),
        clock: clock_at(&now),
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    // rec(i).time_ms = 1000 + 10 i: records 0..200 span times 1000..2990.
    for i in 0..200 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    let before = log.stats().segments;
    // Cutoff 2000: every segment whose newest record is older than 2000 goes.
    now.store(3_000, Ordering::SeqCst);
    log.enforce_retention().unwrap();
    assert!(log.stats().segments < before);
    drop(log);

    let (log, back) = open_all(config.clone()).unwrap();
    let first = assert_suffix(&back, 200);
    // All records at or after the cutoff survive, and the first kept segment was needed.
    assert!(rec(first).time_ms < 2_000 + 300, "first kept {first}");
    assert!(first <= 100);
    assert!(first > 0);
    drop(log);

    // Everything expired, the active segment included: reopen keeps nothing, and the log
    // continues with fresh appends.
    now.store(1_000_000, Ordering::SeqCst);
    let (log, back) = open_all(config.clone()).unwrap();
    assert!(back.is_empty(), "{} kept", back.len());
    let fresh = Record {
        time_ms: 999_999,
        ..rec(7)
    };
    wait(log.append(fresh.clone(), true).unwrap()).unwrap();
    drop(log);
    assert_eq!(open_all(config).unwrap().1, vec![fresh]);
}

/// Writes `n` records, returns the path of the last segment and where its last record starts.
fn template(dir: &Path, n: u64, segment_bytes: u64) -> (PathBuf, u64) {
    let config = LogConfig {
        segment_bytes,
        ..cfg(dir)
    };
    let (log, _) = open_all(config).unwrap();
    for i in 0..n {
        log.append(rec(i), false).unwrap();
    }
    drop(log);
    let last = segments(dir).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    (last, len - frame_len(&rec(n - 1)))
}

fn reopen_after_damage(template_dir: &Path, damage: impl FnOnce(&Path), n: u64) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template_dir, dir.path());
    let last = segments(dir.path()).pop().unwrap();
    damage(&last);
    let config = LogConfig {
        segment_bytes: 250,
        ..cfg(dir.path())
    };
    let (log, back) = open_all(config.clone()).unwrap();
    assert_eq!(back, (0..n - 1).map(rec).collect::<Vec<_>>());
    wait(log.append(rec(1_000), true).unwrap()).unwrap();
    drop(log);
    let (_log, back) = open_all(config).unwrap();
    let mut expected: Vec<Record> = (0..n - 1).map(rec).collect();
    expected.push(rec(1_000));
    assert_eq!(back, expected);
}

#[test]
fn torn_last_record_is_truncated_at_every_byte() {
    let template_dir = tempfile::tempdir().unwrap();
    let n = 40;
    let (last, start) = template(template_dir.path(), n, 250);
    assert!(segments(template_dir.path()).len() > 2);
    let end = fs::metadata(&last).unwrap().len();
    assert!(start >= HEADER_LEN);
    for cut in start..end {
        reopen_after_damage(
            template_dir.path(),
            |p| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(cut).unwrap();
            },
            n,
        );
    }
}

#[test]
fn flipped_byte_in_last_record_is_truncated() {
    let template_dir = tempfile::tempdir().unwrap();
    let n = 40;
    let (last, start) = template(template_dir.path(), n, 250);
    let end = fs::metadata(&last).unwrap().len();
    for pos in start..end {
        reopen_after_damage(
            template_dir.path(),
            |p| {
                let mut data = fs::read(p).unwrap();
                data[pos as usize] ^= 0x5a;
                fs::write(p, data).unwrap();
            },
            n,
        );
    }
}

#[test]
fn torn_segment_header_of_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 250,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..40 {
        log.append(rec(i), false).unwrap();
    }
    drop(log);
    let last = segments(dir.path()).pop().unwrap();
    let base = parse_segment_name(last.file_name().unwrap().to_str().unwrap()).unwrap();
    // A crash right after creating the segment file: header partly written.
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(HEADER_LEN - 5)
        .unwrap();
    let (log, back) = open_all(config.clone()).unwrap();
    assert_eq!(back, (0..base).map(rec).collect::<Vec<_>>());
    wait(log.append(rec(500), true).unwrap()).unwrap();
    drop(log);
    let mut expected: Vec<Record> = (0..base).map(rec).collect();
    expected.push(rec(500));
    assert_eq!(open_all(config).unwrap().1, expected);
}

#[test]
fn corruption_in_an_older_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    template(dir.path(), 40, 250);
    let first = segments(dir.path())[0].clone();
    let mut data = fs::read(&first).unwrap();
    // Inside the first record's body: its crc fails, the second record is intact.
    data[HEADER_LEN as usize + 10] ^= 1;
    fs::write(&first, data).unwrap();
    let (_log, back, report) = open_report(cfg(dir.path()));
    assert_eq!(back, (1..40).map(rec).collect::<Vec<_>>());
    assert_eq!(report.skipped_regions, 1);
    assert_eq!(report.skipped_bytes, frame_len(&rec(0)));
    assert!(!report.clean);
}

#[test]
fn a_bad_header_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    template(dir.path(), 40, 250);
    let first = segments(dir.path())[0].clone();
    let mut data = fs::read(&first).unwrap();
    data[0] ^= 1;
    fs::write(&first, data).unwrap();
    match open_all(cfg(dir.path())) {
        Err(LogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, first);
            assert_eq!(position, 0);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("segment with a bad header accepted"),
    }
}

#[test]
fn a_missing_segment_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    template(dir.path(), 40, 250);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        open_all(cfg(dir.path())),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn a_second_log_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = open_all(cfg(dir.path())).unwrap();
    assert!(matches!(
        open_all(cfg(dir.path())),
        Err(LogError::Locked(_))
    ));
}

#[test]
fn invalid_config_and_oversized_records_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bad = LogConfig {
        sync_interval: Duration::ZERO,
        ..cfg(dir.path())
    };
    assert!(matches!(open_all(bad), Err(LogError::InvalidConfig(_))));
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let big = Record {
        payload: Bytes::from(vec![0u8; MAX_RECORD_BYTES]),
        ..rec(1)
    };
    assert!(matches!(
        log.append(big, true),
        Err(LogError::RecordTooLarge { .. })
    ));
    // The log is still usable.
    wait(log.append(rec(1), true).unwrap()).unwrap();
}

#[test]
fn open_under_a_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    match open_all(cfg(&file.join("log"))) {
        Err(LogError::Io { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a log under a regular file"),
    }
}

#[test]
fn write_failure_fails_waiters_and_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    log.break_file();
    let rx = log.append(rec(10), true).unwrap();
    assert!(matches!(wait(rx), Err(LogError::Failed(_))));
    assert!(matches!(
        log.append(rec(11), false),
        Err(LogError::Failed(_))
    ));
    assert!(matches!(
        log.append(rec(12), true),
        Err(LogError::Failed(_))
    ));
    assert!(matches!(log.sync(), Err(LogError::Failed(_))));
    drop(log); // no panic
    let (_log, back) = open_all(cfg(dir.path())).unwrap();
    assert_eq!(back, (0..10).map(rec).collect::<Vec<_>>());
}

#[test]
fn directory_replaced_by_a_file_fails_at_rotation() {
    // Works as root: creating the next segment under a path that is now a regular file
    // fails with ENOTDIR whatever the permissions.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("log");
    let config = LogConfig {
        segment_bytes: 200,
        ..cfg(&dir)
    };
    let (log, _) = open_all(config).unwrap();
    wait(log.append(rec(0), true).unwrap()).unwrap();
    fs::rename(&dir, parent.path().join("moved")).unwrap();
    fs::write(&dir, b"not a directory").unwrap();
    let mut failed_at = None;
    for i in 1..100 {
        match log.append(rec(i), true) {
            Ok(rx) => {
                if let Err(e) = wait(rx) {
                    assert!(matches!(e, LogError::Failed(_)), "{e}");
                    failed_at = Some(i);
                    break;
                }
            }
            Err(e) => panic!("append failed before any waiter did: {e}"),
        }
    }
    assert!(failed_at.is_some(), "rotation never failed");
    assert!(matches!(
        log.append(rec(200), false),
        Err(LogError::Failed(_))
    ));
}

#[test]
fn concurrent_appenders_keep_their_own_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        queue_records: 8,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut waits = Vec::new();
                for i in 0..300u64 {
                    let r = Record {
                        channel: format!("t{t}"),
                        ..rec(i)
                    };
                    waits.extend(log.append_blocking(r, i % 7 == 0).unwrap());
                }
                for rx in waits {
                    wait(Some(rx)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(log);
    let (_log, back) = open_all(config).unwrap();
    assert_eq!(back.len(), 1200);
    for t in 0..4 {
        let offsets: Vec<u64> = back
            .iter()
            .filter(|r| r.channel == format!("t{t}"))
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (0..300).collect::<Vec<_>>());
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: u8,
        durable: bool,
    },
    Sync,
    Reopen,
    /// Close, cut this many bytes off the end of the last segment, reopen.
    Truncate(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20, any::<bool>()).prop_map(|(n, durable)| Op::Append { n, durable }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        2 => (1u16..200).prop_map(Op::Truncate),
    ]
}

/// How many of the records `model[base..]` fit entirely in a segment cut to `len` bytes.
fn surviving(model: &[Record], base: u64, len: u64) -> u64 {
    if len < HEADER_LEN {
        return 0;
    }
    let mut end = HEADER_LEN;
    let mut kept = 0;
    for r in &model[base as usize..] {
        end += frame_len(r);
        if end > len {
            break;
        }
        kept += 1;
    }
    kept
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn behaves_like_a_vec(segment_bytes in 40u64..600, ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes, ..cfg(dir.path()) };
        let mut model: Vec<Record> = Vec::new();
        let (mut log, back) = open_all(config.clone()).unwrap();
        prop_assert!(back.is_empty());
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append { n, durable } => {
                    let mut waits = Vec::new();
                    for _ in 0..n {
                        let r = rec(next);
                        next += 1;
                        model.push(r.clone());
                        waits.extend(log.append(r, durable).unwrap());
                    }
                    for rx in waits {
                        wait(Some(rx)).unwrap();
                    }
                }
                Op::Sync => log.sync().unwrap(),
                Op::Reopen => {
                    drop(log);
                    let (l, back) = open_all(config.clone()).unwrap();
                    log = l;
                    prop_assert_eq!(&back, &model);
                }
                Op::Truncate(cut) => {
                    drop(log);
                    let last = segments(dir.path()).pop().unwrap();
                    let base = parse_segment_name(last.file_name().unwrap().to_str().unwrap()).unwrap();
                    let len = fs::metadata(&last).unwrap().len();
                    let new_len = len.saturating_sub(u64::from(cut));
                    fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(new_len).unwrap();
                    let kept = surviving(&model, base, new_len);
                    model.truncate((base + kept) as usize);
                    let (l, back) = open_all(config.clone()).unwrap();
                    log = l;
                    prop_assert_eq!(&back, &model);
                }
            }
        }
        drop(log);
        let (_log, back) = open_all(config).unwrap();
        prop_assert_eq!(&back, &model);
    }
}

/// Retries `f` until it returns `Some`, failing the test after 10 s: for conditions that
/// another thread (the writer's retry timer) brings about.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_full_queue_refuses_with_busy_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        queue_records: 4,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    let release = log.stall();
    let mut waits = Vec::new();
    for i in 0..4 {
        waits.extend(log.append(rec(i), true).unwrap());
    }
    // The queue is full and the writer stopped: refused at once, the record not taken.
    let start = std::time::Instant::now();
    assert!(matches!(log.append(rec(4), true), Err(LogError::Busy)));
    assert!(matches!(log.append(rec(4), false), Err(LogError::Busy)));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(log.stats().refused_busy, 2);
    assert!(!log.stats().failed);
    drop(release);
    for rx in waits {
        wait(Some(rx)).unwrap();
    }
    // Room again: accepted.
    wait(log.append(rec(4), true).unwrap()).unwrap();
    drop(log);
    let (_log, back, report) = open_report(config);
    assert_eq!(back, (0..5).map(rec).collect::<Vec<_>>());
    assert!(report.clean, "busy refusals lose nothing");
}

#[test]
fn a_write_failure_refuses_records_then_the_log_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retry_interval: Duration::from_millis(5),
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    wait(log.append(rec(10), true).unwrap()).unwrap();
    log.fail_writes(true);
    // Accepted before the writer saw the failure, then lost with it.
    let rx = log.append(rec(11), true).unwrap();
    assert!(matches!(wait(rx), Err(LogError::Failed(_))));
    let stats = log.stats();
    assert!(stats.failed);
    assert_eq!(stats.failures, 1);
    assert_eq!(stats.dropped_records, 1);
    assert!(matches!(log.failure(), Some(LogError::Failed(_))));
    // While failed (the retries keep failing): refused, counted, not queued.
    assert!(matches!(
        log.append(rec(12), false),
        Err(LogError::Failed(_))
    ));
    assert!(log.stats().refused_failed >= 1);
    // Space comes back: the writer's retry finds out on its own.
    log.fail_writes(false);
    let next = eventually("the log accepts records again", || {
        match log.append(rec(20), true) {
            Ok(rx) => Some(wait(rx)),
            Err(LogError::Failed(_)) => None,
            Err(e) => panic!("unexpected error {e}"),
        }
    });
    next.unwrap();
    assert!(!log.stats().failed);
    assert_eq!(log.stats().recoveries, 1);
    wait(log.append(rec(21), true).unwrap()).unwrap();
    drop(log);
    let (_log, back, report) = open_report(config);
    let mut expected: Vec<Record> = (0..=10).map(rec).collect();
    expected.extend([rec(20), rec(21)]);
    assert_eq!(back, expected);
    assert!(!report.clean, "a run that lost records does not stop clean");
}

#[test]
fn recovery_cuts_the_active_segment_back_to_its_last_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retry_interval: Duration::from_millis(5),
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    wait(log.append(rec(0), true).unwrap()).unwrap();
    // Flushed to the OS but never fsynced, then the handle breaks: after recovery the
    // segment ends at the last fsync, so the file holds no half-written batch.
    for i in 1..5 {
        log.append(rec(i), false).unwrap();
    }
    log.break_file();
    let rx = log.append(rec(5), true).unwrap();
    assert!(wait(rx).is_err());
    eventually("recovered", || (!log.stats().failed).then_some(()));
    let last = segments(dir.path()).pop().unwrap();
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        HEADER_LEN + frame_len(&rec(0))
    );
    assert!(log.stats().dropped_records >= 1);
    wait(log.append(rec(6), true).unwrap()).unwrap();
    drop(log);
    let (_log, back, _) = open_report(config);
    assert_eq!(back, vec![rec(0), rec(6)]);
}

#[test]
fn clean_marker_only_after_an_orderly_stop_that_lost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("CLEAN");
    let (log, _, report) = open_report(cfg(dir.path()));
    assert!(!report.clean, "a new directory has no marker");
    for i in 0..10 {
        log.append(rec(i), i == 9).map(wait_opt).unwrap();
    }
    // A crash now: the directory as it is while the log runs has no marker.
    log.sync().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    assert!(!marker.exists());
    let (_c, back, report) = open_report(cfg(crashed.path()));
    assert_eq!(back.len(), 10);
    assert!(!report.clean, "no marker after a crash");

    // close(): fsync, then the marker; a later append removes it again.
    assert!(log.close().unwrap());
    assert!(marker.exists());
    wait(log.append(rec(10), true).unwrap()).unwrap();
    assert!(!marker.exists(), "appended after close: not clean any more");
    drop(log);
    assert!(marker.exists(), "drop is an orderly stop");
    let (log, back, report) = open_report(cfg(dir.path()));
    assert_eq!(back.len(), 11);
    assert!(report.clean);
    assert!(
        !marker.exists(),
        "open removes the marker before accepting appends"
    );
    // A run with a write error stops without the marker.
    log.break_file();
    assert!(wait(log.append(rec(11), true).unwrap()).is_err());
    assert!(!log.close().unwrap());
    drop(log);
    assert!(!marker.exists());
    let (_log, _, report) = open_report(cfg(dir.path()));
    assert!(!report.clean);
}

fn wait_opt(rx: Option<DurableReceiver>) {
    if let Some(rx) = rx {
        rx.blocking_recv().unwrap().unwrap();
    }
}

/// A log of `n` records in one segment; returns the dir and each record's start.
fn one_segment(n: u64) -> (tempfile::TempDir, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    for i in 0..n {
        log.append(rec(i), false).unwrap();
    }
    drop(log);
    let mut starts = Vec::new();
    let mut at = HEADER_LEN;
    for i in 0..n {
        starts.push(at);
        at += frame_len(&rec(i));
    }
    (dir, starts)
}

#[test]
fn a_corrupt_record_in_the_middle_is_skipped_not_truncated() {
    let n = 30;
    let (template_dir, starts) = one_segment(n);
    let seg = segments(template_dir.path()).pop().unwrap();
    for &k in &[0u64, 1, 13, n - 2] {
        let len = frame_len(&rec(k));
        // Length field, crc, channel length, body, the last byte of the payload.
        for delta in [0, 2, 5, 8, 12, len / 2, len - 1] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template_dir.path(), dir.path());
            let path = dir.path().join(seg.file_name().unwrap());
            let mut data = fs::read(&path).unwrap();
            data[(starts[k as usize] + delta) as usize] ^= 0xa5;
            fs::write(&path, &data).unwrap();
            let (log, back, report) = open_report(cfg(dir.path()));
            let expected: Vec<Record> = (0..n).filter(|i| *i != k).map(rec).collect();
            assert_eq!(back, expected, "record {k}, byte {delta}");
            assert_eq!(report.skipped_regions, 1, "record {k}, byte {delta}");
            assert_eq!(report.skipped_bytes, len);
            assert_eq!(report.truncated_bytes, 0);
            assert!(!report.clean);
            // Appends continue after the valid records; the skip is found again on the
            // next open, but it is known then: a clean stop stays clean.
            wait(log.append(rec(100), true).unwrap()).unwrap();
            drop(log);
            let (_log, back, report) = open_report(cfg(dir.path()));
            assert_eq!(back.len(), n as usize);
            assert_eq!(back.last(), Some(&rec(100)));
            assert_eq!(report.skipped_regions, 1);
            assert!(report.clean, "a known skipped region after a clean stop");
        }
    }
}

#[test]
fn zeroed_records_in_the_middle_are_skipped() {
    let n = 30;
    let (dir, starts) = one_segment(n);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    // A block of zeros over records 10..=12 (as a lost page would leave).
    for b in &mut data[starts[10] as usize..starts[13] as usize] {
        *b = 0;
    }
    fs::write(&seg, &data).unwrap();
    let (_log, back, report) = open_report(cfg(dir.path()));
    let expected: Vec<Record> = (0..n).filter(|i| !(10..=12).contains(i)).map(rec).collect();
    assert_eq!(back, expected);
    assert_eq!(report.skipped_regions, 1);
}

#[test]
fn replay_streams_large_records_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..cfg(dir.path())
    };
    let big = |i: u64| Record {
        payload: Bytes::from(vec![i as u8; 300_000 + i as usize * 7_919]),
        ..rec(i)
    };
    let (log, _) = open_all(config.clone()).unwrap();
    for i in 0..12 {
        log.append(big(i), false).unwrap();
    }
    drop(log);
    assert!(segments(dir.path()).len() > 2);
    let mut seen = 0u64;
    let (_log, report) = Log::open(config, |r| {
        assert_eq!(r, big(seen));
        seen += 1;
    })
    .unwrap();
    assert_eq!(seen, 12);
    assert_eq!(report.records, 12);
    assert!(report.clean);
}

#[test]
fn a_long_garbage_region_is_crossed_in_linear_time() {
    // 4 MiB of pseudo-random bytes between two runs of valid records: every position is
    // a candidate, and the cheap length checks must reject nearly all before any crc.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    drop(log);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push(x as u8);
    }
    let mut tail = Vec::new();
    for i in 10..20 {
        format::write_frame(&mut tail, &rec(i)).unwrap();
    }
    data.extend_from_slice(&tail);
    fs::write(&seg, &data).unwrap();
    let (_log, back, report) = open_report(cfg(dir.path()));
    assert_eq!(back, (0..20).map(rec).collect::<Vec<_>>());
    assert_eq!(report.skipped_regions, 1);
    assert_eq!(report.skipped_bytes, 4 << 20);
}
