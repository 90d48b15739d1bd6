//! Several Redis servers as shards: channels spread by jump hash, a dead shard affects
//! only its own channels.

mod common;

use std::sync::Arc;

use common::*;
use starling_core::engine::{Broker, EngineError, Step};
use starling_testkit::redis::RedisServer;

#[tokio::test]
async fn a_dead_shard_fails_only_its_channels() {
    let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let a = node(&urls, "a").await;
    let mut b = node(&urls, "b").await;

    // One channel per shard.
    let mut per_shard: Vec<Option<String>> = vec![None; 3];
    for i in 0.. {
        let c = format!("chan{i}");
        let s = a.engine.shard_index(&c);
        per_shard[s].get_or_insert(c);
        if per_shard.iter().all(Option::is_some) {
            break;
        }
    }
    let channels: Vec<String> = per_shard.into_iter().map(Option::unwrap).collect();
    for c in &channels {
        let c: Arc<str> = c.as_str().into();
        b.engine.subscribe(&c).wait().await.unwrap();
    }
    for c in &channels {
        let r = publish(&a.engine, request(c, "x", 10)).await;
        assert_eq!(r.receivers, 1);
        assert_eq!(r.position.offset, 1);
        let got = next(&mut b.pubs).await;
        assert_eq!(&got.channel, c);
    }

    servers[1].kill();
    eventually("shard 1 to be seen down", || async { !a.engine.healthy() }).await;
    let down = a.engine.publish(request(&channels[1], "x", 10));
    assert!(
        matches!(down, Step::Ready(Err(EngineError::Unavailable(_)))),
        "{down:?}"
    );
    for i in [0, 2] {
        let r = publish(&a.engine, request(&channels[i], "y", 10)).await;
        assert_eq!(r.position.offset, 2, "shard {i} unaffected");
        let got = next(&mut b.pubs).await;
        assert_eq!(got.channel, channels[i]);
        assert_eq!(got.publication.offset, 2);
    }

    servers[1].restart();
    let resynced = next(&mut b.resyncs).await.expect("shard 1's channels");
    assert_eq!(resynced, vec![Arc::<str>::from(channels[1].as_str())]);
    eventually("shard 1 back", || async { a.engine.healthy() }).await;
    let r = publish(&a.engine, request(&channels[1], "z", 10)).await;
    assert_eq!(r.receivers, 1);
}
