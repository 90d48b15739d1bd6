//! A channel's history: its most recent publications, bounded by count and by age.
//!
//! Offsets in one history are consecutive (one per publication, no gaps), which makes
//! reads by offset an index computation. Eviction only ever removes the oldest entries.

use std::collections::VecDeque;

use starling_protocol::Publication;

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryPolicy {
    /// Publications kept; 0 disables history.
    pub size: usize,
    /// Publications older than this many milliseconds are dropped; 0 = no age limit.
    pub ttl_ms: u64,
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
}

/// The retained publications of one channel.
#[derive(Debug, Default)]
pub struct History {
    /// (publication time in ms since the Unix epoch, publication), oldest first.
    entries: VecDeque<(u64, Publication)>,
}

impl History {
    /// Appends the next publication (its offset must follow the newest) and evicts what
    /// the policy no longer allows.
    pub fn push(&mut self, now_ms: u64, publication: Publication, policy: HistoryPolicy) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|(_, p)| p.offset + 1 == publication.offset),
            "history offsets must be consecutive"
        );
        if !policy.enabled() {
            self.entries.clear();
            return;
        }
        self.entries.push_back((now_ms, publication));
        self.evict(now_ms, policy);
    }

    /// Drops entries beyond the size limit or older than the age limit.
    pub fn evict(&mut self, now_ms: u64, policy: HistoryPolicy) {
        while self.entries.len() > policy.size {
            self.entries.pop_front();
        }
        if policy.ttl_ms > 0 {
            while self
                .entries
                .front()
                .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > policy.ttl_ms)
            {
                self.entries.pop_front();
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// Publications held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Offset of the oldest publication held.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|(_, p)| p.offset)
    }

    /// Time of the newest publication held.
    pub fn newest_time(&self) -> Option<u64> {
        self.entries.back().map(|(t, _)| *t)
    }

    /// Every publication after `offset` when the history still holds all of them, given
    /// that the stream's newest offset is `top`. `Err` when some are gone.
    pub fn since(&self, offset: u64, top: u64) -> Result<Vec<Publication>, HistoryError> {
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
                Ok(self
                    .entries
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
    /// offset are fine.
    pub fn read(&self, query: HistoryQuery) -> Result<Vec<Publication>, HistoryError> {
        let Some(oldest) = self.oldest() else {
            return Ok(Vec::new());
        };
        let n = self.entries.len();
        if query.reverse {
            // Entries with offset < since, newest first.
            let end = match query.since {
                Some(since) => usize::try_from(since.saturating_sub(oldest))
                    .unwrap_or(usize::MAX)
                    .min(n),
                None => n,
            };
            return Ok(self
                .entries
                .range(..end)
                .rev()
                .take(query.limit)
                .map(|(_, p)| p.clone())
                .collect());
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
        Ok(self
            .entries
            .range(start..)
            .take(query.limit)
            .map(|(_, p)| p.clone())
            .collect())
    }
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
        }
    }

    fn offsets(pubs: &[Publication]) -> Vec<u64> {
        pubs.iter().map(|p| p.offset).collect()
    }

    const POLICY: HistoryPolicy = HistoryPolicy {
        size: 3,
        ttl_ms: 1000,
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
        assert_eq!(offsets(&h.since(2, 5).expect("covered")), vec![3, 4, 5]);
        assert_eq!(offsets(&h.since(4, 5).expect("covered")), vec![5]);
        assert!(h.since(5, 5).expect("up to date").is_empty());
        assert_eq!(
            h.since(1, 5),
            Err(HistoryError::Unrecoverable),
            "offset 2 is gone"
        );
        assert_eq!(
            h.since(6, 5),
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
            });
            assert_eq!(page.map(|p| p.len()), Ok(if reverse { 3 } else { 0 }));
        }
        assert_eq!(h.since(u64::MAX, 3), Err(HistoryError::Unrecoverable));
    }

    #[test]
    fn pages_forward_and_backward() {
        let mut h = History::default();
        let policy = HistoryPolicy {
            size: 10,
            ttl_ms: 0,
        };
        for o in 1..=6 {
            h.push(0, publication(o), policy);
        }
        let page = |since, limit, reverse| {
            offsets(
                &h.read(HistoryQuery {
                    since,
                    limit,
                    reverse,
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
            let policy = HistoryPolicy { size, ttl_ms: ttl };
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
                        match h.read(HistoryQuery { since, limit, reverse }) {
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
                        match h.since(from, top) {
                            Ok(pubs) => {
                                let expected: Vec<u64> = ((from + 1)..=top).collect();
                                prop_assert_eq!(offsets(&pubs), expected);
                            }
                            Err(_) => prop_assert!(from < top && kept.first().is_none_or(|f| *f > from + 1)),
                        }
                    }
                }
                prop_assert!(h.len() <= size);
            }
        }
    }
}
