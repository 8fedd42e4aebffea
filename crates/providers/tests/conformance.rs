//! One conformance battery run against every provider adapter. A vendor supplies only its fixture: how it is
//! configured, where its requests land, and how it authenticates. The upstream is the testkit's mock, which
//! speaks each wire format exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use keel_config::{ModelTarget, ProviderId};
use keel_providers::{ChatStream, ErrorKind, Provider, ProviderError, Providers};
use keel_testkit::{Fault, MockToolCall, MockUpstream, Reply};
use keel_types::{ChatChunk, ChatRequest, EmbeddingInput, EmbeddingsRequest, Message, Role};
use serde_json::{Value, json};

/// What differs between vendors, and nothing else.
struct Fixture {
    name: &'static str,
    /// The provider table, with `{url}` standing for the mock's address.
    config: &'static str,
    /// The path (with query) a chat request must reach.
    chat_path: &'static str,
    embeddings_path: Option<&'static str>,
    /// The header that carries the key, and its exact value.
    auth: (&'static str, &'static str),
    /// Vendor-specific checks on the body sent upstream for [`request`].
    check_body: fn(&Value),
    /// Whether usage arrives at the end of a stream. Mistral sends it unasked; the OpenAI-shaped mock only when
    /// asked, so it is not expected here.
    stream_usage: bool,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "openai",
        config: "kind = \"openai\"\nbase_url = \"{url}/v1\"\napi_key_env = \"KEY\"",
        chat_path: "/v1/chat/completions",
        embeddings_path: Some("/v1/embeddings"),
        auth: ("authorization", "Bearer sk-conformance"),
        check_body: |b| {
            assert_eq!(b["seed"], 7);
            assert_eq!(b["max_completion_tokens"], 50);
            assert_eq!(b["reasoning_effort"], "low", "unknown fields pass through");
        },
        stream_usage: true,
    },
    Fixture {
        name: "azure",
        config: "kind = \"azure\"\nbase_url = \"{url}\"\napi_key_env = \"KEY\"\napi_version = \"2024-10-21\"",
        chat_path: "/openai/deployments/dep-1/chat/completions?api-version=2024-10-21",
        embeddings_path: Some("/openai/deployments/dep-1/embeddings?api-version=2024-10-21"),
        auth: ("api-key", "sk-conformance"),
        check_body: |b| assert_eq!(b["max_completion_tokens"], 50),
        stream_usage: true,
    },
    Fixture {
        name: "vllm",
        config: "kind = \"vllm\"\nbase_url = \"{url}/v1\"",
        chat_path: "/v1/chat/completions",
        embeddings_path: Some("/v1/embeddings"),
        auth: ("authorization", ""),
        check_body: |b| {
            assert_eq!(b["max_tokens"], 50, "self-hosted servers get the legacy max_tokens");
            assert!(b.get("max_completion_tokens").is_none());
        },
        stream_usage: true,
    },
    Fixture {
        name: "mistral",
        config: "kind = \"mistral\"\nbase_url = \"{url}/v1\"\napi_key_env = \"KEY\"",
        chat_path: "/v1/chat/completions",
        embeddings_path: Some("/v1/embeddings"),
        auth: ("authorization", "Bearer sk-conformance"),
        check_body: |b| {
            assert_eq!(b["random_seed"], 7);
            assert!(b.get("seed").is_none() && b.get("user").is_none());
            assert!(b.get("stream_options").is_none());
        },
        stream_usage: false,
    },
    Fixture {
        name: "groq",
        config: "kind = \"groq\"\nbase_url = \"{url}/openai/v1\"\napi_key_env = \"KEY\"",
        chat_path: "/openai/v1/chat/completions",
        embeddings_path: None,
        auth: ("authorization", "Bearer sk-conformance"),
        check_body: |b| assert_eq!(b["seed"], 7),
        stream_usage: true,
    },
    Fixture {
        name: "anthropic",
        config: "kind = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"KEY\"",
        chat_path: "/v1/messages",
        embeddings_path: None,
        auth: ("x-api-key", "sk-conformance"),
        check_body: |b| {
            assert_eq!(b["max_tokens"], 50);
            assert_eq!(b["system"], "Be brief.");
            assert_eq!(b["messages"][0]["role"], "user");
        },
        stream_usage: true,
    },
];

struct Harness {
    mock: MockUpstream,
    provider: std::sync::Arc<dyn Provider>,
    target: ModelTarget,
    fixture: &'static Fixture,
}

async fn harness(fixture: &'static Fixture) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!("[providers.p]\n{}\n", fixture.config.replace("{url}", &mock.url()));
    let env = HashMap::from([("KEY".to_string(), "sk-conformance".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
    let providers = Providers::from_config(cfg.providers.values()).unwrap();
    let provider = providers.get(&ProviderId::from("p")).unwrap().clone();
    let target = ModelTarget {
        provider: ProviderId::from("p"),
        model: "up-model".into(),
        deployment: Some("dep-1".into()),
        supports_prefill: false,
    };
    Harness { mock, provider, target, fixture }
}

fn request(stream: bool) -> ChatRequest {
    let mut req: ChatRequest = serde_json::from_value(json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there world"}
        ],
        "max_completion_tokens": 50,
        "seed": 7,
        "user": "u-1",
        "reasoning_effort": "low"
    }))
    .unwrap();
    req.stream = stream;
    req
}

async fn collect(stream: ChatStream) -> (Vec<ChatChunk>, Option<ProviderError>) {
    let items: Vec<_> = stream.collect().await;
    let mut chunks = Vec::new();
    let mut error = None;
    for (i, item) in items.iter().enumerate() {
        match item {
            Ok(c) => chunks.push(c.clone()),
            Err(e) => {
                assert_eq!(i, items.len() - 1, "an error is always the last item");
                error = Some(e.clone());
            }
        }
    }
    (chunks, error)
}

fn text_of(chunks: &[ChatChunk]) -> String {
    chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.delta.content.as_deref()).collect()
}

/// Reassembles streamed tool calls: (id, name, arguments) per OpenAI tool index.
fn tool_calls_of(chunks: &[ChatChunk]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for d in chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.delta.tool_calls.as_ref()).flatten() {
        let i = d.index as usize;
        if calls.len() <= i {
            calls.resize(i + 1, Default::default());
        }
        if let Some(id) = &d.id {
            calls[i].0.clone_from(id);
        }
        if let Some(f) = &d.function {
            if let Some(n) = &f.name {
                calls[i].1.push_str(n);
            }
            if let Some(a) = &f.arguments {
                calls[i].2.push_str(a);
            }
        }
    }
    calls
}

async fn each(check: impl AsyncFn(Harness)) {
    for fixture in FIXTURES {
        check(harness(fixture).await).await;
    }
}

#[tokio::test]
async fn non_stream_answer_usage_and_request_shape() {
    each(async |h: Harness| {
        let resp = h.provider.chat(&h.target, request(false)).await.unwrap();
        let name = h.fixture.name;
        assert_eq!(resp.choices[0].message.content.as_ref().unwrap().text(), "echo: hello there world", "{name}");
        let usage = resp.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (5, 4, 9), "{name}");
        assert_eq!(resp.model, "up-model", "{name}");
        let attempts = h.mock.attempts();
        assert_eq!(attempts.len(), 1, "{name}: one attempt");
        let a = &attempts[0];
        assert_eq!(a.path, h.fixture.chat_path, "{name}");
        assert_eq!(a.header(h.fixture.auth.0).unwrap_or_default(), h.fixture.auth.1, "{name}");
        assert_eq!(a.body["model"], "up-model", "{name}");
        (h.fixture.check_body)(&a.body);
    })
    .await;
}

#[tokio::test]
async fn stream_answer_ends_with_usage() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        let stream = h.provider.chat_stream(&h.target, request(true)).await.unwrap();
        let (chunks, error) = collect(stream).await;
        assert!(error.is_none(), "{name}: {error:?}");
        assert_eq!(text_of(&chunks), "echo: hello there world", "{name}");
        if h.fixture.stream_usage {
            let usage = chunks.iter().rev().find_map(|c| c.usage.clone()).expect("usage chunk");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 4), "{name}");
        }
        let finish = chunks.iter().flat_map(|c| &c.choices).find_map(|c| c.finish_reason.clone());
        assert_eq!(finish, Some(keel_types::FinishReason::Stop), "{name}");
        let body = &h.mock.attempts()[0].body;
        assert_eq!(body["stream"], true, "{name}");
        if name != "anthropic" && name != "mistral" {
            assert_eq!(body["stream_options"]["include_usage"], true, "{name}: usage is always requested");
        }
    })
    .await;
}

#[tokio::test]
async fn tool_calls_non_stream_and_stream() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        let calls = vec![
            MockToolCall::new("call_1", "get_weather", r#"{"city":"Zürich","unit":"c"}"#),
            MockToolCall::new("call_2", "get_time", r#"{"tz":"Europe/Zurich","fmt":"\"24h\""}"#),
        ];
        h.mock.enqueue(Reply::tool_calls(calls.clone()));
        h.mock.enqueue(Reply::tool_calls(calls.clone()));
        let resp = h.provider.chat(&h.target, request(false)).await.unwrap();
        let got: Vec<_> = resp.choices[0]
            .message
            .tool_calls
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| {
                (c.id.clone(), c.function.name.clone(), serde_json::from_str::<Value>(&c.function.arguments).unwrap())
            })
            .collect();
        let want: Vec<_> = calls
            .iter()
            .map(|c| (c.id.clone(), c.name.clone(), serde_json::from_str::<Value>(&c.arguments).unwrap()))
            .collect();
        assert_eq!(got, want, "{name}: non-stream");
        assert_eq!(resp.choices[0].finish_reason, Some(keel_types::FinishReason::ToolCalls), "{name}");

        let stream = h.provider.chat_stream(&h.target, request(true)).await.unwrap();
        let (chunks, error) = collect(stream).await;
        assert!(error.is_none(), "{name}: {error:?}");
        let got: Vec<_> = tool_calls_of(&chunks)
            .into_iter()
            .map(|(id, n, a)| (id, n, serde_json::from_str::<Value>(&a).unwrap()))
            .collect();
        assert_eq!(got, want, "{name}: stream");
    })
    .await;
}

#[tokio::test]
async fn upstream_errors_are_classified() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        let cases = [
            (
                Reply::error(429, "rate_limit_error", "slow down").header("retry-after", "2"),
                ErrorKind::RateLimited,
                true,
            ),
            (Reply::error(500, "server_error", "boom"), ErrorKind::Server, true),
            (
                Reply::error(400, "invalid_request_error", "This model's maximum context length is 8192 tokens")
                    .code("context_length_exceeded"),
                ErrorKind::ContextLengthExceeded,
                false,
            ),
            (Reply::error(401, "authentication_error", "bad key"), ErrorKind::Auth, false),
            (Reply::raw(502, "text/html", "<html>bad gateway</html>"), ErrorKind::Server, true),
            (Reply::raw(200, "text/html", "<html>not json</html>"), ErrorKind::Protocol, false),
        ];
        for (reply, kind, retryable) in cases {
            h.mock.enqueue(reply);
            let e = h.provider.chat(&h.target, request(false)).await.unwrap_err();
            assert_eq!((e.kind, e.retryable()), (kind, retryable), "{name}: {e}");
            if kind == ErrorKind::RateLimited {
                assert_eq!(e.retry_after, Some(Duration::from_secs(2)), "{name}");
                assert!(e.message.contains("slow down"), "{name}: {e}");
                assert_eq!(e.status, Some(429));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn broken_streams_end_with_an_error_never_silently() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        // A body that ends after the finish reason but without the end marker holds a complete answer.
        h.mock.enqueue(Reply::echo().fault(Fault::NoDone));
        let stream = h.provider.chat_stream(&h.target, request(true)).await.unwrap();
        let (chunks, error) = collect(stream).await;
        assert!(error.is_none(), "{name}: NoDone after the finish reason is complete: {error:?}");
        assert_eq!(text_of(&chunks), "echo: hello there world", "{name}");
        if h.fixture.stream_usage {
            assert!(chunks.iter().any(|c| c.usage.is_some()), "{name}: usage survives a missing end marker");
        }
        for (fault, kind) in
            [(Fault::CutAfterChunks(3), ErrorKind::StreamIncomplete), (Fault::MalformedChunkAt(2), ErrorKind::Protocol)]
        {
            h.mock.enqueue(Reply::echo().fault(fault));
            let stream = h.provider.chat_stream(&h.target, request(true)).await.unwrap();
            let (_, error) = collect(stream).await;
            let error = error.unwrap_or_else(|| panic!("{name}: {fault:?} must end in an error"));
            assert_eq!(error.kind, kind, "{name}: {fault:?}: {error}");
        }
        h.mock.enqueue(Reply::echo().fault(Fault::ResetBeforeHeaders));
        let Err(e) = h.provider.chat_stream(&h.target, request(true)).await else {
            panic!("{name}: a reset must fail the call")
        };
        assert!(e.retryable(), "{name}: reset before headers is retryable: {e}");
    })
    .await;
}

#[tokio::test]
async fn embeddings_where_the_vendor_has_them() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        let req = EmbeddingsRequest {
            model: "alias".into(),
            input: EmbeddingInput::Many(vec!["one two".into(), "three".into()]),
            encoding_format: None,
            dimensions: Some(4),
            user: None,
            extra: Default::default(),
        };
        let result = h.provider.embeddings(&h.target, req).await;
        let Some(path) = h.fixture.embeddings_path else {
            if name == "anthropic" {
                assert_eq!(result.unwrap_err().kind, ErrorKind::Unsupported);
            }
            return;
        };
        let resp = result.unwrap();
        assert_eq!(resp.data.len(), 2, "{name}");
        assert_eq!(resp.data[0].embedding.as_array().unwrap().len(), 4, "{name}");
        assert_eq!(resp.usage.unwrap().prompt_tokens, 3, "{name}");
        assert_eq!(h.mock.attempts()[0].path, path, "{name}");
    })
    .await;
}

#[test]
fn message_constructor_is_canonical() {
    let m = Message::new(Role::User, "hi");
    assert_eq!(serde_json::to_value(&m).unwrap(), json!({"role": "user", "content": "hi"}));
}

/// A provider of `kind` at the mock, with `extra` lines in its table.
async fn provider_with(kind_lines: &str, mock: &MockUpstream) -> std::sync::Arc<dyn Provider> {
    let text = format!("[providers.p]\n{}\n", kind_lines.replace("{url}", &mock.url()));
    let env = HashMap::from([("KEY".to_string(), "sk-conformance".to_string())]);
    let cfg = keel_config::parse(&text, &env).unwrap();
    Providers::from_config(cfg.providers.values()).unwrap().get(&ProviderId::from("p")).unwrap().clone()
}

fn target() -> ModelTarget {
    ModelTarget { provider: ProviderId::from("p"), model: "up-model".into(), deployment: None, supports_prefill: false }
}

fn sse(events: &[&str]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

const CHUNK_TEXT: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
const CHUNK_STOP: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
const CHUNK_USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
const CHUNK_TEXT_1: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":1,"delta":{"content":"Ho"},"finish_reason":null}]}"#;

#[tokio::test]
async fn a_stream_without_its_end_marker_is_complete_only_when_every_choice_finished() {
    let mock = MockUpstream::start().await.unwrap();
    let p = provider_with("kind = \"openai_compatible\"\nbase_url = \"{url}/v1\"", &mock).await;
    // Finished, with usage, body closed cleanly without [DONE]: a complete answer.
    mock.enqueue(Reply::raw(200, "text/event-stream", sse(&[CHUNK_TEXT, CHUNK_STOP, CHUNK_USAGE])));
    let (chunks, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&chunks), "Hi");
    assert!(chunks.iter().any(|c| c.usage.is_some()));
    // Text, then a clean close without a finish reason: cut, however cleanly.
    mock.enqueue(Reply::raw(200, "text/event-stream", sse(&[CHUNK_TEXT])));
    let (_, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    assert_eq!(error.map(|e| e.kind), Some(ErrorKind::StreamIncomplete));
    // Two choices (n = 2), only the first finished: cut.
    mock.enqueue(Reply::raw(200, "text/event-stream", sse(&[CHUNK_TEXT, CHUNK_TEXT_1, CHUNK_STOP])));
    let (_, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    assert_eq!(error.map(|e| e.kind), Some(ErrorKind::StreamIncomplete));
    // With the marker, the vendor's word is final.
    mock.enqueue(Reply::raw(200, "text/event-stream", sse(&[CHUNK_TEXT, CHUNK_STOP, "[DONE]"])));
    let (_, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
}

#[tokio::test]
async fn answers_larger_than_the_limit_fail_clearly() {
    let mock = MockUpstream::start().await.unwrap();
    let p =
        provider_with("kind = \"openai_compatible\"\nbase_url = \"{url}/v1\"\nmax_response_bytes = 4096", &mock).await;
    let big = "x".repeat(10_000);
    mock.enqueue(Reply::text(big.clone()));
    let e = p.chat(&target(), request(false)).await.unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::Protocol, Some("response_too_large")), "{e}");
    assert!(e.message.contains("max_response_bytes (4096 bytes)"), "{e}");
    // A stream: what fits is delivered, then one error.
    mock.enqueue(Reply::text(big));
    let (_, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    let error = error.expect("a stream over the limit ends in an error");
    assert_eq!((error.kind, error.code.as_deref()), (ErrorKind::Protocol, Some("response_too_large")), "{error}");
    // One endless line: refused at the line bound, whatever the total limit.
    let p = provider_with("kind = \"openai_compatible\"\nbase_url = \"{url}/v1\"", &mock).await;
    mock.enqueue(Reply::raw(200, "text/event-stream", format!("data: {}", "y".repeat(3 << 20))));
    let (_, error) = collect(p.chat_stream(&target(), request(true)).await.unwrap()).await;
    assert_eq!(error.map(|e| (e.kind, e.code)), Some((ErrorKind::Protocol, Some("response_too_large".into()))));
}

#[tokio::test]
async fn what_anthropic_cannot_express_is_unsupported_so_a_route_can_fall_over() {
    let mock = MockUpstream::start().await.unwrap();
    let p = provider_with("kind = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"KEY\"", &mock).await;
    let mut req = request(false);
    req.extra.insert("n".into(), json!(2));
    let e = p.chat(&target(), req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(e.message.starts_with("n: "), "the field is named: {e}");
    assert_eq!(mock.attempt_count(), 0, "nothing was sent");
}

#[tokio::test]
async fn an_anthropic_clients_fields_and_beta_header_reach_anthropic_and_no_one_else() {
    let mock = MockUpstream::start().await.unwrap();
    let anthropic = provider_with("kind = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"KEY\"", &mock).await;
    let openai = provider_with("kind = \"openai\"\nbase_url = \"{url}/v1\"\napi_key_env = \"KEY\"", &mock).await;
    let mut req = request(false);
    req.extra.insert("inference_geo".into(), json!("eu"));
    req.anthropic = Some(Box::new(keel_types::AnthropicOrigin {
        fields: vec!["inference_geo".into()],
        beta: Some("context-1m-2025-08-07".into()),
    }));
    anthropic.chat(&target(), req.clone()).await.unwrap();
    openai.chat(&target(), req).await.unwrap();
    let attempts = mock.attempts();
    let (to_anthropic, to_openai) = (&attempts[0], &attempts[1]);
    assert_eq!(to_anthropic.body["inference_geo"], "eu");
    assert_eq!(to_anthropic.header("anthropic-beta"), Some("context-1m-2025-08-07"));
    assert!(to_openai.body.get("inference_geo").is_none(), "OpenAI rejects unknown Anthropic fields");
    assert_eq!(to_openai.header("anthropic-beta"), None);
}

#[tokio::test]
async fn metadata_reaches_an_openai_compatible_server() {
    let mock = MockUpstream::start().await.unwrap();
    let p = provider_with("kind = \"openai_compatible\"\nbase_url = \"{url}/v1\"", &mock).await;
    let mut req = request(false);
    req.metadata = Some(json!({"team": "search"}));
    p.chat(&target(), req).await.unwrap();
    assert_eq!(mock.attempts()[0].body["metadata"], json!({"team": "search"}));
}

#[tokio::test]
async fn an_upstream_error_that_quotes_the_key_does_not_pass_it_on() {
    each(async |h: Harness| {
        let name = h.fixture.name;
        // The provider's own key where it has one; a vendor key's shape where it has none (self-hosted).
        let key = if h.fixture.auth.1.is_empty() { "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t" } else { "sk-conformance" };
        let echoing = format!("Incorrect API key provided: {key} (header: Bearer {key})");
        h.mock.enqueue(Reply::error(401, "authentication_error", echoing.clone()));
        let e = h.provider.chat(&h.target, request(false)).await.unwrap_err();
        assert!(!e.message.contains(key), "{name}: {e}");
        assert!(e.message.contains("Incorrect API key provided"), "{name}: the rest of the message stays: {e}");
        h.mock.enqueue(Reply::error(401, "authentication_error", echoing));
        let Err(e) = h.provider.chat_stream(&h.target, request(true)).await else {
            panic!("{name}: a 401 fails the stream's start")
        };
        assert!(!e.message.contains(key), "{name}: {e}");
    })
    .await;
}
