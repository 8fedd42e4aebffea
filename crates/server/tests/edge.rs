//! The HTTP edge tested as a service (`Router::oneshot`, no socket on keel's side) against the mock upstream:
//! bad input, error formats, request ids, and honest stream endings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use expect_test::{Expect, expect};
use http_body_util::BodyExt;
use keel_testkit::{Fault, MockUpstream, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: Router,
    mock: MockUpstream,
}

async fn app() -> App {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
        [server]
        max_body_bytes = 2048
        # The edge is tested one attempt at a time; retries are the reliability suite's subject.
        [reliability]
        max_attempts = 1
        [providers.oa]
        kind = "openai"
        base_url = "{url}/v1"
        api_key_env = "KEY"
        request_timeout_ms = 300
        [providers.an]
        kind = "anthropic"
        base_url = "{url}"
        api_key_env = "KEY"
        [models.gpt]
        provider = "oa"
        model = "up-gpt"
        [models.claude]
        provider = "an"
        model = "up-claude"
        "#,
        url = mock.url()
    );
    let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap();
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let state = keel_server::AppState::new(routes, providers, breakers);
    let limits = keel_server::ServerLimits {
        max_body_bytes: cfg.server.max_body_bytes,
        body_read_timeout: Duration::from_millis(300),
        ..keel_server::ServerLimits::default()
    };
    let router = keel_server::router(state, limits);
    App { router, mock }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(app: &App, method: &str, path: &str, body: impl Into<Body>) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

/// Sends `body` to `path` and compares `STATUS BODY` with the expectation.
async fn check(path: &str, body: &str, expected: Expect) {
    let app = app().await;
    let a = send(&app, "POST", path, body.to_string()).await;
    assert!(a.headers.contains_key("x-request-id"), "every response has a request id");
    expected.assert_eq(&format!("{} {}", a.status.as_u16(), a.body));
}

#[tokio::test]
async fn malformed_json_gets_a_400_in_openai_format() {
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": [}"#,
        expect![[r#"400 {"error":{"message":"malformed JSON in request body: messages[0]: expected value at line 1 column 31","type":"invalid_request_error","param":"messages[0]","code":null}}"#]],
    )
    .await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_name_the_field() {
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": [{"role": "usr", "content": "x"}]}"#,
        expect![[r#"400 {"error":{"message":"invalid request: messages[0].role: unknown variant `usr`, expected one of `system`, `developer`, `user`, `assistant`, `tool`, `function` at line 1 column 44","type":"invalid_request_error","param":"messages[0].role","code":null}}"#]],
    )
    .await;
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt"}"#,
        expect![[r#"400 {"error":{"message":"invalid request: missing field `messages` at line 1 column 16","type":"invalid_request_error","param":null,"code":null}}"#]],
    )
    .await;
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": [], "temperature": "hot"}"#,
        expect![[r#"400 {"error":{"message":"invalid request: temperature: invalid type: string \"hot\", expected f64 at line 1 column 53","type":"invalid_request_error","param":"temperature","code":null}}"#]],
    )
    .await;
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": []}"#,
        expect![[r#"400 {"error":{"message":"messages: must contain at least one message","type":"invalid_request_error","param":"messages","code":null}}"#]],
    )
    .await;
    check(
        "/v1/embeddings",
        r#"{"model": "gpt", "input": ""}"#,
        expect![[r#"400 {"error":{"message":"input: must not be empty or contain empty strings","type":"invalid_request_error","param":"input","code":null}}"#]],
    )
    .await;
}

#[tokio::test]
async fn anthropic_errors_use_anthropic_format() {
    check(
        "/v1/messages",
        r#"{"model": "claude", "messages": [{"role": "user", "content": "hi"}]}"#,
        expect![[r#"400 {"type":"error","error":{"type":"invalid_request_error","message":"invalid request: missing field `max_tokens` at line 1 column 68"}}"#]],
    )
    .await;
    check(
        "/v1/messages",
        r#"{"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}"#,
        expect![[r#"404 {"type":"error","error":{"type":"not_found_error","message":"The model `nope` does not exist in this keel gateway (GET /v1/models lists the models you may use)."}}"#]],
    )
    .await;
}

#[tokio::test]
async fn unknown_model_does_not_list_the_configured_ones() {
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}"#,
        expect![[r#"404 {"error":{"message":"The model `gpt-5` does not exist in this keel gateway (GET /v1/models lists the models you may use).","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#]],
    )
    .await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_never_reaches_upstream() {
    let app = app().await;
    let big = json!({"model": "gpt", "messages": [{"role": "user", "content": "x".repeat(4096)}]}).to_string();
    let a = send(&app, "POST", "/v1/chat/completions", big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["error"]["type"], "request_too_large");
    assert_eq!(app.mock.attempt_count(), 0);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_api_errors() {
    let app = app().await;
    let a = send(&app, "POST", "/v1/completions", "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["code"], "unknown_url");
    let a = send(&app, "GET", "/v1/chat/completions", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn request_id_is_echoed_or_made() {
    let app = app().await;
    let req = Request::builder().uri("/health").header("x-request-id", "trace-123").body(Body::empty()).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-123");
    let req = Request::builder().uri("/health").header("x-request-id", "bad id\twith tab").body(Body::empty()).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(made.len(), 36, "a fresh UUID replaces an unusable id: {made}");
}

#[tokio::test]
async fn upstream_non_json_and_hangs_are_clean_5xx() {
    let app = app().await;
    let chat = r#"{"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}"#;
    app.mock.enqueue(Reply::raw(200, "text/html", "<html>oops</html>"));
    let a = send(&app, "POST", "/v1/chat/completions", chat).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("<html>oops</html>"), "{}", a.body);

    // The provider's request timeout is 300 ms; the mock never answers.
    app.mock.enqueue(Reply::echo().fault(Fault::NoResponse));
    let started = std::time::Instant::now();
    let a = send(&app, "POST", "/v1/chat/completions", chat).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "timeout_error");
    assert!(started.elapsed() < Duration::from_secs(10), "a hanging upstream costs at most its timeout");
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let app = app().await;
    app.mock.enqueue(Reply::error(429, "rate_limit_error", "slow down").header("retry-after", "7"));
    let a = send(&app, "POST", "/v1/chat/completions", r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#)
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "7");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("slow down"));
}

fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: "))).map(str::to_string).collect()
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_not_done() {
    let app = app().await;
    for fault in [Fault::CutAfterChunks(2), Fault::MalformedChunkAt(2)] {
        app.mock.enqueue(Reply::echo().fault(fault));
        let a = send(
            &app,
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt","stream":true,"messages":[{"role":"user","content":"one two three four"}]}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let events = sse_data(&a.body);
        assert!(!events.iter().any(|e| e == "[DONE]"), "{fault:?}: no [DONE] after a failure: {}", a.body);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "upstream_error", "{fault:?}: {}", a.body);
    }
}

/// A body that closes after the finish reason but without `[DONE]` holds a complete answer: it is finalised at
/// once, with its usage, and the client gets `[DONE]`.
#[tokio::test]
async fn a_complete_stream_without_done_is_finalised() {
    let app = app().await;
    app.mock.enqueue(Reply::echo().fault(Fault::NoDone));
    let body = r#"{"model":"gpt","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"one two"}]}"#;
    let a = send(&app, "POST", "/v1/chat/completions", body).await;
    let events = sse_data(&a.body);
    assert_eq!(events.last().unwrap(), "[DONE]", "{}", a.body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 3, "{}", a.body);
}

#[tokio::test]
async fn a_cut_anthropic_stream_ends_with_an_error_event() {
    let app = app().await;
    app.mock.enqueue(Reply::echo().fault(Fault::CutAfterChunks(4)));
    let a = send(
        &app,
        "POST",
        "/v1/messages",
        r#"{"model":"claude","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"one two three four"}]}"#,
    )
    .await;
    assert!(!a.body.contains("message_stop"), "{}", a.body);
    assert!(a.body.contains("event: error\ndata: {\"type\":\"error\""), "{}", a.body);
}

#[tokio::test]
async fn usage_chunk_only_when_the_client_asks() {
    let app = app().await;
    let body = |usage: bool| {
        json!({"model": "gpt", "stream": true, "stream_options": {"include_usage": usage},
               "messages": [{"role": "user", "content": "a b"}]})
        .to_string()
    };
    let a = send(&app, "POST", "/v1/chat/completions", body(false)).await;
    assert!(!a.body.contains("\"usage\""), "{}", a.body);
    assert_eq!(app.mock.attempts()[0].body["stream_options"]["include_usage"], true);
    let a = send(&app, "POST", "/v1/chat/completions", body(true)).await;
    let events = sse_data(&a.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 3, "{}", a.body);
}

#[tokio::test]
async fn models_lists_aliases() {
    let app = app().await;
    let a = send(&app, "GET", "/v1/models", "").await;
    let ids: Vec<_> =
        a.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["claude", "gpt"]);
    assert_eq!(send(&app, "GET", "/v1/models/gpt", "").await.json()["id"], "gpt");
    assert_eq!(send(&app, "GET", "/v1/models/nope", "").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_read() {
    let app = app().await;
    // The announced length alone decides: the body that follows is never awaited.
    let never = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", "20000000")
        .body(never)
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["type"], "request_too_large", "{body}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_a_408() {
    let app = app().await;
    let slow = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/messages")
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(slow)
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["type"], "error", "the Anthropic API's format: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("body_read_timeout_ms"), "{body}");
}

#[tokio::test]
async fn oversized_headers_get_a_431_in_the_apis_format() {
    let app = app().await;
    let mut req =
        Request::builder().method("POST").uri("/v1/chat/completions").header("content-type", "application/json");
    for i in 0..120 {
        req = req.header(format!("x-filler-{i}"), "x");
    }
    let resp = app.router.clone().oneshot(req.body(Body::from("{}")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    let req = Request::builder().uri("/health").header("x-big", "y".repeat(70_000)).body(Body::empty()).unwrap();
    assert_eq!(app.router.clone().oneshot(req).await.unwrap().status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_message_with_a_role_and_nothing_else_is_refused() {
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": [{"role": "user"}]}"#,
        expect![[r#"400 {"error":{"message":"messages[0]: a message with role `user` needs content","type":"invalid_request_error","param":"messages[0].content","code":null}}"#]],
    )
    .await;
    check(
        "/v1/chat/completions",
        r#"{"model": "gpt", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}"#,
        expect![[r#"400 {"error":{"message":"messages[1]: a message with role `assistant` needs content or tool_calls","type":"invalid_request_error","param":"messages[1].content","code":null}}"#]],
    )
    .await;
}

#[tokio::test]
async fn anthropic_answers_carry_the_request_id_where_its_sdk_reads_it() {
    let app = app().await;
    let a = send(
        &app,
        "POST",
        "/v1/messages",
        r#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.headers["request-id"], a.headers["x-request-id"]);
    let a = send(&app, "POST", "/v1/messages", "{").await;
    assert!(a.headers.contains_key("request-id"), "errors too");
}

/// An edge whose instance admits one request at a time and lets none wait, with the admin endpoints `admin`.
async fn narrow_app(admin: keel_server::AdminAccess) -> App {
    let app = app().await;
    let text = format!(
        "[reliability]\nmax_attempts = 1\n[providers.oa]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"KEY\"\n[models.gpt]\nprovider = \"oa\"\n[providers.an]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"KEY\"\n[models.claude]\nprovider = \"an\"\n",
        app.mock.url(),
        app.mock.url()
    );
    let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap();
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let state = keel_server::AppState::from_parts(keel_server::Parts {
        admin,
        admission: std::sync::Arc::new(keel_pipeline::Limiter::new(1, 0, Duration::ZERO)),
        ..keel_server::Parts::new(routes, providers, breakers)
    });
    App { router: keel_server::router(state, keel_server::ServerLimits::default()), mock: app.mock }
}

#[tokio::test]
async fn beyond_the_instance_limit_requests_are_refused_at_once_and_health_still_answers() {
    let app = narrow_app(keel_server::AdminAccess::Closed).await;
    app.mock.enqueue(Reply::text("slow").delay_before_headers(Duration::from_millis(500)));
    let first = {
        let router = app.router.clone();
        tokio::spawn(async move {
            let req = Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.mock.attempt_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a =
        send(&app, "POST", "/v1/chat/completions", r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#)
            .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.json()["error"]["type"], "overloaded_error");
    let a = send(
        &app,
        "POST",
        "/v1/messages",
        r#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"]["type"], "overloaded_error", "Anthropic's format: {}", a.body);
    assert_eq!(send(&app, "GET", "/health", "").await.status, StatusCode::OK, "health answers under overload");
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(app.mock.attempt_count(), 1, "refused requests never reached the upstream");
    // The slot is free again: the next request is served.
    let a =
        send(&app, "POST", "/v1/chat/completions", r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}]}"#)
            .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_key_or_an_explicit_loopback_opening() {
    let closed = narrow_app(keel_server::AdminAccess::Closed).await;
    for path in ["/admin/requests", "/admin/keys", "/admin/circuits"] {
        let a = send(&closed, "GET", path, "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
        assert_eq!(a.json()["error"]["code"], "admin_disabled");
    }
    let keyed = narrow_app(keel_server::AdminAccess::Key(keel_config::Secret::new("the-admin-key"))).await;
    assert_eq!(send(&keyed, "GET", "/admin/circuits", "").await.status, StatusCode::UNAUTHORIZED);
    let req =
        Request::get("/admin/circuits").header("authorization", "BEARER the-admin-key").body(Body::empty()).unwrap();
    assert_eq!(
        keyed.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK,
        "the scheme is case-insensitive"
    );
    let req = Request::get("/admin/circuits").header("authorization", "Bearer wrong").body(Body::empty()).unwrap();
    assert_eq!(keyed.router.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);
    let open = narrow_app(keel_server::AdminAccess::OpenOnLoopback).await;
    assert_eq!(send(&open, "GET", "/admin/circuits", "").await.status, StatusCode::OK);
    // /metrics is for scrapers: never behind the admin key.
    assert_eq!(send(&closed, "GET", "/metrics", "").await.status, StatusCode::OK);
    assert!(
        matches!(
            keel_server::AdminAccess::of(None, true, "0.0.0.0:8080".parse().unwrap()),
            keel_server::AdminAccess::Closed
        ),
        "opening on loopback does not open a public listener"
    );
    assert!(matches!(
        keel_server::AdminAccess::of(None, true, "127.0.0.1:8080".parse().unwrap()),
        keel_server::AdminAccess::OpenOnLoopback
    ));
}
