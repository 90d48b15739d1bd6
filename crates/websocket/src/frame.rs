//! RFC 6455 frame encoding (server role, plus a masked client-role encoder for
//! tests and tools) and payload masking.

use bytes::Bytes;

use crate::deflate::{self, DeflateParams};

/// Frame opcode (RFC 6455 section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented data message.
    Continuation,
    /// 0x1: first frame of a UTF-8 text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for the reserved values.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        Some(match value {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text.
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl MessageKind {
    /// Opcode of the first frame of such a message.
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// Close status code (RFC 6455 section 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: endpoint going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: unsupported data type.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007: payload inconsistent with the message type (bad UTF-8, bad deflate data).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: internal server error.
    pub const INTERNAL: CloseCode = CloseCode(1011);

    /// Whether a peer may send this code in a close frame (RFC 6455 section
    /// 7.4): 1000-1003, 1007-1011 and 3000-4999, plus 1012-1014 which IANA
    /// registered after the RFC (service restart, try again later, bad gateway)
    /// and which real peers send. 1004-1006 and 1015 are reserved and must
    /// never appear on the wire; 1016-2999 and the rest are unassigned.
    pub fn is_valid_received(&self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Bytes needed for an unmasked header carrying `len` payload bytes.
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Writes a header into `out` (which must be `header_len(len)` + 4 if masked bytes long
/// at least) and returns the number of bytes written.
pub(crate) fn write_header(
    out: &mut [u8],
    fin: bool,
    rsv1: bool,
    op: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    let mut b0 = op.as_u8();
    if fin {
        b0 |= 0x80;
    }
    if rsv1 {
        b0 |= 0x40;
    }
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out[0] = b0;
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    n
}

/// Server-role (unmasked) frame, payload copied once.
pub(crate) fn encode_server_frame(op: OpCode, fin: bool, rsv1: bool, payload: &[u8]) -> Bytes {
    let h = header_len(payload.len());
    let mut out = vec![0u8; h + payload.len()];
    write_header(&mut out, fin, rsv1, op, payload.len(), None);
    out[h..].copy_from_slice(payload);
    Bytes::from(out)
}

/// Server-role (unmasked) whole-message frame. If `deflate` is `Some`, the
/// payload is compressed with a thread-local pooled compressor and RSV1 is set
/// (unless compression would not shrink it, or the negotiated window cannot be
/// honoured, in which case the message goes uncompressed, which RFC 7692 allows
/// per message). Returns the complete frame, ready for the socket; the same
/// bytes may be queued to every subscriber that negotiated the same
/// `server_max_window_bits`, because no context is taken over between messages.
pub fn encode_message(kind: MessageKind, payload: &[u8], deflate: Option<&DeflateParams>) -> Bytes {
    if let Some(params) = deflate
        && let Some(frame) = deflate::compress_frame(kind.opcode(), payload, params)
    {
        return frame;
    }
    encode_server_frame(kind.opcode(), true, false, payload)
}

/// Server-role control frame. Payloads longer than 125 bytes are truncated,
/// because a longer control frame is a protocol violation the peer would reject.
pub fn encode_control(op: OpCode, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    encode_server_frame(op, true, false, payload)
}

/// Server-role close frame. The reason is truncated (at a character boundary)
/// to the 123 bytes a control frame leaves for it.
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_server_frame(OpCode::Close, true, false, &payload[..2 + end])
}

/// Client-role (masked) frame encoder for tests, fuzzing and the bench tool.
/// Encodes exactly what it is told, even frames that violate the protocol.
pub fn encode_client_frame(
    op: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &[u8],
    mask: [u8; 4],
) -> Vec<u8> {
    let h = header_len(payload.len()) + 4;
    let mut out = vec![0u8; h + payload.len()];
    write_header(&mut out, fin, rsv1, op, payload.len(), Some(mask));
    out[h..].copy_from_slice(payload);
    apply_mask(&mut out[h..], mask, 0);
    out
}

/// XORs `buf` with the masking key, `offset` being the position of `buf[0]`
/// within the frame payload (so a payload can be unmasked in pieces).
/// Works 8 bytes at a time; the compiler vectorises the loop.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let (chunks, rest) = buf.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ word).to_ne_bytes();
    }
    // Chunks are a multiple of 4 bytes long, so the mask phase is unchanged here.
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_in_pieces_matches_whole() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mask = [1, 2, 3, 4];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        for split in [0, 1, 3, 7, 9, 500, 999] {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
        // Byte-wise reference.
        let reference: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, reference);
    }

    #[test]
    fn header_lengths() {
        assert_eq!(
            encode_control(OpCode::Ping, b"hi")[..],
            [0x89, 2, b'h', b'i']
        );
        let f = encode_message(MessageKind::Binary, &[0u8; 126], None);
        assert_eq!(&f[..4], &[0x82, 126, 0, 126]);
        let f = encode_message(MessageKind::Text, &[b'a'; 70000], None);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(f.len(), 70010);
    }

    #[test]
    fn close_reason_truncated_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let f = encode_close(CloseCode::NORMAL, &reason);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(f.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(&f[2..4], &1000u16.to_be_bytes());
    }

    #[test]
    fn control_payload_truncated() {
        let f = encode_control(OpCode::Pong, &[7u8; 300]);
        assert_eq!(f.len(), 2 + 125);
    }

    #[test]
    fn close_code_validity() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(CloseCode(c).is_valid_received(), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(c).is_valid_received(), "{c}");
        }
    }
}
