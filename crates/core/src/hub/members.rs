//! The subscribers of one channel.
//!
//! Most channels have one subscriber (personal channels, a channel per connection or per
//! document): that one is held inline, without a hash table, because every such channel
//! pays for this field (a table with one entry costs about 200 bytes, the inline form
//! nothing beyond the field). A table is built when a second subscriber arrives.

use std::collections::HashMap;
use std::collections::hash_map;

use super::{ClientKey, Subscriber};

/// A channel's subscribers by connection key.
#[derive(Debug, Default)]
pub(super) enum Members {
    /// No subscriber.
    #[default]
    Empty,
    /// Exactly one.
    One(Subscriber),
    /// Two or more. Boxed so that the inline forms stay small.
    #[expect(
        clippy::box_collection,
        reason = "the box keeps every channel's field small"
    )]
    Many(Box<HashMap<ClientKey, Subscriber>>),
}

impl Members {
    /// Adds (or replaces) the subscriber of its key.
    pub(super) fn insert(&mut self, subscriber: Subscriber) {
        match self {
            Members::Empty => *self = Members::One(subscriber),
            Members::One(only) if only.key == subscriber.key => *only = subscriber,
            Members::One(_) => {
                let Members::One(only) = std::mem::take(self) else {
                    return;
                };
                let mut map = HashMap::with_capacity(2);
                map.insert(only.key, only);
                map.insert(subscriber.key, subscriber);
                *self = Members::Many(Box::new(map));
            }
            Members::Many(map) => {
                map.insert(subscriber.key, subscriber);
            }
        }
    }

    /// Removes the subscriber of `key`, if there is one. A table that falls to one
    /// subscriber goes back to the inline form.
    pub(super) fn remove(&mut self, key: ClientKey) -> Option<Subscriber> {
        match self {
            Members::Empty => None,
            Members::One(only) if only.key == key => match std::mem::take(self) {
                Members::One(only) => Some(only),
                _ => None,
            },
            Members::One(_) => None,
            Members::Many(map) => {
                let removed = map.remove(&key)?;
                let last = if map.len() == 1 {
                    map.drain().next().map(|(_, last)| last)
                } else {
                    None
                };
                if let Some(last) = last {
                    *self = Members::One(last);
                }
                Some(removed)
            }
        }
    }

    /// Whether `key` subscribes.
    pub(super) fn contains_key(&self, key: ClientKey) -> bool {
        match self {
            Members::Empty => false,
            Members::One(only) => only.key == key,
            Members::Many(map) => map.contains_key(&key),
        }
    }

    /// How many subscribe.
    pub(super) fn len(&self) -> usize {
        match self {
            Members::Empty => 0,
            Members::One(_) => 1,
            Members::Many(map) => map.len(),
        }
    }

    /// Whether none subscribes.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Members::Empty)
    }

    /// Every subscriber, in no particular order (the same order on every call while
    /// nothing changes).
    pub(super) fn values(&self) -> Values<'_> {
        match self {
            Members::Empty => Values::One(None),
            Members::One(only) => Values::One(Some(only)),
            Members::Many(map) => Values::Many(map.values()),
        }
    }
}

impl Members {
    /// Every subscriber, mutably (same order as [`Members::values`]).
    pub(super) fn values_mut(&mut self) -> ValuesMut<'_> {
        match self {
            Members::Empty => ValuesMut::One(None),
            Members::One(only) => ValuesMut::One(Some(only)),
            Members::Many(map) => ValuesMut::Many(map.values_mut()),
        }
    }
}

/// Iterator over [`Members::values_mut`].
pub(super) enum ValuesMut<'a> {
    One(Option<&'a mut Subscriber>),
    Many(hash_map::ValuesMut<'a, ClientKey, Subscriber>),
}

impl<'a> Iterator for ValuesMut<'a> {
    type Item = &'a mut Subscriber;

    fn next(&mut self) -> Option<&'a mut Subscriber> {
        match self {
            ValuesMut::One(only) => only.take(),
            ValuesMut::Many(values) => values.next(),
        }
    }
}

/// Iterator over [`Members::values`].
pub(super) enum Values<'a> {
    One(Option<&'a Subscriber>),
    Many(hash_map::Values<'a, ClientKey, Subscriber>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a Subscriber;

    fn next(&mut self) -> Option<&'a Subscriber> {
        match self {
            Values::One(only) => only.take(),
            Values::Many(values) => values.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Values::One(only) => {
                let n = usize::from(only.is_some());
                (n, Some(n))
            }
            Values::Many(values) => values.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::FrameFormat;
    use crate::outbox::Outbox;
    use starling_protocol::ClientInfo;

    fn sub(key: ClientKey) -> Subscriber {
        Subscriber::new(
            key,
            Arc::new(Outbox::new(64)),
            FrameFormat(0),
            Arc::new(ClientInfo {
                user: String::new(),
                client: format!("c{key}"),
                conn_info: None,
                chan_info: None,
            }),
        )
    }

    fn keys(m: &Members) -> Vec<ClientKey> {
        let mut k: Vec<_> = m.values().map(|s| s.key).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn grows_to_a_table_and_back() {
        let mut m = Members::default();
        assert!(m.is_empty());
        m.insert(sub(1));
        assert!(matches!(m, Members::One(_)));
        m.insert(sub(1));
        assert_eq!(m.len(), 1, "the same key replaces");
        m.insert(sub(2));
        m.insert(sub(3));
        assert!(matches!(m, Members::Many(_)));
        assert_eq!(keys(&m), vec![1, 2, 3]);
        assert!(m.contains_key(2) && !m.contains_key(4));
        assert!(m.remove(4).is_none());
        assert_eq!(m.remove(2).map(|s| s.key), Some(2));
        assert_eq!(m.remove(1).map(|s| s.key), Some(1));
        assert!(matches!(m, Members::One(_)), "back inline at one");
        assert_eq!(keys(&m), vec![3]);
        assert!(m.remove(1).is_none());
        assert_eq!(m.remove(3).map(|s| s.key), Some(3));
        assert!(m.is_empty());
        assert_eq!(m.values().count(), 0);
    }
}
