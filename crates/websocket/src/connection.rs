//! Sans-IO receive side of a server WebSocket connection.
//!
//! Bytes read from the socket go in through [`Connection::receive`]; complete
//! messages come out through a callback and control replies (pong, close echo)
//! through [`Connection::poll_outbound`]. No buffer is held while no frame is
//! in flight: a frame header is assembled in a 14-byte array, and message or
//! control payload bytes live in `Vec`s that are handed out (or dropped) as
//! soon as the message completes.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::deflate::{self, DeflateParams, InflateError};
use crate::frame::{
    CloseCode, MAX_CONTROL_PAYLOAD, MessageKind, OpCode, apply_mask, encode_close, encode_control,
};

/// Receive limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest accepted frame payload (as sent, i.e. compressed size for compressed frames).
    pub max_frame_size: usize,
    /// Largest accepted message (after decompression; compressed input is bounded by it too).
    pub max_message_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 64 * 1024,
            max_message_size: 64 * 1024,
        }
    }
}

/// A complete data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Text; the bytes are guaranteed to be valid UTF-8.
    Text(Bytes),
    /// Binary.
    Binary(Bytes),
}

/// What [`Connection::receive_events`] reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// An encoded frame to write now (the echo of the peer's close).
    Send(Bytes),
    /// An encoded pong answering a ping. Only the most recent ping needs an answer
    /// (RFC 6455 5.5.3), so a driver whose earlier pongs are still unsent may replace
    /// them instead of queueing one per ping.
    Pong(Bytes),
}

/// A violation by the peer; the connection must be failed with
/// [`ProtocolError::close_code`] (see [`Connection::fail`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Client frames must be masked (RFC 6455 section 5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RSV2/RSV3 set, or RSV1 without permessage-deflate.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// RSV1 (compressed) on a control or continuation frame.
    #[error("RSV1 set on a control or continuation frame")]
    CompressedControlOrContinuation,
    /// Opcode 0x3-0x7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Control frame payload over 125 bytes.
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLong,
    /// Control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// Continuation frame with no message started.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// Text/binary frame while a fragmented message is unfinished.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// 64-bit length with the most significant bit set.
    #[error("invalid 64-bit payload length")]
    InvalidLength,
    /// Close payload of exactly one byte.
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    /// Close code that may not be sent (RFC 6455 section 7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// Text message that is not UTF-8.
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// Close reason that is not UTF-8.
    #[error("invalid UTF-8 in close reason")]
    InvalidCloseReason,
    /// Compressed payload that does not inflate.
    #[error("invalid compressed data")]
    InvalidDeflate,
    /// Frame payload over `max_frame_size`.
    #[error("frame too big")]
    FrameTooBig,
    /// Message over `max_message_size`.
    #[error("message too big")]
    MessageTooBig,
}

impl ProtocolError {
    /// Close code to fail the connection with: 1009 for size limits, 1007 for
    /// bad payload data, 1002 for everything else.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReason
            | ProtocolError::InvalidDeflate => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

// `flags` bits.
const IN_PAYLOAD: u8 = 1; // header parsed, payload bytes pending
const FIN: u8 = 1 << 1; // current frame has FIN
const COMPRESSED: u8 = 1 << 2; // message in progress is compressed
const CLOSE_RECEIVED: u8 = 1 << 3;
const CLOSE_SENT: u8 = 1 << 4;
const FAILED: u8 = 1 << 5;

/// Sans-IO server-side connection state (receive direction and control replies).
pub struct Connection {
    max_frame: usize,
    max_message: usize,
    /// Unmasked payload of the data message in progress (raw compressed bytes
    /// for a compressed message). Capacity 0 when no message is in flight.
    msg: Vec<u8>,
    /// Payload of a control frame split across reads.
    ctrl: Vec<u8>,
    /// Encoded control frames waiting for the driver.
    outbound: VecDeque<Bytes>,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Header being assembled.
    hdr: [u8; 14],
    hdr_len: u8,
    mask: [u8; 4],
    /// Payload offset of the next byte of the current frame, modulo 4.
    mask_phase: u8,
    /// Bytes at the end of `msg` forming an incomplete UTF-8 sequence (<= 3).
    utf8_tail: u8,
    op: OpCode,
    /// Kind of the data message in progress, if any.
    kind: Option<MessageKind>,
    flags: u8,
    deflate: bool,
}

impl Connection {
    /// New connection after a successful handshake; `deflate` as negotiated.
    pub fn new(config: Config, deflate: Option<DeflateParams>) -> Self {
        Connection {
            max_frame: config.max_frame_size,
            max_message: config.max_message_size,
            msg: Vec::new(),
            ctrl: Vec::new(),
            outbound: VecDeque::new(),
            remaining: 0,
            hdr: [0; 14],
            hdr_len: 0,
            mask: [0; 4],
            mask_phase: 0,
            utf8_tail: 0,
            op: OpCode::Continuation,
            kind: None,
            flags: 0,
            deflate: deflate.is_some(),
        }
    }

    /// Feeds bytes read from the socket (any split, even one byte at a time).
    /// Complete data messages go to `on_message`. A ping queues a pong; a pong
    /// is ignored; a close is validated, its echo queued, and the connection
    /// is closed: later bytes are ignored. After an error the connection is
    /// failed and later bytes are ignored too; send [`Connection::fail`].
    /// Queued frames come out of [`Connection::poll_outbound`]; a driver that must
    /// keep replies and messages in their order of arrival uses
    /// [`Connection::receive_events`] instead.
    pub fn receive(
        &mut self,
        data: &[u8],
        on_message: &mut dyn FnMut(Message),
    ) -> Result<(), ProtocolError> {
        let mut queued = Vec::new();
        let result = self.receive_events(data, &mut |event| match event {
            Event::Message(m) => on_message(m),
            Event::Send(frame) | Event::Pong(frame) => queued.push(frame),
        });
        self.outbound.extend(queued);
        result
    }

    /// Like [`Connection::receive`], but frames to send (pongs, the close echo) are
    /// reported as [`Event::Pong`] and [`Event::Send`] in order with the messages,
    /// instead of queued: a
    /// pong for a ping that arrived in the middle of a fragmented message goes out
    /// before the reply to that message (Autobahn 5.6, 5.19).
    pub fn receive_events(
        &mut self,
        data: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        if self.flags & (CLOSE_RECEIVED | FAILED) != 0 {
            return Ok(());
        }
        let result = self.receive_inner(data, on_event);
        if result.is_err() {
            self.flags |= FAILED;
            self.release();
        }
        result
    }

    /// Next control frame to write (pong, close reply), already encoded.
    pub fn poll_outbound(&mut self) -> Option<Bytes> {
        let next = self.outbound.pop_front();
        if self.outbound.is_empty() && self.outbound.capacity() != 0 {
            // Idle connections keep no queue allocation.
            self.outbound = VecDeque::new();
        }
        next
    }

    /// Starts the close handshake from the server side and returns the close
    /// frame to send. Afterwards data messages are dropped and the peer's close
    /// completes the handshake. Returns an empty `Bytes` if a close was already sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Bytes {
        if self.flags & CLOSE_SENT != 0 {
            return Bytes::new();
        }
        self.flags |= CLOSE_SENT;
        encode_close(code, reason)
    }

    /// Close frame to send for `err` (reason = the error's text); marks the
    /// close as sent and the connection as closed: the driver flushes it and
    /// shuts the TCP connection. Empty if a close was already sent.
    pub fn fail(&mut self, err: &ProtocolError) -> Bytes {
        self.flags |= FAILED;
        self.release();
        self.close(err.close_code(), &err.to_string())
    }

    /// True once the close handshake is complete, a close was received (its
    /// echo is then queued), or the connection failed: the driver flushes
    /// `poll_outbound` and shuts the TCP connection.
    pub fn is_closed(&self) -> bool {
        self.flags & (CLOSE_RECEIVED | FAILED) != 0
    }

    /// True once a close frame was sent (or queued) by this side.
    pub fn close_sent(&self) -> bool {
        self.flags & CLOSE_SENT != 0
    }

    /// True if permessage-deflate was negotiated for this connection.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    fn release(&mut self) {
        self.msg = Vec::new();
        self.ctrl = Vec::new();
        self.kind = None;
    }

    fn receive_inner(
        &mut self,
        mut data: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        while !data.is_empty() && self.flags & CLOSE_RECEIVED == 0 {
            if self.flags & IN_PAYLOAD == 0 {
                let used = self.read_header(data)?;
                data = &data[used..];
                if self.flags & IN_PAYLOAD != 0 && self.remaining == 0 {
                    self.end_of_frame(&[], on_event)?;
                }
                continue;
            }
            let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
            let (chunk, rest) = data.split_at(n);
            data = rest;
            self.payload(chunk, on_event)?;
        }
        Ok(())
    }

    /// Assembles the header; returns bytes consumed. Sets IN_PAYLOAD when done.
    fn read_header(&mut self, data: &[u8]) -> Result<usize, ProtocolError> {
        let mut used = 0;
        loop {
            let have = usize::from(self.hdr_len);
            let need = if have < 2 {
                2
            } else {
                2 + match self.hdr[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                } + 4
            };
            if have == need {
                break;
            }
            let take = (need - have).min(data.len() - used);
            self.hdr[have..have + take].copy_from_slice(&data[used..used + take]);
            used += take;
            self.hdr_len += take as u8;
            if usize::from(self.hdr_len) < need {
                return Ok(used);
            }
            if need == 2 {
                // Fail fast on the first two bytes, before the length arrives.
                self.check_first_bytes()?;
            }
        }
        let h = &self.hdr;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(ProtocolError::InvalidLength);
        }
        self.mask = [h[at], h[at + 1], h[at + 2], h[at + 3]];
        let b0 = h[0];
        self.hdr_len = 0;
        if !self.op.is_control() {
            // Limits are checked on the declared length, before buffering anything.
            if len > self.max_frame as u64 {
                return Err(ProtocolError::FrameTooBig);
            }
            if len.saturating_add(self.msg.len() as u64) > self.max_message as u64 {
                return Err(ProtocolError::MessageTooBig);
            }
            match self.op {
                OpCode::Text | OpCode::Binary => {
                    self.kind = Some(if self.op == OpCode::Text {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    });
                    self.utf8_tail = 0;
                    if b0 & 0x40 != 0 {
                        self.flags |= COMPRESSED;
                    } else {
                        self.flags &= !COMPRESSED;
                    }
                }
                _ => {}
            }
        }
        self.remaining = len;
        self.mask_phase = 0;
        self.flags = (self.flags & !FIN) | IN_PAYLOAD | if b0 & 0x80 != 0 { FIN } else { 0 };
        Ok(used)
    }

    fn check_first_bytes(&mut self) -> Result<(), ProtocolError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let op = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.deflate) {
            return Err(ProtocolError::ReservedBits);
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::UnmaskedFrame);
        }
        if op.is_control() {
            if rsv1 {
                return Err(ProtocolError::CompressedControlOrContinuation);
            }
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if usize::from(b1 & 0x7f) > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        } else if op == OpCode::Continuation {
            if rsv1 {
                return Err(ProtocolError::CompressedControlOrContinuation);
            }
            if self.kind.is_none() {
                return Err(ProtocolError::UnexpectedContinuation);
            }
        } else if self.kind.is_some() {
            return Err(ProtocolError::ExpectedContinuation);
        }
        self.op = op;
        Ok(())
    }

    /// Handles `chunk.len() <= remaining` payload bytes of the current frame.
    fn payload(
        &mut self,
        chunk: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        let last = chunk.len() as u64 == self.remaining;
        // Chunks are never empty, so a split frame has already left bytes in
        // `ctrl` / `msg`; with those empty, `last` means the whole payload is here.
        let whole = last && self.mask_phase == 0 && self.ctrl.is_empty();
        self.remaining -= chunk.len() as u64;
        if self.op.is_control() {
            if whole {
                // Entire control payload in this read: unmask on the stack.
                let mut buf = [0u8; MAX_CONTROL_PAYLOAD];
                let p = &mut buf[..chunk.len()];
                p.copy_from_slice(chunk);
                apply_mask(p, self.mask, 0);
                return self.end_of_frame(p, on_event);
            }
            if self.ctrl.capacity() == 0 {
                self.ctrl
                    .reserve_exact(chunk.len() + self.remaining as usize);
            }
            self.ctrl.extend_from_slice(chunk);
            self.mask_phase = ((usize::from(self.mask_phase) + chunk.len()) % 4) as u8;
            if last {
                // Taking the buffer leaves `ctrl` unallocated again.
                let mut p = std::mem::take(&mut self.ctrl);
                apply_mask(&mut p, self.mask, 0);
                return self.end_of_frame(&p, on_event);
            }
            return Ok(());
        }

        // Data frame. Fast path: a whole single-frame uncompressed message in
        // this read is copied once into its final buffer.
        if whole && self.flags & FIN != 0 && self.msg.is_empty() && self.flags & COMPRESSED == 0 {
            let mut b = BytesMut::from(chunk);
            apply_mask(&mut b, self.mask, 0);
            if self.kind == Some(MessageKind::Text) && std::str::from_utf8(&b).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            self.flags &= !IN_PAYLOAD;
            let kind = self.kind.take();
            self.deliver(kind, b.freeze(), on_event);
            return Ok(());
        }

        let start = self.msg.len();
        if start == 0 && self.msg.capacity() == 0 {
            // Size small frames exactly; larger ones grow as bytes really arrive
            // so a peer announcing a big frame cannot make us reserve it.
            let announced = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .saturating_add(chunk.len());
            self.msg.reserve_exact(announced.min(4096).max(chunk.len()));
        }
        self.msg.extend_from_slice(chunk);
        apply_mask(
            &mut self.msg[start..],
            self.mask,
            usize::from(self.mask_phase),
        );
        self.mask_phase = ((usize::from(self.mask_phase) + chunk.len()) % 4) as u8;
        if self.kind == Some(MessageKind::Text) && self.flags & COMPRESSED == 0 {
            // Validate as bytes arrive so invalid text fails before the frame ends.
            let from = start - usize::from(self.utf8_tail);
            match std::str::from_utf8(&self.msg[from..]) {
                Ok(_) => self.utf8_tail = 0,
                Err(e) if e.error_len().is_none() => {
                    self.utf8_tail = (self.msg.len() - from - e.valid_up_to()) as u8;
                }
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        if last {
            self.end_of_frame(&[], on_event)?;
        }
        Ok(())
    }

    /// The current frame's payload is complete (`control` holds it for control frames).
    fn end_of_frame(
        &mut self,
        control: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        self.flags &= !IN_PAYLOAD;
        match self.op {
            OpCode::Ping => {
                if self.flags & CLOSE_SENT == 0 {
                    on_event(Event::Pong(encode_control(OpCode::Pong, control)));
                }
                Ok(())
            }
            OpCode::Pong => Ok(()),
            OpCode::Close => self.on_close(control, on_event),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if self.flags & FIN != 0 {
                    self.end_of_message(on_event)?;
                }
                Ok(())
            }
        }
    }

    fn end_of_message(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<(), ProtocolError> {
        let kind = self.kind.take();
        // The buffer leaves with the message: nothing stays allocated.
        let data = std::mem::take(&mut self.msg);
        let payload = if self.flags & COMPRESSED != 0 {
            self.flags &= !COMPRESSED;
            let out = deflate::inflate_message(&data, self.max_message).map_err(|e| match e {
                InflateError::TooBig => ProtocolError::MessageTooBig,
                InflateError::Corrupt => ProtocolError::InvalidDeflate,
            })?;
            drop(data);
            if kind == Some(MessageKind::Text) && std::str::from_utf8(&out).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            out
        } else {
            if self.utf8_tail != 0 {
                return Err(ProtocolError::InvalidUtf8);
            }
            data
        };
        self.deliver(kind, Bytes::from(payload), on_event);
        Ok(())
    }

    fn deliver(
        &mut self,
        kind: Option<MessageKind>,
        payload: Bytes,
        on_event: &mut dyn FnMut(Event),
    ) {
        if self.flags & CLOSE_SENT != 0 {
            return; // closing: data is no longer delivered
        }
        match kind {
            Some(MessageKind::Text) => on_event(Event::Message(Message::Text(payload))),
            Some(MessageKind::Binary) => on_event(Event::Message(Message::Binary(payload))),
            None => {}
        }
    }

    fn on_close(
        &mut self,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), ProtocolError> {
        let code = match payload.len() {
            0 => None,
            1 => return Err(ProtocolError::CloseTooShort),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_received() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(ProtocolError::InvalidCloseReason);
                }
                Some(code)
            }
        };
        self.flags |= CLOSE_RECEIVED;
        self.release();
        if self.flags & CLOSE_SENT == 0 {
            self.flags |= CLOSE_SENT;
            // Echo the peer's code (RFC 6455 section 5.5.1), empty if it sent none.
            on_event(Event::Send(match code {
                Some(c) => encode_close(c, ""),
                None => encode_control(OpCode::Close, &[]),
            }));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.msg.len())
            .field("kind", &self.kind)
            .field("flags", &self.flags)
            .field("deflate", &self.deflate)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
