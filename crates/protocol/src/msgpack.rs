//! A minimal, non-recursive MessagePack scanner: enough to split a frame into
//! top-level maps and find each entry's byte range, so that params can be decoded
//! one by one (and an invalid params value does not poison the rest of the frame).

/// Why a MessagePack frame could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The input ended inside a value.
    Eof,
    /// The reserved marker 0xc1.
    BadMarker,
    /// Expected a map.
    NotAMap,
    /// Expected a string key.
    KeyNotString,
    /// Expected a non-negative integer that fits u32.
    NotU32,
}

/// A cursor over a MessagePack byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn byte(&mut self) -> Result<u8, ScanError> {
        let b = *self.buf.get(self.pos).ok_or(ScanError::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ScanError> {
        let end = self.pos.checked_add(n).ok_or(ScanError::Eof)?;
        let s = self.buf.get(self.pos..end).ok_or(ScanError::Eof)?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, ScanError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Reads a map header, returning the number of entries.
    pub(crate) fn map_len(&mut self) -> Result<u64, ScanError> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(u64::from(m & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => Err(ScanError::NotAMap),
        }
    }

    /// Reads a str, returning its raw bytes.
    pub(crate) fn str(&mut self) -> Result<&'a [u8], ScanError> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => u64::from(m & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return Err(ScanError::KeyNotString),
        };
        self.take(usize::try_from(len).map_err(|_| ScanError::Eof)?)
    }

    /// Reads an integer that must fit u32 (any int encoding).
    pub(crate) fn u32(&mut self) -> Result<u32, ScanError> {
        let v: i128 = match self.byte()? {
            m @ 0x00..=0x7f => i128::from(m),
            m @ 0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return Err(ScanError::NotU32),
        };
        u32::try_from(v).map_err(|_| ScanError::NotU32)
    }

    /// Skips one complete value (iteratively, any nesting depth) and returns its bytes.
    pub(crate) fn value(&mut self) -> Result<&'a [u8], ScanError> {
        let start = self.pos;
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            let (skip, children): (u64, u64) = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
                0x90..=0x9f => (0, u64::from(m & 0x0f)),
                0xa0..=0xbf => (u64::from(m & 0x1f), 0),
                0xc1 => return Err(ScanError::BadMarker),
                0xc4 | 0xd9 => (self.be(1)?, 0),
                0xc5 | 0xda => (self.be(2)?, 0),
                0xc6 | 0xdb => (self.be(4)?, 0),
                0xc7 => (self.be(1)? + 1, 0),
                0xc8 => (self.be(2)? + 1, 0),
                0xc9 => (self.be(4)? + 1, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                0xdc => (0, self.be(2)?),
                0xdd => (0, self.be(4)?),
                0xde => (0, 2 * self.be(2)?),
                0xdf => (0, 2 * self.be(4)?),
            };
            self.take(usize::try_from(skip).map_err(|_| ScanError::Eof)?)?;
            pending = pending.saturating_add(children);
            // Every pending value needs at least one byte: fail fast on lies.
            if pending > self.remaining() as u64 {
                return Err(ScanError::Eof);
            }
        }
        Ok(&self.buf[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_nested_values() {
        let v = serde_json::json!({"a": [1, -2, 3.5, "x", null, true, {"b": [[]]}], "c": u64::MAX});
        let mut bytes = rmp_serde::to_vec(&v).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&[0x01]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.value().unwrap().len(), len);
        assert_eq!(r.value().unwrap(), &[0x01]);
        assert!(r.is_empty());
        assert_eq!(r.value(), Err(ScanError::Eof));
    }

    #[test]
    fn rejects_truncated_and_lying_lengths() {
        assert_eq!(
            Reader::new(&[0xdf, 0xff, 0xff, 0xff, 0xff]).value(),
            Err(ScanError::Eof)
        );
        assert_eq!(
            Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff]).value(),
            Err(ScanError::Eof)
        );
        assert_eq!(Reader::new(&[0xc1]).value(), Err(ScanError::BadMarker));
        assert_eq!(Reader::new(&[0x92, 0x01]).value(), Err(ScanError::Eof));
    }

    #[test]
    fn reads_u32() {
        for (bytes, want) in [
            (vec![0x05], Ok(5)),
            (vec![0xcc, 0xff], Ok(255)),
            (vec![0xce, 0xff, 0xff, 0xff, 0xff], Ok(u32::MAX)),
            (vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0], Err(ScanError::NotU32)),
            (vec![0xd0, 0x07], Ok(7)),
            (vec![0xff], Err(ScanError::NotU32)),
            (vec![0xa1, b'1'], Err(ScanError::NotU32)),
        ] {
            assert_eq!(Reader::new(&bytes).u32(), want, "{bytes:?}");
        }
    }
}
