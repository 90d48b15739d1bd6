//! The binary formats the engine stores in Redis and sends over pub/sub.
//!
//! Everything here decodes network input: a decoder returns [`DecodeError`] on any
//! malformed input and never panics or allocates more than the input's length.
//!
//! Layout (all integers little endian, every string/bytes field `u32 length ++ bytes`):
//! - publication body: `version (1) | flags | data | [user client [conn_info] [chan_info]]
//!   | [tag count (u32) (key value)*]`; flags: bit 0 info, bit 1 tags, bit 2 conn_info,
//!   bit 3 chan_info. The offset is not in the body: it comes from the stream entry id or
//!   the pub/sub message header.
//! - pub/sub message: `<offset decimal> SP <epoch> SP <body>` (the publish script builds it).
//! - client info: `version (1) | flags | user client [conn_info] [chan_info]`.
//! - control message: `version (1) | kind | fields`.

use std::collections::BTreeMap;

use bytes::Bytes;
use starling_core::engine::{ControlMessage, NodeInfo};
use starling_protocol::{ClientInfo, Publication};

const VERSION: u8 = 1;
const F_INFO: u8 = 1;
const F_TAGS: u8 = 2;
const F_CONN: u8 = 4;
const F_CHAN: u8 = 8;

/// Why bytes from Redis could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated input")]
    Truncated,
    /// Unknown format version or kind.
    #[error("unknown format {0}")]
    Unknown(u8),
    /// A text field is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// The message header (offset, epoch) is malformed.
    #[error("malformed message header")]
    Header,
    /// Bytes left after the last field.
    #[error("trailing bytes")]
    Trailing,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths beyond u32 cannot come from a client (frames are far smaller); saturate
    // rather than wrap so a decoder sees a truncated input, never a misparse.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

fn put_info(out: &mut Vec<u8>, info: &ClientInfo) {
    put_bytes(out, info.user.as_bytes());
    put_bytes(out, info.client.as_bytes());
    if let Some(b) = &info.conn_info {
        put_bytes(out, b);
    }
    if let Some(b) = &info.chan_info {
        put_bytes(out, b);
    }
}

fn info_flags(info: &ClientInfo) -> u8 {
    let mut f = F_INFO;
    if info.conn_info.is_some() {
        f |= F_CONN;
    }
    if info.chan_info.is_some() {
        f |= F_CHAN;
    }
    f
}

/// Encodes a publication's body (everything but its offset).
pub fn encode_publication(
    data: &[u8],
    info: Option<&ClientInfo>,
    tags: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    let mut flags = info.map_or(0, info_flags);
    if tags.is_some() {
        flags |= F_TAGS;
    }
    out.push(VERSION);
    out.push(flags);
    put_bytes(&mut out, data);
    if let Some(info) = info {
        put_info(&mut out, info);
    }
    if let Some(tags) = tags {
        let n = u32::try_from(tags.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for (k, v) in tags {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
    }
    out
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (b, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(*b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        if len > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (b, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8)
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(DecodeError::Unknown(v)),
        }
    }

    fn info(&mut self, flags: u8) -> Result<ClientInfo, DecodeError> {
        let user = self.string()?;
        let client = self.string()?;
        let conn_info = if flags & F_CONN != 0 {
            Some(Bytes::copy_from_slice(self.bytes()?))
        } else {
            None
        };
        let chan_info = if flags & F_CHAN != 0 {
            Some(Bytes::copy_from_slice(self.bytes()?))
        } else {
            None
        };
        Ok(ClientInfo {
            user,
            client,
            conn_info,
            chan_info,
        })
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

/// Decodes a publication body; `offset` comes from where the body was found.
pub fn decode_publication(body: &[u8], offset: u64) -> Result<Publication, DecodeError> {
    let mut r = Reader { rest: body };
    r.version()?;
    let flags = r.u8()?;
    let data = Bytes::copy_from_slice(r.bytes()?);
    let info = if flags & F_INFO != 0 {
        Some(r.info(flags)?)
    } else {
        None
    };
    let tags = if flags & F_TAGS != 0 {
        let n = r.u32()?;
        let mut tags = BTreeMap::new();
        // No capacity from the count: it is untrusted.
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            tags.insert(k, v);
        }
        Some(tags)
    } else {
        None
    };
    r.end()?;
    Ok(Publication {
        data,
        offset,
        info,
        tags,
        delta: false,
    })
}

/// A publication as it arrives over pub/sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The stream epoch.
    pub epoch: String,
    /// The publication, with its offset.
    pub publication: Publication,
}

/// What arrives on a channel's pub/sub topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A publication of the stream.
    Publication(Message),
    /// A subscriber joined (`true`) or left.
    JoinLeave(bool, ClientInfo),
}

/// Encodes a join (`J <client>`) or leave (`L <client>`) message for a channel's topic.
pub fn encode_join_leave(join: bool, info: &ClientInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(34 + info.user.len() + info.client.len());
    out.extend_from_slice(if join { b"J " } else { b"L " });
    out.extend_from_slice(&encode_client(info));
    out
}

/// Decodes what arrived on a channel's topic: a publication (`<offset> <epoch> <body>`)
/// or a join/leave (`J <client>`, `L <client>`).
pub fn decode_incoming(msg: &[u8]) -> Result<Incoming, DecodeError> {
    match msg {
        [b'J', b' ', rest @ ..] => Ok(Incoming::JoinLeave(true, decode_client(rest)?)),
        [b'L', b' ', rest @ ..] => Ok(Incoming::JoinLeave(false, decode_client(rest)?)),
        _ => decode_message(msg).map(Incoming::Publication),
    }
}

/// Decodes a pub/sub message (`<offset> <epoch> <body>`).
pub fn decode_message(msg: &[u8]) -> Result<Message, DecodeError> {
    let mut parts = msg.splitn(3, |&b| b == b' ');
    let offset = parts.next().ok_or(DecodeError::Header)?;
    let epoch = parts.next().ok_or(DecodeError::Header)?;
    let body = parts.next().ok_or(DecodeError::Header)?;
    let offset = std::str::from_utf8(offset)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(DecodeError::Header)?;
    let epoch = std::str::from_utf8(epoch)
        .map_err(|_| DecodeError::Header)?
        .to_owned();
    Ok(Message {
        epoch,
        publication: decode_publication(body, offset)?,
    })
}

/// Encodes a presence entry.
pub fn encode_client(info: &ClientInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + info.user.len() + info.client.len());
    out.push(VERSION);
    out.push(info_flags(info));
    put_info(&mut out, info);
    out
}

/// Decodes a presence entry.
pub fn decode_client(b: &[u8]) -> Result<ClientInfo, DecodeError> {
    let mut r = Reader { rest: b };
    r.version()?;
    let flags = r.u8()?;
    let info = r.info(flags)?;
    r.end()?;
    Ok(info)
}

const K_HEARTBEAT: u8 = 1;
const K_DISCONNECT: u8 = 2;
const K_LEAVING: u8 = 3;
const K_CHANNELS_QUERY: u8 = 4;
const K_CHANNELS: u8 = 5;
const K_UNSUBSCRIBE: u8 = 6;

/// Most channels one `channels` answer may list (a decoder refuses more).
const MAX_LISTED: u32 = 1 << 20;

/// Encodes a control message.
pub fn encode_control(msg: &ControlMessage) -> Vec<u8> {
    let mut out = vec![VERSION];
    match msg {
        ControlMessage::Heartbeat(n) => {
            out.push(K_HEARTBEAT);
            put_bytes(&mut out, n.name.as_bytes());
            put_bytes(&mut out, n.version.as_bytes());
            for v in [
                n.connections,
                n.users,
                n.subscriptions,
                n.channels,
                n.uptime_secs,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        ControlMessage::Disconnect { user, code } => {
            out.push(K_DISCONNECT);
            put_bytes(&mut out, user.as_bytes());
            out.extend_from_slice(&code.to_le_bytes());
        }
        ControlMessage::Unsubscribe { user, channel } => {
            out.push(K_UNSUBSCRIBE);
            put_bytes(&mut out, user.as_bytes());
            put_bytes(&mut out, channel.as_bytes());
        }
        ControlMessage::Leaving { node } => {
            out.push(K_LEAVING);
            put_bytes(&mut out, node.as_bytes());
        }
        ControlMessage::ChannelsQuery { id, from, pattern } => {
            out.push(K_CHANNELS_QUERY);
            out.extend_from_slice(&id.to_le_bytes());
            put_bytes(&mut out, from.as_bytes());
            out.push(u8::from(pattern.is_some()));
            if let Some(p) = pattern {
                put_bytes(&mut out, p.as_bytes());
            }
        }
        ControlMessage::Channels {
            id,
            to,
            node,
            channels,
        } => {
            out.push(K_CHANNELS);
            out.extend_from_slice(&id.to_le_bytes());
            put_bytes(&mut out, to.as_bytes());
            put_bytes(&mut out, node.as_bytes());
            let listed = channels.len().min(MAX_LISTED as usize);
            out.extend_from_slice(&(listed as u32).to_le_bytes());
            for (name, n) in channels.iter().take(listed) {
                put_bytes(&mut out, name.as_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a control message.
pub fn decode_control(b: &[u8]) -> Result<ControlMessage, DecodeError> {
    let mut r = Reader { rest: b };
    r.version()?;
    let msg = match r.u8()? {
        K_HEARTBEAT => ControlMessage::Heartbeat(NodeInfo {
            name: r.string()?,
            version: r.string()?,
            connections: r.u64()?,
            users: r.u64()?,
            subscriptions: r.u64()?,
            channels: r.u64()?,
            uptime_secs: r.u64()?,
        }),
        K_DISCONNECT => ControlMessage::Disconnect {
            user: r.string()?,
            code: r.u16()?,
        },
        K_UNSUBSCRIBE => ControlMessage::Unsubscribe {
            user: r.string()?,
            channel: r.string()?,
        },
        K_LEAVING => ControlMessage::Leaving { node: r.string()? },
        K_CHANNELS_QUERY => ControlMessage::ChannelsQuery {
            id: r.u64()?,
            from: r.string()?,
            pattern: match r.u8()? {
                0 => None,
                _ => Some(r.string()?),
            },
        },
        K_CHANNELS => {
            let id = r.u64()?;
            let to = r.string()?;
            let node = r.string()?;
            let count = r.u32()?;
            if count > MAX_LISTED {
                return Err(DecodeError::Truncated);
            }
            // Each entry takes at least 12 bytes: never reserve more than the input holds.
            let mut channels = Vec::with_capacity((count as usize).min(r.rest.len() / 12));
            for _ in 0..count {
                channels.push((r.string()?, r.u64()?));
            }
            ControlMessage::Channels {
                id,
                to,
                node,
                channels,
            }
        }
        k => return Err(DecodeError::Unknown(k)),
    };
    r.end()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> ClientInfo {
        ClientInfo {
            user: "u1".into(),
            client: "c1".into(),
            conn_info: Some(Bytes::from_static(b"{\"a\":1}")),
            chan_info: None,
        }
    }

    #[test]
    fn publication_round_trip() {
        let mut tags = BTreeMap::new();
        tags.insert("k".to_owned(), "v".to_owned());
        let body = encode_publication(b"hello", Some(&info()), Some(&tags));
        let p = decode_publication(&body, 7).unwrap();
        assert_eq!(p.offset, 7);
        assert_eq!(&p.data[..], b"hello");
        assert_eq!(p.info, Some(info()));
        assert_eq!(p.tags, Some(tags));
        let bare = decode_publication(&encode_publication(b"", None, None), 1).unwrap();
        assert_eq!(bare.info, None);
        assert_eq!(bare.tags, None);
    }

    #[test]
    fn message_round_trip() {
        let mut msg = b"42 abc ".to_vec();
        msg.extend(encode_publication(b"x y", None, None));
        let m = decode_message(&msg).unwrap();
        assert_eq!(m.epoch, "abc");
        assert_eq!(m.publication.offset, 42);
        assert_eq!(&m.publication.data[..], b"x y");
        assert_eq!(decode_message(b"x abc "), Err(DecodeError::Header));
        assert_eq!(decode_message(b"1 abc"), Err(DecodeError::Header));
    }

    #[test]
    fn control_and_client_round_trip() {
        for m in [
            ControlMessage::Heartbeat(NodeInfo {
                name: "n".into(),
                version: "1".into(),
                connections: 1,
                users: 2,
                subscriptions: 3,
                channels: 4,
                uptime_secs: 5,
            }),
            ControlMessage::Disconnect {
                user: "u".into(),
                code: 3000,
            },
            ControlMessage::Unsubscribe {
                user: "u".into(),
                channel: "chat:1".into(),
            },
            ControlMessage::Leaving { node: "n".into() },
            ControlMessage::ChannelsQuery {
                id: 7,
                from: "a".into(),
                pattern: Some("chat".into()),
            },
            ControlMessage::ChannelsQuery {
                id: 8,
                from: "a".into(),
                pattern: None,
            },
            ControlMessage::Channels {
                id: 7,
                to: "a".into(),
                node: "b".into(),
                channels: vec![("chat:1".into(), 3), ("chat:2".into(), 1)],
            },
        ] {
            assert_eq!(decode_control(&encode_control(&m)).unwrap(), m);
        }
        assert_eq!(decode_client(&encode_client(&info())).unwrap(), info());
        for join in [true, false] {
            assert_eq!(
                decode_incoming(&encode_join_leave(join, &info())).unwrap(),
                Incoming::JoinLeave(join, info())
            );
        }
        // A publication is still a publication.
        let body = encode_publication(b"x", None, None);
        let mut msg = b"3 ep ".to_vec();
        msg.extend_from_slice(&body);
        assert!(
            matches!(decode_incoming(&msg), Ok(Incoming::Publication(m)) if m.publication.offset == 3)
        );
    }

    #[test]
    fn truncations_are_errors() {
        let body = encode_publication(b"hello", Some(&info()), None);
        for n in 0..body.len() {
            assert!(decode_publication(&body[..n], 1).is_err(), "prefix {n}");
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(decode_publication(&long, 1), Err(DecodeError::Trailing));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message(&bytes);
            let _ = decode_incoming(&bytes);
            let _ = decode_publication(&bytes, 1);
            let _ = decode_client(&bytes);
            let _ = decode_control(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_valid_prefixes(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..200,
            flip in any::<u8>(),
        ) {
            let mut msg = b"5 e ".to_vec();
            msg.extend(encode_publication(&data, Some(&info()), None));
            let cut = cut.min(msg.len());
            msg.truncate(cut);
            if let Some(b) = msg.last_mut() { *b ^= flip; }
            let _ = decode_message(&msg);
        }
    }
}
