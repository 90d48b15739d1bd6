//! Binds the hub's [`Journal`] to the node's durable message log (`starling-log`), and
//! rebuilds channel history from the log at start.
//!
//! The epoch rule: after a stop that was not known to be clean (see
//! `starling_log::OpenReport::clean`), the log may miss publications that clients saw, so
//! every channel found in the log gets a new epoch (offsets continue from the log's
//! top, so history stays readable): a client recovering from a position of before is told
//! "unrecoverable" instead of getting other data under a reused offset. The new epochs
//! are written to the log as *epoch records* (a record with an empty payload: the channel
//! continues at `offset` under `epoch`), so that they hold across later restarts.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use starling_core::{DurableAck, Hub, Journal, JournalError, Namespaces};
use starling_log::{Log, LogConfig, LogError, Record};
use starling_protocol::{
    Encoding, Publication, Push, ServerMessage, decode_server_messages, encode_publication,
};
use tracing::{info, warn};

use crate::config::StorageConfig;

/// The hub's journal, written to the message log.
pub struct LogJournal {
    log: Arc<Log>,
}

impl LogJournal {
    /// The log behind this journal.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }
}

/// A publication as stored: its `pub` push in MessagePack (data, offset, info, tags),
/// the same encoding clients can read.
pub(crate) fn encode(channel: &str, publication: &Publication) -> Bytes {
    let mut out = Vec::with_capacity(publication.data.len() + 64);
    encode_publication(Encoding::MsgPack, channel, publication, &mut out);
    Bytes::from(out)
}

/// The publication a log record holds (`None` for an epoch record or bad bytes).
pub(crate) fn decode(record: &Record) -> Option<Publication> {
    let messages = decode_server_messages(Encoding::MsgPack, &record.payload).ok()?;
    messages.into_iter().find_map(|m| match m {
        ServerMessage::Push(Push::Publication { publication, .. }) => Some(publication),
        _ => None,
    })
}

/// How long [`Journal::append_waiting`] waits for room in a full log queue.
const APPEND_WAIT: Duration = Duration::from_secs(10);

/// The record of `publication` in `channel` under `epoch`.
fn record(channel: &str, epoch: &str, publication: &Publication, time_ms: u64) -> Record {
    Record {
        channel: channel.to_string(),
        epoch: epoch.to_string(),
        offset: publication.offset,
        time_ms,
        payload: encode(channel, publication),
    }
}

impl LogJournal {
    /// Hands `record` to the log (refused at once when its queue is full).
    fn append_record(
        &self,
        record: Record,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError> {
        let receiver = self.log.append(record, durable).map_err(|e| match e {
            LogError::Busy => JournalError::Busy,
            e => JournalError::Failed(e.to_string()),
        })?;
        Ok(receiver.map(|rx| {
            Box::pin(async move {
                match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(JournalError::Failed(e.to_string())),
                    Err(_) => Err(JournalError::Failed("the log writer stopped".into())),
                }
            }) as DurableAck
        }))
    }
}

impl Journal for LogJournal {
    fn append(
        &self,
        channel: &str,
        epoch: &str,
        publication: &Publication,
        time_ms: u64,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError> {
        self.append_record(record(channel, epoch, publication, time_ms), durable)
    }

    fn append_waiting(
        &self,
        channel: &str,
        epoch: &str,
        publication: &Publication,
        time_ms: u64,
        durable: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Option<DurableAck>, JournalError>> + Send + '_>> {
        let record = record(channel, epoch, publication, time_ms);
        Box::pin(async move {
            // The writer frees room as it writes; each of its fsyncs moves the synced
            // position, which is the signal to try again (no polling).
            let mut synced = self.log.watch_synced();
            let deadline = tokio::time::Instant::now() + APPEND_WAIT;
            loop {
                match self.append_record(record.clone(), durable) {
                    Err(JournalError::Busy) => {
                        let progress = tokio::time::timeout_at(deadline, synced.changed()).await;
                        if !matches!(progress, Ok(Ok(()))) {
                            return Err(JournalError::Busy);
                        }
                    }
                    done => return done,
                }
            }
        })
    }
}

/// Opens the message log in `config.dir`, puts the retained publications back into the
/// hub's history (for namespaces that keep history), applies the epoch rule (see the
/// module doc), and returns the journal to attach. Runs before the node serves.
pub fn open(
    config: &StorageConfig,
    hub: &Hub,
    namespaces: &Namespaces,
) -> anyhow::Result<Arc<LogJournal>> {
    let log_config = log_config(config, &config.dir);
    let (mut restored, mut skipped) = (0usize, 0usize);
    // Channels in the log that are not restored (no history now): their top offsets, so
    // that an unclean start renews their epochs too (history may be switched on later).
    let mut not_restored: HashMap<String, u64> = HashMap::new();
    let (log, report) = Log::open(log_config, |record| {
        let rules = namespaces
            .resolve(&record.channel)
            .ok()
            .filter(|rules| rules.options.history.enabled());
        let Some(rules) = rules else {
            not_restored.insert(record.channel, record.offset);
            skipped += 1;
            return;
        };
        if record.payload.is_empty() {
            hub.restore_epoch(
                &record.channel,
                &record.epoch,
                record.offset,
                rules.options.channel_options(),
            );
            return;
        }
        let Some(publication) = decode(&record) else {
            warn!(channel = %record.channel, offset = record.offset, "undecodable log record skipped");
            skipped += 1;
            return;
        };
        hub.restore(
            &record.channel,
            &record.epoch,
            publication,
            record.time_ms,
            rules.options.channel_options(),
        );
        restored += 1;
    })
    .with_context(|| format!("opening the message log in {} (storage.dir)", config.dir))?;
    if !report.clean
        && let Err(e) = renew_epochs(&log, hub, not_restored)
    {
        // Safe to serve: the log is failed now, so this run cannot stop clean either, and
        // the next start renews the epochs again. Refusing to start on a full disk would
        // turn a degraded node into a dead one.
        warn!("cannot write the renewed epochs to the message log: {e}");
    }
    // Expired entries and channels without history go at once, not at the first sweep.
    hub.sweep();
    info!(
        dir = %config.dir,
        records = report.records,
        restored,
        skipped,
        clean = report.clean,
        skipped_regions = report.skipped_regions,
        skipped_bytes = report.skipped_bytes,
        truncated_bytes = report.truncated_bytes,
        "message log opened"
    );
    Ok(Arc::new(LogJournal { log: Arc::new(log) }))
}

/// The directory, under `storage.dir`, of a cluster node's archive journal.
pub const CLUSTER_ARCHIVE_DIR: &str = "cluster-archive";

/// Opens a cluster node's archive journal in `<storage.dir>/cluster-archive`: the
/// publications this node published (appended once the broker accepted them), read by
/// the archive. Nothing in it is restored (the broker holds the streams and their
/// history); a subdirectory, so that a single node's message log in `storage.dir` and
/// this journal never mix when a node changes engines.
pub fn open_cluster_archive(config: &StorageConfig) -> anyhow::Result<Arc<LogJournal>> {
    let dir = std::path::Path::new(&config.dir).join(CLUSTER_ARCHIVE_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (log, report) = Log::open(log_config(config, &dir), |_| {})
        .with_context(|| format!("opening the archive journal in {}", dir.display()))?;
    info!(
        dir = %dir.display(),
        records = report.records,
        clean = report.clean,
        "cluster archive journal opened (this node's publications, for the archive)"
    );
    Ok(Arc::new(LogJournal { log: Arc::new(log) }))
}

/// The log's settings from `[storage]`, for a log in `dir`.
fn log_config(config: &StorageConfig, dir: impl Into<std::path::PathBuf>) -> LogConfig {
    let mut log_config = LogConfig::new(dir);
    log_config.segment_bytes = config.segment_bytes;
    log_config.max_bytes = config.max_bytes;
    log_config.max_age = Duration::from_secs(config.max_age_secs);
    log_config.sync_interval = Duration::from_millis(config.sync_interval_ms.max(1));
    log_config
}

/// The epoch rule after an unclean stop: every channel of the log gets a new epoch,
/// recorded in the log. Blocks on the log's queue (start-up, before serving).
fn renew_epochs(log: &Log, hub: &Hub, not_restored: HashMap<String, u64>) -> Result<(), LogError> {
    let time_ms = starling_core::now_ms();
    let renewed = hub.renew_epochs();
    let count = renewed.len() + not_restored.len();
    if count > 0 {
        warn!(
            channels = count,
            "the message log was not stopped cleanly (crash, kill, power loss, write errors \
             or damage): every channel gets a new epoch, so clients recover from history \
             of before as unrecoverable instead of possibly getting other data"
        );
    }
    for (channel, position) in renewed {
        log.append_blocking(
            epoch_record(&channel, &position.epoch, position.offset, time_ms),
            false,
        )?;
    }
    for (channel, offset) in not_restored {
        let epoch = format!(
            "{:016x}",
            std::collections::hash_map::RandomState::new().hash_one(&channel)
        );
        log.append_blocking(epoch_record(&channel, &epoch, offset, time_ms), false)?;
    }
    log.sync()
}

/// A record saying: `channel` continues at `offset` under `epoch` (no publication).
fn epoch_record(channel: &str, epoch: &str, offset: u64, time_ms: u64) -> Record {
    Record {
        channel: channel.to_string(),
        epoch: epoch.to_string(),
        offset,
        time_ms,
        payload: Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            data: Bytes::from(format!("m{offset}")),
            offset,
            info: None,
            tags: None,
            delta: false,
        }
    }

    /// A queue of one record is full most of the time under 64 concurrent appends (a
    /// plain `append` would be refused with `Busy` again and again): `append_waiting`
    /// waits for the writer instead, and every record lands once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_waiting_waits_for_room_instead_of_refusing() {
        let dir = std::env::temp_dir().join(format!("starling-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = LogConfig::new(&dir);
        config.queue_records = 1;
        config.sync_interval = Duration::from_millis(1);
        let (log, _) = Log::open(config, |_| {}).expect("log");
        let journal = Arc::new(LogJournal { log: Arc::new(log) });
        // Records of 1970 would be deleted at once by the log's age limit.
        let now = starling_core::now_ms();
        let tasks: Vec<_> = (100..164u64)
            .map(|n| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let ack = journal
                        .append_waiting("c", "e", &publication(n), now, n % 2 == 0)
                        .await
                        .expect("taken");
                    if let Some(ack) = ack {
                        ack.await.expect("on disk");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        journal.log.sync().expect("sync");
        let mut reader = journal.log.reader(0).expect("reader");
        let mut offsets = Vec::new();
        while reader.position() < journal.log.synced_position() {
            let batch = reader.next_batch(1000, 1 << 20).expect("read");
            assert!(batch.gap.is_none(), "{:?}", batch.gap);
            offsets.extend(batch.records.iter().map(|(_, r)| r.offset));
        }
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (100..164).collect::<Vec<_>>(),
            "every waiting append landed once"
        );
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
