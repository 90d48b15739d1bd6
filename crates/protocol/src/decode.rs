//! Decoding frames: commands (server side) and replies/pushes (client side).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::codes;
use crate::data::Key;
use crate::msgpack::{Reader, ScanError};
use crate::types::*;
use crate::{Encoding, Error};

/// The frame cannot be decoded at all; the server closes the connection with
/// 4500 (bad request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Malformed JSON (syntax error, invalid UTF-8, nesting too deep, ...).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Malformed MessagePack.
    #[error("malformed MessagePack: {0}")]
    MsgPack(&'static str),
    /// A message is not a map/object.
    #[error("message is not an object")]
    NotAnObject,
    /// A command has a method but no `id`.
    #[error("command without id")]
    MissingId,
    /// `id` is not an integer in 1..=4294967295 (or appears twice).
    #[error("invalid command id")]
    InvalidId,
    /// (Client side) a reply or push does not match the schema.
    #[error("invalid server message: {0}")]
    Invalid(String),
}

impl From<ScanError> for DecodeError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Eof => DecodeError::MsgPack("unexpected end of input"),
            ScanError::BadMarker => DecodeError::MsgPack("reserved marker 0xc1"),
            ScanError::NotAMap => DecodeError::NotAnObject,
            ScanError::KeyNotString => DecodeError::MsgPack("map key is not a string"),
            ScanError::NotU32 => DecodeError::InvalidId,
        }
    }
}

/// One command of a frame is invalid but has an id: the server answers it with an
/// error reply ([`CommandError::reply`]) and keeps the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The method key is unknown: error 104.
    #[error("command {id}: unknown method `{method}`")]
    UnknownMethod {
        /// Command id.
        id: u32,
        /// The unknown key (truncated to 64 bytes).
        method: String,
    },
    /// An id but no method key: error 107.
    #[error("command {id}: no method")]
    MissingMethod {
        /// Command id.
        id: u32,
    },
    /// More than one method key: error 107.
    #[error("command {id}: more than one method")]
    SeveralMethods {
        /// Command id.
        id: u32,
    },
    /// The params do not match the method: error 107.
    #[error("command {id}: invalid {method} params: {reason}")]
    InvalidParams {
        /// Command id.
        id: u32,
        /// Method name.
        method: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl CommandError {
    /// The command id.
    pub fn id(&self) -> u32 {
        match self {
            CommandError::UnknownMethod { id, .. }
            | CommandError::MissingMethod { id }
            | CommandError::SeveralMethods { id }
            | CommandError::InvalidParams { id, .. } => *id,
        }
    }

    /// The reply error: 104 for an unknown method, 107 (with details) otherwise.
    pub fn error(&self) -> Error {
        match self {
            CommandError::UnknownMethod { .. } => codes::METHOD_NOT_FOUND.error(),
            CommandError::MissingMethod { .. } => {
                codes::BAD_REQUEST.with_message("bad request: no method")
            }
            CommandError::SeveralMethods { .. } => {
                codes::BAD_REQUEST.with_message("bad request: more than one method")
            }
            CommandError::InvalidParams { method, reason, .. } => {
                codes::BAD_REQUEST.with_message(format!("bad request: {method}: {reason}"))
            }
        }
    }

    /// The error reply to send.
    pub fn reply(&self) -> Reply {
        Reply::error(self.id(), self.error())
    }
}

/// One top-level map of a frame: its id and its first non-id entry.
struct RawMsg<'a> {
    id: Option<u32>,
    /// First non-`id` key and its encoded value.
    first: Option<(Cow<'a, str>, &'a [u8])>,
    /// Number of non-`id` keys.
    keys: usize,
}

impl<'de> Deserialize<'de> for RawMsg<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMsg<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMsg<'de>, A::Error> {
                let mut msg = RawMsg {
                    id: None,
                    first: None,
                    keys: 0,
                };
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == "id" {
                        if msg.id.is_some() {
                            return Err(de::Error::duplicate_field("id"));
                        }
                        msg.id = Some(map.next_value::<u32>()?);
                    } else {
                        let raw: &'de RawValue = map.next_value()?;
                        msg.keys += 1;
                        if msg.first.is_none() {
                            msg.first = Some((key, raw.get().as_bytes()));
                        }
                    }
                }
                Ok(msg)
            }
        }
        d.deserialize_map(V)
    }
}

/// Splits a frame into top-level maps.
fn split(enc: Encoding, frame: &[u8]) -> Result<Vec<RawMsg<'_>>, DecodeError> {
    let mut out = Vec::new();
    match enc {
        Encoding::Json => {
            let stream = serde_json::Deserializer::from_slice(frame).into_iter::<RawMsg<'_>>();
            for msg in stream {
                let msg = msg.map_err(|e| {
                    if !e.is_data() {
                        DecodeError::Json(e.to_string())
                    } else if e.to_string().contains("expected an object") {
                        DecodeError::NotAnObject
                    } else {
                        // Only `id` is typed at this level.
                        DecodeError::InvalidId
                    }
                })?;
                out.push(msg);
            }
        }
        Encoding::MsgPack => {
            let mut r = Reader::new(frame);
            while !r.is_empty() {
                let n = r.map_len()?;
                let mut msg = RawMsg {
                    id: None,
                    first: None,
                    keys: 0,
                };
                for _ in 0..n {
                    let key = r.str()?;
                    if key == b"id" {
                        if msg.id.is_some() {
                            return Err(DecodeError::InvalidId);
                        }
                        msg.id = Some(r.u32()?);
                    } else {
                        let value = r.value()?;
                        msg.keys += 1;
                        if msg.first.is_none() {
                            msg.first = Some((String::from_utf8_lossy(key), value));
                        }
                    }
                }
                out.push(msg);
            }
        }
    }
    Ok(out)
}

/// Decodes one encoded value (params, result, ...).
fn decode_value<'a, T: Deserialize<'a>>(enc: Encoding, bytes: &'a [u8]) -> Result<T, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| {
            // Positions are relative to the params: drop them.
            let s = e.to_string();
            match s.rfind(" at line ") {
                Some(i) => s[..i].to_owned(),
                None => s,
            }
        }),
        Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn command(enc: Encoding, msg: RawMsg<'_>) -> Result<Result<Command, CommandError>, DecodeError> {
    let id = match (msg.id, &msg.first) {
        (None, None) => {
            return Ok(Ok(Command {
                id: 0,
                method: Method::Pong,
            }));
        }
        (None, Some(_)) => return Err(DecodeError::MissingId),
        (Some(0), _) => return Err(DecodeError::InvalidId),
        (Some(id), _) => id,
    };
    let Some((name, params)) = msg.first else {
        return Ok(Err(CommandError::MissingMethod { id }));
    };
    if msg.keys > 1 {
        return Ok(Err(CommandError::SeveralMethods { id }));
    }
    fn p<'a, T: Deserialize<'a>>(
        enc: Encoding,
        id: u32,
        method: &'static str,
        params: &'a [u8],
    ) -> Result<T, CommandError> {
        decode_value(enc, params).map_err(|reason| CommandError::InvalidParams {
            id,
            method,
            reason,
        })
    }
    fn channel(id: u32, method: &'static str, channel: &str) -> Result<(), CommandError> {
        if channel.is_empty() {
            return Err(CommandError::InvalidParams {
                id,
                method,
                reason: "empty channel".into(),
            });
        }
        Ok(())
    }
    let method = (|| {
        Ok(match &*name {
            "connect" => Method::Connect(p(enc, id, "connect", params)?),
            "subscribe" => {
                let r: SubscribeRequest = p(enc, id, "subscribe", params)?;
                channel(id, "subscribe", &r.channel)?;
                Method::Subscribe(r)
            }
            "unsubscribe" => {
                let r: UnsubscribeRequest = p(enc, id, "unsubscribe", params)?;
                channel(id, "unsubscribe", &r.channel)?;
                Method::Unsubscribe(r)
            }
            "publish" => {
                let r: PublishRequest = p(enc, id, "publish", params)?;
                channel(id, "publish", &r.channel)?;
                Method::Publish(r)
            }
            "presence" => {
                let r: PresenceRequest = p(enc, id, "presence", params)?;
                channel(id, "presence", &r.channel)?;
                Method::Presence(r)
            }
            "presence_stats" => {
                let r: PresenceStatsRequest = p(enc, id, "presence_stats", params)?;
                channel(id, "presence_stats", &r.channel)?;
                Method::PresenceStats(r)
            }
            "history" => {
                let r: HistoryRequest = p(enc, id, "history", params)?;
                channel(id, "history", &r.channel)?;
                Method::History(r)
            }
            "refresh" => {
                let r: RefreshRequest = p(enc, id, "refresh", params)?;
                if r.token.is_empty() {
                    return Err(CommandError::InvalidParams {
                        id,
                        method: "refresh",
                        reason: "empty token".into(),
                    });
                }
                Method::Refresh(r)
            }
            "ping" => {
                let _: Empty = p(enc, id, "ping", params)?;
                Method::Ping
            }
            other => {
                return Err(CommandError::UnknownMethod {
                    id,
                    method: truncate(other, 64),
                });
            }
        })
    })();
    Ok(method.map(|method| Command { id, method }))
}

/// Decodes every command of one frame.
///
/// * `Err(DecodeError)`: the frame is malformed (bad JSON/MessagePack, a message
///   that is not an object, a command without a valid id): close with 4500.
/// * `Ok(vec)`: one entry per command, in order. An `Err(CommandError)` entry has an
///   id: answer it with [`CommandError::reply`] (104 or 107) and go on.
///
/// JSON frames hold objects separated by any JSON whitespace (`\n`, `\r\n`, a
/// trailing newline are all fine); MessagePack frames hold concatenated maps.
/// An empty frame decodes to no commands. `{}` decodes to [`Method::Pong`] (id 0).
pub fn decode_commands(
    enc: Encoding,
    frame: &[u8],
) -> Result<Vec<Result<Command, CommandError>>, DecodeError> {
    split(enc, frame)?
        .into_iter()
        .map(|msg| command(enc, msg))
        .collect()
}

/// A message from the server, as decoded by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A reply to a command.
    Reply(Reply),
    /// A push.
    Push(Push),
    /// The server's heartbeat `{}`: answer with a pong `{}` ([`crate::encode_heartbeat`]).
    Ping,
}

#[derive(Deserialize)]
struct CodeReason {
    code: u32,
    reason: String,
    #[serde(default)]
    reconnect: bool,
    #[serde(default)]
    delay: Option<u32>,
}

#[derive(Deserialize)]
struct InfoOnly {
    info: ClientInfo,
}

fn server_message(enc: Encoding, msg: RawMsg<'_>) -> Result<ServerMessage, DecodeError> {
    let inv = DecodeError::Invalid;
    let Some((name, value)) = msg.first else {
        return match msg.id {
            None => Ok(ServerMessage::Ping),
            Some(_) => Err(inv("reply without result".into())),
        };
    };
    if msg.keys > 1 {
        return Err(inv("more than one key".into()));
    }
    match msg.id {
        Some(id) => {
            let body = match &*name {
                "error" => Err(decode_value::<Error>(enc, value).map_err(inv)?),
                "connect" => Ok(ReplyBody::Connect(decode_value(enc, value).map_err(inv)?)),
                "subscribe" => Ok(ReplyBody::Subscribe(decode_value(enc, value).map_err(inv)?)),
                "unsubscribe" => Ok(ReplyBody::Unsubscribe(
                    decode_value(enc, value).map_err(inv)?,
                )),
                "publish" => Ok(ReplyBody::Publish(decode_value(enc, value).map_err(inv)?)),
                "presence" => Ok(ReplyBody::Presence(decode_value(enc, value).map_err(inv)?)),
                "presence_stats" => Ok(ReplyBody::PresenceStats(
                    decode_value(enc, value).map_err(inv)?,
                )),
                "history" => Ok(ReplyBody::History(decode_value(enc, value).map_err(inv)?)),
                "refresh" => Ok(ReplyBody::Refresh(decode_value(enc, value).map_err(inv)?)),
                "ping" => {
                    let _: Empty = decode_value(enc, value).map_err(inv)?;
                    Ok(ReplyBody::Ping)
                }
                other => return Err(inv(format!("unknown reply `{}`", truncate(other, 64)))),
            };
            Ok(ServerMessage::Reply(Reply { id, body }))
        }
        None if name == "push" => push(enc, value),
        None => Err(inv(format!("unexpected key `{}`", truncate(&name, 64)))),
    }
}

/// Decodes a push body `{"channel": ..., "<kind>": {...}}`.
fn push(enc: Encoding, value: &[u8]) -> Result<ServerMessage, DecodeError> {
    let inv = DecodeError::Invalid;
    let entries: Vec<(Cow<'_, str>, &[u8])> = match enc {
        Encoding::Json => {
            let map: Vec<(Key<'_>, &RawValue)> = serde_json::from_slice::<RawEntries<'_>>(value)
                .map_err(|e| inv(e.to_string()))?
                .0;
            map.into_iter()
                .map(|(k, v)| (k.0, v.get().as_bytes()))
                .collect()
        }
        Encoding::MsgPack => {
            let mut r = Reader::new(value);
            let n = r.map_len()?;
            let mut v = Vec::new();
            for _ in 0..n {
                let k = String::from_utf8_lossy(r.str()?);
                v.push((k, r.value()?));
            }
            v
        }
    };
    let mut channel: Option<String> = None;
    let mut kind: Option<(Cow<'_, str>, &[u8])> = None;
    for (k, v) in entries {
        if k == "channel" {
            channel = Some(decode_value(enc, v).map_err(inv)?);
        } else if kind.is_none() {
            kind = Some((k, v));
        } else {
            return Err(inv("push with more than one kind".into()));
        }
    }
    let channel = channel.ok_or_else(|| inv("push without channel".into()))?;
    let (kind, v) = kind.ok_or_else(|| inv("push without kind".into()))?;
    let push = match &*kind {
        "pub" => Push::Publication {
            channel,
            publication: decode_value(enc, v).map_err(inv)?,
        },
        "join" => Push::Join {
            channel,
            info: decode_value::<InfoOnly>(enc, v).map_err(inv)?.info,
        },
        "leave" => Push::Leave {
            channel,
            info: decode_value::<InfoOnly>(enc, v).map_err(inv)?.info,
        },
        "unsubscribe" => {
            let c: CodeReason = decode_value(enc, v).map_err(inv)?;
            Push::Unsubscribe {
                channel,
                code: c.code,
                reason: Cow::Owned(c.reason),
            }
        }
        "disconnect" => {
            let c: CodeReason = decode_value(enc, v).map_err(inv)?;
            Push::Disconnect {
                code: c.code,
                reason: Cow::Owned(c.reason),
                reconnect: c.reconnect,
                delay: c.delay,
            }
        }
        other => return Err(inv(format!("unknown push `{}`", truncate(other, 64)))),
    };
    Ok(ServerMessage::Push(push))
}

/// All entries of a JSON object, values kept raw.
struct RawEntries<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    v.push((k, map.next_value()?));
                }
                Ok(RawEntries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Decodes every reply/push of one frame (client side).
pub fn decode_server_messages(
    enc: Encoding,
    frame: &[u8],
) -> Result<Vec<ServerMessage>, DecodeError> {
    split(enc, frame)?
        .into_iter()
        .map(|msg| server_message(enc, msg))
        .collect()
}
