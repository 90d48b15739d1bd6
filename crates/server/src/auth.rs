//! Connection and subscription tokens (JWT, HS256 and RS256).
//!
//! Connection token claims: `sub` (user id, required), `exp` (optional, seconds since the
//! epoch), `channels` (optional: channels subscribed on connect, see docs/PROTOCOL.md),
//! `info` (optional JSON shown in presence). Subscription token claims: `sub` (must equal
//! the connection's user), `channel` (must equal the channel), `exp` (optional), `info`.

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
    /// Bad signature, malformed token, wrong algorithm or claims.
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

/// Token verification keys.
pub struct Auth {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .finish()
    }
}

impl Auth {
    /// Keys from the client configuration (the RSA key is PEM text by now).
    pub fn new(config: &ClientConfig) -> anyhow::Result<Self> {
        let hmac = (!config.token_hmac_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.token_hmac_secret.as_bytes()));
        let rsa = if config.token_rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.token_rsa_public_key.as_bytes())
                    .map_err(|e| anyhow::anyhow!("client.token_rsa_public_key: {e}"))?,
            )
        };
        Ok(Self { hmac, rsa })
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        self.hmac.is_some() || self.rsa.is_some()
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            Algorithm::RS256 => self.rsa.as_ref(),
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} not accepted"
                )));
            }
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::from(["sub".to_string()]);
        validation.validate_exp = true;
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    /// Verifies a connection token.
    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, AuthError> {
        let claims: ConnectClaims = self.decode(token)?;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
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
        let claims: SubscribeClaims = self.decode(token)?;
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
        Auth::new(&ClientConfig {
            token_hmac_secret: "secret".into(),
            ..ClientConfig::default()
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
        let t = token(serde_json::json!({"sub": "a", "channel": "p:x"}), "secret");
        assert!(auth().verify_subscribe(&t, "a", "p:x").is_ok());
        assert!(auth().verify_subscribe(&t, "b", "p:x").is_err());
        assert!(auth().verify_subscribe(&t, "a", "p:y").is_err());
    }
}
