//! The OpenAI wire format: chat completions (whole and streamed), embeddings, models and errors.

use serde_json::{Value, json};

use crate::answer::{Answer, Meta, Rendered, char_pieces, content_text, word_pieces, words};

/// Tool-call arguments are streamed in pieces of at most this many characters.
const ARGUMENT_PIECE_CHARS: usize = 7;
/// Embedding length when the request does not ask for `dimensions`.
pub(crate) const DEFAULT_DIMENSIONS: usize = 8;
/// A bound on `dimensions` so that one request cannot make the mock allocate without limit.
const MAX_DIMENSIONS: u64 = 65_536;

/// The OpenAI error body.
pub(crate) fn error_body(kind: &str, message: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Prompt tokens: words of every message's text content, whatever its role.
pub(crate) fn prompt_tokens(request: &Value) -> u64 {
    let Some(messages) = request["messages"].as_array() else {
        return 0;
    };
    messages.iter().map(|m| words(&content_text(&m["content"]))).sum()
}

/// A chat completion for `answer`, streamed when the request says `"stream": true`.
pub(crate) fn chat(request: &Value, answer: &Answer, meta: &Meta) -> Rendered {
    let prompt = prompt_tokens(request);
    let completion = answer.completion_tokens();
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
    });
    if request["stream"] == true {
        let include_usage = request["stream_options"]["include_usage"] == true;
        let events = chat_stream(answer, meta, include_usage.then_some(usage));
        return Rendered::Stream { status: meta.status, events };
    }
    let (message, finish_reason) = match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text, "refusal": null}), "stop"),
        Answer::ToolCalls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}
                    })
                })
                .collect();
            let message = json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": calls});
            (message, "tool_calls")
        }
    };
    let body = json!({
        "id": format!("chatcmpl-mock-{}", meta.seq),
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason
        }],
        "usage": usage,
        "system_fingerprint": "fp_mock"
    });
    Rendered::json(meta.status, &body)
}

/// The SSE events of a streamed completion, ending with `data: [DONE]`. With `usage` (the
/// client asked for `include_usage`) every chunk carries `"usage": null` and a final chunk with
/// no choices carries the usage, as OpenAI does.
fn chat_stream(answer: &Answer, meta: &Meta, usage: Option<Value>) -> Vec<String> {
    let id = format!("chatcmpl-mock-{}", meta.seq);
    let with_usage = usage.is_some();
    let chunk = |delta: Value, finish_reason: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason
            }]
        });
        if with_usage {
            chunk["usage"] = Value::Null;
        }
        data_event(&chunk)
    };

    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let finish_reason = match answer {
        Answer::Text(text) => {
            for piece in word_pieces(text) {
                events.push(chunk(json!({"content": piece}), Value::Null));
            }
            "stop"
        }
        Answer::ToolCalls(calls) => {
            for (index, call) in calls.iter().enumerate() {
                let start = json!({"tool_calls": [{
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""}
                }]});
                events.push(chunk(start, Value::Null));
                for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                    let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
                    events.push(chunk(delta, Value::Null));
                }
            }
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), json!(finish_reason)));
    if let Some(usage) = usage {
        let last = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage
        });
        events.push(data_event(&last));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// The embeddings answer, or a message saying why the request is invalid (a 400).
pub(crate) fn embeddings(request: &Value, meta: &Meta) -> Result<Value, String> {
    let inputs: Vec<&str> = match &request["input"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or("'input' must be a string or a non-empty array of strings")?,
        _ => return Err("'input' must be a string or a non-empty array of strings".to_owned()),
    };
    let dimensions = match &request["dimensions"] {
        Value::Null => DEFAULT_DIMENSIONS,
        value => match value.as_u64() {
            Some(n @ 1..=MAX_DIMENSIONS) => n as usize,
            _ => return Err(format!("'dimensions' must be an integer in 1..={MAX_DIMENSIONS}")),
        },
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embed(text, dimensions)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| words(t)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": meta.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    }))
}

/// A deterministic unit vector for `text`: FNV-1a seeds a splitmix64 sequence, whose values are
/// mapped to [-1, 1] and L2-normalised. Equal texts give equal vectors, different texts differ.
pub(crate) fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes());
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The top 53 bits as a fraction in [0, 1), then moved to [-1, 1).
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    raw.iter().map(|x| (x / norm) as f32).collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `GET /v1/models`: a list of the one mock model.
pub(crate) fn models() -> Value {
    json!({
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 1_700_000_000, "owned_by": "keel-testkit"}]
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello world", 16);
        assert_eq!(a, embed("hello world", 16));
        assert_ne!(a, embed("hello worle", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }

    #[test]
    fn embeddings_reject_other_input_shapes() {
        let meta = Meta { seq: 1, created: 0, model: "m".into(), status: 200 };
        for input in [json!([1, 2]), json!([]), json!(null), json!({"a": 1})] {
            assert!(embeddings(&json!({"input": input}), &meta).is_err(), "{input}");
        }
        assert!(embeddings(&json!({"input": "a", "dimensions": 0}), &meta).is_err());
        let ok = embeddings(&json!({"input": ["a b", "c"], "dimensions": 3}), &meta).unwrap();
        assert_eq!(ok["usage"]["prompt_tokens"], 3);
        assert_eq!(ok["data"][1]["embedding"].as_array().unwrap().len(), 3);
    }
}
