//! Node-wide flood protection: admission pacing of new connections and jittered
//! reconnect advice. Per-connection limits live in the session; the channel limit lives
//! in the hub; connection counts live in the registry.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use starling_core::TokenBucket;

use crate::config::Config;

/// A limit that refused something; the `limit` label of `starling_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Commands over a connection's rate (error 114).
    Rate,
    /// Subscriptions per connection (error 106).
    Subscriptions,
    /// Channels per node (error 115).
    Channels,
    /// Connections per user (close 4005).
    UserConnections,
    /// Connections per node (HTTP 503).
    NodeConnections,
    /// Upgrades that could not be admitted within the handshake timeout (HTTP 503).
    Admission,
    /// Channels created per connection (error 106).
    ChannelCreation,
    /// Connections per source address (HTTP 503).
    IpConnections,
    /// Upgrades from one source address that could not be admitted within the
    /// handshake timeout (HTTP 503).
    IpAdmission,
}

impl Limit {
    /// Every limit, in the order of the metric's lines.
    pub const ALL: [Limit; 9] = [
        Limit::Rate,
        Limit::Subscriptions,
        Limit::Channels,
        Limit::UserConnections,
        Limit::NodeConnections,
        Limit::Admission,
        Limit::ChannelCreation,
        Limit::IpConnections,
        Limit::IpAdmission,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::Subscriptions => "subscriptions",
            Limit::Channels => "channels",
            Limit::UserConnections => "user_connections",
            Limit::NodeConnections => "node_connections",
            Limit::Admission => "admission",
            Limit::ChannelCreation => "channel_creation",
            Limit::IpConnections => "ip_connections",
            Limit::IpAdmission => "ip_admission",
        }
    }
}

/// Node-wide limits state.
#[derive(Debug)]
pub struct Limits {
    /// Paces new upgrades (`None`: `server.admission_rate = 0`, no pacing).
    admission: Option<Mutex<TokenBucket>>,
    jitter: Jitter,
    delay_min_ms: u32,
    delay_max_ms: u32,
}

/// The outcome of asking for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead after waiting this long (zero: at once).
    After(Duration),
    /// The wait would exceed the handshake timeout: refuse.
    Refused,
}

impl Limits {
    /// The limits configured in `config`.
    pub fn new(config: &Config) -> Self {
        let rate = config.server.admission_rate;
        Self {
            admission: (rate > 0).then(|| Mutex::new(TokenBucket::new(rate, rate, Instant::now()))),
            jitter: Jitter::new(),
            delay_min_ms: config.client.reconnect_delay_min_ms,
            delay_max_ms: config.client.reconnect_delay_max_ms,
        }
    }

    /// Takes an admission token for a new upgrade, or a place in the queue for the next
    /// one, waiting at most `max_wait`.
    pub fn admit(&self, max_wait: Duration) -> Admission {
        let Some(bucket) = &self.admission else {
            return Admission::After(Duration::ZERO);
        };
        match bucket.lock().reserve(Instant::now(), max_wait) {
            Some(wait) => Admission::After(wait),
            None => Admission::Refused,
        }
    }

    /// A reconnect delay for one client: uniform in
    /// [`client.reconnect_delay_min_ms`, `client.reconnect_delay_max_ms`].
    pub fn reconnect_delay_ms(&self) -> u32 {
        let span = u64::from(self.delay_max_ms - self.delay_min_ms) + 1;
        // `span` <= 2^32, so the remainder fits in u32 and the sum cannot pass the max.
        let offset = u32::try_from(self.jitter.next() % span).unwrap_or(0);
        self.delay_min_ms.saturating_add(offset)
    }

    /// A `Retry-After` value in whole seconds (at least 1) from a jittered delay, so that
    /// refused clients do not all come back in the same second.
    pub fn retry_after_secs(&self) -> u32 {
        self.reconnect_delay_ms().div_ceil(1000).max(1)
    }
}

/// A cheap, lock-free pseudo-random sequence (SplitMix64) seeded per node from the
/// standard library's random hasher keys. Good enough to spread reconnects; not for
/// anything secret.
#[derive(Debug)]
struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
        Self {
            state: AtomicU64::new(seed),
        }
    }

    fn next(&self) -> u64 {
        // One atomic add per value: concurrent callers each get a distinct state.
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_stay_in_range_and_spread() {
        let mut config = Config::default();
        config.client.reconnect_delay_min_ms = 100;
        config.client.reconnect_delay_max_ms = 199;
        let limits = Limits::new(&config);
        let delays: Vec<u32> = (0..2000).map(|_| limits.reconnect_delay_ms()).collect();
        assert!(delays.iter().all(|d| (100..=199).contains(d)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 90,
            "spread over the range: {}",
            distinct.len()
        );
        config.client.reconnect_delay_min_ms = 7;
        config.client.reconnect_delay_max_ms = 7;
        assert_eq!(Limits::new(&config).reconnect_delay_ms(), 7);
        config.client.reconnect_delay_min_ms = 0;
        config.client.reconnect_delay_max_ms = u32::MAX;
        let wide = Limits::new(&config);
        assert!((0..100).any(|_| wide.reconnect_delay_ms() > u32::MAX / 2));
        assert!(wide.retry_after_secs() >= 1);
    }

    #[test]
    fn admission_without_rate_never_waits() {
        let mut config = Config::default();
        config.server.admission_rate = 0;
        let limits = Limits::new(&config);
        for _ in 0..10_000 {
            assert_eq!(
                limits.admit(Duration::ZERO),
                Admission::After(Duration::ZERO)
            );
        }
    }
}
