//! A tiny reader for the frames a server sends (unmasked, RFC 6455 section 5.2),
//! and client-side message assembly.
//!
//! The bench never negotiates permessage-deflate, so any RSV bit is an error. The
//! reader works on a [`BytesMut`] the socket reads into and splits payloads off
//! without copying.

use bytes::{Buf, Bytes, BytesMut};

/// Opcodes (RFC 6455 section 5.2).
pub mod op {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// One frame as sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (see [`op`]).
    pub opcode: u8,
    /// Payload (unmasked).
    pub payload: Bytes,
}

/// A frame the bench client refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Server frames must not be masked.
    #[error("masked frame from the server")]
    Masked,
    /// RSV bits set without an extension that defines them.
    #[error("reserved bits set")]
    Reserved,
    /// Unknown opcode.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// Control frame over 125 bytes or fragmented.
    #[error("invalid control frame")]
    Control,
    /// Payload longer than the configured maximum.
    #[error("frame of {0} bytes over the limit")]
    TooLarge(u64),
    /// Continuation without a started message, or a new message inside one.
    #[error("bad fragmentation")]
    Fragmentation,
}

/// Parses one frame from the front of `buf`. `Ok(None)`: more bytes are needed
/// (nothing is consumed). On success the frame's bytes are removed from `buf`.
pub fn parse_frame(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        op::CONTINUATION | op::TEXT | op::BINARY => {}
        op::CLOSE | op::PING | op::PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(FrameError::Control);
            }
        }
        other => return Err(FrameError::Opcode(other)),
    }
    let (header, len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let len = len as usize;
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let payload = buf.split_to(len).freeze();
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame: code (if any) and reason.
    Close(Option<u16>, String),
}

/// Joins fragmented messages. Unfragmented frames (what Starling sends) pass
/// through without copying.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<(u8, Vec<u8>)>,
}

impl Assembler {
    /// Feeds one frame; returns an event when a message or control frame completes.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Event>, FrameError> {
        match frame.opcode {
            op::PING => Ok(Some(Event::Ping(frame.payload))),
            op::PONG => Ok(Some(Event::Pong)),
            op::CLOSE => {
                let p = &frame.payload;
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                let reason = if p.len() > 2 {
                    String::from_utf8_lossy(&p[2..]).into_owned()
                } else {
                    String::new()
                };
                Ok(Some(Event::Close(code, reason)))
            }
            op::CONTINUATION => {
                let Some((opcode, mut data)) = self.partial.take() else {
                    return Err(FrameError::Fragmentation);
                };
                data.extend_from_slice(&frame.payload);
                if frame.fin {
                    Ok(Some(message(opcode, Bytes::from(data))))
                } else {
                    self.partial = Some((opcode, data));
                    Ok(None)
                }
            }
            opcode => {
                if self.partial.is_some() {
                    return Err(FrameError::Fragmentation);
                }
                if frame.fin {
                    Ok(Some(message(opcode, frame.payload)))
                } else {
                    self.partial = Some((opcode, frame.payload.to_vec()));
                    Ok(None)
                }
            }
        }
    }
}

fn message(opcode: u8, payload: Bytes) -> Event {
    if opcode == op::TEXT {
        Event::Text(payload)
    } else {
        Event::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame, built by hand (independent of the websocket crate).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn lengths_7_16_64() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = BytesMut::from(&server_frame(true, op::BINARY, &payload)[..]);
            let f = parse_frame(&mut buf, 1 << 20).unwrap().unwrap();
            assert_eq!(f.payload.len(), len);
            assert_eq!(&f.payload[..], &payload[..]);
            assert!(f.fin);
            assert_eq!(f.opcode, op::BINARY);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn matches_websocket_crate_encoder() {
        // The server's own encoder: what Starling really sends.
        let frame = starling_websocket::encode_message(
            starling_websocket::MessageKind::Text,
            b"{\"push\":{}}",
            None,
        );
        let mut buf = BytesMut::from(&frame[..]);
        let f = parse_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.opcode, op::TEXT);
        assert_eq!(&f.payload[..], b"{\"push\":{}}");
    }

    #[test]
    fn byte_by_byte_needs_more() {
        let bytes = server_frame(true, op::TEXT, &[b'x'; 300]);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = parse_frame(&mut buf, 1024).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.is_none(), "complete too early at {i}");
                assert_eq!(buf.len(), i + 1, "consumed bytes before completion");
            } else {
                assert_eq!(r.unwrap().payload.len(), 300);
            }
        }
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut bytes = server_frame(true, op::TEXT, b"a");
        bytes.extend(server_frame(true, op::PING, b"p"));
        bytes.extend(server_frame(true, op::TEXT, b"bc"));
        let mut buf = BytesMut::from(&bytes[..]);
        let a = parse_frame(&mut buf, 16).unwrap().unwrap();
        let p = parse_frame(&mut buf, 16).unwrap().unwrap();
        let bc = parse_frame(&mut buf, 16).unwrap().unwrap();
        assert_eq!(
            (&a.payload[..], p.opcode, &bc.payload[..]),
            (&b"a"[..], op::PING, &b"bc"[..])
        );
        assert!(parse_frame(&mut buf, 16).unwrap().is_none());
    }

    #[test]
    fn rejects_bad_frames() {
        let mut masked = BytesMut::from(&[0x81u8, 0x81, 1, 2, 3, 4, b'x'][..]);
        assert_eq!(parse_frame(&mut masked, 16), Err(FrameError::Masked));
        let mut rsv = BytesMut::from(&[0xC1u8, 0x00][..]);
        assert_eq!(parse_frame(&mut rsv, 16), Err(FrameError::Reserved));
        let mut opc = BytesMut::from(&[0x83u8, 0x00][..]);
        assert_eq!(parse_frame(&mut opc, 16), Err(FrameError::Opcode(3)));
        let mut frag_ping = BytesMut::from(&[0x09u8, 0x00][..]);
        assert_eq!(parse_frame(&mut frag_ping, 16), Err(FrameError::Control));
        let mut big = BytesMut::from(&server_frame(true, op::TEXT, &[0; 200])[..]);
        assert_eq!(parse_frame(&mut big, 100), Err(FrameError::TooLarge(200)));
    }

    #[test]
    fn assembles_fragments_and_controls() {
        let mut a = Assembler::default();
        let frag = |fin, opcode, p: &[u8]| Frame {
            fin,
            opcode,
            payload: Bytes::copy_from_slice(p),
        };
        assert_eq!(a.push(frag(false, op::TEXT, b"he")).unwrap(), None);
        // A control frame may arrive between fragments.
        assert_eq!(
            a.push(frag(true, op::PING, b"x")).unwrap(),
            Some(Event::Ping(Bytes::from_static(b"x")))
        );
        assert_eq!(a.push(frag(false, op::CONTINUATION, b"ll")).unwrap(), None);
        assert_eq!(
            a.push(frag(true, op::CONTINUATION, b"o")).unwrap(),
            Some(Event::Text(Bytes::from_static(b"hello")))
        );
        assert_eq!(
            a.push(frag(true, op::CONTINUATION, b"o")),
            Err(FrameError::Fragmentation)
        );
        let mut close = vec![0x0F, 0xA2];
        close.extend_from_slice(b"slow consumer");
        assert_eq!(
            a.push(frag(true, op::CLOSE, &close)).unwrap(),
            Some(Event::Close(Some(4002), "slow consumer".into()))
        );
    }
}
