//! The hub's view of the durable message log: every publication is appended in offset
//! order (the hub calls it under the channel lock). The server binds it to
//! `starling-log`; tests use an in-memory one.
//!
//! A cluster node keeps a journal too when it archives: there the broker holds the
//! streams, and the journal only records what this node published (after the broker
//! accepted it, with the broker's offset) for the archive to read.

use std::future::Future;
use std::pin::Pin;

use starling_protocol::Publication;

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The log cannot take the record now (its queue is full): temporary. The record was
    /// not taken; the hub refuses the publication without consuming its offset.
    #[error("message log busy")]
    Busy,
    /// The log is failed (a write error) or the record was lost: it is not persisted.
    #[error("message log: {0}")]
    Failed(String),
}

/// Resolves once a durable append is on disk.
pub type DurableAck = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

/// Where publications are persisted.
pub trait Journal: Send + Sync + 'static {
    /// Appends one publication of `channel` (epoch `epoch`) published at `time_ms`.
    /// With `durable`, returns a future that resolves when it is on disk.
    ///
    /// Must never block: it runs on a runtime worker under the channel lock. When the
    /// log cannot keep up it returns [`JournalError::Busy`] at once (and must not have
    /// taken the record); when it is failed, [`JournalError::Failed`].
    fn append(
        &self,
        channel: &str,
        epoch: &str,
        publication: &Publication,
        time_ms: u64,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError>;

    /// Appends like [`append`](Self::append), but waits (asynchronously, for a bounded
    /// time) for room when the log is busy instead of refusing at once: for a caller that
    /// cannot take the publication back — a cluster node whose broker already published
    /// it — and holds no lock. [`JournalError::Busy`] only once that time ran out. The
    /// default refuses like `append`.
    fn append_waiting(
        &self,
        channel: &str,
        epoch: &str,
        publication: &Publication,
        time_ms: u64,
        durable: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Option<DurableAck>, JournalError>> + Send + '_>> {
        Box::pin(std::future::ready(self.append(
            channel,
            epoch,
            publication,
            time_ms,
            durable,
        )))
    }
}
