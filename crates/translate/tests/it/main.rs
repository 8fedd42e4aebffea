//! Data-driven tests of keel-translate: JSON in, a JSON snapshot out (`expect-test`; `UPDATE_EXPECT=1` updates).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test fails loudly")]

mod anthropic_stream;
mod mapping;
mod request_to_chat;
mod request_to_messages;
mod response;
mod round_trip;
mod stream_to_chat;
mod stream_to_messages;

use expect_test::Expect;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A wire type from JSON, as a client or upstream would send it.
pub fn parse<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test input matches the wire type")
}

/// Compare a value, as pretty JSON, with its snapshot.
pub fn check<T: Serialize>(value: &T, expect: Expect) {
    expect.assert_eq(&serde_json::to_string_pretty(value).unwrap());
}

/// Compare a list of values, one compact JSON per line, with its snapshot.
pub fn check_lines<T: Serialize>(values: &[T], expect: Expect) {
    let lines: Vec<String> = values.iter().map(|v| serde_json::to_string(v).unwrap()).collect();
    expect.assert_eq(&lines.join("\n"));
}

/// A tiny deterministic generator, so that "random" fragmentations are the same on every run.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }

    /// Split `s` at random char boundaries into pieces of 1 to `max` chars.
    pub fn split(&mut self, s: &str, max: usize) -> Vec<String> {
        let chars: Vec<char> = s.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = 1 + self.below(max);
            let end = (i + n).min(chars.len());
            out.push(chars[i..end].iter().collect());
            i = end;
        }
        out
    }
}
