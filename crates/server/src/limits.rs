//! Node-wide flood protection: admission pacing of new connections, each source
//! address's share of connections and admission, and jittered reconnect advice.
//! Per-connection limits live in the session; the channel limit lives in the hub; the
//! node's connection count lives in the registry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
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
    /// Connections and admission per source address.
    per_ip: PerIp,
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
    /// The source address's share of admission would wait longer than the handshake
    /// timeout: refuse.
    RefusedForAddress,
}

impl Limits {
    /// The limits configured in `config`.
    pub fn new(config: &Config) -> Self {
        let rate = config.server.admission_rate;
        Self {
            admission: (rate > 0).then(|| Mutex::new(TokenBucket::new(rate, rate, Instant::now()))),
            per_ip: PerIp::new(
                config.server.max_connections_per_ip,
                config.server.admission_rate_per_ip,
            ),
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

    /// Admission for an upgrade from `slot`'s address: first its share
    /// (`server.admission_rate_per_ip`), then the node's rate, so that one address
    /// queues behind its own upgrades and cannot take the node's whole rate.
    pub fn admit_from(&self, slot: &IpSlot, max_wait: Duration) -> Admission {
        let own = match self.per_ip.reserve(slot, max_wait) {
            Some(wait) => wait,
            None => return Admission::RefusedForAddress,
        };
        match self.admit(max_wait) {
            Admission::After(wait) => Admission::After(wait.max(own)),
            refused => refused,
        }
    }

    /// Takes a place among `ip`'s connections (`server.max_connections_per_ip`), or
    /// `None` when it holds its maximum. Give it back with [`Limits::release`].
    pub fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        self.per_ip.acquire(ip)
    }

    /// Gives back a place taken by [`Limits::acquire`].
    pub fn release(&self, slot: &IpSlot) {
        self.per_ip.release(slot);
    }

    /// Forgets addresses with no connection whose admission share has refilled (called
    /// periodically; the map holds only addresses with connections or recent upgrades).
    pub fn sweep(&self) {
        self.per_ip.sweep();
    }

    /// Source addresses tracked now.
    pub fn tracked_addresses(&self) -> usize {
        self.per_ip.len()
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

/// Connections and admission per source address, in a sharded map whose entries go
/// when their address has no connection left and its admission share has refilled.
/// Every operation is O(1) (expected) under one shard's lock.
#[derive(Debug)]
struct PerIp {
    shards: Box<[Mutex<HashMap<IpAddr, IpEntry>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// 0: no limit.
    max_connections: usize,
    /// 0: no per-address admission share.
    rate: u32,
}

#[derive(Debug)]
struct IpEntry {
    connections: usize,
    admission: Option<TokenBucket>,
}

/// A place among one address's connections; give it back with [`Limits::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSlot {
    key: IpAddr,
}

const IP_SHARDS: usize = 64;

/// The address limits count by: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// the block one subscriber line usually gets.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl PerIp {
    fn new(max_connections: usize, rate: u32) -> Self {
        Self {
            shards: (0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            max_connections,
            rate,
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, IpEntry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        let key = ip_key(ip);
        let mut shard = self.shard(&key).lock();
        let rate = self.rate;
        let entry = shard.entry(key).or_insert_with(|| IpEntry {
            connections: 0,
            admission: (rate > 0).then(|| TokenBucket::new(rate, rate, Instant::now())),
        });
        if self.max_connections > 0 && entry.connections >= self.max_connections {
            return None;
        }
        entry.connections += 1;
        Some(IpSlot { key })
    }

    fn release(&self, slot: &IpSlot) {
        let mut shard = self.shard(&slot.key).lock();
        let Some(entry) = shard.get_mut(&slot.key) else {
            return;
        };
        entry.connections = entry.connections.saturating_sub(1);
        if entry.connections == 0
            && entry
                .admission
                .as_mut()
                .is_none_or(|b| b.is_full(Instant::now()))
        {
            shard.remove(&slot.key);
        }
    }

    fn reserve(&self, slot: &IpSlot, max_wait: Duration) -> Option<Duration> {
        let mut shard = self.shard(&slot.key).lock();
        match shard.get_mut(&slot.key).and_then(|e| e.admission.as_mut()) {
            Some(bucket) => bucket.reserve(Instant::now(), max_wait),
            None => Some(Duration::ZERO),
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, e| {
                e.connections > 0 || e.admission.as_mut().is_some_and(|b| !b.is_full(now))
            });
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn connections_per_address_are_counted_and_forgotten() {
        let per_ip = PerIp::new(2, 0);
        let a1 = per_ip.acquire(ip("10.0.0.1")).expect("first");
        let a2 = per_ip.acquire(ip("10.0.0.1")).expect("second");
        assert!(per_ip.acquire(ip("10.0.0.1")).is_none(), "third refused");
        let b = per_ip.acquire(ip("10.0.0.2")).expect("another address");
        assert_eq!(per_ip.len(), 2);
        per_ip.release(&a1);
        let a3 = per_ip.acquire(ip("10.0.0.1")).expect("a place came free");
        for slot in [a2, a3, b] {
            per_ip.release(&slot);
        }
        assert_eq!(per_ip.len(), 0, "entries go at zero");
        // IPv6 counts by /64; IPv4-mapped addresses count as IPv4.
        let per_ip = PerIp::new(1, 0);
        let v6 = per_ip.acquire(ip("2001:db8::1")).expect("first");
        assert!(per_ip.acquire(ip("2001:db8::ffff:1")).is_none(), "same /64");
        assert!(
            per_ip.acquire(ip("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        let v4 = per_ip.acquire(ip("10.0.0.1")).expect("v4");
        assert!(per_ip.acquire(ip("::ffff:10.0.0.1")).is_none(), "mapped");
        per_ip.release(&v6);
        per_ip.release(&v4);
        // No limit.
        let open = PerIp::new(0, 0);
        assert!((0..1000).all(|_| open.acquire(ip("10.0.0.9")).is_some()));
    }

    #[test]
    fn admission_share_per_address() {
        let per_ip = PerIp::new(0, 2);
        let a = per_ip.acquire(ip("10.0.0.1")).expect("a");
        let b = per_ip.acquire(ip("10.0.0.2")).expect("b");
        let max = Duration::from_millis(600);
        assert_eq!(per_ip.reserve(&a, max), Some(Duration::ZERO));
        assert_eq!(per_ip.reserve(&a, max), Some(Duration::ZERO));
        assert_eq!(
            per_ip.reserve(&a, max).map(|w| w > Duration::ZERO),
            Some(true)
        );
        assert_eq!(per_ip.reserve(&a, max), None, "a's share is spent");
        assert_eq!(per_ip.reserve(&b, max), Some(Duration::ZERO), "b is not");
        // An address whose share has not refilled is remembered after its last
        // connection, so reconnecting does not reset its share; the sweep forgets it
        // once it has refilled.
        per_ip.release(&a);
        assert_eq!(per_ip.len(), 2);
        per_ip.sweep();
        assert_eq!(per_ip.len(), 2, "a has not refilled yet");
        let a = per_ip.acquire(ip("10.0.0.1")).expect("a again");
        assert_eq!(per_ip.reserve(&a, Duration::ZERO), None, "still spent");
        per_ip.release(&a);
        per_ip.release(&b);
    }
}
