//! Connections as a hostile or clumsy client makes them, on raw sockets against `keel_server::serve`: silent
//! and slow clients are closed, an oversized body is refused before it is read, idle connections do not stay
//! forever, and past the connection limit a client gets a clean 503.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_testkit::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Server {
    addr: std::net::SocketAddr,
    _mock: MockUpstream,
    stats: Arc<keel_server::ConnStats>,
}

/// A served keel with short timeouts: 300 ms for headers, bodies and idleness.
async fn server(max_connections: usize, header_ms: u64) -> Server {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        "[providers.oa]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"KEY\"\n[models.gpt]\nprovider = \"oa\"\n",
        mock.url()
    );
    let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap();
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let state = keel_server::AppState::new(routes, providers, breakers);
    let limits = keel_server::ServerLimits {
        max_body_bytes: 1 << 20,
        body_read_timeout: Duration::from_millis(300),
        ..keel_server::ServerLimits::default()
    };
    let router = keel_server::router(state, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(keel_server::ConnStats::default());
    let opts = keel_server::ConnOptions {
        grace: Duration::from_secs(1),
        header_read_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(300),
        max_connections,
        max_header_bytes: 64 << 10,
        stats: stats.clone(),
    };
    tokio::spawn(keel_server::serve(listener, router, std::future::pending(), opts, || {}));
    Server { addr, _mock: mock, stats }
}

/// Everything the server sends until it closes the connection; fails the test after 30 s.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server never closed the connection; it sent: {}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_announced_body_over_the_limit_is_refused_at_once() {
    let srv = server(100, 10_000).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 20000000\r\n\r\n")
        .await
        .unwrap();
    // Nothing of the body is sent: the refusal comes from the headers alone, and the connection closes.
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"type\":\"request_too_large\""), "{answer}");
}

#[tokio::test]
async fn silent_and_slow_header_clients_are_closed_after_the_header_timeout() {
    let srv = server(100, 300).await;
    // Nothing at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "", "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Part of the headers, then nothing.
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    read_until_closed(&mut slow).await;
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_a_408() {
    let srv = server(100, 10_000).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let srv = server(100, 300).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "answered, then closed once idle: {answer}");
}

#[tokio::test]
async fn past_the_connection_limit_a_client_gets_a_clean_503() {
    let srv = server(2, 10_000).await;
    let _a = TcpStream::connect(srv.addr).await.unwrap();
    let _b = TcpStream::connect(srv.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.stats.open.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the two connections were never accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut third = TcpStream::connect(srv.addr).await.unwrap();
    third.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(srv.stats.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
}
