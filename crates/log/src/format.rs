//! On-disk format: segment header, record framing, segment file names.
//!
//! A segment file is a 16-byte header followed by frames:
//!
//! ```text
//! header: b"STLG" | u32 version (=1) | u64 base sequence number        (little endian)
//! frame:  u32 body length | u32 crc32 of body | body
//! body:   u32 len + channel (UTF-8) | u32 len + epoch (UTF-8) | u64 offset | u64 time_ms
//!         | u32 len + payload
//! ```

use std::io::{self, Write};

use bytes::Bytes;

use crate::Record;

/// Magic bytes at the start of every segment file.
pub(crate) const MAGIC: [u8; 4] = *b"STLG";
/// Current segment format version.
pub(crate) const VERSION: u32 = 1;
/// Length of the segment header in bytes.
pub(crate) const HEADER_LEN: u64 = 16;
/// Length of a frame header (body length + crc) in bytes.
pub(crate) const FRAME_HEADER_LEN: u64 = 8;
/// Largest record body accepted (and believed when reading a length field back).
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
/// Extension of segment files.
pub(crate) const SEGMENT_EXT: &str = "seg";

/// The segment header for a segment whose first record has sequence number `base`.
pub(crate) fn header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&base.to_le_bytes());
    h
}

/// File name of the segment starting at global sequence number `base`.
pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.{SEGMENT_EXT}")
}

/// Parses a segment file name back into its base sequence number.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Length of the body of `record` once encoded.
pub(crate) fn body_len(record: &Record) -> usize {
    4 + record.channel.len() + 4 + record.epoch.len() + 8 + 8 + 4 + record.payload.len()
}

/// Total bytes `record` takes on disk (frame header + body).
pub(crate) fn frame_len(record: &Record) -> u64 {
    FRAME_HEADER_LEN + body_len(record) as u64
}

/// Writes one frame for `record` to `out`, computing the crc over the body pieces
/// without assembling the body first. The caller has checked the size limit.
pub(crate) fn write_frame<W: Write>(out: &mut W, record: &Record) -> io::Result<()> {
    let len = body_len(record) as u32;
    let channel_len = (record.channel.len() as u32).to_le_bytes();
    let epoch_len = (record.epoch.len() as u32).to_le_bytes();
    let offset = record.offset.to_le_bytes();
    let time = record.time_ms.to_le_bytes();
    let payload_len = (record.payload.len() as u32).to_le_bytes();

    let mut crc = crc32fast::Hasher::new();
    crc.update(&channel_len);
    crc.update(record.channel.as_bytes());
    crc.update(&epoch_len);
    crc.update(record.epoch.as_bytes());
    crc.update(&offset);
    crc.update(&time);
    crc.update(&payload_len);
    crc.update(&record.payload);

    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    out.write_all(&channel_len)?;
    out.write_all(record.channel.as_bytes())?;
    out.write_all(&epoch_len)?;
    out.write_all(record.epoch.as_bytes())?;
    out.write_all(&offset)?;
    out.write_all(&time)?;
    out.write_all(&payload_len)?;
    out.write_all(&record.payload)
}

/// Why a segment could not be read past some position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The file ends inside a frame (a write that did not complete).
    Torn,
    /// The frame is complete but its length, crc or body is invalid.
    Corrupt(&'static str),
}

impl FrameError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            FrameError::Torn => "file ends inside a record",
            FrameError::Corrupt(reason) => reason,
        }
    }
}

/// Checks a segment header. `Torn` if the file is shorter than a header.
pub(crate) fn check_header(data: &[u8], base: u64) -> Result<(), FrameError> {
    if (data.len() as u64) < HEADER_LEN {
        return Err(FrameError::Torn);
    }
    if data[0..4] != MAGIC {
        return Err(FrameError::Corrupt("bad magic"));
    }
    if u32::from_le_bytes([data[4], data[5], data[6], data[7]]) != VERSION {
        return Err(FrameError::Corrupt("unsupported segment version"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[8..16]);
    if u64::from_le_bytes(b) != base {
        return Err(FrameError::Corrupt(
            "header base sequence does not match file name",
        ));
    }
    Ok(())
}

/// Decodes the frame at the start of `data`; returns the record and the frame length.
pub(crate) fn read_frame(data: &[u8]) -> Result<(Record, usize), FrameError> {
    if data.len() < FRAME_HEADER_LEN as usize {
        return Err(FrameError::Torn);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if len > MAX_RECORD_BYTES {
        return Err(FrameError::Corrupt("record length over the limit"));
    }
    let total = FRAME_HEADER_LEN as usize + len;
    if data.len() < total {
        return Err(FrameError::Torn);
    }
    let body = &data[FRAME_HEADER_LEN as usize..total];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Corrupt("crc mismatch"));
    }
    let record = decode_body(body).ok_or(FrameError::Corrupt("malformed record body"))?;
    Ok((record, total))
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut cur = Cursor { data: body };
    let channel = String::from_utf8(cur.prefixed()?.to_vec()).ok()?;
    let epoch = String::from_utf8(cur.prefixed()?.to_vec()).ok()?;
    let offset = cur.u64()?;
    let time_ms = cur.u64()?;
    // Copy the payload: slicing the segment buffer would keep the whole segment alive for
    // as long as the caller keeps any one of its records.
    let payload = Bytes::copy_from_slice(cur.prefixed()?);
    if !cur.data.is_empty() {
        return None;
    }
    Some(Record {
        channel,
        epoch,
        offset,
        time_ms,
        payload,
    })
}

struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }

    fn prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            channel: "news".into(),
            epoch: "ep".into(),
            offset: 7,
            time_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn frame_round_trip_and_length() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &rec()).unwrap();
        assert_eq!(buf.len() as u64, frame_len(&rec()));
        let (back, used) = read_frame(&buf).unwrap();
        assert_eq!(back, rec());
        assert_eq!(used, buf.len());
    }

    #[test]
    fn short_and_flipped_frames_are_rejected() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &rec()).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(read_frame(&buf[..cut]).unwrap_err(), FrameError::Torn);
        }
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(read_frame(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }
}
