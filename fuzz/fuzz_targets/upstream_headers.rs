//! Upstream response headers keel reads (`Retry-After`, `retry-after-ms`): any value gives a bounded wait or
//! none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    let wait = keel_providers::fuzz::retry_after(&[("retry-after", a), ("retry-after-ms", b)]);
    if let Some(w) = wait {
        assert!(w <= std::time::Duration::from_secs(24 * 3600), "bounded: {w:?}");
    }
    let _ = keel_providers::fuzz::retry_after(&[("retry-after", data)]);
});
