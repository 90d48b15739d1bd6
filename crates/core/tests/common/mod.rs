//! Helpers shared by the hub's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use starling_core::{
    ChannelOptions, ClientKey, FrameEncoder, FrameFormat, HistoryPolicy, Outbox, Subscriber,
};
use starling_protocol::{ClientInfo, Publication};

/// Frames are "offset|data" (and "join|client", "leave|client") so tests can read them
/// back.
pub struct TextEncoder;
impl FrameEncoder for TextEncoder {
    fn publication(&self, _: &str, p: &Publication, _: FrameFormat) -> Bytes {
        Bytes::from(format!("{}|{}", p.offset, String::from_utf8_lossy(&p.data)))
    }
    fn delta_publication(
        &self,
        _: &str,
        p: &Publication,
        delta: Option<&[u8]>,
        _: FrameFormat,
    ) -> Bytes {
        let payload = String::from_utf8_lossy(delta.unwrap_or(&p.data));
        let kind = if delta.is_some() { "delta" } else { "full" };
        Bytes::from(format!("{}|{kind}|{payload}", p.offset))
    }
    fn join_leave(&self, _: &str, join: bool, info: &ClientInfo, _: FrameFormat) -> Bytes {
        let kind = if join { "join" } else { "leave" };
        Bytes::from(format!("{kind}|{}", info.client))
    }
}

/// Options of a channel keeping `size` publications.
pub fn history(size: usize) -> ChannelOptions {
    ChannelOptions {
        history: HistoryPolicy {
            size,
            ttl_ms: 0,
            max_bytes: 0,
        },
        ..ChannelOptions::default()
    }
}

/// A subscriber with a 1 MiB queue.
pub fn subscriber(key: ClientKey) -> Subscriber {
    Subscriber::new(
        key,
        Arc::new(Outbox::new(1 << 20)),
        FrameFormat(0),
        Arc::new(ClientInfo {
            user: format!("u{key}"),
            client: format!("c{key}"),
            conn_info: None,
            chan_info: None,
        }),
    )
}

/// Everything queued to `outbox`, drained.
pub fn frames(outbox: &Outbox) -> Vec<String> {
    let mut all = Vec::new();
    // One vectored write takes at most MAX_WRITE_FRAMES frames.
    while outbox.has_frames() {
        outbox
            .write_with::<()>(usize::MAX, |slices| {
                let mut n = 0;
                for s in slices {
                    all.push(String::from_utf8_lossy(s).into_owned());
                    n += s.len();
                }
                Ok(n)
            })
            .expect("drain");
    }
    all
}
