//! Stop reasons and usage, both ways.

use expect_test::expect;
use keel_translate::{finish_reason_to_stop, stop_to_finish_reason, usage_to_anthropic, usage_to_chat};
use keel_types::FinishReason;
use keel_types::anthropic::{AUsage, StopReason};
use serde_json::json;

use crate::{check, parse};

#[test]
fn stop_reasons_to_finish_reasons() {
    let reasons = [
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "refusal",
        "pause_turn",
        "model_context_window_exceeded",
        "something_new",
    ];
    let mapped: Vec<(String, FinishReason)> =
        reasons.iter().map(|r| (r.to_string(), stop_to_finish_reason(&parse::<StopReason>(json!(r))))).collect();
    check(
        &mapped,
        expect![[r#"
            [
              [
                "end_turn",
                "stop"
              ],
              [
                "max_tokens",
                "length"
              ],
              [
                "stop_sequence",
                "stop"
              ],
              [
                "tool_use",
                "tool_calls"
              ],
              [
                "refusal",
                "content_filter"
              ],
              [
                "pause_turn",
                "stop"
              ],
              [
                "model_context_window_exceeded",
                "length"
              ],
              [
                "something_new",
                "something_new"
              ]
            ]"#]],
    );
}

#[test]
fn finish_reasons_to_stop_reasons() {
    let reasons = ["stop", "length", "tool_calls", "function_call", "content_filter", "something_new"];
    let mapped: Vec<(String, StopReason)> =
        reasons.iter().map(|r| (r.to_string(), finish_reason_to_stop(&parse::<FinishReason>(json!(r))))).collect();
    check(
        &mapped,
        expect![[r#"
            [
              [
                "stop",
                "end_turn"
              ],
              [
                "length",
                "max_tokens"
              ],
              [
                "tool_calls",
                "tool_use"
              ],
              [
                "function_call",
                "tool_use"
              ],
              [
                "content_filter",
                "refusal"
              ],
              [
                "something_new",
                "something_new"
              ]
            ]"#]],
    );
}

#[test]
fn usage_with_cache_tokens_to_chat_and_back() {
    let anthropic: AUsage = parse(json!({
        "input_tokens": 20,
        "output_tokens": 7,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300
    }));
    let chat = usage_to_chat(&anthropic);
    check(
        &chat,
        expect![[r#"
        {
          "prompt_tokens": 1320,
          "completion_tokens": 7,
          "total_tokens": 1327,
          "prompt_tokens_details": {
            "cached_tokens": 1000
          },
          "cache_creation_input_tokens": 300
        }"#]],
    );
    assert_eq!(usage_to_anthropic(&chat), anthropic);
}

#[test]
fn usage_from_openai_with_cached_tokens() {
    let chat = parse(json!({
        "prompt_tokens": 1200,
        "completion_tokens": 50,
        "total_tokens": 1250,
        "prompt_tokens_details": {"cached_tokens": 1024}
    }));
    check(
        &usage_to_anthropic(&chat),
        expect![[r#"
        {
          "input_tokens": 176,
          "output_tokens": 50,
          "cache_read_input_tokens": 1024
        }"#]],
    );
}

#[test]
fn usage_without_cache_fields() {
    let anthropic: AUsage = parse(json!({"input_tokens": 3, "output_tokens": 4}));
    let chat = usage_to_chat(&anthropic);
    check(
        &chat,
        expect![[r#"
        {
          "prompt_tokens": 3,
          "completion_tokens": 4,
          "total_tokens": 7
        }"#]],
    );
    assert_eq!(usage_to_anthropic(&chat), anthropic);
}
