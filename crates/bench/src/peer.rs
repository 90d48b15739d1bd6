//! The client protocols a fan-out subscriber or publisher speaks: Starling's own, and
//! those of the peers it is compared with on the same workload: Socket.IO (engine.io
//! v4 over a raw WebSocket), NATS (its text protocol over WebSocket), Nchan (raw
//! messages on a WebSocket whose path names the channel) and the plain protocol of
//! bench/peers/ws and the `baseline` binary (the same, with another publish path).
//!
//! A [`Session`] is a small state machine fed with every message the server sends; it
//! says what to send back (handshake steps, protocol-level pongs) and collects the
//! publications it saw, so one subscriber loop serves every protocol.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use clap::ValueEnum;
use memchr::memmem::Finder;
use starling_protocol::{
    Command, Encoding, Method, PublishRequest, Push, ReplyBody, ServerMessage,
    decode_server_messages,
};
use starling_websocket::OpCode;

use crate::client::{WsClient, connect_command, subscribe_command};
use crate::frame::Event;
use crate::stats::parse_payload;

/// Largest NATS message the bench accepts (the server's default `max_payload` is 1 MiB).
const NATS_MAX_PAYLOAD: usize = 8 << 20;

/// The protocol of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Starling (`starling.json`): `connect` + `subscribe` commands, pushes.
    Starling,
    /// Socket.IO v4 (engine.io v4 over WebSocket): the server of bench/peers/socketio
    /// joins the client to the room named by the channel on `join`.
    Socketio,
    /// NATS over WebSocket: `CONNECT`, `SUB <channel> 1`, `MSG` deliveries.
    Nats,
    /// Nchan (nginx module): the WebSocket at `<url path><channel>` subscribes to the
    /// channel; each message is a publication's raw data; publications are
    /// `POST /pub/<channel>` with the data as body.
    Nchan,
    /// The plain protocol of bench/peers/ws (Node.js `ws`) and of the `baseline`
    /// binary: as Nchan, publications are `POST /publish/<channel>`.
    Ws,
}

impl Protocol {
    /// The WebSocket subprotocol to ask for, if any.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Protocol::Starling => Some("starling.json"),
            Protocol::Socketio | Protocol::Nats | Protocol::Nchan | Protocol::Ws => None,
        }
    }

    /// The channel is named by the WebSocket's path (no subscribe message): Nchan and
    /// the plain protocol.
    pub fn channel_in_path(self) -> bool {
        matches!(self, Protocol::Nchan | Protocol::Ws)
    }

    /// The path a subscriber of `channel` connects to, given the `--url` path: the
    /// channel appended to it for the protocols that name it there (`/sub/` +
    /// `fanout:1` = `/sub/fanout:1`), the path itself otherwise. Channel names are
    /// the bench's own (letters, digits, `:` and `.`), so nothing needs escaping.
    pub fn subscribe_path(self, base: &str, channel: &str) -> String {
        self.subscribe_path_all(base, &[channel])
    }

    /// The path a subscriber of every channel of `channels` connects to: for the
    /// protocols that name channels in the path, the names joined with `,`
    /// (`/sub/u:1,g:0`), which bench/peers/ws, the `baseline` binary and the Nchan
    /// location of bench/peers.sh read as one subscription to each.
    pub fn subscribe_path_all<S: AsRef<str>>(self, base: &str, channels: &[S]) -> String {
        if !self.channel_in_path() {
            return base.to_string();
        }
        let sep = if base.ends_with('/') { "" } else { "/" };
        let mut path = format!("{base}{sep}");
        for (k, channel) in channels.iter().enumerate() {
            if k > 0 {
                path.push(',');
            }
            path.push_str(channel.as_ref());
        }
        path
    }

    /// The HTTP path that publishes to `channel`, for the protocols whose
    /// publications are a plain HTTP `POST` with the data as body.
    pub fn raw_publish_path(self, channel: &str) -> Option<String> {
        crate::httppub::HttpApi::of(self)
            .filter(|api| api.channel == crate::httppub::ChannelIn::Path)
            .map(|api| api.request_path(channel))
    }

    /// A channel name this protocol accepts for `prefix` and `n` (NATS subjects take
    /// `.` as the separator, the others `:`).
    pub fn channel_name(self, prefix: &str, n: impl std::fmt::Display) -> String {
        match self {
            Protocol::Nats => format!("{prefix}.{n}"),
            _ => format!("{prefix}:{n}"),
        }
    }

    /// The frame type the client sends (the NATS server reads binary frames).
    pub fn opcode(self) -> OpCode {
        match self {
            Protocol::Nats => OpCode::Binary,
            Protocol::Starling | Protocol::Socketio | Protocol::Nchan | Protocol::Ws => {
                OpCode::Text
            }
        }
    }
}

/// A protocol error from the server, or a message the bench cannot read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The server refused a command (Starling reply error, Socket.IO connect error,
    /// NATS `-ERR`).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// A message that does not follow the protocol.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The server closed the session.
    #[error("closed by the server: {0}")]
    Closed(String),
}

/// One publication as a subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Position to check the order with: the stream offset (Starling) or the
    /// publisher's sequence number (peers, which have no offsets).
    pub order: u64,
    /// The publisher's send time carried in the payload, µs on the bench clock.
    pub ts: Option<u64>,
}

/// One client's protocol state.
#[derive(Debug)]
pub struct Session {
    protocol: Protocol,
    channel: String,
    /// Subscribe (true) or only connect (a publisher).
    subscribe: bool,
    /// Handshake messages still to send, in order.
    outbox: Vec<Vec<u8>>,
    /// Ready for publications (subscribed, or connected for a publisher).
    ready: bool,
    /// Order baseline: the next publication must come right after it.
    baseline: u64,
    /// Socket.IO: the `40` connect was sent; NATS: `CONNECT` was sent.
    connect_sent: bool,
    /// Socket.IO: the `join` was sent.
    join_sent: bool,
    /// NATS: pongs received (the first one confirms `CONNECT` and `SUB`).
    pub pongs: u64,
    /// NATS: bytes of a message split over WebSocket frames.
    nats_buf: BytesMut,
    /// Channels to subscribe to after `channel` (`users`: a personal and a group one).
    more: Vec<String>,
    /// Subscriptions confirmed so far (Starling replies, Socket.IO join acks).
    confirmed: usize,
}

impl Session {
    /// A session on `channel` (room or subject); `subscribe` false for a publisher.
    pub fn new(protocol: Protocol, channel: &str, subscribe: bool) -> Session {
        let mut s = Session {
            protocol,
            channel: channel.to_string(),
            subscribe,
            outbox: Vec::new(),
            ready: false,
            baseline: 0,
            connect_sent: false,
            join_sent: false,
            pongs: 0,
            nats_buf: BytesMut::new(),
            more: Vec::new(),
            confirmed: 0,
        };
        s.start();
        s
    }

    /// A subscriber of every channel of `channels` (at least one) on one connection.
    /// The order baseline is the first channel's.
    pub fn subscriber(protocol: Protocol, channels: &[String]) -> Session {
        let (first, more) = channels
            .split_first()
            .map_or(("", &[][..]), |(f, m)| (f.as_str(), m));
        let mut s = Session::new(protocol, first, true);
        if !more.is_empty() {
            s.more = more.to_vec();
            s.outbox.clear();
            s.start();
        }
        s
    }

    /// Every channel subscribed to, in order (ids 2.. in Starling, acks 1.. in
    /// Socket.IO, sids 1.. in NATS).
    fn channels(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.channel.as_str()).chain(self.more.iter().map(String::as_str))
    }

    /// The first messages, for protocols whose client speaks first.
    fn start(&mut self) {
        if self.protocol == Protocol::Starling {
            // Starling's client speaks first.
            let mut commands = vec![connect_command()];
            if self.subscribe {
                for (k, channel) in self.channels().enumerate() {
                    commands.push(subscribe_command(2 + k as u32, channel));
                }
            }
            let mut out = Vec::new();
            for c in &commands {
                starling_protocol::encode_command(Encoding::Json, c, &mut out);
            }
            self.outbox.push(out);
        }
        if self.protocol.channel_in_path() {
            // The upgrade itself subscribed (or, for a publisher, connected).
            self.ready = true;
        }
    }

    /// The protocol this session speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Subscribed (or connected, for a publisher).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The order baseline ([`crate::stats::OrderCheck::after`]).
    pub fn baseline(&self) -> u64 {
        self.baseline
    }

    /// Messages to send now (handshake steps and answers), emptied.
    pub fn take_outbox(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }

    /// Reads one server message; publications go to `seen`.
    pub fn feed(&mut self, payload: &[u8], seen: &mut Vec<Seen>) -> Result<(), PeerError> {
        match self.protocol {
            Protocol::Starling => self.feed_starling(payload, seen),
            Protocol::Socketio => self.feed_socketio(payload, seen),
            Protocol::Nats => {
                self.nats_buf.extend_from_slice(payload);
                self.feed_nats(seen)
            }
            Protocol::Nchan | Protocol::Ws => {
                Self::feed_raw(payload, seen);
                Ok(())
            }
        }
    }

    /// A raw message is the publication's data: what carries no sequence number and
    /// timestamp is not one of the bench's publications, and is skipped.
    fn feed_raw(payload: &[u8], seen: &mut Vec<Seen>) {
        if let Some((seq, ts)) = parse_payload(payload) {
            seen.push(Seen {
                order: seq,
                ts: Some(ts),
            });
        }
    }

    fn feed_starling(&mut self, payload: &[u8], seen: &mut Vec<Seen>) -> Result<(), PeerError> {
        if self.ready
            && let Some(one) = quick_publication(payload)
        {
            seen.push(one);
            return Ok(());
        }
        let msgs = decode_server_messages(Encoding::Json, payload)
            .map_err(|e| PeerError::Unexpected(e.to_string()))?;
        for msg in msgs {
            match msg {
                ServerMessage::Push(Push::Publication { publication, .. }) => seen.push(Seen {
                    order: publication.offset,
                    ts: parse_payload(&publication.data).map(|(_, ts)| ts),
                }),
                ServerMessage::Reply(r) if !self.ready => match r.body {
                    Err(e) => return Err(PeerError::Refused(e.to_string())),
                    Ok(ReplyBody::Subscribe(s)) if r.id >= 2 => {
                        if r.id == 2 {
                            self.baseline = s.offset;
                        }
                        self.confirmed += 1;
                        self.ready = self.confirmed > self.more.len();
                    }
                    Ok(_) if r.id == 1 && !self.subscribe => self.ready = true,
                    Ok(_) => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    fn feed_socketio(&mut self, payload: &[u8], seen: &mut Vec<Seen>) -> Result<(), PeerError> {
        let text = |p: &[u8]| {
            String::from_utf8_lossy(p)
                .chars()
                .take(120)
                .collect::<String>()
        };
        match payload {
            // engine.io open: then connect to the default namespace.
            [b'0', ..] if !self.connect_sent => {
                self.connect_sent = true;
                self.outbox.push(b"40".to_vec());
            }
            // engine.io ping from the server: pong.
            [b'2'] => self.outbox.push(b"3".to_vec()),
            [b'1', ..] => return Err(PeerError::Closed(text(payload))),
            // Socket.IO event: a publication.
            [b'4', b'2', ..] => {
                if let Some((seq, ts)) = parse_payload(payload) {
                    seen.push(Seen {
                        order: seq,
                        ts: Some(ts),
                    });
                }
            }
            // Connected to the namespace: join the room (acknowledged with id 1).
            [b'4', b'0', ..] => {
                if !self.subscribe {
                    self.ready = true;
                } else if !self.join_sent {
                    self.join_sent = true;
                    let mut joins = Vec::new();
                    for (k, channel) in self.channels().enumerate() {
                        let room = serde_json::to_string(channel)
                            .map_err(|e| PeerError::Unexpected(e.to_string()))?;
                        joins.push(format!("42{}[\"join\",{room}]", k + 1).into_bytes());
                    }
                    self.outbox.extend(joins);
                }
            }
            // A join's acknowledgement (ids 1..).
            [b'4', b'3', b'1'..=b'9', ..] => {
                self.confirmed += 1;
                self.ready = self.confirmed > self.more.len();
            }
            [b'4', b'4', ..] => return Err(PeerError::Refused(text(payload))),
            _ => {}
        }
        Ok(())
    }

    fn feed_nats(&mut self, seen: &mut Vec<Seen>) -> Result<(), PeerError> {
        while let Some(eol) = find_crlf(&self.nats_buf) {
            let line = &self.nats_buf[..eol];
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let len = rest
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n <= NATS_MAX_PAYLOAD)
                    .ok_or_else(|| {
                        PeerError::Unexpected(String::from_utf8_lossy(line).into_owned())
                    })?;
                let total = eol + 2 + len + 2;
                if self.nats_buf.len() < total {
                    self.nats_buf.reserve(total - self.nats_buf.len());
                    break;
                }
                let body = &self.nats_buf[eol + 2..eol + 2 + len];
                if let Some((seq, ts)) = parse_payload(body) {
                    seen.push(Seen {
                        order: seq,
                        ts: Some(ts),
                    });
                }
                self.nats_buf.advance(total);
                continue;
            }
            if line.starts_with(b"INFO") {
                if !self.connect_sent {
                    self.connect_sent = true;
                    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\
                                    \"name\":\"starling-bench\",\"lang\":\"rust\",\"version\":\"0\"}\r\n"
                        .to_vec();
                    if self.subscribe {
                        for (k, channel) in self.channels().enumerate() {
                            out.extend_from_slice(
                                format!("SUB {channel} {}\r\n", k + 1).as_bytes(),
                            );
                        }
                    }
                    // The first PONG confirms that CONNECT and SUB were processed.
                    out.extend_from_slice(b"PING\r\n");
                    self.outbox.push(out);
                }
            } else if line == b"PING" {
                self.outbox.push(b"PONG\r\n".to_vec());
            } else if line == b"PONG" {
                self.pongs += 1;
                self.ready = true;
            } else if line.starts_with(b"-ERR") {
                return Err(PeerError::Refused(
                    String::from_utf8_lossy(line).into_owned(),
                ));
            }
            self.nats_buf.advance(eol + 2);
        }
        Ok(())
    }

    /// The bytes that publish `data` on the channel (`id`: Starling command id).
    pub fn publish_message(&self, id: u32, data: &str) -> Vec<u8> {
        match self.protocol {
            Protocol::Nats => nats_pub(&self.channel, data),
            // The raw protocols publish over HTTP ([`Protocol::raw_publish_path`]): their
            // WebSocket carries the data as it is.
            Protocol::Nchan | Protocol::Ws => data.as_bytes().to_vec(),
            Protocol::Starling | Protocol::Socketio => {
                let command = Command {
                    id,
                    method: Method::Publish(PublishRequest {
                        channel: self.channel.clone(),
                        data: bytes::Bytes::copy_from_slice(data.as_bytes()),
                    }),
                };
                let mut json = Vec::new();
                starling_protocol::encode_command(Encoding::Json, &command, &mut json);
                json
            }
        }
    }
}

/// The NATS `PUB` publishing `data` to `subject`.
pub fn nats_pub(subject: &str, data: &str) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Runs the handshake of `session` on `client` until it is ready, answering
/// WebSocket pings, within `limit`.
pub async fn handshake(
    client: &mut WsClient,
    session: &mut Session,
    limit: Duration,
) -> anyhow::Result<()> {
    let work = async {
        let op = session.protocol.opcode();
        let mut seen = Vec::new();
        loop {
            for out in session.take_outbox() {
                client.writer.send(op, &out).await?;
            }
            if session.ready() {
                return anyhow::Ok(());
            }
            match client.reader.next_event().await? {
                Event::Text(p) | Event::Binary(p) => session.feed(&p, &mut seen)?,
                Event::Ping(p) => client.writer.send(OpCode::Pong, &p).await?,
                Event::Close(code, reason) => {
                    anyhow::bail!("closed by server: {code:?} {reason}")
                }
                Event::Pong => {}
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| anyhow::anyhow!("handshake timed out"))?
}

/// One of the bench's own publications in a Starling JSON frame, read the way the raw
/// protocols' payloads are (offset and timestamp found by key), without decoding the
/// whole push: the load generator shares the cores with the server, and a full decode
/// of every delivery made Starling's client side several times dearer than NATS's or
/// Nchan's. Anything else (several messages in one frame, replies, other data) gets
/// `None` and goes through the full decoder.
fn quick_publication(payload: &[u8]) -> Option<Seen> {
    const HEAD: &[u8] = b"{\"push\":{\"channel\":";
    if !payload.starts_with(HEAD) || memchr::memchr(b'\n', payload).is_some() {
        return None;
    }
    let ts = crate::stats::number_after(payload, &crate::stats::TS_KEY)?;
    // The data comes first in `pub` and the bench's own data has no "offset" key, so
    // the first one is the publication's.
    static OFFSET_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b",\"offset\":"));
    let offset = crate::stats::number_after(payload, &OFFSET_KEY)?;
    Some(Seen {
        order: offset,
        ts: Some(ts),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_starling_publication_is_read_without_a_full_decode() {
        let frame = br#"{"push":{"channel":"c","pub":{"data":{"seq":7,"ts":123456,"pad":"xx"},"offset":42}}}"#;
        let seen = super::quick_publication(frame).expect("read");
        assert_eq!((seen.order, seen.ts), (42, Some(123_456)));
        // Several messages in one frame, or a reply, go through the decoder.
        let two = [&frame[..], b"\n", &frame[..]].concat();
        assert!(super::quick_publication(&two).is_none());
        assert!(super::quick_publication(br#"{"id":2,"subscribe":{"offset":3}}"#).is_none());
    }

    use super::*;
    use crate::stats::payload;

    #[test]
    fn socketio_handshake_and_events() {
        let mut s = Session::new(Protocol::Socketio, "room:1", true);
        let mut seen = Vec::new();
        assert!(s.take_outbox().is_empty());
        s.feed(br#"0{"sid":"a","pingInterval":25000}"#, &mut seen)
            .unwrap();
        assert_eq!(s.take_outbox(), vec![b"40".to_vec()]);
        s.feed(br#"40{"sid":"b"}"#, &mut seen).unwrap();
        assert_eq!(s.take_outbox(), vec![br#"421["join","room:1"]"#.to_vec()]);
        assert!(!s.ready());
        s.feed(br#"431["ok"]"#, &mut seen).unwrap();
        assert!(s.ready());
        s.feed(b"2", &mut seen).unwrap();
        assert_eq!(s.take_outbox(), vec![b"3".to_vec()]);
        let event = format!("42[\"pub\",{}]", payload(7, 1234, 60));
        s.feed(event.as_bytes(), &mut seen).unwrap();
        assert_eq!(
            seen,
            vec![Seen {
                order: 7,
                ts: Some(1234)
            }]
        );
        assert!(s.feed(br#"44{"message":"no"}"#, &mut seen).is_err());
    }

    #[test]
    fn nats_handshake_and_split_messages() {
        let mut s = Session::new(Protocol::Nats, "fanout.1", true);
        let mut seen = Vec::new();
        s.feed(b"INFO {\"server_id\":\"x\"}\r\n", &mut seen)
            .unwrap();
        let out = s.take_outbox();
        assert_eq!(out.len(), 1);
        let text = String::from_utf8(out[0].clone()).unwrap();
        assert!(text.starts_with("CONNECT {"), "{text}");
        assert!(text.contains("SUB fanout.1 1\r\n"), "{text}");
        assert!(text.ends_with("PING\r\n"), "{text}");
        assert!(!s.ready());
        s.feed(b"PONG\r\nPI", &mut seen).unwrap();
        assert!(s.ready());
        s.feed(b"NG\r\n", &mut seen).unwrap();
        assert_eq!(s.take_outbox(), vec![b"PONG\r\n".to_vec()]);
        // A message split over three frames, then two in one.
        let body = payload(3, 99, 50);
        let msg = format!("MSG fanout.1 1 {}\r\n{body}\r\n", body.len());
        let (a, rest) = msg.as_bytes().split_at(10);
        let (b, c) = rest.split_at(20);
        for part in [a, b, c] {
            s.feed(part, &mut seen).unwrap();
        }
        assert_eq!(seen.len(), 1);
        let two = format!("{msg}MSG fanout.1 1 reply.x {}\r\n{body}\r\n", body.len());
        s.feed(two.as_bytes(), &mut seen).unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[2],
            Seen {
                order: 3,
                ts: Some(99)
            }
        );
        assert!(
            s.feed(b"-ERR 'Authorization Violation'\r\n", &mut seen)
                .is_err()
        );
        let publish = s.publish_message(1, "abc");
        assert_eq!(publish, b"PUB fanout.1 3\r\nabc\r\n".to_vec());
        assert_eq!(nats_pub("u.g.2", ""), b"PUB u.g.2 0\r\n\r\n".to_vec());
    }

    #[test]
    fn nats_refuses_a_huge_length() {
        let mut s = Session::new(Protocol::Nats, "x", true);
        let mut seen = Vec::new();
        assert!(s.feed(b"MSG x 1 999999999999\r\n", &mut seen).is_err());
        assert!(s.feed(b"MSG x 1 nope\r\n", &mut seen).is_err());
    }

    #[test]
    fn several_channels_on_one_session() {
        let channels = vec!["u:1".to_string(), "g:0".to_string()];
        let mut seen = Vec::new();
        // Starling: one connect, two subscribes; ready after both replies.
        let mut s = Session::subscriber(Protocol::Starling, &channels);
        let out = s.take_outbox();
        assert_eq!(out.len(), 1);
        let text = String::from_utf8(out[0].clone()).unwrap();
        assert!(
            text.contains("\"u:1\"") && text.contains("\"g:0\""),
            "{text}"
        );
        assert!(text.contains("\"id\":3"), "{text}");
        s.feed(
            br#"{"id":1,"connect":{"client":"c","version":"0","ping":25}}
{"id":2,"subscribe":{"offset":5,"epoch":"e"}}"#,
            &mut seen,
        )
        .unwrap();
        assert!(!s.ready());
        s.feed(
            br#"{"id":3,"subscribe":{"offset":9,"epoch":"e"}}"#,
            &mut seen,
        )
        .unwrap();
        assert!(s.ready());
        assert_eq!(s.baseline(), 5);
        // Socket.IO: two joins with ack ids 1 and 2.
        let mut s = Session::subscriber(Protocol::Socketio, &channels);
        s.feed(br#"0{"sid":"a"}"#, &mut seen).unwrap();
        s.take_outbox();
        s.feed(br#"40{"sid":"b"}"#, &mut seen).unwrap();
        assert_eq!(
            s.take_outbox(),
            vec![
                br#"421["join","u:1"]"#.to_vec(),
                br#"422["join","g:0"]"#.to_vec()
            ]
        );
        s.feed(br#"431["ok"]"#, &mut seen).unwrap();
        assert!(!s.ready());
        s.feed(br#"432["ok"]"#, &mut seen).unwrap();
        assert!(s.ready());
        // NATS: two SUBs with sids 1 and 2.
        let mut s = Session::subscriber(Protocol::Nats, &["u.1".into(), "g.0".into()]);
        s.feed(b"INFO {}\r\n", &mut seen).unwrap();
        let text = String::from_utf8(s.take_outbox().concat()).unwrap();
        assert!(text.contains("SUB u.1 1\r\nSUB g.0 2\r\n"), "{text}");
    }

    #[test]
    fn starling_subscribe_reply_sets_the_baseline() {
        let mut s = Session::new(Protocol::Starling, "ch", true);
        assert_eq!(s.take_outbox().len(), 1);
        let mut seen = Vec::new();
        s.feed(
            br#"{"id":1,"connect":{"client":"c","version":"0","ping":25}}
{"id":2,"subscribe":{"offset":41,"epoch":"e"}}"#,
            &mut seen,
        )
        .unwrap();
        assert!(s.ready());
        assert_eq!(s.baseline(), 41);
    }

    #[test]
    fn raw_protocols_are_ready_at_once_and_read_raw_data() {
        for protocol in [Protocol::Nchan, Protocol::Ws] {
            let mut s = Session::new(protocol, "fanout:1", true);
            assert!(s.ready(), "{protocol:?}");
            assert!(s.take_outbox().is_empty());
            let mut seen = Vec::new();
            s.feed(payload(5, 777, 100).as_bytes(), &mut seen).unwrap();
            // Something that is not a bench publication is skipped, not an error.
            s.feed(b"hello", &mut seen).unwrap();
            s.feed(b"", &mut seen).unwrap();
            s.feed(payload(6, 778, 20).as_bytes(), &mut seen).unwrap();
            assert_eq!(
                seen,
                vec![
                    Seen {
                        order: 5,
                        ts: Some(777)
                    },
                    Seen {
                        order: 6,
                        ts: Some(778)
                    }
                ]
            );
            assert_eq!(s.publish_message(1, "abc"), b"abc".to_vec());
            assert_eq!(protocol.subprotocol(), None);
        }
    }

    #[test]
    fn paths_name_the_channel_for_raw_protocols_only() {
        assert_eq!(Protocol::Nchan.subscribe_path("/sub/", "a:1"), "/sub/a:1");
        assert_eq!(Protocol::Ws.subscribe_path("/sub", "a:1"), "/sub/a:1");
        assert_eq!(Protocol::Ws.subscribe_path("/", "a:1"), "/a:1");
        assert_eq!(
            Protocol::Starling.subscribe_path("/connection/websocket", "a:1"),
            "/connection/websocket"
        );
        assert_eq!(Protocol::Nats.subscribe_path("/", "a.1"), "/");
        let two = ["u:1", "g:0"];
        assert_eq!(
            Protocol::Nchan.subscribe_path_all("/sub/", &two),
            "/sub/u:1,g:0"
        );
        assert_eq!(
            Protocol::Ws.subscribe_path_all("/sub", &two),
            "/sub/u:1,g:0"
        );
        assert_eq!(
            Protocol::Starling.subscribe_path_all("/connection/websocket", &two),
            "/connection/websocket"
        );
        assert_eq!(Protocol::Nats.subscribe_path_all("/", &two), "/");
        assert_eq!(
            Protocol::Nchan.raw_publish_path("a:1").as_deref(),
            Some("/pub/a:1")
        );
        assert_eq!(
            Protocol::Ws.raw_publish_path("a:1").as_deref(),
            Some("/publish/a:1")
        );
        assert_eq!(Protocol::Socketio.raw_publish_path("a:1"), None);
        assert_eq!(Protocol::Nats.channel_name("idle", 3), "idle.3");
        assert_eq!(Protocol::Ws.channel_name("idle", 3), "idle:3");
    }
}
