//! From protocol messages to WebSocket frames, once per wire format.
//!
//! A connection's wire format is its encoding (JSON or MessagePack) and the deflate
//! window its peer negotiated (or none). The hub encodes a publication at most once per
//! format in use and queues the same frame to every subscriber of that format.

use bytes::Bytes;
use starling_core::{FrameEncoder, FrameFormat};
use starling_protocol::{
    ClientInfo, Encoding, Publication, Push, encode_delta_publication, encode_publication,
    encode_push,
};
use starling_websocket::{DeflateParams, MessageKind, encode_message};

/// Builds frames for the hub and for connections.
#[derive(Debug)]
pub struct WireEncoder {
    /// Payloads shorter than this are sent uncompressed.
    compression_min_size: usize,
}

/// Slots per encoding: 0 = uncompressed, 1..=8 = deflate with window bits 8..=15.
const SLOTS: u8 = 9;

impl WireEncoder {
    /// An encoder that compresses payloads of at least `compression_min_size` bytes for
    /// peers that negotiated permessage-deflate.
    pub fn new(compression_min_size: usize) -> Self {
        Self {
            compression_min_size,
        }
    }

    /// The format of a connection with this encoding and negotiated deflate.
    pub fn format(encoding: Encoding, deflate: Option<&DeflateParams>) -> FrameFormat {
        let base = match encoding {
            Encoding::Json => 0,
            Encoding::MsgPack => SLOTS,
        };
        let slot = deflate
            .filter(|d| d.compresses_outbound())
            .map_or(0, |d| d.server_max_window_bits.clamp(8, 15) - 7);
        FrameFormat(base + slot)
    }

    fn parts(format: FrameFormat) -> (Encoding, Option<DeflateParams>) {
        let encoding = if format.0 >= SLOTS {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        let slot = format.0 % SLOTS;
        let deflate = (slot > 0).then(|| DeflateParams {
            server_max_window_bits: slot + 7,
            client_max_window_bits: 15,
        });
        (encoding, deflate)
    }

    /// The encoding of a format.
    pub fn encoding(format: FrameFormat) -> Encoding {
        Self::parts(format).0
    }

    /// Frames an encoded protocol payload: text for JSON, binary for MessagePack,
    /// compressed when the format has deflate and the payload is large enough.
    pub fn frame(&self, format: FrameFormat, payload: &[u8]) -> Bytes {
        let (encoding, deflate) = Self::parts(format);
        let kind = match encoding {
            Encoding::Json => MessageKind::Text,
            Encoding::MsgPack => MessageKind::Binary,
        };
        let deflate = deflate.filter(|_| payload.len() >= self.compression_min_size);
        encode_message(kind, payload, deflate.as_ref())
    }

    /// A push, encoded and framed.
    pub fn push(&self, format: FrameFormat, push: &Push) -> Bytes {
        let mut buf = Vec::new();
        encode_push(Self::encoding(format), push, &mut buf);
        self.frame(format, &buf)
    }
}

impl FrameEncoder for WireEncoder {
    fn publication(&self, channel: &str, publication: &Publication, format: FrameFormat) -> Bytes {
        let mut buf = Vec::new();
        encode_publication(Self::encoding(format), channel, publication, &mut buf);
        self.frame(format, &buf)
    }

    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&[u8]>,
        format: FrameFormat,
    ) -> Bytes {
        let mut buf = Vec::new();
        let payload = delta.unwrap_or(&publication.data);
        encode_delta_publication(
            Self::encoding(format),
            channel,
            publication,
            payload,
            delta.is_some(),
            &mut buf,
        );
        self.frame(format, &buf)
    }

    fn join_leave(
        &self,
        channel: &str,
        join: bool,
        info: &ClientInfo,
        format: FrameFormat,
    ) -> Bytes {
        let push = if join {
            Push::Join {
                channel: channel.to_string(),
                info: info.clone(),
            }
        } else {
            Push::Leave {
                channel: channel.to_string(),
                info: info.clone(),
            }
        };
        self.push(format, &push)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let plain = WireEncoder::format(encoding, None);
            assert_eq!(WireEncoder::parts(plain), (encoding, None));
            for bits in 9..=15u8 {
                let d = DeflateParams {
                    server_max_window_bits: bits,
                    client_max_window_bits: 15,
                };
                let f = WireEncoder::format(encoding, Some(&d));
                assert!(usize::from(f.0) < starling_core::hub::MAX_FORMATS);
                let (e, back) = WireEncoder::parts(f);
                assert_eq!(e, encoding);
                assert_eq!(back.map(|d| d.server_max_window_bits), Some(bits));
            }
        }
    }
}
