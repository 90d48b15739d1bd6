//! Arbitrary bytes, split at a fuzzer-chosen point into a source and a delta, through
//! the fossil delta applier (it parses what a peer sends). Must never panic nor produce
//! more than its cap; whatever it produces, the encoder's delta from the same source
//! must give back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_protocol::delta::{apply, encode};

/// The output cap: small, so that a declared size past it is refused early.
const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split) * data.len() / 256;
    let (source, delta) = data.split_at(split);
    if let Ok(target) = apply(source, delta, MAX) {
        assert!(target.len() <= MAX);
        let again = encode(source, &target);
        assert_eq!(apply(source, &again, target.len()).as_deref(), Ok(&target[..]));
    }
    // The delta bytes as a target of their own source: the encoder on arbitrary input.
    let made = encode(source, delta);
    assert_eq!(apply(source, &made, delta.len()).as_deref(), Ok(delta));
});
