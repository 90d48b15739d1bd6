//! The read side for `POST /api/analytics`: typed rows from the SQL functions the
//! migration creates (`starling_traffic`, `starling_top_channels`,
//! `starling_top_publishers`, `starling_connection_events_by_code`,
//! `starling_peak_connections`), so the API and a psql session (the views) answer with
//! the same definitions.

use std::time::{Duration, SystemTime};

use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::ArchiveError;
use crate::write::EventKind;

/// A time window `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub from: SystemTime,
    /// Exclusive end.
    pub to: SystemTime,
}

impl Window {
    /// The `length` before `now`.
    pub fn last(length: Duration, now: SystemTime) -> Window {
        Window {
            from: now.checked_sub(length).unwrap_or(SystemTime::UNIX_EPOCH),
            to: now,
        }
    }
}

/// Bucket width of a time series; buckets are aligned on UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Bucket {
    /// The `interval` literal.
    fn interval(self) -> &'static str {
        match self {
            Bucket::Minute => "1 minute",
            Bucket::Hour => "1 hour",
            Bucket::Day => "1 day",
        }
    }
}

/// Publications of one namespace in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceTraffic {
    /// Start of the bucket.
    pub bucket: SystemTime,
    /// The namespace.
    pub namespace: String,
    /// Publications.
    pub messages: i64,
    /// Payload bytes.
    pub bytes: i64,
}

/// One channel's publications over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTraffic {
    /// The channel.
    pub channel: String,
    /// Its namespace.
    pub namespace: String,
    /// Publications.
    pub messages: i64,
    /// Payload bytes.
    pub bytes: i64,
}

/// One publisher's publications over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherTraffic {
    /// The user (`None`: publications without a user, through the HTTP API).
    pub user_id: Option<String>,
    /// Publications.
    pub messages: i64,
    /// Payload bytes.
    pub bytes: i64,
}

/// Connects or disconnects with one close code over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCount {
    /// [`EventKind::Connect`] or [`EventKind::Disconnect`].
    pub kind: EventKind,
    /// The close code (`None` for connects and disconnects without one).
    pub code: Option<i32>,
    /// How many.
    pub events: i64,
}

/// Connections open across all nodes in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPeak {
    /// Start of the bucket.
    pub bucket: SystemTime,
    /// The most open at any moment in it (the count it started with included).
    pub peak: i64,
    /// Open at its end.
    pub at_end: i64,
}

async fn rows(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, ArchiveError> {
    Ok(client.query(sql, params).await?)
}

/// Publications and bytes per namespace per bucket over `window`, by bucket then
/// namespace; only `namespace` when given. Buckets without publications are absent.
pub async fn namespace_traffic(
    client: &impl GenericClient,
    window: Window,
    bucket: Bucket,
    namespace: Option<&str>,
) -> Result<Vec<NamespaceTraffic>, ArchiveError> {
    let rows = rows(
        client,
        "SELECT bucket, namespace, messages, bytes
         FROM starling_traffic($1, $2, $3::text::interval)
         WHERE $4::text IS NULL OR namespace = $4",
        &[&window.from, &window.to, &bucket.interval(), &namespace],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NamespaceTraffic {
                bucket: r.try_get(0)?,
                namespace: r.try_get(1)?,
                messages: r.try_get(2)?,
                bytes: r.try_get(3)?,
            })
        })
        .collect()
}

/// The `limit` channels with the most publications over `window` (ties: more bytes,
/// then by name).
pub async fn top_channels(
    client: &impl GenericClient,
    window: Window,
    limit: u32,
) -> Result<Vec<ChannelTraffic>, ArchiveError> {
    let rows = rows(
        client,
        "SELECT channel, namespace, messages, bytes FROM starling_top_channels($1, $2, $3)",
        &[&window.from, &window.to, &i64::from(limit)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ChannelTraffic {
                channel: r.try_get(0)?,
                namespace: r.try_get(1)?,
                messages: r.try_get(2)?,
                bytes: r.try_get(3)?,
            })
        })
        .collect()
}

/// The `limit` users who published the most over `window` (publications without a user
/// form one row with `user_id: None`).
pub async fn top_publishers(
    client: &impl GenericClient,
    window: Window,
    limit: u32,
) -> Result<Vec<PublisherTraffic>, ArchiveError> {
    let rows = rows(
        client,
        "SELECT user_id, messages, bytes FROM starling_top_publishers($1, $2, $3)",
        &[&window.from, &window.to, &i64::from(limit)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PublisherTraffic {
                user_id: r.try_get(0)?,
                messages: r.try_get(1)?,
                bytes: r.try_get(2)?,
            })
        })
        .collect()
}

/// Connects and disconnects by close code over `window`: connects first, then
/// disconnects, each by count, most first.
pub async fn events_by_code(
    client: &impl GenericClient,
    window: Window,
) -> Result<Vec<CodeCount>, ArchiveError> {
    let rows = rows(
        client,
        "SELECT kind, code, events FROM starling_connection_events_by_code($1, $2)",
        &[&window.from, &window.to],
    )
    .await?;
    rows.iter()
        .filter_map(|r| {
            let kind: String = match r.try_get(0) {
                Ok(kind) => kind,
                Err(e) => return Some(Err(e.into())),
            };
            let kind = EventKind::parse(&kind)?;
            Some((|| {
                Ok(CodeCount {
                    kind,
                    code: r.try_get(1)?,
                    events: r.try_get(2)?,
                })
            })())
        })
        .collect()
}

/// Connections open across all nodes per bucket over `window` (widened to whole
/// buckets), derived from the events: per node, connects (+1) and disconnects (-1)
/// summed since the node's last [`EventKind::NodeStart`] at or before the window (or
/// the oldest retained day), merged into one running total in time order. Every bucket
/// of the window is present.
///
/// Exact when no event was dropped (the writer's `dropped_events` is 0) and every node
/// writes a `NodeStart` when it starts. A crashed node wrote no disconnects: its count
/// stays up until its next start resets it. A dropped event shifts one node's count
/// until its next start. A node up for longer than the retention lost its early
/// connects: the count can read low (even negative) for it.
pub async fn peak_connections(
    client: &impl GenericClient,
    window: Window,
    bucket: Bucket,
) -> Result<Vec<ConnectionPeak>, ArchiveError> {
    let rows = rows(
        client,
        "SELECT bucket, peak, at_end FROM starling_peak_connections($1, $2, $3::text::interval)",
        &[&window.from, &window.to, &bucket.interval()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ConnectionPeak {
                bucket: r.try_get(0)?,
                peak: r.try_get(1)?,
                at_end: r.try_get(2)?,
            })
        })
        .collect()
}
