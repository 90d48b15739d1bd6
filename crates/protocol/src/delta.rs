//! Fossil deltas: the delta format of the Fossil SCM, which Centrifugo also sends, so
//! that existing decoders (such as the `fossil-delta` npm package) apply ours.
//!
//! A delta turns a *source* (the previous publication's data) into a *target* (the
//! current one):
//!
//! ```text
//! <target length>\n            header
//! <n>@<offset>,                copy n bytes of the source, from offset
//! <n>:<n literal bytes>        insert n bytes
//! <checksum>;                  end: checksum of the target
//! ```
//!
//! Numbers are written most significant digit first in the 64 digits
//! `0-9 A-Z _ a-z ~`. The checksum is the 32-bit wrapping sum of the target read as
//! big-endian 32-bit words, the last partial word padded with zero bytes.
//!
//! The encoder indexes the source's 16-byte blocks by a rolling hash, slides a
//! 16-byte window over the target, and extends every verified block match forward and
//! backward as far as the bytes agree. Copies start and end on UTF-8 character
//! boundaries of the target, so the delta between two UTF-8 texts is UTF-8 text (JSON
//! clients receive it as a JSON string). [`apply`] parses untrusted bytes: every
//! number, offset and length is checked, and the output never exceeds the caller's cap.

/// Bytes per source block: the shortest match the encoder looks for.
const BLOCK: usize = 16;

/// Candidate source blocks tried per target position: a bound on the encoder's work
/// for sources made of one repeated block.
const MAX_CANDIDATES: usize = 32;

/// The 64 digits, in value order.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Value of each byte as a digit (`0xff`: not a digit).
const DIGIT_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < DIGITS.len() {
        table[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Multiplier of the rolling hash (odd, so that multiplying keeps every bit).
const HASH_BASE: u32 = 0x0100_0193;

/// `HASH_BASE` to the power `BLOCK - 1`: the weight of the byte leaving the window.
const HASH_OUT: u32 = {
    let mut p: u32 = 1;
    let mut i = 1;
    while i < BLOCK {
        p = p.wrapping_mul(HASH_BASE);
        i += 1;
    }
    p
};

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A number was expected at this byte offset of the delta and none is there.
    #[error("expected a number at byte {at}")]
    ExpectedNumber {
        /// Offset in the delta.
        at: usize,
    },
    /// A number does not fit in 64 bits (or, for an offset or length, in memory).
    #[error("number too large at byte {at}")]
    NumberTooLarge {
        /// Offset in the delta.
        at: usize,
    },
    /// The target length is not followed by `\n`.
    #[error("the target length is not followed by a newline")]
    ExpectedNewline,
    /// The target is larger than the caller allows.
    #[error("the target would be {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length the delta declares.
        size: usize,
        /// The caller's cap.
        max: usize,
    },
    /// A byte that is none of `@`, `:`, `;` follows a command's number.
    #[error("unknown command {byte:#04x} at byte {at}")]
    UnknownCommand {
        /// The byte.
        byte: u8,
        /// Offset in the delta.
        at: usize,
    },
    /// A copy's offset is not followed by `,`.
    #[error("copy command not terminated by ',' at byte {at}")]
    ExpectedComma {
        /// Offset in the delta.
        at: usize,
    },
    /// A copy reads past the end of the source.
    #[error("copy of {len} bytes at {offset} past the end of a {source_len}-byte source")]
    CopyOutOfRange {
        /// The copy's source offset.
        offset: usize,
        /// The copy's length.
        len: usize,
        /// The source's length.
        source_len: usize,
    },
    /// An insert holds more bytes than the delta has left.
    #[error("insert of {len} bytes past the end of the delta")]
    InsertPastEnd {
        /// The insert's length.
        len: usize,
    },
    /// The commands produce more bytes than the declared target length.
    #[error("the commands produce more than the declared {size} bytes")]
    OutputOverflow {
        /// The declared length.
        size: usize,
    },
    /// The delta ended with a different length than declared.
    #[error("the delta produced {produced} bytes, not the declared {declared}")]
    SizeMismatch {
        /// The declared length.
        declared: usize,
        /// What the commands produced.
        produced: usize,
    },
    /// The target's checksum is not the delta's.
    #[error("checksum mismatch: the delta says {expected:#010x}, the target has {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum the delta carries.
        expected: u64,
        /// The checksum of what was produced.
        actual: u32,
    },
    /// The delta ends without its `;` terminator.
    #[error("the delta ends without its terminator")]
    Unterminated,
    /// Bytes follow the `;` terminator.
    #[error("bytes after the delta's terminator")]
    TrailingBytes,
}

/// Fossil's checksum of `bytes`: the wrapping sum of big-endian 32-bit words, the
/// last partial word padded with zeros.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(4);
    let mut sum = 0u32;
    for word in &mut chunks {
        sum = sum.wrapping_add(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut last = [0u8; 4];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u32::from_be_bytes(last))
}

/// Appends `v` in the 64 digits, most significant first.
fn put_number(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 11];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Digits of `v` (at least one).
fn number_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 64 {
        v >>= 6;
        n += 1;
    }
    n
}

fn put_copy(len: usize, offset: usize, out: &mut Vec<u8>) {
    put_number(len as u64, out);
    out.push(b'@');
    put_number(offset as u64, out);
    out.push(b',');
}

fn put_insert(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    put_number(bytes.len() as u64, out);
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Hash of one window.
fn hash_of(window: &[u8]) -> u32 {
    window.iter().fold(0u32, |h, &b| {
        h.wrapping_mul(HASH_BASE).wrapping_add(u32::from(b))
    })
}

/// The window's hash after `out` leaves it and `inn` enters.
fn roll(hash: u32, out: u8, inn: u8) -> u32 {
    hash.wrapping_sub(u32::from(out).wrapping_mul(HASH_OUT))
        .wrapping_mul(HASH_BASE)
        .wrapping_add(u32::from(inn))
}

/// A byte that continues a UTF-8 character (never starts one).
fn continues_char(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// The source's blocks by hash: a bucket head per hash slot, chained through `next`;
/// each block's full hash, so that most false candidates cost no byte comparison.
struct Index {
    heads: Vec<u32>,
    next: Vec<u32>,
    hashes: Vec<u32>,
    shift: u32,
}

const NONE: u32 = u32::MAX;

impl Index {
    fn new(source: &[u8]) -> Index {
        let blocks = source.len() / BLOCK;
        // About two slots per block: short chains, few collisions.
        let slots = (2 * blocks).next_power_of_two().max(2);
        let mut index = Index {
            heads: vec![NONE; slots],
            next: vec![NONE; blocks],
            hashes: Vec::with_capacity(blocks),
            shift: 32u32.saturating_sub(slots.trailing_zeros()),
        };
        index.hashes.extend(source.chunks_exact(BLOCK).map(hash_of));
        // Inserted last to first, so that each chain lists the earliest block first: in
        // a source that repeats itself, that one extends furthest.
        for b in (0..blocks).rev() {
            let slot = index.slot(index.hashes[b]);
            index.next[b] = index.heads[slot];
            // Blocks beyond u32::MAX are not indexed: no real publication is that large.
            index.heads[slot] = u32::try_from(b).unwrap_or(NONE);
        }
        index
    }

    fn slot(&self, hash: u32) -> usize {
        // Multiplicative hashing: the slot is the product's high bits, which every bit
        // of the hash feeds.
        (hash.wrapping_mul(0x9e37_79b1) >> self.shift) as usize
    }
}

/// A copy: `len` bytes at `source` in the source make the target at `target`.
#[derive(Debug, Clone, Copy)]
struct Match {
    target: usize,
    source: usize,
    len: usize,
}

/// The longest match around the window at `pos` of the target, reaching back no
/// further than `floor` (the end of what is already encoded), or `None`.
fn best_match(
    index: &Index,
    source: &[u8],
    target: &[u8],
    pos: usize,
    floor: usize,
    hash: u32,
) -> Option<Match> {
    let window = &target[pos..pos + BLOCK];
    let mut best: Option<Match> = None;
    let mut candidate = index.heads[index.slot(hash)];
    let mut tried = 0;
    while candidate != NONE && tried < MAX_CANDIDATES {
        tried += 1;
        let block = candidate as usize;
        candidate = index.next.get(block).copied().unwrap_or(NONE);
        let start = block * BLOCK;
        if index.hashes.get(block) != Some(&hash) || source[start..start + BLOCK] != *window {
            continue;
        }
        let forward = BLOCK
            + source[start + BLOCK..]
                .iter()
                .zip(&target[pos + BLOCK..])
                .take_while(|(a, b)| a == b)
                .count();
        let reach = (pos - floor).min(start);
        let backward = source[start - reach..start]
            .iter()
            .rev()
            .zip(target[pos - reach..pos].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let m = Match {
            target: pos - backward,
            source: start - backward,
            len: backward + forward,
        };
        if best.is_none_or(|b| m.len > b.len) {
            best = Some(m);
        }
        if m.target == floor && m.target + m.len == target.len() {
            // Everything left is one copy: nothing can beat it.
            break;
        }
    }
    best.and_then(|m| align(m, target))
}

/// Shrinks a match to UTF-8 character boundaries of the target (by at most three bytes
/// at each end: beyond that the target is not UTF-8 anyway), and keeps it only when a
/// copy command is shorter than the bytes it replaces.
fn align(mut m: Match, target: &[u8]) -> Option<Match> {
    for _ in 0..3 {
        if m.len > 0 && continues_char(target[m.target]) {
            m.target += 1;
            m.source += 1;
            m.len -= 1;
        }
    }
    for _ in 0..3 {
        let end = m.target + m.len;
        if m.len > 0 && end < target.len() && continues_char(target[end]) {
            m.len -= 1;
        }
    }
    let cost = number_len(m.len as u64) + number_len(m.source as u64) + 2;
    (m.len > cost).then_some(m)
}

/// The delta that turns `source` into `target`.
pub fn encode(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 8 + 32);
    put_number(target.len() as u64, &mut out);
    out.push(b'\n');
    // Start of the target bytes not yet encoded.
    let mut done = 0;
    if source.len() >= BLOCK && target.len() >= BLOCK {
        let index = Index::new(source);
        let mut pos = 0;
        let mut hash = hash_of(&target[..BLOCK]);
        loop {
            if let Some(m) = best_match(&index, source, target, pos, done, hash) {
                put_insert(&target[done..m.target], &mut out);
                put_copy(m.len, m.source, &mut out);
                done = m.target + m.len;
                pos = done;
                if pos + BLOCK > target.len() {
                    break;
                }
                hash = hash_of(&target[pos..pos + BLOCK]);
                continue;
            }
            if pos + BLOCK >= target.len() {
                break;
            }
            hash = roll(hash, target[pos], target[pos + BLOCK]);
            pos += 1;
        }
    }
    put_insert(&target[done..], &mut out);
    put_number(u64::from(checksum(target)), &mut out);
    out.push(b';');
    out
}

/// A cursor over the delta being applied.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads a number of one or more digits.
    fn number(&mut self) -> Result<u64, DeltaError> {
        let at = self.pos;
        let mut v: u64 = 0;
        while let Some(&b) = self.bytes.get(self.pos) {
            let digit = DIGIT_VALUE[usize::from(b)];
            if digit == 0xff {
                break;
            }
            v = v
                .checked_mul(64)
                .and_then(|v| v.checked_add(u64::from(digit)))
                .ok_or(DeltaError::NumberTooLarge { at })?;
            self.pos += 1;
        }
        if self.pos == at {
            return Err(DeltaError::ExpectedNumber { at });
        }
        Ok(v)
    }

    /// Reads a number that is an offset or a length.
    fn size(&mut self) -> Result<usize, DeltaError> {
        let at = self.pos;
        usize::try_from(self.number()?).map_err(|_| DeltaError::NumberTooLarge { at })
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
}

/// The target length a delta declares (to size a buffer, or refuse early).
pub fn target_len(delta: &[u8]) -> Result<usize, DeltaError> {
    Reader {
        bytes: delta,
        pos: 0,
    }
    .size()
}

/// Applies `delta` to `source`: the target, of at most `max_len` bytes.
///
/// Every error is typed; nothing in `delta` can make this read out of bounds, allocate
/// more than `max_len` bytes, or panic.
pub fn apply(source: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut r = Reader {
        bytes: delta,
        pos: 0,
    };
    let size = r.size()?;
    if r.byte() != Some(b'\n') {
        return Err(DeltaError::ExpectedNewline);
    }
    if size > max_len {
        return Err(DeltaError::TooLarge { size, max: max_len });
    }
    let mut out = Vec::with_capacity(size);
    loop {
        if r.pos >= delta.len() {
            return Err(DeltaError::Unterminated);
        }
        let n = r.number()?;
        let at = r.pos;
        match r.byte() {
            Some(b'@') => {
                let len = usize::try_from(n).map_err(|_| DeltaError::NumberTooLarge { at })?;
                let offset = r.size()?;
                let comma = r.pos;
                if r.byte() != Some(b',') {
                    return Err(DeltaError::ExpectedComma { at: comma });
                }
                let piece = offset
                    .checked_add(len)
                    .and_then(|end| source.get(offset..end))
                    .ok_or(DeltaError::CopyOutOfRange {
                        offset,
                        len,
                        source_len: source.len(),
                    })?;
                if len > size - out.len() {
                    return Err(DeltaError::OutputOverflow { size });
                }
                out.extend_from_slice(piece);
            }
            Some(b':') => {
                let len = usize::try_from(n).map_err(|_| DeltaError::NumberTooLarge { at })?;
                if len > size - out.len() {
                    return Err(DeltaError::OutputOverflow { size });
                }
                let piece = r.take(len).ok_or(DeltaError::InsertPastEnd { len })?;
                out.extend_from_slice(piece);
            }
            Some(b';') => {
                if out.len() != size {
                    return Err(DeltaError::SizeMismatch {
                        declared: size,
                        produced: out.len(),
                    });
                }
                let actual = checksum(&out);
                if n != u64::from(actual) {
                    return Err(DeltaError::ChecksumMismatch {
                        expected: n,
                        actual,
                    });
                }
                if r.pos != delta.len() {
                    return Err(DeltaError::TrailingBytes);
                }
                return Ok(out);
            }
            Some(byte) => return Err(DeltaError::UnknownCommand { byte, at }),
            None => return Err(DeltaError::Unterminated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(source: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = encode(source, target);
        let back = apply(source, &delta, target.len()).expect("applies");
        assert_eq!(back, target);
        delta
    }

    #[test]
    fn numbers_use_the_64_digits() {
        for (v, text) in [
            (0u64, "0"),
            (9, "9"),
            (10, "A"),
            (36, "_"),
            (63, "~"),
            (64, "10"),
            (4095, "~~"),
            (u64::MAX, "F~~~~~~~~~~"),
        ] {
            let mut out = Vec::new();
            put_number(v, &mut out);
            assert_eq!(out, text.as_bytes(), "{v}");
            assert_eq!(number_len(v), text.len());
            let mut r = Reader {
                bytes: text.as_bytes(),
                pos: 0,
            };
            assert_eq!(r.number(), Ok(v));
        }
        let mut r = Reader {
            bytes: b"G00000000000",
            pos: 0,
        };
        assert_eq!(r.number(), Err(DeltaError::NumberTooLarge { at: 0 }));
    }

    #[test]
    fn checksum_sums_big_endian_words() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x01"), 0x0100_0000);
        assert_eq!(checksum(b"\x00\x00\x00\x01\x00\x00\x00\x02"), 3);
        assert_eq!(checksum(b"\x00\x00\x00\x01\x02\x03"), 0x0203_0001);
        assert_eq!(checksum(&[0xff; 8]), 0xffff_fffe, "wraps");
    }

    /// The exact bytes for a small case worked by hand: the source's second and third
    /// blocks are copied, the rest inserted.
    #[test]
    fn known_delta() {
        let source = b"0123456789abcdefGHIJKLMNOPQRSTUVwxyz+-*/wxyz+-*/";
        let target = b"<<GHIJKLMNOPQRSTUVwxyz+-*/wxyz+-*/>>";
        let delta = roundtrip(source, target);
        let mut want = b"_\n2:<<".to_vec();
        want.extend_from_slice(b"W@G,2:>>");
        put_number(u64::from(checksum(target)), &mut want);
        want.push(b';');
        assert_eq!(
            String::from_utf8_lossy(&delta),
            String::from_utf8_lossy(&want)
        );
    }

    /// A delta written by another implementation of the format (the `fossil-delta` npm
    /// package, 2.0.0): ours applies it. (Both ways were checked on 300 random pairs when
    /// this module was written; see docs/ARCHITECTURE.md.)
    #[test]
    fn applies_a_reference_delta() {
        let a = br#"{"symbol":"BTC-USD","bid":64123.5,"ask":64124.0,"volume":1234.5678,"exchange":"example","currency":"USD","status":"open"}"#;
        let b = br#"{"symbol":"BTC-USD","bid":64125.0,"ask":64124.0,"volume":1234.9999,"exchange":"example","currency":"USD","status":"open"}"#;
        let theirs = b"1u\nU@0,_:5.0,\"ask\":64124.0,\"volume\":1234.9999s@12,13uuFY;";
        assert_eq!(apply(a, theirs, b.len()).as_deref(), Ok(&b[..]));
    }

    #[test]
    fn edge_cases_round_trip() {
        roundtrip(b"", b"");
        roundtrip(b"", b"abc");
        roundtrip(b"abc", b"");
        roundtrip(b"short", b"short");
        let big: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let delta = roundtrip(&big, &big);
        assert!(
            delta.len() < 20,
            "identical: one copy, {} bytes",
            delta.len()
        );
        // A source of one repeated block: the candidate limit keeps it linear.
        let same = vec![b'a'; 100_000];
        roundtrip(&same, &same[..99_999]);
        // A fully empty target against a big source.
        assert_eq!(roundtrip(&big, b""), b"0\n0;");
    }

    #[test]
    fn similar_json_makes_a_small_delta() {
        let a = br#"{"symbol":"BTC-USD","bid":64123.5,"ask":64124.0,"volume":1234.5678,"exchange":"example","currency":"USD","status":"open"}"#;
        let b = br#"{"symbol":"BTC-USD","bid":64125.0,"ask":64124.0,"volume":1234.9999,"exchange":"example","currency":"USD","status":"open"}"#;
        let delta = roundtrip(a, b);
        assert!(
            delta.len() < b.len() / 2,
            "{}",
            String::from_utf8_lossy(&delta)
        );
        assert!(std::str::from_utf8(&delta).is_ok());
    }

    #[test]
    fn utf8_targets_give_utf8_deltas() {
        // Matches would end and start inside the multi-byte characters.
        let a = "ééééééééééééééééééééé€€€€€€€€€€€€€€€€€€€€ 😀😀😀😀😀😀😀😀😀😀 ééééééééééééé"
            .as_bytes();
        let b = "xéééééééééééééééééééé€€€€€€€€€€€€€€€€€€€€y😀😀😀😀😀😀😀😀😀😀z éééééééééééé"
            .as_bytes();
        let delta = roundtrip(a, b);
        assert!(std::str::from_utf8(&delta).is_ok(), "{delta:?}");
        assert!(delta.contains(&b'@'), "something was copied");
    }

    #[test]
    fn apply_refuses_malformed_deltas() {
        let src = b"0123456789abcdef0123456789abcdef";
        let ok = encode(src, b"0123456789abcdef!");
        assert!(apply(src, &ok, 1 << 20).is_ok());
        let check = |delta: &[u8], want: DeltaError| {
            assert_eq!(
                apply(src, delta, 1 << 20),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(delta)
            );
        };
        check(b"", DeltaError::ExpectedNumber { at: 0 });
        check(b"3", DeltaError::ExpectedNewline);
        check(b"3\n", DeltaError::Unterminated);
        check(b"3\n3", DeltaError::Unterminated);
        check(b"3\n3:ab", DeltaError::InsertPastEnd { len: 3 });
        check(b"3\n4:abcd", DeltaError::OutputOverflow { size: 3 });
        check(
            b"3\n3@X,",
            DeltaError::CopyOutOfRange {
                offset: 33,
                len: 3,
                source_len: 32,
            },
        );
        check(b"3\n3@0;", DeltaError::ExpectedComma { at: 5 });
        check(b"3\n3@,", DeltaError::ExpectedNumber { at: 4 });
        check(b"3\n3!", DeltaError::UnknownCommand { byte: b'!', at: 3 });
        check(b"3\n@", DeltaError::ExpectedNumber { at: 2 });
        check(
            b"3\n2:ab0;",
            DeltaError::SizeMismatch {
                declared: 3,
                produced: 2,
            },
        );
        let sum = checksum(b"abc");
        let mut bad = b"3\n3:abc".to_vec();
        put_number(u64::from(sum ^ 1), &mut bad);
        bad.push(b';');
        check(
            &bad,
            DeltaError::ChecksumMismatch {
                expected: u64::from(sum ^ 1),
                actual: sum,
            },
        );
        let mut trailing = ok.clone();
        trailing.push(b'\n');
        check(&trailing, DeltaError::TrailingBytes);
        check(b"~~~~~~~~~~~~\n", DeltaError::NumberTooLarge { at: 0 });
        check(
            b"3\nF~~~~~~~~~~@F~~~~~~~~~~,",
            DeltaError::CopyOutOfRange {
                offset: usize::try_from(u64::MAX).unwrap_or(usize::MAX),
                len: usize::try_from(u64::MAX).unwrap_or(usize::MAX),
                source_len: 32,
            },
        );
        // The cap is checked before anything is allocated.
        assert_eq!(
            apply(src, b"F~~~~~~~~~~\n", 1024),
            Err(DeltaError::TooLarge {
                size: usize::try_from(u64::MAX).unwrap_or(usize::MAX),
                max: 1024
            })
        );
        assert_eq!(target_len(&ok), Ok(17));
    }

    /// A target made from the source by a few edits (replace, insert, delete).
    fn edited() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            proptest::collection::vec(
                (
                    any::<usize>(),
                    0usize..40,
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..8,
            ),
        )
            .prop_map(|(source, edits)| {
                let mut target = source.clone();
                for (at, remove, insert) in edits {
                    let at = if target.is_empty() {
                        0
                    } else {
                        at % target.len()
                    };
                    let end = (at + remove).min(target.len());
                    target.splice(at..end, insert);
                }
                (source, target)
            })
    }

    proptest! {
        #[test]
        fn random_pairs_round_trip(
            source in proptest::collection::vec(any::<u8>(), 0..2000),
            target in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let delta = encode(&source, &target);
            prop_assert_eq!(apply(&source, &delta, target.len()), Ok(target.clone()));
        }

        #[test]
        fn similar_pairs_round_trip_and_shrink((source, target) in edited()) {
            let delta = encode(&source, &target);
            prop_assert_eq!(apply(&source, &delta, target.len()), Ok(target.clone()));
            if source == target && source.len() >= 64 {
                prop_assert!(delta.len() < 32, "identical: {} bytes", delta.len());
            }
        }

        #[test]
        fn utf8_pairs_give_utf8_deltas(source in "\\PC{0,400}", target in "\\PC{0,400}", cut in any::<usize>()) {
            // Also a target that shares most of the source.
            let shared = {
                let mut at = cut % (source.len() + 1);
                while !source.is_char_boundary(at) {
                    at -= 1;
                }
                format!("{}{}{}", &source[at..], target, &source[..at])
            };
            for t in [&target, &shared] {
                let delta = encode(source.as_bytes(), t.as_bytes());
                prop_assert!(std::str::from_utf8(&delta).is_ok());
                prop_assert_eq!(apply(source.as_bytes(), &delta, t.len()), Ok(t.as_bytes().to_vec()));
            }
        }

        #[test]
        fn apply_never_panics(
            source in proptest::collection::vec(any::<u8>(), 0..64),
            delta in proptest::collection::vec(prop_oneof![
                Just(b'@'), Just(b':'), Just(b','), Just(b';'), Just(b'\n'),
                Just(b'0'), Just(b'1'), Just(b'A'), Just(b'~'), any::<u8>(),
            ], 0..64),
            max in 0usize..256,
        ) {
            if let Ok(out) = apply(&source, &delta, max) {
                prop_assert!(out.len() <= max);
            }
        }
    }
}
