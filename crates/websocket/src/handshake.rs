//! Server side of the RFC 6455 opening handshake (section 4.2) and the RFC 7692
//! permessage-deflate negotiation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::deflate::DeflateParams;

/// Read access to the header lines of a request, so that [`accept`] works both on an
/// `http::HeaderMap` and on a head parsed in place (such as httparse's header slice),
/// without copying the latter into a map.
pub trait HeaderLines {
    /// The value of every line named `name` (compared ASCII case-insensitively), in
    /// the order they came.
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl HeaderLines for HeaderMap {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// What the server offers during the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Accept a permessage-deflate offer from the client.
    pub deflate: bool,
    /// Supported subprotocols, in server preference order.
    pub subprotocols: Vec<String>,
}

/// A successful handshake: what to answer with `101 Switching Protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// Chosen subprotocol, if the client offered one we support.
    pub subprotocol: Option<String>,
    /// Negotiated permessage-deflate parameters, if any.
    pub deflate: Option<DeflateParams>,
}

impl Accepted {
    /// Headers of the 101 response: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`, and `Sec-WebSocket-Protocol` /
    /// `Sec-WebSocket-Extensions` when negotiated.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(5);
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        // The accept key is base64 and the subprotocol a token taken from a
        // valid header value, so these conversions only fail on misuse.
        if let Ok(v) = HeaderValue::from_str(&self.accept_key) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = self
            .subprotocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            h.insert(SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(d) = &self.deflate
            && let Ok(v) = HeaderValue::from_str(&d.response_header_value())
        {
            h.insert(SEC_WEBSOCKET_EXTENSIONS, v);
        }
        h
    }

    /// Appends the whole `101 Switching Protocols` response head to `out`: the status
    /// line, the headers of [`Accepted::response_headers`] (same names, same values, same
    /// order) and the empty line; for servers that write the answer themselves.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
        );
        let mut line = |name: &HeaderName, value: &[u8]| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        // The same validity rule as `response_headers` (`HeaderValue::from_str`), without
        // building the values, so both always agree.
        if is_header_value(&self.accept_key) {
            line(&SEC_WEBSOCKET_ACCEPT, self.accept_key.as_bytes());
        }
        if let Some(p) = self.subprotocol.as_deref().filter(|p| is_header_value(p)) {
            line(&SEC_WEBSOCKET_PROTOCOL, p.as_bytes());
        }
        if let Some(d) = &self.deflate {
            let value = d.response_header_value();
            if is_header_value(&value) {
                line(&SEC_WEBSOCKET_EXTENSIONS, value.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether `HeaderValue::from_str` would take `value`: no control characters but tab.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Why an upgrade request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Method other than GET.
    #[error("WebSocket handshake requires the GET method, got {0}")]
    MethodNotGet(Method),
    /// HTTP/1.0 or older.
    #[error("WebSocket handshake requires HTTP/1.1 or later")]
    HttpVersion,
    /// No `Upgrade: websocket`.
    #[error("missing or invalid Upgrade header (expected websocket)")]
    NoUpgrade,
    /// No `upgrade` token in `Connection`.
    #[error("missing Upgrade token in the Connection header")]
    NoConnectionUpgrade,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes (or repeated).
    #[error("invalid Sec-WebSocket-Key (must be the base64 encoding of 16 bytes)")]
    InvalidKey,
    /// `Sec-WebSocket-Version` missing or not 13.
    #[error("unsupported or missing Sec-WebSocket-Version (this server speaks version 13)")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// HTTP status to answer with: 426 for a version mismatch (RFC 6455
    /// section 4.4), 400 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Extra headers for the error response: `Sec-WebSocket-Version: 13` with 426.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if matches!(self, HandshakeError::UnsupportedVersion) {
            h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        h
    }
}

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2):
/// base64(SHA-1(key + GUID)). Public so clients (bench tool) can check it.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// Comma-separated elements of every instance of a header, trimmed, empty ones skipped.
fn list_items<'a, H: HeaderLines + ?Sized>(
    headers: &'a H,
    name: &'a HeaderName,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .values(name)
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|s| s.trim_ascii())
        .filter(|s| !s.is_empty())
}

fn has_token<H: HeaderLines + ?Sized>(headers: &H, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Validates an upgrade request and negotiates subprotocol and compression. `headers`
/// is an `http::HeaderMap` or any other [`HeaderLines`].
pub fn accept<H: HeaderLines + ?Sized>(
    method: &Method,
    version: Version,
    headers: &H,
    config: &HandshakeConfig,
) -> Result<Accepted, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::MethodNotGet(method.clone()));
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let mut keys = headers.values(&SEC_WEBSOCKET_KEY);
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(HandshakeError::MissingKey),
        (Some(k), None) => k.trim_ascii(),
        (Some(_), Some(_)) => return Err(HandshakeError::InvalidKey),
    };
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let mut versions = headers.values(&SEC_WEBSOCKET_VERSION);
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }

    let subprotocol = config
        .subprotocols
        .iter()
        .find(|ours| {
            list_items(headers, &SEC_WEBSOCKET_PROTOCOL).any(|theirs| theirs == ours.as_bytes())
        })
        .cloned();

    let deflate = if config.deflate {
        negotiate_deflate(headers)
    } else {
        None
    };

    Ok(Accepted {
        accept_key: accept_key(key),
        subprotocol,
        deflate,
    })
}

/// Picks the first acceptable permessage-deflate offer, in the client's order,
/// across all `Sec-WebSocket-Extensions` lines.
fn negotiate_deflate<H: HeaderLines + ?Sized>(headers: &H) -> Option<DeflateParams> {
    list_items(headers, &SEC_WEBSOCKET_EXTENSIONS).find_map(|offer| {
        let mut parts = offer.split(|b| *b == b';').map(|s| s.trim_ascii());
        let name = parts.next()?;
        if !name.eq_ignore_ascii_case(b"permessage-deflate") {
            return None;
        }
        parse_deflate_offer(parts)
    })
}

/// Parses the parameters of one offer; `None` declines it (unknown, duplicate
/// or invalid parameter: RFC 7692 section 5 says to decline such an offer).
fn parse_deflate_offer<'a>(params: impl Iterator<Item = &'a [u8]>) -> Option<DeflateParams> {
    let mut server_nct = false;
    let mut client_nct = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    for param in params {
        if param.is_empty() {
            continue; // tolerate a stray ';'
        }
        let (name, value) = match param.iter().position(|b| *b == b'=') {
            Some(i) => (
                param[..i].trim_ascii(),
                Some(unquote(param[i + 1..].trim_ascii())),
            ),
            None => (param, None),
        };
        match name {
            b"server_no_context_takeover" if value.is_none() && !server_nct => server_nct = true,
            b"client_no_context_takeover" if value.is_none() && !client_nct => client_nct = true,
            b"server_max_window_bits" if server_bits.is_none() => {
                server_bits = Some(parse_bits(value?)?)
            }
            b"client_max_window_bits" if client_bits.is_none() => {
                client_bits = Some(match value {
                    None => None,
                    Some(v) => Some(parse_bits(v)?),
                })
            }
            _ => return None,
        }
    }
    Some(DeflateParams {
        server_max_window_bits: server_bits.unwrap_or(15),
        client_max_window_bits: client_bits.flatten().unwrap_or(15),
    })
}

/// RFC 6455 section 9.1 allows a quoted-string whose content is a token.
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// A decimal 8..=15 without leading zeros (RFC 7692 section 7.1.2).
fn parse_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "example.com"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ] {
            if !extra.iter().any(|(ek, _)| ek.eq_ignore_ascii_case(k)) {
                h.insert(
                    http::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                );
            }
        }
        for (k, v) in extra {
            if !v.is_empty() {
                h.append(
                    http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
        }
        h
    }

    fn ok(h: &HeaderMap, cfg: &HandshakeConfig) -> Accepted {
        accept(&Method::GET, Version::HTTP_11, h, cfg).expect("accepted")
    }

    fn err(h: &HeaderMap) -> HandshakeError {
        accept(
            &Method::GET,
            Version::HTTP_11,
            h,
            &HandshakeConfig::default(),
        )
        .expect_err("refused")
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let a = ok(&request(&[]), &HandshakeConfig::default());
        assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.subprotocol, None);
        assert_eq!(a.deflate, None);
        let h = a.response_headers();
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "Upgrade");
        assert_eq!(h[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!h.contains_key(SEC_WEBSOCKET_PROTOCOL));
        assert!(!h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
    }

    #[test]
    fn tolerant_token_lists() {
        let h = request(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        ok(&h, &HandshakeConfig::default());
        // Connection split over two header lines.
        let h = request(&[("connection", "keep-alive"), ("connection", "Upgrade")]);
        ok(&h, &HandshakeConfig::default());
        ok(&request(&[]), &HandshakeConfig::default());
        accept(
            &Method::GET,
            Version::HTTP_2,
            &request(&[]),
            &HandshakeConfig::default(),
        )
        .expect("h2 version ok");
    }

    #[test]
    fn bad_requests_are_400() {
        let cfg = HandshakeConfig::default();
        let e = accept(&Method::POST, Version::HTTP_11, &request(&[]), &cfg).expect_err("post");
        assert_eq!(e, HandshakeError::MethodNotGet(Method::POST));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = accept(&Method::GET, Version::HTTP_10, &request(&[]), &cfg).expect_err("1.0");
        assert_eq!(e, HandshakeError::HttpVersion);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let cases: Vec<(Vec<(&str, &str)>, HandshakeError)> = vec![
            (vec![("upgrade", "")], HandshakeError::NoUpgrade),
            (vec![("upgrade", "h2c")], HandshakeError::NoUpgrade),
            (
                vec![("connection", "")],
                HandshakeError::NoConnectionUpgrade,
            ),
            (
                vec![("connection", "keep-alive")],
                HandshakeError::NoConnectionUpgrade,
            ),
            (vec![("sec-websocket-key", "")], HandshakeError::MissingKey),
            (
                vec![("sec-websocket-key", "not base64!")],
                HandshakeError::InvalidKey,
            ),
            // 15 bytes.
            (
                vec![("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAA")],
                HandshakeError::InvalidKey,
            ),
            // 17 bytes.
            (
                vec![("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAAA=")],
                HandshakeError::InvalidKey,
            ),
            (
                vec![
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
                HandshakeError::InvalidKey,
            ),
        ];
        for (extra, expected) in cases {
            let e = err(&request(&extra));
            assert_eq!(e, expected, "{extra:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.response_headers().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn version_mismatch_is_426() {
        for v in ["", "8", "12", "14", "13, 8"] {
            let e = err(&request(&[("sec-websocket-version", v)]));
            assert_eq!(e, HandshakeError::UnsupportedVersion, "{v:?}");
            assert_eq!(e.status(), StatusCode::UPGRADE_REQUIRED);
            assert_eq!(e.response_headers()[SEC_WEBSOCKET_VERSION], "13");
        }
    }

    #[test]
    fn subprotocol_server_preference() {
        let cfg = HandshakeConfig {
            deflate: false,
            subprotocols: vec!["v2.json".into(), "v1.json".into()],
        };
        let a = ok(
            &request(&[("sec-websocket-protocol", "v1.json, v2.json")]),
            &cfg,
        );
        assert_eq!(a.subprotocol.as_deref(), Some("v2.json"));
        assert_eq!(a.response_headers()[SEC_WEBSOCKET_PROTOCOL], "v2.json");
        let a = ok(
            &request(&[
                ("sec-websocket-protocol", "v1.json"),
                ("sec-websocket-protocol", "x"),
            ]),
            &cfg,
        );
        assert_eq!(a.subprotocol.as_deref(), Some("v1.json"));
        let a = ok(&request(&[("sec-websocket-protocol", "mqtt")]), &cfg);
        assert_eq!(a.subprotocol, None);
        let a = ok(&request(&[]), &cfg);
        assert_eq!(a.subprotocol, None);
    }

    fn deflate_for(ext: &[&str]) -> Option<DeflateParams> {
        let extra: Vec<(&str, &str)> = ext
            .iter()
            .map(|e| ("sec-websocket-extensions", *e))
            .collect();
        ok(
            &request(&extra),
            &HandshakeConfig {
                deflate: true,
                subprotocols: vec![],
            },
        )
        .deflate
    }

    fn params(s: u8, c: u8) -> Option<DeflateParams> {
        Some(DeflateParams {
            server_max_window_bits: s,
            client_max_window_bits: c,
        })
    }

    #[test]
    fn deflate_offers() {
        assert_eq!(deflate_for(&[]), None);
        assert_eq!(deflate_for(&["permessage-deflate"]), params(15, 15));
        assert_eq!(
            deflate_for(&["permessage-deflate; client_max_window_bits"]),
            params(15, 15)
        );
        assert_eq!(
            deflate_for(&["permessage-deflate; client_max_window_bits=10"]),
            params(15, 10)
        );
        assert_eq!(
            deflate_for(&["permessage-deflate; client_max_window_bits=\"12\""]),
            params(15, 12)
        );
        assert_eq!(
            deflate_for(&["permessage-deflate; server_max_window_bits=9"]),
            params(9, 15)
        );
        assert_eq!(
            deflate_for(&["permessage-deflate; server_max_window_bits=8"]),
            params(8, 15)
        );
        assert_eq!(
            deflate_for(&[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ]),
            params(15, 15)
        );
        assert_eq!(deflate_for(&["x-webkit-deflate-frame"]), None);
        // Not negotiated when the server does not offer compression.
        let h = request(&[("sec-websocket-extensions", "permessage-deflate")]);
        assert_eq!(ok(&h, &HandshakeConfig::default()).deflate, None);
    }

    #[test]
    fn deflate_invalid_offers_fall_through() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(deflate_for(&[bad]), None, "{bad}");
            // Falls through to the next offer on the same line...
            let joined = format!("{bad}, permessage-deflate; client_max_window_bits=11");
            assert_eq!(deflate_for(&[&joined]), params(15, 11), "{joined}");
            // ...and on the next header line.
            assert_eq!(
                deflate_for(&[bad, "permessage-deflate; server_max_window_bits=12"]),
                params(12, 15)
            );
        }
        // First acceptable offer wins.
        assert_eq!(
            deflate_for(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]),
            params(10, 15)
        );
    }

    #[test]
    fn deflate_response_header() {
        let h = request(&[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )]);
        let a = ok(
            &h,
            &HandshakeConfig {
                deflate: true,
                subprotocols: vec![],
            },
        );
        assert_eq!(
            a.response_headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let h = request(&[(
            "sec-websocket-extensions",
            "permessage-deflate; server_max_window_bits=10",
        )]);
        let a = ok(
            &h,
            &HandshakeConfig {
                deflate: true,
                subprotocols: vec![],
            },
        );
        assert_eq!(
            a.response_headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
    }

    /// A parsed head's view: name/value pairs in their order, as a server's own parser
    /// gives them.
    struct Lines<'a>(Vec<(&'a str, &'a [u8])>);

    impl HeaderLines for Lines<'_> {
        fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
            self.0
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_str()))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn header_lines_view_decides_like_the_header_map() {
        let cfg = HandshakeConfig {
            deflate: true,
            subprotocols: vec!["v2.json".into(), "v1.json".into()],
        };
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("Connection", "keep-alive"), ("CONNECTION", "Upgrade")],
            vec![("upgrade", "h2c")],
            vec![("sec-websocket-key", "")],
            vec![("sec-websocket-key", "not base64!")],
            vec![
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            vec![("sec-websocket-version", "8")],
            vec![
                ("Sec-WebSocket-Protocol", "v1.json"),
                ("sec-websocket-protocol", "x"),
            ],
            vec![(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; foo, permessage-deflate; server_max_window_bits=10",
            )],
        ];
        for extra in cases {
            let map = request(&extra);
            let lines = Lines(
                map.iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes()))
                    .collect(),
            );
            for (method, version) in [
                (Method::GET, Version::HTTP_11),
                (Method::POST, Version::HTTP_11),
                (Method::GET, Version::HTTP_10),
            ] {
                assert_eq!(
                    accept(&method, version, &lines, &cfg),
                    accept(&method, version, &map, &cfg),
                    "{extra:?} {method} {version:?}"
                );
            }
        }
    }

    #[test]
    fn header_value_rule_is_http_s() {
        for value in [
            "v1.json",
            "a\tb",
            "",
            "caf\u{e9}",
            "a\u{7f}",
            "a\nb",
            "a\rb",
            "\0",
        ] {
            assert_eq!(
                is_header_value(value),
                HeaderValue::from_str(value).is_ok(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn written_response_carries_the_response_headers() {
        let cfg = HandshakeConfig {
            deflate: true,
            subprotocols: vec!["v1.json".into()],
        };
        for extra in [
            vec![],
            vec![("sec-websocket-protocol", "v1.json")],
            vec![
                ("sec-websocket-protocol", "v1.json"),
                (
                    "sec-websocket-extensions",
                    "permessage-deflate; server_max_window_bits=10",
                ),
            ],
        ] {
            let a = ok(&request(&extra), &cfg);
            let mut out = b"kept".to_vec();
            a.write_response(&mut out);
            let text = std::str::from_utf8(&out).expect("ascii");
            let text = text.strip_prefix("kept").expect("appended");
            let head = text.strip_suffix("\r\n\r\n").expect("ends the head");
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some("HTTP/1.1 101 Switching Protocols"));
            let written: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(": ").expect("a header line");
                    (n.to_string(), v.to_string())
                })
                .collect();
            let expected: Vec<(String, String)> = a
                .response_headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        v.to_str().expect("ascii").to_string(),
                    )
                })
                .collect();
            assert_eq!(written, expected, "{extra:?}");
        }
    }
}
