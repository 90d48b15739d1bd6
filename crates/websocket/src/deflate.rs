//! RFC 7692 permessage-deflate, always without context takeover.
//!
//! Because neither side keeps the LZ77 window between messages, a compressor or
//! decompressor is only needed while one message is being processed. They live
//! in thread-local pools (one compressor per window size, one decompressor per
//! worker thread), never in a connection, so an idle connection costs no deflate
//! memory and a compressed frame can be shared by all receivers that negotiated
//! the same `server_max_window_bits`.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{OpCode, header_len, write_header};

/// Negotiated permessage-deflate parameters (both directions are always
/// `no_context_takeover`, see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    /// LZ77 window (base-2 log, 8..=15) the server may use when compressing.
    /// With 8 the server sends its messages uncompressed (zlib cannot produce a
    /// raw deflate stream with a 256-byte window), which RFC 7692 allows per
    /// message; inbound messages are still decompressed.
    pub server_max_window_bits: u8,
    /// Window the client said it would use (informational: our decompressor
    /// always uses 15, which decodes any smaller window).
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value answering the offer these parameters
    /// were negotiated from. `server_max_window_bits` is only sent when below the
    /// default (RFC 7692 section 7.1.2.1 lets a server include it either way);
    /// `client_max_window_bits` is never sent because we accept any client window.
    pub fn response_header_value(&self) -> String {
        let mut v = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.server_max_window_bits < 15 {
            v.push_str("; server_max_window_bits=");
            v.push_str(&self.server_max_window_bits.to_string());
        }
        v
    }

    /// Whether messages we send are compressed with these parameters.
    pub fn compresses_outbound(&self) -> bool {
        (9..=15).contains(&self.server_max_window_bits)
    }
}

const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    // Index = window bits - 9.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Runs `f` with the pooled compressor for `bits` (a fresh one if the pool is
/// unavailable, e.g. during thread teardown).
fn with_compressor<R>(bits: u8, f: impl FnOnce(&mut Compress) -> R) -> R {
    let make = || Compress::new_with_window_bits(Compression::default(), false, bits);
    let idx = usize::from(bits - 9);
    let mut f = Some(f);
    let pooled = COMPRESSORS.try_with(|cell| {
        let mut pool = cell.try_borrow_mut().ok()?;
        let c = pool[idx].get_or_insert_with(make);
        c.reset();
        f.take().map(|f| f(c))
    });
    match (pooled, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut make()),
        // Unreachable: `f` is only taken when the pooled call returns its result.
        (_, None) => unreachable!("compressor callback consumed without result"),
    }
}

fn with_decompressor<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    let make = || Decompress::new_with_window_bits(false, 15);
    let mut f = Some(f);
    let pooled = DECOMPRESSOR.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        let d = slot.get_or_insert_with(make);
        d.reset(false);
        f.take().map(|f| f(d))
    });
    match (pooled, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut make()),
        (_, None) => unreachable!("decompressor callback consumed without result"),
    }
}

/// Appends the raw-deflate, sync-flushed compression of `input` to `out`, with
/// the trailing `00 00 ff ff` removed (RFC 7692 section 7.2.1). `false` on a
/// compressor error (then `out` content past its old length is unspecified).
fn compress_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let before = c.total_in();
        if c.compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .is_err()
        {
            return false;
        }
        consumed += (c.total_in() - before) as usize;
        // The flush is complete once all input is taken and the output was not filled.
        if consumed >= input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - 4);
    }
    true
}

/// Compresses `input` as one raw-deflate message body (trailer stripped), or
/// `None` if `bits` is outside 9..=15 or the compressor failed.
pub fn compress_message(input: &[u8], bits: u8) -> Option<Vec<u8>> {
    if !(9..=15).contains(&bits) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    with_compressor(bits, |c| compress_into(c, input, &mut out)).then_some(out)
}

/// Whole compressed server frame (RSV1 set), or `None` when the message should
/// go uncompressed: window not supported, compressor error, or no gain.
pub(crate) fn compress_frame(op: OpCode, payload: &[u8], params: &DeflateParams) -> Option<Bytes> {
    if !params.compresses_outbound() {
        return None;
    }
    // Leave room for the largest header, written once the length is known.
    const ROOM: usize = 10;
    let mut out = Vec::with_capacity(ROOM + payload.len() / 2 + 64);
    out.resize(ROOM, 0);
    if !with_compressor(params.server_max_window_bits, |c| {
        compress_into(c, payload, &mut out)
    }) {
        return None;
    }
    let len = out.len() - ROOM;
    if len >= payload.len() && !payload.is_empty() {
        // Compression did not help: spare the receiver the inflate.
        return None;
    }
    let h = header_len(len);
    write_header(&mut out[ROOM - h..ROOM], true, true, op, len, None);
    Some(Bytes::from(out).slice(ROOM - h..))
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// Output would exceed the limit.
    TooBig,
    /// Not a valid deflate stream.
    Corrupt,
}

/// Inflates one message body (the trailer is appended here), refusing to
/// produce more than `limit` bytes; memory never grows past `limit + 1`.
pub(crate) fn inflate_message(input: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    with_decompressor(|d| inflate_with(d, input, limit))
}

fn inflate_with(d: &mut Decompress, input: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let cap_limit = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::new();
    out.reserve_exact(
        input
            .len()
            .saturating_mul(4)
            .clamp(256, 64 * 1024)
            .min(cap_limit),
    );
    for part in [input, &TRAILER[..]] {
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap_limit {
                    return Err(InflateError::TooBig);
                }
                let target = out.capacity().saturating_mul(2).max(256).min(cap_limit);
                out.reserve_exact(target - out.len());
            }
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&part[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (d.total_in() - before_in) as usize;
            let produced = d.total_out() - before_out;
            pos += consumed;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block ends the stream; anything after it (our trailer) is ignored.
                return Ok(out);
            }
            if pos >= part.len() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_windows() {
        let input: Vec<u8> = b"hello hello hello websocket "
            .iter()
            .copied()
            .cycle()
            .take(50_000)
            .collect();
        for bits in 9..=15 {
            let c = compress_message(&input, bits).expect("compress");
            assert!(c.len() < input.len() / 10);
            assert_eq!(inflate_message(&c, input.len()).expect("inflate"), input);
        }
    }

    #[test]
    fn empty_message() {
        let c = compress_message(b"", 15).expect("compress");
        assert_eq!(inflate_message(&c, 10).expect("inflate"), b"");
        assert_eq!(inflate_message(&[], 10).expect("inflate"), b"");
        // RFC 7692 7.2.3.6: a single 0x00 byte is an empty message.
        assert_eq!(inflate_message(&[0x00], 10).expect("inflate"), b"");
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 7692 section 7.2.3.1.
        let c = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_message(&c, 100).expect("inflate"), b"Hello");
    }

    #[test]
    fn limit_is_exact() {
        let input = vec![b'a'; 10_000];
        let c = compress_message(&input, 15).expect("compress");
        assert_eq!(inflate_message(&c, 10_000).expect("inflate").len(), 10_000);
        assert_eq!(inflate_message(&c, 9_999), Err(InflateError::TooBig));
    }

    #[test]
    fn garbage_is_corrupt() {
        assert_eq!(
            inflate_message(&[0xff; 32], 1000),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn header_value() {
        assert_eq!(
            DeflateParams::default().response_header_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let p = DeflateParams {
            server_max_window_bits: 10,
            client_max_window_bits: 15,
        };
        assert!(
            p.response_header_value()
                .ends_with("; server_max_window_bits=10")
        );
    }
}
