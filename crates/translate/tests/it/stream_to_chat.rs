//! Anthropic stream events → canonical chunks (streaming from Anthropic upstream).

use std::collections::BTreeMap;

use expect_test::{Expect, expect};
use keel_translate::MessagesToChatStream;
use keel_types::ChatChunk;
use keel_types::anthropic::StreamEvent;
use serde_json::{Value, json};

use crate::{Lcg, check, check_lines, parse};

fn start(usage: Value) -> Value {
    json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": usage}})
}

fn block_start(index: u32, block: Value) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": block})
}

fn text(index: u32, text: &str) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})
}

fn json_delta(index: u32, partial: &str) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": partial}})
}

fn tool(index: u32, id: &str, name: &str) -> Value {
    block_start(index, json!({"type": "tool_use", "id": id, "name": name, "input": {}}))
}

fn stop(index: u32) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

fn message_delta(reason: &str, usage: Value) -> Value {
    json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": usage})
}

fn run(include_usage: bool, events: Vec<Value>) -> (MessagesToChatStream, Vec<ChatChunk>) {
    let mut stream = MessagesToChatStream::new(include_usage).with_created(1_700_000_000);
    let chunks = events.into_iter().flat_map(|e| stream.push(parse::<StreamEvent>(e))).collect();
    (stream, chunks)
}

/// Chunks without the fields every chunk shares, after checking that they do share them.
fn check_chunks(chunks: &[ChatChunk], expect: Expect) {
    for c in chunks {
        assert_eq!((c.id.as_str(), c.model.as_str(), c.created), ("msg_01", "claude-sonnet-4-5", 1_700_000_000));
        assert_eq!(c.object, "chat.completion.chunk");
    }
    let lines: Vec<Value> = chunks
        .iter()
        .map(|c| match &c.usage {
            Some(usage) => json!({"choices": c.choices, "usage": usage}),
            None => serde_json::to_value(&c.choices).unwrap(),
        })
        .collect();
    check_lines(&lines, expect);
}

/// The arguments of each tool call, concatenated per OpenAI index as a client does.
fn arguments(chunks: &[ChatChunk]) -> BTreeMap<u32, (String, String, String)> {
    let mut calls: BTreeMap<u32, (String, String, String)> = BTreeMap::new();
    for call in chunks.iter().flat_map(|c| &c.choices).flat_map(|c| c.delta.tool_calls.iter().flatten()) {
        let entry = calls.entry(call.index).or_default();
        if let Some(id) = &call.id {
            assert!(entry.0.is_empty(), "id sent twice for call {}", call.index);
            entry.0 = id.clone();
        }
        let function = call.function.as_ref().unwrap();
        if let Some(name) = &function.name {
            entry.1.push_str(name);
        }
        entry.2.push_str(function.arguments.as_deref().unwrap_or_default());
    }
    calls
}

#[test]
fn text_then_two_tool_calls_with_usage() {
    let (stream, chunks) = run(
        true,
        vec![
            start(json!({"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 100,
                         "cache_creation_input_tokens": 50})),
            block_start(0, json!({"type": "text", "text": ""})),
            json!({"type": "ping"}),
            text(0, "Checking "),
            text(0, "both."),
            stop(0),
            tool(1, "toolu_a", "weather"),
            json_delta(1, ""),
            json_delta(1, "{\"city\": "),
            json_delta(1, "\"Paris\"}"),
            stop(1),
            tool(2, "toolu_b", "weather"),
            json_delta(2, "{\"city\": \"Rome\"}"),
            stop(2),
            message_delta("tool_use", json!({"output_tokens": 60})),
            json!({"type": "message_stop"}),
        ],
    );
    assert!(stream.is_complete());
    check_chunks(
        &chunks,
        expect![[r#"
            [{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}]
            [{"delta":{"content":"Checking "},"finish_reason":null,"index":0}]
            [{"delta":{"content":"both."},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"","name":"weather"},"id":"toolu_a","index":0,"type":"function"}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"{\"city\": "},"index":0}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"\"Paris\"}"},"index":0}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"","name":"weather"},"id":"toolu_b","index":1,"type":"function"}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"{\"city\": \"Rome\"}"},"index":1}]},"finish_reason":null,"index":0}]
            [{"delta":{},"finish_reason":"tool_calls","index":0}]
            {"choices":[],"usage":{"cache_creation_input_tokens":50,"completion_tokens":60,"prompt_tokens":175,"prompt_tokens_details":{"cached_tokens":100},"total_tokens":235}}"#]],
    );
    check(
        &arguments(&chunks),
        expect![[r#"
        {
          "0": [
            "toolu_a",
            "weather",
            "{\"city\": \"Paris\"}"
          ],
          "1": [
            "toolu_b",
            "weather",
            "{\"city\": \"Rome\"}"
          ]
        }"#]],
    );
}

#[test]
fn tool_indexes_count_tool_blocks_only() {
    let (_, chunks) = run(
        false,
        vec![
            start(json!({"input_tokens": 1, "output_tokens": 1})),
            block_start(0, json!({"type": "thinking", "thinking": ""})),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Plan."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            stop(0),
            tool(1, "toolu_a", "a"),
            json_delta(1, "{}"),
            stop(1),
            block_start(2, json!({"type": "text", "text": ""})),
            text(2, "and"),
            stop(2),
            tool(3, "toolu_b", "b"),
            json_delta(3, "{\"x\":1}"),
            stop(3),
            message_delta("tool_use", json!({"output_tokens": 9})),
            json!({"type": "message_stop"}),
        ],
    );
    check_chunks(
        &chunks,
        expect![[r#"
            [{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}]
            [{"delta":{"reasoning_content":"Plan."},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"","name":"a"},"id":"toolu_a","index":0,"type":"function"}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"{}"},"index":0}]},"finish_reason":null,"index":0}]
            [{"delta":{"content":"and"},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"","name":"b"},"id":"toolu_b","index":1,"type":"function"}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"{\"x\":1}"},"index":1}]},"finish_reason":null,"index":0}]
            [{"delta":{},"finish_reason":"tool_calls","index":0}]"#]],
    );
}

#[test]
fn server_tool_blocks_are_left_out() {
    let (_, chunks) = run(
        false,
        vec![
            start(json!({"input_tokens": 1, "output_tokens": 1})),
            block_start(0, json!({"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}})),
            json_delta(0, "{\"query\":\"x\"}"),
            stop(0),
            block_start(1, json!({"type": "web_search_tool_result", "tool_use_id": "srv", "content": []})),
            stop(1),
            tool(2, "toolu_a", "a"),
            json_delta(2, "{}"),
            stop(2),
        ],
    );
    check_chunks(
        &chunks,
        expect![[r#"
            [{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"","name":"a"},"id":"toolu_a","index":0,"type":"function"}]},"finish_reason":null,"index":0}]
            [{"delta":{"tool_calls":[{"function":{"arguments":"{}"},"index":0}]},"finish_reason":null,"index":0}]"#]],
    );
}

#[test]
fn a_stream_cut_short_or_failed_is_not_complete() {
    let (stream, chunks) = run(
        true,
        vec![
            start(json!({"input_tokens": 7, "output_tokens": 1})),
            block_start(0, json!({"type": "text", "text": ""})),
            text(0, "Hel"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ],
    );
    assert!(!stream.is_complete());
    check_chunks(
        &chunks,
        expect![[r#"
            [{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}]
            [{"delta":{"content":"Hel"},"finish_reason":null,"index":0}]"#]],
    );
    check(
        &stream.usage(),
        expect![[r#"
        {
          "prompt_tokens": 7,
          "completion_tokens": 1,
          "total_tokens": 8
        }"#]],
    );
}

#[test]
fn usage_without_include_usage_is_still_known() {
    let (stream, chunks) = run(
        false,
        vec![
            start(json!({"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 2000})),
            message_delta(
                "max_tokens",
                json!({"input_tokens": 5, "output_tokens": 16, "cache_read_input_tokens": 2000,
                                               "cache_creation_input_tokens": 10}),
            ),
            json!({"type": "message_stop"}),
        ],
    );
    assert!(stream.is_complete());
    assert!(chunks.iter().all(|c| c.usage.is_none()));
    check(
        &stream.usage(),
        expect![[r#"
        {
          "prompt_tokens": 2015,
          "completion_tokens": 16,
          "total_tokens": 2031,
          "prompt_tokens_details": {
            "cached_tokens": 2000
          },
          "cache_creation_input_tokens": 10
        }"#]],
    );
}

#[test]
fn fragments_at_random_places_reassemble_exactly() {
    let args = [
        r#"{"path":"/tmp/caf\u00e9 \"quoted\" {braces}","lines":[1,2,3],"nested":{"ok":true,"emoji":"😀"}}"#,
        r#"{}"#,
        r#"{"text":"line\nbreak \\ backslash \ud83d\ude00"}"#,
    ];
    for seed in 0..50 {
        let mut rng = Lcg(seed);
        let mut events = vec![start(json!({"input_tokens": 1, "output_tokens": 1}))];
        for (k, a) in args.iter().enumerate() {
            let block = 2 * k as u32;
            events.push(block_start(block, json!({"type": "text", "text": ""})));
            events.push(text(block, "note"));
            events.push(stop(block));
            events.push(tool(block + 1, &format!("toolu_{k}"), "f"));
            events.extend(rng.split(a, 6).iter().map(|piece| json_delta(block + 1, piece)));
            events.push(stop(block + 1));
        }
        let (_, chunks) = run(false, events);
        let calls = arguments(&chunks);
        assert_eq!(calls.len(), args.len());
        for (k, a) in args.iter().enumerate() {
            let (id, name, got) = &calls[&(k as u32)];
            assert_eq!((id.as_str(), name.as_str(), got.as_str()), (format!("toolu_{k}").as_str(), "f", *a));
        }
    }
}
