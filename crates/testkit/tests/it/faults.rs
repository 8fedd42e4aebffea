//! Every `Fault`, seen from a client: what arrives, what fails, what hangs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_testkit::{Fault, Reply};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::support::{connect, mock, post, raw_post, read_events, read_to_end, send};

/// A short wait that must elapse: used only to show that something does *not* happen.
const QUIET: Duration = Duration::from_millis(300);

fn chat(stream: bool) -> serde_json::Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "one two three"}]})
}

fn messages(stream: bool) -> serde_json::Value {
    json!({"model": "c", "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "one two"}]})
}

#[tokio::test]
async fn reset_before_headers_is_a_connection_error() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::ResetBeforeHeaders));
    let error = crate::support::client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&chat(false))
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    assert_eq!(mock.attempt_count(), 1, "the attempt is recorded before the fault");

    // On a raw socket: no byte, then a reset.
    mock.enqueue(Reply::faulty(Fault::ResetBeforeHeaders));
    let mut stream = connect(&mock).await;
    send(&mut stream, &raw_post("/v1/chat/completions", &chat(false).to_string(), "")).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap();
    assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn no_response_hangs() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::NoResponse));
    let request = chat(false);
    let pending = post(&mock, "/v1/chat/completions", &request);
    assert!(tokio::time::timeout(QUIET, pending).await.is_err());
    assert_eq!(mock.attempt_count(), 1);
}

#[tokio::test]
async fn cut_stream_after_events() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::CutAfterChunks(2)));
    let response = post(&mock, "/v1/chat/completions", &chat(true)).await;
    let (text, failed) = read_to_end(response).await;
    assert!(failed, "a cut body is an error, not a clean end");
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    assert!(text.contains(r#""content":"echo: ""#));
}

#[tokio::test]
async fn cut_non_stream_body() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::CutAfterChunks(0)));
    let response = post(&mock, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn cut_counts_anthropic_events_including_ping() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::CutAfterChunks(3)));
    let response = post(&mock, "/v1/messages", &messages(true)).await;
    let (text, failed) = read_to_end(response).await;
    assert!(failed);
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names, ["message_start", "content_block_start", "ping"]);
}

#[tokio::test]
async fn stall_after_events() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::StallAfterChunks(2)));
    let response = post(&mock, "/v1/chat/completions", &chat(true)).await;
    let (text, rest) = read_events(response, 2).await;
    assert_eq!(text.matches("data: ").count(), 2);
    let mut rest = std::pin::pin!(rest);
    assert!(tokio::time::timeout(QUIET, rest.next()).await.is_err(), "nothing more arrives");
}

#[tokio::test]
async fn malformed_event_then_the_rest() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::MalformedChunkAt(1)));
    let text = crate::support::post_stream(&mock, "/v1/chat/completions", &chat(true)).await;
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events[1], "data: {not json");
    assert!(events[2].contains(r#""content":"one ""#), "{}", events[2]);
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    assert_eq!(events.len(), 7, "role, 4 words, finish, done: {text}");
}

#[tokio::test]
async fn malformed_non_stream_body() {
    let mock = mock().await;
    mock.enqueue(Reply::faulty(Fault::MalformedChunkAt(0)));
    let response = post(&mock, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(response.text().await.unwrap(), "{not json");
}

#[tokio::test]
async fn no_done_ends_cleanly_without_terminator() {
    let mock = mock().await;
    mock.enqueue_many([Reply::faulty(Fault::NoDone), Reply::faulty(Fault::NoDone)]);

    let (text, failed) = read_to_end(post(&mock, "/v1/chat/completions", &chat(true)).await).await;
    assert!(!failed);
    assert!(!text.contains("[DONE]"));
    let last = text.split_terminator("\n\n").last().unwrap();
    assert!(last.contains(r#""finish_reason":"stop""#), "{text}");

    let (text, failed) = read_to_end(post(&mock, "/v1/messages", &messages(true)).await).await;
    assert!(!failed);
    assert!(!text.contains("message_stop"));
    assert!(text.contains("event: message_delta"));
}

#[tokio::test]
async fn delays_are_applied() {
    let mock = mock().await;
    let delay = Duration::from_millis(150);
    mock.enqueue(Reply::echo().delay_before_headers(delay));
    let started = Instant::now();
    let response = post(&mock, "/v1/chat/completions", &chat(false)).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(response.status(), 200);

    // First-chunk and between-chunk delays: 7 events, so 6 gaps of 20 ms after a 50 ms wait.
    mock.enqueue(Reply::echo().first_chunk_delay(Duration::from_millis(50)).chunk_delay(Duration::from_millis(20)));
    let started = Instant::now();
    let text = crate::support::post_stream(&mock, "/v1/chat/completions", &chat(true)).await;
    assert!(started.elapsed() >= Duration::from_millis(50 + 6 * 20), "{:?}", started.elapsed());
    assert!(text.ends_with("data: [DONE]\n\n"));
}
