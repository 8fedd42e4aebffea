//! Anthropic requests → canonical requests (a client of keel's `/v1/messages`).

use expect_test::{Expect, expect};
use keel_translate::messages_request_to_chat;
use keel_types::anthropic::MessagesRequest;
use serde_json::{Value, json};

use crate::{check, parse};

fn check_req(req: Value, expect: Expect) {
    let req: MessagesRequest = parse(req);
    match messages_request_to_chat(req) {
        Ok(out) => check(&out, expect),
        Err(e) => expect.assert_eq(&format!("error at {:?}: {e}", e.param)),
    }
}

#[test]
fn a_full_tool_turn() {
    check_req(
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig=="},
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome", "units": ["C"]}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                     "content": [{"type": "text", "text": "Service down"}]},
                    {"type": "text", "text": "Which is warmer?"}
                ]}
            ],
            "tools": [{"name": "weather", "description": "Current weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "temperature": 0.3,
            "top_p": 0.95,
            "top_k": 40,
            "stop_sequences": ["END", "STOP"],
            "stream": true,
            "metadata": {"user_id": "user-42"},
            "thinking": {"type": "enabled", "budget_tokens": 2048}
        }),
        expect![[r#"
            {
              "model": "claude-sonnet-4-5",
              "messages": [
                {
                  "role": "system",
                  "content": "You are terse."
                },
                {
                  "role": "user",
                  "content": "Weather in Paris and Rome?"
                },
                {
                  "role": "assistant",
                  "content": "Checking both.",
                  "tool_calls": [
                    {
                      "id": "toolu_1",
                      "type": "function",
                      "function": {
                        "name": "weather",
                        "arguments": "{\"city\":\"Paris\"}"
                      }
                    },
                    {
                      "id": "toolu_2",
                      "type": "function",
                      "function": {
                        "name": "weather",
                        "arguments": "{\"city\":\"Rome\",\"units\":[\"C\"]}"
                      }
                    }
                  ],
                  "thinking_blocks": [
                    {
                      "signature": "sig==",
                      "thinking": "Two cities, two calls.",
                      "type": "thinking"
                    }
                  ]
                },
                {
                  "role": "tool",
                  "content": "18C",
                  "tool_call_id": "toolu_1"
                },
                {
                  "role": "tool",
                  "content": "Service down",
                  "tool_call_id": "toolu_2"
                },
                {
                  "role": "user",
                  "content": "Which is warmer?"
                }
              ],
              "stream": true,
              "stream_options": {
                "include_usage": true
              },
              "tools": [
                {
                  "type": "function",
                  "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": {
                      "properties": {
                        "city": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    }
                  }
                }
              ],
              "tool_choice": "required",
              "parallel_tool_calls": false,
              "temperature": 0.3,
              "top_p": 0.95,
              "max_tokens": 1024,
              "stop": [
                "END",
                "STOP"
              ],
              "user": "user-42",
              "thinking": {
                "budget_tokens": 2048,
                "type": "enabled"
              },
              "top_k": 40
            }"#]],
    );
}

#[test]
fn system_blocks_with_cache_control_stay_parts() {
    check_req(
        json!({"model": "c", "max_tokens": 10,
        "system": [{"type": "text", "text": "Long prompt.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Short."}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        ]}]}),
        expect![[r#"
            {
              "model": "c",
              "messages": [
                {
                  "role": "system",
                  "content": [
                    {
                      "type": "text",
                      "text": "Long prompt.",
                      "cache_control": {
                        "type": "ephemeral"
                      }
                    },
                    {
                      "type": "text",
                      "text": "Short."
                    }
                  ]
                },
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "text",
                      "text": "Look:",
                      "cache_control": {
                        "type": "ephemeral"
                      }
                    },
                    {
                      "type": "image_url",
                      "image_url": {
                        "url": "data:image/jpeg;base64,/9j/4AAQ"
                      }
                    },
                    {
                      "type": "image_url",
                      "image_url": {
                        "url": "https://example.com/a.png"
                      }
                    }
                  ]
                }
              ],
              "max_tokens": 10
            }"#]],
    );
}

#[test]
fn one_plain_system_block_and_one_plain_text_block_become_strings() {
    check_req(
        json!({"model": "c", "max_tokens": 10,
               "system": [{"type": "text", "text": "Be kind."}],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]}),
        expect![[r#"
            {
              "model": "c",
              "messages": [
                {
                  "role": "system",
                  "content": "Be kind."
                },
                {
                  "role": "user",
                  "content": "hi"
                },
                {
                  "role": "assistant",
                  "content": "hello"
                }
              ],
              "max_tokens": 10
            }"#]],
    );
}

#[test]
fn images_in_a_tool_result_move_to_the_following_user_message() {
    check_req(
        json!({"model": "c", "max_tokens": 10, "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "cache_control": {"type": "ephemeral"}, "content": [
                    {"type": "text", "text": "Captured."},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
                ]},
                {"type": "text", "text": "What do you see?"}
            ]}
        ]}),
        expect![[r#"
            {
              "model": "c",
              "messages": [
                {
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "id": "t1",
                      "type": "function",
                      "function": {
                        "name": "screenshot",
                        "arguments": "{}"
                      }
                    }
                  ]
                },
                {
                  "role": "tool",
                  "content": "Captured.",
                  "tool_call_id": "t1",
                  "cache_control": {
                    "type": "ephemeral"
                  }
                },
                {
                  "role": "user",
                  "content": [
                    {
                      "type": "image_url",
                      "image_url": {
                        "url": "data:image/png;base64,iVBOR"
                      }
                    },
                    {
                      "type": "text",
                      "text": "What do you see?"
                    }
                  ]
                }
              ],
              "max_tokens": 10
            }"#]],
    );
}

#[test]
fn tool_choice_modes() {
    let cases = [
        json!({"type": "auto"}),
        json!({"type": "auto", "disable_parallel_tool_use": false}),
        json!({"type": "none"}),
        json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
    ];
    let mapped: Vec<Value> = cases
        .into_iter()
        .map(|choice| {
            let req = parse(json!({"model": "c", "max_tokens": 1, "messages": [], "tool_choice": choice,
                                   "tools": [{"name": "f", "input_schema": {"type": "object"}}]}));
            let out = messages_request_to_chat(req).unwrap();
            json!({"tool_choice": out.tool_choice, "parallel_tool_calls": out.parallel_tool_calls})
        })
        .collect();
    check(
        &mapped,
        expect![[r#"
        [
          {
            "parallel_tool_calls": null,
            "tool_choice": "auto"
          },
          {
            "parallel_tool_calls": null,
            "tool_choice": "auto"
          },
          {
            "parallel_tool_calls": null,
            "tool_choice": "none"
          },
          {
            "parallel_tool_calls": false,
            "tool_choice": {
              "function": {
                "name": "f"
              },
              "type": "function"
            }
          }
        ]"#]],
    );
}

#[test]
fn untranslatable_requests_name_the_field() {
    let cases = [
        json!({"model": "c", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Summarize"},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}]}),
        json!({"model": "c", "max_tokens": 1, "messages": [],
               "tools": [{"name": "f"}, {"type": "web_search_20250305", "name": "web_search"}]}),
        json!({"model": "c", "max_tokens": 1, "messages": [],
               "system": [{"type": "image", "source": {"type": "url", "url": "https://a/b.png"}}]}),
        json!({"model": "c", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
        json!({"model": "c", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": {}}]}]}]}),
    ];
    let errors: Vec<String> = cases
        .into_iter()
        .map(|req| match messages_request_to_chat(parse(req)) {
            Ok(_) => "translated".to_owned(),
            Err(e) => format!("{}: {e}", e.param.as_deref().unwrap_or_default()),
        })
        .collect();
    check(
        &errors,
        expect![[r#"
        [
          "messages[0].content[1]: content block type `document` is not supported in a user message",
          "tools[1].type: server tool `web_search_20250305` is not supported by this model's provider",
          "system[0]: a system prompt holds only text blocks, not `image`",
          "messages[0].content[0]: content block type `server_tool_use` is not supported in an assistant message",
          "messages[0].content[0].content[0]: content block type `document` is not supported in a tool result"
        ]"#]],
    );
}
