//! Reading the segments back at open, and repairing the tail of the last one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::format::{self, FrameError, HEADER_LEN};
use crate::{LogError, Record, io_err};

/// What the writer needs to know about a segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    /// Global sequence number of the segment's first record (also its file name).
    pub base: u64,
    /// Number of records in it.
    pub records: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Newest `time_ms` of its records; `None` while empty.
    pub max_time_ms: Option<u64>,
    /// The file.
    pub path: PathBuf,
}

/// A segment read back at open.
pub(crate) struct Scanned {
    pub meta: SegmentMeta,
    pub records: Vec<Record>,
}

/// Reads every segment in `dir` in order. The last segment's torn or corrupt tail is
/// truncated (and a header shorter than 16 bytes rewritten); any other invalid data, or
/// a gap in the sequence numbers, is an error.
pub(crate) fn scan(dir: &Path) -> Result<Vec<Scanned>, LogError> {
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

    let mut out: Vec<Scanned> = Vec::with_capacity(bases.len());
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let last = i + 1 == count;
        let path = dir.join(format::segment_name(base));
        if let Some(prev) = out.last() {
            let expected = prev.meta.base + prev.meta.records;
            if base != expected {
                return Err(LogError::Corrupt {
                    path,
                    position: 0,
                    reason: "segment does not continue the previous one's sequence numbers",
                });
            }
        }
        out.push(scan_segment(&path, base, last)?);
    }
    Ok(out)
}

fn scan_segment(path: &Path, base: u64, last: bool) -> Result<Scanned, LogError> {
    let data = fs::read(path).map_err(|e| io_err(path, e))?;
    let mut meta = SegmentMeta {
        base,
        records: 0,
        bytes: HEADER_LEN,
        max_time_ms: None,
        path: path.to_path_buf(),
    };
    let mut records = Vec::new();

    match format::check_header(&data, base) {
        Ok(()) => {}
        Err(FrameError::Torn) if last => {
            // Crash while the segment was being created: start it again.
            tracing::warn!(path = %path.display(), "log segment header torn; rewriting it");
            rewrite_header(path, base)?;
            return Ok(Scanned { meta, records });
        }
        Err(e) => {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                reason: e.reason(),
            });
        }
    }

    let mut pos = HEADER_LEN as usize;
    while pos < data.len() {
        match format::read_frame(&data[pos..]) {
            Ok((record, used)) => {
                meta.max_time_ms = Some(
                    meta.max_time_ms
                        .map_or(record.time_ms, |t| t.max(record.time_ms)),
                );
                records.push(record);
                pos += used;
            }
            Err(e) if last => {
                tracing::warn!(
                    path = %path.display(),
                    position = pos,
                    dropped_bytes = data.len() - pos,
                    reason = e.reason(),
                    "truncating the torn or corrupt tail of the last log segment"
                );
                truncate(path, pos as u64)?;
                break;
            }
            Err(e) => {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: pos as u64,
                    reason: e.reason(),
                });
            }
        }
    }
    meta.records = records.len() as u64;
    meta.bytes = pos as u64;
    Ok(Scanned { meta, records })
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
