//! The Redis engine against real redis-server processes: two nodes on one Redis.

mod common;

use std::sync::Arc;

use common::*;
use starling_core::engine::{Broker, ControlBus, ControlMessage, EngineError, PresenceStore, Step};
use starling_core::{HistoryPolicy, HistoryQuery};
use starling_protocol::ClientInfo;
use starling_redis::{RedisEngine, RedisError};
use starling_testkit::free_port;
use starling_testkit::redis::RedisServer;

fn ch(name: &str) -> Arc<str> {
    name.into()
}

const KEEP: HistoryPolicy = HistoryPolicy {
    size: 3,
    ttl_ms: 0,
    max_bytes: 0,
};

fn query(since: Option<u64>, limit: usize, reverse: bool) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse,
        max_bytes: usize::MAX,
    }
}

fn offsets(page: &starling_core::engine::HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn publish_reaches_the_subscribed_node_with_consecutive_offsets() {
    let redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "chat").await;

    let mut accepted = Vec::new();
    for i in 0..6 {
        let publisher = if i % 2 == 0 { &a.engine } else { &b.engine };
        let r = publish(publisher, request("chat", &format!("m{i}"), 10)).await;
        assert_eq!(r.receivers, 1, "only node b subscribed");
        assert!(!r.replayed);
        accepted.push(r);
    }
    let epoch = accepted[0].position.epoch.clone();
    assert_eq!(epoch.len(), 16);
    for (i, r) in accepted.iter().enumerate() {
        assert_eq!(r.position.offset, i as u64 + 1, "consecutive offsets");
        assert_eq!(r.position.epoch, epoch, "one epoch");
    }
    for i in 0..6 {
        let got = next(&mut b.pubs).await;
        assert_eq!(got.channel, "chat");
        assert_eq!(&*got.epoch, &*epoch);
        assert_eq!(got.publication.offset, i + 1, "in offset order");
        assert_eq!(&got.publication.data[..], format!("m{i}").as_bytes());
    }
    // Subscribing twice is harmless; unsubscribing stops delivery.
    b.engine.subscribe(&ch("chat")).wait().await.unwrap();
    b.engine.unsubscribe(&ch("chat"));
    b.engine.subscribe(&ch("other")).wait().await.unwrap();
    let r = publish(&a.engine, request("chat", "late", 10)).await;
    assert_eq!(
        r.receivers, 0,
        "the unsubscribe went out before the later subscribe"
    );
    publish(&a.engine, request("other", "x", 10)).await;
    let got = next(&mut b.pubs).await;
    assert_eq!(got.channel, "other", "nothing more from chat");
}

#[tokio::test]
async fn publisher_info_travels_with_the_publication() {
    let redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "c").await;
    let info = ClientInfo {
        user: "u1".into(),
        client: "c1".into(),
        conn_info: Some(bytes::Bytes::from_static(b"{}")),
        chan_info: None,
    };
    let mut req = request("c", "hi", 10);
    req.info = Some(Arc::new(info.clone()));
    publish(&a.engine, req).await;
    let got = next(&mut b.pubs).await;
    assert_eq!(got.publication.info, Some(info.clone()));
    let page = read_history(&a.engine, "c", None, 10, false, KEEP).await;
    assert_eq!(page.publications[0].info, Some(info));
}

#[tokio::test]
async fn history_forward_reverse_position_and_completeness() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let c = ch("h");

    // A read of a channel that never had a publication creates its epoch: the
    // publications that follow belong to it.
    let empty = read_history(&a.engine, &c, None, 10, false, KEEP).await;
    assert_eq!(empty.position.offset, 0);
    assert!(!empty.position.epoch.is_empty());
    assert!(empty.publications.is_empty());

    let mut epoch = None;
    for i in 1..=5 {
        let mut req = request("h", &format!("m{i}"), 3);
        req.history = KEEP;
        epoch = Some(publish(&a.engine, req).await.position.epoch);
    }
    let epoch = epoch.unwrap();
    assert_eq!(epoch, empty.position.epoch);
    let read = |since, limit, reverse| read_history(&a.engine, &c, since, limit, reverse, KEEP);

    let page = read(Some(2), 10, false).await;
    assert_eq!(offsets(&page), vec![3, 4, 5]);
    assert!(page.complete);
    assert_eq!(page.position.offset, 5);
    assert_eq!(page.position.epoch, epoch);

    let page = read(Some(1), 10, false).await;
    assert_eq!(offsets(&page), vec![3, 4, 5]);
    assert!(!page.complete, "offset 2 is no longer kept");

    let page = read(None, 2, false).await;
    assert_eq!(offsets(&page), vec![3, 4]);

    let page = read(Some(5), 10, false).await;
    assert!(page.publications.is_empty());
    assert!(page.complete, "since is the newest offset");

    let page = read(None, 10, true).await;
    assert_eq!(offsets(&page), vec![5, 4, 3]);
    let page = read(Some(5), 1, true).await;
    assert_eq!(offsets(&page), vec![4]);

    let page = read(Some(3), 0, false).await;
    assert!(page.publications.is_empty(), "limit 0: position only");
    assert_eq!(page.position.offset, 5);
    assert_eq!(page.position.epoch, epoch);

    let mut capped = query(Some(2), 10, false);
    capped.max_bytes = 1;
    let page = a.engine.history(&c, capped, KEEP).wait().await.unwrap();
    assert_eq!(offsets(&page), vec![3], "at least one, then the byte cap");

    let huge = read(Some(u64::MAX), 10, false).await;
    assert!(huge.publications.is_empty());
    assert!(!huge.complete);
}

#[tokio::test]
async fn history_without_size_still_counts_offsets_and_ages_out() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let c = ch("n");
    for _ in 0..3 {
        publish(&a.engine, request("n", "x", 0)).await;
    }
    let page = read_history(&a.engine, &c, Some(0), 10, false, KEEP).await;
    assert_eq!(page.position.offset, 3, "offsets assigned without history");
    assert!(page.publications.is_empty());
    assert!(!page.complete, "nothing kept to fill the gap");

    // Entries older than the age limit are dropped on read.
    let aging = HistoryPolicy {
        size: 10,
        ttl_ms: 300,
        max_bytes: 0,
    };
    let mut req = request("aging", "old", 10);
    req.history = aging;
    publish(&a.engine, req).await;
    let c = ch("aging");
    let first = read_history(&a.engine, &c, None, 10, false, aging).await;
    assert_eq!(offsets(&first), vec![1]);
    eventually("the entry to age out", || async {
        let page = read_history(&a.engine, &c, None, 10, false, aging).await;
        page.publications.is_empty() && page.position.offset == 1
    })
    .await;
}

#[tokio::test]
async fn idempotent_publish_replays_and_detects_conflicts() {
    let redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "i").await;

    let first = publish(&a.engine, idempotent("i", "x", "k1", 7)).await;
    assert!(!first.replayed);
    let again = publish(&b.engine, idempotent("i", "x", "k1", 7)).await;
    assert!(again.replayed);
    assert_eq!(again.position, first.position);
    assert_eq!(again.receivers, first.receivers);
    let conflict = a.engine.publish(idempotent("i", "y", "k1", 8)).wait().await;
    assert_eq!(conflict, Err(EngineError::IdempotencyConflict));
    let other = publish(&a.engine, idempotent("i", "z", "k2", 7)).await;
    assert_eq!(other.position.offset, 2);

    assert_eq!(next(&mut b.pubs).await.publication.offset, 1);
    assert_eq!(
        next(&mut b.pubs).await.publication.offset,
        2,
        "the replay published nothing"
    );
}

#[tokio::test]
async fn epoch_changes_after_flushall() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let before = publish(&a.engine, request("e", "x", 10)).await;
    raw(&redis.url(), &["FLUSHALL"]).await;
    let after = publish(&a.engine, request("e", "x", 10)).await;
    assert_ne!(after.position.epoch, before.position.epoch);
    assert_eq!(after.position.offset, 1);

    // Only the meta lost (a partial loss): the stream of the old incarnation goes too.
    let again = publish(&a.engine, request("e", "y", 10)).await;
    assert_eq!(again.position.offset, 2);
    raw(&redis.url(), &["DEL", "starling:{e}:meta"]).await;
    let fresh = publish(&a.engine, request("e", "z", 10)).await;
    assert_eq!(fresh.position.offset, 1);
    assert_ne!(fresh.position.epoch, after.position.epoch);
    let page = read_history(&a.engine, "e", None, 10, false, KEEP).await;
    assert_eq!(offsets(&page), vec![1]);
    assert_eq!(&page.publications[0].data[..], b"z");
}

#[tokio::test]
async fn a_killed_pubsub_link_is_reconnected_and_resynced() {
    let redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "k").await;
    let first = publish(&a.engine, request("k", "1", 10)).await;
    assert_eq!(next(&mut b.pubs).await.publication.offset, 1);

    // Redis drops every pub/sub link (both nodes'); the data stays.
    raw(&redis.url(), &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(next(&mut b.resyncs).await, Some(vec![ch("k")]));
    let r = publish_eventually(&a.engine, || request("k", "2", 10)).await;
    assert_eq!(r.position.epoch, first.position.epoch, "nothing was lost");
    assert_eq!(r.position.offset, 2);
    assert_eq!(r.receivers, 1);
    let got = next(&mut b.pubs).await;
    assert_eq!(got.publication.offset, 2);
}

#[tokio::test]
async fn undecodable_messages_are_counted_and_skipped() {
    let redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "g").await;
    for junk in ["", "1", "x y z", "5 e \x01\x00\x7f"] {
        raw(&redis.url(), &["PUBLISH", "starling:{g}:pub", junk]).await;
    }
    raw(&redis.url(), &["PUBLISH", "starling:control", "junk"]).await;
    publish(&a.engine, request("g", "ok", 10)).await;
    let got = next(&mut b.pubs).await;
    assert_eq!(&got.publication.data[..], b"ok");
    let errors = b
        .engine
        .counters()
        .decode_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errors, 5);
}

async fn restart_and_publish(persistence: bool) -> (u64, bool) {
    let mut redis = RedisServer::start_with(persistence);
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let before = publish(&a.engine, request("e", "x", 10)).await;
    redis.kill();
    eventually("the engine to notice", || async { !a.engine.healthy() }).await;
    let down = a.engine.publish(request("e", "x", 10));
    assert!(
        matches!(down, Step::Ready(Err(EngineError::Unavailable(_)))),
        "a publish while the shard is down fails at once: {down:?}"
    );
    redis.restart();
    eventually("the engine to reconnect", || async { a.engine.healthy() }).await;
    let after = publish(&a.engine, request("e", "x", 10)).await;
    (
        after.position.offset,
        after.position.epoch == before.position.epoch,
    )
}

#[tokio::test]
async fn epoch_changes_after_a_restart_without_persistence() {
    assert_eq!(restart_and_publish(false).await, (1, false));
}

#[tokio::test]
async fn epoch_kept_after_a_crash_with_appendfsync_always() {
    assert_eq!(restart_and_publish(true).await, (2, true));
}

#[tokio::test]
async fn pubsub_reconnects_resubscribes_and_resyncs() {
    let mut redis = RedisServer::start();
    let (a, mut b) = pair(&redis, "r").await;
    publish(&a.engine, request("r", "1", 10)).await;
    assert_eq!(next(&mut b.pubs).await.publication.offset, 1);

    redis.restart();
    let resynced = next(&mut b.resyncs).await.expect("the shard's channels");
    assert_eq!(resynced, vec![ch("r")]);
    // Node a may not have noticed the restart yet: its first tries may fail.
    let r = publish_eventually(&a.engine, || request("r", "2", 10)).await;
    assert_eq!(r.receivers, 1, "b resubscribed before it resynced");
    let got = next(&mut b.pubs).await;
    assert_eq!(got.publication.offset, 1, "a new epoch after the data loss");
    assert_eq!(&got.publication.data[..], b"2");
    assert!(
        b.engine
            .counters()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test]
async fn presence_joins_leaves_and_expires_with_its_node() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let b = node(&urls, "b").await;
    let c = ch("p");
    let client = |user: &str, client: &str| {
        Arc::new(ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: None,
        })
    };
    a.engine.join(&c, &client("u1", "a1"));
    a.engine.join(&c, &client("u2", "a2"));
    b.engine.join(&c, &client("u1", "b1"));
    eventually("three members", || async {
        b.engine.stats(&c).wait().await.unwrap() == (3, 2)
    })
    .await;
    let mut members: Vec<String> = a
        .engine
        .presence(&c)
        .wait()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.client)
        .collect();
    members.sort();
    assert_eq!(members, vec!["a1", "a2", "b1"]);

    a.engine.leave(&c, "a2");
    eventually("a2 to leave", || async {
        b.engine.stats(&c).wait().await.unwrap() == (2, 1)
    })
    .await;

    // Writes apply in order: a join at once followed by its leave leaves nothing.
    let q = ch("q");
    a.engine.join(&q, &client("u9", "gone"));
    a.engine.leave(&q, "gone");
    a.engine.join(&q, &client("u9", "stays"));
    eventually("the later join", || async {
        b.engine.stats(&q).wait().await.unwrap() != (0, 0)
    })
    .await;
    let members = b.engine.presence(&q).wait().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].client, "stays");

    // Node a dies: its entries expire within the ttl (900 ms); b keeps refreshing its own.
    a.engine.shutdown();
    eventually("a's entries to expire", || async {
        b.engine.stats(&c).wait().await.unwrap() == (1, 1)
            && b.engine.stats(&q).wait().await.unwrap() == (0, 0)
    })
    .await;
    // Several ttls later b's entry is still there (refreshed every ttl/3).
    let start = tokio::time::Instant::now();
    eventually("three ttls to pass", || async {
        start.elapsed() > std::time::Duration::from_millis(2700)
    })
    .await;
    let left = b.engine.presence(&c).wait().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].client, "b1");
}

#[tokio::test]
async fn control_messages_reach_every_node_including_the_sender() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut a = node(&urls, "a").await;
    let mut hb = config(&urls, "b");
    hb.heartbeat_interval = std::time::Duration::from_millis(50);
    let mut b = node_with(hb).await;
    let msg = ControlMessage::Disconnect {
        user: "u".into(),
        code: 3001,
    };
    a.engine.send(msg.clone()).wait().await.unwrap();
    assert_eq!(
        next_command(&mut a.controls).await,
        msg,
        "the sender gets it too"
    );
    assert_eq!(next_command(&mut b.controls).await, msg);
    // b's heartbeats reach a.
    loop {
        if let ControlMessage::Heartbeat(info) = next(&mut a.controls).await
            && info.name == "b"
        {
            assert_eq!(info.connections, 1);
            break;
        }
    }
}

/// The next control message that is not a heartbeat.
async fn next_command(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ControlMessage>,
) -> ControlMessage {
    loop {
        match next(rx).await {
            ControlMessage::Heartbeat(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn connect_fails_clearly_when_a_shard_is_unreachable() {
    let redis = RedisServer::start();
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let err = RedisEngine::connect(config(&[redis.url(), dead.clone()], "a"))
        .await
        .unwrap_err();
    match err {
        RedisError::Unreachable { address, .. } => assert_eq!(address, dead),
        other => panic!("unexpected {other}"),
    }
    let bad = RedisEngine::connect(starling_redis::RedisConfig {
        prefix: "a{b".into(),
        ..config(&[redis.url()], "a")
    })
    .await
    .unwrap_err();
    assert!(matches!(bad, RedisError::Config(_)));
}

#[tokio::test]
async fn a_hung_shard_is_detected_by_the_probe() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let mut b = node(&urls, "b").await;
    b.engine.subscribe(&ch("s")).wait().await.unwrap();
    // Redis stops answering (the socket stays open): only the probe can tell.
    raw(&redis.url(), &["CLIENT", "PAUSE", "2500", "ALL"]).await;
    eventually("the probe to fail", || async { !b.engine.healthy() }).await;
    assert_eq!(next(&mut b.resyncs).await, Some(vec![ch("s")]));
    assert!(b.engine.healthy());
}

#[tokio::test]
async fn a_subscribed_quiet_channel_keeps_its_epoch() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let short_keep = |name: &str| starling_redis::RedisConfig {
        quiet_keep: std::time::Duration::from_millis(600),
        ..config(&urls, name)
    };
    let a = node_with(short_keep("a")).await;
    let b = node_with(short_keep("b")).await;
    b.engine.subscribe(&ch("kept")).wait().await.unwrap();
    let kept = publish(&a.engine, request("kept", "1", 0)).await;
    let gone = publish(&a.engine, request("gone", "1", 0)).await;
    // Without history the metas expire after the quiet keep, unless someone subscribes.
    eventually("the unwatched meta to expire", || async {
        raw(&redis.url(), &["EXISTS", "starling:{gone}:meta"]).await == redis::Value::Int(0)
    })
    .await;
    let kept_again = publish(&a.engine, request("kept", "2", 0)).await;
    assert_eq!(kept_again.position.epoch, kept.position.epoch);
    assert_eq!(kept_again.position.offset, 2);
    let gone_again = publish(&a.engine, request("gone", "2", 0)).await;
    assert_ne!(gone_again.position.epoch, gone.position.epoch);
    assert_eq!(gone_again.position.offset, 1);
}

/// Publishes, stops Redis gracefully (everything written reaches the append-only file,
/// synced every second), restarts it and reads the position then publishes again.
async fn everysec_restart(rule: starling_redis::RestartEpochs) -> (bool, u64, u64) {
    let mut redis =
        RedisServer::start_args(false, &["--appendonly", "yes", "--appendfsync", "everysec"]);
    let urls = [redis.url()];
    let a = node_with(starling_redis::RedisConfig {
        restart_epochs: rule,
        ..config(&urls, "a")
    })
    .await;
    let before = publish(&a.engine, request("e", "x", 10)).await;
    publish(&a.engine, request("e", "x", 10)).await;
    redis.stop();
    eventually("the engine to notice", || async { !a.engine.healthy() }).await;
    redis.restart();
    eventually("the engine to reconnect", || async { a.engine.healthy() }).await;
    let page = read_history(&a.engine, "e", Some(0), 10, false, KEEP).await;
    let after = publish(&a.engine, request("e", "x", 10)).await;
    assert_eq!(after.position.epoch, page.position.epoch);
    (
        after.position.epoch == before.position.epoch,
        page.position.offset,
        after.position.offset,
    )
}

#[tokio::test]
async fn a_restart_that_may_have_lost_data_starts_new_epochs() {
    // The data survived here, but everysec cannot promise it: new epoch, offsets anew.
    assert_eq!(
        everysec_restart(starling_redis::RestartEpochs::Auto).await,
        (false, 0, 1)
    );
}

#[tokio::test]
async fn restart_epochs_never_keeps_what_survived() {
    assert_eq!(
        everysec_restart(starling_redis::RestartEpochs::Never).await,
        (true, 2, 3)
    );
}

#[tokio::test]
async fn concurrent_subscribes_are_batched() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let b = node(&urls, "b").await;
    let pending: Vec<_> = (0..2000)
        .map(|i| b.engine.subscribe(&ch(&format!("many{i}"))))
        .collect();
    for step in pending {
        step.wait().await.unwrap();
    }
    let stats = raw(&redis.url(), &["INFO", "commandstats"]).await;
    let info: String = redis::from_redis_value(stats).expect("INFO text");
    let calls: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("subscribe calls in INFO commandstats");
    // Requests queue up while a SUBSCRIBE is in flight and go out together (up to 512).
    assert!(calls < 200, "{calls} SUBSCRIBE commands for 2000 channels");
}

// Two workers: the delivering task blocks on the gate while the test goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_delivery_queue_drops_and_resyncs() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let a = node(&urls, "a").await;
    let mut b = node_with(starling_redis::RedisConfig {
        pubsub_queue: 4,
        ..config(&urls, "b")
    })
    .await;
    b.engine.subscribe(&ch("f")).wait().await.unwrap();
    let resume = stall(&b);
    for i in 0..50 {
        publish(&a.engine, request("f", &i.to_string(), 10)).await;
    }
    eventually("messages to be dropped", || async {
        b.engine
            .counters()
            .dropped_messages
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    resume();
    assert_eq!(next(&mut b.resyncs).await, Some(vec![ch("f")]));
    // What was queued arrived in order; the rest the hub heals from history.
    let first = next(&mut b.pubs).await.publication.offset;
    assert_eq!(first, 1);
}
