//! Rate limiting: a token bucket with the clock passed in, so that it is tested without
//! waiting and costs one `Instant` read per use.

use std::time::{Duration, Instant};

/// A token bucket: holds up to `burst` tokens and gains `rate` tokens per second.
///
/// [`TokenBucket::try_take`] refuses when no token is left (per-connection command
/// limits); [`TokenBucket::reserve`] lets callers queue up for future tokens (admission
/// pacing), so that waiting requests are served in order at the configured pace.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go negative: tokens already promised to callers that are waiting.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens per second, holding at most `burst`
    /// (at least 1).
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes a token if one is there now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again (nothing taken that has not refilled): a
    /// caller that keeps one bucket per key may then forget it.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// Takes a token now or promises the next free one: returns how long the caller must
    /// wait before using it (zero when a token was there). Returns `None`, promising
    /// nothing, when the wait would be longer than `max_wait` (or the rate is zero).
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        if self.rate <= 0.0 {
            return None;
        }
        let wait = Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).ok()?;
        if wait > max_wait {
            return None;
        }
        self.tokens -= 1.0;
        Some(wait)
    }
}

/// A token bucket for one connection's budgets, in 8 bytes: every connection holds two
/// (commands, channel creations), so the rate and burst are not stored in it (the caller
/// passes the configured ones), tokens are thousandths in a `u32`, and time is whole
/// milliseconds since an origin the caller keeps (the node's start), in a `u32`. The
/// clock wraps every 49.7 days: a connection silent for longer than that between two
/// uses refills as if it had been silent for the remainder, which can only refuse a
/// command it would have allowed, never allow more than the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBucket {
    milli_tokens: u32,
    last_ms: u32,
}

/// Thousandths of a token per token.
const MILLI: u64 = 1000;

impl ConnectionBucket {
    /// A full bucket of `burst` tokens (at least 1; at most `u32::MAX / 1000`), as of
    /// `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Self {
        Self {
            milli_tokens: Self::cap(burst),
            last_ms: now_ms as u32,
        }
    }

    fn cap(burst: u32) -> u32 {
        u32::try_from(u64::from(burst.max(1)).saturating_mul(MILLI)).unwrap_or(u32::MAX)
    }

    /// Takes a token if one is there at `now_ms`, refilling at `rate` tokens per second
    /// up to `burst`.
    pub fn try_take(&mut self, rate: u32, burst: u32, now_ms: u64) -> bool {
        // Truncation is the wrap described above; `wrapping_sub` measures across it.
        let now = now_ms as u32;
        let elapsed = u64::from(now.wrapping_sub(self.last_ms));
        self.last_ms = now;
        // rate tokens per second = rate thousandths per millisecond.
        let gained = elapsed.saturating_mul(u64::from(rate));
        let tokens = u64::from(self.milli_tokens)
            .saturating_add(gained)
            .min(u64::from(Self::cap(burst)));
        if tokens >= MILLI {
            self.milli_tokens = u32::try_from(tokens - MILLI).unwrap_or(u32::MAX);
            true
        } else {
            self.milli_tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same behaviour as [`TokenBucket`] in a quarter of the space.
    #[test]
    fn connection_bucket_burst_then_rate() {
        assert_eq!(std::mem::size_of::<ConnectionBucket>(), 8);
        let mut b = ConnectionBucket::full(3, 5_000);
        let take = |b: &mut ConnectionBucket, at: u64| b.try_take(10, 3, at);
        assert!((0..3).all(|_| take(&mut b, 5_000)));
        assert!(!take(&mut b, 5_000), "burst spent");
        assert!(!take(&mut b, 5_050), "half a token");
        assert!(take(&mut b, 5_100), "one token per 100 ms");
        assert!(!take(&mut b, 5_100));
        // A long pause refills only up to the burst.
        assert!((0..3).all(|_| take(&mut b, 65_000)));
        assert!(!take(&mut b, 65_000));
        // Across the u32 wrap of the millisecond clock.
        let near = u64::from(u32::MAX) - 50;
        let mut w = ConnectionBucket::full(1, near);
        assert!(w.try_take(10, 1, near));
        assert!(!w.try_take(10, 1, near + 60), "60 ms, across the wrap");
        assert!(w.try_take(10, 1, near + 101), "100 ms after the take");
        // Extreme settings neither overflow nor allow more than the burst.
        let mut big = ConnectionBucket::full(u32::MAX, 0);
        assert!(big.try_take(u32::MAX, u32::MAX, u64::MAX));
        let mut zero = ConnectionBucket::full(1, 0);
        assert!(zero.try_take(0, 1, 0));
        assert!(!zero.try_take(0, 1, 1_000_000), "a zero rate never refills");
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0), "burst spent");
        assert!(!b.try_take(t0 + Duration::from_millis(50)), "half a token");
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn reservations_queue_up_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, 5, t0);
        let max = Duration::from_secs(1);
        let waits: Vec<_> = (0..10).map(|_| b.reserve(t0, max)).collect();
        assert!(waits[..5].iter().all(|w| *w == Some(Duration::ZERO)));
        let ms: Vec<u128> = waits[5..]
            .iter()
            .map(|w| w.expect("within a second").as_millis())
            .collect();
        assert_eq!(ms, vec![200, 400, 600, 800, 1000]);
        assert_eq!(b.reserve(t0, max), None, "1.2 s is too long");
        // The refused request promised nothing: the next slot is still 1.2 s away.
        assert_eq!(
            b.reserve(t0, Duration::from_secs(2)),
            Some(Duration::from_millis(1200))
        );
        assert!(!b.is_full(t0));
        assert!(b.is_full(t0 + Duration::from_secs(10)), "refilled");
        let mut none = TokenBucket::new(0, 1, t0);
        assert_eq!(none.reserve(t0, max), Some(Duration::ZERO));
        assert_eq!(
            none.reserve(t0 + max, max),
            None,
            "a zero rate never refills"
        );
    }
}
