//! The OpenAI format: chat completions (whole and streamed), tool calls, embeddings, models, errors.

use expect_test::expect;
use keel_testkit::{MockToolCall, Reply};
use serde_json::json;

use crate::support::{client, mock, post, post_json, post_stream};

fn chat_request() -> serde_json::Value {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
        ]
    })
}

fn weather_call() -> MockToolCall {
    MockToolCall::new("call_1", "get_weather", r#"{"city":"Paris"}"#)
}

#[tokio::test]
async fn echo_non_stream() {
    let mock = mock().await;
    let (status, body) = post_json(&mock, "/v1/chat/completions", &chat_request()).await;
    assert_eq!(status, 200);
    expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "stop",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": "echo: hello world",
                "refusal": null,
                "role": "assistant"
              }
            }
          ],
          "created": 0,
          "id": "chatcmpl-mock-1",
          "model": "gpt-test",
          "object": "chat.completion",
          "system_fingerprint": "fp_mock",
          "usage": {
            "completion_tokens": 3,
            "completion_tokens_details": {
              "reasoning_tokens": 0
            },
            "prompt_tokens": 8,
            "prompt_tokens_details": {
              "cached_tokens": 0
            },
            "total_tokens": 11
          }
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&body).unwrap());
}

#[tokio::test]
async fn echo_stream() {
    let mock = mock().await;
    let mut request = chat_request();
    request["stream"] = json!(true);
    let transcript = post_stream(&mock, "/v1/chat/completions", &request).await;
    expect![[r#"
        data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"gpt-test","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"content":"echo: "},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"gpt-test","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"content":"hello "},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"gpt-test","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"content":"world"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"gpt-test","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"gpt-test","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: [DONE]

    "#]].assert_eq(&transcript);
}

#[tokio::test]
async fn stream_with_usage() {
    let mock = mock().await;
    mock.enqueue(Reply::text("hi there"));
    let request = json!({
        "model": "m",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a b c"}]
    });
    let transcript = post_stream(&mock, "/chat/completions", &request).await;
    expect![[r#"
        data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock","usage":null}

        data: {"choices":[{"delta":{"content":"hi "},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock","usage":null}

        data: {"choices":[{"delta":{"content":"there"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock","usage":null}

        data: {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock","usage":null}

        data: {"choices":[],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock","usage":{"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":5}}

        data: [DONE]

    "#]].assert_eq(&transcript);
}

#[tokio::test]
async fn tool_calls_stream() {
    let mock = mock().await;
    mock.enqueue(Reply::tool_calls(vec![weather_call(), MockToolCall::new("call_2", "now", "{}")]));
    let request = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "weather?"}]});
    let transcript = post_stream(&mock, "/v1/chat/completions", &request).await;
    expect![[r#"
        data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"call_1","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"city\""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":":\"Paris"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"now"},"id":"call_2","index":1,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"},"index":1}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-mock-1","model":"m","object":"chat.completion.chunk","system_fingerprint":"fp_mock"}

        data: [DONE]

    "#]].assert_eq(&transcript);
}

#[tokio::test]
async fn tool_calls_non_stream() {
    let mock = mock().await;
    mock.enqueue(Reply::tool_calls(vec![weather_call()]));
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "weather?"}]});
    let (_, body) = post_json(&mock, "/v1/chat/completions", &request).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], json!(null));
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    // One word of arguments plus one per call.
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn azure_path_records_query_and_uses_deployment() {
    let mock = mock().await;
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let request = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post_json(&mock, path, &request).await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "my-gpt");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
    assert_eq!(mock.attempts()[0].path, path);
}

#[tokio::test]
async fn embeddings() {
    let mock = mock().await;
    let request = json!({"model": "emb", "input": ["one two", "three"], "dimensions": 4});
    let (status, body) = post_json(&mock, "/v1/embeddings", &request).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "emb");
    assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let vector: Vec<f64> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(vector.len(), 4);
        let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }

    // Deterministic: the same text gives the same vector, also through the other paths.
    let single = json!({"model": "emb", "input": "three", "dimensions": 4});
    let (_, again) = post_json(&mock, "/embeddings", &single).await;
    assert_eq!(again["data"][0]["embedding"], data[1]["embedding"]);
    let (_, default_dims) = post_json(&mock, "/openai/deployments/d/embeddings?api-version=1", &single).await;
    assert_eq!(default_dims["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let (_, eight) = post_json(&mock, "/v1/embeddings", &json!({"input": "x"})).await;
    assert_eq!(eight["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(eight["model"], "mock-model");
}

#[tokio::test]
async fn embeddings_reject_bad_input() {
    let mock = mock().await;
    let (status, body) = post_json(&mock, "/v1/embeddings", &json!({"model": "emb", "input": [[1, 2]]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], json!(null));
}

#[tokio::test]
async fn models_and_not_found() {
    let mock = mock().await;
    let models: serde_json::Value =
        client().get(format!("{}/v1/models", mock.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock-model");

    let response = post(&mock, "/v2/nothing", &json!({})).await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    expect![[r#"{"error":{"code":"unknown_url","message":"Unknown request URL: POST /v2/nothing","param":null,"type":"invalid_request_error"}}"#]]
        .assert_eq(&body.to_string());
    // Both are recorded as attempts.
    assert_eq!(mock.attempt_count(), 2);
}

#[tokio::test]
async fn error_reply_with_headers() {
    let mock = mock().await;
    mock.enqueue(
        Reply::error(429, "rate_limit_error", "slow down").code("rate_limit_exceeded").header("retry-after", "2"),
    );
    let response = post(&mock, "/v1/chat/completions", &chat_request()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
    );
}

#[tokio::test]
async fn raw_and_json_replies_are_written_as_given() {
    let mock = mock().await;
    mock.enqueue(Reply::raw(502, "text/html", "<html>bad gateway</html>"));
    mock.enqueue(Reply::json(200, json!({"anything": [1, 2]})));
    let mut request = chat_request();
    request["stream"] = json!(true);

    let response = post(&mock, "/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "text/html");
    assert_eq!(response.text().await.unwrap(), "<html>bad gateway</html>");

    let response = post(&mock, "/v1/chat/completions", &request).await;
    assert_eq!(response.text().await.unwrap(), r#"{"anything":[1,2]}"#);
}

#[tokio::test]
async fn non_json_body_is_a_400() {
    let mock = mock().await;
    let response = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.attempts()[0].body, json!(null));
}
