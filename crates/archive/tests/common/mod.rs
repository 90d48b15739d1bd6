//! Shared test support: a real PostgreSQL per test, connections, rows at known times.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use starling_archive::time::Day;
use starling_archive::tokio_postgres::{self, Client, NoTls};
use starling_archive::{ConnectionEvent, EventKind, PublicationRow};
use starling_testkit::postgres::PostgresServer;

/// Upper bound of any wait for a condition: a failure, not a synchronisation.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fresh PostgreSQL (its own initdb) for one test.
pub fn server() -> PostgresServer {
    PostgresServer::start()
}

/// The connection configuration for the server's `postgres` database.
pub fn config(server: &PostgresServer) -> tokio_postgres::Config {
    server
        .conninfo("postgres")
        .parse()
        .expect("connection string")
}

/// A connected client (its connection driven by a task).
pub async fn connect(server: &PostgresServer) -> Client {
    let (client, connection) = config(server).connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A client on a migrated database.
pub async fn migrated(server: &PostgresServer) -> Client {
    let mut client = connect(server).await;
    starling_archive::migrate(&mut client)
        .await
        .expect("migrate");
    client
}

/// `y-m-d h:mi:s` UTC.
pub fn utc(y: i64, m: u32, d: u32, h: u64, mi: u64, s: u64) -> SystemTime {
    Day::from_civil(y, m, d).start() + Duration::from_secs(h * 3600 + mi * 60 + s)
}

/// A publication with `size` bytes of data.
pub fn publication(
    channel: &str,
    epoch: &str,
    offset: u64,
    time: SystemTime,
    user: Option<&str>,
    size: usize,
) -> PublicationRow {
    PublicationRow {
        channel: channel.to_owned(),
        epoch: epoch.to_owned(),
        offset,
        time,
        user_id: user.map(str::to_owned),
        client_id: user.map(|u| format!("client-of-{u}")),
        data: Bytes::from(vec![b'x'; size]),
    }
}

/// A connection event.
pub fn event(at: SystemTime, kind: EventKind, code: Option<u16>) -> ConnectionEvent {
    ConnectionEvent {
        at,
        kind,
        user_id: Some("u".into()),
        client_id: Some("c".into()),
        channel: None,
        code,
    }
}

/// One `bigint` (or `count(*)`) value.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Polls `check` until it holds, or panics after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
