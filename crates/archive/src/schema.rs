//! The schema: versioned migrations, daily partitions, retention.
//!
//! Every DDL statement of the archive runs in a transaction that first takes the
//! transaction-level advisory lock [`DDL_LOCK`], so several nodes may migrate, create
//! partitions and drop old ones at the same time: they take turns, and each step is
//! idempotent (`IF NOT EXISTS`, a version check after the lock).

use std::time::SystemTime;

use tokio_postgres::Client;

use crate::ArchiveError;
use crate::time::Day;

/// The advisory lock key of every DDL transaction of the archive (`pg_advisory_xact_lock`,
/// released at commit or rollback): the bytes of "starling" as a big-endian integer.
pub const DDL_LOCK: i64 = 0x7374_6172_6c69_6e67;

/// The partitioned tables, each partitioned by day on its time column.
pub const PARTITIONED: [&str; 2] = ["starling_publications", "starling_connection_events"];

/// One schema version: what it is and the statements that make it.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// The migrations, in order. A released migration is never edited: a change is a new
/// version (`CREATE OR REPLACE` for functions and views, `ALTER` for tables).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "publications, connection events, cursor, analytics functions and views",
    sql: include_str!("sql/v1.sql"),
}];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The version found (0 for an empty database).
    pub from: i32,
    /// The version now.
    pub to: i32,
}

/// Creates or upgrades the archive's schema to [`latest_version`], in one transaction
/// under [`DDL_LOCK`]: idempotent, and safe to run from several nodes at once (the
/// others wait for the lock, then find the version current and do nothing).
///
/// Refuses a database whose version is newer than this build knows
/// ([`ArchiveError::SchemaTooNew`]).
pub async fn migrate(client: &mut Client) -> Result<MigrateReport, ArchiveError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS starling_archive_schema (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM starling_archive_schema",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = latest_version();
    if from > known {
        return Err(ArchiveError::SchemaTooNew { found: from, known });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO starling_archive_schema (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )
        .await?;
        tracing::info!(version = m.version, "archive schema migrated");
    }
    tx.commit().await?;
    Ok(MigrateReport { from, to: known })
}

/// The version recorded in the database (0 when the archive was never migrated).
pub async fn schema_version(client: &Client) -> Result<i32, ArchiveError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('starling_archive_schema') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM starling_archive_schema",
            &[],
        )
        .await?
        .try_get(0)?)
}

/// The name of `table`'s partition for `day`: `<table>_pYYYYMMDD`.
pub fn partition_name(table: &str, day: Day) -> String {
    format!("{table}_p{}", day.suffix())
}

/// Creates the partitions of both tables for the UTC day of `now` and the `days_ahead`
/// days after it (those that exist are left alone). Returns the partitions created.
///
/// Run it at start and at least daily (the writer does, on every connect and then every
/// hour), so a day's partition exists before its first row; rows for a day without one
/// (a catch-up after a long outage) get it on demand ([`ensure_days`]).
pub async fn ensure_partitions(
    client: &mut Client,
    now: SystemTime,
    days_ahead: u32,
) -> Result<Vec<String>, ArchiveError> {
    let today = Day::of(now)?;
    let days: Vec<Day> = (0..=i64::from(days_ahead)).map(|n| today.plus(n)).collect();
    ensure_days(client, &days).await
}

/// Creates the partitions of both tables for each of `days` that lacks one. Returns the
/// partitions created (empty, and without taking the lock, when all exist).
pub async fn ensure_days(client: &mut Client, days: &[Day]) -> Result<Vec<String>, ArchiveError> {
    let wanted: Vec<String> = days
        .iter()
        .flat_map(|day| PARTITIONED.map(|table| partition_name(table, *day)))
        .collect();
    if missing(client, &wanted).await?.is_empty() {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    // Checked again under the lock: another node may have created them meanwhile.
    let missing = missing(&tx, &wanted).await?;
    for name in &missing {
        let Some((table, day)) = split_partition(name) else {
            continue;
        };
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({}) TO ({})",
            day.bound(),
            day.next().bound()
        ))
        .await?;
        tracing::info!(partition = %name, "archive partition created");
    }
    tx.commit().await?;
    Ok(missing)
}

/// Which of `names` are not tables in the schema the archive's tables are created in
/// (the first of the search path).
///
/// Read from `pg_class` with the statement's snapshot, not with `to_regclass`: name
/// lookups go through the session's catalog cache, which an advisory lock does not
/// refresh, so right after waiting for another node's partition creation `to_regclass`
/// could still say "missing" (seen in a test).
async fn missing(
    client: &impl tokio_postgres::GenericClient,
    names: &[String],
) -> Result<Vec<String>, ArchiveError> {
    let rows = client
        .query(
            "SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS u(n, i)
             WHERE NOT EXISTS (
                 SELECT 1 FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
                 WHERE c.relname = u.n AND s.nspname = current_schema())
             ORDER BY i",
            &[&names],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(ArchiveError::from))
        .collect()
}

/// `(table, day)` of a partition name this crate made.
fn split_partition(name: &str) -> Option<(&'static str, Day)> {
    PARTITIONED.into_iter().find_map(|table| {
        let suffix = name.strip_prefix(table)?.strip_prefix("_p")?;
        Some((table, Day::parse(suffix)?))
    })
}

/// A daily partition that exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Partition {
    /// The partitioned table.
    pub table: &'static str,
    /// The UTC day it holds.
    pub day: Day,
    /// Its name.
    pub name: String,
}

/// The daily partitions of both tables, by table then day. Partitions not named by this
/// crate's rule (someone attached their own) are left out, and left alone by retention.
pub async fn list_partitions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Partition>, ArchiveError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = ANY (ARRAY[to_regclass($1), to_regclass($2)])",
            &[&PARTITIONED[0], &PARTITIONED[1]],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        if let Some((table, day)) = split_partition(&name) {
            out.push(Partition { table, day, name });
        }
    }
    out.sort();
    Ok(out)
}

/// Retention: drops, in both tables, every daily partition whose whole day ended at or
/// before `now - days` (so no row younger than `days` days is ever dropped; the
/// partition holding rows on both sides of the cutoff stays until it is wholly older).
/// Returns the dropped partitions, oldest first.
///
/// Dropping a partition is a catalog change, not a `DELETE`: instant, no vacuum, no
/// bloat. It takes an `ACCESS EXCLUSIVE` lock on the parent table for the moment of the
/// drop, so concurrent writes and queries wait for that moment.
pub async fn drop_partitions_older_than(
    client: &mut Client,
    now: SystemTime,
    days: u32,
) -> Result<Vec<Partition>, ArchiveError> {
    let cutoff = now
        .checked_sub(std::time::Duration::from_secs(u64::from(days) * 86_400))
        .ok_or(ArchiveError::TimeOutOfRange)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
        .await?;
    let old: Vec<Partition> = list_partitions(&tx)
        .await?
        .into_iter()
        .filter(|p| p.day.next().start() <= cutoff)
        .collect();
    for p in &old {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", p.name))
            .await?;
        tracing::info!(partition = %p.name, "archive partition dropped (retention)");
    }
    tx.commit().await?;
    let mut old = old;
    old.sort_by(|a, b| (a.day, a.table).cmp(&(b.day, b.table)));
    Ok(old)
}
