//! Canonical chunks → Anthropic stream events (serving `/v1/messages` from any provider).
//!
//! Every sequence is read back by the strict reader in `anthropic_stream`, which panics on an event order an
//! Anthropic client would not accept.

use expect_test::{Expect, expect};
use keel_translate::ChatToMessagesStream;
use keel_types::ChatChunk;
use keel_types::anthropic::StreamEvent;
use serde_json::{Value, json};

use crate::anthropic_stream::{Block, assemble};
use crate::{Lcg, check_lines, parse};

fn chunk(choices: Value) -> ChatChunk {
    parse(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                 "choices": choices}))
}

fn delta(delta: Value) -> ChatChunk {
    chunk(json!([{"index": 0, "delta": delta, "finish_reason": null}]))
}

fn role() -> ChatChunk {
    delta(json!({"role": "assistant", "content": ""}))
}

fn text(text: &str) -> ChatChunk {
    delta(json!({"content": text}))
}

/// One tool call fragment; the first of a call carries `id` and `name`, as OpenAI sends them.
fn call(index: u32, id_name: Option<(&str, &str)>, arguments: &str) -> ChatChunk {
    let mut call = json!({"index": index, "function": {"arguments": arguments}});
    if let Some((id, name)) = id_name {
        call["id"] = json!(id);
        call["type"] = json!("function");
        call["function"]["name"] = json!(name);
    }
    delta(json!({"tool_calls": [call]}))
}

fn finish(reason: &str) -> ChatChunk {
    chunk(json!([{"index": 0, "delta": {}, "finish_reason": reason}]))
}

fn usage(usage: Value) -> ChatChunk {
    parse(json!({"id": "chatcmpl-1", "model": "gpt-4o", "choices": [], "usage": usage}))
}

fn run(chunks: Vec<ChatChunk>) -> Vec<StreamEvent> {
    let mut stream = ChatToMessagesStream::new("msg_keel1".into(), "claude-compat".into(), 42);
    let mut events: Vec<StreamEvent> = chunks.into_iter().flat_map(|c| stream.push(c)).collect();
    events.extend(stream.finish());
    events
}

/// Translate, read back strictly, and compare the events, one per line, with the snapshot.
fn check(chunks: Vec<ChatChunk>, expect: Expect) -> Vec<Block> {
    let events = run(chunks);
    let assembled = assemble(&events);
    assert!(assembled.stopped);
    check_lines(&events, expect);
    assembled.blocks
}

fn tool_use(id: &str, name: &str, json: &str) -> Block {
    Block::ToolUse(id.into(), name.into(), json.into())
}

#[test]
fn text_with_usage() {
    let blocks = check(
        vec![
            role(),
            text("Hel"),
            text("lo"),
            finish("stop"),
            usage(json!({"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42})),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}
            {"type":"content_block_stop","index":0}
            {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":40,"output_tokens":2}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [Block::Text("Hello".into())]);
}

#[test]
fn text_then_a_tool_call() {
    let blocks = check(
        vec![
            role(),
            text("Let me check."),
            call(0, Some(("call_1", "weather")), ""),
            call(0, None, "{\"ci"),
            call(0, None, "ty\": \"Paris\"}"),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_1","name":"weather","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"ci"}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ty\": \"Paris\"}"}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks[1], tool_use("call_1", "weather", "{\"city\": \"Paris\"}"));
}

#[test]
fn two_parallel_calls_in_openai_order_stream_live() {
    check(
        vec![
            role(),
            call(0, Some(("call_a", "weather")), ""),
            call(0, None, "{\"city\":"),
            call(0, None, "\"Paris\"}"),
            call(1, Some(("call_b", "weather")), ""),
            call(1, None, "{\"city\":"),
            call(1, None, "\"Rome\"}"),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"weather","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"weather","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Rome\"}"}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
}

#[test]
fn two_parallel_calls_with_interleaved_fragments() {
    // Call 1 starts while call 0 is incomplete: call 1 buffers until call 0's arguments complete, then opens
    // with its buffer as one delta and streams live.
    let blocks = check(
        vec![
            role(),
            call(0, Some(("call_a", "weather")), "{\"city\":"),
            call(1, Some(("call_b", "time")), "{\"tz\":"),
            call(0, None, "\"Paris\""),
            call(1, None, "\"CET\""),
            call(0, None, "}"),
            call(1, None, ",\"fmt\":\"24h\"}"),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"weather","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\"Paris\""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"time","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"tz\":\"CET\""}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":",\"fmt\":\"24h\"}"}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(
        blocks,
        [
            tool_use("call_a", "weather", "{\"city\":\"Paris\"}"),
            tool_use("call_b", "time", "{\"tz\":\"CET\",\"fmt\":\"24h\"}")
        ]
    );
}

#[test]
fn a_call_that_never_completes_holds_later_calls_until_finish() {
    let blocks = check(
        vec![
            call(0, Some(("call_a", "f")), "{\"x\": [1, 2"),
            call(1, Some(("call_b", "g")), "{}"),
            text("after"),
            finish("length"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"x\": [1, 2"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"g","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}
            {"type":"content_block_stop","index":1}
            {"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}
            {"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"after"}}
            {"type":"content_block_stop","index":2}
            {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(
        blocks,
        [tool_use("call_a", "f", "{\"x\": [1, 2"), tool_use("call_b", "g", "{}"), Block::Text("after".into())]
    );
}

#[test]
fn text_during_an_incomplete_call_waits_for_it() {
    let blocks = check(
        vec![
            call(0, Some(("call_a", "f")), "{\"a\":"),
            text("Meanwhile."),
            call(0, None, "1}"),
            text(" More."),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}
            {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Meanwhile."}}
            {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":" More."}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [tool_use("call_a", "f", "{\"a\":1}"), Block::Text("Meanwhile. More.".into())]);
}

#[test]
fn arguments_split_inside_escapes_strings_and_multibyte_characters() {
    let pieces = ["{\"q\":\"caf\\u00", "e9 \\\"", "{not a brace}\\", "\\\"", ",\"e\":\"😀", "\"}"];
    let blocks = check(
        std::iter::once(call(0, Some(("call_u", "search")), ""))
            .chain(pieces.iter().map(|p| call(0, None, p)))
            .chain([call(1, Some(("call_v", "search")), "{}"), finish("tool_calls")])
            .collect(),
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_u","name":"search","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"q\":\"caf\\u00"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"e9 \\\""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{not a brace}\\"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\\\""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":",\"e\":\"😀"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\"}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_v","name":"search","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    let whole = pieces.concat();
    assert_eq!(blocks, [tool_use("call_u", "search", &whole), tool_use("call_v", "search", "{}")]);
    let parsed: Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(parsed, json!({"q": "café \"{not a brace}\\", "e": "😀"}));
}

#[test]
fn a_call_without_arguments_has_no_json_delta() {
    let blocks = check(
        vec![call(0, Some(("call_a", "now")), ""), call(1, Some(("call_b", "today")), ""), finish("tool_calls")],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"now","input":{}}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"today","input":{}}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [tool_use("call_a", "now", ""), tool_use("call_b", "today", "")]);
}

#[test]
fn all_calls_in_one_delta() {
    let both = delta(json!({"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"n\":1}"}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "f", "arguments": "{\"n\":2}"}}
    ]}));
    let blocks = check(
        vec![both, finish("tool_calls")],
        expect![[r#"
        {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
        {"type":"ping"}
        {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}}
        {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"n\":1}"}}
        {"type":"content_block_stop","index":0}
        {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"f","input":{}}}
        {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"n\":2}"}}
        {"type":"content_block_stop","index":1}
        {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
        {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [tool_use("call_a", "f", "{\"n\":1}"), tool_use("call_b", "f", "{\"n\":2}")]);
}

#[test]
fn vendor_quirks_in_tool_call_deltas() {
    // Ids repeated on every fragment, a reused index with a new id, a call without an id, a second choice.
    let blocks = check(
        vec![
            delta(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            ),
            delta(json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ":1}"}}]})),
            delta(json!({"tool_calls": [{"index": 0, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]})),
            delta(json!({"tool_calls": [{"index": 1, "id": "", "function": {"name": "h", "arguments": "{}"}}]})),
            chunk(json!([{"index": 1, "delta": {"content": "other choice"}, "finish_reason": null}])),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":":1}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"g","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}
            {"type":"content_block_stop","index":1}
            {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_msg_keel1_2","name":"h","input":{}}}
            {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}
            {"type":"content_block_stop","index":2}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(
        blocks,
        [tool_use("call_a", "f", "{\"a\":1}"), tool_use("call_b", "g", "{}"), tool_use("toolu_msg_keel1_2", "h", "{}")]
    );
}

#[test]
fn a_late_fragment_for_a_closed_complete_call_is_dropped() {
    let blocks = check(
        vec![
            call(0, Some(("call_a", "f")), "{}"),
            call(1, Some(("call_b", "g")), "{\"b\":"),
            call(0, None, "{\"again\":true}"),
            call(1, None, "2}"),
            finish("tool_calls"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"call_a","name":"f","input":{}}}
            {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_b","name":"g","input":{}}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"b\":"}}
            {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"2}"}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [tool_use("call_a", "f", "{}"), tool_use("call_b", "g", "{\"b\":2}")]);
}

#[test]
fn reasoning_then_text() {
    let blocks = check(
        vec![
            role(),
            delta(json!({"reasoning_content": "Think"})),
            delta(json!({"reasoning": "ing."})),
            text("Answer."),
            finish("stop"),
        ],
        expect![[r#"
            {"type":"message_start","message":{"id":"msg_keel1","type":"message","role":"assistant","content":[],"model":"claude-compat","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":42,"output_tokens":0}}}
            {"type":"ping"}
            {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}
            {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Think"}}
            {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"ing."}}
            {"type":"content_block_stop","index":0}
            {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}
            {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Answer."}}
            {"type":"content_block_stop","index":1}
            {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":42,"output_tokens":0}}
            {"type":"message_stop"}"#]],
    );
    assert_eq!(blocks, [Block::Thinking("Thinking.".into()), Block::Text("Answer.".into())]);
}

#[test]
fn usage_with_cache_tokens_ends_up_in_message_delta() {
    let events = run(vec![
        text("ok"),
        finish("stop"),
        usage(json!({"prompt_tokens": 1500, "completion_tokens": 3, "total_tokens": 1503,
                     "prompt_tokens_details": {"cached_tokens": 1024}})),
    ]);
    check_lines(
        &events[events.len() - 2..],
        expect![[r#"
        {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":476,"output_tokens":3,"cache_read_input_tokens":1024}}
        {"type":"message_stop"}"#]],
    );
}

#[test]
fn stop_reasons_at_the_end() {
    let cases = [
        (vec![text("a"), finish("stop")], "end_turn"),
        (vec![text("a"), finish("length")], "max_tokens"),
        (vec![text("a"), finish("content_filter")], "refusal"),
        (vec![text("a")], "end_turn"),
        (vec![call(0, Some(("c", "f")), "{}"), finish("stop")], "tool_use"),
        (vec![call(0, Some(("c", "f")), "{}")], "tool_use"),
        (vec![call(0, Some(("c", "f")), "{\"a\""), finish("length")], "max_tokens"),
    ];
    for (chunks, want) in cases {
        let assembled = assemble(&run(chunks));
        assert_eq!(serde_json::to_value(assembled.stop_reason).unwrap(), json!(want));
    }
}

#[test]
fn lifecycle_start_finish_and_fail() {
    let mut stream = ChatToMessagesStream::new("msg_1".into(), "m".into(), 5);
    let empty_first = stream.push(chunk(json!([])));
    let ended = stream.finish();
    let mut all = empty_first.clone();
    all.extend(ended.clone());
    assert!(assemble(&all).stopped);
    assert!(stream.finish().is_empty(), "finish is idempotent");
    assert!(stream.push(text("late")).is_empty());
    assert!(stream.fail("api_error", "late").is_empty());
    check_lines(
        &all,
        expect![[r#"
        {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}}
        {"type":"ping"}
        {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":5,"output_tokens":0}}
        {"type":"message_stop"}"#]],
    );

    let mut stream = ChatToMessagesStream::new("msg_2".into(), "m".into(), 5);
    let mut events = stream.push(text("partial"));
    events.extend(stream.fail("overloaded_error", "upstream overloaded"));
    assert!(stream.finish().is_empty(), "no message_stop after an error");
    assert!(stream.fail("api_error", "again").is_empty());
    assert!(!assemble(&events).stopped);
    check_lines(
        &events,
        expect![[r#"
        {"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}}
        {"type":"ping"}
        {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}
        {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"partial"}}
        {"type":"error","error":{"type":"overloaded_error","message":"upstream overloaded"}}"#]],
    );

    let mut stream = ChatToMessagesStream::new("msg_3".into(), "m".into(), 5);
    check_lines(
        &stream.finish(),
        expect![[r#"
        {"type":"message_start","message":{"id":"msg_3","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}}
        {"type":"ping"}
        {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":5,"output_tokens":0}}
        {"type":"message_stop"}"#]],
    );
}

/// Many calls, each split at random places, their fragments interleaved at random (each call's own order kept),
/// with text in between: the events are always valid and every call's fragments reassemble exactly.
#[test]
fn random_interleavings_reassemble_exactly() {
    let args = [
        r#"{"path":"/tmp/caf\u00e9 \"q\" {x}","lines":[1,[2,3]],"deep":{"ok":true,"e":"😀"}}"#,
        r#"{}"#,
        r#"{"s":"\\\\","t":"]}"}"#,
        r#"{"list":[{"a":1},{"b":[{}]}]}"#,
    ];
    for seed in 0..300 {
        let mut rng = Lcg(seed);
        let mut queues: Vec<Vec<ChatChunk>> = args
            .iter()
            .enumerate()
            .map(|(k, a)| {
                let mut pieces = rng.split(a, 5).into_iter();
                let first = pieces.next().unwrap_or_default();
                let name = format!("fn_{k}");
                let mut chunks = vec![call(k as u32, Some((&format!("call_{k}"), &name)), &first)];
                chunks.extend(pieces.map(|p| call(k as u32, None, &p)));
                chunks.reverse();
                chunks
            })
            .collect();
        // Calls start in index order, as every server sends them; after that, anything goes.
        let mut chunks = vec![role()];
        let mut started = 0;
        let mut dots = 0;
        loop {
            let open: Vec<usize> = (0..args.len().min(started + 1)).filter(|k| !queues[*k].is_empty()).collect();
            if open.is_empty() {
                break;
            }
            let k = open[rng.below(open.len())];
            started = started.max(k + 1);
            if rng.below(10) == 0 {
                chunks.push(text("."));
                dots += 1;
            }
            chunks.extend(queues[k].pop());
        }
        chunks.push(finish("tool_calls"));

        let assembled = assemble(&run(chunks));
        assert!(assembled.stopped);
        let calls: Vec<&Block> = assembled.blocks.iter().filter(|b| matches!(b, Block::ToolUse(..))).collect();
        let want: Vec<Block> =
            args.iter().enumerate().map(|(k, a)| tool_use(&format!("call_{k}"), &format!("fn_{k}"), a)).collect();
        assert_eq!(calls, want.iter().collect::<Vec<_>>(), "seed {seed}");
        let text: String = assembled
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, ".".repeat(dots), "seed {seed}");
    }
}
