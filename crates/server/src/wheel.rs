//! A coarse timer wheel shared by every connection of a node.
//!
//! A connection's deadlines (next keepalive ping, pong timeout, connect timeout, token
//! expiry, close-handshake timeout) are seconds apart and tolerate a tick of lateness. A
//! tokio `Sleep` per connection costs 112 bytes inside every connection's task (an
//! entry of tokio's own wheel, with its waker and list links); here a connection keeps
//! only the tick it is armed for, and a weak reference to what wakes it sits in one bucket
//! of a ring, rung by one task ([`TimerWheel::drive`]) that advances the ring every
//! [`TICK`]. Weak, not a `Waker`: a waker would keep a closed connection's whole task
//! allocated until its bucket comes round.
//!
//! Contract: an entry armed for tick `t` is rung no later than the first advance at or
//! after tick `t`'s end, unless it was dropped; it may be rung earlier (a deadline beyond
//! the ring's horizon is armed at the horizon), so the owner re-checks its deadlines when
//! rung and arms again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The wheel's resolution: deadlines fire up to one tick late.
pub const TICK: Duration = Duration::from_millis(50);
/// Buckets in the ring; the horizon is `SLOTS * TICK` (51.2 s).
const SLOTS: u64 = 1024;

/// What the wheel rings when a tick fires.
pub trait Ring: Send + Sync {
    /// Wakes whoever waits for the deadline. Called outside the wheel's locks.
    fn ring(&self);
}

/// The shared wheel. See the module docs for the contract.
pub struct TimerWheel<T: Ring> {
    start: Instant,
    /// The first tick not fired yet: every bucket of an earlier tick has been woken.
    /// Written only under the lock of the bucket being fired, so that [`TimerWheel::arm`]
    /// (which checks it under the same lock) never parks a waker in a bucket already
    /// emptied for its tick.
    next: AtomicU64,
    buckets: Box<[Mutex<Vec<Weak<T>>>]>,
}

impl<T: Ring> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl<T: Ring> TimerWheel<T> {
    /// A wheel whose tick 0 ends at `start`.
    pub fn new(start: Instant) -> Self {
        TimerWheel {
            start,
            next: AtomicU64::new(0),
            buckets: (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The tick `at` falls in, rounded up: a deadline is never reported early.
    pub fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        let tick = TICK.as_nanos();
        u64::try_from(since.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// Arms `target` for tick `wanted` (or the first tick not fired yet when that one
    /// has, or the horizon, whichever applies) and returns the tick armed.
    pub fn arm(&self, wanted: u64, target: &Arc<T>) -> u64 {
        loop {
            let next = self.next.load(Ordering::Acquire);
            let tick = wanted.clamp(next, next.saturating_add(SLOTS - 1));
            let mut bucket = self.bucket(tick).lock();
            // The wheel may have fired `tick` between the load and the lock: then try
            // again from its new position rather than park in an emptied bucket.
            if self.next.load(Ordering::Acquire) <= tick {
                bucket.push(Arc::downgrade(target));
                return tick;
            }
        }
    }

    /// Whether tick `armed` has fired (its wakers were woken).
    pub fn fired(&self, armed: u64) -> bool {
        self.next.load(Ordering::Acquire) > armed
    }

    /// Fires every tick that ended by `now`; returns how many live entries were rung.
    pub fn advance(&self, now: Instant) -> usize {
        // Ticks that ended by `now`: tick `t` ends at `start + t * TICK`.
        let since = now.saturating_duration_since(self.start);
        let last = u64::try_from(since.as_nanos() / TICK.as_nanos()).unwrap_or(u64::MAX);
        let mut woken = 0;
        let mut due = Vec::new();
        loop {
            let tick = self.next.load(Ordering::Acquire);
            if tick > last {
                break;
            }
            {
                let mut bucket = self.bucket(tick).lock();
                // Wakers of a later lap in this bucket (armed at the horizon) are woken
                // early, which the contract allows.
                std::mem::swap(&mut *bucket, &mut due);
                self.next.store(tick + 1, Ordering::Release);
            }
            // Rung outside the lock: a wake can run arbitrary code of the task system.
            for target in due.drain(..) {
                if let Some(target) = target.upgrade() {
                    target.ring();
                    woken += 1;
                }
            }
        }
        woken
    }

    /// Advances the wheel every [`TICK`], forever (spawned once per node).
    pub async fn drive(self: Arc<Self>) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.advance(Instant::now());
        }
    }

    fn bucket(&self, tick: u64) -> &Mutex<Vec<Weak<T>>> {
        // `SLOTS` buckets exist, so the remainder always indexes one.
        &self.buckets[(tick % SLOTS) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Ring for Count {
        fn ring(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn rung(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn fires_at_the_tick_not_before() {
        let start = Instant::now();
        let wheel = TimerWheel::new(start);
        let count = Arc::new(Count::default());
        let armed = wheel.arm(wheel.tick_of(start + Duration::from_millis(120)), &count);
        assert_eq!(armed, 3, "120 ms rounds up to the third 50 ms tick");
        wheel.advance(start + Duration::from_millis(149));
        assert_eq!(rung(&count), 0);
        assert!(!wheel.fired(armed));
        wheel.advance(start + Duration::from_millis(150));
        assert_eq!(rung(&count), 1);
        assert!(wheel.fired(armed));
        // Once only.
        wheel.advance(start + Duration::from_secs(10));
        assert_eq!(rung(&count), 1);
    }

    #[test]
    fn a_past_deadline_fires_with_the_next_tick() {
        let start = Instant::now();
        let wheel = TimerWheel::new(start);
        wheel.advance(start + Duration::from_secs(1));
        let count = Arc::new(Count::default());
        let armed = wheel.arm(wheel.tick_of(start), &count);
        // Armed for the first unfired tick: rung by the next advance, not lost.
        assert!(!wheel.fired(armed));
        wheel.advance(start + Duration::from_millis(1050));
        assert_eq!(rung(&count), 1);
    }

    #[test]
    fn beyond_the_horizon_rings_early_and_never_late() {
        let start = Instant::now();
        let wheel = TimerWheel::new(start);
        let count = Arc::new(Count::default());
        let armed = wheel.arm(wheel.tick_of(start + Duration::from_secs(3600)), &count);
        assert_eq!(armed, SLOTS - 1);
        let horizon = start + TICK * u32::try_from(SLOTS).unwrap_or(u32::MAX);
        wheel.advance(horizon);
        assert_eq!(rung(&count), 1, "rung at the horizon to arm again");
        // A deadline decades away does not overflow.
        let armed = wheel.arm(
            wheel.tick_of(start + Duration::from_secs(30 * 365 * 24 * 3600)),
            &count,
        );
        assert!(armed <= 2 * SLOTS);
    }

    #[test]
    fn many_in_one_tick_catch_up_and_dropped_entries() {
        let start = Instant::now();
        let wheel = TimerWheel::new(start);
        let counts: Vec<_> = (0..100u64)
            .map(|i| {
                let count = Arc::new(Count::default());
                wheel.arm(wheel.tick_of(start + Duration::from_millis(10 * i)), &count);
                count
            })
            .collect();
        let gone = Arc::new(Count::default());
        wheel.arm(wheel.tick_of(start + Duration::from_millis(500)), &gone);
        drop(gone);
        // One late advance fires every tick missed since; the dropped entry is skipped.
        assert_eq!(wheel.advance(start + Duration::from_secs(5)), 100);
        assert!(counts.iter().all(|c| rung(c) == 1));
    }
}
