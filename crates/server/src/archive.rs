//! The archive's server side: reads the message log from the position PostgreSQL last
//! stored (the log's tailing reader), hands each publication to the archive writer
//! (`starling-archive`), sends connection events, and renders the writer's numbers.
//!
//! Delivery: publications at least once from the log (the writer stores the log position
//! with each batch, in the same transaction), made effectively once by the archive's
//! unique key. The reader waits when the writer's queue is full, so nothing is dropped
//! while PostgreSQL is away: the archive lags, and catches up while the log still holds
//! the records (a record the log's retention deleted first is counted as lost in
//! `starling_archive_log_gap_records_total`). Connection events are best effort: a full
//! queue drops them, counted.
//!
//! In a cluster the log read is the node's archive journal (`journal::open_cluster_archive`):
//! each node archives the publications it published itself, appended once the broker
//! accepted them, so every publication is archived by exactly one node.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_archive::{
    ConnectionEvent, EventKind, LogPosition, PublicationRow, Writer, WriterConfig, read_cursor,
    tokio_postgres,
};
use starling_log::{Log, ReadError, Record};
use tracing::{info, warn};

use crate::config::ArchiveConfig;

/// Records read from the log in one step at most.
const READ_RECORDS: usize = 1000;
/// Bytes read from the log in one step at most.
const READ_BYTES: usize = 4 * 1024 * 1024;

/// The running archive of a node.
pub struct ArchiveSink {
    writer: Writer,
    /// Where the archive is, for the analytics' own short-lived connections.
    postgres: tokio_postgres::Config,
    events: bool,
    /// Log gaps met (retention deleted records before they were archived).
    gaps: AtomicU64,
    /// Records lost in those gaps (an upper bound).
    gap_records: AtomicU64,
    /// The log position the reader has reached.
    read_position: AtomicU64,
}

impl std::fmt::Debug for ArchiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSink").finish_non_exhaustive()
    }
}

impl ArchiveSink {
    /// Starts the writer and the log reader for node `node` (needs a tokio runtime).
    pub fn start(config: &ArchiveConfig, node: &str, log: Arc<Log>) -> anyhow::Result<Arc<Self>> {
        let postgres: tokio_postgres::Config = config.url.parse()?;
        let mut writer_config = WriterConfig::new(postgres.clone(), node);
        writer_config.batch_rows = config.batch_rows;
        writer_config.linger = Duration::from_millis(config.linger_ms);
        writer_config.partitions_ahead = config.partitions_ahead_days;
        writer_config.retention_days = (config.retention_days > 0).then_some(config.retention_days);
        let sink = Arc::new(ArchiveSink {
            writer: Writer::start(writer_config),
            postgres: postgres.clone(),
            events: config.events,
            gaps: AtomicU64::new(0),
            gap_records: AtomicU64::new(0),
            read_position: AtomicU64::new(0),
        });
        sink.event(EventKind::NodeStart, None, None, None, None);
        tokio::spawn(read_log(sink.clone(), postgres, node.to_string(), log));
        Ok(sink)
    }

    /// Records a connection event (never waits; dropped and counted when the queue is
    /// full, or not recorded at all with `archive.events = false`).
    pub fn event(
        &self,
        kind: EventKind,
        user: Option<&str>,
        client: Option<&str>,
        channel: Option<&str>,
        code: Option<u16>,
    ) {
        if !self.events {
            return;
        }
        let _ = self.writer.try_send_event(ConnectionEvent {
            at: SystemTime::now(),
            kind,
            user_id: user.filter(|u| !u.is_empty()).map(str::to_string),
            client_id: client.map(str::to_string),
            channel: channel.map(str::to_string),
            code,
        });
    }

    /// A new connection to the archive's database, for a read (`POST /api/analytics`):
    /// one per request, so that a slow query never holds up the writer's connection.
    /// The connection ends when the client is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, starling_archive::ArchiveError> {
        let (client, connection) = self.postgres.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("archive: an analytics connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Writes what is queued, for up to `grace` (graceful shutdown).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.writer.shutdown(grace).await
    }

    /// Whether the writer is connected, its lag and its last error (for `/ready`).
    pub fn health(&self) -> serde_json::Value {
        let stats = self.writer.stats();
        serde_json::json!({
            "connected": stats.connected,
            "lag_seconds": stats.lag(SystemTime::now()).map(|d| d.as_secs_f64()),
            "queued": stats.queued_publications,
            "last_error": stats.last_error,
        })
    }

    /// The archive's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let s = self.writer.stats();
        let counters: [(&str, &str, u64); 9] = [
            (
                "starling_archive_rows_total",
                "Publications written to the archive (duplicates not counted).",
                s.publications,
            ),
            (
                "starling_archive_duplicates_total",
                "Publications read again from the log and skipped as already archived.",
                s.duplicates,
            ),
            (
                "starling_archive_events_total",
                "Connection events written to the archive.",
                s.events,
            ),
            (
                "starling_archive_batches_total",
                "Batches (COPY transactions) committed.",
                s.batches,
            ),
            (
                "starling_archive_batch_errors_total",
                "Batches that failed and were retried.",
                s.batch_errors,
            ),
            (
                "starling_archive_rejected_total",
                "Publications PostgreSQL refused (skipped alone).",
                s.rejected_publications,
            ),
            (
                "starling_archive_dropped_events_total",
                "Connection events dropped: the queue was full.",
                s.dropped_events,
            ),
            (
                "starling_archive_log_gaps_total",
                "Gaps in the log met by the archive reader: retention deleted records before they were archived.",
                self.gaps.load(Ordering::Relaxed),
            ),
            (
                "starling_archive_log_gap_records_total",
                "Publications lost to the archive in those gaps (an upper bound).",
                self.gap_records.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let lag = s.lag(SystemTime::now()).map_or(0.0, |d| d.as_secs_f64());
        let gauges: [(&str, &str, f64); 4] = [
            (
                "starling_archive_connected",
                "1 while the archive writer is connected to PostgreSQL.",
                f64::from(u8::from(s.connected)),
            ),
            (
                "starling_archive_lag_seconds",
                "How far the archive is behind: now minus the time of the newest archived publication, 0 when nothing waits.",
                lag,
            ),
            (
                "starling_archive_queued_rows",
                "Publications waiting for the archive writer.",
                s.queued_publications as f64,
            ),
            (
                "starling_archive_read_position",
                "The message-log position the archive reader has reached.",
                self.read_position.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "starling_archive_batch_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to write one batch (COPY, insert, cursor, commit).\n# TYPE {name} histogram"
        );
        let mut count = 0;
        for (i, n) in s.batch_seconds_buckets.iter().enumerate() {
            count = *n;
            match starling_archive::writer::BATCH_SECONDS_BOUNDS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            s.batch_seconds_sum
        );
    }
}

/// The log record of a publication as an archive row; `None` for the log's own epoch
/// records (no payload) and for what does not decode.
fn row(record: Record) -> Option<PublicationRow> {
    if record.payload.is_empty() {
        return None;
    }
    let publication = crate::journal::decode(&record)?;
    let info = publication.info;
    Some(PublicationRow {
        channel: record.channel,
        epoch: record.epoch,
        offset: record.offset,
        time: UNIX_EPOCH + Duration::from_millis(record.time_ms),
        user_id: info
            .as_ref()
            .map(|i| i.user.clone())
            .filter(|u| !u.is_empty()),
        client_id: info.map(|i| i.client),
        data: publication.data,
    })
}

/// Where to start reading: the stored cursor when it belongs to this log, else the start.
async fn start_position(postgres: &tokio_postgres::Config, node: &str, log: &Log) -> u64 {
    let mut delay = Duration::from_millis(100);
    loop {
        let stored = async {
            let (client, connection) = postgres
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(starling_archive::ArchiveError::from)?;
            let task = tokio::spawn(connection);
            let cursor = read_cursor(&client, node).await;
            drop(client);
            let _ = task.await;
            cursor
        };
        match stored.await {
            Ok(Some(cursor)) if *cursor.log_id == *log.id().to_string() => {
                return cursor.position;
            }
            Ok(Some(cursor)) => {
                info!(stored = %cursor.log_id, "the archive cursor belongs to another message log: archiving this log from its start");
                return 0;
            }
            Ok(None) => return 0,
            Err(e) => {
                // At first start the writer may not have made the tables yet (it
                // migrates when it connects): only a lasting failure is worth a warning.
                if delay >= Duration::from_secs(1) {
                    warn!("archive: reading the cursor: {e}; retrying in {delay:?}");
                } else {
                    tracing::debug!("archive: reading the cursor: {e}; retrying in {delay:?}");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Reads the log from the stored position and feeds the writer, forever (until the log
/// is closed).
async fn read_log(
    sink: Arc<ArchiveSink>,
    postgres: tokio_postgres::Config,
    node: String,
    log: Arc<Log>,
) {
    // The cursor table exists once the writer has migrated; before that there is none.
    let from = start_position(&postgres, &node, &log).await;
    let log_id: Arc<str> = Arc::from(log.id().to_string());
    let mut reader = match log.reader(from) {
        Ok(r) => r,
        Err(ReadError::Ahead { .. }) => {
            warn!(
                from,
                "the archive cursor is past this log's end: archiving from its start"
            );
            match log.reader(0) {
                Ok(r) => r,
                Err(e) => return warn!("archive: cannot read the message log: {e}"),
            }
        }
        Err(e) => return warn!("archive: cannot read the message log: {e}"),
    };
    info!(from = reader.position(), "archive: reading the message log");
    let mut synced = log.watch_synced();
    drop(log);
    loop {
        let step = tokio::task::spawn_blocking(move || {
            let batch = reader.next_batch(READ_RECORDS, READ_BYTES);
            (reader, batch)
        })
        .await;
        let batch;
        (reader, batch) = match step {
            Ok(done) => done,
            Err(e) => return warn!("archive: the log reader stopped: {e}"),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!("archive: reading the message log: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(gap) = &batch.gap {
            warn!(
                from = gap.from,
                resumed_at = gap.resumed_at,
                "archive: the log's retention deleted records before they were archived"
            );
            sink.gaps.fetch_add(1, Ordering::Relaxed);
            sink.gap_records.fetch_add(gap.records(), Ordering::Relaxed);
        }
        if batch.records.is_empty() {
            let position = reader.position();
            sink.read_position.store(position, Ordering::Relaxed);
            if synced.wait_for(|s| *s > position).await.is_err() {
                return; // the log is closed: the node is stopping
            }
            continue;
        }
        for (sequence, record) in batch.records {
            let Some(row) = row(record) else { continue };
            let position = LogPosition {
                log_id: log_id.clone(),
                position: sequence.saturating_add(1),
            };
            if sink.writer.send(row, Some(position)).await.is_err() {
                return; // the writer is shut down
            }
        }
        sink.read_position
            .store(reader.position(), Ordering::Relaxed);
    }
}
