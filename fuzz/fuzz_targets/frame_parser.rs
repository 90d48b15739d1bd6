//! Arbitrary bytes, split at a fuzzer-chosen point, into a Connection with and
//! without permessage-deflate. Must never panic nor over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_websocket::{Config, Connection, DeflateParams};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split) * data.len() / 256;
    let config = Config {
        max_frame_size: 1 << 16,
        max_message_size: 1 << 16,
    };
    for deflate in [None, Some(DeflateParams::default())] {
        let mut conn = Connection::new(config, deflate);
        let mut sink = |_m| {};
        let (a, b) = data.split_at(split);
        let ok = conn
            .receive(a, &mut sink)
            .and_then(|()| conn.receive(b, &mut sink));
        if let Err(e) = ok {
            let _ = conn.fail(&e);
        }
        while conn.poll_outbound().is_some() {}
    }
});
