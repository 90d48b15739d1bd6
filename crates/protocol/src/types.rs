//! The protocol schema: commands, replies, pushes and their parts.
//!
//! Every type serializes through serde to both encodings: structs become maps
//! keyed by field name (also in MessagePack), absent/false/empty optional fields
//! are omitted, unknown fields are ignored when decoding.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::data::{B64Field, DataField, Key, serialize_entry};

fn is_false(b: &bool) -> bool {
    !*b
}

/// A client command: `{"id": N, "<method>": {params}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Non-zero request id, echoed in the reply. `0` only for [`Method::Pong`].
    pub id: u32,
    /// The method and its params.
    pub method: Method,
}

/// A command's method with its params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `connect`: authenticate the connection; must be the first command.
    Connect(ConnectRequest),
    /// `subscribe` to a channel.
    Subscribe(SubscribeRequest),
    /// `unsubscribe` from a channel.
    Unsubscribe(UnsubscribeRequest),
    /// `publish` into a channel.
    Publish(PublishRequest),
    /// `presence`: who is in a channel.
    Presence(PresenceRequest),
    /// `presence_stats`: how many are in a channel.
    PresenceStats(PresenceStatsRequest),
    /// `history`: publications kept for a channel.
    History(HistoryRequest),
    /// `refresh`: replace the connection token before it expires (same user).
    Refresh(RefreshRequest),
    /// `ping` (with an id): the server replies `{"id":N,"ping":{}}`.
    Ping,
    /// The empty command `{}` (no id): a client heartbeat/pong. Never replied to.
    /// Decoded with `id == 0`.
    Pong,
}

impl Method {
    /// The method key on the wire (`""` for [`Method::Pong`]).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Refresh(_) => "refresh",
            Method::Ping => "ping",
            Method::Pong => "",
        }
    }
}

/// Params of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    /// Connection token (JWT). Optional when anonymous access is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Client name (for logs/metrics), e.g. `"js"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Client version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    // `subs` (subscribe at connect) is reserved; ignored for now.
}

/// Params of `refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The new connection token (JWT) of the same user.
    pub token: String,
}

/// Params of `subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Channel name (non-empty).
    pub channel: String,
    /// Subscription token for private channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Ask to recover missed publications since (`offset`, `epoch`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recover: bool,
    /// Last offset seen (for recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the last offset seen (for recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Ask for publications as deltas against the previous one (`"fossil"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaType>,
}

/// A delta format a subscription may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaType {
    /// Fossil deltas (see [`crate::delta`]).
    Fossil,
}

/// Params of `unsubscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeRequest {
    /// Channel name (non-empty).
    pub channel: String,
}

/// Params of `publish`.
///
/// On the wire `data` is any JSON value (JSON) or a `bin` (MessagePack); a JSON
/// client may send `"b64data": "<base64>"` instead to publish binary bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishRequest {
    /// Channel name (non-empty).
    pub channel: String,
    /// Payload: the raw JSON text (JSON) or the bin bytes (MessagePack).
    pub data: Bytes,
}

/// Params of `presence`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRequest {
    /// Channel name (non-empty).
    pub channel: String,
}

/// Params of `presence_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsRequest {
    /// Channel name (non-empty).
    pub channel: String,
}

/// A position in a channel's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of a publication.
    pub offset: u64,
    /// Epoch of the channel's stream.
    pub epoch: String,
}

/// Params of `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Channel name (non-empty).
    pub channel: String,
    /// Max publications to return (server default/limit applies when absent).
    /// `0` asks for no publications, only the current position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return publications after this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse: bool,
}

/// Empty params/result `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Empty {}

/// A reply error: `{"code": u32, "message": string, "temporary"?: bool}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Code from [`crate::codes`] (100-199).
    pub code: u32,
    /// Human-readable message.
    pub message: Cow<'static, str>,
    /// The client may retry later.
    #[serde(default, skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

/// A reply to one command: `{"id": N, "<method>": {result}}` or `{"id": N, "error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The command's id.
    pub id: u32,
    /// The result or the error.
    pub body: Result<ReplyBody, Error>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(id: u32, body: ReplyBody) -> Reply {
        Reply { id, body: Ok(body) }
    }
    /// An error reply.
    pub fn error(id: u32, error: impl Into<Error>) -> Reply {
        Reply {
            id,
            body: Err(error.into()),
        }
    }
}

/// The result of a command, keyed by its method on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Result of `connect`.
    Connect(ConnectResult),
    /// Result of `subscribe`.
    Subscribe(SubscribeResult),
    /// Result of `unsubscribe` (`{}`).
    Unsubscribe(UnsubscribeResult),
    /// Result of `publish`.
    Publish(PublishResult),
    /// Result of `presence`.
    Presence(PresenceResult),
    /// Result of `presence_stats`.
    PresenceStats(PresenceStatsResult),
    /// Result of `history`.
    History(HistoryResult),
    /// Result of `refresh`.
    Refresh(RefreshResult),
    /// Result of `ping` (`{}`).
    Ping,
}

impl ReplyBody {
    /// The method key on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            ReplyBody::Connect(_) => "connect",
            ReplyBody::Subscribe(_) => "subscribe",
            ReplyBody::Unsubscribe(_) => "unsubscribe",
            ReplyBody::Publish(_) => "publish",
            ReplyBody::Presence(_) => "presence",
            ReplyBody::PresenceStats(_) => "presence_stats",
            ReplyBody::History(_) => "history",
            ReplyBody::Refresh(_) => "refresh",
            ReplyBody::Ping => "ping",
        }
    }
}

/// Result of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// Client (connection) id assigned by the server.
    pub client: String,
    /// Server version.
    pub version: String,
    /// Ping interval in seconds: the server pings at this interval and expects
    /// some traffic (a pong `{}`) back; 0 = no pings.
    pub ping: u32,
    /// The connection expires (token `exp`) and must be refreshed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry, when `expires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// Result of `refresh`: the connection's new expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// The connection still expires (the new token has an `exp`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry, when `expires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// Result of `subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Current epoch of the channel's stream.
    pub epoch: String,
    /// Current (latest) offset of the channel's stream.
    pub offset: u64,
    /// The channel keeps history, so the position can be recovered later.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// Recovery was requested and every missed publication is in `publications`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
    /// Recovered publications, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    /// Delta mode is on: live publications may carry deltas (`Publication::delta`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub delta: bool,
}

/// Result of `unsubscribe` (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeResult {}

/// Result of `publish`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    /// Offset given to the publication.
    pub offset: u64,
    /// Epoch of the channel's stream.
    pub epoch: String,
}

/// Result of `presence`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// Connected clients by client id.
    pub clients: BTreeMap<String, ClientInfo>,
}

/// Result of `presence_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    /// Number of connections in the channel.
    pub num_clients: u32,
    /// Number of distinct users in the channel.
    pub num_users: u32,
}

/// Result of `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResult {
    /// Publications (oldest first unless `reverse`).
    pub publications: Vec<Publication>,
    /// Current epoch of the channel's stream.
    pub epoch: String,
    /// Current (latest) offset of the channel's stream.
    pub offset: u64,
}

/// Who a connection is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// User id (`""` for anonymous).
    pub user: String,
    /// Client (connection) id.
    pub client: String,
    /// Connection info (from the token), opaque bytes like `data`.
    pub conn_info: Option<Bytes>,
    /// Channel info (from the subscription token), opaque bytes like `data`.
    pub chan_info: Option<Bytes>,
}

/// A publication in a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    /// Payload bytes (see the data/b64data rule).
    pub data: Bytes,
    /// Offset in the channel's stream (0 when the channel has no history).
    pub offset: u64,
    /// Publisher, when the namespace exposes it.
    pub info: Option<ClientInfo>,
    /// Free-form tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// `data` is a fossil delta against the data of the previous publication this
    /// subscription received (delta subscriptions only; never in history).
    pub delta: bool,
}

/// A server-initiated message: `{"push": {"channel": ..., "<kind>": {...}}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// `pub`: a publication in a subscribed channel.
    Publication {
        /// Channel.
        channel: String,
        /// The publication.
        publication: Publication,
    },
    /// `join`: a client joined the channel (presence).
    Join {
        /// Channel.
        channel: String,
        /// Who joined.
        info: ClientInfo,
    },
    /// `leave`: a client left the channel (presence).
    Leave {
        /// Channel.
        channel: String,
        /// Who left.
        info: ClientInfo,
    },
    /// `unsubscribe`: the server removed the subscription.
    Unsubscribe {
        /// Channel.
        channel: String,
        /// Reason code (reply error code space, or 2000+ for application use).
        code: u32,
        /// Reason text.
        reason: Cow<'static, str>,
    },
    /// `disconnect`: the server is about to close the connection (channel `""`).
    Disconnect {
        /// Disconnect code (same as the close code).
        code: u32,
        /// Reason text.
        reason: Cow<'static, str>,
        /// Whether the client should reconnect.
        reconnect: bool,
        /// Milliseconds the client should wait before reconnecting (`None`: not advised,
        /// omitted on the wire). Servers jitter it so that clients do not come back at once.
        delay: Option<u32>,
    },
}

impl Push {
    /// The `disconnect` push for a disconnect code.
    pub fn disconnect(code: crate::codes::DisconnectCode) -> Push {
        Push::Disconnect {
            code: u32::from(code.code),
            reason: Cow::Borrowed(code.reason),
            reconnect: code.reconnect,
            delay: None,
        }
    }

    /// The `disconnect` push for a disconnect code, advising a reconnect after
    /// `delay_ms` milliseconds.
    pub fn disconnect_after(code: crate::codes::DisconnectCode, delay_ms: u32) -> Push {
        Push::Disconnect {
            code: u32::from(code.code),
            reason: Cow::Borrowed(code.reason),
            reconnect: code.reconnect,
            delay: Some(delay_ms),
        }
    }

    /// The channel (`""` for `disconnect`).
    pub fn channel(&self) -> &str {
        match self {
            Push::Publication { channel, .. }
            | Push::Join { channel, .. }
            | Push::Leave { channel, .. }
            | Push::Unsubscribe { channel, .. } => channel,
            Push::Disconnect { .. } => "",
        }
    }

    /// The kind key on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Push::Publication { .. } => "pub",
            Push::Join { .. } => "join",
            Push::Leave { .. } => "leave",
            Push::Unsubscribe { .. } => "unsubscribe",
            Push::Disconnect { .. } => "disconnect",
        }
    }
}

// ---------------------------------------------------------------------------
// serde: PublishRequest

impl Serialize for PublishRequest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("channel", &self.channel)?;
        serialize_entry(&mut m, human, "data", "b64data", &self.data)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for PublishRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PublishRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("publish params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PublishRequest, A::Error> {
                let mut channel: Option<String> = None;
                let mut data: Option<Bytes> = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match &*key.0 {
                        "channel" => channel = Some(map.next_value()?),
                        "data" | "b64data" if data.is_some() => {
                            return Err(de::Error::custom("duplicate field `data`"));
                        }
                        "data" => data = Some(map.next_value::<DataField>()?.0),
                        "b64data" => data = Some(map.next_value::<B64Field>()?.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(PublishRequest {
                    channel: channel.ok_or_else(|| de::Error::missing_field("channel"))?,
                    data: data.ok_or_else(|| de::Error::missing_field("data"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------
// serde: ClientInfo

impl Serialize for ClientInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        let len = 2 + usize::from(self.conn_info.is_some()) + usize::from(self.chan_info.is_some());
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry("user", &self.user)?;
        m.serialize_entry("client", &self.client)?;
        if let Some(b) = &self.conn_info {
            serialize_entry(&mut m, human, "conn_info", "b64conn_info", b)?;
        }
        if let Some(b) = &self.chan_info {
            serialize_entry(&mut m, human, "chan_info", "b64chan_info", b)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ClientInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClientInfo;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("client info")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientInfo, A::Error> {
                let mut info = ClientInfo::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match &*key.0 {
                        "user" => info.user = map.next_value()?,
                        "client" => info.client = map.next_value()?,
                        "conn_info" => info.conn_info = Some(map.next_value::<DataField>()?.0),
                        "b64conn_info" => info.conn_info = Some(map.next_value::<B64Field>()?.0),
                        "chan_info" => info.chan_info = Some(map.next_value::<DataField>()?.0),
                        "b64chan_info" => info.chan_info = Some(map.next_value::<B64Field>()?.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(info)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------
// serde: Publication

impl Serialize for Publication {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PublicationView {
            publication: self,
            payload: None,
            delta: self.delta,
        }
        .serialize(s)
    }
}

/// A publication as serialized, possibly with another payload: a delta subscription's
/// (`payload` set) carries its data, or a delta, as bytes (MessagePack `bin`; in JSON a
/// string when they are UTF-8, else `b64data`) instead of raw JSON.
pub(crate) struct PublicationView<'a> {
    pub(crate) publication: &'a Publication,
    pub(crate) payload: Option<&'a [u8]>,
    pub(crate) delta: bool,
}

impl Serialize for PublicationView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.publication;
        let human = s.is_human_readable();
        let len = 2
            + usize::from(p.info.is_some())
            + usize::from(p.tags.is_some())
            + usize::from(self.delta);
        let mut m = s.serialize_map(Some(len))?;
        match self.payload {
            None => serialize_entry(&mut m, human, "data", "b64data", &p.data)?,
            Some(bytes) if !human => m.serialize_entry("data", &crate::data::Bin(bytes))?,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => m.serialize_entry("data", text)?,
                Err(_) => m.serialize_entry("b64data", &crate::data::b64_encode(bytes))?,
            },
        }
        m.serialize_entry("offset", &p.offset)?;
        if self.delta {
            m.serialize_entry("delta", &true)?;
        }
        if let Some(info) = &p.info {
            m.serialize_entry("info", info)?;
        }
        if let Some(tags) = &p.tags {
            m.serialize_entry("tags", tags)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Publication {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Publication;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("publication")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Publication, A::Error> {
                let mut p = Publication::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match &*key.0 {
                        "data" => p.data = map.next_value::<DataField>()?.0,
                        "b64data" => p.data = map.next_value::<B64Field>()?.0,
                        "offset" => p.offset = map.next_value()?,
                        "delta" => p.delta = map.next_value()?,
                        "info" => p.info = Some(map.next_value()?),
                        "tags" => p.tags = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}
