//! The hub against a journal that refuses: a busy or failed message log must never make
//! a publish block, consume an offset it did not persist, or deliver a publication it
//! refused; and the epoch rules used after an unclean stop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use bytes::Bytes;
use common::{TextEncoder, frames, history, subscriber};
use starling_core::{
    DurableAck, Hub, HubCounters, Journal, JournalError, PublishError, RecoverFrom, now_ms,
};
use starling_protocol::Publication;

const OK: u8 = 0;
const BUSY: u8 = 1;
const FAILED: u8 = 2;

/// A journal whose answer the test sets.
#[derive(Default)]
struct Switch {
    mode: AtomicU8,
    taken: parking_lot::Mutex<Vec<u64>>,
}

impl Journal for Switch {
    fn append(
        &self,
        _: &str,
        _: &str,
        p: &Publication,
        _: u64,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError> {
        match self.mode.load(Ordering::SeqCst) {
            BUSY => Err(JournalError::Busy),
            FAILED => Err(JournalError::Failed("disk full".into())),
            _ => {
                self.taken.lock().push(p.offset);
                Ok(durable.then(|| Box::pin(std::future::ready(Ok(()))) as DurableAck))
            }
        }
    }
}

fn hub_with(journal: Arc<dyn Journal>) -> (Hub, Arc<HubCounters>) {
    let counters = Arc::new(HubCounters::default());
    let hub = Hub::new(Arc::new(TextEncoder), counters.clone()).with_journal(journal);
    (hub, counters)
}

fn publish(hub: &Hub, data: &'static str, durable: bool) -> Result<u64, PublishError> {
    hub.publish(
        "c",
        Bytes::from_static(data.as_bytes()),
        None,
        history(100),
        durable,
    )
    .map(|p| p.position.offset)
}

#[test]
fn a_busy_journal_refuses_without_using_an_offset_or_delivering() {
    let journal = Arc::new(Switch::default());
    let (hub, counters) = hub_with(journal.clone());
    let sub = subscriber(1);
    hub.subscribe("c", sub.clone(), history(100), None, |_| None)
        .expect("subscribe");
    assert_eq!(publish(&hub, "a", false), Ok(1));
    journal.mode.store(BUSY, Ordering::SeqCst);
    assert_eq!(publish(&hub, "b", false), Err(PublishError::Overloaded));
    assert_eq!(publish(&hub, "b", true), Err(PublishError::Overloaded));
    assert_eq!(counters.journal_busy.load(Ordering::Relaxed), 2);
    assert_eq!(hub.position("c").expect("exists").offset, 1);
    journal.mode.store(OK, Ordering::SeqCst);
    assert_eq!(
        publish(&hub, "c", false),
        Ok(2),
        "the refused offset is not skipped"
    );
    assert_eq!(frames(&sub.outbox), vec!["1|a", "2|c"]);
    assert_eq!(*journal.taken.lock(), vec![1, 2]);
    // History holds exactly what was published.
    let epoch = hub.position("c").expect("exists").epoch.to_string();
    let (page, _) = hub
        .history(
            "c",
            starling_core::HistoryQuery {
                since: Some(0),
                limit: 10,
                reverse: false,
                max_bytes: usize::MAX,
            },
            Some(&epoch),
            history(100),
        )
        .expect("history");
    assert_eq!(
        page.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_failed_journal_refuses_durable_publishes_and_counts_the_others() {
    let journal = Arc::new(Switch::default());
    let (hub, counters) = hub_with(journal.clone());
    let sub = subscriber(1);
    hub.subscribe("c", sub.clone(), history(100), None, |_| None)
        .expect("subscribe");
    journal.mode.store(FAILED, Ordering::SeqCst);
    // Durable: refused before anything happens.
    assert_eq!(publish(&hub, "a", true), Err(PublishError::NotPersisted));
    assert!(frames(&sub.outbox).is_empty());
    assert_eq!(hub.position("c").expect("exists").offset, 0);
    // Not durable: delivered live (availability), not persisted, counted.
    let p = hub
        .publish("c", Bytes::from_static(b"b"), None, history(100), false)
        .expect("published");
    assert_eq!(p.position.offset, 1);
    assert_eq!(p.delivered, 1);
    let ack = p.durable.expect("the failure is reported to whoever asks");
    let result = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(ack);
    assert!(matches!(result, Err(JournalError::Failed(_))));
    assert_eq!(frames(&sub.outbox), vec!["1|b"]);
    assert_eq!(counters.journal_errors.load(Ordering::Relaxed), 2);
}

/// A journal in front of a bounded queue that nobody drains: the shape of a stalled disk.
struct Stalled(SyncSender<u64>);

impl Journal for Stalled {
    fn append(
        &self,
        _: &str,
        _: &str,
        p: &Publication,
        _: u64,
        _: bool,
    ) -> Result<Option<DurableAck>, JournalError> {
        match self.0.try_send(p.offset) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(_)) => Err(JournalError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(JournalError::Failed("gone".into())),
        }
    }
}

#[test]
fn publishes_never_wait_for_a_stalled_journal() {
    let (tx, rx) = sync_channel(8);
    let (hub, counters) = hub_with(Arc::new(Stalled(tx)));
    let hub = Arc::new(hub);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let mut refused = 0u64;
                for _ in 0..100 {
                    match publish(&hub, "x", false) {
                        Ok(_) => {}
                        Err(PublishError::Overloaded) => refused += 1,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                refused
            })
        })
        .collect();
    let refused: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(refused, 400 - 8);
    assert_eq!(counters.journal_busy.load(Ordering::Relaxed), 392);
    // Exactly the accepted offsets, in order, with no gap.
    assert_eq!(
        rx.try_iter().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(hub.position("c").expect("exists").offset, 8);
}

fn restored(hub: &Hub, channel: &str, epoch: &str, offsets: impl Iterator<Item = u64>) {
    for offset in offsets {
        let p = Publication {
            data: Bytes::from(offset.to_string()),
            offset,
            info: None,
            tags: None,
            delta: false,
        };
        hub.restore(channel, epoch, p, now_ms(), history(100));
    }
}

fn recovered(hub: &Hub, channel: &str, offset: u64, epoch: &str) -> Option<Vec<u64>> {
    let from = RecoverFrom {
        offset,
        epoch: epoch.to_string(),
        max_bytes: usize::MAX,
    };
    let key = 1000 + offset;
    let (_, joined) = hub
        .subscribe(channel, subscriber(key), history(100), Some(&from), |_| {
            None
        })
        .expect("subscribe");
    hub.unsubscribe(channel, key);
    joined
        .recovered
        .map(|ps| ps.iter().map(|p| p.offset).collect())
}

#[test]
fn no_recovery_across_a_record_the_log_skipped() {
    let hub = Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()));
    // Offset 6 was in a corrupt region of the log.
    restored(&hub, "c", "e1", (1..=5).chain(7..=9));
    assert_eq!(recovered(&hub, "c", 4, "e1"), None, "5..9 would miss 6");
    assert_eq!(recovered(&hub, "c", 6, "e1"), Some(vec![7, 8, 9]));
}

#[test]
fn renewed_epochs_keep_offsets_and_history_but_refuse_old_positions() {
    let hub = Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()));
    restored(&hub, "c", "e1", 1..=3);
    let renewed = hub.renew_epochs();
    assert_eq!(renewed.len(), 1);
    let (name, position) = &renewed[0];
    assert_eq!((&**name, position.offset), ("c", 3));
    assert_ne!(&*position.epoch, "e1");
    assert_eq!(hub.position("c").expect("exists"), *position);
    assert_eq!(recovered(&hub, "c", 1, "e1"), None, "old epoch");
    assert_eq!(
        recovered(&hub, "c", 1, &position.epoch),
        Some(vec![2, 3]),
        "history stays readable in the new epoch"
    );
    let next = hub
        .publish("c", Bytes::from_static(b"n"), None, history(100), false)
        .expect("publish");
    assert_eq!(next.position.offset, 4, "offsets continue");
    assert_eq!(next.position.epoch, position.epoch);
}

#[test]
fn an_epoch_record_is_replayed_in_order() {
    let hub = Hub::new(Arc::new(TextEncoder), Arc::new(HubCounters::default()));
    restored(&hub, "c", "e1", 1..=3);
    hub.restore_epoch("c", "e2", 3, history(100));
    restored(&hub, "c", "e2", 4..=5);
    let pos = hub.position("c").expect("exists");
    assert_eq!((pos.offset, &*pos.epoch), (5, "e2"));
    assert_eq!(recovered(&hub, "c", 1, "e2"), Some(vec![2, 3, 4, 5]));
    // The older records are gone (retention): the channel restarts empty at the offset.
    hub.restore_epoch("d", "e3", 40, history(100));
    let pos = hub.position("d").expect("exists");
    assert_eq!((pos.offset, &*pos.epoch), (40, "e3"));
    assert_eq!(recovered(&hub, "d", 39, "e3"), None);
    assert_eq!(recovered(&hub, "d", 40, "e3"), Some(vec![]));
}
