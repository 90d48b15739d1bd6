//! Redis Cluster mode: sharded pub/sub and per-slot scripts on a 3-node cluster.

mod common;

use std::sync::Arc;

use common::*;
use starling_core::HistoryPolicy;
use starling_core::engine::{Broker, ControlBus, ControlMessage, PresenceStore};
use starling_protocol::ClientInfo;
use starling_testkit::redis::RedisCluster;

/// A node (engine) in cluster mode on `cluster`.
async fn cluster_node(cluster: &RedisCluster, name: &str) -> Node {
    node_with(starling_redis::RedisConfig {
        cluster: true,
        ..config(&cluster.urls(), name)
    })
    .await
}

#[tokio::test]
async fn cluster_mode_publishes_delivers_and_reads_history_across_slots() {
    let cluster = RedisCluster::start(3);
    let (mut a, mut b) = (
        cluster_node(&cluster, "a").await,
        cluster_node(&cluster, "b").await,
    );

    // Channels on many slots (so on every node of the cluster).
    let channels: Vec<Arc<str>> = (0..12).map(|i| format!("c{i}").into()).collect();
    for c in &channels {
        b.engine.subscribe(c).wait().await.unwrap();
    }
    for round in 1..=2u64 {
        for c in &channels {
            let r = publish(&a.engine, request(c, "x", 10)).await;
            assert_eq!(r.position.offset, round);
            assert_eq!(r.receivers, 1, "b subscribed {c}");
            let got = next(&mut b.pubs).await;
            assert_eq!(&*got.channel, &**c);
            assert_eq!(got.publication.offset, round);
            assert_eq!(got.epoch, &*r.position.epoch);
        }
    }
    let policy = HistoryPolicy {
        size: 10,
        ttl_ms: 0,
        max_bytes: 0,
    };
    let page = read_history(&a.engine, &channels[3], Some(0), 10, false, policy).await;
    assert_eq!(page.publications.len(), 2);
    assert!(page.complete);

    // Presence writes are pipelined across slots.
    for (i, c) in channels.iter().enumerate() {
        let info = ClientInfo {
            user: format!("u{}", i % 2),
            client: format!("client{i}"),
            conn_info: None,
            chan_info: None,
        };
        a.engine.join(c, &Arc::new(info));
    }
    for c in &channels {
        eventually("presence on every slot", || async {
            b.engine.stats(c).wait().await.unwrap() == (1, 1)
        })
        .await;
    }

    let msg = ControlMessage::Leaving { node: "a".into() };
    a.engine.send(msg.clone()).wait().await.unwrap();
    for rx in [&mut a.controls, &mut b.controls] {
        loop {
            match next(rx).await {
                ControlMessage::Heartbeat(_) => continue,
                other => {
                    assert_eq!(other, msg);
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn cluster_mode_resubscribes_and_resyncs_after_a_node_restart() {
    let mut cluster = RedisCluster::start(3);
    let (a, mut b) = (
        cluster_node(&cluster, "a").await,
        cluster_node(&cluster, "b").await,
    );
    let channels: Vec<Arc<str>> = (0..12).map(|i| format!("c{i}").into()).collect();
    for c in &channels {
        b.engine.subscribe(c).wait().await.unwrap();
    }

    // The node keeps its slots (nodes.conf survives in its directory) but loses its data
    // and every connection.
    cluster.nodes[0].restart();
    cluster.wait_ok();
    let mut resynced = next(&mut b.resyncs).await.expect("b's channels");
    resynced.sort();
    let mut wanted = channels.clone();
    wanted.sort();
    assert_eq!(resynced, wanted);

    for c in &channels {
        let r = publish_eventually(&a.engine, || request(c, "y", 10)).await;
        assert_eq!(r.receivers, 1, "b subscribed {c} again");
        let got = next(&mut b.pubs).await;
        assert_eq!(&*got.channel, &**c);
    }
}

/// The node (id, port) that owns `slot`, from `CLUSTER NODES`.
async fn owner(url: &str, slot: u16) -> (String, u16) {
    let nodes: String = redis::from_redis_value(raw(url, &["CLUSTER", "NODES"]).await).unwrap();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let owns = fields.iter().skip(8).any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            match (lo.parse::<u16>(), hi.parse::<u16>()) {
                (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                _ => false,
            }
        });
        if owns {
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            return (fields[0].to_owned(), port);
        }
    }
    panic!("no owner of slot {slot}");
}

#[tokio::test]
async fn cluster_mode_follows_a_slot_that_moves() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let (a, mut b) = (
        cluster_node(&cluster, "a").await,
        cluster_node(&cluster, "b").await,
    );
    let c: Arc<str> = "moving".into();
    b.engine.subscribe(&c).wait().await.unwrap();
    let first = publish(&a.engine, request(&c, "1", 10)).await;
    assert_eq!(next(&mut b.pubs).await.publication.offset, 1);

    // Move the channel's slot (with its keys) to another node.
    let slot: u16 = match raw(&urls[0], &["CLUSTER", "KEYSLOT", "moving"]).await {
        redis::Value::Int(s) => u16::try_from(s).unwrap(),
        other => panic!("{other:?}"),
    };
    let (from_id, from_port) = owner(&urls[0], slot).await;
    let to = cluster
        .nodes
        .iter()
        .find(|n| n.port() != from_port)
        .unwrap();
    let to_id: String =
        redis::from_redis_value(raw(&to.url(), &["CLUSTER", "MYID"]).await).unwrap();
    let from_url = format!("redis://127.0.0.1:{from_port}");
    let s = slot.to_string();
    raw(
        &to.url(),
        &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id],
    )
    .await;
    raw(&from_url, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
    let keys: Vec<String> =
        redis::from_redis_value(raw(&from_url, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]).await)
            .unwrap();
    assert!(!keys.is_empty());
    let port = to.port().to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    raw(&from_url, &migrate).await;
    for node in &cluster.nodes {
        raw(&node.url(), &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
    }

    // The old owner drops the sharded subscription; b subscribes again and resyncs.
    assert_eq!(next(&mut b.resyncs).await, Some(vec![c.clone()]));
    let r = publish_eventually(&a.engine, || request(&c, "2", 10)).await;
    assert_eq!(
        r.position.epoch, first.position.epoch,
        "the keys moved along"
    );
    assert_eq!(r.position.offset, 2);
    assert_eq!(r.receivers, 1, "b listens on the new owner");
    let got = next(&mut b.pubs).await;
    assert_eq!(got.publication.offset, 2);
}
