//! Scripting: the Rust API (queue, default, attempts, reset) and the `/_mock/*` HTTP endpoints.

use keel_testkit::{Attempt, Fault, Reply};
use serde_json::json;

use crate::support::{client, mock, post, post_json};

fn chat() -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "ping"}]})
}

async fn answer(mock: &keel_testkit::MockUpstream) -> serde_json::Value {
    let (_, body) = post_json(mock, "/v1/chat/completions", &chat()).await;
    body["choices"][0]["message"]["content"].clone()
}

#[tokio::test]
async fn queue_then_default_then_reset() {
    let mock = mock().await;
    mock.enqueue_many([Reply::text("one"), Reply::text("two")]);
    mock.set_default(Reply::text("fallback"));
    assert_eq!(answer(&mock).await, "one");
    assert_eq!(answer(&mock).await, "two");
    assert_eq!(answer(&mock).await, "fallback");
    assert_eq!(mock.attempt_count(), 3);

    mock.enqueue(Reply::text("dropped"));
    mock.reset();
    assert_eq!(mock.attempt_count(), 0);
    assert_eq!(answer(&mock).await, "echo: ping");
}

#[tokio::test]
async fn attempts_record_requests() {
    let mock = mock().await;
    client()
        .post(format!("{}/v1/messages?beta=true", mock.url()))
        .header("x-api-key", "sk-test")
        .header("Anthropic-Version", "2023-06-01")
        .json(&json!({"model": "c", "messages": []}))
        .send()
        .await
        .unwrap();
    let attempts = mock.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let attempt = &attempts[0];
    assert_eq!(attempt.method, "POST");
    assert_eq!(attempt.path, "/v1/messages?beta=true");
    assert_eq!(attempt.header("x-api-key"), Some("sk-test"));
    assert_eq!(attempt.header("ANTHROPIC-VERSION"), Some("2023-06-01"));
    assert!(attempt.headers.iter().all(|(name, _)| name == &name.to_ascii_lowercase()));
    assert_eq!(attempt.body, json!({"model": "c", "messages": []}));
}

#[tokio::test]
async fn control_endpoints() {
    let mock = mock().await;
    let script = serde_json::to_value([Reply::text("scripted"), Reply::faulty(Fault::NoDone)]).unwrap();
    let (status, body) = post_json(&mock, "/_mock/script", &script).await;
    assert_eq!((status, body), (200, json!({"enqueued": 2})));
    let (status, _) = post_json(&mock, "/_mock/default", &json!({"body": {"text": "default"}})).await;
    assert_eq!(status, 200);

    assert_eq!(answer(&mock).await, "scripted");
    assert_eq!(answer(&mock).await, "echo: ping", "NoDone does not change a non-stream answer");
    assert_eq!(answer(&mock).await, "default");

    let attempts: Vec<Attempt> =
        client().get(format!("{}/_mock/attempts", mock.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(attempts.len(), 3, "control requests are not recorded");
    assert_eq!(attempts, mock.attempts());

    let (status, _) = post_json(&mock, "/_mock/reset", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(mock.attempt_count(), 0);
    assert_eq!(answer(&mock).await, "echo: ping");

    let response = post(&mock, "/_mock/script", &json!({"not": "a list"})).await;
    assert_eq!(response.status(), 400);
}
