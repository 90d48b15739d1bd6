//! The writer thread: group commit, rotation, retention, failure and recovery, and the
//! `CLEAN` marker.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::format::{self, HEADER_LEN};
use crate::reader::SyncedState;
use crate::recover::SegmentMeta;
use crate::{CLEAN_MARKER, Clock, Cmd, LogConfig, LogError, Record, Shared, io_err};

/// Size of the write buffer in front of the active segment.
const WRITE_BUFFER: usize = 256 * 1024;
/// Bytes a recovery attempt must be able to write (and then cuts off again) before the
/// log accepts records again: one write buffer, so that the first batch fits.
const PROBE_BYTES: usize = WRITE_BUFFER;
/// While failed, at most one log line per this interval.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The part of the active segment known to be on disk (fsynced).
#[derive(Debug, Clone, Copy)]
struct Synced {
    bytes: u64,
    records: u64,
    max_time_ms: Option<u64>,
}

type Waiter = oneshot::Sender<Result<(), LogError>>;
type Reply = SyncSender<Result<(), LogError>>;

pub(crate) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    max_age_ms: u64,
    sync_interval: Duration,
    batch_limit: usize,
    clock: Clock,
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<SegmentMeta>,
    file: BufWriter<File>,
    total_bytes: u64,
    /// Records written since the last fsync.
    dirty: bool,
    /// Set by a rotation, so that retention runs after the batch.
    rotated: bool,
    failed: Option<Arc<str>>,
    shared: Arc<Shared>,
    /// The active segment up to its last fsync: where a recovery cuts it back to.
    synced: Synced,
    /// The sequence number after the last fsynced record, for [`crate::Log::watch_synced`].
    /// Owned by the writer thread, so that receivers see the channel close when the
    /// writer is gone (the log dropped) instead of waiting forever.
    synced_tx: watch::Sender<u64>,
    /// A record was lost during this run (a write error): no `CLEAN` marker at the stop.
    lost: bool,
    /// The `CLEAN` marker is on disk (after `close`); the next append removes it.
    marker_written: bool,
    retry_interval: Duration,
    last_retry: Instant,
    /// When an error line was last logged (failures and retry summaries share it).
    last_error_log: Option<Instant>,
    /// When a recovery line was last logged.
    last_recovery_log: Option<Instant>,
    /// Appends refused while failed, as of the last log line (for the summary).
    refused_logged: u64,
    #[cfg(test)]
    fail_writes: bool,
}

impl Writer {
    /// Takes over the scanned segments (creating the first one in an empty directory),
    /// opens the last one for appending and applies retention. Returns the writer and the
    /// number of leading segments retention deleted.
    pub(crate) fn open(
        config: &LogConfig,
        mut metas: Vec<SegmentMeta>,
        shared: Arc<Shared>,
        synced_tx: watch::Sender<u64>,
    ) -> Result<(Writer, usize), LogError> {
        let file = match metas.last() {
            Some(active) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&active.path)
                    .map_err(|e| io_err(&active.path, e))?;
                // A process that crashed (rather than the machine) leaves records in the
                // page cache that were never fsynced; the scan found them, and from now
                // on they count as fsynced (the tailing reader hands them out). Make it
                // true before anything is read. Older segments were fsynced when the
                // next one was started.
                file.sync_all().map_err(|e| io_err(&active.path, e))?;
                file
            }
            None => {
                let (file, meta) =
                    create_segment(&config.dir, 0).map_err(|(p, e)| io_err(&p, e))?;
                metas.push(meta);
                file
            }
        };
        let total_bytes = metas.iter().map(|m| m.bytes).sum();
        let synced = metas.last().map_or(
            Synced {
                bytes: HEADER_LEN,
                records: 0,
                max_time_ms: None,
            },
            |m| Synced {
                bytes: m.bytes,
                records: m.records,
                max_time_ms: m.max_time_ms,
            },
        );
        let mut writer = Writer {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            max_bytes: config.max_bytes,
            max_age_ms: u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX),
            sync_interval: config.sync_interval,
            batch_limit: config.queue_records,
            clock: config.clock.clone(),
            segments: metas.into(),
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            total_bytes,
            dirty: false,
            rotated: false,
            failed: None,
            shared,
            synced,
            synced_tx,
            lost: false,
            marker_written: false,
            retry_interval: config.retry_interval,
            last_retry: Instant::now(),
            last_error_log: None,
            last_recovery_log: None,
            refused_logged: 0,
            #[cfg(test)]
            fail_writes: false,
        };
        if !writer.active().skipped.is_empty() {
            // The last segment hides records in a corrupt region, and how many is unknown:
            // appending to it would number the new records as if there were none, giving
            // them numbers that hidden (and later) records had, which a tailing reader
            // may already have handed out. Start a new segment after the most records
            // the regions can have hidden instead (`SegmentMeta::end`).
            writer.rotate().map_err(|(path, e)| io_err(&path, e))?;
        }
        writer.publish_synced();
        let deleted = writer.retention().map_err(|(path, e)| io_err(&path, e))?;
        Ok((writer, deleted))
    }

    /// The thread's loop: until shutdown (or the queue's sender is dropped).
    pub(crate) fn run(mut self, rx: Receiver<Cmd>) {
        let mut last_sync = Instant::now();
        let mut last_retention = Instant::now();
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        // Whether the last turn took anything: then the writer lingers for more instead of
        // announcing that it sleeps.
        let mut took = false;
        loop {
            let since = if self.dirty {
                last_sync
            } else {
                last_retention
            };
            let mut wait = self.sync_interval.saturating_sub(since.elapsed());
            if self.failed.is_some() {
                wait = wait.min(
                    self.retry_interval
                        .saturating_sub(self.last_retry.elapsed()),
                );
            }
            let mut shutdown = false;
            let mut closes = Vec::new();
            let lingering = took;
            took = false;
            let mut retention_asked = false;
            match self.next_command(&rx, wait, lingering) {
                Ok(cmd) => {
                    let mut next = Some(cmd);
                    let mut taken = 0;
                    took = true;
                    while let Some(cmd) = next.take() {
                        taken += 1;
                        match cmd {
                            Cmd::Append(record, waiter) => {
                                self.append(record, waiter, &mut waiters)
                            }
                            Cmd::Sync(reply) => replies.push(reply),
                            Cmd::Retention(reply) => {
                                retention_asked = true;
                                replies.push(reply);
                            }
                            Cmd::Close(reply) => closes.push(reply),
                            Cmd::Shutdown => shutdown = true,
                            #[cfg(test)]
                            Cmd::BreakFile => self.break_file(),
                            #[cfg(test)]
                            Cmd::Stall(started, until) => {
                                let _ = started.send(());
                                let _ = until.recv();
                            }
                            #[cfg(test)]
                            Cmd::FailWrites(on) => self.fail_writes = on,
                            #[cfg(test)]
                            Cmd::Flush(reply) => {
                                self.commit(false);
                                let _ = reply.send(());
                            }
                        }
                        if !shutdown && taken < self.batch_limit {
                            next = rx.try_recv().ok();
                        }
                    }
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => shutdown = true,
            }

            let must_sync = !waiters.is_empty()
                || !replies.is_empty()
                || !closes.is_empty()
                || shutdown
                || (self.dirty && last_sync.elapsed() >= self.sync_interval);
            self.commit(must_sync);
            if must_sync {
                last_sync = Instant::now();
            }
            for waiter in waiters.drain(..) {
                let _ = waiter.send(self.status());
            }
            if self.failed.is_none()
                && (self.rotated
                    || retention_asked
                    || last_retention.elapsed() >= self.sync_interval)
            {
                self.rotated = false;
                last_retention = Instant::now();
                if let Err((path, e)) = self.retention() {
                    self.fail("rotating segment", &path, e);
                }
            }
            if self.failed.is_some() && self.last_retry.elapsed() >= self.retry_interval {
                self.last_retry = Instant::now();
                self.try_recover();
            }
            self.publish_stats();
            for reply in replies.drain(..) {
                let _ = reply.send(self.status());
            }
            if !closes.is_empty() || shutdown {
                let clean = self.mark_clean();
                if let Err(e) = &clean {
                    tracing::warn!("cannot write the message log's clean marker: {e}");
                }
                for reply in closes.drain(..) {
                    let _ = reply.send(match &clean {
                        Ok(clean) => Ok(*clean),
                        Err(e) => Err(LogError::Failed(Arc::from(e.to_string()))),
                    });
                }
            }
            if shutdown {
                break;
            }
        }
        if self.failed.is_some() {
            // Dropping the buffer would flush the failed batch behind the segment's good
            // end: discard it instead.
            let _ = self.file.into_parts();
        }
    }

    /// The next command: at once if one is queued; otherwise, after a busy turn, after
    /// [`LINGER`](crate::LINGER) (appenders do not wake a lingering writer unless a record
    /// is durable); otherwise after sleeping until woken or `wait` passes. The writer never
    /// blocks on the queue itself, so an append never pays for waking it unless it sleeps.
    fn next_command(
        &self,
        rx: &Receiver<Cmd>,
        wait: Duration,
        lingering: bool,
    ) -> Result<Cmd, TryRecvError> {
        match rx.try_recv() {
            Err(TryRecvError::Empty) => {}
            got => return got,
        }
        if lingering {
            std::thread::park_timeout(crate::LINGER.min(wait));
            return rx.try_recv();
        }
        self.shared.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // An append that queued before seeing the flag did not wake us: look again.
        match rx.try_recv() {
            Err(TryRecvError::Empty) => std::thread::park_timeout(wait),
            got => {
                self.shared.sleeping.store(false, Ordering::SeqCst);
                return got;
            }
        }
        self.shared.sleeping.store(false, Ordering::SeqCst);
        rx.try_recv()
    }

    /// Writes the `CLEAN` marker if everything appended is fsynced and no record was
    /// lost during this run. Returns whether the marker is on disk.
    fn mark_clean(&mut self) -> Result<bool, LogError> {
        if self.failed.is_some() || self.lost || self.dirty {
            return Ok(false);
        }
        if self.marker_written {
            return Ok(true);
        }
        let known = self
            .segments
            .iter()
            .flat_map(|m| m.skipped.iter().map(|p| (m.base, *p)));
        let text = crate::clean_marker_text(known);
        let tmp = self.dir.join(format!("{CLEAN_MARKER}.tmp"));
        let path = self.dir.join(CLEAN_MARKER);
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| io_err(&path, e));
        written?;
        crate::sync_dir(&self.dir)?;
        self.marker_written = true;
        Ok(true)
    }

    /// After a write error: cut the active segment back to its last fsynced length,
    /// check that a buffer's worth can be written, and accept records again.
    fn try_recover(&mut self) {
        let path = self.active().path.clone();
        // Whatever the old handle still buffers belongs to the failed batch: discard it.
        let probe = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|file| {
                #[cfg(test)]
                if self.fail_writes {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "injected failure",
                    ));
                }
                file.set_len(self.synced.bytes)?;
                let mut f = &file;
                f.write_all(&vec![0u8; PROBE_BYTES])?;
                file.sync_data()?;
                file.set_len(self.synced.bytes)?;
                file.sync_all()?;
                Ok(file)
            });
        match probe {
            Ok(file) => {
                let (_, _) =
                    std::mem::replace(&mut self.file, BufWriter::with_capacity(WRITE_BUFFER, file))
                        .into_parts();
                let synced = self.synced;
                let active = self.active_mut();
                let cut = active.records.saturating_sub(synced.records);
                active.bytes = synced.bytes;
                active.records = synced.records;
                active.max_time_ms = synced.max_time_ms;
                self.total_bytes = self.segments.iter().map(|m| m.bytes).sum();
                self.dirty = false;
                self.shared
                    .dropped_records
                    .fetch_add(cut, Ordering::Relaxed);
                self.failed = None;
                self.shared.clear_failed();
                self.shared.recoveries.fetch_add(1, Ordering::Relaxed);
                if due(&mut self.last_recovery_log) {
                    tracing::warn!(
                        path = %path.display(),
                        dropped_records = self.shared.dropped_records.load(Ordering::Relaxed),
                        refused_appends = self.shared.refused_failed.load(Ordering::Relaxed),
                        recoveries = self.shared.recoveries.load(Ordering::Relaxed),
                        "message log writable again; accepting records (counts are since start)"
                    );
                }
            }
            Err(e) => {
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(self.synced.bytes));
                if due(&mut self.last_error_log) {
                    let refused = self.shared.refused_failed.load(Ordering::Relaxed);
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        refused_since_last_report = refused.saturating_sub(self.refused_logged),
                        "message log still failed; retrying every {:?}",
                        self.retry_interval
                    );
                    self.refused_logged = refused;
                }
            }
        }
    }

    fn status(&self) -> Result<(), LogError> {
        match &self.failed {
            None => Ok(()),
            Some(msg) => Err(LogError::Failed(msg.clone())),
        }
    }

    fn append(&mut self, record: Record, waiter: Option<Waiter>, waiters: &mut Vec<Waiter>) {
        if self.failed.is_some() {
            // Queued before the failure: lost with it.
            self.shared.dropped_records.fetch_add(1, Ordering::Relaxed);
        } else if let Err((what, path, e)) = self.write_record(&record) {
            self.fail(what, &path, e);
            self.shared.dropped_records.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(waiter) = waiter {
            if self.failed.is_some() {
                let _ = waiter.send(self.status());
            } else {
                waiters.push(waiter);
            }
        }
    }

    fn write_record(&mut self, record: &Record) -> Result<(), (&'static str, PathBuf, io::Error)> {
        if self.marker_written {
            // Appended after `close`: until the next orderly stop the log may miss it.
            let marker = self.dir.join(CLEAN_MARKER);
            fs::remove_file(&marker)
                .and_then(|()| File::open(&self.dir)?.sync_all())
                .map_err(|e| ("removing the clean marker", marker, e))?;
            self.marker_written = false;
        }
        #[cfg(test)]
        if self.fail_writes {
            let path = self.active().path.clone();
            return Err((
                "writing",
                path,
                io::Error::new(io::ErrorKind::StorageFull, "injected failure"),
            ));
        }
        let active = self.active();
        if active.bytes >= self.segment_bytes && active.records > 0 {
            self.rotate().map_err(|(p, e)| ("rotating segment", p, e))?;
            self.rotated = true;
        }
        let path = self.active().path.clone();
        format::write_frame(&mut self.file, record).map_err(|e| ("writing", path, e))?;
        let len = format::frame_len(record);
        let active = self.active_mut();
        active.bytes += len;
        active.records += 1;
        active.max_time_ms = Some(
            active
                .max_time_ms
                .map_or(record.time_ms, |t| t.max(record.time_ms)),
        );
        self.total_bytes += len;
        self.dirty = true;
        Ok(())
    }

    /// Writes the buffer to the OS (so a process crash loses nothing) and, if `sync`,
    /// fsyncs the active segment.
    fn commit(&mut self, sync: bool) {
        if self.failed.is_some() {
            return;
        }
        let path = self.active().path.clone();
        if let Err(e) = self.file.flush() {
            self.fail("writing", &path, e);
            return;
        }
        if sync && self.dirty {
            if let Err(e) = self.file.get_ref().sync_data() {
                self.fail("fsyncing", &path, e);
                return;
            }
            self.dirty = false;
            self.mark_synced();
        }
    }

    fn mark_synced(&mut self) {
        let active = self.active();
        self.synced = Synced {
            bytes: active.bytes,
            records: active.records,
            max_time_ms: active.max_time_ms,
        };
        self.publish_synced();
    }

    /// Tells tailing readers how far the log is fsynced: first the state they read by
    /// (under its lock, so that segment, length and sequence number agree), then the
    /// watch channel, so that a reader woken by the channel finds the new state.
    fn publish_synced(&self) {
        let active = self.active();
        let state = SyncedState {
            active_base: active.base,
            bytes: self.synced.bytes,
            seq: active
                .base
                .saturating_add(self.synced.records)
                .saturating_add(active.hidden_max),
        };
        *self.shared.synced.lock() = state;
        // Woken only when records became durable; a rotation alone moves no record.
        self.synced_tx.send_if_modified(|seq| {
            let moved = *seq != state.seq;
            *seq = state.seq;
            moved
        });
    }

    /// Closes the active segment (flush + fsync) and starts a new one.
    fn rotate(&mut self) -> Result<(), (PathBuf, io::Error)> {
        let old = self.active().path.clone();
        self.file.flush().map_err(|e| (old.clone(), e))?;
        self.file.get_ref().sync_data().map_err(|e| (old, e))?;
        self.dirty = false;
        self.mark_synced();
        // Past any records hidden by corrupt regions, so that no number is reused.
        let base = self.active().end();
        let (file, meta) = create_segment(&self.dir, base)?;
        // The old BufWriter is empty (flushed above), so replacing it loses nothing.
        self.file = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.total_bytes += meta.bytes;
        self.segments.push_back(meta);
        self.mark_synced();
        Ok(())
    }

    /// Deletes whole old segments while the total passes `max_bytes` or the oldest one's
    /// newest record is older than `max_age`; never the active segment, but an active
    /// segment whose records have all expired is rotated first so that it can go.
    /// Returns how many segments were deleted.
    fn retention(&mut self) -> Result<usize, (PathBuf, io::Error)> {
        let cutoff = (self.clock)().saturating_sub(self.max_age_ms);
        let expired = |s: &SegmentMeta| s.max_time_ms.is_some_and(|t| t < cutoff);
        if expired(self.active()) {
            self.rotate()?;
        }
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let over = self.total_bytes > self.max_bytes;
            if !(over || expired(oldest) || oldest.records == 0) {
                break;
            }
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Not fatal: no record is at risk, only disk space. Try again later.
                    tracing::warn!(path = %oldest.path.display(), error = %e, "cannot delete old log segment");
                    break;
                }
            }
            self.total_bytes -= oldest.bytes;
            self.segments.pop_front();
            deleted += 1;
        }
        Ok(deleted)
    }

    pub(crate) fn publish_stats(&self) {
        self.shared.bytes.store(self.total_bytes, Ordering::Relaxed);
        self.shared
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }

    /// Enters the failed state: appends are refused until `try_recover` succeeds. Error
    /// lines (this one and the retries' summaries) come at most every
    /// `ERROR_LOG_INTERVAL`, so a disk that keeps failing cannot flood the log; the
    /// metrics count every failure.
    fn fail(&mut self, what: &str, path: &Path, e: io::Error) {
        let msg: Arc<str> = Arc::from(format!("{what} {}: {e}", path.display()));
        let failures = self.shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if due(&mut self.last_error_log) {
            tracing::error!(
                error = %msg,
                failures,
                "message log write failed; refusing records until writing works again (retrying every {:?})",
                self.retry_interval
            );
        }
        self.shared.set_failed(msg.clone());
        self.failed = Some(msg);
        self.lost = true;
        self.last_retry = Instant::now();
        self.refused_logged = self.shared.refused_failed.load(Ordering::Relaxed);
    }

    fn active(&self) -> &SegmentMeta {
        // The writer always holds at least one segment (the active one).
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut SegmentMeta {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    #[cfg(test)]
    fn break_file(&mut self) {
        let path = self.active().path.clone();
        if let Ok(read_only) = File::open(&path) {
            // Drop whatever is buffered: the point is that the next write fails.
            let (_, _) = std::mem::replace(
                &mut self.file,
                BufWriter::with_capacity(WRITE_BUFFER, read_only),
            )
            .into_parts();
        }
    }
}

/// Whether a rate-limited log line may be written now (and notes that it is).
fn due(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Creates the segment starting at `base`: header written and fsynced, directory fsynced.
fn create_segment(dir: &Path, base: u64) -> Result<(File, SegmentMeta), (PathBuf, io::Error)> {
    create_segment_with(dir, base, |d| File::open(d).and_then(|d| d.sync_all()))
}

/// [`create_segment`] with the directory's fsync given (a test makes it fail).
fn create_segment_with(
    dir: &Path,
    base: u64,
    sync_dir: impl Fn(&Path) -> io::Result<()>,
) -> Result<(File, SegmentMeta), (PathBuf, io::Error)> {
    let path = dir.join(format::segment_name(base));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| (path.clone(), e))?;
    if let Err(e) = file
        .write_all(&format::header(base))
        .and_then(|()| file.sync_all())
    {
        // Leave no half-made segment behind: a later attempt creates it anew.
        let _ = fs::remove_file(&path);
        return Err((path, e));
    }
    if let Err(e) = sync_dir(dir) {
        // Its name may not be durable: remove it, so that the next roll (or a retry after
        // a recovery) can create it again instead of failing on "already exists".
        let _ = fs::remove_file(&path);
        return Err((dir.to_path_buf(), e));
    }
    let meta = SegmentMeta {
        base,
        records: 0,
        bytes: HEADER_LEN,
        max_time_ms: None,
        path,
        skipped: Vec::new(),
        hidden_max: 0,
    };
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed directory fsync leaves no segment file behind: the next attempt at the
    /// same base succeeds (before, it failed with "already exists" until a reopen).
    #[test]
    fn a_failed_directory_sync_leaves_no_segment_behind() {
        let dir = std::env::temp_dir().join(format!("starling-segment-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let failed = create_segment_with(&dir, 7, |_| Err(io::Error::other("injected")));
        assert!(failed.is_err());
        assert!(!dir.join(format::segment_name(7)).exists(), "removed");
        let (_, meta) = create_segment(&dir, 7).expect("created on the next attempt");
        assert_eq!(meta.base, 7);
        assert!(dir.join(format::segment_name(7)).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
