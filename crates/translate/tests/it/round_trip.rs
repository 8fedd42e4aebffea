//! Round trips: translating there and back keeps the meaning, and for already-normal input, every byte.

use expect_test::expect;
use keel_translate::{
    chat_request_to_messages, chat_response_to_messages, messages_request_to_chat, messages_response_to_chat,
};
use keel_types::ChatRequest;
use keel_types::anthropic::{MessagesRequest, MessagesResponse};
use serde_json::json;

use crate::{check, parse};

#[test]
fn openai_request_there_and_back() {
    let original: ChatRequest = parse(json!({
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather there?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "Looking it up.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{\"tz\":\"CET\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "14:00"},
            {"role": "user", "content": "Thanks."}
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "time",
                "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": false,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "max_tokens": 100,
        "user": "u1",
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }));
    let anthropic = chat_request_to_messages(&original, "claude-sonnet-4-5", 4096).unwrap();
    let back = messages_request_to_chat(anthropic).unwrap();
    assert_eq!(back.messages, original.messages);
    assert_eq!(back.tools, original.tools);
    assert_eq!(back.tool_choice, original.tool_choice);
    assert_eq!(back.parallel_tool_calls, original.parallel_tool_calls);
    assert_eq!(back.stop, original.stop);
    assert_eq!(back.extra, original.extra);
    assert_eq!(
        (back.temperature, back.top_p, back.max_tokens, &back.user),
        (original.temperature, original.top_p, original.max_tokens, &original.user)
    );
    // What the request came back with for Anthropic's sake (its fields, named) is the only difference.
    assert_eq!(back.anthropic.as_ref().map(|a| a.fields.clone()), Some(vec!["thinking".to_string()]));
    assert_eq!(keel_types::ChatRequest { anthropic: None, ..back }, original);
}

#[test]
fn openai_request_there_and_back_normalizes_spelling() {
    // What changes is spelling, not meaning: the token limit's name, compact arguments, and merged system text.
    let original: ChatRequest = parse(json!({
        "model": "m",
        "messages": [
            {"role": "developer", "content": "A."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "B."},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{ \"a\" : 1 }"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ],
        "max_completion_tokens": 10,
        "stream": true
    }));
    let back = messages_request_to_chat(chat_request_to_messages(&original, "m", 1).unwrap()).unwrap();
    check(
        &back,
        expect![[r#"
        {
          "model": "m",
          "messages": [
            {
              "role": "system",
              "content": "A.\n\nB."
            },
            {
              "role": "user",
              "content": "hi"
            },
            {
              "role": "assistant",
              "tool_calls": [
                {
                  "id": "c1",
                  "type": "function",
                  "function": {
                    "name": "f",
                    "arguments": "{\"a\":1}"
                  }
                }
              ]
            },
            {
              "role": "tool",
              "content": "ok",
              "tool_call_id": "c1"
            }
          ],
          "stream": true,
          "stream_options": {
            "include_usage": true
          },
          "max_tokens": 10
        }"#]],
    );
}

#[test]
fn anthropic_request_there_and_back_is_exact() {
    let original: MessagesRequest = parse(json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Long prompt.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": "sig=="},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}}
            ]}
        ],
        "tools": [{"name": "weather", "description": "Weather", "cache_control": {"type": "ephemeral"},
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "temperature": 0.3,
        "top_k": 10,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }));
    let chat = messages_request_to_chat(original.clone()).unwrap();
    let back = chat_request_to_messages(&chat, "claude-sonnet-4-5", 1).unwrap();
    assert_eq!(back, original);
}

#[test]
fn anthropic_response_there_and_back_is_exact() {
    let original: MessagesResponse = parse(json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig=="},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, {"b": null}]}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": 70, "cache_creation_input_tokens": 30}
    }));
    let back = chat_response_to_messages(messages_response_to_chat(original.clone()));
    assert_eq!(back, original);
}
