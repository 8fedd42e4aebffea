//! Anthropic's SSE body, however broken: decoded and translated into canonical chunks or one error, never a
//! panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let items = keel_providers::fuzz::anthropic_stream(common::chunks(data), 1 << 16);
    if let Some(i) = items.iter().position(Result::is_err) {
        assert_eq!(i, items.len() - 1, "an error is the last item");
    }
});
