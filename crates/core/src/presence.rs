//! Presence bookkeeping of one channel: how many subscriptions each user holds, so that
//! `presence_stats` (clients and distinct users) is O(1) instead of a walk over the
//! subscribers under the channel lock.

use std::collections::HashMap;

/// Subscriptions per user id of one channel.
///
/// Most channels have one user (personal channels, a channel per connection or per
/// document) or none: those keep the count inline, without a hash table, because every
/// idle channel pays for this field (a table with one entry costs about 170 bytes, the
/// inline form 24). A table is built when a second user arrives.
#[derive(Debug, Default)]
pub(crate) enum UserCounts {
    /// No subscriber.
    #[default]
    Empty,
    /// Every subscriber is this user (count ≥ 1).
    One(Box<str>, u32),
    /// Two or more users (each count ≥ 1). Boxed so that the inline forms stay small.
    #[expect(
        clippy::box_collection,
        reason = "the box keeps every channel's field at 24 bytes instead of 48"
    )]
    Many(Box<HashMap<Box<str>, u32>>),
}

impl UserCounts {
    /// Counts one more subscription of `user`.
    pub(crate) fn add(&mut self, user: &str) {
        match self {
            UserCounts::Empty => *self = UserCounts::One(Box::from(user), 1),
            UserCounts::One(only, n) if **only == *user => *n = n.saturating_add(1),
            UserCounts::One(..) => {
                let UserCounts::One(only, n) = std::mem::take(self) else {
                    return;
                };
                let mut map = HashMap::with_capacity(2);
                map.insert(only, n);
                map.insert(Box::from(user), 1);
                *self = UserCounts::Many(Box::new(map));
            }
            UserCounts::Many(map) => match map.get_mut(user) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    map.insert(Box::from(user), 1);
                }
            },
        }
    }

    /// Counts one subscription of `user` less (one that [`add`](Self::add) counted).
    pub(crate) fn remove(&mut self, user: &str) {
        match self {
            UserCounts::Empty => {}
            UserCounts::One(only, n) => {
                if **only == *user {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        *self = UserCounts::Empty;
                    }
                }
            }
            UserCounts::Many(map) => {
                if let Some(n) = map.get_mut(user) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(user);
                    }
                }
                if map.is_empty() {
                    *self = UserCounts::Empty;
                }
            }
        }
    }

    /// Distinct users with at least one subscription.
    pub(crate) fn len(&self) -> usize {
        match self {
            UserCounts::Empty => 0,
            UserCounts::One(..) => 1,
            UserCounts::Many(map) => map.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_user_stays_inline() {
        let mut c = UserCounts::default();
        c.add("alice");
        c.add("alice");
        assert!(matches!(c, UserCounts::One(_, 2)));
        c.add("bob");
        assert_eq!(c.len(), 2);
        c.remove("alice");
        c.remove("alice");
        c.remove("bob");
        assert!(matches!(c, UserCounts::Empty));
        assert!(std::mem::size_of::<UserCounts>() <= 24);
    }

    proptest! {
        /// Any sequence of subscribes and unsubscribes counts like a plain map.
        #[test]
        fn counts_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u8..4), 0..64)) {
            let mut counts = UserCounts::default();
            let mut model: HashMap<String, u32> = HashMap::new();
            for (add, user) in ops {
                let user = format!("u{user}");
                if add {
                    counts.add(&user);
                    *model.entry(user).or_default() += 1;
                } else if let Some(n) = model.get_mut(&user) {
                    counts.remove(&user);
                    *n -= 1;
                    if *n == 0 {
                        model.remove(&user);
                    }
                }
                prop_assert_eq!(counts.len(), model.len());
            }
        }
    }
}
