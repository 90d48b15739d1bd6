//! Sans-IO WebSocket (RFC 6455, server role) with permessage-deflate (RFC 7692).
//!
//! No sockets, no runtime: a driver feeds bytes read from the socket into a
//! [`Connection`] and writes out what it gets back. Frames for outgoing
//! messages are built once with [`encode_message`] and the same [`bytes::Bytes`]
//! is queued to every subscriber.
//!
//! # Memory
//! An idle [`Connection`] owns no heap memory: partial headers sit in a fixed
//! array, message and control payload buffers are empty `Vec`s between messages
//! (the message buffer leaves with the delivered message), and no deflate
//! context is kept per connection.
//!
//! # permessage-deflate negotiation rules
//! - The server always answers with `server_no_context_takeover` and
//!   `client_no_context_takeover` (RFC 7692 sections 7.1.1.1 and 7.1.1.2 let a
//!   server include both even when the client did not offer them). Every message
//!   is therefore compressed and decompressed on its own, with compressors and a
//!   decompressor pooled per thread (keyed by window bits), and one compressed
//!   frame serves every receiver with the same `server_max_window_bits`.
//! - `server_max_window_bits=N` (8..=15) is honoured: the response echoes N
//!   (section 7.1.2.1 requires a value no larger than offered) and our
//!   compressor uses an N-bit window. zlib cannot produce raw deflate with an
//!   8-bit window, and silently using 9 could emit distances the client's
//!   256-byte window cannot resolve, so with N = 8 the offer is accepted but our
//!   messages are sent uncompressed (RSV1 clear), which RFC 7692 permits per
//!   message; the client's messages are still inflated.
//! - `client_max_window_bits` (with or without value) is accepted and not
//!   echoed: our decompressor always uses a 15-bit window, which decodes any
//!   smaller one (section 7.1.2.2).
//! - An offer with an unknown, duplicate or invalid parameter is declined and the
//!   next offer (same or later header line) is tried; the first acceptable
//!   offer wins.
//! - A message whose compressed form is not smaller than the original is sent
//!   uncompressed.
//! - Inflated output is capped at `max_message_size`: a zip bomb fails with 1009
//!   without allocating past the limit.

#![warn(missing_docs)]

mod connection;
mod deflate;
mod frame;
mod handshake;

pub use connection::{Config, Connection, Event, Message, ProtocolError};
pub use deflate::{DeflateParams, compress_message};
pub use frame::{
    CloseCode, MAX_CONTROL_PAYLOAD, MessageKind, OpCode, apply_mask, encode_client_frame,
    encode_close, encode_control, encode_message,
};
pub use handshake::{Accepted, HandshakeConfig, HandshakeError, HeaderLines, accept, accept_key};
