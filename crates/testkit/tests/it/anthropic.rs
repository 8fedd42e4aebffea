//! The Anthropic Messages format: whole and streamed messages, tool use, errors.

use expect_test::expect;
use keel_testkit::{MockToolCall, Reply};
use serde_json::json;

use crate::support::{mock, post, post_json, post_stream};

fn request(stream: bool) -> serde_json::Value {
    json!({
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok then"}]},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
        ]
    })
}

#[tokio::test]
async fn echo_non_stream() {
    let mock = mock().await;
    let (status, body) = post_json(&mock, "/v1/messages", &request(false)).await;
    assert_eq!(status, 200);
    expect![[r#"{"content":[{"text":"echo: hello world","type":"text"}],"id":"msg_mock_1","model":"claude-test","role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message","usage":{"input_tokens":7,"output_tokens":3}}"#]].assert_eq(&body.to_string());
}

#[tokio::test]
async fn echo_stream() {
    let mock = mock().await;
    let transcript = post_stream(&mock, "/v1/messages", &request(true)).await;
    expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_mock_1","model":"claude-test","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"input_tokens":7,"output_tokens":1}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

        event: ping
        data: {"type":"ping"}

        event: content_block_delta
        data: {"delta":{"text":"echo: ","type":"text_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_delta
        data: {"delta":{"text":"hello ","type":"text_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_delta
        data: {"delta":{"text":"world","type":"text_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_stop
        data: {"index":0,"type":"content_block_stop"}

        event: message_delta
        data: {"delta":{"stop_reason":"end_turn","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":3}}

        event: message_stop
        data: {"type":"message_stop"}

    "#]].assert_eq(&transcript);
}

#[tokio::test]
async fn tool_use_stream() {
    let mock = mock().await;
    mock.enqueue(Reply::tool_calls(vec![MockToolCall::new("toolu_1", "get_weather", r#"{"city":"Paris"}"#)]));
    let transcript = post_stream(&mock, "/v1/messages", &request(true)).await;
    expect![[r#"
        event: message_start
        data: {"message":{"content":[],"id":"msg_mock_1","model":"claude-test","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"input_tokens":7,"output_tokens":1}},"type":"message_start"}

        event: content_block_start
        data: {"content_block":{"id":"toolu_1","input":{},"name":"get_weather","type":"tool_use"},"index":0,"type":"content_block_start"}

        event: ping
        data: {"type":"ping"}

        event: content_block_delta
        data: {"delta":{"partial_json":"{\"city\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_delta
        data: {"delta":{"partial_json":":\"Paris","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_delta
        data: {"delta":{"partial_json":"\"}","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

        event: content_block_stop
        data: {"index":0,"type":"content_block_stop"}

        event: message_delta
        data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":2}}

        event: message_stop
        data: {"type":"message_stop"}

    "#]].assert_eq(&transcript);
}

#[tokio::test]
async fn tool_use_non_stream() {
    let mock = mock().await;
    mock.enqueue(Reply::tool_calls(vec![MockToolCall::new("toolu_1", "get_weather", r#"{"city":"Paris"}"#)]));
    let (_, body) = post_json(&mock, "/v1/messages", &request(false)).await;
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(
        body["content"],
        json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    assert_eq!(body["usage"], json!({"input_tokens": 7, "output_tokens": 2}));
}

#[tokio::test]
async fn error_reply() {
    let mock = mock().await;
    mock.enqueue(Reply::error(529, "overloaded_error", "Overloaded"));
    let response = post(&mock, "/v1/messages", &request(true)).await;
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
}
