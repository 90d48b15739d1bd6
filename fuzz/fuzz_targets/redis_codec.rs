//! Fuzz target: everything the Redis engine decodes from Redis (pub/sub messages,
//! join/leave, presence entries, control messages) must return an error on bad bytes,
//! never panic or allocate beyond the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_redis::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_incoming(data);
    let _ = codec::decode_client(data);
    let _ = codec::decode_control(data);
    let _ = codec::decode_publication(data, 1);
});
