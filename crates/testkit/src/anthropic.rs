//! The Anthropic Messages wire format: messages (whole and streamed) and errors.

use serde_json::{Value, json};

use crate::answer::{Answer, Meta, Rendered, char_pieces, content_text, word_pieces, words};

/// Tool input JSON is streamed in pieces of at most this many characters.
const PARTIAL_JSON_CHARS: usize = 7;

/// The Anthropic error body.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Input tokens: words of `system`, of every text block, and of the text of `tool_result` blocks.
pub(crate) fn input_tokens(request: &Value) -> u64 {
    let system = words(&content_text(&request["system"]));
    let Some(messages) = request["messages"].as_array() else {
        return system;
    };
    let messages: u64 = messages.iter().map(|m| message_words(&m["content"])).sum();
    system + messages
}

fn message_words(content: &Value) -> u64 {
    let Some(blocks) = content.as_array() else {
        return words(&content_text(content));
    };
    blocks
        .iter()
        .map(|block| match block["type"].as_str() {
            Some("text") => words(block["text"].as_str().unwrap_or_default()),
            Some("tool_result") => words(&content_text(&block["content"])),
            _ => 0,
        })
        .sum()
}

/// A message for `answer`, streamed when the request says `"stream": true`.
pub(crate) fn messages(request: &Value, answer: &Answer, meta: &Meta) -> Rendered {
    let input = input_tokens(request);
    if request["stream"] == true {
        return Rendered::Stream { status: meta.status, events: stream(answer, meta, input) };
    }
    let content: Vec<Value> = match answer {
        Answer::Text(text) => vec![json!({"type": "text", "text": text})],
        Answer::ToolCalls(calls) => calls
            .iter()
            .map(|c| json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}))
            .collect(),
    };
    let body = json!({
        "id": format!("msg_mock_{}", meta.seq),
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": stop_reason(answer),
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": answer.completion_tokens()}
    });
    Rendered::json(meta.status, &body)
}

fn stop_reason(answer: &Answer) -> &'static str {
    match answer {
        Answer::Text(_) => "end_turn",
        Answer::ToolCalls(_) => "tool_use",
    }
}

/// The parsed arguments, or an empty object when they are not valid JSON.
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// The events of a streamed message, in Anthropic's order: `message_start`, the first block's
/// `content_block_start`, `ping`, the deltas, `content_block_stop`, the other blocks,
/// `message_delta`, `message_stop`.
fn stream(answer: &Answer, meta: &Meta, input_tokens: u64) -> Vec<String> {
    let start = json!({
        "type": "message_start",
        "message": {
            "id": format!("msg_mock_{}", meta.seq),
            "type": "message",
            "role": "assistant",
            "model": meta.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}
        }
    });
    let mut events = vec![event(&start)];
    let ping = event(&json!({"type": "ping"}));
    match answer {
        Answer::Text(text) => {
            let block = json!({"type": "text", "text": ""});
            events.push(event(&json!({"type": "content_block_start", "index": 0, "content_block": block})));
            events.push(ping);
            for piece in word_pieces(text) {
                let delta = json!({"type": "text_delta", "text": piece});
                events.push(event(&json!({"type": "content_block_delta", "index": 0, "delta": delta})));
            }
            events.push(event(&json!({"type": "content_block_stop", "index": 0})));
        }
        Answer::ToolCalls(calls) => {
            let mut ping = Some(ping);
            for (index, call) in calls.iter().enumerate() {
                let block = json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
                events.push(event(&json!({"type": "content_block_start", "index": index, "content_block": block})));
                events.extend(ping.take());
                for piece in char_pieces(&call.arguments, PARTIAL_JSON_CHARS) {
                    let delta = json!({"type": "input_json_delta", "partial_json": piece});
                    events.push(event(&json!({"type": "content_block_delta", "index": index, "delta": delta})));
                }
                events.push(event(&json!({"type": "content_block_stop", "index": index})));
            }
            events.extend(ping);
        }
    }
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(answer), "stop_sequence": null},
        "usage": {"output_tokens": answer.completion_tokens()}
    });
    events.push(event(&delta));
    events.push(event(&json!({"type": "message_stop"})));
    events
}

/// One SSE event; its `event:` name is the payload's `type`.
fn event(payload: &Value) -> String {
    let name = payload["type"].as_str().unwrap_or("message");
    format!("event: {name}\ndata: {payload}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_tokens_count_system_text_and_tool_results() {
        let request = json!({
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "one two three"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "sunny and warm"},
                    {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "x"}]},
                    {"type": "text", "text": "thanks"}
                ]}
            ]
        });
        assert_eq!(input_tokens(&request), 2 + 3 + 3 + 1 + 1);
    }
}
