//! HTTP/1.1 on a raw socket: keep-alive, pipelining, chunked request bodies, `Connection: close`,
//! malformed requests, and the chunk framing of streams.

use futures::StreamExt;
use keel_testkit::Reply;
use serde_json::json;

use crate::support::{connect, mock, raw_post, read_response, read_until_close, send};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let mock = mock().await;
    let mut stream = connect(&mock).await;
    let mut buf = Vec::new();
    for n in 1..=2 {
        send(&mut stream, &raw_post("/v1/chat/completions", CHAT, "")).await;
        let response = read_response(&mut stream, &mut buf).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), None);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["id"], format!("chatcmpl-mock-{n}"));
    }
    assert_eq!(mock.attempt_count(), 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mock = mock().await;
    mock.enqueue_many([Reply::text("first"), Reply::text("second")]);
    let mut stream = connect(&mock).await;
    let two = raw_post("/v1/chat/completions", CHAT, "").repeat(2);
    send(&mut stream, &two).await;
    let mut buf = Vec::new();
    for expected in ["first", "second"] {
        let response = read_response(&mut stream, &mut buf).await;
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], expected);
    }
}

#[tokio::test]
async fn chunked_request_body() {
    let mock = mock().await;
    let mut stream = connect(&mock).await;
    let (a, b) = CHAT.split_at(10);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\ntrailer: yes\r\n\r\n",
        a.len(),
        b.len()
    );
    send(&mut stream, &request).await;
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf).await;
    assert_eq!(response.status, 200);
    let attempt = &mock.attempts()[0];
    assert_eq!(attempt.body["messages"][0]["content"], "hi");
    assert_eq!(attempt.header("Transfer-Encoding"), Some("chunked"));

    // The connection still works after a chunked body.
    send(&mut stream, &raw_post("/v1/chat/completions", CHAT, "")).await;
    assert_eq!(read_response(&mut stream, &mut buf).await.status, 200);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let mock = mock().await;
    let mut stream = connect(&mock).await;
    send(&mut stream, &raw_post("/v1/chat/completions", CHAT, "connection: close\r\n")).await;
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf).await;
    assert_eq!(response.header("connection"), Some("close"));
    assert!(read_until_close(&mut stream).await.is_empty());
}

#[tokio::test]
async fn malformed_request_closes_the_connection() {
    let mock = mock().await;
    let mut stream = connect(&mock).await;
    send(&mut stream, "GARBAGE\0 / HTTP/9\r\n\r\n").await;
    assert!(read_until_close(&mut stream).await.is_empty());

    let mut stream = connect(&mock).await;
    send(&mut stream, "POST /v1/messages HTTP/1.1\r\ncontent-length: nope\r\n\r\n").await;
    assert!(read_until_close(&mut stream).await.is_empty());
    assert_eq!(mock.attempt_count(), 0);
}

#[tokio::test]
async fn stream_events_are_one_chunk_each() {
    let mock = mock().await;
    mock.enqueue(Reply::text("a b"));
    let mut stream = connect(&mock).await;
    let body = json!({"model": "m", "stream": true, "messages": []}).to_string();
    send(&mut stream, &raw_post("/v1/chat/completions", &body, "connection: close\r\n")).await;
    let raw = String::from_utf8(read_until_close(&mut stream).await).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("content-type: text/event-stream\r\n"));
    assert!(head.contains("transfer-encoding: chunked\r\n"));

    // Decode the chunks by hand: each one must be exactly one SSE event.
    let mut rest = body;
    let mut events = Vec::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        let event = &after[..size];
        assert!(event.starts_with("data: ") && event.ends_with("\n\n") && event.matches("\n\n").count() == 1);
        events.push(event);
        rest = after[size..].strip_prefix("\r\n").unwrap();
    }
    // Role, "a ", "b", finish, [DONE].
    assert_eq!(events.len(), 5);
    assert_eq!(events[4], "data: [DONE]\n\n");
}

#[tokio::test]
async fn expect_100_continue() {
    let mock = mock().await;
    let mut stream = connect(&mock).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        CHAT.len()
    );
    send(&mut stream, &head).await;
    let mut interim = [0u8; 25];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    send(&mut stream, CHAT).await;
    assert_eq!(read_response(&mut stream, &mut Vec::new()).await.status, 200);
}

#[tokio::test]
async fn concurrent_requests_are_all_answered_and_recorded() {
    const REQUESTS: usize = 400;
    let mock = mock().await;
    let client = crate::support::client();
    let url = format!("{}/v1/chat/completions", mock.url());
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..REQUESTS)
        .map(|n| {
            let request = client
                .post(&url)
                .json(&json!({"model": "m", "stream": n % 2 == 0, "messages": [{"role": "user", "content": "hi"}]}));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                response.bytes().await.unwrap();
                status
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    println!("{REQUESTS} requests in {:?}", started.elapsed());
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(mock.attempt_count(), REQUESTS);
}
