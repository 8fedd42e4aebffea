//! A client's Anthropic Messages request, as keel's edge reads it, translated to the canonical shape and back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<keel_types::anthropic::MessagesRequest>(data)
        && let Ok(chat) = keel_translate::messages_request_to_chat(req)
    {
        let _ = keel_translate::chat_request_to_messages(&chat, "m", 1024);
        let _ = serde_json::to_vec(&chat);
    }
});
