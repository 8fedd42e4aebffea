//! Non-streamed responses, both ways.

use expect_test::expect;
use keel_translate::{chat_response_to_messages, messages_response_to_chat};
use serde_json::json;

use crate::{check, parse};

#[test]
fn anthropic_answer_with_thinking_text_and_tools() {
    let resp = parse(json!({
        "id": "msg_01ABC", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Need the weather.", "signature": "sig=="},
            {"type": "text", "text": "Let me check"},
            {"type": "text", "text": " both."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris", "days": [1, 2]}},
            {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 40, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}
    }));
    check(
        &messages_response_to_chat(resp),
        expect![[r#"
        {
          "id": "msg_01ABC",
          "object": "chat.completion",
          "created": 0,
          "model": "claude-sonnet-4-5",
          "choices": [
            {
              "index": 0,
              "message": {
                "role": "assistant",
                "content": "Let me check both.",
                "tool_calls": [
                  {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {
                      "name": "weather",
                      "arguments": "{\"city\":\"Paris\",\"days\":[1,2]}"
                    }
                  },
                  {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {
                      "name": "clock",
                      "arguments": "{}"
                    }
                  }
                ],
                "reasoning_content": "Need the weather.",
                "thinking_blocks": [
                  {
                    "signature": "sig==",
                    "thinking": "Need the weather.",
                    "type": "thinking"
                  }
                ]
              },
              "finish_reason": "tool_calls"
            }
          ],
          "usage": {
            "prompt_tokens": 112,
            "completion_tokens": 40,
            "total_tokens": 152,
            "prompt_tokens_details": {
              "cached_tokens": 100
            },
            "cache_creation_input_tokens": 0
          }
        }"#]],
    );
}

#[test]
fn anthropic_refusal_and_server_tool_blocks() {
    let resp = parse(json!({
        "id": "msg_02", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": []}
        ],
        "stop_reason": "refusal", "usage": {"input_tokens": 1, "output_tokens": 0}
    }));
    check(
        &messages_response_to_chat(resp),
        expect![[r#"
        {
          "id": "msg_02",
          "object": "chat.completion",
          "created": 0,
          "model": "claude",
          "choices": [
            {
              "index": 0,
              "message": {
                "role": "assistant",
                "content": ""
              },
              "finish_reason": "content_filter"
            }
          ],
          "usage": {
            "prompt_tokens": 1,
            "completion_tokens": 0,
            "total_tokens": 1
          }
        }"#]],
    );
}

#[test]
fn openai_answer_with_reasoning_text_and_tools() {
    let resp = parse(json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "Think first.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": ""}},
                {"id": "call_3", "type": "function", "function": {"name": "broken", "arguments": "{\"a\":"}}
            ]}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
                  "prompt_tokens_details": {"cached_tokens": 1024}}
    }));
    check(
        &chat_response_to_messages(resp),
        expect![[r#"
        {
          "id": "chatcmpl-9",
          "type": "message",
          "role": "assistant",
          "content": [
            {
              "type": "thinking",
              "thinking": "Think first."
            },
            {
              "type": "text",
              "text": "Checking."
            },
            {
              "type": "tool_use",
              "id": "call_1",
              "name": "weather",
              "input": {
                "city": "Paris"
              }
            },
            {
              "type": "tool_use",
              "id": "call_2",
              "name": "clock",
              "input": {}
            },
            {
              "type": "tool_use",
              "id": "call_3",
              "name": "broken",
              "input": "{\"a\":"
            }
          ],
          "model": "gpt-4o",
          "stop_reason": "tool_use",
          "stop_sequence": null,
          "usage": {
            "input_tokens": 176,
            "output_tokens": 30,
            "cache_read_input_tokens": 1024
          }
        }"#]],
    );
}

#[test]
fn openai_answers_cut_short_or_filtered() {
    let answer = |finish: &str| {
        parse(json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": "partial"}}]}))
    };
    let mapped: Vec<_> = ["length", "content_filter", "stop"]
        .into_iter()
        .map(|f| {
            let out = chat_response_to_messages(answer(f));
            json!({"stop_reason": out.stop_reason, "usage": out.usage})
        })
        .collect();
    check(
        &mapped,
        expect![[r#"
        [
          {
            "stop_reason": "max_tokens",
            "usage": {
              "input_tokens": 0,
              "output_tokens": 0
            }
          },
          {
            "stop_reason": "refusal",
            "usage": {
              "input_tokens": 0,
              "output_tokens": 0
            }
          },
          {
            "stop_reason": "end_turn",
            "usage": {
              "input_tokens": 0,
              "output_tokens": 0
            }
          }
        ]"#]],
    );
}

#[test]
fn openai_refusal_becomes_text() {
    let resp = parse(json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "content_filter",
        "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]}));
    check(
        &chat_response_to_messages(resp).content,
        expect![[r#"
        [
          {
            "type": "text",
            "text": "I can't help with that."
          }
        ]"#]],
    );
}

#[test]
fn openai_answer_without_choices() {
    let resp = parse(json!({"id": "c", "model": "m", "choices": []}));
    check(
        &chat_response_to_messages(resp),
        expect![[r#"
        {
          "id": "c",
          "type": "message",
          "role": "assistant",
          "content": [],
          "model": "m",
          "stop_reason": null,
          "stop_sequence": null,
          "usage": {
            "input_tokens": 0,
            "output_tokens": 0
          }
        }"#]],
    );
}
