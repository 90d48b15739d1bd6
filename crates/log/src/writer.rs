//! The writer thread: group commit, rotation, retention.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::format::{self, HEADER_LEN};
use crate::recover::SegmentMeta;
use crate::{Clock, Cmd, LogConfig, LogError, Record, Shared, io_err};

/// Size of the write buffer in front of the active segment.
const WRITE_BUFFER: usize = 256 * 1024;

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
}

impl Writer {
    /// Takes over the scanned segments (creating the first one in an empty directory),
    /// opens the last one for appending and applies retention. Returns the writer and the
    /// number of leading segments retention deleted.
    pub(crate) fn open(
        config: &LogConfig,
        mut metas: Vec<SegmentMeta>,
        shared: Arc<Shared>,
    ) -> Result<(Writer, usize), LogError> {
        let file = match metas.last() {
            Some(active) => OpenOptions::new()
                .append(true)
                .open(&active.path)
                .map_err(|e| io_err(&active.path, e))?,
            None => {
                let (file, meta) =
                    create_segment(&config.dir, 0).map_err(|(p, e)| io_err(&p, e))?;
                metas.push(meta);
                file
            }
        };
        let total_bytes = metas.iter().map(|m| m.bytes).sum();
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
        };
        let deleted = writer.retention().map_err(|(path, e)| io_err(&path, e))?;
        Ok((writer, deleted))
    }

    /// The thread's loop: until shutdown (or the queue's sender is dropped).
    pub(crate) fn run(mut self, rx: Receiver<Cmd>) {
        let mut last_sync = Instant::now();
        let mut last_retention = Instant::now();
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        loop {
            let since = if self.dirty {
                last_sync
            } else {
                last_retention
            };
            let wait = self.sync_interval.saturating_sub(since.elapsed());
            let mut shutdown = false;
            let mut retention_asked = false;
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    let mut next = Some(cmd);
                    let mut taken = 0;
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
                            Cmd::Shutdown => shutdown = true,
                            #[cfg(test)]
                            Cmd::BreakFile => self.break_file(),
                        }
                        if !shutdown && taken < self.batch_limit {
                            next = rx.try_recv().ok();
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => shutdown = true,
            }

            let must_sync = !waiters.is_empty()
                || !replies.is_empty()
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
            self.publish_stats();
            for reply in replies.drain(..) {
                let _ = reply.send(self.status());
            }
            if shutdown {
                break;
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
        if self.failed.is_none()
            && let Err((what, path, e)) = self.write_record(&record)
        {
            self.fail(what, &path, e);
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
        }
    }

    /// Closes the active segment (flush + fsync) and starts a new one.
    fn rotate(&mut self) -> Result<(), (PathBuf, io::Error)> {
        let old = self.active().path.clone();
        self.file.flush().map_err(|e| (old.clone(), e))?;
        self.file.get_ref().sync_data().map_err(|e| (old, e))?;
        self.dirty = false;
        let active = self.active();
        let base = active.base + active.records;
        let (file, meta) = create_segment(&self.dir, base)?;
        // The old BufWriter is empty (flushed above), so replacing it loses nothing.
        self.file = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.total_bytes += meta.bytes;
        self.segments.push_back(meta);
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

    fn fail(&mut self, what: &str, path: &Path, e: io::Error) {
        let msg: Arc<str> = Arc::from(format!("{what} {}: {e}", path.display()));
        tracing::error!(error = %msg, "log writer failed; no more records are accepted");
        self.shared.set_failed(msg.clone());
        self.failed = Some(msg);
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

/// Creates the segment starting at `base`: header written and fsynced, directory fsynced.
fn create_segment(dir: &Path, base: u64) -> Result<(File, SegmentMeta), (PathBuf, io::Error)> {
    let path = dir.join(format::segment_name(base));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| (path.clone(), e))?;
    file.write_all(&format::header(base))
        .and_then(|()| file.sync_all())
        .map_err(|e| (path.clone(), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (dir.to_path_buf(), e))?;
    let meta = SegmentMeta {
        base,
        records: 0,
        bytes: HEADER_LEN,
        max_time_ms: None,
        path,
    };
    Ok((file, meta))
}
