//! The tailing reader: reads the segment files from a sequence number on, in order,
//! while the writer keeps appending, and returns only records that are fsynced.
//!
//! How it stays safe next to the writer without any lock on the files:
//!
//! - the writer publishes, after every fsync, the active segment's base, its fsynced
//!   length and the sequence number after the last fsynced record ([`SyncedState`],
//!   under one lock); the reader never reads the active segment past that length, so it
//!   only ever sees whole frames that are on disk, never one the writer is writing;
//! - below that length a segment file never changes while the log runs (a recovery
//!   after a write error cuts the active segment back to its fsynced length, never
//!   below), so buffered bytes stay valid;
//! - a segment older than the active one is sealed: complete, fsynced before its
//!   successor was created, read to its end;
//! - retention deletes whole segments from the front; a file the reader has open stays
//!   readable until it is done with it (POSIX unlink semantics), and one deleted before
//!   the reader got to it shows up as a [`Gap`].
//!
//! Sequence numbers: record `i` of a segment (counting valid frames) has number
//! `base + i`, exactly as the writer counted when it wrote it. A corrupt region hides an
//! unknown number of records, so after the first one in a segment the reader numbers
//! the rest backwards from a point whose number is known: the successor's base for a
//! sealed segment, the writer's published (fsynced length, sequence number) for the
//! active one. With one region that gives every record its true number; with more, or
//! after open reserved numbers past a damaged last segment, numbers can only come out
//! higher than written, never lower: resuming from a saved position may repeat records,
//! never skip one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{self, FrameError, HEADER_LEN};
use crate::recover::{self, Reader};
use crate::{Record, Shared};

/// Where the durable part of the log ends, as the writer last published it. Read and
/// written under one lock, so that the three fields agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SyncedState {
    /// Base sequence number of the active segment.
    pub active_base: u64,
    /// Length of the active segment that is fsynced (whole frames only).
    pub bytes: u64,
    /// The sequence number after the last fsynced record.
    pub seq: u64,
}

/// Records that retention deleted before the reader got to them: sequence numbers
/// `from..resumed_at` will never be read. The reader went on at `resumed_at`, the oldest
/// retained record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The reader's position when it found the records gone.
    pub from: u64,
    /// Where it went on: the first record of the oldest retained segment.
    pub resumed_at: u64,
}

impl Gap {
    /// How many sequence numbers were skipped: the records lost to the reader. An upper
    /// bound when corruption had already removed some of them (numbers no record had).
    pub fn records(&self) -> u64 {
        self.resumed_at.saturating_sub(self.from)
    }
}

/// What one [`LogReader::next_batch`] found.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "a batch may report lost records (`gap`, `skipped_regions`) besides its records"]
pub struct Batch {
    /// Records deleted by retention before they were read. A gap always comes before
    /// every record of its batch (a batch ends early rather than hold records from both
    /// sides of a gap), so the caller can account for it before archiving the records.
    pub gap: Option<Gap>,
    /// The records read, with their sequence numbers, in order (increasing numbers).
    /// Every one of them was fsynced before it was read. May be empty: nothing new is
    /// durable yet (wait with [`crate::Log::watch_synced`]).
    pub records: Vec<(u64, Record)>,
    /// Corrupt regions skipped while reading this batch (each hid at least one record),
    /// by the same rule as [`crate::Log::open`]'s scan.
    pub skipped_regions: u64,
    /// Bytes in those regions.
    pub skipped_bytes: u64,
}

impl Batch {
    /// Whether the batch reports nothing at all: no record, no gap, no skip.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.gap.is_none() && self.skipped_regions == 0
    }
}

/// Counters of one [`LogReader`] since it was made (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records returned.
    pub records: u64,
    /// Gaps reported ([`Batch::gap`]).
    pub gaps: u64,
    /// Sequence numbers skipped by those gaps ([`Gap::records`] summed).
    pub gap_records: u64,
    /// Corrupt regions skipped.
    pub skipped_regions: u64,
    /// Bytes in those regions.
    pub skipped_bytes: u64,
}

/// Errors of the tailing reader.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Listing the directory or reading a segment failed. The reader keeps its position
    /// and finds its place again on the next call, so retrying is safe.
    #[error("log read error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The active segment has an invalid header. The writer fsyncs a segment's header
    /// before any reader may look at the segment, so this is damage to the disk or the
    /// directory; it persists until the segment is sealed (then it is skipped as a
    /// corrupt region, like any sealed segment with a bad header).
    #[error("corrupt active log segment {path}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The position asked for is past the end of the log's fsynced records. No position
    /// this log handed out can be: it was saved from another log (compare
    /// [`crate::Log::id`]), or the disk lost records after acknowledging their fsync.
    #[error(
        "position {position} is past the log's fsynced records (which end at {synced}): \
         saved from another log, or the disk lost fsynced records"
    )]
    Ahead {
        /// The position asked for.
        position: u64,
        /// The sequence number after the last fsynced record.
        synced: u64,
    },
}

fn io_err(path: &Path, source: io::Error) -> ReadError {
    ReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the log from a sequence number on, in order, across segment files, while the
/// writer appends; returns only fsynced records. Made by [`crate::Log::reader`].
///
/// [`next_batch`](Self::next_batch) reads files: it blocks on disk I/O, so call it from
/// a dedicated thread or through `tokio::task::spawn_blocking`, never on an async
/// worker. Wait for new records with [`crate::Log::watch_synced`]: once a batch comes
/// back empty, `watch.wait_for(|synced| *synced > reader.position())` returns when there
/// is more to read (it checks the current value first, so no update is missed).
///
/// Memory is bounded: segments are read through a buffer of 256 KiB (it grows only to
/// hold the largest record met, at most [`crate::MAX_RECORD_BYTES`]), and a batch holds
/// at most the records and bytes asked for.
///
/// The reader belongs to the [`crate::Log`] that made it: after the log is closed and
/// opened again, make a new reader from the saved position. A reader that outlives its
/// log can still read everything the log fsynced before it stopped.
pub struct LogReader {
    dir: PathBuf,
    shared: Arc<Shared>,
    /// The next sequence number to return.
    position: u64,
    /// The segment being read, if it is known.
    cursor: Option<Cursor>,
    /// Segment base and byte position of the last corrupt region counted, so that a
    /// region met again (the reader found its place again after an error) is not
    /// counted twice.
    counted: Option<(u64, u64)>,
    stats: ReaderStats,
}

/// The reader's place in one segment.
struct Cursor {
    base: u64,
    path: PathBuf,
    reader: Reader,
    /// Sequence number of the next valid frame.
    next: u64,
    /// The segment is no longer the active one: its limit is its final length.
    sealed: bool,
    /// A corrupt region was met in this segment (the numbering was anchored then).
    skipped: bool,
}

impl LogReader {
    /// A reader from `from`, which must not be past the log's fsynced records.
    pub(crate) fn new(dir: PathBuf, shared: Arc<Shared>, from: u64) -> Result<Self, ReadError> {
        let synced = shared.synced.lock().seq;
        if from > synced {
            return Err(ReadError::Ahead {
                position: from,
                synced,
            });
        }
        Ok(LogReader {
            dir,
            shared,
            position: from,
            cursor: None,
            counted: None,
            stats: ReaderStats::default(),
        })
    }

    /// The sequence number of the next record to read: save it once the records before
    /// it are safe elsewhere, and make a reader from it to continue. It also moves past
    /// gaps and numbers no record has (skipped corruption, numbers reserved at open).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The sequence number after the last fsynced record: the reader can read up to it.
    pub fn synced_position(&self) -> u64 {
        self.shared.synced.lock().seq
    }

    /// Counters since this reader was made.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Reads the next fsynced records from [`position`](Self::position) on: at most
    /// `max_records` (at least one is always allowed), and no more than `max_bytes` of
    /// frames on disk unless a single record is larger (it then comes alone, so that
    /// the reader never gets stuck). Returns at once with what is durable now, possibly
    /// nothing: it never waits for the writer.
    ///
    /// Blocks on file I/O: call it from a dedicated thread or `spawn_blocking`.
    ///
    /// Errors are I/O errors and a damaged active segment ([`ReadError`]). If an error
    /// comes after the batch already has something to report, the batch is returned and
    /// the error comes again on the next call; the position only ever moves past what a
    /// returned batch accounts for, so retrying after an error loses nothing.
    pub fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Batch, ReadError> {
        let mut batch = Batch::default();
        match self.fill(&mut batch, max_records.max(1), max_bytes) {
            Ok(()) => Ok(batch),
            Err(e) => {
                // The cursor may point into a file that is gone, or past a frame the
                // failed read did not finish: find the place again on the next call.
                self.cursor = None;
                if batch.is_empty() { Err(e) } else { Ok(batch) }
            }
        }
    }

    fn fill(
        &mut self,
        batch: &mut Batch,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(), ReadError> {
        let mut bytes = 0usize;
        loop {
            if batch.records.len() >= max_records {
                return Ok(());
            }
            let state = *self.shared.synced.lock();
            let Some(mut cur) = self.cursor.take() else {
                if !self.locate(state, batch)? {
                    return Ok(());
                }
                continue;
            };
            if !cur.sealed {
                if cur.base < state.active_base {
                    // Rotated away since: complete and fsynced, read it to its end.
                    let len = cur
                        .reader
                        .file()
                        .metadata()
                        .map_err(|e| io_err(&cur.path, e))?;
                    cur.reader.set_limit(len.len());
                    cur.sealed = true;
                } else {
                    cur.reader.set_limit(state.bytes);
                }
            }
            if cur.reader.remaining() == 0 {
                if cur.sealed {
                    if !self.advance(cur, state, batch)? {
                        return Ok(());
                    }
                    continue;
                }
                if cur.base == state.active_base && cur.reader.position() >= state.bytes {
                    // Everything fsynced has been read: the next record appended is
                    // `state.seq`. (Already the reader's number, unless the file ended
                    // short of the fsynced length, which only damage does.)
                    cur.next = cur.next.max(state.seq);
                    self.position = self.position.max(state.seq);
                }
                self.cursor = Some(cur);
                return Ok(());
            }
            let at = cur.reader.position();
            match cur.reader.frame().map_err(|e| io_err(&cur.path, e))? {
                Ok((record, used)) => {
                    let seq = cur.next;
                    if seq >= self.position {
                        if !batch.records.is_empty() && bytes.saturating_add(used) > max_bytes {
                            // Left in the buffer for the next call.
                            self.cursor = Some(cur);
                            return Ok(());
                        }
                        bytes = bytes.saturating_add(used);
                        batch.records.push((seq, record));
                        self.position = seq + 1;
                        self.stats.records += 1;
                    }
                    cur.next += 1;
                    cur.reader.consume(used);
                }
                Err(_) => self.skip_region(&mut cur, at, state, batch)?,
            }
            self.cursor = Some(cur);
        }
    }

    /// Skips the corrupt region at byte `at` of the cursor's segment, as the scan at
    /// open does: to the next position where a whole valid frame starts, or to the
    /// limit when none does (the end of a sealed segment; in the active segment, the
    /// writer's next frame starts at the fsynced length).
    fn skip_region(
        &mut self,
        cur: &mut Cursor,
        at: u64,
        state: SyncedState,
        batch: &mut Batch,
    ) -> Result<(), ReadError> {
        let skip = match cur.reader.resync().map_err(|e| io_err(&cur.path, e))? {
            Some(skip) => skip as u64,
            None => cur.reader.remaining(),
        };
        let first_hidden = cur.next;
        if !cur.skipped {
            // The region hid an unknown number of records: number the rest of the
            // segment back from a point whose number is known, the successor's base
            // for a sealed segment, the fsynced end for the active one (the writer
            // counted every frame it wrote, the damaged ones too). A record then never
            // gets a lower number than it was written with, and every reader, whenever
            // made, numbers it the same way.
            let anchor = if cur.sealed {
                self.successor(cur.base)?
                    .map(|next| (cur.reader.limit(), next))
            } else {
                Some((state.bytes, state.seq))
            };
            if let Some((end, end_seq)) = anchor {
                let file = cur
                    .reader
                    .file()
                    .try_clone()
                    .map_err(|e| io_err(&cur.path, e))?;
                let mut rest = Reader::from_file(file, at + skip, end);
                let after = recover::count_frames(&mut rest).map_err(|e| io_err(&cur.path, e))?;
                cur.next = cur.next.max(end_seq.saturating_sub(after));
            }
        }
        cur.skipped = true;
        cur.reader
            .consume(usize::try_from(skip).unwrap_or(usize::MAX));
        // The region hid the numbers `first_hidden..cur.next`, or some from
        // `first_hidden` on: it costs this reader something unless they are all below
        // its position.
        let lost_here = first_hidden >= self.position || cur.next > self.position;
        self.count_region(cur.base, at, skip, lost_here, batch);
        Ok(())
    }

    /// Counts a skipped region once, and only when it hid numbers at or past the
    /// reader's position (regions crossed while finding the position are older news).
    fn count_region(&mut self, base: u64, at: u64, bytes: u64, lost_here: bool, batch: &mut Batch) {
        if !lost_here || self.counted.is_some_and(|c| c >= (base, at)) {
            return;
        }
        self.counted = Some((base, at));
        batch.skipped_regions += 1;
        batch.skipped_bytes += bytes;
        self.stats.skipped_regions += 1;
        self.stats.skipped_bytes += bytes;
    }

    /// Opens the segment holding the position (the newest one whose base is not above
    /// it), or, when retention deleted it, reports the gap and opens the oldest retained
    /// segment. Returns `false` when the batch must end first (a gap, while the batch
    /// holds records) or when there is nothing to open.
    fn locate(&mut self, state: SyncedState, batch: &mut Batch) -> Result<bool, ReadError> {
        loop {
            let bases = self.list(state.active_base)?;
            let Some(&oldest) = bases.first() else {
                // No segment at all: the directory was emptied under the log.
                return Ok(false);
            };
            let base = match bases.iter().rev().find(|&&b| b <= self.position) {
                Some(&base) => base,
                None => {
                    if !self.gap(oldest, batch) {
                        return Ok(false);
                    }
                    oldest
                }
            };
            if let Some(cur) = self.open_cursor(base, state, batch)? {
                self.cursor = Some(cur);
                return Ok(true);
            }
            // Deleted between the listing and the opening: look again.
        }
    }

    /// Moves on from a sealed segment read to its end. Returns `false` when the batch
    /// must end first (the cursor is kept and the move is made again on the next call).
    fn advance(
        &mut self,
        cur: Cursor,
        state: SyncedState,
        batch: &mut Batch,
    ) -> Result<bool, ReadError> {
        let bases = self.list(state.active_base)?;
        let Some(&next) = bases.iter().find(|&&b| b > cur.base) else {
            // A sealed segment always has a successor; the directory was changed under
            // the log. Nothing to read until it is back.
            self.cursor = Some(cur);
            return Ok(false);
        };
        if bases.contains(&cur.base) {
            // Still there, so its successor is too (retention deletes from the front):
            // the numbers up to the successor's base belong to no retained record
            // (hidden by corruption, or reserved when the log was opened).
            self.position = self.position.max(next);
        } else if !self.gap(next, batch) {
            // Deleted while it was read: the segments after it may be gone too, and
            // the numbers up to the oldest retained one are reported as a gap.
            self.cursor = Some(cur);
            return Ok(false);
        }
        // `locate` opens the segment holding the new position.
        Ok(true)
    }

    /// Records the gap from the position to `to` and moves there. `false` (nothing
    /// done) when the batch already holds records: they end the batch, the gap opens
    /// the next one.
    fn gap(&mut self, to: u64, batch: &mut Batch) -> bool {
        if to <= self.position {
            return true;
        }
        if !batch.records.is_empty() {
            return false;
        }
        let lost = to - self.position;
        match &mut batch.gap {
            // Retention went on while the reader was catching up: one longer gap.
            Some(gap) => gap.resumed_at = to,
            None => {
                batch.gap = Some(Gap {
                    from: self.position,
                    resumed_at: to,
                });
                self.stats.gaps += 1;
            }
        }
        self.stats.gap_records += lost;
        self.position = to;
        true
    }

    /// Opens the segment starting at `base` and checks its header; `None` if the file
    /// is gone (retention deleted it).
    fn open_cursor(
        &mut self,
        base: u64,
        state: SyncedState,
        batch: &mut Batch,
    ) -> Result<Option<Cursor>, ReadError> {
        let path = self.dir.join(format::segment_name(base));
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let sealed = base < state.active_base;
        let limit = if sealed {
            file.metadata().map_err(|e| io_err(&path, e))?.len()
        } else {
            state.bytes
        };
        let mut reader = Reader::from_file(file, 0, limit);
        let header = if reader
            .fill(HEADER_LEN as usize)
            .map_err(|e| io_err(&path, e))?
        {
            format::check_header(reader.available(), base)
        } else {
            Err(FrameError::Torn)
        };
        let mut skipped = false;
        match header {
            Ok(()) => reader.consume(HEADER_LEN as usize),
            Err(_) if sealed => {
                // Not readable at all: the whole segment is one corrupt region, and its
                // records (numbers up to the successor's base) are skipped with it.
                tracing::warn!(path = %path.display(), "log reader skipping a segment with an invalid header");
                reader.consume(usize::try_from(limit).unwrap_or(usize::MAX));
                // It hid the numbers up to its successor's base.
                let end = self.successor(base)?.unwrap_or(u64::MAX);
                self.count_region(base, 0, limit, end > self.position, batch);
                skipped = true;
            }
            Err(e) => {
                return Err(ReadError::Corrupt {
                    path,
                    reason: e.reason(),
                });
            }
        }
        Ok(Some(Cursor {
            base,
            path,
            reader,
            next: base,
            sealed,
            skipped,
        }))
    }

    /// The base of the segment after `base`, if `base` is still in the directory.
    fn successor(&self, base: u64) -> Result<Option<u64>, ReadError> {
        let state = *self.shared.synced.lock();
        let bases = self.list(state.active_base)?;
        if !bases.contains(&base) {
            return Ok(None);
        }
        Ok(bases.into_iter().find(|&b| b > base))
    }

    /// The segments' bases, oldest first, up to the active segment's: a file with a
    /// higher base is being created, its header perhaps not yet written.
    fn list(&self, max_base: u64) -> Result<Vec<u64>, ReadError> {
        let mut bases = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))? {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            if let Some(base) = entry
                .file_name()
                .to_str()
                .and_then(format::parse_segment_name)
                && base <= max_base
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok(bases)
    }
}
