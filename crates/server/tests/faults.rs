//! The fault-injection suite: one test per fault class, through keel's whole request path, against mock
//! upstreams that misbehave on script. Each test asserts what the caller receives (a complete answer or a
//! bounded, clean error), how many attempts each upstream saw, the time bounds, and the model reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_testkit::{Fault, MockUpstream, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Three upstreams: `primary` (OpenAI), `fallback` (Anthropic, which continues a prefilled answer) and `big`
/// (an OpenAI-compatible model with a larger context window).
struct Rig {
    router: Router,
    /// The same request path without the HTTP edge, to look at a request's context.
    pipeline: keel_pipeline::Pipeline,
    primary: MockUpstream,
    fallback: MockUpstream,
    big: MockUpstream,
}

async fn rig() -> Rig {
    let (primary, fallback, big) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let text = format!(
        r#"
        [reliability]
        max_attempts = 3
        backoff_base_ms = 5
        backoff_max_ms = 20
        retry_after_cap_ms = 3000
        first_token_timeout_ms = 400
        idle_timeout_ms = 400
        total_timeout_ms = 10000
        [reliability.circuit]
        consecutive_failures = 1000
        min_requests = 1000

        [providers.p]
        kind = "openai"
        base_url = "{p}/v1"
        api_key_env = "KEY"
        request_timeout_ms = 400
        [providers.f]
        kind = "anthropic"
        base_url = "{f}"
        api_key_env = "KEY"
        [providers.b]
        kind = "openai_compatible"
        base_url = "{b}/v1"

        [models.fb]
        provider = "f"
        model = "claude-f"
        [models.big]
        provider = "b"
        model = "big-ctx"
        [models.main]
        provider = "p"
        model = "gpt-p"
        fallbacks = ["fb"]
        context_fallback = "big"
        [models.alone]
        provider = "p"
        model = "gpt-p"
        [models.continue]
        provider = "p"
        model = "gpt-p"
        fallbacks = ["fb"]
        reliability = {{ on_stream_failure = "continue" }}
        [models.structured]
        provider = "p"
        model = "gpt-p"
        response_schema = '{{"type":"object","required":["city"],"properties":{{"city":{{"type":"string"}}}}}}'
        reliability = {{ max_repairs = 1 }}
        [models.breaker]
        provider = "p"
        model = "gpt-b"
        fallbacks = ["fb"]
        reliability = {{ max_attempts = 1, circuit = {{ consecutive_failures = 3, open_ms = 300 }} }}
        "#,
        p = primary.url(),
        f = fallback.url(),
        b = big.url()
    );
    let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    // The route and call stages alone, for tests that look at what the call stage records.
    let pipeline = keel_pipeline::Pipeline::new(
        tower::ServiceBuilder::new()
            .layer(keel_pipeline::RouteLayer::new(routes.clone()))
            .service(keel_pipeline::Call::new(providers.clone(), breakers.clone())),
    );
    let router = keel_server::router(
        keel_server::AppState::new(routes, providers, breakers),
        keel_server::ServerLimits { max_body_bytes: 1 << 20, ..Default::default() },
    );
    Rig { router, pipeline, primary, fallback, big }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
    elapsed: Duration,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn served_by(&self) -> &str {
        self.headers.get("x-keel-served-by").map_or("", |v| v.to_str().unwrap())
    }

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_string)
            .collect()
    }

    /// The streamed answer text.
    fn stream_text(&self) -> String {
        self.events()
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect()
    }

    fn stream_ended_with_done(&self) -> bool {
        self.events().last().is_some_and(|e| e == "[DONE]")
    }

    fn stream_error(&self) -> Option<Value> {
        let last: Value = serde_json::from_str(self.events().last()?).ok()?;
        last.get("error").cloned()
    }
}

const PROMPT: &str = "one two three four five";
const ANSWER: &str = "echo: one two three four five";

async fn chat(rig: &Rig, model: &str, stream: bool, extra: Value) -> Answer {
    let mut body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let started = Instant::now();
    let resp = rig.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap(), elapsed: started.elapsed() }
}

fn answer_text(a: &Answer) -> String {
    a.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn rate_limited_with_retry_after_waits_then_retries_the_same_target() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::error(429, "rate_limit_error", "slow down").header("retry-after", "1"));
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (2, 0));
    assert_eq!(a.served_by(), "p/gpt-p");
    assert!(a.elapsed >= Duration::from_secs(1), "Retry-After honoured: {:?}", a.elapsed);
    let gap = rig.primary.attempts()[1].at_ms - rig.primary.attempts()[0].at_ms;
    assert!(gap >= 1000, "the second attempt came {gap} ms after the first");
}

#[tokio::test]
async fn rate_limited_without_retry_after_backs_off_and_retries() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::error(429, "rate_limit_error", "slow down"));
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (2, 0));
}

#[tokio::test]
async fn retry_after_beyond_the_cap_falls_over_at_once() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::error(429, "rate_limit_error", "come back in a minute").header("retry-after", "60"));
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 1));
    assert_eq!(a.served_by(), "f/claude-f");
    assert_eq!(a.json()["model"], "claude-f", "the response names the model that answered");
    // Honouring the 60 s would take 60 s; half of it is a bound no loaded machine reaches by accident.
    assert!(a.elapsed < Duration::from_secs(30), "fell over without waiting: {:?}", a.elapsed);
}

#[tokio::test]
async fn server_error_once_is_retried() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::error(500, "server_error", "boom"));
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (2, 0));
    assert_eq!(a.headers["x-keel-attempts"], "2");
}

#[tokio::test]
async fn unavailable_always_exhausts_retries_then_falls_over() {
    let rig = rig().await;
    rig.primary.set_default(Reply::error(503, "overloaded", "down"));
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (3, 1));
    assert_eq!(a.served_by(), "f/claude-f");

    // Without a fallback the client gets a bounded, clean error after the same three attempts.
    rig.primary.reset();
    rig.primary.set_default(Reply::error(503, "overloaded", "down"));
    let a = chat(&rig, "alone", false, json!({})).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("down"), "{}", a.body);
    assert_eq!(rig.primary.attempt_count(), 3);
}

#[tokio::test]
async fn reset_before_headers_is_retried() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::ResetBeforeHeaders));
    for stream in [false, true] {
        rig.primary.reset();
        rig.primary.enqueue(Reply::echo().fault(Fault::ResetBeforeHeaders));
        let a = chat(&rig, "main", stream, json!({})).await;
        let text = if stream { a.stream_text() } else { answer_text(&a) };
        assert_eq!(text, ANSWER, "stream={stream}: {}", a.body);
        assert_eq!(rig.primary.attempt_count(), 2, "stream={stream}");
    }
    assert_eq!(rig.fallback.attempt_count(), 0);
}

#[tokio::test]
async fn no_response_costs_one_timeout_and_is_not_retried() {
    let rig = rig().await;
    for stream in [false, true] {
        rig.primary.reset();
        rig.fallback.reset();
        rig.primary.set_default(Reply::echo().fault(Fault::NoResponse));
        let a = chat(&rig, "main", stream, json!({})).await;
        let text = if stream { a.stream_text() } else { answer_text(&a) };
        assert_eq!(text, ANSWER, "stream={stream}: {}", a.body);
        assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 1), "stream={stream}");
        assert!(a.elapsed >= Duration::from_millis(400), "waited the timeout: {:?}", a.elapsed);
    }
}

#[tokio::test]
async fn slow_first_token_fails_over() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().first_chunk_delay(Duration::from_secs(5)));
    let a = chat(&rig, "main", true, json!({})).await;
    assert!(a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(a.stream_text(), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 1));
    // Had keel waited for the slow first token, the primary (which does answer, after 5 s) would have served.
    assert_eq!(a.served_by(), "f/claude-f");
}

#[tokio::test]
async fn stream_cut_after_partial_output_ends_with_an_error_event() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::CutAfterChunks(3)));
    let a = chat(&rig, "main", true, json!({})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(a.stream_error().expect("an error event")["type"], "upstream_error");
    assert_eq!(a.stream_text(), "echo: one ", "what was sent stays; nothing is invented");
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 0));
}

#[tokio::test]
async fn stream_cut_continues_on_a_prefill_capable_fallback_when_the_route_says_so() {
    let rig = rig().await;
    // Events: the role chunk, then "The ", "capital ", "of ": the cut comes after those four.
    rig.primary.enqueue(Reply::text("The capital of France is Paris, a city").fault(Fault::CutAfterChunks(4)));
    rig.fallback.enqueue(Reply::text(" France is Paris."));
    let a = chat(&rig, "continue", true, json!({})).await;
    assert!(a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(a.stream_text(), "The capital of France is Paris.", "partial answer, then the continuation");
    let cont = &rig.fallback.attempts()[0].body;
    let last = cont["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "assistant", "the fallback got the partial answer as a prefill: {cont}");
    assert_eq!(last["content"], "The capital of", "trailing white space is not prefilled: {cont}");
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 1));
}

/// A continued stream costs both attempts: the broken one is recorded once (failed mid-stream) with keel's
/// estimate of what it consumed, and the usage the client gets adds it to the continuation's.
#[tokio::test]
async fn a_continued_stream_counts_every_attempt_once() {
    use futures::StreamExt;
    let rig = rig().await;
    rig.primary.enqueue(Reply::text("The capital of France is Paris, a city").fault(Fault::CutAfterChunks(4)));
    rig.fallback.enqueue(Reply::text(" France is Paris."));
    let req: keel_types::ChatRequest = serde_json::from_value(json!({
        "model": "continue", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": PROMPT}]
    }))
    .unwrap();
    let ctx = keel_pipeline::RequestContext::new(
        keel_pipeline::RequestId("continued".into()),
        keel_pipeline::Endpoint::ChatCompletions,
    );
    let resp = rig
        .pipeline
        .clone()
        .oneshot(keel_pipeline::GatewayRequest { ctx, op: keel_pipeline::Operation::chat(req) })
        .await
        .unwrap();
    let Ok(keel_pipeline::Output::ChatStream(stream)) = resp.result else { panic!("a stream") };
    let chunks: Vec<_> = stream.collect().await;
    let usage = chunks.iter().filter_map(|c| c.as_ref().ok()?.usage.clone()).next_back().expect("a usage chunk");
    let attempts = resp.ctx.attempts.snapshot();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a.provider.to_string(), a.outcome.as_str())).collect();
    assert_eq!(outcomes, [("p".to_string(), "stream_incomplete"), ("f".to_string(), "ok")], "each attempt once");
    let broken = attempts[0].usage.expect("the broken attempt's estimate");
    assert!(broken.input > 0, "its prompt was sent and counted");
    let delivered = keel_pipeline::cost::count_text("gpt-p", "The capital of ");
    assert_eq!(broken.output, delivered, "\"The capital of \" was delivered by it");
    // The continuation's own usage (the mock counts words) plus the broken attempt's.
    assert!(usage.completion_tokens >= broken.output + 3, "{usage:?}");
    assert!(usage.prompt_tokens >= broken.input, "{usage:?}");
}

#[tokio::test]
async fn a_fallback_that_rejects_the_prefill_is_not_the_reported_cause() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::CutAfterChunks(3)));
    rig.fallback.enqueue(Reply::error(
        400,
        "invalid_request_error",
        "This model does not support assistant message prefill",
    ));
    let a = chat(&rig, "continue", true, json!({})).await;
    let err = a.stream_error().expect("an error event");
    let message = err["message"].as_str().unwrap();
    assert!(!message.contains("prefill"), "{message}");
    assert!(message.contains("stream"), "the original failure is reported: {message}");
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 1));
}

#[tokio::test]
async fn stream_stall_ends_after_the_idle_timeout() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::StallAfterChunks(3)));
    let a = chat(&rig, "main", true, json!({})).await;
    let err = a.stream_error().expect("an error event");
    assert_eq!(err["type"], "timeout_error", "{}", a.body);
    assert!(err["message"].as_str().unwrap().contains("idle"), "{err}");
    assert!(a.elapsed >= Duration::from_millis(400), "{:?}", a.elapsed);
}

#[tokio::test]
async fn malformed_chunk_fails_cleanly_mid_stream_and_fails_over_before_the_first_token() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::MalformedChunkAt(3)));
    let a = chat(&rig, "main", true, json!({})).await;
    assert!(a.stream_error().is_some() && !a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(rig.fallback.attempt_count(), 0);

    rig.primary.enqueue(Reply::echo().fault(Fault::MalformedChunkAt(0)));
    let a = chat(&rig, "main", true, json!({})).await;
    assert!(a.stream_ended_with_done(), "nothing had reached the client: fail over: {}", a.body);
    assert_eq!(a.stream_text(), ANSWER);
    assert_eq!(rig.fallback.attempt_count(), 1);
}

#[tokio::test]
async fn missing_done_is_finalised_at_once_with_usage() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::echo().fault(Fault::NoDone).chunk_delay(Duration::from_millis(1)));
    let a = chat(&rig, "main", true, json!({"stream_options": {"include_usage": true}})).await;
    assert!(a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(a.stream_text(), ANSWER);
    // Held until the idle timeout, the stream would have ended with a timeout error instead of [DONE].
    assert!(a.body.contains("\"completion_tokens\":6"), "{}", a.body);
}

#[tokio::test]
async fn context_length_exceeded_goes_to_the_larger_model_or_fails_at_once() {
    let rig = rig().await;
    let too_long = || {
        Reply::error(400, "invalid_request_error", "This model's maximum context length is 8192 tokens")
            .code("context_length_exceeded")
    };
    rig.primary.enqueue(too_long());
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(answer_text(&a), ANSWER);
    assert_eq!((rig.primary.attempt_count(), rig.big.attempt_count(), rig.fallback.attempt_count()), (1, 1, 0));
    assert_eq!(a.served_by(), "b/big-ctx");

    rig.primary.reset();
    rig.primary.enqueue(too_long());
    let a = chat(&rig, "alone", false, json!({})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(rig.primary.attempt_count(), 1, "never retried on the same model");
}

#[tokio::test]
async fn content_filter_is_returned_with_the_providers_reason_after_one_attempt() {
    let rig = rig().await;
    rig.primary.enqueue(
        Reply::error(400, "invalid_request_error", "flagged by the content management policy").code("content_filter"),
    );
    let a = chat(&rig, "main", false, json!({})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], "content_filter");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("content management policy"));
    assert_eq!((rig.primary.attempt_count(), rig.fallback.attempt_count()), (1, 0));
}

#[tokio::test]
async fn a_provider_down_for_a_while_is_skipped_while_open_and_used_again_after_recovery() {
    let rig = rig().await;
    rig.primary.set_default(Reply::error(503, "overloaded", "down"));
    // Three failures open the circuit; from then on requests go straight to the fallback.
    for _ in 0..10 {
        let a = chat(&rig, "breaker", false, json!({})).await;
        assert_eq!(a.served_by(), "f/claude-f", "served by the fallback meanwhile");
    }
    assert_eq!(rig.primary.attempt_count(), 3, "the open circuit spares the primary");
    let circuits = admin_circuits(&rig).await;
    assert_eq!(circuits["p/gpt-b"]["state"], "open", "{circuits}");

    rig.primary.set_default(Reply::echo());
    // After the cool-down one probe goes through, succeeds, and closes the circuit.
    let mut served = String::new();
    // Bounded: the cool-down is 300 ms; 200 tries 20 ms apart give it four seconds and more, then fail clearly.
    for _ in 0..200 {
        let a = chat(&rig, "breaker", false, json!({})).await;
        served = a.served_by().to_string();
        if served == "p/gpt-b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served, "p/gpt-b", "back on the primary after recovery");
    assert_eq!(admin_circuits(&rig).await["p/gpt-b"]["state"], "closed");
    let a = chat(&rig, "breaker", false, json!({})).await;
    assert_eq!(a.served_by(), "p/gpt-b");
}

async fn admin_circuits(rig: &Rig) -> Value {
    let resp = rig.router.clone().oneshot(Request::get("/admin/circuits").body(Body::empty()).unwrap()).await.unwrap();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    v["circuits"].as_array().unwrap().iter().map(|c| (c["target"].as_str().unwrap().to_string(), c.clone())).collect()
}

#[tokio::test]
async fn fail_over_accounting_reports_the_answering_attempt() {
    let rig = rig().await;
    rig.primary.set_default(Reply::error(500, "server_error", "boom"));
    rig.fallback.enqueue(Reply::text("from the fallback with five words"));
    let a = chat(&rig, "main", false, json!({})).await;
    let v = a.json();
    assert_eq!(v["model"], "claude-f");
    assert_eq!(v["usage"]["completion_tokens"], 6, "usage of the attempt that answered");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(a.headers["x-keel-attempts"], "4", "three at the primary, one at the fallback");
    assert_eq!(a.served_by(), "f/claude-f");
}

#[tokio::test]
async fn schema_violations_are_repaired_then_reported() {
    let rig = rig().await;
    rig.primary.enqueue(Reply::text(r#"{"town": "Paris"}"#));
    rig.primary.enqueue(Reply::text(r#"{"city": "Paris"}"#));
    let a = chat(&rig, "structured", false, json!({})).await;
    assert_eq!(answer_text(&a), r#"{"city": "Paris"}"#);
    let repair = &rig.primary.attempts()[1].body["messages"];
    let feedback = repair.as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(feedback.contains("\"city\" is a required property"), "the violation is fed back: {feedback}");

    rig.primary.reset();
    rig.primary.set_default(Reply::text("not json at all"));
    let a = chat(&rig, "structured", false, json!({})).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["error"]["code"], "schema_validation_failed");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{}", a.body);
    assert_eq!(rig.primary.attempt_count(), 2, "one answer and one repair");

    // A request's own json_schema applies too, and a stream is checked before its final event.
    rig.primary.reset();
    rig.primary.set_default(Reply::text(r#"{"n": "x"}"#));
    let schema = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}});
    let a = chat(&rig, "alone", true, json!({"response_format": schema})).await;
    assert!(!a.stream_ended_with_done(), "{}", a.body);
    assert_eq!(a.stream_error().unwrap()["code"], "schema_validation_failed", "{}", a.body);
}
