//! The crate's error type.

/// What can go wrong talking to the archive database.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// PostgreSQL refused a statement, or the connection failed.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A value does not fit the column (PostgreSQL's `bigint` is signed).
    #[error("{what} {value} does not fit a PostgreSQL bigint")]
    OutOfRange {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A time before 1970 or after 9999 (no daily partition can hold it).
    #[error("time out of the archive's range (1970..=9999)")]
    TimeOutOfRange,
    /// The database holds a schema newer than this build knows: a newer node migrated
    /// it. Writing with an older schema's statements could be wrong, so this build
    /// refuses; upgrade the node.
    #[error("the archive schema is at version {found}, this build knows up to {known}")]
    SchemaTooNew {
        /// The version in the database.
        found: i32,
        /// The newest version this build can apply.
        known: i32,
    },
    /// A statement took longer than the writer's timeout (the connection is dropped).
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl ArchiveError {
    /// How the background writer should react to this error.
    pub fn class(&self) -> ErrorClass {
        let ArchiveError::Postgres(e) = self else {
            return match self {
                ArchiveError::Timeout(_) => ErrorClass::Connection,
                ArchiveError::SchemaTooNew { .. } => ErrorClass::Retry,
                _ => ErrorClass::Reject,
            };
        };
        if e.is_closed() {
            return ErrorClass::Connection;
        }
        let Some(code) = e.code() else {
            // No SQLSTATE: an I/O or protocol error, the connection is gone or unusable.
            return ErrorClass::Connection;
        };
        let code = code.code();
        match &code[..2] {
            // connection exception, operator intervention (shutdown, crash recovery),
            // insufficient resources, transaction rollback (serialization, deadlock).
            "08" | "57" | "53" | "40" => ErrorClass::Connection,
            // Syntax error or access rule violation: 42P01 undefined table and the like,
            // after someone dropped or changed the schema. Migrate again.
            "42" => ErrorClass::Schema,
            // Data exception, integrity violation: the batch itself is bad and would
            // fail again.
            "22" | "23" => ErrorClass::Reject,
            _ => ErrorClass::Retry,
        }
    }
}

/// How the background writer reacts to a failed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection is lost or unusable: reconnect with backoff, retry the batch.
    Connection,
    /// The schema is missing or different: migrate again (on the same connection),
    /// retry the batch after a backoff.
    Schema,
    /// Transient or unknown: retry the batch after a backoff.
    Retry,
    /// The rows themselves are refused (a data exception): retrying cannot succeed.
    /// The batch is counted as rejected and skipped (for publications the cursor still
    /// advances past it, else the log reader would offer it forever).
    Reject,
}

/// tokio-postgres shows a server error as "db error" alone: add the server's words
/// (severity, SQLSTATE, message, detail).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!(
                "{} {}: {} ({detail})",
                db.severity(),
                db.code().code(),
                db.message()
            ),
            None => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        },
        None => e.to_string(),
    }
}
