//! Idempotent publishing: the HTTP API remembers the response to a publish made with an
//! `idempotency_key`, so a retry (after a timeout, a lost connection) gets the original
//! response instead of publishing twice.
//!
//! The rules, each with a test:
//! - a key is *reserved* before publishing: a second request with the same key that
//!   arrives meanwhile waits for the first one's response rather than publishing too;
//! - a reservation given back *before* anything was published (a refused request)
//!   frees the key, so a retry can publish; once the publication exists, its response
//!   is recorded whatever happens next (a failed fsync, a caller that hung up): the
//!   handler records it from a task that outlives the request, so a retry never
//!   delivers twice;
//! - the key is bound to the request it was first used with (a fingerprint of the
//!   request's content): the same key with a different request is refused (409);
//! - memory is bounded: recorded responses expire after a window and the oldest go
//!   first when the table is full; a reservation still in flight is never evicted
//!   (when every slot is in flight, new keys are refused with a temporary error).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// A response as it was sent: status code and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// Identifies a request's content (endpoint, channel, data, options), so that a key
/// reused for a different request is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

#[derive(Debug)]
enum Slot {
    /// A request holding this key is publishing; others wait on the notify.
    Pending(Arc<Notify>),
    /// The response to replay.
    Done(Arc<Recorded>),
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    fingerprint: Fingerprint,
    /// Distinguishes this reservation from an older one of the same key.
    seq: u64,
    /// When the response was recorded (the window counts from then).
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Recorded responses, oldest first; stale ones (seq no longer in `entries`) are
    /// skipped. Reservations in flight are not in it, so they are never evicted.
    order: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
}

/// Remembered publish responses, by idempotency key.
#[derive(Debug)]
pub struct IdempotencyCache {
    inner: Arc<Mutex<Inner>>,
    window: Duration,
    max_keys: usize,
    /// Keyed per process, so fingerprints cannot be precomputed.
    hasher: std::collections::hash_map::RandomState,
}

/// What a request with an idempotency key should do.
#[derive(Debug)]
pub enum Claim {
    /// Publish, then record the response with [`Reservation::complete`].
    Fresh(Reservation),
    /// Already published: reply with this response.
    Done(Arc<Recorded>),
    /// The key was used for a different request.
    Conflict,
    /// Every slot of the table holds a request still in flight.
    Full,
}

/// The right to publish under a key. Dropped without [`Reservation::complete`] (a
/// refused request, a request cancelled before it published), it frees the key and wakes
/// the waiters, one of which publishes. `'static`, so a task can finish it after the
/// request that took it is gone.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Mutex<Inner>>,
    key: Arc<str>,
    seq: u64,
    notify: Arc<Notify>,
    done: bool,
}

impl IdempotencyCache {
    /// A cache remembering responses for `window`, at most `max_keys` keys (at least 1).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            window,
            max_keys: max_keys.max(1),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The fingerprint of a request made of `parts` (each part is length-prefixed, so
    /// `["ab", "c"]` and `["a", "bc"]` differ).
    pub fn fingerprint(&self, parts: &[&[u8]]) -> Fingerprint {
        let mut h = self.hasher.build_hasher();
        for part in parts {
            part.len().hash(&mut h);
            h.write(part);
        }
        Fingerprint(h.finish())
    }

    /// Reserves `key` for the request with `fingerprint`, or returns its recorded
    /// response, waiting while another request holds it.
    pub async fn claim(&self, key: &str, fingerprint: Fingerprint) -> Claim {
        loop {
            let notified = {
                let mut inner = self.inner.lock();
                let now = Instant::now();
                self.evict(&mut inner, now);
                match inner.entries.get(key) {
                    Some(entry) if entry.fingerprint != fingerprint => return Claim::Conflict,
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
                    None => return self.reserve(&mut inner, key, fingerprint, now),
                }
            };
            notified.await;
        }
    }

    fn reserve(
        &self,
        inner: &mut Inner,
        key: &str,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Claim {
        // Only recorded responses are in `order`: reservations in flight stay.
        while inner.entries.len() >= self.max_keys {
            let Some((seq, oldest)) = inner.order.pop_front() else {
                return Claim::Full;
            };
            if inner.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                inner.entries.remove(&oldest);
            }
        }
        let key: Arc<str> = Arc::from(key);
        let seq = inner.next_seq;
        inner.next_seq = inner.next_seq.wrapping_add(1);
        let notify = Arc::new(Notify::new());
        inner.entries.insert(
            key.clone(),
            Entry {
                slot: Slot::Pending(notify.clone()),
                fingerprint,
                seq,
                at: now,
            },
        );
        Claim::Fresh(Reservation {
            inner: self.inner.clone(),
            key,
            seq,
            notify,
            done: false,
        })
    }

    /// Forgets responses older than the window (the order queue is oldest first).
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, key)) = inner.order.front() {
            match inner.entries.get(key) {
                Some(e) if e.seq == *seq => {
                    if now.saturating_duration_since(e.at) < self.window {
                        break;
                    }
                    inner.entries.remove(key);
                }
                // A stale queue entry: its key was forgotten or reserved again.
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

impl Reservation {
    /// Records the response for later retries and wakes the requests waiting for it.
    pub fn complete(mut self, status: u16, body: Value) -> Arc<Recorded> {
        let recorded = Arc::new(Recorded { status, body });
        let mut inner = self.inner.lock();
        let seq = self.seq;
        if let Some(entry) = inner.entries.get_mut(&self.key)
            && entry.seq == seq
        {
            entry.slot = Slot::Done(recorded.clone());
            entry.at = Instant::now();
            inner.order.push_back((seq, self.key.clone()));
        }
        drop(inner);
        self.done = true;
        self.notify.notify_waiters();
        recorded
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.inner.lock();
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

/// A fingerprint of a request made of `parts` that every node computes alike (the first
/// 8 bytes of a SHA-1 over the length-prefixed parts): cluster-wide idempotency keys are
/// compared across nodes, so the per-process random hasher of [`IdempotencyCache`] will
/// not do.
pub fn stable_fingerprint(parts: &[&[u8]]) -> u64 {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {

    #[test]
    fn stable_fingerprints_agree_across_processes_and_separate_parts() {
        // A fixed value: another node (another process) computes the same.
        let f = stable_fingerprint(&[b"publish", b"chat:1", b"{}"]);
        assert_eq!(
            f, 0x7dcd_cb95_2264_47c5,
            "computed independently (Python hashlib)"
        );
        assert_ne!(f, stable_fingerprint(&[b"publish", b"chat:1{", b"}"]));
        assert_ne!(f, stable_fingerprint(&[b"publish", b"chat:2", b"{}"]));
    }

    use super::*;
    use serde_json::json;

    const FP: Fingerprint = Fingerprint(1);

    fn fresh(claim: Claim) -> Reservation {
        match claim {
            Claim::Fresh(r) => r,
            other => panic!("expected a fresh claim, got {other:?}"),
        }
    }

    fn done(claim: Claim) -> Value {
        match claim {
            Claim::Done(v) => v.body.clone(),
            other => panic!("expected a recorded response, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replays_then_forgets_oldest() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        fresh(cache.claim("a", FP).await).complete(200, json!(1));
        assert_eq!(done(cache.claim("a", FP).await), json!(1));
        fresh(cache.claim("b", FP).await).complete(200, json!(2));
        fresh(cache.claim("c", FP).await).complete(200, json!(3));
        assert_eq!(cache.len(), 2);
        drop(fresh(cache.claim("a", FP).await)); // "a" was the oldest: forgotten.
        assert_eq!(done(cache.claim("c", FP).await), json!(3));
    }

    #[tokio::test]
    async fn failed_attempt_frees_the_key() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        drop(fresh(cache.claim("k", FP).await));
        assert!(cache.is_empty());
        fresh(cache.claim("k", FP).await).complete(200, json!("ok"));
    }

    #[tokio::test]
    async fn expired_keys_publish_again() {
        let cache = IdempotencyCache::new(Duration::ZERO, 10);
        fresh(cache.claim("k", FP).await).complete(200, json!(1));
        fresh(cache.claim("k", FP).await);
    }

    #[tokio::test]
    async fn concurrent_claims_wait_for_the_first() {
        let cache = Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let first = fresh(cache.claim("k", FP).await);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { done(cache.claim("k", FP).await) })
        };
        // The waiter cannot finish before the first request records its result.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        first.complete(200, json!({"offset": 7}));
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, json!({"offset": 7}));
    }

    /// A full table of requests in flight evicts none of them: a new key is refused
    /// instead, and gets in once one of them completes.
    #[tokio::test]
    async fn reservations_in_flight_are_never_evicted() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        let a = fresh(cache.claim("a", FP).await);
        let _b = fresh(cache.claim("b", FP).await);
        assert!(matches!(cache.claim("c", FP).await, Claim::Full));
        assert_eq!(cache.len(), 2, "both reservations kept");
        a.complete(200, json!("a"));
        // "a" is recorded now, so it may go to make room.
        let _c = fresh(cache.claim("c", FP).await);
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.claim("d", FP).await, Claim::Full));
    }

    /// A pending reservation survives the window: the window counts from the response.
    #[tokio::test]
    async fn the_window_counts_from_the_response() {
        let cache = Arc::new(IdempotencyCache::new(Duration::ZERO, 10));
        let first = fresh(cache.claim("k", FP).await);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.claim("k", FP).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a zero window does not free a pending key"
        );
        first.complete(200, json!(1));
        let second = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
        // Recorded, then at once older than the zero window: the waiter may publish.
        assert!(matches!(second, Claim::Fresh(_) | Claim::Done(_)));
    }

    #[tokio::test]
    async fn a_key_is_bound_to_its_request() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let one = cache.fingerprint(&[b"publish", b"chan", b"1"]);
        let other = cache.fingerprint(&[b"publish", b"chan", b"2"]);
        let shifted = cache.fingerprint(&[b"publis", b"hchan", b"1"]);
        assert_ne!(one, other);
        assert_ne!(one, shifted, "parts are length-prefixed");
        fresh(cache.claim("k", one).await).complete(200, json!(1));
        assert!(matches!(cache.claim("k", other).await, Claim::Conflict));
        assert_eq!(done(cache.claim("k", one).await), json!(1));
        // A pending key conflicts too.
        let _p = fresh(cache.claim("p", one).await);
        assert!(matches!(cache.claim("p", other).await, Claim::Conflict));
    }

    /// A recorded error (published, then not persisted) replays as it was.
    #[tokio::test]
    async fn recorded_errors_replay_with_their_status() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        fresh(cache.claim("k", FP).await).complete(503, json!({"error": {"code": 116}}));
        match cache.claim("k", FP).await {
            Claim::Done(r) => assert_eq!(r.status, 503),
            other => panic!("expected the recorded error, got {other:?}"),
        }
    }
}
