//! Opaque payloads (`data`, `conn_info`, `chan_info`): raw JSON text in JSON,
//! `bin` in MessagePack, `b64<name>` in JSON when the bytes are not valid JSON.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde_json::value::RawValue;

/// Returns the bytes as embeddable JSON text when they are one valid JSON value:
/// surrounding whitespace trimmed and any `\r`/`\n` (which valid JSON can only hold
/// as insignificant whitespace) replaced by spaces so that newline-delimited batching
/// stays intact. `None` when the bytes are not valid JSON.
pub fn json_text(bytes: &[u8]) -> Option<Cow<'_, str>> {
    let raw: &RawValue = serde_json::from_slice(bytes).ok()?;
    let s = raw.get();
    if s.bytes().any(|b| b == b'\n' || b == b'\r') {
        Some(Cow::Owned(s.replace(['\n', '\r'], " ")))
    } else {
        Some(Cow::Borrowed(s))
    }
}

/// Base64 (standard alphabet, padded) of `bytes`.
pub fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Appends the base64 (standard alphabet, padded) of `bytes` to `out`.
pub(crate) fn b64_encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    match B64.encode_slice(bytes, &mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        Err(_) => {
            // Unreachable: the buffer has exactly the encoded length.
            out.truncate(start);
            out.extend_from_slice(B64.encode(bytes).as_bytes());
        }
    }
}

/// Decodes standard base64 (padded or not).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok().or_else(|| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(s)
            .ok()
    })
}

/// Serializes one opaque-bytes entry into a map being serialized.
///
/// Human-readable (JSON): `name: <raw JSON>` or `b64name: "<base64>"`;
/// binary (MessagePack): `name: bin`.
pub(crate) fn serialize_entry<M: SerializeMap>(
    map: &mut M,
    human: bool,
    name: &'static str,
    b64name: &'static str,
    bytes: &Bytes,
) -> Result<(), M::Error> {
    if !human {
        return map.serialize_entry(name, &Bin(bytes));
    }
    match json_text(bytes) {
        Some(text) => {
            let raw: Box<RawValue> = match RawValue::from_string(text.into_owned()) {
                Ok(raw) => raw,
                Err(e) => return Err(serde::ser::Error::custom(e)),
            };
            map.serialize_entry(name, &raw)
        }
        None => map.serialize_entry(b64name, &b64_encode(bytes)),
    }
}

/// Serializes as bytes (MessagePack `bin`).
pub(crate) struct Bin<'a>(pub &'a [u8]);

impl serde::Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Visitor producing [`Bytes`] from bin, str or an array of u8.
pub(crate) struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("binary data")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

/// Deserializes an opaque payload: raw JSON text (JSON) or bin (MessagePack).
pub(crate) fn deserialize_data<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    if d.is_human_readable() {
        let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
        Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
    } else {
        d.deserialize_bytes(BytesVisitor)
    }
}

/// Wrapper deserializing with [`deserialize_data`].
pub(crate) struct DataField(pub Bytes);

impl<'de> serde::Deserialize<'de> for DataField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_data(d).map(DataField)
    }
}

/// Wrapper deserializing a base64 string into bytes.
pub(crate) struct B64Field(pub Bytes);

impl<'de> serde::Deserialize<'de> for B64Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        b64_decode(&s)
            .map(|v| B64Field(Bytes::from(v)))
            .ok_or_else(|| de::Error::custom("invalid base64"))
    }
}

/// A map key, borrowed from the input when possible.
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_rules() {
        assert_eq!(json_text(b" {\"a\":1} ").as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            json_text(b"{\n\"a\":\r\n1}").as_deref(),
            Some("{ \"a\":  1}")
        );
        assert_eq!(json_text(b"\xff\x00"), None);
        assert_eq!(json_text(b""), None);
        assert_eq!(json_text(b"1 2"), None);
        assert_eq!(json_text(b"\"x\""), Some(Cow::Borrowed("\"x\"")));
    }

    #[test]
    fn base64_roundtrip() {
        for len in 0..10 {
            let v: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let mut out = b"x".to_vec();
            b64_encode_into(&v, &mut out);
            assert_eq!(&out[1..], b64_encode(&v).as_bytes());
            assert_eq!(b64_decode(&b64_encode(&v)).as_deref(), Some(&v[..]));
        }
        assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(b64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
    }
}
