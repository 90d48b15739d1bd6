//! The command-line conveniences beside `serve`: a production configuration with fresh
//! secrets (`genconfig`), tokens for trying a node out (`gentoken`, `gensubtoken`) and
//! a token's verdict as the node would give it (`checktoken`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::auth::{Auth, AuthError};
use crate::config::Config;

/// Why a tool could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A duration such as `1h30m` could not be read.
    #[error("invalid duration `{0}`: use a number with a unit, e.g. 90s, 30m, 1h, 7d, 1h30m")]
    Duration(String),
    /// No HMAC secret to sign with.
    #[error(
        "no client.token_hmac_secret is configured to sign with: set it in the config file \
         (`starling genconfig` makes one), with STARLING_CLIENT_TOKEN_HMAC_SECRET or with \
         --set client.token_hmac_secret=..."
    )]
    NoSecret,
    /// `--info` is not JSON.
    #[error("--info must be JSON: {0}")]
    Info(serde_json::Error),
    /// The operating system's random source failed.
    #[error("reading random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Reads a duration: a sequence of numbers each with a unit `s`, `m`, `h` or `d`
/// (`90s`, `1h30m`, `7d`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ToolError> {
    let bad = || ToolError::Duration(text.to_string());
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(bad)?;
    }
    if number.is_some() {
        // A trailing number without a unit after a unit (`1h30`) is ambiguous.
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Prints a duration the way `parse_duration` reads it (`1h30m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            let _ = write!(out, "{}{unit}", secs / size);
            secs %= size;
        }
    }
    out
}

/// `bytes` random bytes from the kernel, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String, ToolError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(ToolError::Random)?;
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// A production configuration with fresh secrets, as TOML text with comments.
pub fn generate_config() -> Result<String, ToolError> {
    let api_key = random_hex(24)?;
    let token_secret = random_hex(32)?;
    let admin_password = random_hex(12)?;
    let admin_secret = random_hex(32)?;
    Ok(format!(
        r#"# Starling configuration, made by `starling genconfig`. Every key is explained in
# docs/OPERATIONS.md; `starling config --config FILE` prints all of them with their
# values, `starling checkconfig --config FILE` checks this file.
# Keep this file secret: it holds the API key and the token secret.

[server]
# Reachable from other machines: put it behind a TLS-terminating balancer.
listen = "0.0.0.0:8000"
# This node's name in a cluster and in the admin pages; empty = host name and port.
name = ""

[websocket]
# The origins whose pages may connect (browsers send Origin); "*" allows any.
allowed_origins = ["https://app.example.com"]

[client]
# Connection tokens (JWT, HS256) are signed by your backend with this secret; try one
# with `starling gentoken --config FILE --user 42`.
token_hmac_secret = "{token_secret}"
allow_anonymous = false

[api]
# Backends call the HTTP API with `Authorization: apikey <key>`.
key = "{api_key}"

[admin]
# The web dashboard at /admin.
enabled = true
password = "{admin_password}"
secret = "{admin_secret}"

[storage]
# The durable message log (history and recovery survive a restart).
dir = "/var/lib/starling"

# Channels without a `ns:` prefix are in `default`; add a section per namespace.
[namespaces.default]
history_size = 100
history_ttl_secs = 300
presence = true
join_leave = true
"#
    ))
}

/// The claims of a token to mint.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// The user id (`sub`).
    pub user: String,
    /// Lifetime from now; `None`: no `exp` (refused unless `client.token_require_exp =
    /// false`).
    pub ttl: Option<Duration>,
    /// Connection tokens: the only channels the connection may subscribe to (empty: any).
    pub channels: Vec<String>,
    /// Subscription tokens: the channel granted.
    pub channel: Option<String>,
    /// `info` (connection or channel info shown in presence), JSON text.
    pub info: Option<String>,
}

/// Signs a connection token (or, with `channel`, a subscription token) with the
/// configured HS256 secret of its kind, adding `aud`/`iss` when the node requires them.
pub fn mint_token(config: &Config, req: &TokenRequest) -> Result<String, ToolError> {
    let client = &config.client;
    let secret = match &req.channel {
        Some(_) if !client.subscription_token_hmac_secret.is_empty() => {
            &client.subscription_token_hmac_secret
        }
        _ => &client.token_hmac_secret,
    };
    if secret.is_empty() {
        return Err(ToolError::NoSecret);
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(req.user.clone()));
    let now = now_secs();
    claims.insert("iat".into(), Value::from(now));
    if let Some(ttl) = req.ttl {
        claims.insert("exp".into(), Value::from(now.saturating_add(ttl.as_secs())));
    }
    if let Some(channel) = &req.channel {
        claims.insert("channel".into(), Value::String(channel.clone()));
    } else if !req.channels.is_empty() {
        claims.insert("channels".into(), Value::from(req.channels.clone()));
    }
    if let Some(info) = &req.info {
        let value: Value = serde_json::from_str(info).map_err(ToolError::Info)?;
        claims.insert("info".into(), value);
    }
    if !client.token_audience.is_empty() {
        claims.insert("aud".into(), Value::String(client.token_audience.clone()));
    }
    if !client.token_issuer.is_empty() {
        claims.insert("iss".into(), Value::String(client.token_issuer.clone()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(ToolError::Sign)
}

/// What a node would make of a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid connection token.
    Connection {
        /// `sub`.
        user: String,
        /// `exp`, seconds since the Unix epoch.
        expires_at: Option<u64>,
        /// The channel list, if any.
        channels: Vec<String>,
    },
    /// A valid subscription token.
    Subscription {
        /// `sub`.
        user: String,
        /// The channel granted.
        channel: String,
        /// `exp`, seconds since the Unix epoch.
        expires_at: Option<u64>,
    },
    /// Refused, with the reason the node gives.
    Refused(AuthError),
}

/// Verifies `token` as the node configured by `config` would: as a subscription token
/// when it names a `channel`, else as a connection token.
pub fn check_token(config: &Config, token: &str) -> anyhow::Result<Verdict> {
    let auth = Auth::new(&config.client)?;
    // The claims are read unverified only to learn the token's kind and its user and
    // channel; the verdict comes from the verification below.
    let unverified = unverified_claims(token);
    let channel = unverified
        .as_ref()
        .and_then(|c| c.get("channel"))
        .and_then(Value::as_str);
    Ok(match channel {
        Some(channel) => {
            let user = unverified
                .as_ref()
                .and_then(|c| c.get("sub"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            match auth.verify_subscribe(token, user, channel) {
                Ok(claims) => Verdict::Subscription {
                    user: claims.sub,
                    channel: claims.channel,
                    expires_at: claims.exp,
                },
                Err(e) => Verdict::Refused(e),
            }
        }
        None => match auth.verify_connect(token) {
            Ok(claims) => Verdict::Connection {
                user: claims.sub,
                expires_at: claims.exp,
                channels: claims.channels,
            },
            Err(e) => Verdict::Refused(e),
        },
    })
}

/// The payload of a JWT, not verified.
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = b64url_decode(payload)?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Base64url without padding (the JWT alphabet).
fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A verdict as the lines `checktoken` prints.
pub fn describe(verdict: &Verdict) -> String {
    let expiry = |at: &Option<u64>| match at {
        Some(at) => {
            let left = at.saturating_sub(now_secs());
            format!(
                "expires in {} (exp {at})",
                format_duration(Duration::from_secs(left))
            )
        }
        None => "never expires (no exp)".into(),
    };
    match verdict {
        Verdict::Connection {
            user,
            expires_at,
            channels,
        } => {
            let mut s = format!(
                "valid connection token for user {user:?}, {}",
                expiry(expires_at)
            );
            if !channels.is_empty() {
                let _ = write!(s, "; channels: {}", channels.join(", "));
            }
            s
        }
        Verdict::Subscription {
            user,
            channel,
            expires_at,
        } => format!(
            "valid subscription token for user {user:?} on channel {channel:?}, {}",
            expiry(expires_at)
        ),
        Verdict::Refused(e) => format!("refused: {e}"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str) -> Config {
        let mut c = Config::default();
        c.client.token_hmac_secret = secret.into();
        c
    }

    #[test]
    fn durations_read_and_print() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("1h30m", 5400),
            ("7d", 604_800),
            ("1d2h3m4s", 93_784),
        ] {
            assert_eq!(parse_duration(text).expect(text).as_secs(), secs, "{text}");
        }
        for bad in ["", "h", "1x", "1h30", "-5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(93_784)), "1d2h3m4s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn random_secrets_differ() {
        let a = random_hex(32).expect("random");
        let b = random_hex(32).expect("random");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_generated_config_loads_with_its_secrets() {
        let text = generate_config().expect("config");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("starling.toml");
        std::fs::write(&path, &text).expect("write");
        let c = Config::load(Some(&path), std::iter::empty(), &[]).expect("loads");
        assert_eq!(c.api.key.len(), 48);
        assert_eq!(c.client.token_hmac_secret.len(), 64);
        assert!(c.admin.enabled && c.admin.password.len() == 24);
        assert!(!c.client.allow_anonymous && !c.server.dev);
        assert_ne!(
            generate_config().expect("again"),
            text,
            "fresh secrets each time"
        );
    }

    #[test]
    fn minted_tokens_verify_as_their_kind() {
        let c = config("s3cret");
        let token = mint_token(
            &c,
            &TokenRequest {
                user: "42".into(),
                ttl: Some(Duration::from_secs(3600)),
                channels: vec!["news".into()],
                info: Some(r#"{"name":"Ann"}"#.into()),
                ..Default::default()
            },
        )
        .expect("token");
        match check_token(&c, &token).expect("check") {
            Verdict::Connection {
                user,
                expires_at,
                channels,
            } => {
                assert_eq!(user, "42");
                assert!(expires_at.is_some_and(|at| at > now_secs() + 3500));
                assert_eq!(channels, vec!["news".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let sub = mint_token(
            &c,
            &TokenRequest {
                user: "42".into(),
                ttl: Some(Duration::from_secs(60)),
                channel: Some("secret:plans".into()),
                ..Default::default()
            },
        )
        .expect("token");
        let verdict = check_token(&c, &sub).expect("check");
        assert!(
            matches!(&verdict, Verdict::Subscription { channel, .. } if channel == "secret:plans"),
            "{verdict:?}"
        );
        assert!(describe(&verdict).starts_with("valid subscription token for user \"42\""));
    }

    #[test]
    fn refused_tokens_say_why() {
        let token = mint_token(
            &config("one"),
            &TokenRequest {
                user: "u".into(),
                ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .expect("token");
        let verdict = check_token(&config("another"), &token).expect("check");
        assert!(
            matches!(verdict, Verdict::Refused(AuthError::Invalid(_))),
            "{verdict:?}"
        );
        assert!(describe(&verdict).starts_with("refused: invalid token"));
        let no_exp = mint_token(
            &config("one"),
            &TokenRequest {
                user: "u".into(),
                ..Default::default()
            },
        )
        .expect("token");
        assert!(matches!(
            check_token(&config("one"), &no_exp).expect("check"),
            Verdict::Refused(AuthError::Invalid(_))
        ));
        assert!(matches!(
            check_token(&config("one"), "not a token").expect("check"),
            Verdict::Refused(AuthError::Invalid(_))
        ));
        assert!(matches!(
            mint_token(&Config::default(), &TokenRequest::default()),
            Err(ToolError::NoSecret)
        ));
    }
}
