//! The load a workload puts on the system, before deciding any machine: connections,
//! publications and deliveries per second, bytes in and out, what is stored.
//!
//! Every quantity is one named formula over the workload and the figures:
//!
//! - connections C = users × connections per user
//! - publications P = users × msg rate
//! - deliveries D = P × Σ share × subscribers per channel (the fan-out)
//! - push bytes = (size + envelope of the encoding) × deflate ratio (when compressed and
//!   at least `compression_min_bytes`); bytes per delivery = push + packet overhead
//! - bytes out = D × bytes per delivery; bytes in = P × (size + publish request +
//!   packet overhead); payload in = P × size (the source analysis's figure)
//! - message log = P × (size + log record overhead); archive rows = P, bytes = P ×
//!   (size + archive row overhead) when the archive is on
//! - history entries per channel = the history size when a channel publishes at least
//!   once per TTL, else rate × TTL (a quiet channel's history expires); bytes = entries
//!   × (size + Redis entry overhead)
//! - presence: subscriptions × bytes per subscription; 3 writes per TTL each

use serde::{Deserialize, Serialize};

use crate::figures::{Figures, Id};
use crate::workload::{Compression, Encoding, Workload};

/// One class of channels under load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLoad {
    pub name: String,
    pub share: f64,
    /// Subscribers per channel.
    pub subscribers: f64,
    pub channels: f64,
    pub publications_per_s: f64,
    pub deliveries_per_s: f64,
    /// Publications per second into one channel of the class.
    pub per_channel_per_s: f64,
    /// History entries one channel keeps on average.
    pub history_entries_per_channel: f64,
}

/// The derived load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub connections: f64,
    /// One per connection and class.
    pub subscriptions: f64,
    pub channels: f64,
    pub publications_per_s: f64,
    pub deliveries_per_s: f64,
    /// Deliveries per publication.
    pub fanout: f64,
    pub classes: Vec<ClassLoad>,
    /// Bytes of one push as sent (compressed when it is).
    pub push_bytes: f64,
    pub compressed: bool,
    /// Bytes on the wire per delivery (push + packet overhead).
    pub bytes_per_delivery: f64,
    /// Bytes on the wire per publication received (data + request + packet overhead).
    pub bytes_per_publication: f64,
    /// P × size: the data alone, as the source analysis counts it.
    pub payload_in_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    /// The message log's writes (a single node with `storage.dir`).
    pub log_bytes_per_s: f64,
    pub archive_rows_per_s: f64,
    pub archive_bytes_per_row: f64,
    pub archive_bytes_per_s: f64,
    /// Rows the archive holds after `archive_days`.
    pub archive_rows_kept: f64,
    pub archive_bytes_kept: f64,
    pub history_entries: f64,
    pub history_bytes: f64,
    pub presence_bytes: f64,
    pub presence_writes_per_s: f64,
    /// Keepalive pings per second (each a ping and a pong).
    pub pings_per_s: f64,
    /// Connections set up per second by reconnections.
    pub reconnects_per_s: f64,
}

/// Seconds in an hour and a day.
pub const HOUR: f64 = 3600.0;
pub const DAY: f64 = 86_400.0;

impl Load {
    /// The load of `w` (validated) under figures `f`.
    pub fn of(w: &Workload, f: &Figures) -> Load {
        let connections = w.users * w.connections_per_user;
        let publications = w.users * w.msg_rate;
        let size = w.msg_size;
        let mut classes = Vec::with_capacity(w.mix.len());
        for class in &w.mix {
            let subscribers = class.subscribers.count(connections);
            let channels = class.channel_count(connections);
            let pubs = publications * class.share;
            let per_channel = pubs / channels;
            let entries = history_per_channel(w.history, w.history_ttl_s, per_channel);
            classes.push(ClassLoad {
                name: class.name.clone(),
                share: class.share,
                subscribers,
                channels,
                publications_per_s: pubs,
                deliveries_per_s: pubs * subscribers,
                per_channel_per_s: per_channel,
                history_entries_per_channel: entries,
            });
        }
        let deliveries: f64 = classes.iter().map(|c| c.deliveries_per_s).sum();
        let fanout: f64 = classes.iter().map(|c| c.share * c.subscribers).sum();
        let channels: f64 = classes.iter().map(|c| c.channels).sum();
        let subscriptions = connections * classes.len() as f64;
        let history_entries: f64 = classes
            .iter()
            .map(|c| c.channels * c.history_entries_per_channel)
            .sum();

        let envelope = match w.encoding {
            Encoding::Json => f[Id::JsonEnvelope],
            Encoding::Msgpack => f[Id::MsgpackEnvelope],
        };
        let plain = size + envelope;
        let ratio = match (w.compression, w.encoding) {
            (Compression::None, _) => None,
            (Compression::Deflate { ratio: Some(r) }, _) => Some(r),
            (Compression::Deflate { ratio: None }, Encoding::Json) => Some(f[Id::DeflateRatioJson]),
            (Compression::Deflate { ratio: None }, Encoding::Msgpack) => {
                Some(f[Id::DeflateRatioMsgpack])
            }
        };
        let (push_bytes, compressed) = match ratio {
            Some(r) if plain >= f[Id::CompressionMin] => (plain * r, true),
            _ => (plain, false),
        };
        let bytes_per_delivery = push_bytes + f[Id::PacketOverhead];
        let bytes_per_publication = size + f[Id::PublishRequest] + f[Id::PacketOverhead];

        let archive_on = w.archive_days > 0.0;
        let archive_rows = if archive_on { publications } else { 0.0 };
        let archive_bytes_per_row = size + f[Id::ArchiveRowOverhead];
        let archive_rows_kept = archive_rows * DAY * w.archive_days;
        let presence_subs = if w.presence { subscriptions } else { 0.0 };

        Load {
            connections,
            subscriptions,
            channels,
            publications_per_s: publications,
            deliveries_per_s: deliveries,
            fanout,
            classes,
            push_bytes,
            compressed,
            bytes_per_delivery,
            bytes_per_publication,
            payload_in_per_s: publications * size,
            bytes_in_per_s: publications * bytes_per_publication,
            bytes_out_per_s: deliveries * bytes_per_delivery,
            log_bytes_per_s: publications * (size + f[Id::LogRecordOverhead]),
            archive_rows_per_s: archive_rows,
            archive_bytes_per_row,
            archive_bytes_per_s: archive_rows * archive_bytes_per_row,
            archive_rows_kept,
            archive_bytes_kept: archive_rows_kept * archive_bytes_per_row,
            history_entries,
            history_bytes: history_entries * (size + f[Id::RedisEntryOverhead]),
            presence_bytes: presence_subs * f[Id::PresenceBytes],
            presence_writes_per_s: presence_subs * 3.0 / f[Id::PresenceTtl],
            pings_per_s: connections / f[Id::PingInterval],
            reconnects_per_s: connections * f[Id::Reconnects] / HOUR,
        }
    }
}

/// Entries one channel keeps: the whole history when it publishes at least once per
/// TTL; otherwise its one entry lives TTL seconds of every 1 / rate (a quiet channel's
/// history expires), so rate × TTL on average. A TTL of 0 keeps history for ever.
fn history_per_channel(history: f64, ttl: f64, rate: f64) -> f64 {
    if history <= 0.0 {
        return 0.0;
    }
    let per_ttl = rate * ttl;
    if ttl <= 0.0 || per_ttl >= 1.0 {
        history
    } else {
        per_ttl.min(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{ChannelClass, Subscribers};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    /// The source analysis: 10,000 users × 1 msg/s × 1 KB = 10,000 msg/s, 10 MB/s,
    /// about 36 GB of message volume an hour.
    #[test]
    fn the_source_analysis_example() {
        let f = Figures::default();
        let load = Load::of(&Workload::new(10_000.0, 1.0, 1024.0, 1.0), &f);
        assert_eq!(load.connections, 10_000.0);
        assert_eq!(load.publications_per_s, 10_000.0);
        assert_eq!(load.deliveries_per_s, 10_000.0);
        assert_eq!(load.payload_in_per_s, 10_240_000.0, "10 MB/s in");
        let per_hour = load.payload_in_per_s * HOUR / 1e9;
        assert!((36.0..37.0).contains(&per_hour), "{per_hour} GB/h");
        // JSON push of 1,095 bytes + 70 of packet headers per delivery.
        assert_eq!(load.push_bytes, 1095.0);
        assert!(close(load.bytes_out_per_s, 10_000.0 * 1165.0));
        assert!(close(
            load.bytes_in_per_s,
            10_000.0 * (1024.0 + 200.0 + 70.0)
        ));
        assert!(close(load.log_bytes_per_s, 10_000.0 * (1024.0 + 128.0)));
        assert_eq!(load.archive_rows_per_s, 0.0, "no archive unless asked");
        assert_eq!(load.channels, 10_000.0, "a personal channel each");
    }

    #[test]
    fn fanout_multiplies_deliveries_not_publications() {
        let f = Figures::default();
        let load = Load::of(&Workload::new(10_000.0, 0.5, 100.0, 100.0), &f);
        assert_eq!(load.publications_per_s, 5_000.0);
        assert_eq!(load.deliveries_per_s, 500_000.0);
        assert_eq!(load.fanout, 100.0);
        assert_eq!(load.channels, 100.0);
        // A fan-out beyond the connections reaches every connection.
        let load = Load::of(&Workload::new(10.0, 1.0, 100.0, 1000.0), &f);
        assert_eq!(load.deliveries_per_s, 100.0);
    }

    #[test]
    fn a_channel_mix_weights_its_classes() {
        let f = Figures::default();
        let mut w = Workload::new(1000.0, 1.0, 100.0, 1.0);
        w.mix = vec![
            ChannelClass {
                name: "personal".into(),
                share: 0.9,
                subscribers: Subscribers::Count(1.0),
                channels: None,
            },
            ChannelClass {
                name: "broadcast".into(),
                share: 0.1,
                subscribers: Subscribers::All(crate::workload::AllTag::All),
                channels: Some(1.0),
            },
        ];
        let load = Load::of(&w, &f);
        assert!(close(load.deliveries_per_s, 900.0 + 100.0 * 1000.0));
        assert!(close(load.fanout, 0.9 + 0.1 * 1000.0));
        assert_eq!(load.subscriptions, 2000.0);
        assert_eq!(load.channels, 1001.0);
        assert!(close(load.classes[1].per_channel_per_s, 100.0));
    }

    #[test]
    fn encoding_and_compression_set_the_bytes_per_delivery() {
        let f = Figures::default();
        let mut w = Workload::new(1.0, 1.0, 1024.0, 1.0);
        w.encoding = Encoding::Msgpack;
        assert_eq!(Load::of(&w, &f).push_bytes, 1080.0);
        w.compression = Compression::Deflate { ratio: None };
        let load = Load::of(&w, &f);
        assert!(load.compressed);
        assert!(close(load.push_bytes, 1080.0 * 0.41));
        w.compression = Compression::Deflate { ratio: Some(0.5) };
        assert!(close(Load::of(&w, &f).push_bytes, 540.0));
        // Frames under compression_min_bytes stay plain.
        w.msg_size = 10.0;
        let load = Load::of(&w, &f);
        assert!(!load.compressed);
        assert_eq!(load.push_bytes, 66.0);
    }

    #[test]
    fn history_archive_and_presence() {
        let f = Figures::default();
        let mut w = Workload::new(10_000.0, 1.0, 1024.0, 1.0);
        w.history = 100.0;
        w.archive_days = 7.0;
        w.presence = true;
        let load = Load::of(&w, &f);
        // 1 publication/s per channel, TTL 300 s: every history full.
        assert_eq!(load.history_entries, 1_000_000.0);
        assert!(close(load.history_bytes, 1e6 * 1124.0));
        assert_eq!(load.archive_rows_per_s, 10_000.0);
        assert!(close(load.archive_rows_kept, 10_000.0 * DAY * 7.0));
        assert!((load.archive_bytes_per_row - 1331.4).abs() < 0.1);
        assert_eq!(load.presence_bytes, 1_500_000.0);
        assert_eq!(load.presence_writes_per_s, 500.0);
        // A channel publishing once an hour keeps its entry 300 s of 3,600.
        w.msg_rate = 1.0 / 3600.0;
        let load = Load::of(&w, &f);
        assert!(close(load.history_entries, 10_000.0 * 300.0 / 3600.0));
        assert_eq!(history_per_channel(5.0, 0.0, 0.001), 5.0, "TTL 0 keeps it");
        assert_eq!(history_per_channel(0.0, 300.0, 1.0), 0.0);
    }
}
