//! Starling's durable message log.
//!
//! Every publication is appended to a local log of segment files, so that a restart
//! loses no history that was acknowledged as durable. The log is a directory of
//! append-only segment files (see [`format`](crate) notes in `format.rs`):
//!
//! - appends go through a bounded FIFO queue to one dedicated writer thread, which drains
//!   everything queued, writes it with one buffered write, and fsyncs once for the whole
//!   batch when any of it was appended as durable (group commit);
//! - non-durable records are written to the OS at the end of every batch (a process crash
//!   does not lose them) and fsynced at least every [`LogConfig::sync_interval`];
//! - a segment is closed (fsynced) once it passes [`LogConfig::segment_bytes`], and a new
//!   one named after its first record's global sequence number is started;
//! - retention deletes whole old segments (by total size and by age), never the active one;
//! - [`Log::append`] never blocks: when the queue is full it returns [`LogError::Busy`]
//!   (the caller refuses the publication, temporarily);
//! - a write error (disk full, I/O error) puts the log in a failed state: appends are
//!   refused with [`LogError::Failed`] while the writer retries every
//!   [`LogConfig::retry_interval`], cutting the active segment back to its last fsynced
//!   length, and resumes once writing works again;
//! - an orderly stop writes a `CLEAN` marker after the final fsync, only when no record
//!   was lost during the run; [`Log::open`] removes it and reports whether the previous
//!   stop was clean, so the caller can tell whether the log may miss acknowledged records;
//! - [`Log::open`] validates every record (length and crc32), skips a corrupt record
//!   when a valid one follows it (counted), truncates a torn or corrupt tail of the last
//!   segment (a crash mid-write), and replays the retained records through a callback,
//!   reading one segment at a time through a bounded buffer.
//!
//! # Sequence numbers
//!
//! Every record has a global sequence number: a segment is named after its first
//! record's, and the `i`-th valid record in it has `base + i`. They are stable across
//! restarts ([`Log::open`] recomputes them from the files) and, within one
//! [`Log::id`], a number a reader handed out is never given to another record:
//!
//! - a torn tail cut at open only ever held records that were not fsynced (on a disk
//!   that keeps what it acknowledged as fsynced); their numbers go to the next appends,
//!   and readers return only fsynced records, so no consumer ever had them;
//! - open fsyncs the last segment first, so what a crashed process left in the page
//!   cache is durable before any reader sees it;
//! - a corrupt region hides an unknown number of records: when the last segment has one
//!   at open, the log starts a new segment past the most records it can have hidden
//!   (numbers skip ahead, never back), and readers number the records after a region
//!   backwards from a known point (see [`LogReader`]), so a number can come out higher
//!   than written (a repeat for a consumer resuming there), never lower (a loss);
//! - numbers restart at 0 only when the log starts from no segments (a new or wiped
//!   directory); the log then gets a new random [`LogId`] (file `ID`), so a consumer
//!   that saved a position with the id can tell it belongs to another log.
//!
//! # Tailing reader
//!
//! [`Log::reader`] makes a [`LogReader`] that reads the records numbered from a given
//! position on, in order, across segment files, while the writer appends. It returns
//! only fsynced records: after every fsync the writer publishes how far the log is
//! fsynced ([`Log::synced_position`], and a `tokio::sync::watch` channel,
//! [`Log::watch_synced`], to wait on instead of polling), and the reader never reads the
//! active segment past the fsynced length, so it never meets a frame being written.
//! Non-durable records are fsynced at least every [`LogConfig::sync_interval`], which
//! bounds how far a reader lags the writer. [`LogReader::next_batch`] reads files (run
//! it on a dedicated thread or `spawn_blocking`), at most a given number of records and
//! bytes through a bounded buffer. Segments that retention deleted before the reader
//! got to them come back as a [`Gap`] (counted, the reader goes on at the oldest
//! retained record); corrupt records are skipped and counted like at open.

mod format;
mod id;
mod reader;
mod recover;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

pub use format::MAX_RECORD_BYTES;
pub use id::{LogId, ParseLogIdError};
pub use reader::{Batch, Gap, LogReader, ReadError, ReaderStats};

/// Source of "now" for age-based retention, in milliseconds since the Unix epoch.
///
/// Injectable so that tests (and tools) can move time without sleeping.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// How long the writer waits for more records after a batch before it writes the next
/// one, while records keep coming. Non-durable records reach the OS at most this much
/// later than with a wake-up per record; durable ones wake the writer at once.
///
/// 5 ms, not less: at a steady 10,000 publications/s a 1 ms linger made about 1,400
/// `write`s a second of seven records each; 5 ms halved the writer thread's CPU there.
/// The queue (`queue_records`, 16,384) holds 5 ms of 3 million records/s.
pub const LINGER: Duration = Duration::from_millis(5);

/// Configuration of a [`Log`].
#[derive(Clone)]
pub struct LogConfig {
    /// Directory holding the segment files (created if missing). One [`Log`] per directory.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it passes this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Total size kept on disk: the oldest segments are deleted beyond it (never the active
    /// one, so the log may exceed it by up to one segment). Default 1 GiB.
    pub max_bytes: u64,
    /// Segments whose newest record is older than this are deleted. Default 24 hours.
    pub max_age: Duration,
    /// Non-durable records are fsynced at least this often; retention is checked at most
    /// this often. Must be non-zero. Default 100 ms.
    pub sync_interval: Duration,
    /// Capacity of the queue between appenders and the writer thread, in records: an
    /// append is refused with [`LogError::Busy`] once this many records wait to be
    /// written (back-pressure without blocking the caller). Default 16,384.
    pub queue_records: usize,
    /// After a write error, how often the writer tries to resume. Default 1 s.
    pub retry_interval: Duration,
    /// "Now" for age-based retention. Default: the system clock.
    pub clock: Clock,
}

impl LogConfig {
    /// The defaults, with the log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            sync_interval: Duration::from_millis(100),
            queue_records: 16_384,
            retry_interval: Duration::from_secs(1),
            clock: system_clock(),
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes <= format::HEADER_LEN {
            return Err(LogError::InvalidConfig(
                "segment_bytes must exceed the segment header (16 bytes)",
            ));
        }
        if self.sync_interval.is_zero() {
            return Err(LogError::InvalidConfig("sync_interval must be non-zero"));
        }
        if self.retry_interval.is_zero() {
            return Err(LogError::InvalidConfig("retry_interval must be non-zero"));
        }
        if self.queue_records == 0 {
            return Err(LogError::InvalidConfig("queue_records must be non-zero"));
        }
        Ok(())
    }
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("dir", &self.dir)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("sync_interval", &self.sync_interval)
            .field("queue_records", &self.queue_records)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

/// One log entry. The payload is opaque to the log (the hub encodes the publication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Channel the publication belongs to.
    pub channel: String,
    /// The channel's epoch at the time of the publication.
    pub epoch: String,
    /// The publication's offset in the channel.
    pub offset: u64,
    /// Time of the publication, milliseconds since the Unix epoch (used for age retention).
    pub time_ms: u64,
    /// The encoded publication.
    pub payload: Bytes,
}

/// Size and health figures of the log, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Bytes in all segment files (including records written but not yet fsynced).
    pub bytes: u64,
    /// Number of segment files, the active one included.
    pub segments: u64,
    /// Whether the log is in the failed state now (appends refused until it recovers).
    pub failed: bool,
    /// Times the writer entered the failed state.
    pub failures: u64,
    /// Times the writer left the failed state (writing worked again).
    pub recoveries: u64,
    /// Records accepted by [`Log::append`] that never reached the disk (lost to a write
    /// error, or cut back when the writer recovered). Records refused by `append` are not
    /// counted here: the caller knows about them.
    pub dropped_records: u64,
    /// Appends refused with [`LogError::Failed`] because the log was failed.
    pub refused_failed: u64,
    /// Appends refused with [`LogError::Busy`] because the queue was full.
    pub refused_busy: u64,
}

/// What [`Log::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// The previous run stopped in order (final fsync done) and lost no record, so the log
    /// holds every record that was ever accepted (within retention). `false` after a
    /// crash, a kill, a power loss, a run with write errors, and whenever the scan below
    /// had to skip or truncate anything.
    pub clean: bool,
    /// Records replayed to the callback.
    pub records: u64,
    /// Corrupt regions skipped because a valid record followed them (each hid at least
    /// one record).
    pub skipped_regions: u64,
    /// Bytes in those regions.
    pub skipped_bytes: u64,
    /// Bytes cut off the end of the last segment (a torn or corrupt tail).
    pub truncated_bytes: u64,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("log I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment other than the last one has an invalid header, or the segments do not
    /// follow each other (a missing file). Invalid records are skipped or truncated
    /// instead (see [`OpenReport`]); a bad header or a missing segment points at a wrong
    /// or damaged directory, which an operator should look at before the node serves.
    #[error("corrupt log segment {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the invalid header or record.
        position: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Another [`Log`] (in this or another process) has the directory open.
    #[error("log directory {0} is in use by another log")]
    Locked(PathBuf),
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(&'static str),
    /// The record's encoded body exceeds [`MAX_RECORD_BYTES`].
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The queue to the writer thread is full: the disk does not keep up. Temporary;
    /// the record was not taken.
    #[error("log busy: the write queue is full")]
    Busy,
    /// The writer thread hit an I/O error; no records are accepted until it recovers
    /// (it retries every [`LogConfig::retry_interval`]).
    #[error("log failed: {0}")]
    Failed(Arc<str>),
    /// The writer thread is gone (should not happen while the [`Log`] is alive).
    #[error("log writer is gone")]
    Closed,
}

/// The receiver an append with `durable: true` returns: resolves once the record is fsynced.
pub type DurableReceiver = oneshot::Receiver<Result<(), LogError>>;

/// State shared between [`Log`] handles and the writer thread.
#[derive(Default)]
pub(crate) struct Shared {
    failed_flag: AtomicBool,
    failed: Mutex<Option<Arc<str>>>,
    bytes: AtomicU64,
    segments: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) dropped_records: AtomicU64,
    refused_failed: AtomicU64,
    refused_busy: AtomicU64,
    /// Set by the writer before it sleeps with nothing queued: the next append wakes it.
    /// While it is busy (it took records on its last turn) it lingers for
    /// [`LINGER`] instead, and appenders do not wake it: one wake-up per batch instead
    /// of one per record (a futex call and a context switch each).
    pub(crate) sleeping: AtomicBool,
    /// How far the log is fsynced, for tailing readers; set by the writer after every
    /// fsync (and at open), before it updates the watch channel.
    pub(crate) synced: Mutex<reader::SyncedState>,
}

impl Shared {
    fn failure(&self) -> Option<LogError> {
        if !self.failed_flag.load(Ordering::Acquire) {
            return None;
        }
        let msg = self.failed.lock().clone();
        Some(LogError::Failed(
            msg.unwrap_or_else(|| Arc::from("unknown error")),
        ))
    }

    pub(crate) fn set_failed(&self, msg: Arc<str>) {
        *self.failed.lock() = Some(msg);
        self.failed_flag.store(true, Ordering::Release);
    }

    pub(crate) fn clear_failed(&self) {
        self.failed_flag.store(false, Ordering::Release);
        *self.failed.lock() = None;
    }
}

/// Commands to the writer thread, in one FIFO queue.
pub(crate) enum Cmd {
    Append(Record, Option<oneshot::Sender<Result<(), LogError>>>),
    Sync(SyncSender<Result<(), LogError>>),
    Retention(SyncSender<Result<(), LogError>>),
    /// Orderly stop point: fsync, then the `CLEAN` marker if no record was lost.
    Close(SyncSender<Result<bool, LogError>>),
    Shutdown,
    #[cfg(test)]
    BreakFile,
    /// Tells the first sender that the writer stopped, then blocks it until the second
    /// channel's sender sends or is dropped.
    #[cfg(test)]
    Stall(SyncSender<()>, mpsc::Receiver<()>),
    /// Makes every write fail (as on a full disk) until `FailWrites(false)`.
    #[cfg(test)]
    FailWrites(bool),
    /// Writes what is buffered to the OS without fsyncing it, then replies.
    #[cfg(test)]
    Flush(SyncSender<()>),
}

/// The node's durable message log. `Send + Sync`; share it in an `Arc`.
pub struct Log {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
    dir: PathBuf,
    id: LogId,
    /// The sequence number after the last fsynced record; the writer holds the sender.
    synced: watch::Receiver<u64>,
    /// The writer thread, to wake it (it never blocks on the queue: see
    /// [`Shared::sleeping`]).
    writer: std::thread::Thread,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Holds the directory's advisory lock for the log's lifetime.
    _lock: File,
}

impl Log {
    /// Opens the log in `config.dir` (creating it): removes the `CLEAN` marker (reporting
    /// whether it was there), scans the existing segments in order, validates every
    /// record (length + crc32), skips corrupt records that a valid one follows, truncates
    /// a torn or corrupt tail of the last segment (a crash mid-write), fsyncs the last
    /// segment (everything found counts as fsynced from then on), starts a new segment
    /// if the last one hides records in a corrupt region, applies retention, and then
    /// hands every retained record, in append order, to `replay` (the caller rebuilds
    /// its in-memory state from them). Segments are read through a bounded buffer, never
    /// whole; the scan reads the log twice (validate, then replay). Makes the log's
    /// [`id`](Self::id) when it starts from no segments.
    pub fn open(
        config: LogConfig,
        mut replay: impl FnMut(Record),
    ) -> Result<(Log, OpenReport), LogError> {
        config.validate()?;
        fs::create_dir_all(&config.dir).map_err(|e| io_err(&config.dir, e))?;
        let lock = lock_dir(&config.dir)?;
        let known_skips = take_clean_marker(&config.dir)?;

        let scan = recover::scan(&config.dir)?;
        // Without segments the sequence numbers start at 0 again: a new identity, so
        // that positions saved against the old numbers are not taken for this log's.
        let id = id::load_or_create(&config.dir, scan.metas.is_empty())?;
        let shared = Arc::new(Shared::default());
        let (synced_tx, synced) = watch::channel(0);
        let (writer, deleted) =
            writer::Writer::open(&config, scan.metas.clone(), shared.clone(), synced_tx)?;
        writer.publish_stats();
        // Skipped regions the previous clean stop already knew about were accounted for
        // then (the caller renewed epochs at that start); new ones make this start unclean.
        let skips_known = known_skips.as_ref().is_some_and(|known| {
            scan.metas
                .iter()
                .all(|m| m.skipped.iter().all(|p| known.contains(&(m.base, *p))))
        });
        let mut report = OpenReport {
            clean: skips_known && scan.truncated_bytes == 0,
            records: 0,
            skipped_regions: scan.skipped_regions,
            skipped_bytes: scan.skipped_bytes,
            truncated_bytes: scan.truncated_bytes,
        };
        for meta in scan.metas.iter().skip(deleted) {
            report.records += recover::replay_segment(meta, &mut replay)?;
        }

        let (tx, rx) = mpsc::sync_channel(config.queue_records);
        let thread = std::thread::Builder::new()
            .name("starling-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(&config.dir, e))?;
        Ok((
            Log {
                tx,
                shared,
                dir: config.dir,
                id,
                synced,
                writer: thread.thread().clone(),
                thread: Mutex::new(Some(thread)),
                _lock: lock,
            },
            report,
        ))
    }

    /// Appends without ever blocking: hands the record to the writer thread through a
    /// bounded FIFO queue. Refused with [`LogError::Busy`] when
    /// [`LogConfig::queue_records`] records already wait (the disk does not keep up), and
    /// with [`LogError::Failed`] while the log is failed; a refused record was not taken.
    /// If `durable`, returns a receiver that resolves once the record is fsynced (group
    /// commit: the writer drains everything queued, writes it in one go, fsyncs once,
    /// then resolves all waiters of that batch).
    ///
    /// Records appended from one thread (or under one lock) are written in that order.
    pub fn append(
        &self,
        record: Record,
        durable: bool,
    ) -> Result<Option<DurableReceiver>, LogError> {
        if let Some(err) = self.shared.failure() {
            self.shared.refused_failed.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        let (cmd, rx) = Self::command(record, durable)?;
        match self.tx.try_send(cmd) {
            Ok(()) => {
                // A durable record is waited for: write it now. Others wait for the
                // writer's next turn unless it sleeps with nothing to do.
                fence(Ordering::SeqCst);
                if durable || self.shared.sleeping.swap(false, Ordering::SeqCst) {
                    self.writer.unpark();
                }
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => {
                self.writer.unpark();
                self.shared.refused_busy.fetch_add(1, Ordering::Relaxed);
                Err(LogError::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(self.gone()),
        }
    }

    /// Appends like [`append`](Self::append), but waits for room in the queue instead of
    /// returning [`LogError::Busy`]. For start-up and tools, never from an async task.
    pub fn append_blocking(
        &self,
        record: Record,
        durable: bool,
    ) -> Result<Option<DurableReceiver>, LogError> {
        if let Some(err) = self.shared.failure() {
            return Err(err);
        }
        let (cmd, rx) = Self::command(record, durable)?;
        self.send(cmd).map_err(|_| self.gone())?;
        Ok(rx)
    }

    /// The writer's command for appending `record` (size checked), and the receiver of
    /// its fsync when `durable`.
    fn command(record: Record, durable: bool) -> Result<(Cmd, Option<DurableReceiver>), LogError> {
        let len = format::body_len(&record);
        if len > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                len,
                max: MAX_RECORD_BYTES,
            });
        }
        let (waiter, rx) = if durable {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Ok((Cmd::Append(record, waiter), rx))
    }

    /// The orderly stop point, blocking until done: flushes and fsyncs everything
    /// appended so far and, when no record was lost since [`open`](Self::open), writes
    /// the `CLEAN` marker; returns whether it did. The log stays usable: a record
    /// appended after `close` removes the marker again (and dropping the log writes it
    /// back if all is well). Do not call it from an async task without `spawn_blocking`.
    pub fn close(&self) -> Result<bool, LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Cmd::Close(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())?
    }

    /// The log's identity: random, written into the directory when the log starts from
    /// no segments, and kept as long as it has any. Sequence numbers belong to it: a
    /// consumer that saves a position saves the id with it, and a different id means its
    /// position says nothing about this log (start over from the oldest record).
    pub fn id(&self) -> LogId {
        self.id
    }

    /// The sequence number after the last fsynced record (0 while none is): the records
    /// a [`LogReader`] can return are the ones below it. Everything found at open counts
    /// as fsynced (open fsyncs it); after that it moves at each group commit, at least
    /// every [`LogConfig::sync_interval`] while non-durable records wait, and never
    /// back.
    pub fn synced_position(&self) -> u64 {
        *self.synced.borrow()
    }

    /// A channel of [`synced_position`](Self::synced_position), updated by the writer
    /// thread after each fsync that made records durable: wait on it for records to
    /// read instead of polling. It closes (`changed` and `wait_for` return an error) once
    /// the log is dropped and its writer stopped.
    pub fn watch_synced(&self) -> watch::Receiver<u64> {
        self.synced.clone()
    }

    /// A tailing reader of the records numbered `from` and up, in order, across segment
    /// files, while appends go on; it returns only fsynced records. `from` is usually a
    /// position a reader returned before (saved with [`id`](Self::id)), or 0 for the
    /// oldest record (a [`Gap`] then tells how many retention already deleted).
    ///
    /// Refused with [`ReadError::Ahead`] when `from` is past
    /// [`synced_position`](Self::synced_position): no position this log handed out can
    /// be. Cheap: the reader opens files only when asked for a batch.
    pub fn reader(&self, from: u64) -> Result<LogReader, ReadError> {
        LogReader::new(self.dir.clone(), self.shared.clone(), from)
    }

    /// Whether the log is failed now, with the error that made it fail.
    pub fn failure(&self) -> Option<LogError> {
        self.shared.failure()
    }

    /// Flushes and fsyncs everything appended so far, blocking until done; used at
    /// graceful shutdown. Do not call it from an async task without `spawn_blocking`.
    pub fn sync(&self) -> Result<(), LogError> {
        self.request(Cmd::Sync)
    }

    /// Runs retention now (after syncing) instead of waiting for the writer's periodic
    /// check, blocking until done. Mostly for tests and tools.
    pub fn enforce_retention(&self) -> Result<(), LogError> {
        self.request(Cmd::Retention)
    }

    /// Bytes on disk and segment count (for metrics), as of the writer's last batch.
    pub fn stats(&self) -> LogStats {
        let s = &self.shared;
        LogStats {
            bytes: s.bytes.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            failed: s.failed_flag.load(Ordering::Acquire),
            failures: s.failures.load(Ordering::Relaxed),
            recoveries: s.recoveries.load(Ordering::Relaxed),
            dropped_records: s.dropped_records.load(Ordering::Relaxed),
            refused_failed: s.refused_failed.load(Ordering::Relaxed),
            refused_busy: s.refused_busy.load(Ordering::Relaxed),
        }
    }

    fn request(
        &self,
        make: impl FnOnce(SyncSender<Result<(), LogError>>) -> Cmd,
    ) -> Result<(), LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(make(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())?
    }

    /// Queues a command, waiting for room, and wakes the writer to act on it now. It is
    /// woken before too: a full queue only drains when the writer runs.
    fn send(&self, cmd: Cmd) -> Result<(), mpsc::SendError<Cmd>> {
        self.writer.unpark();
        let sent = self.tx.send(cmd);
        self.writer.unpark();
        sent
    }

    fn gone(&self) -> LogError {
        self.shared.failure().unwrap_or(LogError::Closed)
    }

    /// Test hook: makes the writer's file handle read-only, so its next write fails
    /// with a real I/O error (as if the descriptor had been closed under it).
    #[cfg(test)]
    pub(crate) fn break_file(&self) {
        let _ = self.send(Cmd::BreakFile);
    }

    /// Test hook: returns once the writer has stopped with an empty queue; it stays
    /// stopped until the returned sender sends or is dropped.
    #[cfg(test)]
    pub(crate) fn stall(&self) -> SyncSender<()> {
        let (release, until) = mpsc::sync_channel(1);
        let (started, stopped) = mpsc::sync_channel(1);
        let _ = self.send(Cmd::Stall(started, until));
        let _ = stopped.recv();
        release
    }

    /// Test hook: every write fails (like a full disk) until called with `false`.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, on: bool) {
        let _ = self.send(Cmd::FailWrites(on));
    }

    /// Test hook: returns once everything appended so far is written to the OS, but not
    /// fsynced (the state a crash of the machine, not of the process, can lose).
    #[cfg(test)]
    pub(crate) fn flush_unsynced(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = self.send(Cmd::Flush(tx));
        let _ = rx.recv();
    }
}

impl Drop for Log {
    /// Stops the writer thread after flushing and fsyncing everything appended, writing
    /// the `CLEAN` marker when no record was lost (as [`Log::close`]).
    fn drop(&mut self) {
        // A send error means the writer already exited; nothing to flush then.
        let _ = self.send(Cmd::Shutdown);
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!("log writer thread panicked");
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(LogError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path, e)),
    }
}

/// Name of the marker file an orderly stop leaves behind.
pub(crate) const CLEAN_MARKER: &str = "CLEAN";

/// Removes the `CLEAN` marker, durably, before anything is appended: from now on, until
/// the next orderly stop, the log may miss records. Returns `None` if there was no
/// (readable) marker, else the corrupt regions (segment base, position) the stopped
/// log knew about: the marker lists them, so that a known region does not make every
/// later start unclean.
fn take_clean_marker(dir: &Path) -> Result<Option<Vec<(u64, u64)>>, LogError> {
    let path = dir.join(CLEAN_MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, e)),
    };
    fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(parse_clean_marker(&text))
}

/// The marker: a version line, then one `base position` line per known corrupt region.
pub(crate) fn clean_marker_text(known: impl Iterator<Item = (u64, u64)>) -> String {
    let mut out = String::from("starling-log clean v1\n");
    for (base, pos) in known {
        out.push_str(&format!("{base} {pos}\n"));
    }
    out
}

fn parse_clean_marker(text: &str) -> Option<Vec<(u64, u64)>> {
    let mut lines = text.lines();
    if lines.next()? != "starling-log clean v1" {
        return None;
    }
    lines
        .map(|line| {
            let (base, pos) = line.split_once(' ')?;
            Some((base.parse().ok()?, pos.parse().ok()?))
        })
        .collect()
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

pub(crate) fn io_err(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
