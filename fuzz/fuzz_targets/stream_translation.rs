//! The two stream state machines fed arbitrary event sequences: Anthropic events to canonical chunks (an
//! Anthropic upstream) and canonical chunks to Anthropic events (an Anthropic client), one JSON value per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut to_chat = keel_translate::MessagesToChatStream::new(true);
    let mut to_messages = keel_translate::ChatToMessagesStream::new("msg".into(), "m".into(), 0);
    for line in text.lines() {
        if let Ok(event) = serde_json::from_str::<keel_types::anthropic::StreamEvent>(line) {
            for chunk in to_chat.push(event) {
                let _ = to_messages.push(chunk);
            }
        }
        if let Ok(chunk) = serde_json::from_str::<keel_types::ChatChunk>(line) {
            let _ = to_messages.push(chunk);
        }
    }
    let _ = to_chat.usage();
    let _ = to_messages.finish();
    let _ = to_messages.fail("api_error", "x");
});
