//! A channel's history: its most recent publications, bounded by count, by bytes and by
//! age.
//!
//! Offsets in one history are consecutive (one per publication, no gaps), which makes
//! reads by offset an index computation. Eviction only ever removes the oldest entries;
//! a publication that is not kept at all empties the history first (see
//! [`History::clear`]), so that the history then starts after it and a read from before
//! it is refused rather than answered with a hole.

use std::collections::VecDeque;

use starling_protocol::Publication;

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryPolicy {
    /// Publications kept; 0 disables history.
    pub size: usize,
    /// Publications older than this many milliseconds are dropped; 0 = no age limit.
    pub ttl_ms: u64,
    /// Bytes of publications kept (see [`History::entry_bytes`]); the oldest are
    /// dropped beyond it. 0 = no byte limit.
    pub max_bytes: usize,
}

impl HistoryPolicy {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// Why a read by position is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The position is older than what the history still holds, or from another epoch.
    #[error("position is no longer in history")]
    Unrecoverable,
    /// The publications asked for are all there but exceed the byte cap of the read.
    #[error("the publications exceed the byte cap")]
    TooLarge,
}

/// Which publications a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Forward: publications after this offset; backward: before it. `None`: from the
    /// oldest (forward) or the newest (backward).
    pub since: Option<u64>,
    /// At most this many.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
    /// Stop before the page's estimated wire size ([`History::wire_bytes`]) passes this
    /// many bytes; the first publication is always returned, so paging always makes
    /// progress. `usize::MAX`: no cap.
    pub max_bytes: usize,
}

/// The retained publications of one channel.
///
/// Most channels keep none (history is off in their namespace, or nothing was published
/// yet): for them the history is one null pointer, because every channel pays for this
/// field (the entries inline cost 40 bytes of every channel, which kept the channel a
/// size class higher).
#[derive(Debug, Default)]
pub struct History {
    kept: Option<Box<Kept>>,
}

/// What a history holds once it holds something.
#[derive(Debug, Default)]
struct Kept {
    /// (publication time in ms since the Unix epoch, publication), oldest first.
    entries: VecDeque<(u64, Publication)>,
    /// Sum of [`History::entry_bytes`] over the entries.
    bytes: usize,
}

/// The entries of a history that holds none.
static NO_ENTRIES: VecDeque<(u64, Publication)> = VecDeque::new();

/// Heap bytes a publication holds beyond its struct.
fn heap_bytes(p: &Publication) -> usize {
    let info = p.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |b| b.len())
            + i.chan_info.as_ref().map_or(0, |b| b.len())
    });
    let tags = p.tags.as_ref().map_or(0, |t| {
        t.iter()
            .map(|(k, v)| k.len() + v.len() + 2 * std::mem::size_of::<String>())
            .sum()
    });
    p.data.len() + info + tags
}

impl History {
    /// The memory one kept publication costs, as counted against the byte budgets: its
    /// entry plus the bytes it holds on the heap.
    pub fn entry_bytes(p: &Publication) -> usize {
        std::mem::size_of::<(u64, Publication)>() + heap_bytes(p)
    }

    /// An upper estimate of a publication's encoded size in a reply: payloads may travel
    /// as base64 (4/3), plus field names and the offset.
    pub fn wire_bytes(p: &Publication) -> usize {
        heap_bytes(p).saturating_mul(4) / 3 + 64
    }

    /// Appends the next publication (its offset must follow the newest) and evicts what
    /// the policy no longer allows.
    pub fn push(&mut self, now_ms: u64, publication: Publication, policy: HistoryPolicy) {
        debug_assert!(
            self.entries()
                .back()
                .is_none_or(|(_, p)| p.offset + 1 == publication.offset),
            "history offsets must be consecutive"
        );
        if !policy.enabled() {
            self.clear();
            return;
        }
        let kept = self.kept.get_or_insert_with(Box::default);
        kept.bytes += Self::entry_bytes(&publication);
        kept.entries.push_back((now_ms, publication));
        self.evict(now_ms, policy);
    }

    /// Drops entries beyond the size or byte limit or older than the age limit.
    pub fn evict(&mut self, now_ms: u64, policy: HistoryPolicy) {
        while self.len() > policy.size || (policy.max_bytes > 0 && self.bytes() > policy.max_bytes)
        {
            if self.pop_oldest().is_none() {
                break;
            }
        }
        if policy.ttl_ms > 0 {
            while self
                .entries()
                .front()
                .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > policy.ttl_ms)
            {
                self.pop_oldest();
            }
        }
    }

    /// Removes the oldest entry; returns the bytes it freed.
    pub fn pop_oldest(&mut self) -> Option<usize> {
        let kept = self.kept.as_mut()?;
        let (_, p) = kept.entries.pop_front()?;
        let freed = Self::entry_bytes(&p);
        kept.bytes = kept.bytes.saturating_sub(freed);
        if kept.entries.is_empty() {
            // Nothing held: nothing allocated.
            self.kept = None;
        }
        Some(freed)
    }

    /// Drops every entry: the next publication pushed starts the history afresh.
    pub fn clear(&mut self) {
        self.kept = None;
    }

    /// The entries, oldest first.
    fn entries(&self) -> &VecDeque<(u64, Publication)> {
        self.kept.as_ref().map_or(&NO_ENTRIES, |kept| &kept.entries)
    }

    /// Bytes held, as counted against the byte budgets.
    pub fn bytes(&self) -> usize {
        self.kept.as_ref().map_or(0, |kept| kept.bytes)
    }

    /// Publications held.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Offset of the oldest publication held.
    pub fn oldest(&self) -> Option<u64> {
        self.entries().front().map(|(_, p)| p.offset)
    }

    /// Time of the newest publication held.
    pub fn newest_time(&self) -> Option<u64> {
        self.entries().back().map(|(t, _)| *t)
    }

    /// Every publication after `offset` when the history still holds all of them, given
    /// that the stream's newest offset is `top`, and their estimated wire size
    /// ([`History::wire_bytes`]) stays within `max_bytes`. `Unrecoverable` when some are
    /// gone, `TooLarge` when they are over the cap.
    pub fn since(
        &self,
        offset: u64,
        top: u64,
        max_bytes: usize,
    ) -> Result<Vec<Publication>, HistoryError> {
        if offset >= top {
            return if offset == top {
                Ok(Vec::new())
            } else {
                Err(HistoryError::Unrecoverable)
            };
        }
        match self.oldest() {
            Some(oldest) if oldest <= offset + 1 => {
                let skip = usize::try_from(offset + 1 - oldest).unwrap_or(usize::MAX);
                // Sum first, clone after: an oversized recovery costs no copies.
                let mut total = 0usize;
                for (_, p) in self.entries().iter().skip(skip) {
                    total = total.saturating_add(Self::wire_bytes(p));
                    if total > max_bytes {
                        return Err(HistoryError::TooLarge);
                    }
                }
                Ok(self
                    .entries()
                    .iter()
                    .skip(skip)
                    .map(|(_, p)| p.clone())
                    .collect())
            }
            _ => Err(HistoryError::Unrecoverable),
        }
    }

    /// A page of history (see [`HistoryQuery`]). A `since` older than what is held is an
    /// error for forward reads (publications would be missing); backward reads from any
    /// offset are fine. The page ends early when the byte cap is reached (after at least
    /// one publication), so a reader pages on from its last offset.
    pub fn read(&self, query: HistoryQuery) -> Result<Vec<Publication>, HistoryError> {
        let Some(oldest) = self.oldest() else {
            return Ok(Vec::new());
        };
        let n = self.entries().len();
        if query.reverse {
            // Entries with offset < since, newest first.
            let end = match query.since {
                Some(since) => usize::try_from(since.saturating_sub(oldest))
                    .unwrap_or(usize::MAX)
                    .min(n),
                None => n,
            };
            return Ok(capped(
                self.entries().range(..end).rev().take(query.limit),
                query.max_bytes,
            ));
        }
        let start = match query.since {
            // `since` comes from the client: u64::MAX must not overflow.
            Some(since) if since.saturating_add(1) < oldest => {
                return Err(HistoryError::Unrecoverable);
            }
            Some(since) => usize::try_from(since.saturating_add(1) - oldest)
                .unwrap_or(usize::MAX)
                .min(n),
            None => 0,
        };
        Ok(capped(
            self.entries().range(start..).take(query.limit),
            query.max_bytes,
        ))
    }
}

/// The entries while their summed wire size stays within `max_bytes`, and always the
/// first.
fn capped<'a>(
    entries: impl Iterator<Item = &'a (u64, Publication)>,
    max_bytes: usize,
) -> Vec<Publication> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for (_, p) in entries {
        total = total.saturating_add(History::wire_bytes(p));
        if total > max_bytes && !out.is_empty() {
            break;
        }
        out.push(p.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            data: Bytes::from(offset.to_string()),
            offset,
            info: None,
            tags: None,
            delta: false,
        }
    }

    fn offsets(pubs: &[Publication]) -> Vec<u64> {
        pubs.iter().map(|p| p.offset).collect()
    }

    const POLICY: HistoryPolicy = HistoryPolicy {
        size: 3,
        ttl_ms: 1000,
        max_bytes: 0,
    };

    #[test]
    fn bounded_by_size_and_age() {
        let mut h = History::default();
        for o in 1..=5 {
            h.push(o * 100, publication(o), POLICY);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.oldest(), Some(3));
        h.evict(1350, POLICY);
        assert_eq!(h.oldest(), Some(4), "offset 3 (t=300) is over 1000 ms old");
        h.evict(10_000, POLICY);
        assert!(h.is_empty());
    }

    #[test]
    fn since_recovers_or_refuses() {
        let mut h = History::default();
        for o in 1..=5 {
            h.push(0, publication(o), POLICY);
        }
        assert_eq!(
            offsets(&h.since(2, 5, usize::MAX).expect("covered")),
            vec![3, 4, 5]
        );
        assert_eq!(
            offsets(&h.since(4, 5, usize::MAX).expect("covered")),
            vec![5]
        );
        assert!(h.since(5, 5, usize::MAX).expect("up to date").is_empty());
        assert_eq!(
            h.since(1, 5, usize::MAX),
            Err(HistoryError::Unrecoverable),
            "offset 2 is gone"
        );
        assert_eq!(
            h.since(6, 5, usize::MAX),
            Err(HistoryError::Unrecoverable),
            "from the future"
        );
    }

    /// Offsets come from clients: the largest one reads nothing instead of overflowing.
    #[test]
    fn extreme_positions_do_not_overflow() {
        let mut h = History::default();
        for o in 1..=3 {
            h.push(0, publication(o), POLICY);
        }
        for reverse in [false, true] {
            let page = h.read(HistoryQuery {
                since: Some(u64::MAX),
                limit: 10,
                reverse,
                max_bytes: usize::MAX,
            });
            assert_eq!(page.map(|p| p.len()), Ok(if reverse { 3 } else { 0 }));
        }
        assert_eq!(
            h.since(u64::MAX, 3, usize::MAX),
            Err(HistoryError::Unrecoverable)
        );
    }

    /// Offsets 1 to 6 in a history that keeps ten.
    fn six_publications() -> History {
        let mut h = History::default();
        let policy = HistoryPolicy {
            size: 10,
            ttl_ms: 0,
            max_bytes: 0,
        };
        for o in 1..=6 {
            h.push(0, publication(o), policy);
        }
        h
    }

    #[test]
    fn pages_forward_and_backward() {
        let h = six_publications();
        let page = |since, limit, reverse| {
            offsets(
                &h.read(HistoryQuery {
                    since,
                    limit,
                    reverse,
                    max_bytes: usize::MAX,
                })
                .expect("read"),
            )
        };
        assert_eq!(page(None, 2, false), vec![1, 2]);
        assert_eq!(page(Some(2), 2, false), vec![3, 4]);
        assert_eq!(page(Some(6), 2, false), Vec::<u64>::new());
        assert_eq!(page(None, 2, true), vec![6, 5]);
        assert_eq!(page(Some(5), 2, true), vec![4, 3]);
        assert_eq!(page(Some(1), 2, true), Vec::<u64>::new());
    }

    /// The model: a plain list with the same eviction rule, read by filtering.
    fn model_evict(model: &mut Vec<(u64, u64)>, now: u64, policy: HistoryPolicy) {
        while model.len() > policy.size {
            model.remove(0);
        }
        while policy.ttl_ms > 0 && model.first().is_some_and(|(t, _)| now - t > policy.ttl_ms) {
            model.remove(0);
        }
    }

    proptest! {
        /// Random pushes, evictions and reads against the model.
        #[test]
        fn matches_a_model(
            ops in proptest::collection::vec((0u8..4, 0u64..50, 0usize..8, any::<bool>()), 1..200),
            size in 1usize..10,
            ttl in 0u64..40,
        ) {
            let policy = HistoryPolicy { size, ttl_ms: ttl, max_bytes: 0 };
            let mut h = History::default();
            let mut model: Vec<(u64, u64)> = Vec::new(); // (time, offset), oldest first
            let mut top = 0u64;
            let mut now = 0u64;
            for (op, arg, limit, reverse) in ops {
                now += arg % 5;
                match op {
                    0 | 1 => {
                        top += 1;
                        h.push(now, publication(top), policy);
                        model.push((now, top));
                        model_evict(&mut model, now, policy);
                    }
                    2 => {
                        h.evict(now, policy);
                        model_evict(&mut model, now, policy);
                    }
                    _ => {
                        let since = (arg % 3 != 0).then_some(arg % (top + 2));
                        let kept: Vec<u64> = model.iter().map(|(_, o)| *o).collect();
                        match h.read(HistoryQuery { since, limit, reverse, max_bytes: usize::MAX }) {
                            Err(HistoryError::TooLarge) => prop_assert!(false, "uncapped read"),
                            Err(HistoryError::Unrecoverable) => {
                                prop_assert!(!reverse);
                                prop_assert!(since.is_some_and(|s| kept.first().is_some_and(|f| s + 1 < *f)));
                            }
                            Ok(pubs) => {
                                let expected: Vec<u64> = if reverse {
                                    kept.iter().rev().filter(|o| since.is_none_or(|s| **o < s)).take(limit).copied().collect()
                                } else {
                                    kept.iter().filter(|o| since.is_none_or(|s| **o > s)).take(limit).copied().collect()
                                };
                                prop_assert_eq!(offsets(&pubs), expected);
                            }
                        }
                        // Recovery from any offset agrees with the model too.
                        let from = arg % (top + 1);
                        match h.since(from, top, usize::MAX) {
                            Ok(pubs) => {
                                let expected: Vec<u64> = ((from + 1)..=top).collect();
                                prop_assert_eq!(offsets(&pubs), expected);
                            }
                            Err(_) => prop_assert!(from < top && kept.first().is_none_or(|f| *f > from + 1)),
                        }
                    }
                }
                prop_assert!(h.len() <= size);
                prop_assert_eq!(
                    h.bytes(),
                    h.entries().iter().map(|(_, p)| History::entry_bytes(p)).sum::<usize>()
                );
            }
        }
    }

    #[test]
    fn bounded_by_bytes() {
        let each = History::entry_bytes(&publication(10));
        let policy = HistoryPolicy {
            size: 100,
            ttl_ms: 0,
            max_bytes: 3 * each,
        };
        let mut h = History::default();
        for o in 10..=15 {
            h.push(0, publication(o), policy);
        }
        assert_eq!(h.len(), 3, "three entries fit the budget");
        assert_eq!(h.oldest(), Some(13));
        assert_eq!(h.bytes(), 3 * each);
        assert_eq!(h.pop_oldest(), Some(each));
        assert_eq!(h.bytes(), 2 * each);
        h.clear();
        assert_eq!((h.len(), h.bytes()), (0, 0));
        // A publication bigger than the whole budget is not kept at all.
        let tiny = HistoryPolicy {
            max_bytes: each / 2,
            ..policy
        };
        h.push(0, publication(16), tiny);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn reads_are_capped_by_bytes() {
        let h = six_publications();
        let one = History::wire_bytes(&publication(1));
        // Recovery: all or nothing.
        assert_eq!(h.since(2, 6, usize::MAX).map(|p| p.len()), Ok(4));
        assert_eq!(h.since(2, 6, 4 * one).map(|p| p.len()), Ok(4));
        assert_eq!(h.since(2, 6, 4 * one - 1), Err(HistoryError::TooLarge));
        // Pages: as many as fit, and at least one.
        let page = |since, max_bytes, reverse| {
            offsets(
                &h.read(HistoryQuery {
                    since,
                    limit: 10,
                    reverse,
                    max_bytes,
                })
                .expect("read"),
            )
        };
        assert_eq!(page(None, 2 * one, false), vec![1, 2]);
        assert_eq!(page(Some(2), 2 * one + 1, false), vec![3, 4]);
        assert_eq!(page(Some(4), 0, false), vec![5], "at least one");
        assert_eq!(page(None, 3 * one, true), vec![6, 5, 4]);
    }
}
