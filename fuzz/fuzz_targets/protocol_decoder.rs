//! Fuzzes the command decoder (both encodings) on arbitrary frames, and checks that
//! every command it accepts re-encodes and decodes back to itself (MessagePack).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_protocol::{Encoding, decode_commands, decode_server_messages, encode_command};

fuzz_target!(|frame: &[u8]| {
    for enc in [Encoding::Json, Encoding::MsgPack] {
        if let Ok(commands) = decode_commands(enc, frame) {
            let mut out = Vec::new();
            let ok: Vec<_> = commands.into_iter().flatten().collect();
            for c in &ok {
                encode_command(Encoding::MsgPack, c, &mut out);
            }
            let back: Vec<_> = decode_commands(Encoding::MsgPack, &out)
                .expect("re-encoded commands decode")
                .into_iter()
                .map(|c| c.expect("re-encoded command is valid"))
                .collect();
            assert_eq!(back, ok);
        }
        let _ = decode_server_messages(enc, frame);
    }
});
