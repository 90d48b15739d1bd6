//! Fuzzes the HTTP API's request body parser (`starling::api::parse_request`, the code
//! path of every `/api/<method>` handler) with arbitrary bytes for every method. A body
//! is accepted or refused with a client error; it never panics and never yields a 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "history",
    "channels",
    "presence",
    "disconnect",
    "unsubscribe",
    "user",
    "info",
    "analytics",
];

fuzz_target!(|body: &[u8]| {
    for method in METHODS {
        if let Err(e) = starling::api::parse_request(method, body) {
            assert!((400..500).contains(&e.status()), "{method}: {e:?}");
        }
    }
});
