//! Writing rows: binary `COPY` in one transaction with the cursor.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use crate::ArchiveError;
use crate::schema::ensure_days;
use crate::time::Day;

/// Name of the namespace of channels without a `ns:` prefix (as in the core).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace of `channel`: what comes before the first `:`, or `default`.
pub fn namespace_of(channel: &str) -> &str {
    match channel.split_once(':') {
        Some((ns, _)) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

/// One publication to archive.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicationRow {
    /// The channel (its namespace is derived with [`namespace_of`]).
    pub channel: String,
    /// The channel's epoch at publish time.
    pub epoch: String,
    /// The offset in that epoch (at most `i64::MAX`).
    pub offset: u64,
    /// When it was published: the time recorded in the log, so that a record read again
    /// carries the same time (the dedupe key includes it).
    pub time: SystemTime,
    /// The publishing user (`None`: published through the HTTP API).
    pub user_id: Option<String>,
    /// The publishing connection (`None`: published through the HTTP API).
    pub client_id: Option<String>,
    /// The payload as published.
    pub data: Bytes,
}

impl PublicationRow {
    /// The namespace of the row's channel.
    pub fn namespace(&self) -> &str {
        namespace_of(&self.channel)
    }

    /// What the row weighs in a queue: its payload and strings, plus a fixed overhead.
    pub fn weight(&self) -> usize {
        96 + self.channel.len()
            + self.epoch.len()
            + self.user_id.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len)
            + self.data.len()
    }
}

/// A position in a node's local message log: the log's identity (a new log, e.g. after
/// its directory was wiped, has another id, and positions start over) and a position in
/// it, meaning "every record before this position is archived".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// Which log.
    pub log_id: Arc<str>,
    /// Where in it (at most `i64::MAX`).
    pub position: u64,
}

/// What happens in a connection (the event rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A client connected (authenticated).
    Connect,
    /// A client's connection ended, with the close code when there was one.
    Disconnect,
    /// A client subscribed to a channel.
    Subscribe,
    /// A client left a channel.
    Unsubscribe,
    /// The node started (it holds no connections): resets its connection count, see
    /// [`crate::analytics::peak_connections`]. Write one at every start.
    NodeStart,
}

impl EventKind {
    /// The value in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::NodeStart => "node_start",
        }
    }

    /// The kind of a `kind` column value.
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "connect" => EventKind::Connect,
            "disconnect" => EventKind::Disconnect,
            "subscribe" => EventKind::Subscribe,
            "unsubscribe" => EventKind::Unsubscribe,
            "node_start" => EventKind::NodeStart,
            _ => return None,
        })
    }
}

/// One connection event to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The connection's user (`None` for anonymous connections and node events).
    pub user_id: Option<String>,
    /// The connection's client id (`None` for node events).
    pub client_id: Option<String>,
    /// The channel (subscribe and unsubscribe).
    pub channel: Option<String>,
    /// The close code (disconnect).
    pub code: Option<u16>,
}

impl ConnectionEvent {
    /// What the event weighs in a queue.
    pub fn weight(&self) -> usize {
        64 + self.user_id.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len)
            + self.channel.as_ref().map_or(0, String::len)
    }
}

/// What [`write_publications`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// Rows inserted.
    pub inserted: u64,
    /// Rows skipped because the archive already had them (same channel, epoch, offset
    /// and time).
    pub duplicates: u64,
    /// The node's cursor after the commit (`None` when it has none).
    pub cursor: Option<LogPosition>,
    /// Partitions created on demand for the rows' days.
    pub created_partitions: Vec<String>,
}

/// PostgreSQL's text cannot hold NUL; a row is never refused for one (it would be
/// refused forever): it becomes U+FFFD.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn bigint(what: &'static str, value: u64) -> Result<i64, ArchiveError> {
    i64::try_from(value).map_err(|_| ArchiveError::OutOfRange { what, value })
}

const STAGING: &str = "SET LOCAL client_min_messages = warning;
    CREATE TEMP TABLE IF NOT EXISTS starling_staging_publications (
        channel text, namespace text, epoch text, \"offset\" bigint, published_at timestamptz,
        user_id text, client_id text, size integer, data bytea
    ) ON COMMIT DELETE ROWS";

const STAGING_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::BYTEA,
];

/// Writes `rows` for `node` and moves the node's cursor to `cursor`, in one transaction:
///
/// 1. partitions missing for the rows' days are created first (their own short
///    transaction under the DDL lock, see [`ensure_days`]);
/// 2. `BEGIN`; the rows go by binary `COPY` into a session-local staging table
///    (`ON COMMIT DELETE ROWS`);
/// 3. `INSERT INTO starling_publications SELECT ... FROM staging ON CONFLICT DO
///    NOTHING`: rows already archived (same channel, epoch, offset, time) are skipped;
/// 4. the cursor row of `node` is set to `cursor`, unless that would move it backwards
///    within the same log (a different `log_id` always replaces it);
/// 5. `COMMIT`.
///
/// Rows and cursor commit together or not at all. The log is read at least once (a
/// crash after the commit but before the reader learnt of it re-reads from the stored
/// cursor, and a crash before the commit loses the rows and the cursor move together),
/// and the unique key turns every re-read into a skipped duplicate: effectively once.
/// An empty `rows` only moves the cursor.
pub async fn write_publications(
    client: &mut Client,
    node: &str,
    rows: &[PublicationRow],
    cursor: Option<&LogPosition>,
) -> Result<WriteReport, ArchiveError> {
    // Everything that can refuse a row is checked before anything is sent.
    let mut days = BTreeSet::new();
    for row in rows {
        bigint("offset", row.offset)?;
        days.insert(Day::of(row.time)?);
    }
    let cursor_position = cursor.map(|c| bigint("position", c.position)).transpose()?;
    let days: Vec<Day> = days.into_iter().collect();
    let created_partitions = ensure_days(client, &days).await?;

    let tx = client.transaction().await?;
    let mut inserted = 0;
    if !rows.is_empty() {
        tx.batch_execute(STAGING).await?;
        let sink = tx
            .copy_in("COPY pg_temp.starling_staging_publications FROM STDIN BINARY")
            .await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &STAGING_TYPES));
        for row in rows {
            let offset = bigint("offset", row.offset)?;
            let size = i32::try_from(row.data.len()).unwrap_or(i32::MAX);
            let channel = text(&row.channel);
            let namespace = text(row.namespace());
            let epoch = text(&row.epoch);
            let user = row.user_id.as_deref().map(text);
            let client_id = row.client_id.as_deref().map(text);
            let values: [&(dyn ToSql + Sync); 9] = [
                &channel.as_ref(),
                &namespace.as_ref(),
                &epoch.as_ref(),
                &offset,
                &row.time,
                &user.as_deref(),
                &client_id.as_deref(),
                &size,
                &row.data.as_ref(),
            ];
            writer.as_mut().write(&values).await?;
        }
        writer.finish().await?;
        inserted = tx
            .execute(
                "INSERT INTO starling_publications
                     (channel, namespace, epoch, \"offset\", published_at, user_id, client_id,
                      size, data, node)
                 SELECT channel, namespace, epoch, \"offset\", published_at, user_id, client_id,
                        size, data, $1
                 FROM pg_temp.starling_staging_publications
                 ON CONFLICT DO NOTHING",
                &[&text(node).as_ref()],
            )
            .await?;
    }
    if let (Some(c), Some(position)) = (cursor, cursor_position) {
        tx.execute(
            "INSERT INTO starling_archive_cursor AS c (node, log_id, position, updated_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (node) DO UPDATE
                 SET log_id = excluded.log_id, position = excluded.position, updated_at = now()
                 WHERE c.log_id <> excluded.log_id OR c.position < excluded.position",
            &[&text(node).as_ref(), &text(&c.log_id).as_ref(), &position],
        )
        .await?;
    }
    let cursor = read_cursor(&tx, node).await?;
    tx.commit().await?;
    Ok(WriteReport {
        inserted,
        duplicates: rows.len() as u64 - inserted,
        cursor,
        created_partitions,
    })
}

/// The cursor of `node`: where its log has been archived up to (`None` before the first
/// write with a cursor). The log reader starts from here after a restart.
pub async fn read_cursor(
    client: &impl GenericClient,
    node: &str,
) -> Result<Option<LogPosition>, ArchiveError> {
    let row = client
        .query_opt(
            "SELECT log_id, position FROM starling_archive_cursor WHERE node = $1",
            &[&text(node).as_ref()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let log_id: String = row.try_get(0)?;
    let position: i64 = row.try_get(1)?;
    Ok(Some(LogPosition {
        log_id: log_id.into(),
        position: position.max(0).unsigned_abs(),
    }))
}

const EVENT_TYPES: [Type; 7] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
];

/// Writes connection events for `node` by binary `COPY` straight into the partitioned
/// table (no dedupe: events are best effort). Missing partitions for their days are
/// created first. Returns the number of rows written.
pub async fn write_events(
    client: &mut Client,
    node: &str,
    events: &[ConnectionEvent],
) -> Result<u64, ArchiveError> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut days = BTreeSet::new();
    for event in events {
        days.insert(Day::of(event.at)?);
    }
    let days: Vec<Day> = days.into_iter().collect();
    ensure_days(client, &days).await?;
    let node = text(node);
    let tx = client.transaction().await?;
    let sink = tx
        .copy_in(
            "COPY starling_connection_events (at, node, kind, user_id, client_id, channel, code)
             FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &EVENT_TYPES));
    for event in events {
        let user = event.user_id.as_deref().map(text);
        let client_id = event.client_id.as_deref().map(text);
        let channel = event.channel.as_deref().map(text);
        let code = event.code.map(i32::from);
        let values: [&(dyn ToSql + Sync); 7] = [
            &event.at,
            &node.as_ref(),
            &event.kind.as_str(),
            &user.as_deref(),
            &client_id.as_deref(),
            &channel.as_deref(),
            &code,
        ];
        writer.as_mut().write(&values).await?;
    }
    let written = writer.finish().await?;
    tx.commit().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert_eq!(namespace_of("chat:lobby"), "chat");
        assert_eq!(namespace_of("lobby"), "default");
        assert_eq!(namespace_of("a:b:c"), "a");
        assert_eq!(namespace_of(":x"), "default");
    }

    #[test]
    fn nul_becomes_replacement_character() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("ab"), Cow::Borrowed(_)));
    }
}
