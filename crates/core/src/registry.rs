//! The connections of this node, by key and by user: for node-wide disconnects
//! (shutdown, the disconnect API) and counts.

use std::collections::HashMap;
use std::sync::Arc;

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
    users: HashMap<Arc<str>, Vec<ClientKey>>,
}

/// Every open connection of this node.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Woken when the last connection leaves (graceful shutdown waits on it).
    emptied: tokio::sync::Notify,
}

impl Registry {
    /// Registers a new connection (not yet authenticated).
    pub fn add(&self, key: ClientKey, outbox: Arc<Outbox>) {
        self.inner
            .lock()
            .clients
            .insert(key, Entry { outbox, user: None });
    }

    /// Records the user a connection authenticated as; returns how many connections
    /// that user now has on this node.
    pub fn set_user(&self, key: ClientKey, user: Arc<str>) -> usize {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.clients.get_mut(&key) else {
            return 0;
        };
        entry.user = Some(user.clone());
        let keys = inner.users.entry(user).or_default();
        keys.push(key);
        keys.len()
    }

    /// Forgets a connection.
    pub fn remove(&self, key: ClientKey) {
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
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                inner.users.remove(&user);
            }
        }
    }

    /// Asks every connection of `user` to disconnect; returns how many were asked.
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
}
