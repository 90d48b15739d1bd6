//! What every subscribing scenario (`fanout`, `users`) does with one connection:
//! open it and run the protocol's handshake within a deadline, then turn the server's
//! messages into publications seen, answering pings and protocol messages.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use starling_websocket::OpCode;
use tokio::sync::Semaphore;

use crate::client::{Target, WsClient};
use crate::frame::Event;
use crate::peer::{Seen, Session, handshake};

/// Why a subscriber could not subscribe.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The set-up gate was closed (the run is ending).
    #[error("setup: gate closed")]
    Gate,
    /// Connect, upgrade or handshake failed.
    #[error("setup: {0}")]
    Failed(String),
    /// The run's deadline passed first.
    #[error("setup: timed out")]
    TimedOut,
}

/// Connects to `target` (from `source`) and runs `session`'s handshake, holding one
/// permit of `gate` meanwhile (bounded concurrent set-ups), all before `deadline`.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    session: &mut Session,
    protocol_subprotocol: Option<&str>,
    gate: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Result<WsClient, SetupError> {
    let Ok(_permit) = gate.clone().acquire_owned().await else {
        return Err(SetupError::Gate);
    };
    let setup = async {
        let mut client = WsClient::connect_as(target, source, protocol_subprotocol).await?;
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        handshake(&mut client, session, limit).await?;
        anyhow::Ok(client)
    };
    match tokio::time::timeout_at(deadline, setup).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SetupError::Failed(format!("{e:#}"))),
        Err(_) => Err(SetupError::TimedOut),
    }
}

/// Handles `first` and every event already buffered behind it: publications go to
/// `seen`, pings and protocol messages are answered. Returns why the connection can
/// go on no longer, if it cannot.
pub async fn drain_events(
    client: &mut WsClient,
    session: &mut Session,
    op: OpCode,
    first: anyhow::Result<Event>,
    seen: &mut Vec<Seen>,
) -> Option<String> {
    let mut next = Some(first);
    while let Some(event) = next.take() {
        match event {
            Ok(Event::Text(p) | Event::Binary(p)) => {
                if let Err(e) = session.feed(&p, seen) {
                    return Some(e.to_string());
                }
                for out in session.take_outbox() {
                    if let Err(e) = client.writer.send(op, &out).await {
                        return Some(format!("answer: {e}"));
                    }
                }
            }
            Ok(Event::Ping(p)) => {
                if let Err(e) = client.writer.send(OpCode::Pong, &p).await {
                    return Some(format!("pong: {e}"));
                }
            }
            Ok(Event::Close(code, reason)) => {
                return Some(format!("closed by server: {code:?} {reason}"));
            }
            Ok(Event::Pong) => {}
            Err(e) => return Some(format!("{e:#}")),
        }
        next = client.reader.buffered_event().transpose();
    }
    None
}

/// Waits until `ready` + `failed` reach `total` (every connection subscribed or gave
/// up), or `deadline`; whether they all got there. Polls: the counters are the
/// subscribers' own, bumped from thousands of tasks.
pub async fn wait_set_up(
    ready: &AtomicUsize,
    failed: &AtomicUsize,
    total: usize,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        if ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= total {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
