//! Connection and subscription tokens (JWT, HS256 and RS256).
//!
//! Connection token claims: `sub` (user id, required), `exp` (seconds since the epoch;
//! required unless `client.token_require_exp = false`), `channels` (optional: the only
//! channels the connection may subscribe to, see docs/PROTOCOL.md), `info` (optional JSON
//! shown in presence). Subscription token claims: `sub` (must equal the connection's user),
//! `channel` (must equal the channel), `exp` (as above), `info`.
//!
//! Both kinds: `nbf` is checked when present; `aud` and `iss` must be present and match
//! when `client.token_audience` / `client.token_issuer` are set. The two kinds cannot be
//! swapped: a subscription token always names a `channel`, and a token that names one is
//! refused as a connection token (otherwise it would open a connection that the
//! `channels` restriction of the user's real connection token does not bind).

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ClientConfig;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, malformed token, wrong algorithm or claims, not yet valid (`nbf`),
    /// wrong audience or issuer, or a token of the other kind.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims of a connection token.
#[derive(Debug, Deserialize)]
pub struct ConnectClaims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Channels to subscribe on connect.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Connection info shown in presence.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// Only subscription tokens carry `channel`; its presence marks a token of the other
    /// kind, which is refused.
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
}

/// Claims of a subscription token (for private channels).
#[derive(Debug, Deserialize)]
pub struct SubscribeClaims {
    /// User id; must match the connection's.
    pub sub: String,
    /// The channel it grants.
    pub channel: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Channel info shown in presence.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
}

/// Token verification keys and claim rules.
pub struct Auth {
    hmac: Option<DecodingKey>,
    /// HS256 key of subscription tokens when it differs from `hmac`
    /// (`client.subscription_token_hmac_secret`).
    subscription_hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    /// `exp` must be present (`client.token_require_exp`).
    require_exp: bool,
    /// Required `aud` value (`client.token_audience`), when set.
    audience: Option<String>,
    /// Required `iss` value (`client.token_issuer`), when set.
    issuer: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hmac", &self.hmac.is_some())
            .field("subscription_hmac", &self.subscription_hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .finish()
    }
}

impl Auth {
    /// Keys from the client configuration (the RSA key is PEM text by now).
    pub fn new(config: &ClientConfig) -> anyhow::Result<Self> {
        let hmac = (!config.token_hmac_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.token_hmac_secret.as_bytes()));
        let subscription_hmac = (!config.subscription_token_hmac_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.subscription_token_hmac_secret.as_bytes()));
        let rsa = if config.token_rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.token_rsa_public_key.as_bytes())
                    .map_err(|e| anyhow::anyhow!("client.token_rsa_public_key: {e}"))?,
            )
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Self {
            hmac,
            subscription_hmac,
            rsa,
            require_exp: config.token_require_exp,
            audience: non_empty(&config.token_audience),
            issuer: non_empty(&config.token_issuer),
        })
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some()
    }

    /// Decodes and validates a token; `hmac` is the HS256 key of its kind.
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        hmac: Option<&DecodingKey>,
    ) -> Result<T, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => hmac,
            Algorithm::RS256 => self.rsa.as_ref(),
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} not accepted"
                )));
            }
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        let mut required = HashSet::from(["sub".to_string()]);
        if self.require_exp {
            required.insert("exp".to_string());
        }
        validation.validate_exp = true;
        // `nbf` is checked when present, with the same zero leeway as `exp`.
        validation.validate_nbf = true;
        validation.leeway = 0;
        // Unset audience: `aud` is not checked (the library would otherwise refuse every
        // token that carries one).
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.insert("aud".to_string());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.insert("iss".to_string());
        }
        validation.required_spec_claims = required;
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    /// Verifies a connection token.
    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, AuthError> {
        let claims: ConnectClaims = self.decode(token, self.hmac.as_ref())?;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        if claims.channel.is_some() {
            return Err(AuthError::Invalid(
                "a subscription token (it has `channel`) is not a connection token".into(),
            ));
        }
        Ok(claims)
    }

    /// Verifies a subscription token for `channel` held by `user`.
    pub fn verify_subscribe(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscribeClaims, AuthError> {
        // A separate secret, when configured, also keeps the kinds apart by signature.
        let hmac = self.subscription_hmac.as_ref().or(self.hmac.as_ref());
        let claims: SubscribeClaims = self.decode(token, hmac)?;
        if claims.sub != user {
            return Err(AuthError::Invalid("token is for another user".into()));
        }
        if claims.channel != channel {
            return Err(AuthError::Invalid("token is for another channel".into()));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn auth() -> Auth {
        auth_with(ClientConfig::default())
    }

    fn auth_with(config: ClientConfig) -> Auth {
        Auth::new(&ClientConfig {
            token_hmac_secret: "secret".into(),
            ..config
        })
        .expect("keys")
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_valid_hs256() {
        let t = token(
            serde_json::json!({"sub": "alice", "exp": now() + 60, "channels": ["a"]}),
            "secret",
        );
        let c = auth().verify_connect(&t).expect("valid");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.channels, vec!["a".to_string()]);
    }

    #[test]
    fn refuses_expired_and_forged() {
        let expired = token(serde_json::json!({"sub": "a", "exp": now() - 10}), "secret");
        assert_eq!(
            auth().verify_connect(&expired).expect_err("expired"),
            AuthError::Expired
        );
        let forged = token(serde_json::json!({"sub": "a"}), "other");
        assert!(matches!(
            auth().verify_connect(&forged),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth().verify_connect("garbage"),
            Err(AuthError::Invalid(_))
        ));
        let no_sub = token(serde_json::json!({"exp": now() + 60}), "secret");
        assert!(matches!(
            auth().verify_connect(&no_sub),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn subscription_token_binds_user_and_channel() {
        let t = token(
            serde_json::json!({"sub": "a", "channel": "p:x", "exp": now() + 60}),
            "secret",
        );
        assert!(auth().verify_subscribe(&t, "a", "p:x").is_ok());
        assert!(auth().verify_subscribe(&t, "b", "p:x").is_err());
        assert!(auth().verify_subscribe(&t, "a", "p:y").is_err());
    }

    /// Issue 6 item 3: a subscription token opened a connection (and sidestepped the
    /// `channels` restriction of the user's connection token).
    #[test]
    fn token_kinds_are_not_interchangeable() {
        let sub_token = token(
            serde_json::json!({"sub": "a", "channel": "p:x", "exp": now() + 60}),
            "secret",
        );
        assert!(matches!(
            auth().verify_connect(&sub_token),
            Err(AuthError::Invalid(_))
        ));
        let conn_token = token(
            serde_json::json!({"sub": "a", "exp": now() + 60, "channels": ["p:x"]}),
            "secret",
        );
        assert!(matches!(
            auth().verify_subscribe(&conn_token, "a", "p:x"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn exp_is_required_unless_configured_otherwise() {
        let no_exp = token(serde_json::json!({"sub": "a"}), "secret");
        assert!(matches!(
            auth().verify_connect(&no_exp),
            Err(AuthError::Invalid(_))
        ));
        let sub_no_exp = token(serde_json::json!({"sub": "a", "channel": "c"}), "secret");
        assert!(auth().verify_subscribe(&sub_no_exp, "a", "c").is_err());
        let lax = auth_with(ClientConfig {
            token_require_exp: false,
            ..ClientConfig::default()
        });
        assert!(lax.verify_connect(&no_exp).is_ok());
        assert!(lax.verify_subscribe(&sub_no_exp, "a", "c").is_ok());
    }

    #[test]
    fn nbf_is_checked_when_present() {
        let later = token(
            serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}),
            "secret",
        );
        assert!(matches!(
            auth().verify_connect(&later),
            Err(AuthError::Invalid(_))
        ));
        let earlier = token(
            serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() - 1}),
            "secret",
        );
        assert!(auth().verify_connect(&earlier).is_ok());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let exp = now() + 60;
        let plain = token(serde_json::json!({"sub": "a", "exp": exp}), "secret");
        let right = token(
            serde_json::json!({"sub": "a", "exp": exp, "aud": "rt", "iss": "backend"}),
            "secret",
        );
        let wrong_aud = token(
            serde_json::json!({"sub": "a", "exp": exp, "aud": "other", "iss": "backend"}),
            "secret",
        );
        let wrong_iss = token(
            serde_json::json!({"sub": "a", "exp": exp, "aud": "rt", "iss": "other"}),
            "secret",
        );
        // Not configured: neither is checked, whatever the token carries.
        assert!(auth().verify_connect(&plain).is_ok());
        assert!(auth().verify_connect(&wrong_aud).is_ok());
        let strict = auth_with(ClientConfig {
            token_audience: "rt".into(),
            token_issuer: "backend".into(),
            ..ClientConfig::default()
        });
        assert!(strict.verify_connect(&right).is_ok());
        for bad in [&plain, &wrong_aud, &wrong_iss] {
            assert!(
                matches!(strict.verify_connect(bad), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn separate_subscription_secret() {
        let auth = auth_with(ClientConfig {
            subscription_token_hmac_secret: "sub-secret".into(),
            ..ClientConfig::default()
        });
        let claims = serde_json::json!({"sub": "a", "channel": "c", "exp": now() + 60});
        assert!(
            auth.verify_subscribe(&token(claims.clone(), "sub-secret"), "a", "c")
                .is_ok()
        );
        assert!(
            auth.verify_subscribe(&token(claims, "secret"), "a", "c")
                .is_err(),
            "signed with the connection secret"
        );
        let conn = token(serde_json::json!({"sub": "a", "exp": now() + 60}), "secret");
        assert!(auth.verify_connect(&conn).is_ok());
        let conn_sub = token(
            serde_json::json!({"sub": "a", "exp": now() + 60}),
            "sub-secret",
        );
        assert!(auth.verify_connect(&conn_sub).is_err());
    }
}
