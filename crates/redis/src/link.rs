//! A connection to one Redis server or to a Redis Cluster, behind one type.
//!
//! A cluster connection routes each command by its first key (every script's keys
//! share the channel's hash tag, so one slot), follows slot moves and reconnects to
//! nodes by itself; pub/sub uses the sharded `SSUBSCRIBE`/`SPUBLISH`, whose messages
//! stay on the nodes of the channel's slot instead of being broadcast to the cluster.

use std::collections::BTreeMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A command or pub/sub connection.
#[derive(Clone)]
pub enum Link {
    /// One server.
    Single(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

impl Link {
    /// Subscribes `names` (one command per slot on a cluster: a sharded subscribe may
    /// not cross slots).
    pub async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.subscribe(names).await,
            Link::Cluster(c) => {
                for group in by_slot(names).values() {
                    c.ssubscribe(group).await?;
                }
                Ok(())
            }
        }
    }

    /// Unsubscribes `names`.
    pub async fn unsubscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.unsubscribe(names).await,
            Link::Cluster(c) => {
                for group in by_slot(names).values() {
                    c.sunsubscribe(group).await?;
                }
                Ok(())
            }
        }
    }
}

fn by_slot(names: &[String]) -> BTreeMap<u16, Vec<&str>> {
    let mut groups: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for n in names {
        groups.entry(slot(n.as_bytes())).or_default().push(n);
    }
    groups
}

/// The Redis Cluster slot of a key or shard channel: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, when not empty) or of the whole name,
/// modulo 16384.
pub fn slot(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &name[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(name)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's check value for CRC16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"starling:{c}:pub"), slot(b"c"));
    }
}
