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
//! - [`Log::open`] validates every record (length and crc32), truncates a torn or corrupt
//!   tail of the last segment (a crash mid-write) and returns the retained records.

mod format;
mod recover;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

pub use format::MAX_RECORD_BYTES;

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
    /// append blocks once this many records wait to be written (back-pressure).
    /// Default 16,384.
    pub queue_records: usize,
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

/// Size figures of the log, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Bytes in all segment files (including records written but not yet fsynced).
    pub bytes: u64,
    /// Number of segment files, the active one included.
    pub segments: u64,
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
    /// A segment other than the last one holds an invalid record or header. The last
    /// segment's tail is repaired instead (a crash mid-write); corruption elsewhere is
    /// reported, because dropping it would silently lose acknowledged records.
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
    /// The writer thread hit an I/O error; the log accepts no more records.
    #[error("log failed: {0}")]
    Failed(Arc<str>),
    /// The writer thread is gone (should not happen while the [`Log`] is alive).
    #[error("log writer is gone")]
    Closed,
}

/// The receiver an append with `durable: true` returns: resolves once the record is fsynced.
pub type DurableReceiver = oneshot::Receiver<Result<(), LogError>>;

/// State shared between [`Log`] handles and the writer thread.
pub(crate) struct Shared {
    failed_flag: AtomicBool,
    failed: Mutex<Option<Arc<str>>>,
    bytes: AtomicU64,
    segments: AtomicU64,
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
        let mut slot = self.failed.lock();
        if slot.is_none() {
            *slot = Some(msg);
        }
        self.failed_flag.store(true, Ordering::Release);
    }
}

/// Commands to the writer thread, in one FIFO queue.
pub(crate) enum Cmd {
    Append(Record, Option<oneshot::Sender<Result<(), LogError>>>),
    Sync(SyncSender<Result<(), LogError>>),
    Retention(SyncSender<Result<(), LogError>>),
    Shutdown,
    #[cfg(test)]
    BreakFile,
}

/// The node's durable message log. `Send + Sync`; share it in an `Arc`.
pub struct Log {
    tx: SyncSender<Cmd>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Holds the directory's advisory lock for the log's lifetime.
    _lock: File,
}

impl Log {
    /// Opens the log in `config.dir` (creating it), scans the existing segments in order,
    /// validates every record (length + crc32), truncates a torn or corrupt tail of the
    /// last segment (a crash mid-write), applies retention, and returns every retained
    /// record in append order for the caller to rebuild its in-memory state.
    pub fn open(config: LogConfig) -> Result<(Log, Vec<Record>), LogError> {
        config.validate()?;
        fs::create_dir_all(&config.dir).map_err(|e| io_err(&config.dir, e))?;
        let lock = lock_dir(&config.dir)?;

        let scanned = recover::scan(&config.dir)?;
        let shared = Arc::new(Shared {
            failed_flag: AtomicBool::new(false),
            failed: Mutex::new(None),
            bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
        });
        let metas = scanned.iter().map(|s| s.meta.clone()).collect();
        let (writer, deleted) = writer::Writer::open(&config, metas, shared.clone())?;
        writer.publish_stats();
        let records: Vec<Record> = scanned
            .into_iter()
            .skip(deleted)
            .flat_map(|s| s.records)
            .collect();

        let (tx, rx) = mpsc::sync_channel(config.queue_records);
        let thread = std::thread::Builder::new()
            .name("starling-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(&config.dir, e))?;
        Ok((
            Log {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
                _lock: lock,
            },
            records,
        ))
    }

    /// Appends without blocking on disk: hands the record to the writer thread through a
    /// bounded FIFO queue (blocks the caller only when [`LogConfig::queue_records`] records
    /// already wait: back-pressure). If `durable`, returns a receiver that resolves once
    /// the record is fsynced (group commit: the writer drains everything queued, writes it
    /// in one go, fsyncs once, then resolves all waiters of that batch).
    ///
    /// Records appended from one thread (or under one lock) are written in that order.
    pub fn append(
        &self,
        record: Record,
        durable: bool,
    ) -> Result<Option<DurableReceiver>, LogError> {
        if let Some(err) = self.shared.failure() {
            return Err(err);
        }
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
        self.tx
            .send(Cmd::Append(record, waiter))
            .map_err(|_| self.gone())?;
        Ok(rx)
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
        LogStats {
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            segments: self.shared.segments.load(Ordering::Relaxed),
        }
    }

    fn request(
        &self,
        make: impl FnOnce(SyncSender<Result<(), LogError>>) -> Cmd,
    ) -> Result<(), LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(make(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())?
    }

    fn gone(&self) -> LogError {
        self.shared.failure().unwrap_or(LogError::Closed)
    }

    /// Test hook: makes the writer's file handle read-only, so its next write fails
    /// with a real I/O error (as if the descriptor had been closed under it).
    #[cfg(test)]
    pub(crate) fn break_file(&self) {
        let _ = self.tx.send(Cmd::BreakFile);
    }
}

impl Drop for Log {
    /// Stops the writer thread after flushing and fsyncing everything appended.
    fn drop(&mut self) {
        // A send error means the writer already exited; nothing to flush then.
        let _ = self.tx.send(Cmd::Shutdown);
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

pub(crate) fn io_err(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
