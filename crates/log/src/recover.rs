//! Reading the segments back at open: validation, resynchronisation over corrupt
//! records, repair of the last segment's tail, and the streaming replay.
//!
//! Segments are read through a bounded buffer (it grows only to hold the largest frame
//! met, at most [`MAX_RECORD_BYTES`] plus the frame header), never whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::format::{self, FRAME_HEADER_LEN, FrameError, HEADER_LEN, MAX_RECORD_BYTES};
use crate::{LogError, Record, io_err};

/// How much is read from a segment file at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Smallest possible record body: three length prefixes, offset and time.
const MIN_BODY: usize = 4 + 4 + 8 + 8 + 4;
/// Smallest possible frame on disk. A corrupt region of `n` bytes hid at most
/// `n / MIN_FRAME` records (the region starts and ends at frame boundaries).
const MIN_FRAME: u64 = FRAME_HEADER_LEN + MIN_BODY as u64;

/// The most records a skipped region of `bytes` bytes can have hidden (at least one: a
/// region is only ever found where a record should start).
pub(crate) fn hidden_bound(bytes: u64) -> u64 {
    (bytes / MIN_FRAME).max(1)
}

/// What the writer needs to know about a segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    /// Global sequence number of the segment's first record (also its file name).
    pub base: u64,
    /// Number of valid records in it.
    pub records: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Newest `time_ms` of its records; `None` while empty.
    pub max_time_ms: Option<u64>,
    /// The file.
    pub path: PathBuf,
    /// Start positions of the corrupt regions skipped in it (each hid at least one
    /// record, so the next segment's base may be higher than `base + records`).
    pub skipped: Vec<u64>,
    /// Upper bound of the records those regions hid ([`hidden_bound`] of each). A
    /// segment that continues after skipped regions starts its successor at
    /// [`end`](Self::end), so that no sequence number a hidden record had is ever given
    /// to another record.
    pub hidden_max: u64,
}

impl SegmentMeta {
    /// The sequence number after this segment's records, hidden ones included (an
    /// upper bound when regions were skipped): where its successor starts.
    pub fn end(&self) -> u64 {
        self.base
            .saturating_add(self.records)
            .saturating_add(self.hidden_max)
    }
}

/// The result of the validation pass.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub metas: Vec<SegmentMeta>,
    pub skipped_regions: u64,
    pub skipped_bytes: u64,
    pub truncated_bytes: u64,
}

/// Validates every segment in `dir` in order, without keeping any record. The last
/// segment's torn or corrupt tail is truncated (and a header shorter than 16 bytes
/// rewritten); corrupt records followed by a valid one are skipped and counted, in any
/// segment. A bad header of an older segment, or a gap in the sequence numbers that no
/// skipped region explains, is an error.
pub(crate) fn scan(dir: &Path) -> Result<Scan, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(format::parse_segment_name)
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();

    let mut out = Scan::default();
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let last = i + 1 == count;
        let path = dir.join(format::segment_name(base));
        if let Some(prev) = out.metas.last() {
            let expected = prev.base.saturating_add(prev.records);
            let explained = if prev.skipped.is_empty() {
                base == expected
            } else {
                base >= expected
            };
            if !explained {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: "segment does not continue the previous one's sequence numbers",
                });
            }
        }
        let meta = scan_segment(&path, base, last, &mut out)?;
        out.metas.push(meta);
    }
    Ok(out)
}

/// Reads the frames of an already validated segment and hands them to `replay`; returns
/// how many. Skips the same corrupt regions as the validation pass (same bytes, same
/// rule), and stops at `meta.bytes`.
pub(crate) fn replay_segment(
    meta: &SegmentMeta,
    replay: &mut impl FnMut(Record),
) -> Result<u64, LogError> {
    let path = &meta.path;
    let mut reader = Reader::open(path, meta.bytes)?;
    reader.consume(HEADER_LEN as usize);
    let mut n = 0;
    while reader.remaining() > 0 {
        match reader.frame().map_err(|e| io_err(path, e))? {
            Ok((record, used)) => {
                reader.consume(used);
                replay(record);
                n += 1;
            }
            Err(_) => match reader.resync().map_err(|e| io_err(path, e))? {
                Some(skip) => reader.consume(skip),
                None => break,
            },
        }
    }
    Ok(n)
}

fn scan_segment(
    path: &Path,
    base: u64,
    last: bool,
    scan: &mut Scan,
) -> Result<SegmentMeta, LogError> {
    let len = fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    let mut meta = SegmentMeta {
        base,
        records: 0,
        bytes: HEADER_LEN,
        max_time_ms: None,
        path: path.to_path_buf(),
        skipped: Vec::new(),
        hidden_max: 0,
    };
    let mut reader = Reader::open(path, len)?;
    let header_ok = reader
        .fill(HEADER_LEN as usize)
        .map_err(|e| io_err(path, e))?;
    let header = if header_ok {
        format::check_header(reader.available(), base)
    } else {
        Err(FrameError::Torn)
    };
    match header {
        Ok(()) => {}
        Err(FrameError::Torn) if last => {
            // Crash while the segment was being created: start it again.
            tracing::warn!(path = %path.display(), "log segment header torn; rewriting it");
            rewrite_header(path, base)?;
            scan.truncated_bytes += len;
            return Ok(meta);
        }
        Err(e) => {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                reason: e.reason(),
            });
        }
    }
    reader.consume(HEADER_LEN as usize);

    while reader.remaining() > 0 {
        let pos = reader.position();
        let failure = match reader.frame().map_err(|e| io_err(path, e))? {
            Ok((record, used)) => {
                meta.max_time_ms = Some(
                    meta.max_time_ms
                        .map_or(record.time_ms, |t| t.max(record.time_ms)),
                );
                meta.records += 1;
                reader.consume(used);
                continue;
            }
            Err(e) => e,
        };
        match reader.resync().map_err(|e| io_err(path, e))? {
            Some(skip) => {
                if meta.skipped.is_empty() {
                    tracing::warn!(
                        path = %path.display(),
                        position = pos,
                        skipped_bytes = skip,
                        reason = failure.reason(),
                        "skipping a corrupt record in the message log (a valid one follows); \
                         further skips in this segment are only counted"
                    );
                }
                meta.skipped.push(pos);
                meta.hidden_max += hidden_bound(skip as u64);
                scan.skipped_regions += 1;
                scan.skipped_bytes += skip as u64;
                reader.consume(skip);
            }
            None if last => {
                tracing::warn!(
                    path = %path.display(),
                    position = pos,
                    dropped_bytes = len - pos,
                    reason = failure.reason(),
                    "truncating the torn or corrupt tail of the last log segment"
                );
                truncate(path, pos)?;
                scan.truncated_bytes += len - pos;
                meta.bytes = pos;
                return Ok(meta);
            }
            None => {
                // A sealed segment was fsynced when it was closed: a bad tail there is
                // damage, not a torn write. Its valid records are kept; nothing is
                // written to it any more, so the file is left as it is.
                tracing::warn!(
                    path = %path.display(),
                    position = pos,
                    skipped_bytes = len - pos,
                    reason = failure.reason(),
                    "skipping the corrupt end of a sealed log segment"
                );
                meta.skipped.push(pos);
                meta.hidden_max += hidden_bound(len - pos);
                scan.skipped_regions += 1;
                scan.skipped_bytes += len - pos;
                break;
            }
        }
    }
    meta.bytes = len;
    Ok(meta)
}

/// A forward reader over a segment file with a bounded, compacting buffer.
///
/// Also the tailing reader's (`reader.rs`): it never reads past `limit`, so a reader of
/// the active segment whose limit is the fsynced length never looks at bytes the writer
/// may still be writing.
pub(crate) struct Reader {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File position of `buf[start]`.
    pos: u64,
    /// Where reading stops (the file length, or the validated length at replay).
    limit: u64,
}

impl Reader {
    fn open(path: &Path, limit: u64) -> Result<Reader, LogError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        Ok(Reader::from_file(file, 0, limit))
    }

    /// A reader of `file` starting at byte `pos`, stopping at `limit`.
    pub(crate) fn from_file(file: File, pos: u64, limit: u64) -> Reader {
        Reader {
            file,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pos,
            limit,
        }
    }

    /// The open segment file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Moves the limit (the tailing reader follows the active segment's fsynced length).
    /// Bytes already buffered stay valid: below the old limit the file never changes.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.pos)
    }

    pub(crate) fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        let from_buf = n.min(self.end - self.start);
        self.start += from_buf;
        self.pos += n as u64;
        if from_buf < n {
            // Skipping past the buffer: drop it and read on from the new position.
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes at least `need` bytes available from the current position; `false` if the
    /// segment ends first.
    pub(crate) fn fill(&mut self, need: usize) -> io::Result<bool> {
        if (need as u64) > self.remaining() {
            return Ok(false);
        }
        if self.end - self.start >= need {
            return Ok(true);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = need.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        self.file
            .seek(SeekFrom::Start(self.pos + self.end as u64))?;
        while self.end < need {
            let left = self.limit.saturating_sub(self.pos + self.end as u64);
            let room = (self.buf.len() - self.end).min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.file.read(&mut self.buf[self.end..self.end + room])?;
            if n == 0 {
                // Shorter than it said: treat as the end of the segment.
                self.limit = self.pos + self.end as u64;
                return Ok(false);
            }
            self.end += n;
        }
        Ok(true)
    }

    /// Decodes the frame at the current position. The outer error is an I/O error; the
    /// inner one says why the bytes are not a frame.
    pub(crate) fn frame(&mut self) -> io::Result<Result<(Record, usize), FrameError>> {
        if !self.fill(FRAME_HEADER_LEN as usize)? {
            return Ok(Err(FrameError::Torn));
        }
        let h = self.available();
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Ok(Err(FrameError::Corrupt("record length over the limit")));
        }
        let total = FRAME_HEADER_LEN as usize + len;
        if !self.fill(total)? {
            return Ok(Err(FrameError::Torn));
        }
        Ok(format::read_frame(&self.available()[..total]))
    }

    /// Looks for the next position after the current one where a whole valid frame
    /// starts (plausible length, consistent inner lengths, crc, parsable body). Returns
    /// how many bytes to skip to reach it, or `None` if no valid frame follows.
    pub(crate) fn resync(&mut self) -> io::Result<Option<usize>> {
        let origin = self.pos;
        self.consume(1);
        while self.remaining() >= FRAME_HEADER_LEN + MIN_BODY as u64 {
            if self.plausible()? && self.frame()?.is_ok() {
                let skip = usize::try_from(self.pos - origin).unwrap_or(usize::MAX);
                // Back to where we started, so the caller decides what to skip.
                self.rewind(origin);
                return Ok(Some(skip));
            }
            self.consume(1);
        }
        self.rewind(origin);
        Ok(None)
    }

    /// Cheap checks before a crc: the length fits, and the lengths inside the body add
    /// up to it exactly. Random bytes almost never pass; a crc over up to 64 MiB per
    /// candidate position would make a long corrupt region quadratic.
    fn plausible(&mut self) -> io::Result<bool> {
        let header = FRAME_HEADER_LEN as usize;
        if !self.fill(header + 4)? {
            return Ok(false);
        }
        let a = self.available();
        let len = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize;
        if !(MIN_BODY..=MAX_RECORD_BYTES).contains(&len) || (header + len) as u64 > self.remaining()
        {
            return Ok(false);
        }
        let channel = u32::from_le_bytes([a[8], a[9], a[10], a[11]]) as usize;
        let Some(epoch_at) = channel.checked_add(4).filter(|n| n + 4 + 20 <= len) else {
            return Ok(false);
        };
        if !self.fill(header + epoch_at + 4)? {
            return Ok(false);
        }
        let a = &self.available()[header + epoch_at..];
        let epoch = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize;
        let Some(payload_at) = epoch
            .checked_add(epoch_at + 4 + 16)
            .filter(|n| n + 4 <= len)
        else {
            return Ok(false);
        };
        if !self.fill(header + payload_at + 4)? {
            return Ok(false);
        }
        let a = &self.available()[header + payload_at..];
        let payload = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize;
        Ok(payload_at + 4 + payload == len)
    }

    fn rewind(&mut self, to: u64) {
        let back = self.pos - to;
        if back as usize <= self.start {
            self.start -= back as usize;
        } else {
            self.start = 0;
            self.end = 0;
        }
        self.pos = to;
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.set_len(len).map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}

fn rewrite_header(path: &Path, base: u64) -> Result<(), LogError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.write_all(&format::header(base))
        .map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}

/// Counts the valid frames from `reader`'s position to its limit, skipping corrupt
/// regions by the same rule as [`scan`] and [`replay_segment`] (so all three agree on
/// which frames a segment holds).
pub(crate) fn count_frames(reader: &mut Reader) -> io::Result<u64> {
    let mut n = 0;
    while reader.remaining() > 0 {
        match reader.frame()? {
            Ok((_, used)) => {
                reader.consume(used);
                n += 1;
            }
            Err(_) => match reader.resync()? {
                Some(skip) => reader.consume(skip),
                None => break,
            },
        }
    }
    Ok(n)
}
