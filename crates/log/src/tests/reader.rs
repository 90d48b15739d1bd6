//! The tailing reader: durability, order, concurrency, retention gaps, restarts, crashes
//! and corruption.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use super::*;
use crate::recover::hidden_bound;

/// Wakes the blocked test thread when the future can make progress.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` on this thread until it completes, failing the test after 20 s. Parks
/// between polls and is woken by the future's waker (the watch channel), so it waits
/// for the event, not for a guessed time.
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        let now = Instant::now();
        assert!(now < deadline, "timed out waiting for the log");
        std::thread::park_timeout(deadline - now);
    }
}

/// What reading until an empty batch gave.
#[derive(Debug, Default)]
struct Drained {
    records: Vec<(u64, Record)>,
    gaps: Vec<Gap>,
    skipped_regions: u64,
    skipped_bytes: u64,
    batches: usize,
}

/// Reads batches until one reports nothing, checking the batch rules on the way: a gap
/// comes before its batch's records, numbers increase, sizes stay in bounds.
fn drain(reader: &mut LogReader, max_records: usize, max_bytes: usize) -> Drained {
    let mut out = Drained::default();
    loop {
        let batch = reader.next_batch(max_records, max_bytes).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.batches += 1;
        assert!(batch.records.len() <= max_records.max(1));
        let bytes: u64 = batch.records.iter().map(|(_, r)| frame_len(r)).sum();
        assert!(
            bytes <= max_bytes as u64 || batch.records.len() == 1,
            "{bytes} bytes in {} records",
            batch.records.len()
        );
        if let Some(gap) = batch.gap {
            assert!(gap.resumed_at > gap.from);
            if let Some((last, _)) = out.records.last() {
                assert!(gap.from > *last);
            }
            if let Some((first, _)) = batch.records.first() {
                assert!(*first >= gap.resumed_at);
            }
            out.gaps.push(gap);
        }
        for (seq, record) in batch.records {
            if let Some((last, _)) = out.records.last() {
                assert!(seq > *last, "{seq} after {last}");
            }
            out.records.push((seq, record));
        }
        // Just past the last record, or further when the reader moved past numbers no
        // record has (it realigned with the writer's numbering).
        if let Some((last, _)) = out.records.last() {
            assert!(reader.position() > *last);
        }
        out.skipped_regions += batch.skipped_regions;
        out.skipped_bytes += batch.skipped_bytes;
    }
}

/// `(i, rec(i))` for every `i` in `range`: records numbered as they were appended.
fn numbered(range: impl Iterator<Item = u64>) -> Vec<(u64, Record)> {
    range.map(|i| (i, rec(i))).collect()
}

/// Bytes of `rec(from..to)` on disk.
fn frames(from: u64, to: u64) -> u64 {
    (from..to).map(|i| frame_len(&rec(i))).sum()
}

/// Copies every file of a running log's directory: what a crash would leave (the page
/// cache included; cut the segments to model what a power loss takes away).
fn crash_image(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn reader_is_send() {
    fn check<T: Send>() {}
    check::<LogReader>();
}

#[test]
fn the_reader_returns_only_fsynced_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let mut reader = log.reader(0).unwrap();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    // In the file (the OS has them: a process crash would not lose them), not fsynced
    // (a power loss could): not for the reader.
    log.flush_unsynced();
    let seg = segments(dir.path()).pop().unwrap();
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        HEADER_LEN + frames(0, 10)
    );
    assert_eq!(log.synced_position(), 0);
    assert!(reader.next_batch(100, usize::MAX).unwrap().is_empty());
    assert_eq!(reader.position(), 0);

    log.sync().unwrap();
    assert_eq!(log.synced_position(), 10);
    assert_eq!(reader.synced_position(), 10);
    let batch = reader.next_batch(100, usize::MAX).unwrap();
    assert_eq!(batch.records, numbered(0..10));
    assert_eq!(batch.gap, None);
    assert_eq!(reader.position(), 10);

    // A durable record is readable once its fsync is acknowledged; a later non-durable
    // one is not, until the next fsync.
    wait(log.append(rec(10), true).unwrap()).unwrap();
    log.append(rec(11), false).unwrap();
    log.flush_unsynced();
    assert_eq!(log.synced_position(), 11);
    let batch = reader.next_batch(100, usize::MAX).unwrap();
    assert_eq!(batch.records, numbered(10..11));
    assert!(reader.next_batch(100, usize::MAX).unwrap().is_empty());
    assert_eq!(reader.stats().records, 11);
}

#[test]
fn the_watch_channel_follows_fsyncs_and_closes_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let mut watch = log.watch_synced();
    assert_eq!(*watch.borrow(), 0);
    log.append(rec(0), false).unwrap();
    let rx = log.append(rec(1), true).unwrap();
    assert_eq!(
        block_on(watch.wait_for(|s| *s >= 2)).map(|s| *s).unwrap(),
        2
    );
    wait(rx).unwrap();
    // A reader made before the log stops reads what the stop fsynced.
    let mut reader = log.reader(0).unwrap();
    log.append(rec(2), false).unwrap();
    drop(log);
    // The stop fsynced rec(2), then the writer thread ended.
    assert_eq!(*watch.borrow_and_update(), 3);
    assert!(block_on(watch.changed()).is_err(), "the writer is gone");
    assert_eq!(drain(&mut reader, 10, usize::MAX).records, numbered(0..3));
}

#[test]
fn a_concurrent_reader_gets_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2_000,
        // Non-durable records become readable through the writer's own timer too.
        sync_interval: Duration::from_millis(2),
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config).unwrap();
    let log = Arc::new(log);
    const N: u64 = 3_000;
    // The appender stops after record 999 (durable) until the reader has read it all.
    const PAUSE: u64 = 1_000;
    let (go_on, paused) = std::sync::mpsc::channel::<()>();
    let appender = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                let rx = log
                    .append_blocking(rec(i), i % 97 == 0 || i == PAUSE - 1)
                    .unwrap();
                if i == PAUSE - 1 {
                    wait(rx).unwrap();
                    paused.recv().unwrap();
                }
            }
            log.sync().unwrap();
        })
    };
    let mut reader = log.reader(0).unwrap();
    let mut watch = log.watch_synced();
    let mut next = 0;
    let mut released = false;
    while next < N {
        if next == PAUSE && !released {
            // Caught up with a writer that appends nothing: nothing more to read.
            assert_eq!(log.synced_position(), PAUSE);
            assert!(reader.next_batch(17, 700).unwrap().is_empty());
            go_on.send(()).unwrap();
            released = true;
        }
        let batch = reader.next_batch(17, 700).unwrap();
        // The log's synced position only grows: what the reader saw is below it.
        let synced = log.synced_position();
        assert_eq!(batch.gap, None);
        assert_eq!(batch.skipped_regions, 0);
        assert!(batch.records.len() <= 17);
        if batch.records.is_empty() {
            let at = reader.position();
            block_on(watch.wait_for(|s| *s > at)).unwrap();
            continue;
        }
        for (seq, record) in batch.records {
            assert_eq!(seq, next, "in order, each once");
            assert_eq!(record, rec(seq));
            assert!(
                seq < synced,
                "record {seq} returned beyond the synced {synced}"
            );
            next += 1;
        }
        assert_eq!(reader.position(), next);
    }
    appender.join().unwrap();
    assert!(released);
    assert!(reader.next_batch(17, 700).unwrap().is_empty());
    assert_eq!(reader.position(), N);
    assert_eq!(log.synced_position(), N);
    assert!(segments(dir.path()).len() > 40, "rolled over segments");
}

#[test]
fn batches_are_bounded_and_cross_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config).unwrap();
    for i in 0..300 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    assert!(segments(dir.path()).len() > 50);

    let by_count = drain(&mut log.reader(0).unwrap(), 5, usize::MAX);
    assert_eq!(by_count.records, numbered(0..300));
    assert_eq!(by_count.batches, 60);

    // 150 bytes hold two or three of these records: never more than fit.
    let by_bytes = drain(&mut log.reader(0).unwrap(), 1_000, 150);
    assert_eq!(by_bytes.records, numbered(0..300));
    assert!(by_bytes.batches > 100);

    // A record larger than the byte bound comes alone, instead of never.
    let big = Record {
        payload: Bytes::from(vec![7u8; 1_000]),
        ..rec(300)
    };
    wait(log.append(big.clone(), true).unwrap()).unwrap();
    let mut reader = log.reader(299).unwrap();
    let batch = reader.next_batch(10, 150).unwrap();
    assert_eq!(batch.records, numbered(299..300));
    let batch = reader.next_batch(10, 150).unwrap();
    assert_eq!(batch.records, vec![(300, big)]);
    // Zero means one: a caller's zero bound does not stall the reader.
    wait(log.append(rec(301), true).unwrap()).unwrap();
    assert_eq!(reader.next_batch(0, 0).unwrap().records, numbered(301..302));
}

#[test]
fn large_records_stream_through_the_bounded_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..cfg(dir.path())
    };
    let big = |i: u64| Record {
        payload: Bytes::from(vec![i as u8; 300_000 + i as usize * 7_919]),
        ..rec(i)
    };
    let (log, _) = open_all(config).unwrap();
    for i in 0..12 {
        log.append(big(i), i == 11).unwrap();
    }
    log.sync().unwrap();
    let got = drain(&mut log.reader(3).unwrap(), 2, 1 << 20);
    let expected: Vec<(u64, Record)> = (3..12).map(|i| (i, big(i))).collect();
    assert_eq!(got.records, expected);
}

#[test]
fn retention_behind_the_reader_is_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 300,
        max_bytes: 1_500,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config).unwrap();
    // Few enough that retention (run by the writer after every rotation) keeps them.
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    let mut reader = log.reader(0).unwrap();
    let first = reader.next_batch(10, usize::MAX).unwrap();
    assert_eq!(first.gap, None);
    assert_eq!(first.records, numbered(0..10));
    for i in 10..400 {
        log.append(rec(i), false).unwrap();
    }
    log.enforce_retention().unwrap();
    let oldest = parse_segment_name(
        segments(dir.path())[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert!(oldest > 100, "retention deleted past the reader ({oldest})");
    assert!(
        !segments(dir.path())
            .iter()
            .any(|p| p.ends_with(format::segment_name(0)))
    );

    // The reader finishes the segment it has open (deleted or not), then finds the
    // next ones gone: one gap, up to the oldest retained record, and on from there.
    let rest = drain(&mut reader, 25, usize::MAX);
    assert_eq!(rest.gaps.len(), 1, "{:?}", rest.gaps);
    let gap = rest.gaps[0];
    assert_eq!(gap.resumed_at, oldest);
    let before: Vec<_> = rest
        .records
        .iter()
        .filter(|(s, _)| *s < gap.from)
        .cloned()
        .collect();
    let after: Vec<_> = rest
        .records
        .iter()
        .filter(|(s, _)| *s >= gap.resumed_at)
        .cloned()
        .collect();
    assert_eq!(before, numbered(10..gap.from));
    assert_eq!(after, numbered(oldest..400));
    assert_eq!(10 + rest.records.len() as u64 + gap.records(), 400);
    let stats = reader.stats();
    assert_eq!(stats.gaps, 1);
    assert_eq!(stats.gap_records, gap.records());
    assert_eq!(stats.records, 400 - gap.records());

    // A reader from a position retention deleted long ago starts with the gap.
    let mut late = log.reader(3).unwrap();
    let batch = late.next_batch(5, usize::MAX).unwrap();
    assert_eq!(
        batch.gap,
        Some(Gap {
            from: 3,
            resumed_at: oldest
        })
    );
    assert_eq!(batch.records, numbered(oldest..oldest + 5));
    assert_eq!(late.stats().gap_records, oldest - 3);
}

#[test]
fn a_reader_continues_after_a_restart_from_its_saved_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 250,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config.clone()).unwrap();
    let id = log.id();
    for i in 0..100 {
        log.append(rec(i), i % 10 == 0).unwrap();
    }
    log.sync().unwrap();
    let mut reader = log.reader(0).unwrap();
    let mut archived = Vec::new();
    while archived.len() < 37 {
        let batch = reader.next_batch(37 - archived.len(), usize::MAX).unwrap();
        archived.extend(batch.records);
    }
    let saved = reader.position();
    assert_eq!(saved, 37);
    assert!(log.close().unwrap());
    drop(reader);
    drop(log);

    let (log, back, report) = open_report(config);
    assert!(report.clean);
    assert_eq!(back.len(), 100);
    assert_eq!(log.id(), id, "same log, same id");
    assert_eq!(log.synced_position(), 100);
    for i in 100..150 {
        log.append(rec(i), i % 7 == 0).unwrap();
    }
    log.sync().unwrap();
    let mut reader = log.reader(saved).unwrap();
    archived.extend(drain(&mut reader, 16, usize::MAX).records);
    assert_eq!(archived, numbered(0..150), "no duplicate, no loss");
    assert_eq!(reader.position(), 150);

    // A position this log never handed out is refused.
    match log.reader(151) {
        Err(ReadError::Ahead { position, synced }) => assert_eq!((position, synced), (151, 150)),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("reader from beyond the end accepted"),
    }
}

#[test]
fn records_lost_in_a_torn_tail_were_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let id = log.id();
    for i in 0..10 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    let mut reader = log.reader(0).unwrap();
    assert_eq!(drain(&mut reader, 100, usize::MAX).records, numbered(0..10));
    let saved = reader.position();
    // Five more reach the OS but no fsync: the reader does not return them.
    for i in 10..15 {
        log.append(rec(i), false).unwrap();
    }
    log.flush_unsynced();
    assert!(reader.next_batch(100, usize::MAX).unwrap().is_empty());
    assert_eq!(reader.position(), saved);

    let synced_len = HEADER_LEN + frames(0, 10);
    // The machine crashes. What reaches the disk of the unsynced part: some of it (the
    // write tore inside record 12), or none of it (torn inside record 10).
    for (cut, survivors) in [
        (synced_len + frames(10, 12) + 3, 12u64),
        (synced_len + 5, 10),
    ] {
        let crashed = tempfile::tempdir().unwrap();
        crash_image(dir.path(), crashed.path());
        let seg = segments(crashed.path()).pop().unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();

        let (log, back, report) = open_report(cfg(crashed.path()));
        assert_eq!(back, (0..survivors).map(rec).collect::<Vec<_>>());
        assert!(report.truncated_bytes > 0);
        assert!(!report.clean);
        assert_eq!(
            log.id(),
            id,
            "same log: the numbers below the saved position hold"
        );
        assert_eq!(log.synced_position(), survivors);
        // New records take the numbers of the lost ones: the archive never had those.
        wait(log.append(rec(100), true).unwrap()).unwrap();
        wait(log.append(rec(101), true).unwrap()).unwrap();
        let mut reader = log.reader(saved).unwrap();
        let mut expected = numbered(10..survivors);
        expected.push((survivors, rec(100)));
        expected.push((survivors + 1, rec(101)));
        let got = drain(&mut reader, 100, usize::MAX);
        assert_eq!(got.records, expected, "cut at {cut}");
        assert!(got.gaps.is_empty());
    }
}

/// Byte position of `rec(k)` in a segment holding `rec(base..)`.
fn start_of(base: u64, k: u64) -> u64 {
    HEADER_LEN + frames(base, k)
}

#[test]
fn a_corrupt_record_in_a_sealed_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    template(dir.path(), 40, 250);
    let first = segments(dir.path())[0].clone();
    let mut data = fs::read(&first).unwrap();
    data[(start_of(0, 2) + 10) as usize] ^= 1;
    fs::write(&first, data).unwrap();
    let (log, _, report) = open_report(cfg(dir.path()));
    assert_eq!(report.skipped_regions, 1);

    let got = drain(&mut log.reader(0).unwrap(), 7, usize::MAX);
    // The records after the region keep their numbers (counted back from the next
    // segment's base), and the hidden one is missing.
    assert_eq!(got.records, numbered((0..40).filter(|i| *i != 2)));
    assert_eq!(got.skipped_regions, 1);
    assert_eq!(got.skipped_bytes, frame_len(&rec(2)));
    // From a position saved before or after the damage appeared.
    assert_eq!(
        drain(&mut log.reader(2).unwrap(), 7, usize::MAX).records,
        numbered(3..40)
    );
    let from_3 = drain(&mut log.reader(3).unwrap(), 7, usize::MAX);
    assert_eq!(from_3.records, numbered(3..40));
    assert_eq!(from_3.skipped_regions, 0, "counted only past the position");
}

#[test]
fn corruption_in_the_last_segment_never_lets_numbers_go_back() {
    let n = 30;
    let (dir, starts) = one_segment(n);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    // Records 10..=12 zeroed (a lost page): 3 records hidden, the bound says more.
    for b in &mut data[starts[10] as usize..starts[13] as usize] {
        *b = 0;
    }
    fs::write(&seg, &data).unwrap();
    let region = starts[13] - starts[10];
    let bound = hidden_bound(region);
    assert!(bound > 3, "bound {bound}");

    let (log, back, report) = open_report(cfg(dir.path()));
    assert_eq!(back.len(), 27);
    assert_eq!(report.skipped_regions, 1);
    // Open started a new segment after the most records the region can have hidden.
    let end = 27 + bound;
    assert_eq!(log.synced_position(), end);
    let last = segments(dir.path()).pop().unwrap();
    assert_eq!(
        parse_segment_name(last.file_name().unwrap().to_str().unwrap()),
        Some(end)
    );
    wait(log.append(rec(100), true).unwrap()).unwrap();

    let got = drain(&mut log.reader(0).unwrap(), 100, usize::MAX);
    let shift = bound - 3;
    let mut expected = numbered(0..10);
    expected.extend((13..n).map(|i| (i + shift, rec(i))));
    expected.push((end, rec(100)));
    assert_eq!(
        got.records, expected,
        "numbers only move up past the region"
    );
    // A consumer that archived up to record 19 (position 20) before the damage repeats
    // a few records and loses none.
    let resumed = drain(&mut log.reader(20).unwrap(), 100, usize::MAX);
    let resumed: Vec<Record> = resumed.records.into_iter().map(|(_, r)| r).collect();
    let mut tail: Vec<Record> = (20 - shift..n).map(rec).collect();
    tail.push(rec(100));
    assert_eq!(resumed, tail);
}

#[test]
fn corruption_met_while_running_is_skipped_and_the_numbering_realigns() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    for i in 0..30 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    // The disk damages a record the writer fsynced in the active segment.
    let seg = segments(dir.path()).pop().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0xff], start_of(0, 5) + 12).unwrap();
    }
    let mut reader = log.reader(0).unwrap();
    let got = drain(&mut reader, 8, usize::MAX);
    // The records after the region are numbered back from the fsynced end, whose
    // number the writer published: their true numbers.
    assert_eq!(got.records, numbered((0..30).filter(|i| *i != 5)));
    assert_eq!(got.skipped_regions, 1);
    assert_eq!(got.skipped_bytes, frame_len(&rec(5)));
    assert_eq!(reader.position(), 30);
    wait(log.append(rec(30), true).unwrap()).unwrap();
    assert_eq!(
        reader.next_batch(8, usize::MAX).unwrap().records,
        numbered(30..31)
    );
    // A reader made later from a saved position numbers them the same way.
    for from in [3, 5, 6, 20, 30] {
        let got = drain(&mut log.reader(from).unwrap(), 8, usize::MAX);
        assert_eq!(
            got.records,
            numbered((from..31).filter(|i| *i != 5)),
            "from {from}"
        );
    }
    // After a restart, open finds the region in the last segment and starts a new
    // segment past the most records it can have hidden; the records keep their numbers.
    drop(reader);
    drop(log);
    let (log, _, report) = open_report(cfg(dir.path()));
    assert_eq!(report.skipped_regions, 1);
    assert_eq!(
        log.synced_position(),
        31 - 1 + hidden_bound(frame_len(&rec(5)))
    );
    let got = drain(&mut log.reader(20).unwrap(), 8, usize::MAX);
    assert_eq!(got.records, numbered(20..31));
}

#[test]
fn a_sealed_segment_with_a_damaged_header_is_skipped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 250,
        ..cfg(dir.path())
    };
    let (log, _) = open_all(config).unwrap();
    for i in 0..40 {
        log.append(rec(i), false).unwrap();
    }
    log.sync().unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() > 3);
    let base = |p: &PathBuf| parse_segment_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
    let (lost_from, lost_to) = (base(&segs[1]), base(&segs[2]));
    let mut data = fs::read(&segs[1]).unwrap();
    data[0] ^= 0xff;
    fs::write(&segs[1], &data).unwrap();
    let got = drain(&mut log.reader(0).unwrap(), 100, usize::MAX);
    assert_eq!(
        got.records,
        numbered((0..40).filter(|i| !(lost_from..lost_to).contains(i)))
    );
    assert_eq!(got.skipped_regions, 1);
    assert_eq!(got.skipped_bytes, data.len() as u64);
    assert!(got.gaps.is_empty(), "damage is not retention");
}

#[test]
fn the_log_id_changes_only_when_the_numbers_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let id = log.id();
    for i in 0..5 {
        log.append(rec(i), false).unwrap();
    }
    drop(log);
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    assert_eq!(log.id(), id);
    drop(log);

    // A log from before ids existed (or a lost id file): a new id, the numbers go on.
    fs::remove_file(dir.path().join("ID")).unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    let id2 = log.id();
    assert_ne!(id2, id);
    wait(log.append(rec(5), true).unwrap()).unwrap();
    assert_eq!(
        drain(&mut log.reader(5).unwrap(), 10, usize::MAX).records,
        numbered(5..6)
    );
    drop(log);

    // The segments removed (the directory wiped but for the id): numbers start at 0
    // again, so the id must change.
    for seg in segments(dir.path()) {
        fs::remove_file(seg).unwrap();
    }
    let (log, back) = open_all(cfg(dir.path())).unwrap();
    assert!(back.is_empty());
    assert_ne!(log.id(), id2);
    assert_eq!(log.synced_position(), 0);
    let fresh = log.id();
    drop(log);
    // The whole directory gone: a new log, a new id.
    fs::remove_dir_all(dir.path()).unwrap();
    let (log, _) = open_all(cfg(dir.path())).unwrap();
    assert_ne!(log.id(), fresh);
}

#[derive(Debug, Clone)]
enum ReadOp {
    Append {
        n: u8,
        durable: bool,
    },
    Sync,
    /// Written to the OS, not fsynced.
    Flush,
    Read {
        max_records: u8,
        max_bytes: u16,
    },
    /// Read until a batch is empty.
    Drain,
    /// Orderly stop (fsyncs everything), open again, a new reader from the saved position.
    Reopen,
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        4 => (1u8..20, any::<bool>()).prop_map(|(n, durable)| ReadOp::Append { n, durable }),
        1 => Just(ReadOp::Sync),
        1 => Just(ReadOp::Flush),
        4 => (0u8..12, 0u16..400).prop_map(|(max_records, max_bytes)| ReadOp::Read { max_records, max_bytes }),
        1 => Just(ReadOp::Drain),
        1 => Just(ReadOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever the interleaving, the reader returns the appended records in order, each
    /// once, numbered as appended, never one beyond the synced position, and everything
    /// once it is synced.
    #[test]
    fn the_reader_returns_exactly_the_synced_records(
        segment_bytes in 40u64..600,
        ops in proptest::collection::vec(read_op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes, ..cfg(dir.path()) };
        let (mut log, _) = open_all(config.clone()).unwrap();
        let mut reader = log.reader(0).unwrap();
        let mut appended = 0u64;
        // Everything below this is known to be fsynced (more may be: rotations fsync).
        let mut synced_known = 0u64;
        let mut got = 0u64;
        let check = |batch: Batch, synced: u64, got: &mut u64| -> Result<(), TestCaseError> {
            prop_assert_eq!(batch.gap, None);
            prop_assert_eq!(batch.skipped_regions, 0);
            for (seq, record) in batch.records {
                prop_assert_eq!(seq, *got);
                prop_assert_eq!(record, rec(seq));
                prop_assert!(seq < synced, "{} returned, synced {}", seq, synced);
                *got += 1;
            }
            Ok(())
        };
        for op in ops {
            match op {
                ReadOp::Append { n, durable } => {
                    let mut waits = Vec::new();
                    for _ in 0..n {
                        waits.extend(log.append(rec(appended), durable).unwrap());
                        appended += 1;
                    }
                    for rx in waits {
                        wait(Some(rx)).unwrap();
                    }
                    if durable {
                        // Group commit: the fsync covered everything queued before.
                        synced_known = appended;
                    }
                }
                ReadOp::Sync => {
                    log.sync().unwrap();
                    synced_known = appended;
                }
                ReadOp::Flush => log.flush_unsynced(),
                ReadOp::Read { max_records, max_bytes } => {
                    let batch = reader.next_batch(usize::from(max_records), usize::from(max_bytes)).unwrap();
                    prop_assert!(batch.records.len() <= usize::from(max_records.max(1)));
                    let bytes: u64 = batch.records.iter().map(|(_, r)| frame_len(r)).sum();
                    prop_assert!(bytes <= u64::from(max_bytes) || batch.records.len() == 1);
                    check(batch, log.synced_position(), &mut got)?;
                    prop_assert_eq!(reader.position(), got);
                }
                ReadOp::Drain => {
                    let before = log.synced_position();
                    loop {
                        let batch = reader.next_batch(7, 300).unwrap();
                        if batch.is_empty() {
                            break;
                        }
                        check(batch, log.synced_position(), &mut got)?;
                    }
                    prop_assert!(got >= before.max(synced_known));
                    prop_assert!(got <= log.synced_position());
                    prop_assert_eq!(reader.position(), got);
                }
                ReadOp::Reopen => {
                    let saved = reader.position();
                    drop(reader);
                    drop(log);
                    let (l, back) = open_all(config.clone()).unwrap();
                    prop_assert_eq!(back.len() as u64, appended);
                    log = l;
                    synced_known = appended;
                    prop_assert_eq!(log.synced_position(), appended);
                    reader = log.reader(saved).unwrap();
                }
            }
        }
        log.sync().unwrap();
        loop {
            let batch = reader.next_batch(64, usize::MAX).unwrap();
            if batch.is_empty() {
                break;
            }
            check(batch, log.synced_position(), &mut got)?;
        }
        prop_assert_eq!(got, appended);
    }
}
