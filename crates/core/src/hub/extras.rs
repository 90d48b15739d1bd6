//! What few channels hold: a broker replica's sync state, delta subscribers' kept data,
//! a cached presence list.
//!
//! Every channel pays for its fields, and most channels (a personal channel, a channel
//! per document) never have any of these: behind one pointer they cost 8 bytes instead
//! of 32, which keeps the channel in a smaller allocation class. Each accessor borrows
//! only this field, so the rest of the channel's state stays usable beside it.

use std::sync::Arc;

use starling_protocol::ClientInfo;

use super::DeltaChannel;
use super::replica::Replica;

/// A presence list shared by the queries until the channel's members change.
pub(super) type PresenceList = Arc<[Arc<ClientInfo>]>;

/// The rarely used parts of a channel's state; nothing allocated while all are unset.
#[derive(Debug, Default)]
pub(super) struct Extras(Option<Box<Held>>);

#[derive(Debug, Default)]
struct Held {
    replica: Option<Replica>,
    delta: Option<DeltaChannel>,
    presence: Option<PresenceList>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.replica.is_none() && self.delta.is_none() && self.presence.is_none()
    }
}

impl Extras {
    fn held(&mut self) -> &mut Held {
        self.0.get_or_insert_with(Box::default)
    }

    /// Frees the box once nothing is held.
    fn tidy(&mut self) {
        if self.0.as_deref().is_some_and(Held::is_empty) {
            self.0 = None;
        }
    }

    /// The replica's state, when a broker holds the channel's stream.
    pub(super) fn replica(&self) -> Option<&Replica> {
        self.0.as_deref().and_then(|h| h.replica.as_ref())
    }

    /// The replica's state, mutable.
    pub(super) fn replica_mut(&mut self) -> Option<&mut Replica> {
        self.0.as_deref_mut().and_then(|h| h.replica.as_mut())
    }

    /// The replica's state, created (unsynced) if the channel had none.
    pub(super) fn replica_or_default(&mut self) -> &mut Replica {
        self.held().replica.get_or_insert_with(Replica::default)
    }

    /// What the channel keeps for its delta subscribers, while it has some.
    pub(super) fn delta(&self) -> Option<&DeltaChannel> {
        self.0.as_deref().and_then(|h| h.delta.as_ref())
    }

    /// The same, mutable.
    pub(super) fn delta_mut(&mut self) -> Option<&mut DeltaChannel> {
        self.0.as_deref_mut().and_then(|h| h.delta.as_mut())
    }

    /// The same, created empty if the channel had none.
    pub(super) fn delta_or_default(&mut self) -> &mut DeltaChannel {
        self.held().delta.get_or_insert_with(DeltaChannel::default)
    }

    /// Forgets the delta state (the last delta subscriber left).
    pub(super) fn clear_delta(&mut self) {
        if let Some(held) = self.0.as_deref_mut() {
            held.delta = None;
        }
        self.tidy();
    }

    /// The cached presence list, if the members did not change since it was built.
    pub(super) fn presence(&self) -> Option<&PresenceList> {
        self.0.as_deref().and_then(|h| h.presence.as_ref())
    }

    /// Caches a presence list.
    pub(super) fn set_presence(&mut self, list: PresenceList) {
        self.held().presence = Some(list);
    }

    /// Drops the cached presence list (the members changed).
    pub(super) fn clear_presence(&mut self) {
        if let Some(held) = self.0.as_deref_mut() {
            held.presence = None;
        }
        self.tidy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_held_is_one_null_pointer() {
        assert_eq!(std::mem::size_of::<Extras>(), 8);
        let mut extras = Extras::default();
        extras.delta_or_default().subscribers = 2;
        extras.set_presence(Arc::from(Vec::new()));
        assert_eq!(extras.delta().map(|d| d.subscribers), Some(2));
        extras.clear_delta();
        assert!(extras.0.is_some(), "the presence list is still held");
        extras.clear_presence();
        assert!(extras.0.is_none(), "nothing held: nothing allocated");
        assert!(extras.replica().is_none());
        extras.replica_or_default();
        assert!(extras.replica_mut().is_some());
    }
}
