//! Helpers shared by the integration tests: an HTTP client, transcript normalisation, raw HTTP.

use std::time::Duration;

use futures::StreamExt;
use keel_testkit::MockUpstream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn mock() -> MockUpstream {
    MockUpstream::start().await.unwrap()
}

pub async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client().post(format!("{}{path}", mock.url())).json(body).send().await.unwrap()
}

/// POSTs and returns the status and the JSON body with `created` zeroed.
pub async fn post_json(mock: &MockUpstream, path: &str, body: &Value) -> (u16, Value) {
    let response = post(mock, path, body).await;
    let status = response.status().as_u16();
    let mut json: Value = response.json().await.unwrap();
    zero_created(&mut json);
    (status, json)
}

/// POSTs and returns the whole SSE body, normalised by [`transcript`].
pub async fn post_stream(mock: &MockUpstream, path: &str, body: &Value) -> String {
    let response = post(mock, path, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    transcript(&response.text().await.unwrap())
}

fn zero_created(value: &mut Value) {
    if let Some(created) = value.get_mut("created") {
        *created = Value::from(0);
    }
}

/// An SSE body with the time-dependent `created` fields zeroed, so it can be a snapshot.
pub fn transcript(sse: &str) -> String {
    sse.split_inclusive('\n')
        .map(|line| {
            let Some(json) = line.strip_prefix("data: ").and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
                return line.to_owned();
            };
            let mut json = json;
            zero_created(&mut json);
            format!("data: {json}\n")
        })
        .collect()
}

/// Reads a streamed body until it holds `events` complete SSE events; returns the text and
/// the still-open body stream.
pub async fn read_events(
    response: reqwest::Response,
    events: usize,
) -> (String, impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>) {
    let mut stream = Box::pin(response.bytes_stream());
    let mut text = String::new();
    while text.matches("\n\n").count() < events {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    (text, stream)
}

/// Reads everything of a streamed body until it ends or fails; returns the text and whether it
/// failed.
pub async fn read_to_end(response: reqwest::Response) -> (String, bool) {
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap() {
        match chunk {
            Ok(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Err(_) => return (text, true),
        }
    }
    (text, false)
}

/// A raw request with a JSON body and Content-Length.
pub fn raw_post(path: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One response read from a raw connection: head (status line and headers) and body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one Content-Length response from `stream`, keeping any extra bytes in `buf`.
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawResponse {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = parsed.parse(buf).unwrap() {
            let status = parsed.code.unwrap();
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let length: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
            while buf.len() < head_len + length {
                read_more(stream, buf).await;
            }
            let body = buf[head_len..head_len + length].to_vec();
            buf.drain(..head_len + length);
            return RawResponse { status, headers, body };
        }
        read_more(stream, buf).await;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
    assert!(n > 0, "connection closed early; got {:?}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads until the peer closes; returns what arrived.
pub async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await.unwrap().unwrap();
    all
}

pub async fn connect(mock: &MockUpstream) -> TcpStream {
    TcpStream::connect(mock.addr()).await.unwrap()
}

pub async fn send(stream: &mut TcpStream, bytes: &str) {
    stream.write_all(bytes.as_bytes()).await.unwrap();
}
