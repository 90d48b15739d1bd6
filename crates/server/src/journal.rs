//! Binds the hub's [`Journal`] to the node's durable message log (`starling-log`), and
//! rebuilds channel history from the log at start.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use starling_core::{DurableAck, Hub, Journal, JournalError, Namespaces};
use starling_log::{Log, LogConfig, Record};
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
fn encode(channel: &str, publication: &Publication) -> Bytes {
    let mut out = Vec::with_capacity(publication.data.len() + 64);
    encode_publication(Encoding::MsgPack, channel, publication, &mut out);
    Bytes::from(out)
}

fn decode(record: &Record) -> Option<Publication> {
    let messages = decode_server_messages(Encoding::MsgPack, &record.payload).ok()?;
    messages.into_iter().find_map(|m| match m {
        ServerMessage::Push(Push::Publication { publication, .. }) => Some(publication),
        _ => None,
    })
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
        let record = Record {
            channel: channel.to_string(),
            epoch: epoch.to_string(),
            offset: publication.offset,
            time_ms,
            payload: encode(channel, publication),
        };
        let receiver = self
            .log
            .append(record, durable)
            .map_err(|e| JournalError(e.to_string()))?;
        Ok(receiver.map(|rx| {
            Box::pin(async move {
                match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(JournalError(e.to_string())),
                    Err(_) => Err(JournalError("the log writer stopped".into())),
                }
            }) as DurableAck
        }))
    }
}

/// Opens the message log in `config.dir`, puts the retained publications back into the
/// hub's history (for namespaces that keep history), and returns the journal to attach.
pub fn open(
    config: &StorageConfig,
    hub: &Hub,
    namespaces: &Namespaces,
) -> anyhow::Result<Arc<LogJournal>> {
    let mut log_config = LogConfig::new(&config.dir);
    log_config.segment_bytes = config.segment_bytes;
    log_config.max_bytes = config.max_bytes;
    log_config.max_age = Duration::from_secs(config.max_age_secs);
    log_config.sync_interval = Duration::from_millis(config.sync_interval_ms.max(1));
    let (log, records) = Log::open(log_config)
        .with_context(|| format!("opening the message log in {} (storage.dir)", config.dir))?;
    let (mut restored, mut skipped) = (0usize, 0usize);
    for record in &records {
        let Ok(rules) = namespaces.resolve(&record.channel) else {
            skipped += 1;
            continue;
        };
        let Some(publication) = decode(record) else {
            warn!(channel = %record.channel, offset = record.offset, "undecodable log record skipped");
            skipped += 1;
            continue;
        };
        hub.restore(
            &record.channel,
            &record.epoch,
            publication,
            record.time_ms,
            rules.options.channel_options(),
        );
        restored += 1;
    }
    // Expired entries and channels without history go at once, not at the first sweep.
    hub.sweep();
    info!(
        dir = %config.dir,
        records = records.len(),
        restored,
        skipped,
        "message log opened"
    );
    Ok(Arc::new(LogJournal { log: Arc::new(log) }))
}
