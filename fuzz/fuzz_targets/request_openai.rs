//! A client's OpenAI chat request, as keel's edge reads it, then translated for an Anthropic upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<keel_types::ChatRequest>(data) {
        let _ = req.max_output_tokens();
        if let Ok(anthropic) = keel_translate::chat_request_to_messages(&req, "m", 1024) {
            let _ = serde_json::to_vec(&anthropic);
        }
        let _ = serde_json::to_vec(&req);
    }
    let _ = serde_json::from_slice::<keel_types::EmbeddingsRequest>(data);
});
