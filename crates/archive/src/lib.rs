#![doc = include_str!("../README.md")]

pub mod analytics;
mod error;
pub mod schema;
pub mod time;
mod write;
pub mod writer;

pub use error::{ArchiveError, ErrorClass};
pub use schema::{
    MigrateReport, Partition, drop_partitions_older_than, ensure_days, ensure_partitions,
    latest_version, list_partitions, migrate, partition_name, schema_version,
};
pub use write::{
    ConnectionEvent, DEFAULT_NAMESPACE, EventKind, LogPosition, PublicationRow, WriteReport,
    namespace_of, read_cursor, write_events, write_publications,
};
pub use writer::{SendError, Writer, WriterConfig, WriterStats};

/// The PostgreSQL client this crate speaks through (connect with `NoTls`).
pub use tokio_postgres;
