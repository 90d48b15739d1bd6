//! Counters the hub keeps; the server renders them for Prometheus.

use std::sync::atomic::AtomicU64;

/// Hub-level counters and gauges (relaxed atomics: they are statistics, not locks).
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Channels that exist now (gauge).
    pub channels: AtomicU64,
    /// Subscriptions that exist now (gauge).
    pub subscriptions: AtomicU64,
    /// Publications accepted (counter).
    pub publications: AtomicU64,
    /// Frames queued to connections by fan-out (counter).
    pub messages_out: AtomicU64,
    /// Bytes queued to connections by fan-out (counter).
    pub bytes_out: AtomicU64,
    /// Connections disconnected because their queue overflowed (counter).
    pub slow_consumers: AtomicU64,
    /// Publications not queued to a full lossy subscriber (counter).
    pub lossy_drops: AtomicU64,
    /// Publications queued to delta subscribers as a delta rather than in full (counter).
    pub delta_deliveries: AtomicU64,
    /// Publications the message log did not take because it was failed (counter):
    /// delivered live but not persisted, or refused when durability was asked for.
    pub journal_errors: AtomicU64,
    /// Bytes of publications kept in history, node-wide (gauge; see
    /// `History::entry_bytes`).
    pub history_bytes: AtomicU64,
    /// Publications not kept in history because the node's history budget was spent
    /// even after their channel gave up all its older entries (counter).
    pub history_dropped: AtomicU64,
    /// Recoveries answered `recovered: false` because the missed publications exceeded
    /// the recovery byte cap (counter).
    pub recoveries_too_large: AtomicU64,
    /// Publications refused because the message log's queue was full (counter).
    pub journal_busy: AtomicU64,
    /// Holes seen in a broker's stream of a channel (cluster; counter).
    pub stream_gaps: AtomicU64,
    /// Holes filled from the broker's history before newer publications (counter).
    pub stream_heals: AtomicU64,
    /// Channels whose order was lost (hole not in history, stream restarted, too far
    /// behind): their subscribers were disconnected with 4006 (counter).
    pub stream_losses: AtomicU64,
    /// Streams found restarted under a new epoch by the broker (counter).
    pub stream_resets: AtomicU64,
}
