//! The background writer: bounded queues fed by the server, one task that batches them
//! into PostgreSQL, reconnecting with backoff, and counters for `/metrics`.
//!
//! Two queues, each bounded in rows and bytes:
//!
//! - **publications**, fed from the node's log by its reader: [`Writer::send`] waits for
//!   room (the reader stalls, the log keeps the records, nothing is lost), and
//!   [`Writer::try_send`] refuses when full (counted in `dropped_publications`) for a
//!   caller that must not wait;
//! - **connection events**, fed from connection tasks: [`Writer::try_send_event`] never
//!   waits and counts what a full queue refuses (`dropped_events`). Events are best
//!   effort.
//!
//! The task takes a batch when a queue holds `batch_rows` rows or `batch_bytes` bytes,
//! or `linger` after its first row arrived, writes it ([`write_publications`] with the
//! cursor of the batch's last row that has one, [`write_events`]) and retries the same
//! batch until it commits: while PostgreSQL is down the batch waits, the queues fill,
//! the log reader stalls in `send` and events are dropped and counted. The server keeps
//! serving: nothing on the publish path waits for the archive.
//!
//! Queue locks are `parking_lot` mutexes held for a push or a take, never across an
//! await.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::ArchiveError;
use crate::error::ErrorClass;
use crate::schema::{drop_partitions_older_than, ensure_partitions, migrate};
use crate::write::{
    ConnectionEvent, LogPosition, PublicationRow, WriteReport, write_events, write_publications,
};

/// How the writer connects, batches and waits.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Where PostgreSQL is (no TLS: a loopback or Unix socket address, or a TLS proxy).
    pub postgres: tokio_postgres::Config,
    /// This node's name: the `node` column and the cursor's key.
    pub node: String,
    /// Publications the queue holds at most.
    pub queue_rows: usize,
    /// Bytes of publications the queue holds at most ([`PublicationRow::weight`]).
    pub queue_bytes: usize,
    /// Connection events the event queue holds at most.
    pub event_queue_rows: usize,
    /// Bytes of connection events the event queue holds at most
    /// ([`ConnectionEvent::weight`]).
    pub event_queue_bytes: usize,
    /// A batch holds at most this many rows.
    pub batch_rows: usize,
    /// A batch holds at most this many bytes (a single larger row goes alone).
    pub batch_bytes: usize,
    /// How long the first row of a batch waits for more.
    pub linger: Duration,
    /// First reconnect delay after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Bound of a connect (with its migration) and of a batch's write; past it the
    /// connection is dropped and made again.
    pub timeout: Duration,
    /// Days of partitions created ahead of today (at connect and every hour).
    pub partitions_ahead: u32,
    /// Retention in days, applied at connect and every hour
    /// ([`drop_partitions_older_than`]); `None` keeps everything.
    pub retention_days: Option<u32>,
}

impl WriterConfig {
    /// Defaults for `node` on `postgres`: 100,000 rows / 64 MiB of publications, 100,000
    /// events / 16 MiB, batches of 5,000 rows / 8 MiB or 200 ms, backoff 100 ms to 5 s, 30 s
    /// timeout, partitions 2 days ahead, no retention.
    pub fn new(postgres: tokio_postgres::Config, node: impl Into<String>) -> WriterConfig {
        WriterConfig {
            postgres,
            node: node.into(),
            queue_rows: 100_000,
            queue_bytes: 64 << 20,
            event_queue_rows: 100_000,
            event_queue_bytes: 16 << 20,
            batch_rows: 5_000,
            batch_bytes: 8 << 20,
            linger: Duration::from_millis(200),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            partitions_ahead: 2,
            retention_days: None,
        }
    }
}

/// Why a row was not queued (the row is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue is full (counted as dropped by the `try_` calls).
    #[error("the archive queue is full")]
    Full,
    /// The writer is shutting down.
    #[error("the archive writer is closed")]
    Closed,
}

/// Why the queue did not take an item (given back).
enum Refused<T> {
    Full(T),
    Closed,
}

/// A publication with the log position after it.
type Entry = (PublicationRow, Option<LogPosition>);

/// The task's current batch of publications: the rows, and each one's log position.
#[derive(Default)]
struct Batch {
    rows: Vec<PublicationRow>,
    positions: Vec<Option<LogPosition>>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.positions.clear();
    }
}

struct Queue<T> {
    state: Mutex<QueueState<T>>,
    max_rows: usize,
    max_bytes: usize,
    /// Notified (all waiters) whenever rows are taken out.
    room: Notify,
}

struct QueueState<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// When the oldest row arrived (the batch's linger counts from it).
    since: Option<Instant>,
    /// Rows taken by the task and not yet written ([`Queue::done`]).
    in_flight: usize,
    closed: bool,
}

/// What a push means to the writer task.
enum Pushed {
    /// It should look (the queue was empty, or a batch is now full).
    Wake,
    /// Nothing new for it.
    Quiet,
}

impl<T> Queue<T> {
    fn new(max_rows: usize, max_bytes: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                since: None,
                in_flight: 0,
                closed: false,
            }),
            max_rows: max_rows.max(1),
            max_bytes: max_bytes.max(1),
            room: Notify::new(),
        }
    }

    fn push(
        &self,
        item: T,
        weight: usize,
        batch_rows: usize,
        batch_bytes: usize,
    ) -> Result<Pushed, Refused<T>> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(Refused::Closed);
        }
        // A row larger than the whole byte budget still goes in alone.
        if s.items.len() >= self.max_rows
            || (!s.items.is_empty() && s.bytes.saturating_add(weight) > self.max_bytes)
        {
            return Err(Refused::Full(item));
        }
        let was_empty = s.items.is_empty();
        s.items.push_back((item, weight));
        s.bytes += weight;
        if was_empty {
            s.since = Some(Instant::now());
        }
        let full_batch = s.items.len() == batch_rows
            || (s.bytes >= batch_bytes && s.bytes - weight < batch_bytes);
        Ok(if was_empty || full_batch {
            Pushed::Wake
        } else {
            Pushed::Quiet
        })
    }

    /// Takes up to a batch; wakes the senders waiting for room.
    fn take(&self, rows: usize, bytes: usize, out: &mut Vec<T>) {
        let mut s = self.state.lock();
        let mut taken_bytes = 0;
        while let Some((_, weight)) = s.items.front() {
            if out.len() >= rows || (!out.is_empty() && taken_bytes + weight > bytes) {
                break;
            }
            let weight = *weight;
            let Some((item, _)) = s.items.pop_front() else {
                break;
            };
            taken_bytes += weight;
            out.push(item);
        }
        s.bytes -= taken_bytes;
        s.in_flight += out.len();
        // What is left has waited: the next batch need not linger again.
        s.since = if s.items.is_empty() { None } else { s.since };
        drop(s);
        self.room.notify_waiters();
    }

    /// `(rows, bytes, since)`.
    fn level(&self) -> (usize, usize, Option<Instant>) {
        let s = self.state.lock();
        (s.items.len(), s.bytes, s.since)
    }

    /// The task is done with the rows it took (written or skipped).
    fn done(&self) {
        self.state.lock().in_flight = 0;
    }

    /// `(queued, taken and not yet written)`.
    fn waiting(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.items.len(), s.in_flight)
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.room.notify_waiters();
    }
}

/// Upper bounds (seconds) of the batch duration histogram's buckets.
pub const BATCH_SECONDS_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Counters {
    publications: AtomicU64,
    duplicates: AtomicU64,
    events: AtomicU64,
    batches: AtomicU64,
    batch_errors: AtomicU64,
    rejected_publications: AtomicU64,
    rejected_events: AtomicU64,
    dropped_publications: AtomicU64,
    dropped_events: AtomicU64,
    connects: AtomicU64,
    connected: AtomicBool,
    /// Publication time (µs since 1970) of the newest archived row; 0: none yet.
    newest_micros: AtomicI64,
    /// Batch durations: count per bucket of [`BATCH_SECONDS_BOUNDS`] (+ one for larger).
    batch_buckets: [AtomicU64; BATCH_SECONDS_BOUNDS.len() + 1],
    batch_micros: AtomicU64,
    last_error: Mutex<Option<String>>,
    cursor: Mutex<Option<LogPosition>>,
}

/// A snapshot of the writer's counters, for `/metrics` and `/ready`.
///
/// Suggested metric names: `starling_archive_rows_total{kind="publication"|"event"}`
/// (`publications`, `events`), `starling_archive_duplicates_total`,
/// `starling_archive_dropped_total{kind}` (`dropped_*`),
/// `starling_archive_rejected_total{kind}` (`rejected_*`),
/// `starling_archive_batches_total`, `starling_archive_batch_errors_total`,
/// `starling_archive_batch_duration_seconds` (histogram: `batch_seconds`),
/// `starling_archive_lag_seconds` ([`WriterStats::lag`]),
/// `starling_archive_queue_rows{kind}`, `starling_archive_connected`.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterStats {
    /// Publications inserted.
    pub publications: u64,
    /// Publications skipped as already archived.
    pub duplicates: u64,
    /// Events inserted.
    pub events: u64,
    /// Batches committed.
    pub batches: u64,
    /// Batch writes that failed (each is retried, unless rejected).
    pub batch_errors: u64,
    /// Publications PostgreSQL refused as data (skipped; the cursor moved past them).
    pub rejected_publications: u64,
    /// Events PostgreSQL refused as data (skipped).
    pub rejected_events: u64,
    /// Publications refused by [`Writer::try_send`] because the queue was full.
    pub dropped_publications: u64,
    /// Events refused by [`Writer::try_send_event`] because the queue was full.
    pub dropped_events: u64,
    /// Successful connects (the first included).
    pub connects: u64,
    /// Whether the writer holds a working connection.
    pub connected: bool,
    /// Publications queued, plus those in the task's current (uncommitted) batch.
    pub queued_publications: usize,
    /// Events queued, plus those in the task's current batch.
    pub queued_events: usize,
    /// Rows of both kinds in the task's current (uncommitted) batch.
    pub in_batch: usize,
    /// Publication time of the newest archived publication.
    pub newest_archived: Option<SystemTime>,
    /// The node's cursor as of the last commit.
    pub cursor: Option<LogPosition>,
    /// The last error, if any since the start.
    pub last_error: Option<String>,
    /// Batch duration histogram: count of batches at or under each of
    /// [`BATCH_SECONDS_BOUNDS`] (cumulative, as Prometheus wants), then all.
    pub batch_seconds_buckets: Vec<u64>,
    /// Sum of batch durations, seconds.
    pub batch_seconds_sum: f64,
}

impl WriterStats {
    /// How far the archive is behind at `now`: zero when nothing waits; else `now`
    /// minus the publication time of the newest archived row (or `None` while nothing
    /// was archived yet, but rows wait).
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        if self.queued_publications == 0 {
            return Some(Duration::ZERO);
        }
        self.newest_archived
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }
}

struct Shared {
    config: WriterConfig,
    publications: Queue<Entry>,
    events: Queue<ConnectionEvent>,
    /// Wakes the task: rows arrived, or shutdown.
    wake: Notify,
    closing: AtomicBool,
    counters: Counters,
}

/// The archive's background writer. Cheap to share behind an `Arc`; every method but
/// [`Writer::send`] returns at once.
pub struct Writer {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer's task on the current tokio runtime. It connects (and migrates,
    /// and creates partitions) by itself, and keeps trying while PostgreSQL is away.
    pub fn start(config: WriterConfig) -> Writer {
        let shared = Arc::new(Shared {
            publications: Queue::new(config.queue_rows, config.queue_bytes),
            events: Queue::new(config.event_queue_rows, config.event_queue_bytes),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            counters: Counters::default(),
            config,
        });
        let task = tokio::spawn(run(shared.clone()));
        Writer {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    fn pushed(&self, pushed: Pushed) {
        if let Pushed::Wake = pushed {
            self.shared.wake.notify_one();
        }
    }

    /// Queues a publication read from the log, `position` being the log position after
    /// it (`None` for a row not from the log); waits while the queue is full. Rows must
    /// come in log order: the cursor stored with a batch is its last row's position.
    pub async fn send(
        &self,
        row: PublicationRow,
        position: Option<LogPosition>,
    ) -> Result<(), SendError> {
        let c = &self.shared.config;
        let mut item = (row, position);
        loop {
            let room = self.shared.publications.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            let weight = item.0.weight();
            match self
                .shared
                .publications
                .push(item, weight, c.batch_rows, c.batch_bytes)
            {
                Ok(pushed) => {
                    self.pushed(pushed);
                    return Ok(());
                }
                Err(Refused::Full(back)) => item = back,
                Err(Refused::Closed) => return Err(SendError::Closed),
            }
            room.await;
        }
    }

    /// Queues a publication without waiting; a full queue refuses it (counted in
    /// `dropped_publications`).
    pub fn try_send(
        &self,
        row: PublicationRow,
        position: Option<LogPosition>,
    ) -> Result<(), SendError> {
        let c = &self.shared.config;
        let weight = row.weight();
        match self
            .shared
            .publications
            .push((row, position), weight, c.batch_rows, c.batch_bytes)
        {
            Ok(pushed) => {
                self.pushed(pushed);
                Ok(())
            }
            Err(Refused::Full(_)) => {
                bump(&self.shared.counters.dropped_publications, 1);
                Err(SendError::Full)
            }
            Err(Refused::Closed) => Err(SendError::Closed),
        }
    }

    /// Queues a connection event without waiting; a full queue refuses it (counted in
    /// `dropped_events`).
    pub fn try_send_event(&self, event: ConnectionEvent) -> Result<(), SendError> {
        let c = &self.shared.config;
        let weight = event.weight();
        match self
            .shared
            .events
            .push(event, weight, c.batch_rows, usize::MAX)
        {
            Ok(pushed) => {
                self.pushed(pushed);
                Ok(())
            }
            Err(Refused::Full(_)) => {
                bump(&self.shared.counters.dropped_events, 1);
                Err(SendError::Full)
            }
            Err(Refused::Closed) => Err(SendError::Closed),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let batch_seconds_buckets = c
            .batch_buckets
            .iter()
            .map(|b| {
                cumulative += get(b);
                cumulative
            })
            .collect();
        let newest = c.newest_micros.load(Ordering::Relaxed);
        let (p_rows, p_batch) = self.shared.publications.waiting();
        let (e_rows, e_batch) = self.shared.events.waiting();
        WriterStats {
            publications: get(&c.publications),
            duplicates: get(&c.duplicates),
            events: get(&c.events),
            batches: get(&c.batches),
            batch_errors: get(&c.batch_errors),
            rejected_publications: get(&c.rejected_publications),
            rejected_events: get(&c.rejected_events),
            dropped_publications: get(&c.dropped_publications),
            dropped_events: get(&c.dropped_events),
            connects: get(&c.connects),
            connected: c.connected.load(Ordering::Relaxed),
            queued_publications: p_rows + p_batch,
            queued_events: e_rows + e_batch,
            in_batch: p_batch + e_batch,
            newest_archived: (newest > 0)
                .then(|| UNIX_EPOCH + Duration::from_micros(newest.unsigned_abs())),
            cursor: c.cursor.lock().clone(),
            last_error: c.last_error.lock().clone(),
            batch_seconds_buckets,
            batch_seconds_sum: get(&c.batch_micros) as f64 / 1e6,
        }
    }

    /// Stops taking rows and writes out what is queued, for at most `grace`. Returns
    /// whether everything was written; if not, the task is stopped anyway, and what it
    /// held is lost to the archive (publications are still in the log, after the stored
    /// cursor, and are read again at the next start).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.publications.close();
        self.shared.events.close();
        self.shared.wake.notify_one();
        let Some(mut task) = self.task.lock().take() else {
            return true;
        };
        match tokio::time::timeout(grace, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                false
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A connection and the task driving its socket (aborted with it, so a connection
/// stuck on a dead peer does not linger).
struct Conn {
    client: Client,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The writer task.
async fn run(shared: Arc<Shared>) {
    let config = &shared.config;
    let counters = &shared.counters;
    let mut conn: Option<Conn> = None;
    let mut backoff = config.backoff_min;
    let mut taken: Vec<Entry> = Vec::new();
    let mut publications = Batch::default();
    let mut events: Vec<ConnectionEvent> = Vec::new();
    let mut next_upkeep = Instant::now();
    let mut failing = false;
    loop {
        if publications.is_empty() && events.is_empty() {
            if !wait_for_batch(&shared).await {
                break;
            }
            shared
                .publications
                .take(config.batch_rows, config.batch_bytes, &mut taken);
            (publications.rows, publications.positions) = taken.drain(..).unzip();
            shared
                .events
                .take(config.batch_rows, usize::MAX, &mut events);
        }
        let result = async {
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                conn = None;
                counters.connected.store(false, Ordering::Relaxed);
                conn = Some(timed(config.timeout, connect(config)).await?);
                counters.connected.store(true, Ordering::Relaxed);
                bump(&counters.connects, 1);
                next_upkeep = Instant::now();
            }
            let Some(c) = conn.as_mut() else {
                return Ok(());
            };
            if Instant::now() >= next_upkeep {
                timed(config.timeout, upkeep(&mut c.client, config)).await?;
                next_upkeep = Instant::now() + Duration::from_secs(3600);
            }
            write_batch(&mut c.client, &shared, &mut publications, &mut events).await
        }
        .await;
        let mut result = result;
        if let Err(e) = &result
            && e.class() == ErrorClass::Reject
        {
            bump(&counters.batch_errors, 1);
            result = match conn.as_mut() {
                // Publications are written first: when there are any, they were refused.
                Some(c) if !publications.is_empty() => {
                    isolate(&shared, &mut c.client, &mut publications).await
                }
                _ => {
                    tracing::error!(
                        rows = events.len(),
                        error = %e,
                        "archive: PostgreSQL refused a batch of connection events as data; skipped"
                    );
                    *counters.last_error.lock() = Some(e.to_string());
                    bump(&counters.rejected_events, events.len() as u64);
                    shared.events.done();
                    events.clear();
                    Ok(())
                }
            };
        }
        match result {
            Ok(()) => {
                backoff = config.backoff_min;
                if failing {
                    tracing::info!("archive: writing to PostgreSQL again");
                    failing = false;
                }
            }
            Err(e) => {
                bump(&counters.batch_errors, 1);
                *counters.last_error.lock() = Some(e.to_string());
                if !failing {
                    tracing::warn!(error = %e, "archive: write failed; retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!(error = %e, "archive: write failed again");
                }
                match e.class() {
                    ErrorClass::Connection => {
                        conn = None;
                        counters.connected.store(false, Ordering::Relaxed);
                    }
                    // Migrate again before the retry.
                    ErrorClass::Schema => next_upkeep = Instant::now(),
                    ErrorClass::Retry | ErrorClass::Reject => {}
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
    counters.connected.store(false, Ordering::Relaxed);
}

/// Waits until a batch is due (a full batch, or the oldest row lingered long enough, or
/// shutdown with rows left). Returns false when shut down with nothing left.
async fn wait_for_batch(shared: &Shared) -> bool {
    let config = &shared.config;
    loop {
        let wake = shared.wake.notified();
        let mut wake = std::pin::pin!(wake);
        wake.as_mut().enable();
        let (p_rows, p_bytes, p_since) = shared.publications.level();
        let (e_rows, _, e_since) = shared.events.level();
        let closing = shared.closing.load(Ordering::Relaxed);
        if p_rows == 0 && e_rows == 0 {
            if closing {
                return false;
            }
            wake.await;
            continue;
        }
        if closing
            || p_rows >= config.batch_rows
            || p_bytes >= config.batch_bytes
            || e_rows >= config.batch_rows
        {
            return true;
        }
        let oldest = [p_since, e_since].into_iter().flatten().min();
        let Some(due) = oldest.map(|t| t + config.linger) else {
            return true;
        };
        if Instant::now() >= due {
            return true;
        }
        let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(due), wake).await;
    }
}

/// Bounds `f` by `limit` ([`ArchiveError::Timeout`] past it).
async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, ArchiveError>>,
) -> Result<T, ArchiveError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(ArchiveError::Timeout(limit)))
}

async fn connect(config: &WriterConfig) -> Result<Conn, ArchiveError> {
    let (client, connection) = config.postgres.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "archive: PostgreSQL connection ended");
        }
    });
    // The schema is migrated by the upkeep that follows every connect.
    Ok(Conn { client, driver })
}

/// Partitions ahead and retention.
async fn upkeep(client: &mut Client, config: &WriterConfig) -> Result<(), ArchiveError> {
    migrate(client).await?;
    let now = SystemTime::now();
    ensure_partitions(client, now, config.partitions_ahead).await?;
    if let Some(days) = config.retention_days {
        drop_partitions_older_than(client, now, days).await?;
    }
    Ok(())
}

/// Writes the current batch; clears each part once it committed.
async fn write_batch(
    client: &mut Client,
    shared: &Shared,
    publications: &mut Batch,
    events: &mut Vec<ConnectionEvent>,
) -> Result<(), ArchiveError> {
    let config = &shared.config;
    let counters = &shared.counters;
    if !publications.is_empty() {
        let started = Instant::now();
        let cursor = publications.positions.iter().rev().find_map(Option::as_ref);
        let report = timed(
            config.timeout,
            write_publications(client, &config.node, &publications.rows, cursor),
        )
        .await?;
        record(counters, &publications.rows, report, started.elapsed());
        shared.publications.done();
        publications.clear();
    }
    if !events.is_empty() {
        let started = Instant::now();
        let written = timed(config.timeout, write_events(client, &config.node, events)).await?;
        observe(counters, started.elapsed());
        bump(&counters.events, written);
        shared.events.done();
        events.clear();
    }
    Ok(())
}

fn observe(counters: &Counters, took: Duration) {
    bump(&counters.batches, 1);
    bump(
        &counters.batch_micros,
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    );
    let secs = took.as_secs_f64();
    let i = BATCH_SECONDS_BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BATCH_SECONDS_BOUNDS.len());
    bump(&counters.batch_buckets[i], 1);
}

/// Counts a committed batch of publications.
fn record(counters: &Counters, rows: &[PublicationRow], report: WriteReport, took: Duration) {
    observe(counters, took);
    bump(&counters.publications, report.inserted);
    bump(&counters.duplicates, report.duplicates);
    if let Some(newest) = rows.iter().map(|r| r.time).max() {
        let micros = newest
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        counters.newest_micros.fetch_max(micros, Ordering::Relaxed);
    }
    *counters.cursor.lock() = report.cursor;
}

/// A batch of publications PostgreSQL refused as data: written again one row at a time,
/// so only the refused rows are skipped (counted in `rejected_publications`, logged);
/// the cursor moves past each of them, else the log reader would offer them again
/// after every restart. Another kind of error stops the isolation: the rows not written
/// yet stay in `publications` for the ordinary retry.
async fn isolate(
    shared: &Shared,
    client: &mut Client,
    publications: &mut Batch,
) -> Result<(), ArchiveError> {
    let config = &shared.config;
    let counters = &shared.counters;
    let mut done = 0;
    let result = async {
        for (row, position) in publications.rows.iter().zip(&publications.positions) {
            let rows = std::slice::from_ref(row);
            let started = Instant::now();
            let written = timed(
                config.timeout,
                write_publications(client, &config.node, rows, position.as_ref()),
            )
            .await;
            match written {
                Ok(report) => record(counters, rows, report, started.elapsed()),
                Err(e) if e.class() == ErrorClass::Reject => {
                    tracing::error!(
                        channel = %row.channel,
                        epoch = %row.epoch,
                        offset = row.offset,
                        error = %e,
                        "archive: PostgreSQL refuses this publication as data; skipped"
                    );
                    bump(&counters.rejected_publications, 1);
                    *counters.last_error.lock() = Some(e.to_string());
                    if let Some(position) = position {
                        let report = timed(
                            config.timeout,
                            write_publications(client, &config.node, &[], Some(position)),
                        )
                        .await?;
                        *counters.cursor.lock() = report.cursor;
                    }
                }
                Err(e) => return Err(e),
            }
            done += 1;
        }
        Ok(())
    }
    .await;
    publications.rows.drain(..done);
    publications.positions.drain(..done);
    if publications.is_empty() {
        shared.publications.done();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_rows_and_bytes_and_takes_batches() {
        let q: Queue<u32> = Queue::new(4, 100);
        assert!(
            matches!(q.push(1, 40, 3, 1_000), Ok(Pushed::Wake)),
            "was empty"
        );
        assert!(matches!(q.push(2, 40, 3, 1_000), Ok(Pushed::Quiet)));
        assert!(
            matches!(q.push(3, 40, 3, 1_000), Err(Refused::Full(3))),
            "bytes"
        );
        assert!(
            matches!(q.push(4, 20, 3, 1_000), Ok(Pushed::Wake)),
            "a full batch"
        );
        assert!(matches!(q.push(5, 0, 3, 1_000), Ok(Pushed::Quiet)));
        assert!(
            matches!(q.push(6, 0, 3, 1_000), Err(Refused::Full(6))),
            "rows"
        );
        let mut out = Vec::new();
        q.take(10, 60, &mut out);
        assert_eq!(out, vec![1], "the second would pass the batch's bytes");
        assert_eq!(q.waiting(), (3, 1));
        q.done();
        out.clear();
        q.take(2, 1_000, &mut out);
        assert_eq!(out, vec![2, 4]);
        assert_eq!(q.level().0, 1);
        q.close();
        assert!(matches!(q.push(7, 0, 3, 1_000), Err(Refused::Closed)));
    }

    #[test]
    fn a_row_larger_than_the_byte_budget_goes_alone() {
        let q: Queue<u32> = Queue::new(10, 100);
        assert!(q.push(1, 500, 10, 50).is_ok());
        assert!(matches!(q.push(2, 1, 10, 50), Err(Refused::Full(2))));
        let mut out = Vec::new();
        q.take(10, 50, &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn lag_is_zero_when_nothing_waits() {
        let now = SystemTime::now();
        let mut stats = WriterStats {
            publications: 0,
            duplicates: 0,
            events: 0,
            batches: 0,
            batch_errors: 0,
            rejected_publications: 0,
            rejected_events: 0,
            dropped_publications: 0,
            dropped_events: 0,
            connects: 0,
            connected: false,
            queued_publications: 0,
            queued_events: 0,
            in_batch: 0,
            newest_archived: None,
            cursor: None,
            last_error: None,
            batch_seconds_buckets: Vec::new(),
            batch_seconds_sum: 0.0,
        };
        assert_eq!(stats.lag(now), Some(Duration::ZERO));
        stats.queued_publications = 5;
        assert_eq!(stats.lag(now), None);
        stats.newest_archived = Some(now - Duration::from_secs(7));
        assert_eq!(stats.lag(now), Some(Duration::from_secs(7)));
    }
}
