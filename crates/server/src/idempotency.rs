//! Idempotent publishing: the HTTP API remembers the result of a publish made with an
//! `idempotency_key`, so a retry (after a timeout, a lost connection) gets the original
//! result instead of publishing twice.
//!
//! A key is *reserved* before the publication is made: a second request with the same
//! key that arrives meanwhile waits for the first one's result rather than publishing
//! too. A failed or abandoned attempt gives its key back, so a retry can publish.
//! Memory is bounded: keys expire after a window and the oldest go first when the table
//! is full.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug)]
enum Slot {
    /// A request holding this key is publishing; others wait on the notify.
    Pending(Arc<Notify>),
    /// The result to replay.
    Done(Arc<Value>),
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    /// Distinguishes this reservation from an older one of the same key.
    seq: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Reservations, oldest first; stale ones (seq no longer in `entries`) are skipped.
    order: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
}

/// Remembered publish results, by idempotency key.
#[derive(Debug)]
pub struct IdempotencyCache {
    inner: Mutex<Inner>,
    window: Duration,
    max_keys: usize,
}

/// What a request with an idempotency key should do.
#[derive(Debug)]
pub enum Claim<'a> {
    /// Publish, then record the result with [`Reservation::complete`].
    Fresh(Reservation<'a>),
    /// Already published: reply with this result.
    Done(Arc<Value>),
}

/// The right to publish under a key. Dropped without [`Reservation::complete`] (an error,
/// a cancelled request), it frees the key and wakes the waiters, one of which publishes.
#[derive(Debug)]
pub struct Reservation<'a> {
    cache: &'a IdempotencyCache,
    key: Arc<str>,
    seq: u64,
    notify: Arc<Notify>,
    done: bool,
}

impl IdempotencyCache {
    /// A cache remembering keys for `window`, at most `max_keys` of them (at least 1).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            window,
            max_keys: max_keys.max(1),
        }
    }

    /// Reserves `key`, or returns its recorded result, waiting while another request
    /// holds it.
    pub async fn claim(&self, key: &str) -> Claim<'_> {
        loop {
            let notified = {
                let mut inner = self.inner.lock();
                let now = Instant::now();
                self.evict(&mut inner, now);
                match inner.entries.get(key) {
                    Some(Entry {
                        slot: Slot::Done(result),
                        ..
                    }) => return Claim::Done(result.clone()),
                    Some(Entry {
                        slot: Slot::Pending(notify),
                        ..
                    }) => {
                        // Created under the lock: it sees the `notify_waiters` of a
                        // completion that happens before we start waiting.
                        notify.clone().notified_owned()
                    }
                    None => return Claim::Fresh(self.reserve(&mut inner, key, now)),
                }
            };
            notified.await;
        }
    }

    fn reserve(&self, inner: &mut Inner, key: &str, now: Instant) -> Reservation<'_> {
        while inner.entries.len() >= self.max_keys {
            let Some((seq, oldest)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                inner.entries.remove(&oldest);
            }
        }
        let key: Arc<str> = Arc::from(key);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let notify = Arc::new(Notify::new());
        inner.entries.insert(
            key.clone(),
            Entry {
                slot: Slot::Pending(notify.clone()),
                seq,
                at: now,
            },
        );
        inner.order.push_back((seq, key.clone()));
        Reservation {
            cache: self,
            key,
            seq,
            notify,
            done: false,
        }
    }

    /// Forgets keys older than the window (the order queue is oldest first).
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, key)) = inner.order.front() {
            match inner.entries.get(key) {
                Some(e) if e.seq == *seq => {
                    if now.saturating_duration_since(e.at) < self.window {
                        break;
                    }
                    inner.entries.remove(key);
                }
                // A stale queue entry: its reservation was given back or replaced.
                _ => {}
            }
            inner.order.pop_front();
        }
    }

    /// Keys remembered now (reserved or done).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Reservation<'_> {
    /// Records the result for later retries and wakes the requests waiting for it.
    pub fn complete(mut self, result: Value) -> Arc<Value> {
        let result = Arc::new(result);
        let mut inner = self.cache.inner.lock();
        if let Some(entry) = inner.entries.get_mut(&self.key)
            && entry.seq == self.seq
        {
            entry.slot = Slot::Done(result.clone());
        }
        drop(inner);
        self.done = true;
        self.notify.notify_waiters();
        result
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.cache.inner.lock();
        if inner
            .entries
            .get(&self.key)
            .is_some_and(|e| e.seq == self.seq)
        {
            inner.entries.remove(&self.key);
        }
        drop(inner);
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fresh(claim: Claim<'_>) -> Reservation<'_> {
        match claim {
            Claim::Fresh(r) => r,
            Claim::Done(v) => panic!("expected a fresh claim, got {v}"),
        }
    }

    fn done(claim: Claim<'_>) -> Arc<Value> {
        match claim {
            Claim::Done(v) => v,
            Claim::Fresh(_) => panic!("expected a recorded result"),
        }
    }

    #[tokio::test]
    async fn replays_then_forgets_oldest() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        fresh(cache.claim("a").await).complete(json!(1));
        assert_eq!(*done(cache.claim("a").await), json!(1));
        fresh(cache.claim("b").await).complete(json!(2));
        fresh(cache.claim("c").await).complete(json!(3));
        assert_eq!(cache.len(), 2);
        fresh(cache.claim("a").await); // "a" was the oldest: forgotten.
        assert_eq!(*done(cache.claim("c").await), json!(3));
    }

    #[tokio::test]
    async fn failed_attempt_frees_the_key() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        drop(fresh(cache.claim("k").await));
        assert!(cache.is_empty());
        fresh(cache.claim("k").await).complete(json!("ok"));
    }

    #[tokio::test]
    async fn expired_keys_publish_again() {
        let cache = IdempotencyCache::new(Duration::ZERO, 10);
        fresh(cache.claim("k").await).complete(json!(1));
        fresh(cache.claim("k").await);
    }

    #[tokio::test]
    async fn concurrent_claims_wait_for_the_first() {
        let cache = Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let first = fresh(cache.claim("k").await);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { done(cache.claim("k").await) })
        };
        // The waiter cannot finish before the first request records its result.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.complete(json!({"offset": 7}));
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(*got, json!({"offset": 7}));
    }
}
