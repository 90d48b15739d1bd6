//! Publishing over HTTP as a backend does: a pool of keep-alive connections, one
//! request in flight on each, every connection taking the next due publication in
//! turn. `fanout` publishes one channel's numbered publications through it, `users`
//! publications spread over thousands of channels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::client::HttpConn;
use crate::peer::Protocol;
use crate::report::say;

/// What a publisher got done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PubReport {
    /// Publications sent.
    pub sent: u64,
    /// Publications the server accepted (HTTP 2xx, or a success reply).
    pub accepted: u64,
    /// Publications the server refused.
    pub refused: u64,
}

impl PubReport {
    /// Adds another report's counts.
    pub fn add(&mut self, other: &PubReport) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.refused += other.refused;
    }
}

/// Where a publish request names the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelIn {
    /// In a JSON body `{"<key>":<channel>,"data":<data>}` POSTed to the endpoint's
    /// path (Starling: `channel`, the Socket.IO peer: `room`).
    Body(&'static str),
    /// At the end of the path (`<path><channel>`); the body is the data alone (Nchan,
    /// the plain protocol of bench/peers/ws and the `baseline` binary).
    Path,
}

/// A server's HTTP publish endpoint: where to POST and how to name the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpApi {
    /// Request path ([`ChannelIn::Body`]), or the path the channel is appended to
    /// ([`ChannelIn::Path`]).
    pub path: &'static str,
    /// Where the channel goes.
    pub channel: ChannelIn,
    /// Send `Authorization: apikey KEY`.
    pub api_key: bool,
}

impl HttpApi {
    /// The HTTP publish endpoint of `protocol`'s server, if it has one: Starling's
    /// `POST /api/publish`, the Socket.IO peer's `POST /publish`
    /// (bench/peers/socketio/server.js), Nchan's `POST /pub/<channel>` (the location
    /// bench/peers.sh configures) and the plain protocol's `POST /publish/<channel>`.
    /// NATS has none.
    pub fn of(protocol: Protocol) -> Option<HttpApi> {
        let (path, channel, api_key) = match protocol {
            Protocol::Starling => ("/api/publish", ChannelIn::Body("channel"), true),
            Protocol::Socketio => ("/publish", ChannelIn::Body("room"), false),
            Protocol::Nchan => ("/pub/", ChannelIn::Path, false),
            Protocol::Ws => ("/publish/", ChannelIn::Path, false),
            Protocol::Nats => return None,
        };
        Some(HttpApi {
            path,
            channel,
            api_key,
        })
    }

    /// The request path publishing to `channel`. Channel names are the bench's own
    /// (letters, digits, `:` and `.`), so nothing needs escaping in a path.
    pub fn request_path(&self, channel: &str) -> String {
        match self.channel {
            ChannelIn::Body(_) => self.path.to_string(),
            ChannelIn::Path => format!("{}{channel}", self.path),
        }
    }

    /// The request body publishing `data` (JSON text) to `channel`.
    pub fn body(&self, channel: &str, data: &str) -> String {
        match self.channel {
            ChannelIn::Body(key) => {
                // A channel name is plain text, but quote it as JSON all the same.
                let channel = serde_json::Value::from(channel);
                format!("{{\"{key}\":{channel},\"data\":{data}}}")
            }
            ChannelIn::Path => data.to_string(),
        }
    }

    /// The endpoint for humans: `/api/publish`, `/pub/<channel>`.
    pub fn describe(&self) -> String {
        match self.channel {
            ChannelIn::Body(_) => self.path.to_string(),
            ChannelIn::Path => format!("{}<channel>", self.path),
        }
    }
}

/// What one pool publishes: when each publication is due, its body (built when it
/// is sent, so that its timestamp is the send time), and what became of it.
pub trait Schedule: Sync {
    /// When publication `i` is due; `None` once there are no more.
    fn due(&self, i: u64) -> Option<tokio::time::Instant>;
    /// The request body of publication `i`.
    fn body(&self, i: u64) -> String;
    /// The request path of publication `i`, when it is not the pool's (a channel named
    /// in the path).
    fn path(&self, _i: u64) -> Option<String> {
        None
    }
    /// Publication `i` was accepted (true) or refused.
    fn outcome(&self, _i: u64, _accepted: bool) {}
}

/// Publishes `schedule` to `addrs` (connection `c` goes to `addrs[c % len]`) on
/// `connections` keep-alive connections until the schedule ends or `deadline`. A
/// connection that fails (or runs out of time) is reported and ends, keeping its
/// counts; the others go on. Fails only when a connection failed and nothing was sent.
pub async fn publish(
    addrs: &[SocketAddr],
    path: &str,
    auth: Option<&str>,
    connections: usize,
    deadline: tokio::time::Instant,
    schedule: &impl Schedule,
) -> anyhow::Result<PubReport> {
    anyhow::ensure!(!addrs.is_empty(), "no address to publish to");
    let next = AtomicU64::new(0);
    let one = |c: usize| {
        connection(
            addrs[c % addrs.len()],
            path,
            auth,
            deadline,
            &next,
            schedule,
        )
    };
    let reports = futures_util::future::join_all((0..connections.max(1)).map(one)).await;
    let mut total = PubReport::default();
    let mut failed = None;
    for (report, error) in reports {
        total.add(&report);
        if let Some(e) = error {
            say!("a publishing connection stopped: {e:#}");
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) if total.sent == 0 => Err(e),
        _ => Ok(total),
    }
}

/// One connection's loop: what it got done, and the error that ended it, if any.
async fn connection(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    deadline: tokio::time::Instant,
    next: &AtomicU64,
    schedule: &impl Schedule,
) -> (PubReport, Option<anyhow::Error>) {
    let mut report = PubReport::default();
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut http = HttpConn::default();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(due) = schedule.due(i) else { break };
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due).await;
            let body = schedule.body(i);
            let own_path = schedule.path(i);
            // Sent once it leaves, whether or not a reply comes back.
            report.sent += 1;
            let exchange = http.exchange(
                &mut stream,
                addr,
                own_path.as_deref().unwrap_or(path),
                &headers,
                body.as_bytes(),
            );
            let (status, body) = tokio::time::timeout_at(deadline, exchange)
                .await
                .context("publish timed out")??;
            // Some servers answer 201 or 202 (queued); any 2xx is an acceptance.
            let accepted = (200..300).contains(&status);
            schedule.outcome(i, accepted);
            if accepted {
                report.accepted += 1;
            } else {
                if report.refused < 3 {
                    say!(
                        "publish refused: HTTP {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                report.refused += 1;
            }
        }
        anyhow::Ok(())
    };
    let result = work.await;
    (report, result.err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let starling = HttpApi::of(Protocol::Starling).unwrap();
        assert_eq!(starling.path, "/api/publish");
        let b = starling.body("u:1", r#"{"seq":1}"#);
        assert_eq!(b, r#"{"channel":"u:1","data":{"seq":1}}"#);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["data"]["seq"], 1);
        let sio = HttpApi::of(Protocol::Socketio).unwrap();
        assert_eq!(sio.body("r\"x", "1"), r#"{"room":"r\"x","data":1}"#);
        assert!(!sio.api_key);
        assert_eq!(sio.request_path("r"), "/publish");
        assert_eq!(HttpApi::of(Protocol::Nats), None);
    }

    #[test]
    fn raw_endpoints_name_the_channel_in_the_path() {
        let nchan = HttpApi::of(Protocol::Nchan).unwrap();
        assert_eq!(nchan.request_path("u7:u:3"), "/pub/u7:u:3");
        assert_eq!(nchan.body("u7:u:3", r#"{"seq":1}"#), r#"{"seq":1}"#);
        assert_eq!(nchan.describe(), "/pub/<channel>");
        assert!(!nchan.api_key);
        let ws = HttpApi::of(Protocol::Ws).unwrap();
        assert_eq!(ws.request_path("g:0"), "/publish/g:0");
        assert_eq!(ws.body("g:0", "1"), "1");
        // The same paths as fanout's raw publisher.
        for p in [Protocol::Nchan, Protocol::Ws] {
            let api = HttpApi::of(p).unwrap();
            assert_eq!(p.raw_publish_path("c:1"), Some(api.request_path("c:1")));
        }
        let starling = HttpApi::of(Protocol::Starling).unwrap();
        assert_eq!(starling.request_path("x"), "/api/publish");
        assert_eq!(starling.describe(), "/api/publish");
    }

    #[test]
    fn reports_add_up() {
        let mut r = PubReport::default();
        r.add(&PubReport {
            sent: 3,
            accepted: 2,
            refused: 1,
        });
        r.add(&PubReport {
            sent: 1,
            accepted: 1,
            refused: 0,
        });
        assert_eq!(
            r,
            PubReport {
                sent: 4,
                accepted: 3,
                refused: 1
            }
        );
    }
}
