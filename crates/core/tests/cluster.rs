//! The cluster path in one process: several hubs (nodes) replicating streams held by
//! the memory broker, through the same node facade and hub code a Redis cluster runs.
//! Publications cross nodes in order, recovery is exact across nodes, holes are healed
//! from history, and what cannot be healed ends in a 4006 disconnect, never in wrong
//! data.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{TextEncoder, frames, history, subscriber};
use starling_core::engine::Idempotency;
use starling_core::engine::memory::{MemoryBroker, MemoryLink};
use starling_core::{
    ChannelOptions, Cluster, DurableAck, Hub, HubCounters, Joined, Journal, JournalError, Node,
    Outbox, Publish, PublishError, Published, RecoverFrom, StreamPosition, Subscriber,
};
use starling_protocol::codes;

/// Upper bound of any wait: a failure, not a synchronisation.
const WAIT: Duration = Duration::from_secs(5);

struct TestNode {
    node: Arc<Node>,
    link: Arc<MemoryLink>,
    counters: Arc<HubCounters>,
}

fn node(broker: &Arc<MemoryBroker>) -> TestNode {
    node_with(broker, 2_000)
}

fn node_with(broker: &Arc<MemoryBroker>, linger_ms: u64) -> TestNode {
    node_journaled(broker, linger_ms, None)
}

fn node_journaled(
    broker: &Arc<MemoryBroker>,
    linger_ms: u64,
    journal: Option<Arc<dyn Journal>>,
) -> TestNode {
    let link = broker.link();
    let counters = Arc::new(HubCounters::default());
    let hub = Hub::new(Arc::new(TextEncoder), counters.clone())
        .with_broker(link.clone())
        .with_linger_ms(linger_ms);
    let hub = Arc::new(hub);
    let cluster = Cluster {
        broker: link.clone(),
        presence: link.clone(),
        control: link.clone(),
    };
    let (node, handler) = Node::clustered(hub, cluster, Arc::new(|_| {}), journal);
    link.attach(handler);
    TestNode {
        node,
        link,
        counters,
    }
}

async fn publish(node: &TestNode, channel: &str, data: &str, options: ChannelOptions) -> u64 {
    node.node
        .publish(
            Publish {
                channel,
                data: Bytes::from(data.to_string()),
                info: None,
                options,
                durable: false,
                idempotency: None,
            },
            &mut || true,
        )
        .wait()
        .await
        .expect("published")
        .position
        .offset
}

/// Subscribes; the first frame reads "joined|<offset>|<recovered offsets or none>".
async fn join(
    node: &TestNode,
    channel: &str,
    sub: Subscriber,
    options: ChannelOptions,
    recover: Option<RecoverFrom>,
) -> Joined {
    let first = Box::new(|j: &Joined| {
        let recovered = j.recovered.as_ref().map_or("none".to_string(), |r| {
            r.iter()
                .map(|p| p.offset.to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        Some(Bytes::from(format!(
            "joined|{}|{recovered}",
            j.position.offset
        )))
    });
    node.node
        .subscribe(channel, sub, options, recover, &mut || true, first)
        .wait()
        .await
        .expect("subscribed")
        .1
}

fn from(position: &StreamPosition, offset: u64) -> RecoverFrom {
    RecoverFrom {
        offset,
        epoch: position.epoch.to_string(),
        max_bytes: usize::MAX,
    }
}

/// Waits until `outbox` held `n` frames in all (drained into `seen`).
async fn collect(outbox: &Outbox, seen: &mut Vec<String>, n: usize) {
    tokio::time::timeout(WAIT, async {
        loop {
            seen.extend(frames(outbox));
            if seen.len() >= n || outbox.pending_disconnect().is_some() {
                return;
            }
            std::future::poll_fn(|cx| outbox.poll_ready(cx)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} frames, got {seen:?}"));
}

fn offsets(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| f.split('|').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn publications_cross_nodes_in_one_order() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(100);
    let (sa, sb) = (subscriber(1), subscriber(2));
    join(&a, "c", sa.clone(), options, None).await;
    join(&b, "c", sb.clone(), options, None).await;
    for i in 0..10 {
        let from = if i % 2 == 0 { &a } else { &b };
        assert_eq!(publish(from, "c", &format!("m{i}"), options).await, i + 1);
    }
    // Each node counts the publications made through it.
    let made = |n: &TestNode| {
        n.counters
            .publications
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!((made(&a), made(&b)), (5, 5));
    for outbox in [&sa.outbox, &sb.outbox] {
        let mut seen = Vec::new();
        collect(outbox, &mut seen, 11).await;
        assert_eq!(seen[0], "joined|0|none");
        assert_eq!(offsets(&seen[1..]), (1..=10).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn recovery_is_exact_across_nodes() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(100);
    let first = subscriber(1);
    let joined = join(&b, "c", first.clone(), options, None).await;
    for i in 1..=3 {
        publish(&a, "c", &format!("m{i}"), options).await;
    }
    assert!(b.node.unsubscribe("c", 1));
    for i in 4..=6 {
        publish(&a, "c", &format!("m{i}"), options).await;
    }
    // Node A never had a subscriber: it reads the gap from the broker.
    let back = subscriber(3);
    join(
        &a,
        "c",
        back.clone(),
        options,
        Some(from(&joined.position, 3)),
    )
    .await;
    publish(&b, "c", "m7", options).await;
    let mut seen = Vec::new();
    collect(&back.outbox, &mut seen, 2).await;
    assert_eq!(seen, ["joined|6|4,5,6", "7|m7"]);
    // Node B still replicates the channel (linger): its cache answers.
    let again = subscriber(4);
    join(
        &b,
        "c",
        again.clone(),
        options,
        Some(from(&joined.position, 2)),
    )
    .await;
    let mut seen = Vec::new();
    collect(&again.outbox, &mut seen, 1).await;
    assert_eq!(seen, ["joined|7|3,4,5,6,7"]);
}

#[tokio::test]
async fn a_hole_is_healed_from_history_before_newer_publications() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(100);
    let sub = subscriber(1);
    join(&b, "c", sub.clone(), options, None).await;
    b.link.drop_next(2);
    for i in 1..=4 {
        publish(&a, "c", &format!("m{i}"), options).await;
    }
    let mut seen = Vec::new();
    collect(&sub.outbox, &mut seen, 5).await;
    assert_eq!(offsets(&seen[1..]), [1, 2, 3, 4]);
    assert_eq!(sub.outbox.pending_disconnect(), None);
    assert_eq!(
        b.counters
            .stream_gaps
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        b.counters
            .stream_heals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_hole_history_no_longer_holds_disconnects_with_insufficient_state() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(2);
    let sub = subscriber(1);
    join(&b, "c", sub.clone(), options, None).await;
    b.link.drop_next(5);
    for i in 1..=6 {
        publish(&a, "c", &format!("m{i}"), options).await;
    }
    let mut seen = Vec::new();
    collect(&sub.outbox, &mut seen, usize::MAX).await;
    assert_eq!(
        sub.outbox.pending_disconnect(),
        Some(codes::INSUFFICIENT_STATE)
    );
    // Nothing out of order was delivered before the disconnect.
    assert_eq!(offsets(&seen[1..]), Vec::<u64>::new());
}

#[tokio::test]
async fn a_restarted_stream_is_never_recovered_as_the_old_one() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(100);
    let sub = subscriber(1);
    join(&b, "c", sub.clone(), options, None).await;
    publish(&a, "c", "m1", options).await;
    let before = broker.position("c");
    broker.forget_streams();
    assert_eq!(publish(&a, "c", "again", options).await, 1);
    let after = broker.position("c");
    assert_ne!(before.epoch, after.epoch);
    let mut seen = Vec::new();
    collect(&sub.outbox, &mut seen, usize::MAX).await;
    assert_eq!(
        sub.outbox.pending_disconnect(),
        Some(codes::INSUFFICIENT_STATE)
    );
    assert_eq!(offsets(&seen[1..]), [1], "only the old epoch's m1");
    // The client comes back with its old position: told plainly, on either node.
    for n in [&a, &b] {
        let back = subscriber(9);
        let joined = join(n, "c", back.clone(), options, Some(from(&before, 1))).await;
        assert_eq!(joined.recovered, None);
        assert_eq!(joined.position, after);
        n.node.unsubscribe("c", 9);
    }
}

#[tokio::test]
async fn a_node_cut_off_catches_up_when_its_link_returns() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(100);
    let sub = subscriber(1);
    join(&b, "c", sub.clone(), options, None).await;
    publish(&a, "c", "m1", options).await;
    b.link.cut(true);
    publish(&a, "c", "m2", options).await;
    publish(&a, "c", "m3", options).await;
    // Back: the engine asks for a resync; the position check heals the hole.
    b.link.cut(false);
    let mut seen = Vec::new();
    collect(&sub.outbox, &mut seen, 4).await;
    assert_eq!(offsets(&seen[1..]), [1, 2, 3]);
    publish(&a, "c", "m4", options).await;
    collect(&sub.outbox, &mut seen, 5).await;
    assert_eq!(offsets(&seen[1..]), [1, 2, 3, 4]);
}

#[tokio::test]
async fn joins_racing_publications_get_every_publication_once() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = history(1000);
    let anchor = join(&b, "c", subscriber(0), options, None).await;
    let publisher = {
        let node = a.node.clone();
        std::thread::spawn(move || {
            for i in 1..=500u32 {
                let step = node.publish(
                    Publish {
                        channel: "c",
                        data: Bytes::from(format!("m{i}")),
                        info: None,
                        options,
                        durable: false,
                        idempotency: None,
                    },
                    &mut || true,
                );
                assert!(matches!(step, starling_core::engine::Step::Ready(Ok(_))));
            }
        })
    };
    // Subscribers join on both nodes while the publisher runs, each recovering from 0.
    let mut subs = Vec::new();
    for key in 1..=20u64 {
        let sub = subscriber(key);
        let n = if key % 2 == 0 { &a } else { &b };
        join(
            n,
            "c",
            sub.clone(),
            options,
            Some(from(&anchor.position, 0)),
        )
        .await;
        subs.push(sub);
        tokio::task::yield_now().await;
    }
    publisher.join().expect("publisher");
    for sub in subs {
        let mut seen = Vec::new();
        // The first frame lists the recovered offsets; live ones follow.
        tokio::time::timeout(WAIT, async {
            loop {
                seen.extend(frames(&sub.outbox));
                let mut all: Vec<u64> = Vec::new();
                if let Some(first) = seen.first() {
                    let recovered = first.rsplit('|').next().unwrap_or("");
                    all.extend(recovered.split(',').filter_map(|s| s.parse::<u64>().ok()));
                }
                all.extend(offsets(&seen[1.min(seen.len())..]));
                if all.last() == Some(&500) {
                    assert_eq!(all, (1..=500).collect::<Vec<_>>(), "subscriber {}", sub.key);
                    return;
                }
                std::future::poll_fn(|cx| sub.outbox.poll_ready(cx)).await;
            }
        })
        .await
        .expect("every publication");
    }
}

#[tokio::test]
async fn presence_and_join_leave_span_nodes() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node(&broker));
    let options = ChannelOptions {
        join_leave: true,
        presence: true,
        ..history(10)
    };
    let watcher = subscriber(1);
    join(&a, "room", watcher.clone(), options, None).await;
    join(&b, "room", subscriber(2), options, None).await;
    join(&b, "room", subscriber(3), options, None).await;
    for n in [&a, &b] {
        let list = n.node.presence("room").wait().await.expect("presence");
        let mut clients: Vec<String> = list.iter().map(|i| i.client.clone()).collect();
        clients.sort();
        assert_eq!(clients, ["c1", "c2", "c3"]);
        assert_eq!(n.node.presence_stats("room").wait().await, Ok((3, 3)));
    }
    assert!(b.node.unsubscribe("room", 2));
    let mut seen = Vec::new();
    collect(&watcher.outbox, &mut seen, 4).await;
    assert_eq!(seen[1..], ["join|c2", "join|c3", "leave|c2"]);
    assert_eq!(a.node.presence_stats("room").wait().await, Ok((2, 2)));
}

#[tokio::test]
async fn a_node_stops_listening_when_its_last_subscriber_left_though_publishing_goes_on() {
    let broker = MemoryBroker::new();
    let (a, b) = (node(&broker), node_with(&broker, 0));
    let options = history(10);
    join(&b, "c", subscriber(1), options, None).await;
    assert!(b.link.interested("c"));
    // The linger holds while a subscriber is there, publications or not.
    publish(&a, "c", "m1", options).await;
    b.node.hub().sweep();
    assert!(b.link.interested("c"));
    assert!(b.node.unsubscribe("c", 1));
    // Wait until the linger (0 ms) has passed on the millisecond clock.
    let left = starling_core::now_ms();
    while starling_core::now_ms() <= left {
        tokio::task::yield_now().await;
    }
    publish(&a, "c", "m2", options).await;
    b.node.hub().sweep();
    assert!(!b.link.interested("c"), "interest dropped after the linger");
    assert!(b.node.hub().channels(None).is_empty());
    // A join later starts over from the broker.
    let back = subscriber(2);
    let joined = join(&b, "c", back.clone(), options, None).await;
    assert_eq!(joined.position.offset, 2);
    assert!(b.link.interested("c"));
}

/// A journal that records what it is given, or fails while `fail` is set.
#[derive(Default)]
struct RecordingJournal {
    records: parking_lot::Mutex<Vec<(String, String, u64, Bytes)>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Journal for RecordingJournal {
    fn append(
        &self,
        channel: &str,
        epoch: &str,
        publication: &starling_protocol::Publication,
        _time_ms: u64,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(JournalError::Failed("disk gone".into()));
        }
        self.records.lock().push((
            channel.to_string(),
            epoch.to_string(),
            publication.offset,
            publication.data.clone(),
        ));
        Ok(durable.then(|| Box::pin(std::future::ready(Ok(()))) as DurableAck))
    }
}

async fn publish_with(
    node: &TestNode,
    data: &str,
    durable: bool,
    idempotency: Option<&str>,
) -> Result<Published, PublishError> {
    node.node
        .publish(
            Publish {
                channel: "c",
                data: Bytes::from(data.to_string()),
                info: None,
                options: history(100),
                durable,
                idempotency: idempotency.map(|key| Idempotency {
                    key: key.to_string(),
                    fingerprint: 7,
                    ttl_ms: 60_000,
                }),
            },
            &mut || true,
        )
        .wait()
        .await
}

#[tokio::test]
async fn each_node_journals_what_it_published_with_the_brokers_position() {
    let broker = MemoryBroker::new();
    let (ja, jb) = (
        Arc::new(RecordingJournal::default()),
        Arc::new(RecordingJournal::default()),
    );
    let a = node_journaled(&broker, 2_000, Some(ja.clone()));
    let b = node_journaled(&broker, 2_000, Some(jb.clone()));
    let plain = node(&broker);
    for (from, data) in [(&a, "a1"), (&b, "b2"), (&a, "a3"), (&plain, "p4")] {
        publish_with(from, data, false, None)
            .await
            .expect("published");
    }
    // An idempotent publish repeated through another node: the broker replays it, and
    // only the first node journals it.
    let first = publish_with(&a, "k5", false, Some("k"))
        .await
        .expect("first");
    let replay = publish_with(&b, "k5", false, Some("k"))
        .await
        .expect("replay");
    assert_eq!(first.position, replay.position);
    // A durable publish waits for the journal; without one it is refused, unpublished.
    let durable = publish_with(&b, "b6", true, None).await.expect("durable");
    durable.durable.expect("an ack").await.expect("on disk");
    let refused = publish_with(&plain, "p7", true, None).await;
    assert!(
        matches!(refused, Err(PublishError::NotPersisted)),
        "{refused:?}"
    );

    let epoch = first.position.epoch.to_string();
    let seen = |j: &RecordingJournal| {
        j.records
            .lock()
            .iter()
            .map(|(c, e, o, d)| {
                assert_eq!((c.as_str(), e.as_str()), ("c", epoch.as_str()));
                (*o, String::from_utf8_lossy(d).into_owned())
            })
            .collect::<Vec<_>>()
    };
    let s = |o: u64, d: &str| (o, d.to_string());
    assert_eq!(seen(&ja), vec![s(1, "a1"), s(3, "a3"), s(5, "k5")]);
    assert_eq!(seen(&jb), vec![s(2, "b2"), s(6, "b6")]);

    // A failed journal: the publication is out (the broker took it), the durable
    // publisher learns that it is not on disk, and the node counts it.
    ja.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publish_with(&a, "a7", true, None).await.expect("published");
    assert_eq!(published.position.offset, 7);
    let ack = published.durable.expect("an ack").await;
    assert!(matches!(ack, Err(JournalError::Failed(_))), "{ack:?}");
    publish_with(&a, "a8", false, None)
        .await
        .expect("published");
    assert_eq!(
        a.counters
            .journal_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
