//! The hub's view of the durable message log: every publication is appended in offset
//! order (the hub calls it under the channel lock). The server binds it to
//! `starling-log`; tests use an in-memory one.

use std::future::Future;
use std::pin::Pin;

use starling_protocol::Publication;

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message log: {0}")]
pub struct JournalError(pub String);

/// Resolves once a durable append is on disk.
pub type DurableAck = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

/// Where publications are persisted.
pub trait Journal: Send + Sync + 'static {
    /// Appends one publication of `channel` (epoch `epoch`) published at `time_ms`.
    /// With `durable`, returns a future that resolves when it is on disk. Must not block
    /// on disk (it runs under the channel lock); it may wait while the log's bounded
    /// queue is full, which is the back-pressure publishers feel.
    fn append(
        &self,
        channel: &str,
        epoch: &str,
        publication: &Publication,
        time_ms: u64,
        durable: bool,
    ) -> Result<Option<DurableAck>, JournalError>;
}
