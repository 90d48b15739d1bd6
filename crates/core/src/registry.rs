//! The connections of this node, by key and by user: for node-wide disconnects
//! (shutdown, the disconnect API) and counts.
//!
//! Every operation is O(1) (expected) under the registry's lock: a user's connections
//! are a set, and anonymous connections (user id "") are not indexed by user at all, so
//! that the removal of one of many thousands of anonymous connections does not scan
//! them all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::hub::ClientKey;
use crate::outbox::Outbox;
use starling_protocol::codes::DisconnectCode;

#[derive(Debug)]
struct Entry {
    outbox: Arc<Outbox>,
    user: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<ClientKey, Entry>,
    /// Connections of each authenticated user (anonymous ones are not indexed).
    users: HashMap<Arc<str>, HashSet<ClientKey>>,
}

/// Every open connection of this node.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Woken when the last connection leaves (graceful shutdown waits on it).
    emptied: tokio::sync::Notify,
    /// Connections admitted: open ones plus upgrades answered but not yet registered.
    slots: AtomicUsize,
    /// Channels the server asked connections to leave (the unsubscribe API), by
    /// connection, until each connection's task takes its own.
    leave: Mutex<HashMap<ClientKey, Vec<Arc<str>>>>,
    /// Requests in `leave`: a connection task reads this one word on each turn and
    /// takes the lock only when it is not zero (almost never).
    leaving: AtomicUsize,
    /// The most connections open at once since [`Registry::take_peak`] last read it
    /// (raised under the lock `add` already holds: one atomic max per connect).
    peak: AtomicUsize,
}

impl Registry {
    /// Reserves a place for a new connection, unless `max` are admitted already (0: no
    /// limit). Checked and taken in one atomic step, so concurrent upgrades cannot all
    /// see the last free place. Give it back with [`Registry::release_slot`].
    pub fn try_reserve_slot(&self, max: usize) -> bool {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a place taken by [`Registry::try_reserve_slot`].
    pub fn release_slot(&self) {
        let _ = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records the user a connection authenticated as, unless that user already has
    /// `max` connections on this node (0: no limit). Returns the user's connection
    /// count including this one, or `None` when refused. Checked under the registry's
    /// lock, so concurrent connects of one user cannot pass the limit together.
    ///
    /// The anonymous user ("") is not one user: it is not indexed, never limited, and
    /// the returned count is 1.
    pub fn try_set_user(&self, key: ClientKey, user: Arc<str>, max: usize) -> Option<usize> {
        let mut inner = self.inner.lock();
        if user.is_empty() {
            return inner.clients.contains_key(&key).then_some(1);
        }
        if max > 0 && inner.users.get(&user).is_some_and(|keys| keys.len() >= max) {
            return None;
        }
        let entry = inner.clients.get_mut(&key)?;
        entry.user = Some(user.clone());
        let keys = inner.users.entry(user).or_default();
        keys.insert(key);
        Some(keys.len())
    }

    /// Registers a new connection (not yet authenticated).
    pub fn add(&self, key: ClientKey, outbox: Arc<Outbox>) {
        let mut inner = self.inner.lock();
        inner.clients.insert(key, Entry { outbox, user: None });
        self.peak.fetch_max(inner.clients.len(), Ordering::Relaxed);
    }

    /// The most connections open at once since the last call (or since the start), at
    /// least those open now; starts the next period at the count open now.
    pub fn take_peak(&self) -> usize {
        let inner = self.inner.lock();
        let now = inner.clients.len();
        self.peak.swap(now, Ordering::Relaxed).max(now)
    }

    /// The most connections open at once since [`Registry::take_peak`] last read it,
    /// without starting a new period.
    pub fn peak(&self) -> usize {
        let inner = self.inner.lock();
        self.peak.load(Ordering::Relaxed).max(inner.clients.len())
    }

    /// Records the user a connection authenticated as; returns how many connections
    /// that user now has on this node.
    pub fn set_user(&self, key: ClientKey, user: Arc<str>) -> usize {
        self.try_set_user(key, user, 0).unwrap_or(0)
    }

    /// Asks every connection of `user` on this node to leave `channel` (each takes the
    /// request on its next turn: see [`Registry::take_leave_requests`]); returns how many
    /// were asked. Anonymous connections are not a user: `""` matches none.
    pub fn unsubscribe_user(&self, user: &str, channel: &str) -> usize {
        let inner = self.inner.lock();
        let Some(keys) = inner.users.get(user) else {
            return 0;
        };
        let channel: Arc<str> = Arc::from(channel);
        let mut leave = self.leave.lock();
        for key in keys {
            if let Some(entry) = inner.clients.get(key) {
                leave.entry(*key).or_default().push(channel.clone());
                self.leaving.fetch_add(1, Ordering::Release);
                entry.outbox.wake_task();
            }
        }
        keys.len()
    }

    /// Whether any connection has a leave request waiting (one atomic load).
    pub fn has_leave_requests(&self) -> bool {
        self.leaving.load(Ordering::Acquire) != 0
    }

    /// The channels the server asked connection `key` to leave, taken.
    pub fn take_leave_requests(&self, key: ClientKey) -> Vec<Arc<str>> {
        let taken = self.leave.lock().remove(&key).unwrap_or_default();
        if !taken.is_empty() {
            self.leaving.fetch_sub(taken.len(), Ordering::Release);
        }
        taken
    }

    /// The number of connections `user` holds on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.inner.lock().users.get(user).map_or(0, HashSet::len)
    }

    /// Forgets a connection.
    pub fn remove(&self, key: ClientKey) {
        // A request it never took goes with it.
        drop(self.take_leave_requests(key));
        let mut inner = self.inner.lock();
        let Some(entry) = inner.clients.remove(&key) else {
            return;
        };
        if inner.clients.is_empty() {
            self.emptied.notify_waiters();
        }
        if let Some(user) = entry.user
            && let Some(keys) = inner.users.get_mut(&user)
        {
            keys.remove(&key);
            if keys.is_empty() {
                inner.users.remove(&user);
            }
        }
    }

    /// Asks every connection of `user` to disconnect; returns how many were asked.
    /// Anonymous connections are not a user: `""` matches none.
    pub fn disconnect_user(&self, user: &str, disconnect: DisconnectCode) -> usize {
        let inner = self.inner.lock();
        let Some(keys) = inner.users.get(user) else {
            return 0;
        };
        for key in keys {
            if let Some(entry) = inner.clients.get(key) {
                entry.outbox.disconnect(disconnect);
            }
        }
        keys.len()
    }

    /// Asks every connection to disconnect (graceful shutdown).
    pub fn disconnect_all(&self, disconnect: DisconnectCode) -> usize {
        let inner = self.inner.lock();
        for entry in inner.clients.values() {
            entry.outbox.disconnect(disconnect);
        }
        inner.clients.len()
    }

    /// Waits until no connection is open.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.inner.lock().clients.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.inner.lock().clients.len()
    }

    /// Distinct authenticated users.
    pub fn users(&self) -> usize {
        self.inner.lock().users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::codes;

    #[test]
    fn disconnects_by_user() {
        let reg = Registry::default();
        let a = Arc::new(Outbox::new(100));
        let b = Arc::new(Outbox::new(100));
        reg.add(1, a.clone());
        reg.add(2, b.clone());
        assert_eq!(reg.set_user(1, Arc::from("alice")), 1);
        assert_eq!(reg.set_user(2, Arc::from("bob")), 1);
        assert_eq!(reg.disconnect_user("alice", codes::DISCONNECTED_BY_API), 1);
        assert_eq!(a.pending_disconnect(), Some(codes::DISCONNECTED_BY_API));
        assert_eq!(b.pending_disconnect(), None);
        reg.remove(1);
        assert_eq!(reg.users(), 1);
        assert_eq!(reg.connections(), 1);
        assert_eq!(reg.disconnect_all(codes::SHUTDOWN), 1);
        assert_eq!(b.pending_disconnect(), Some(codes::SHUTDOWN));
    }

    #[test]
    fn leave_requests_reach_the_user_connections_and_go_with_them() {
        let reg = Registry::default();
        for key in 1..=3 {
            reg.add(key, Arc::new(Outbox::new(100)));
        }
        reg.set_user(1, Arc::from("alice"));
        reg.set_user(2, Arc::from("alice"));
        reg.set_user(3, Arc::from("bob"));
        assert!(!reg.has_leave_requests());
        assert_eq!(reg.unsubscribe_user("alice", "news"), 2);
        assert_eq!(reg.unsubscribe_user("nobody", "news"), 0);
        assert_eq!(reg.unsubscribe_user("", "news"), 0);
        assert!(reg.has_leave_requests());
        assert_eq!(reg.user_connections("alice"), 2);
        let taken = reg.take_leave_requests(1);
        assert_eq!(taken.iter().map(|c| &**c).collect::<Vec<_>>(), ["news"]);
        assert!(reg.take_leave_requests(1).is_empty(), "taken once");
        assert!(reg.take_leave_requests(3).is_empty(), "bob was not asked");
        assert!(
            reg.has_leave_requests(),
            "connection 2 has not taken its own"
        );
        reg.remove(2);
        assert!(
            !reg.has_leave_requests(),
            "a closed connection's request goes with it"
        );
    }

    #[test]
    fn limits_connections_per_user_and_node() {
        let reg = Registry::default();
        for key in 1..=3 {
            reg.add(key, Arc::new(Outbox::new(100)));
        }
        let alice: Arc<str> = Arc::from("alice");
        assert_eq!(reg.try_set_user(1, alice.clone(), 2), Some(1));
        assert_eq!(reg.try_set_user(2, alice.clone(), 2), Some(2));
        assert_eq!(reg.try_set_user(3, alice.clone(), 2), None);
        reg.remove(1);
        assert_eq!(reg.try_set_user(3, alice, 2), Some(2), "a place came free");

        assert!(reg.try_reserve_slot(2));
        assert!(reg.try_reserve_slot(2));
        assert!(!reg.try_reserve_slot(2));
        reg.release_slot();
        assert!(reg.try_reserve_slot(2));
        assert!(reg.try_reserve_slot(0), "0 = no limit");
    }

    #[test]
    fn anonymous_connections_are_not_one_user() {
        let reg = Registry::default();
        let anonymous: Arc<str> = Arc::from("");
        for key in 1..=1000 {
            reg.add(key, Arc::new(Outbox::new(100)));
            assert_eq!(reg.try_set_user(key, anonymous.clone(), 1), Some(1));
        }
        assert_eq!(reg.users(), 0, "no authenticated user");
        assert_eq!(reg.connections(), 1000);
        assert!(reg.inner.lock().users.is_empty(), "not indexed by user");
        assert_eq!(reg.disconnect_user("", codes::DISCONNECTED_BY_API), 0);
        for key in 1..=1000 {
            reg.remove(key);
        }
        assert_eq!(reg.connections(), 0);
        assert_eq!(reg.try_set_user(5000, anonymous, 0), None, "unknown key");
    }

    #[test]
    fn a_users_connections_are_a_set() {
        let reg = Registry::default();
        let bot: Arc<str> = Arc::from("bot");
        for key in 1..=100 {
            reg.add(key, Arc::new(Outbox::new(100)));
            assert_eq!(reg.try_set_user(key, bot.clone(), 0), Some(key as usize));
        }
        // Removal in any order leaves exactly the others.
        for key in (1..=100).step_by(2) {
            reg.remove(key);
        }
        assert_eq!(reg.disconnect_user("bot", codes::DISCONNECTED_BY_API), 50);
        for key in (2..=100).step_by(2) {
            reg.remove(key);
        }
        assert_eq!(
            reg.users(),
            0,
            "the user's entry goes with its last connection"
        );
    }
}
