//! Whatever an upstream answers in a body: error bodies of both vendors' shapes, mid-stream error events,
//! non-streamed answers of both APIs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = data.first().map_or(500, |b| 400 + u16::from(*b));
    let body = data.get(1..).unwrap_or_default();
    let _ = keel_providers::fuzz::openai_error(status, body);
    let _ = keel_providers::fuzz::anthropic_error(status, body);
    let _ = keel_providers::fuzz::openai_stream_error(&String::from_utf8_lossy(body));
    let _ = keel_providers::fuzz::anthropic_answer(body);
    if let Ok(resp) = serde_json::from_slice::<keel_types::ChatResponse>(body) {
        let _ = keel_translate::chat_response_to_messages(resp);
    }
});
