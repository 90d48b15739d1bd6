//! Encoding replies, pushes and (client side) commands.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::Encoding;
use crate::data::{b64_encode_into, json_text};
use crate::types::PublicationView;
use crate::types::*;

/// Serializes `value` in `enc` onto `out` (JSON: '\n'-separated when `out` is not empty).
fn write<T: Serialize>(enc: Encoding, value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    let res = match enc {
        Encoding::Json => {
            if start > 0 {
                out.push(b'\n');
            }
            serde_json::to_writer(&mut *out, value).map_err(|e| e.to_string())
        }
        Encoding::MsgPack => rmp_serde::encode::write_named(out, value).map_err(|e| e.to_string()),
    };
    if let Err(e) = res {
        // Cannot happen: writing to a Vec does not fail and every type here is
        // serializable. Leave `out` as it was rather than half-written.
        out.truncate(start);
        debug_assert!(false, "protocol encode failed: {e}");
    }
}

struct ReplySer<'a>(&'a Reply);

impl Serialize for ReplySer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("id", &self.0.id)?;
        match &self.0.body {
            Ok(body) => m.serialize_entry(body.name(), &BodySer(body))?,
            Err(e) => m.serialize_entry("error", e)?,
        }
        m.end()
    }
}

struct BodySer<'a>(&'a ReplyBody);

impl Serialize for BodySer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ReplyBody::Connect(r) => r.serialize(s),
            ReplyBody::Subscribe(r) => r.serialize(s),
            ReplyBody::Unsubscribe(r) => r.serialize(s),
            ReplyBody::Publish(r) => r.serialize(s),
            ReplyBody::Presence(r) => r.serialize(s),
            ReplyBody::PresenceStats(r) => r.serialize(s),
            ReplyBody::Refresh(r) => r.serialize(s),
            ReplyBody::History(r) => r.serialize(s),
            ReplyBody::Ping => Empty {}.serialize(s),
        }
    }
}

struct PushSer<'a>(&'a Push);

impl Serialize for PushSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("push", &PushInner(self.0))?;
        m.end()
    }
}

struct PushInner<'a>(&'a Push);

#[derive(Serialize)]
struct InfoSer<'a> {
    info: &'a ClientInfo,
}

#[derive(Serialize)]
struct UnsubSer<'a> {
    code: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct DisconnectSer<'a> {
    code: u32,
    reason: &'a str,
    reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<u32>,
}

impl Serialize for PushInner<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("channel", p.channel())?;
        match p {
            Push::Publication { publication, .. } => m.serialize_entry("pub", publication)?,
            Push::Join { info, .. } => m.serialize_entry("join", &InfoSer { info })?,
            Push::Leave { info, .. } => m.serialize_entry("leave", &InfoSer { info })?,
            Push::Unsubscribe { code, reason, .. } => m.serialize_entry(
                "unsubscribe",
                &UnsubSer {
                    code: *code,
                    reason,
                },
            )?,
            Push::Disconnect {
                code,
                reason,
                reconnect,
                delay,
            } => m.serialize_entry(
                "disconnect",
                &DisconnectSer {
                    code: *code,
                    reason,
                    reconnect: *reconnect,
                    delay: *delay,
                },
            )?,
        }
        m.end()
    }
}

struct CommandSer<'a>(&'a Command);

impl Serialize for CommandSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        if c.method == Method::Pong {
            return s.serialize_map(Some(0))?.end();
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("id", &c.id)?;
        let name = c.method.name();
        match &c.method {
            Method::Connect(r) => m.serialize_entry(name, r)?,
            Method::Subscribe(r) => m.serialize_entry(name, r)?,
            Method::Unsubscribe(r) => m.serialize_entry(name, r)?,
            Method::Publish(r) => m.serialize_entry(name, r)?,
            Method::Presence(r) => m.serialize_entry(name, r)?,
            Method::PresenceStats(r) => m.serialize_entry(name, r)?,
            Method::Refresh(r) => m.serialize_entry(name, r)?,
            Method::History(r) => m.serialize_entry(name, r)?,
            Method::Ping | Method::Pong => m.serialize_entry(name, &Empty {})?,
        }
        m.end()
    }
}

/// Appends the encoded reply to `out` (JSON: preceded by `'\n'` when `out` is not empty).
pub fn encode_reply(enc: Encoding, reply: &Reply, out: &mut Vec<u8>) {
    write(enc, &ReplySer(reply), out);
}

/// Appends the encoded push to `out` (JSON: preceded by `'\n'` when `out` is not empty).
///
/// For [`Push::Publication`] this uses the same fast path as [`encode_publication`].
pub fn encode_push(enc: Encoding, push: &Push, out: &mut Vec<u8>) {
    match push {
        Push::Publication {
            channel,
            publication,
        } => encode_publication(enc, channel, publication, out),
        _ => write(enc, &PushSer(push), out),
    }
}

/// Appends a `pub` push for `publication` in `channel` without building a [`Push`]:
/// the hub's hot path (encode once per publication and encoding, send the bytes to
/// every subscriber). JSON is written by hand (no serde, one pass, one validation
/// of `data`); the output is identical to the serde encoding.
pub fn encode_publication(
    enc: Encoding,
    channel: &str,
    publication: &Publication,
    out: &mut Vec<u8>,
) {
    match enc {
        Encoding::MsgPack => write(
            enc,
            &PubPushSer(&PushRef {
                channel,
                publication,
            }),
            out,
        ),
        Encoding::Json => {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.reserve(publication.data.len() + channel.len() + 64);
            out.extend_from_slice(b"{\"push\":{\"channel\":");
            json::string(channel, out);
            out.extend_from_slice(b",\"pub\":{");
            json::bytes_field(b"data", &publication.data, out);
            json::publication_rest(publication, publication.delta, out);
        }
    }
}

/// Appends a `pub` push for a *delta subscription*: `payload` is the publication's
/// data in full (`delta == false`) or a fossil delta against the data of the previous
/// publication the subscription received (`delta == true`, sent as `"delta": true`).
/// Either way the client gets the exact bytes: MessagePack as `bin`; JSON as a JSON
/// string holding them as UTF-8 text (`"data": "..."`), or as `b64data` when they are
/// not UTF-8. (Raw JSON, as [`encode_publication`] embeds it, would not let a browser
/// client recover the exact bytes a delta applies to.)
pub fn encode_delta_publication(
    enc: Encoding,
    channel: &str,
    publication: &Publication,
    payload: &[u8],
    delta: bool,
    out: &mut Vec<u8>,
) {
    match enc {
        Encoding::MsgPack => write(
            enc,
            &DeltaPushSer {
                channel,
                view: PublicationView {
                    publication,
                    payload: Some(payload),
                    delta,
                },
            },
            out,
        ),
        Encoding::Json => {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.reserve(payload.len() + payload.len() / 8 + channel.len() + 64);
            out.extend_from_slice(b"{\"push\":{\"channel\":");
            json::string(channel, out);
            out.extend_from_slice(b",\"pub\":{");
            match std::str::from_utf8(payload) {
                Ok(text) => {
                    out.extend_from_slice(b"\"data\":");
                    json::string(text, out);
                }
                Err(_) => {
                    out.extend_from_slice(b"\"b64data\":\"");
                    b64_encode_into(payload, out);
                    out.push(b'"');
                }
            }
            json::publication_rest(publication, delta, out);
        }
    }
}

/// A delta subscription's `pub` push (MessagePack).
struct DeltaPushSer<'a> {
    channel: &'a str,
    view: PublicationView<'a>,
}

impl Serialize for DeltaPushSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Inner<'a>(&'a DeltaPushSer<'a>);
        impl Serialize for Inner<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("channel", self.0.channel)?;
                m.serialize_entry("pub", &self.0.view)?;
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("push", &Inner(self))?;
        m.end()
    }
}

/// Borrowed publication push (so the msgpack path needs no clone).
struct PushRef<'a> {
    channel: &'a str,
    publication: &'a Publication,
}

struct PubPushSer<'a>(&'a PushRef<'a>);

impl Serialize for PubPushSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("push", &PubInner(self.0))?;
        m.end()
    }
}

struct PubInner<'a>(&'a PushRef<'a>);

impl Serialize for PubInner<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("channel", self.0.channel)?;
        m.serialize_entry("pub", self.0.publication)?;
        m.end()
    }
}

/// The serde encoding of any push (the reference for the hand-written fast path).
#[cfg(test)]
pub(crate) fn encode_push_serde(enc: Encoding, push: &Push, out: &mut Vec<u8>) {
    write(enc, &PushSer(push), out);
}

/// Appends the encoded command to `out` (client side; JSON: `'\n'`-separated).
pub fn encode_command(enc: Encoding, command: &Command, out: &mut Vec<u8>) {
    write(enc, &CommandSer(command), out);
}

/// Appends the heartbeat `{}`: the server's ping and the client's pong.
pub fn encode_heartbeat(enc: Encoding, out: &mut Vec<u8>) {
    match enc {
        Encoding::Json => {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(b"{}");
        }
        Encoding::MsgPack => out.push(0x80),
    }
}

/// Hand-written JSON output for the publication hot path.
pub(crate) mod json {
    use super::*;

    const HEX: &[u8; 16] = b"0123456789abcdef";

    /// Appends `s` as a JSON string, escaped exactly like serde_json does.
    pub(crate) fn string(s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        let bytes = s.as_bytes();
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => b"",
                _ => continue,
            };
            out.extend_from_slice(&bytes[run..i]);
            run = i + 1;
            if esc.is_empty() {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            } else {
                out.extend_from_slice(esc);
            }
        }
        out.extend_from_slice(&bytes[run..]);
        out.push(b'"');
    }

    /// Appends a u64 in decimal.
    pub(crate) fn u64(mut v: u64, out: &mut Vec<u8>) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        out.extend_from_slice(&buf[i..]);
    }

    /// Appends `"name":<raw JSON>` or `"b64name":"<base64>"`.
    pub(crate) fn bytes_field(name: &[u8], bytes: &[u8], out: &mut Vec<u8>) {
        match json_text(bytes) {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(name);
                out.extend_from_slice(b"\":");
                out.extend_from_slice(text.as_bytes());
            }
            None => {
                out.extend_from_slice(b"\"b64");
                out.extend_from_slice(name);
                out.extend_from_slice(b"\":\"");
                b64_encode_into(bytes, out);
                out.push(b'"');
            }
        }
    }

    /// Appends what follows a publication's data up to the end of the push: offset,
    /// `"delta":true` when `delta`, info, tags, and the closing braces.
    pub(crate) fn publication_rest(publication: &Publication, delta: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"offset\":");
        u64(publication.offset, out);
        if delta {
            out.extend_from_slice(b",\"delta\":true");
        }
        if let Some(info) = &publication.info {
            out.extend_from_slice(b",\"info\":");
            client_info(info, out);
        }
        if let Some(tags) = &publication.tags {
            out.extend_from_slice(b",\"tags\":{");
            for (i, (k, v)) in tags.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                string(v, out);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"}}}");
    }

    /// Appends a ClientInfo object.
    pub(crate) fn client_info(info: &ClientInfo, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"user\":");
        string(&info.user, out);
        out.extend_from_slice(b",\"client\":");
        string(&info.client, out);
        if let Some(b) = &info.conn_info {
            out.push(b',');
            bytes_field(b"conn_info", b, out);
        }
        if let Some(b) = &info.chan_info {
            out.push(b',');
            bytes_field(b"chan_info", b, out);
        }
        out.push(b'}');
    }
}
