//! Starling client protocol v1: commands, replies and pushes, in JSON
//! (`starling.json`) and MessagePack (`starling.msgpack`). No I/O.
//!
//! Server side: [`decode_commands`], [`encode_reply`], [`encode_push`] /
//! [`encode_publication`], [`encode_heartbeat`]. Client side: [`encode_command`],
//! [`decode_server_messages`]. The wire format is documented in `docs/PROTOCOL.md`.

pub mod codes;
mod data;
mod decode;
pub mod delta;
mod encode;
mod msgpack;
mod types;

pub use codes::{DisconnectCode, ErrorCode};
pub use data::{b64_decode, b64_encode, json_text};
pub use decode::{
    CommandError, DecodeError, ServerMessage, decode_commands, decode_server_messages,
};
pub use encode::{
    encode_command, encode_delta_publication, encode_heartbeat, encode_publication, encode_push,
    encode_reply,
};
pub use types::*;

/// The WebSocket subprotocols, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["starling.json", "starling.msgpack"];

/// Wire encoding, chosen at connect by the WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// `starling.json` (and no subprotocol): text frames, newline-delimited objects.
    #[default]
    Json,
    /// `starling.msgpack`: binary frames, concatenated maps.
    MsgPack,
}

impl Encoding {
    /// The encoding for one subprotocol token; `None` (no subprotocol) is JSON,
    /// an unknown token is `None`.
    pub fn from_subprotocol(subprotocol: Option<&str>) -> Option<Encoding> {
        match subprotocol.map(str::trim) {
            None => Some(Encoding::Json),
            Some(s) if s.eq_ignore_ascii_case(SUBPROTOCOLS[0]) => Some(Encoding::Json),
            Some(s) if s.eq_ignore_ascii_case(SUBPROTOCOLS[1]) => Some(Encoding::MsgPack),
            Some(_) => None,
        }
    }

    /// Picks the encoding from a `Sec-WebSocket-Protocol` request header value
    /// (comma-separated tokens, the client's first supported one wins).
    ///
    /// Returns the encoding and the token to echo in the response (`None`: echo
    /// nothing). Header absent: JSON, echo nothing. Header present but with no
    /// supported token: `None`; the server should refuse the upgrade (400).
    pub fn negotiate(header: Option<&str>) -> Option<(Encoding, Option<&'static str>)> {
        let Some(header) = header else {
            return Some((Encoding::Json, None));
        };
        header
            .split(',')
            .find_map(|t| Encoding::from_subprotocol(Some(t)))
            .map(|e| (e, Some(e.subprotocol())))
    }

    /// The subprotocol token.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOLS[0],
            Encoding::MsgPack => SUBPROTOCOLS[1],
        }
    }

    /// Frames are binary (MessagePack) rather than text (JSON).
    pub fn is_binary(self) -> bool {
        self == Encoding::MsgPack
    }
}

#[cfg(test)]
mod tests;
