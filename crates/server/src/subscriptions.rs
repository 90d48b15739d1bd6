//! The channels one connection subscribes to.
//!
//! Most connections hold a few subscriptions: those live in a small vector searched
//! linearly (two subscriptions cost 32 bytes of heap instead of a hash table's ~100);
//! past [`SMALL`] the set becomes a hash table, so a connection with thousands of
//! subscriptions still finds one in O(1).

use std::collections::HashSet;
use std::sync::Arc;

/// Largest set kept as a vector.
const SMALL: usize = 16;

/// A connection's subscribed channel names.
#[derive(Debug)]
pub enum Subscriptions {
    /// Up to [`SMALL`] names, searched linearly.
    Few(Vec<Arc<str>>),
    /// More. Boxed: inline, the table made every session 24 bytes larger.
    Many(Box<HashSet<Arc<str>>>),
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::Few(Vec::new())
    }
}

impl Subscriptions {
    /// Adds `name` (no effect when present).
    pub fn insert(&mut self, name: Arc<str>) {
        match self {
            Subscriptions::Few(list) => {
                if list.contains(&name) {
                    return;
                }
                if list.len() < SMALL {
                    if list.capacity() == 0 {
                        // Room for exactly one (16 bytes) first: most connections hold
                        // one subscription, and a vector's first growth takes room for
                        // four (64 bytes).
                        list.reserve_exact(1);
                    }
                    list.push(name);
                    return;
                }
                let mut set: HashSet<Arc<str>> = list.drain(..).collect();
                set.insert(name);
                *self = Subscriptions::Many(Box::new(set));
            }
            Subscriptions::Many(set) => {
                set.insert(name);
            }
        }
    }

    /// Removes `name`, returning it when it was there.
    pub fn take(&mut self, name: &str) -> Option<Arc<str>> {
        match self {
            Subscriptions::Few(list) => {
                let at = list.iter().position(|n| &**n == name)?;
                let taken = list.swap_remove(at);
                if list.is_empty() {
                    // An idle connection that left its channels holds no buffer.
                    *list = Vec::new();
                }
                Some(taken)
            }
            Subscriptions::Many(set) => set.take(name),
        }
    }

    /// Whether `name` is subscribed.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Subscriptions::Few(list) => list.iter().any(|n| &**n == name),
            Subscriptions::Many(set) => set.contains(name),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Subscriptions::Few(list) => list.len(),
            Subscriptions::Many(set) => set.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every name out, leaving the set empty.
    pub fn drain(&mut self) -> Vec<Arc<str>> {
        match std::mem::take(self) {
            Subscriptions::Few(list) => list,
            Subscriptions::Many(set) => set.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_sets_behave_alike() {
        let mut s = Subscriptions::default();
        for i in 0..40 {
            s.insert(Arc::from(format!("c{i}")));
            s.insert(Arc::from(format!("c{i}")));
            assert_eq!(s.len(), i + 1);
            assert_eq!(matches!(s, Subscriptions::Many(_)), i >= SMALL);
        }
        assert!(s.contains("c7") && !s.contains("c40"));
        assert_eq!(s.take("c7").as_deref(), Some("c7"));
        assert!(s.take("c7").is_none());
        let mut rest = s.drain();
        rest.sort();
        assert_eq!(rest.len(), 39);
        assert!(s.is_empty());
        s.insert(Arc::from("x"));
        assert_eq!(s.take("x").as_deref(), Some("x"));
        assert!(s.is_empty());
    }

    /// The set is 24 bytes in the session, and one subscription 16 bytes of heap.
    #[test]
    fn one_subscription_takes_room_for_one() {
        assert_eq!(std::mem::size_of::<Subscriptions>(), 24);
        let mut s = Subscriptions::default();
        s.insert(Arc::from("a"));
        let Subscriptions::Few(list) = &s else {
            panic!("a small set")
        };
        assert_eq!(list.capacity(), 1);
        s.insert(Arc::from("b"));
        assert_eq!(s.len(), 2);
    }
}
