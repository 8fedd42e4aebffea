//! Canonical requests → Anthropic requests (keel calling Anthropic upstream).

use expect_test::{Expect, expect};
use keel_translate::chat_request_to_messages;
use keel_types::ChatRequest;
use serde_json::{Value, json};

use crate::{check, parse};

fn check_req(req: Value, expect: Expect) {
    let req: ChatRequest = parse(req);
    match chat_request_to_messages(&req, "claude-sonnet-4-5", 4096) {
        Ok(out) => check(&out, expect),
        Err(e) => expect.assert_eq(&format!("error at {:?}: {e}", e.param)),
    }
}

#[test]
fn a_full_tool_turn() {
    check_req(
        json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris and Rome?", "name": "ann"},
                {"role": "assistant", "content": "Checking both.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "user", "content": "Thanks. Which is warmer?"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": true
            }}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
            "max_completion_tokens": 300,
            "max_tokens": 999,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "user-42",
            "n": 1,
            "seed": 7,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logit_bias": {"50256": -100},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "service_tier": "auto",
            "some_vendor_field": true
        }),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 300,
              "messages": [
                {
                  "role": "user",
                  "content": "Weather in Paris and Rome?"
                },
                {
                  "role": "assistant",
                  "content": [
                    {
                      "type": "text",
                      "text": "Checking both."
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
                      "name": "weather",
                      "input": {
                        "city": "Rome"
                      }
                    }
                  ]
                },
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "tool_result",
                      "tool_use_id": "call_1",
                      "content": "18C"
                    },
                    {
                      "type": "tool_result",
                      "tool_use_id": "call_2",
                      "content": "21C"
                    },
                    {
                      "type": "text",
                      "text": "Thanks. Which is warmer?"
                    }
                  ]
                }
              ],
              "system": "You are terse.",
              "tools": [
                {
                  "name": "weather",
                  "description": "Current weather",
                  "input_schema": {
                    "properties": {
                      "city": {
                        "type": "string"
                      }
                    },
                    "required": [
                      "city"
                    ],
                    "type": "object"
                  }
                }
              ],
              "tool_choice": {
                "type": "any",
                "disable_parallel_tool_use": true
              },
              "temperature": 0.2,
              "top_p": 0.9,
              "top_k": 40,
              "stop_sequences": [
                "END"
              ],
              "stream": true,
              "metadata": {
                "user_id": "user-42"
              },
              "service_tier": "auto",
              "thinking": {
                "budget_tokens": 1024,
                "type": "enabled"
              }
            }"#]],
    );
}

#[test]
fn system_and_developer_messages_anywhere_join_into_one_string() {
    check_req(
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Rule one."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            {"role": "assistant", "content": "hello"}
        ]}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": "hi"
                },
                {
                  "role": "assistant",
                  "content": "hello"
                }
              ],
              "system": "Rule one.\n\nRule two."
            }"#]],
    );
}

#[test]
fn system_parts_with_cache_control_become_blocks() {
    check_req(
        json!({"model": "m", "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "A long, stable prompt.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Today is Monday."}
            ]},
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}, "unknown": 1}]}
        ]}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "text",
                      "text": "hi",
                      "cache_control": {
                        "type": "ephemeral"
                      }
                    }
                  ]
                }
              ],
              "system": [
                {
                  "type": "text",
                  "text": "A long, stable prompt.",
                  "cache_control": {
                    "type": "ephemeral"
                  }
                },
                {
                  "type": "text",
                  "text": "Today is Monday."
                }
              ]
            }"#]],
    );
}

#[test]
fn images_as_base64_and_url() {
    check_req(
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
        ]}]}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "text",
                      "text": "Compare"
                    },
                    {
                      "type": "image",
                      "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": "iVBORw0KGgo="
                      }
                    },
                    {
                      "type": "image",
                      "source": {
                        "type": "url",
                        "url": "https://example.com/cat.jpg"
                      }
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn response_format_json_object_becomes_a_system_instruction() {
    check_req(
        json!({"model": "m", "messages": [{"role": "user", "content": "List three colors."}],
               "response_format": {"type": "json_object"}}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": "List three colors."
                }
              ],
              "system": "Respond with only a JSON object, without any other text before or after it."
            }"#]],
    );
}

#[test]
fn response_format_json_schema_appends_the_schema_to_the_system_prompt() {
    check_req(
        json!({"model": "m",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A color?"}],
               "response_format": {"type": "json_schema", "json_schema": {"name": "color", "strict": true,
                   "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": "A color?"
                }
              ],
              "system": "Be brief.\n\nRespond with only a JSON object that conforms to the JSON schema `color` below, without any other text before or after it.\n{\n  \"properties\": {\n    \"name\": {\n      \"type\": \"string\"\n    }\n  },\n  \"required\": [\n    \"name\"\n  ],\n  \"type\": \"object\"\n}"
            }"#]],
    );
}

#[test]
fn tool_choice_modes() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let cases = [json!("auto"), json!("none"), json!({"type": "function", "function": {"name": "f"}}), Value::Null];
    let mapped: Vec<Value> = cases
        .into_iter()
        .map(|choice| {
            let mut req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
                                 "parallel_tool_calls": false});
            if !choice.is_null() {
                req["tool_choice"] = choice;
            }
            let out = chat_request_to_messages(&parse(req), "c", 1).unwrap();
            serde_json::to_value(out.tool_choice).unwrap()
        })
        .collect();
    check(
        &mapped,
        expect![[r#"
        [
          {
            "disable_parallel_tool_use": true,
            "type": "auto"
          },
          {
            "type": "none"
          },
          {
            "disable_parallel_tool_use": true,
            "name": "f",
            "type": "tool"
          },
          {
            "disable_parallel_tool_use": true,
            "type": "auto"
          }
        ]"#]],
    );
}

#[test]
fn consecutive_roles_merge_and_tool_results_come_first() {
    check_req(
        json!({"model": "m", "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "interjection"},
            {"role": "tool", "tool_call_id": "t1", "content": "done", "cache_control": {"type": "ephemeral"}}
        ]}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "text",
                      "text": "one"
                    },
                    {
                      "type": "text",
                      "text": "two"
                    }
                  ]
                },
                {
                  "role": "assistant",
                  "content": [
                    {
                      "type": "tool_use",
                      "id": "t1",
                      "name": "f",
                      "input": {}
                    }
                  ]
                },
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "tool_result",
                      "tool_use_id": "t1",
                      "content": "done",
                      "cache_control": {
                        "type": "ephemeral"
                      }
                    },
                    {
                      "type": "text",
                      "text": "interjection"
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn kept_thinking_blocks_go_back_before_the_text() {
    check_req(
        json!({"model": "m", "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "simple",
             "thinking_blocks": [{"type": "thinking", "thinking": "simple", "signature": "sig=="},
                                 {"type": "redacted_thinking", "data": "abc"}]},
            {"role": "user", "content": "and 3+3?"}
        ]}),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "max_tokens": 4096,
              "messages": [
                {
                  "role": "user",
                  "content": "2+2?"
                },
                {
                  "role": "assistant",
                  "content": [
                    {
                      "type": "thinking",
                      "thinking": "simple",
                      "signature": "sig=="
                    },
                    {
                      "data": "abc",
                      "type": "redacted_thinking"
                    },
                    {
                      "type": "text",
                      "text": "4"
                    }
                  ]
                },
                {
                  "role": "user",
                  "content": "and 3+3?"
                }
              ]
            }"#]],
    );
}

#[test]
fn max_tokens_defaults_when_absent() {
    let out = chat_request_to_messages(&parse(json!({"model": "m", "messages": []})), "c", 4096).unwrap();
    assert_eq!(out.max_tokens, 4096);
    let out =
        chat_request_to_messages(&parse(json!({"model": "m", "messages": [], "max_tokens": 10})), "c", 4096).unwrap();
    assert_eq!(out.max_tokens, 10);
}

#[test]
fn untranslatable_requests_name_the_field() {
    let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});
    let cases = [
        json!({"model": "m", "messages": [], "n": 2}),
        user(
            json!([{"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]),
        ),
        user(json!([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}])),
        user(json!([{"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}}])),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{\"x\":"}}]}]}),
        json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]}),
        json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}]}),
        json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "custom", "function": {"name": "g"}}]}),
        json!({"model": "m", "messages": [], "tool_choice": "sometimes"}),
        json!({"model": "m", "messages": [], "top_k": -1}),
    ];
    let errors: Vec<String> = cases
        .into_iter()
        .map(|req| match chat_request_to_messages(&parse(req), "c", 1) {
            Ok(_) => "translated".to_owned(),
            Err(e) => format!("{}: {e}", e.param.as_deref().unwrap_or_default()),
        })
        .collect();
    check(
        &errors,
        expect![[r#"
        [
          "n: Anthropic models return one choice; `n` must be 1",
          "messages[0].content[1]: content part type `input_audio` is not supported by Anthropic models",
          "messages[0].content[0].image_url.url: image data URLs must be base64 encoded (data:<mime>;base64,...)",
          "messages[0].content[0].image_url.url: image URLs must be http(s) URLs or base64 data URLs",
          "messages[1].tool_calls[1].function.arguments: tool call arguments are not valid JSON: EOF while parsing a value at line 1 column 5",
          "messages[0].tool_calls[0].function.arguments: tool call arguments must be a JSON object",
          "messages[0].tool_call_id: a tool message needs a `tool_call_id`",
          "messages[0].role: the `function` role is not supported; use `tool` messages",
          "messages[0].content[0]: content part type `image_url` is not supported in a system message",
          "tools[1].type: tool type `custom` is not supported by Anthropic models",
          "tool_choice: unknown tool_choice `sometimes`",
          "top_k: `top_k` must be a non-negative integer"
        ]"#]],
    );
}
