//! The dashboard's side of the server: logging in with `admin.password`, the session
//! tokens that follow (HS256, signed with `admin.secret`), and the snapshot the dashboard
//! polls once a second. A session also opens the HTTP API (`Authorization: Bearer
//! <session>`), so the dashboard's inspections and actions go through the same endpoints
//! as a backend's, without the API key ever reaching a browser.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::config::AdminConfig;

/// The claims of a dashboard session.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    /// Always `"admin"`: a client connection token (same algorithm, another secret)
    /// never carries it.
    sub: String,
    /// Marks the token's kind.
    adm: bool,
    exp: u64,
}

/// The dashboard's server side: signs and checks its sessions, keeps its channel
/// readings.
pub struct Admin {
    encoding: EncodingKey,
    decoding: DecodingKey,
    password: String,
    /// Development mode without a password: the login takes any password.
    open: bool,
    ttl_secs: u64,
    top: parking_lot::Mutex<TopChannels>,
    /// Wrong passwords in the current minute (start, count): a guesser gets
    /// [`MAX_FAILED_LOGINS`] a minute for the whole node, whatever its address.
    failures: parking_lot::Mutex<(Instant, u32)>,
}

/// Wrong passwords a node takes per minute before it refuses logins (429) until the
/// minute is over.
pub const MAX_FAILED_LOGINS: u32 = 10;

/// Channels by publication rate, from two readings of every channel's offset at least
/// [`TOP_INTERVAL`] apart (the walk costs what `/api/channels` costs, so the dashboards'
/// polls share one reading per interval).
#[derive(Default)]
struct TopChannels {
    last: Option<(Instant, HashMap<Arc<str>, u64>)>,
    ranked: Vec<Value>,
}

/// Least time between two readings of the channels' offsets.
const TOP_INTERVAL: Duration = Duration::from_secs(5);
/// Channels listed.
const TOP_LISTED: usize = 10;

impl TopChannels {
    /// The ranking, read anew when the last reading is [`TOP_INTERVAL`] old.
    fn ranked(
        &mut self,
        now: Instant,
        read: impl FnOnce() -> Vec<(Arc<str>, usize, u64)>,
    ) -> Vec<Value> {
        if self
            .last
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < TOP_INTERVAL)
        {
            return self.ranked.clone();
        }
        let reading = read();
        if let Some((at, before)) = &self.last {
            let secs = now.duration_since(*at).as_secs_f64().max(0.001);
            let mut rates: Vec<(f64, &Arc<str>, usize)> = reading
                .iter()
                .filter_map(|(name, subscribers, offset)| {
                    // A new channel counts from zero; a new epoch (offset back) is skipped.
                    let was = before.get(name).copied().unwrap_or(0);
                    (*offset > was).then(|| ((*offset - was) as f64 / secs, name, *subscribers))
                })
                .collect();
            rates.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            self.ranked = rates
                .into_iter()
                .take(TOP_LISTED)
                .map(|(rate, name, subscribers)| {
                    json!({"channel": &**name, "per_second": rate, "subscribers": subscribers})
                })
                .collect();
        }
        let offsets = reading
            .into_iter()
            .map(|(name, _, offset)| (name, offset))
            .collect();
        self.last = Some((now, offsets));
        self.ranked.clone()
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("open", &self.open).finish()
    }
}

impl Admin {
    /// The keys of an enabled dashboard (`None` when `admin.enabled` is off). An empty
    /// `admin.secret` takes a random one for the life of the process.
    pub fn new(config: &AdminConfig, dev: bool) -> anyhow::Result<Option<Admin>> {
        if !config.enabled {
            return Ok(None);
        }
        let secret = if config.secret.is_empty() {
            crate::tools::random_hex(32)?
        } else {
            config.secret.clone()
        };
        Ok(Some(Admin {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            password: config.password.clone(),
            open: dev && config.password.is_empty(),
            ttl_secs: config.session_ttl_secs,
            top: parking_lot::Mutex::default(),
            failures: parking_lot::Mutex::new((Instant::now(), 0)),
        }))
    }

    /// A session for a correct password (compared in constant time); `Err(())` while
    /// logins are refused for too many wrong passwords this minute.
    fn login_at(&self, password: &str, now: Instant) -> Result<Option<(String, u64)>, ()> {
        let mut failures = self.failures.lock();
        if now.duration_since(failures.0) >= Duration::from_secs(60) {
            *failures = (now, 0);
        }
        if failures.1 >= MAX_FAILED_LOGINS {
            return Err(());
        }
        if !self.open
            && !crate::api::constant_time_eq(password.as_bytes(), self.password.as_bytes())
        {
            failures.1 += 1;
            return Ok(None);
        }
        drop(failures);
        Ok(self.session())
    }

    /// A new session token, and its lifetime in seconds.
    fn session(&self) -> Option<(String, u64)> {
        let claims = Session {
            sub: "admin".into(),
            adm: true,
            exp: now_secs().saturating_add(self.ttl_secs),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()?;
        Some((token, self.ttl_secs))
    }

    /// Whether `token` is a live session of this node's dashboard.
    pub fn verify(&self, token: &str) -> bool {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Session>(token, &self.decoding, &validation)
            .is_ok_and(|data| data.claims.adm && data.claims.sub == "admin")
    }

    /// Whether an `Authorization` header value carries a live session (`Bearer <token>`).
    pub fn authorizes(&self, authorization: &[u8]) -> bool {
        authorization
            .strip_prefix(b"Bearer ")
            .and_then(|t| std::str::from_utf8(t).ok())
            .is_some_and(|t| self.verify(t.trim()))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message}})),
    )
        .into_response()
}

/// `GET /admin/api/session`: whether the dashboard is on and needs a password.
pub async fn session(State(state): State<Arc<AppState>>) -> Response {
    match &state.admin {
        None => crate::ops::not_found_response(),
        Some(auth) => Json(json!({
            "password_required": !auth.open,
            "node": &state.name,
            "version": env!("CARGO_PKG_VERSION"),
        }))
        .into_response(),
    }
}

/// The body of a login.
#[derive(Debug, Deserialize)]
pub struct Login {
    #[serde(default)]
    password: String,
}

/// `POST /admin/api/login`: a session token for the right password (401 otherwise).
pub async fn login(State(state): State<Arc<AppState>>, body: Option<Json<Login>>) -> Response {
    let Some(auth) = &state.admin else {
        return crate::ops::not_found_response();
    };
    let password = body.map(|Json(b)| b.password).unwrap_or_default();
    match auth.login_at(&password, Instant::now()) {
        Ok(Some((token, ttl))) => Json(json!({"token": token, "expires_in": ttl})).into_response(),
        Ok(None) => {
            state.metrics.error(401);
            error(StatusCode::UNAUTHORIZED, "wrong password")
        }
        Err(()) => {
            state.metrics.error(429);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many wrong passwords: try again in a minute",
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("60"),
            );
            r
        }
    }
}

/// `GET /admin/api/snapshot`: this node's numbers (every metric of `/metrics`, by its
/// exposition name), the nodes of the cluster and this node's busiest channels, for the
/// dashboard to chart. Counters are totals: the dashboard makes rates of two snapshots.
pub async fn snapshot(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(auth) = &state.admin else {
        return crate::ops::not_found_response();
    };
    let allowed = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| auth.authorizes(v.as_bytes()));
    if !allowed {
        return error(
            StatusCode::UNAUTHORIZED,
            "log in first (Authorization: Bearer <session>)",
        );
    }
    let text = crate::metrics::render(&state);
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let top = auth
        .top
        .lock()
        .ranked(Instant::now(), || state.hub.channel_offsets());
    Json(json!({
        "time_ms": u64::try_from(time_ms).unwrap_or(u64::MAX),
        "info": crate::api::info_json(&state),
        "metrics": parse_exposition(&text),
        "top_channels": top,
    }))
    .into_response()
}

/// The samples of a Prometheus text exposition, by `name{labels}` as written.
pub fn parse_exposition(text: &str) -> BTreeMap<&str, Value> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| {
            let n: f64 = value.parse().ok()?;
            let v = serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number);
            Some((name, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(password: &str, dev: bool) -> Admin {
        let config = AdminConfig {
            enabled: true,
            password: password.into(),
            ..AdminConfig::default()
        };
        Admin::new(&config, dev).expect("keys").expect("enabled")
    }

    #[test]
    fn sessions_need_the_password_and_this_secret() {
        let a = auth("pw", false);
        let now = Instant::now();
        assert_eq!(a.login_at("nope", now), Ok(None));
        let (token, ttl) = a
            .login_at("pw", now)
            .expect("not limited")
            .expect("session");
        assert_eq!(ttl, 8 * 3600);
        assert!(a.verify(&token));
        assert!(a.authorizes(format!("Bearer {token}").as_bytes()));
        assert!(!a.authorizes(format!("apikey {token}").as_bytes()));
        // Another process (another random secret) does not take it.
        assert!(!auth("pw", false).verify(&token));
        assert!(!a.verify("x.y.z"));
    }

    #[test]
    fn dev_without_a_password_is_open_and_off_is_none() {
        let now = Instant::now();
        assert!(auth("", true).login_at("x", now).expect("ok").is_some());
        assert!(
            auth("pw", true).login_at("x", now).expect("ok").is_none(),
            "a set password holds in dev"
        );
        let off = AdminConfig::default();
        assert!(Admin::new(&off, true).expect("ok").is_none());
    }

    #[test]
    fn wrong_passwords_are_limited_per_minute() {
        let a = auth("pw", false);
        let t0 = Instant::now();
        for _ in 0..MAX_FAILED_LOGINS {
            assert_eq!(a.login_at("guess", t0), Ok(None));
        }
        assert_eq!(a.login_at("guess", t0), Err(()), "limited");
        assert!(
            a.login_at("pw", t0).is_err(),
            "even the right one, this minute"
        );
        let later = t0 + Duration::from_secs(61);
        assert!(a.login_at("pw", later).expect("a new minute").is_some());
    }

    #[test]
    fn top_channels_rank_by_rate_between_readings() {
        let mut top = TopChannels::default();
        let t0 = Instant::now();
        let name = |s: &str| -> Arc<str> { Arc::from(s) };
        let first = vec![(name("a"), 1, 10), (name("b"), 5, 100), (name("c"), 0, 7)];
        assert!(
            top.ranked(t0, || first).is_empty(),
            "one reading gives no rate"
        );
        let unused = || -> Vec<(Arc<str>, usize, u64)> { panic!("read within the interval") };
        assert!(top.ranked(t0 + Duration::from_secs(1), unused).is_empty());
        let second = vec![
            (name("a"), 1, 60),
            (name("b"), 5, 110),
            (name("c"), 0, 7),
            (name("d"), 2, 5),
        ];
        let ranked = top.ranked(t0 + Duration::from_secs(10), || second);
        let names: Vec<&str> = ranked
            .iter()
            .filter_map(|r| r["channel"].as_str())
            .collect();
        assert_eq!(names, ["a", "b", "d"], "idle c is left out");
        assert_eq!(ranked[0]["per_second"], json!(5.0));
        assert_eq!(ranked[0]["subscribers"], json!(1));
    }

    #[test]
    fn expositions_parse_to_samples() {
        let text = "# HELP a x\n# TYPE a gauge\na 3\nb_total{code=\"4500\"} 7\nc 0.25\n";
        let m = parse_exposition(text);
        assert_eq!(m["a"], json!(3.0));
        assert_eq!(m["b_total{code=\"4500\"}"], json!(7.0));
        assert_eq!(m["c"], json!(0.25));
        assert_eq!(m.len(), 3);
    }
}
