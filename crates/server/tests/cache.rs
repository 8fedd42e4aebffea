//! The response cache through the HTTP edge (`Router::oneshot`) against the mock upstream: what is served from
//! the cache and what never is, streams replayed in each API's shape, modes per request, Redis shared by two
//! instances, the semantic layer's scope and its persistence across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_cache::ExactBackend;
use keel_testkit::{Fault, MockUpstream, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

fn config(url: &str) -> keel_config::Config {
    let text = format!(
        r#"
        [reliability]
        max_attempts = 1
        [providers.oa]
        kind = "openai"
        base_url = "{url}/v1"
        api_key_env = "KEY"
        [providers.an]
        kind = "anthropic"
        base_url = "{url}"
        api_key_env = "KEY"
        [cache.semantic]
        model = "emb"
        [models.gpt]
        provider = "oa"
        model = "up-gpt"
        cache = {{ mode = "read-write", ttl_seconds = 60 }}
        [models.gpt-other]
        provider = "oa"
        model = "up-gpt"
        cache = {{ mode = "read-write" }}
        [models.uncached]
        provider = "oa"
        model = "up-gpt"
        [models.claude]
        provider = "an"
        model = "up-claude"
        cache = {{ mode = "read-write" }}
        [models.sem]
        provider = "oa"
        model = "up-gpt"
        cache = {{ mode = "read-write", semantic = true, threshold = 0.9 }}
        [models.emb]
        provider = "oa"
        model = "up-emb"
        "#
    );
    let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
    keel_config::parse(&text, &env).unwrap()
}

/// One keel instance: its exact backend and, optionally, a store for the semantic cache.
async fn keel(
    mock: &MockUpstream,
    exact: Arc<dyn ExactBackend>,
    store: Option<Arc<dyn keel_store::CacheStore>>,
) -> Router {
    let cfg = config(&mock.url());
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let target = routes.targets("emb").unwrap()[0].clone();
    let embedder = keel_pipeline::Embedder::new(providers.clone(), target);
    let dims = embedder.embed(vec!["probe".into()]).await.unwrap()[0].len();
    let index = Arc::new(keel_cache::SemanticIndex::new(dims, 1000));
    if let Some(store) = &store {
        keel_pipeline::load_semantic(&index, store).await.unwrap();
    }
    let semantic = Some(keel_pipeline::Semantic { index, embedder, store, channel: None });
    let parts = keel_pipeline::CacheParts::new(exact, semantic);
    let state = keel_server::AppState::from_parts(keel_server::Parts {
        cache: Some(parts),
        ..keel_server::Parts::new(routes, providers, breakers)
    });
    keel_server::router(state, keel_server::ServerLimits { max_body_bytes: 1 << 20, ..Default::default() })
}

async fn memory_keel(mock: &MockUpstream) -> Router {
    keel(mock, Arc::new(keel_cache::MemoryBackend::new(1 << 20)), None).await
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

    fn cache(&self) -> Option<&str> {
        self.headers.get("x-keel-cache").map(|v| v.to_str().unwrap())
    }

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

async fn post(app: &Router, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method("POST").uri(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]})
}

fn chat_calls(mock: &MockUpstream) -> usize {
    mock.attempts().iter().filter(|a| a.path.ends_with("/chat/completions") || a.path.ends_with("/messages")).count()
}

/// Writes to the cache happen off the request path: waits until `check` sees the entry.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the cache entry never appeared");
}

#[tokio::test]
async fn an_identical_request_is_answered_from_the_cache() {
    let mock = MockUpstream::start().await.unwrap();
    let app = memory_keel(&mock).await;
    let first = post(&app, "/v1/chat/completions", chat("gpt", "What is the capital of France?"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache(), Some("miss"));
    let mut second = None;
    eventually(async || {
        let a = post(&app, "/v1/chat/completions", chat("gpt", "What is the capital of France?"), &[]).await;
        let hit = a.cache() == Some("hit");
        second = Some(a);
        hit
    })
    .await;
    let second = second.unwrap();
    assert_eq!(second.json()["choices"], first.json()["choices"], "the same answer");
    assert_ne!(second.json()["id"], first.json()["id"], "under this request's own id");
    assert!(second.headers.get("x-keel-cache-similarity").is_none(), "an exact hit has no similarity");
    let calls = chat_calls(&mock);
    // Anything that can change the answer is another entry: here, the temperature and the alias.
    let mut warmer = chat("gpt", "What is the capital of France?");
    warmer["temperature"] = json!(1.5);
    assert_eq!(post(&app, "/v1/chat/completions", warmer, &[]).await.cache(), Some("miss"));
    let other = post(&app, "/v1/chat/completions", chat("gpt-other", "What is the capital of France?"), &[]).await;
    assert_eq!(other.cache(), Some("miss"), "another route is another key, even to the same upstream model");
    assert_eq!(chat_calls(&mock), calls + 2);
    // An alias without a cache policy is never cached nor labelled.
    let a = post(&app, "/v1/chat/completions", chat("uncached", "hello"), &[]).await;
    assert_eq!(a.cache(), None);
}

#[tokio::test]
async fn streams_are_replayed_with_the_same_event_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let app = memory_keel(&mock).await;
    let mut req = chat("gpt", "Tell me a story about a lighthouse keeper who collects sea glass.");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let live = post(&app, "/v1/chat/completions", req.clone(), &[]).await;
    assert_eq!(live.cache(), Some("miss"));
    let text = |a: &Answer| -> String {
        a.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect()
    };
    let mut replay = None;
    eventually(async || {
        let a = post(&app, "/v1/chat/completions", req.clone(), &[]).await;
        let hit = a.cache() == Some("hit");
        replay = Some(a);
        hit
    })
    .await;
    let replay = replay.unwrap();
    assert_eq!(replay.headers["content-type"], "text/event-stream");
    assert_eq!(text(&replay), text(&live));
    assert_eq!(replay.events().last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        replay.events().iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() > 0, "usage, as asked");
    // The same request not streamed is the same entry, answered whole.
    req["stream"] = json!(false);
    req.as_object_mut().unwrap().remove("stream_options");
    let whole = post(&app, "/v1/chat/completions", req, &[]).await;
    assert_eq!(whole.cache(), Some("hit"));
    assert_eq!(whole.json()["choices"][0]["message"]["content"].as_str().unwrap(), text(&live));
    // Without include_usage, the replay carries no usage chunk.
    let mut plain = chat("gpt", "Tell me a story about a lighthouse keeper who collects sea glass.");
    plain["stream"] = json!(true);
    let a = post(&app, "/v1/chat/completions", plain, &[]).await;
    assert_eq!(a.cache(), Some("hit"));
    assert!(!a.body.contains("\"usage\""), "{}", a.body);
}

#[tokio::test]
async fn anthropic_clients_get_anthropic_streams_from_the_cache() {
    let mock = MockUpstream::start().await.unwrap();
    let app = memory_keel(&mock).await;
    let req = json!({"model": "claude", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "Name three rivers."}]});
    let live = post(&app, "/v1/messages", req.clone(), &[]).await;
    assert_eq!(live.cache(), Some("miss"));
    let names = |a: &Answer| -> Vec<String> {
        a.body.lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_string).collect::<Vec<_>>()
    };
    let mut replay = None;
    eventually(async || {
        let before = chat_calls(&mock);
        let a = post(&app, "/v1/messages", req.clone(), &[]).await;
        let hit = a.cache() == Some("hit");
        if hit {
            assert_eq!(chat_calls(&mock), before, "a hit does not call upstream");
        }
        replay = Some(a);
        hit
    })
    .await;
    let replay = replay.unwrap();
    let events = names(&replay);
    assert_eq!(events.first().map(String::as_str), Some("message_start"));
    assert_eq!(events.last().map(String::as_str), Some("message_stop"));
    assert!(events.iter().any(|e| e == "content_block_delta"));
    let text = |a: &Answer| -> String {
        a.events()
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(text(&replay), text(&live));
}

#[tokio::test]
async fn errors_truncated_and_cut_answers_are_never_stored() {
    let mock = MockUpstream::start().await.unwrap();
    let app = memory_keel(&mock).await;
    let ask = |text: &str| chat("gpt", text);
    // An upstream error (and a rate limit) is passed on, not kept.
    mock.enqueue(Reply::error(500, "server_error", "boom"));
    assert_eq!(post(&app, "/v1/chat/completions", ask("q1"), &[]).await.status, StatusCode::BAD_GATEWAY);
    mock.enqueue(Reply::error(429, "rate_limit_error", "slow down"));
    assert_eq!(post(&app, "/v1/chat/completions", ask("q2"), &[]).await.status, StatusCode::TOO_MANY_REQUESTS);
    // An answer cut by the token limit.
    mock.enqueue(Reply::json(
        200,
        json!({"id": "c", "object": "chat.completion", "created": 1, "model": "up-gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "It was a dark and"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}),
    ));
    assert_eq!(post(&app, "/v1/chat/completions", ask("q3"), &[]).await.status, StatusCode::OK);
    // A stream cut mid-way (it ends with an error event for the client).
    mock.enqueue(Reply::echo().fault(Fault::CutAfterChunks(2)));
    let mut streamed = ask("q4");
    streamed["stream"] = json!(true);
    let cut = post(&app, "/v1/chat/completions", streamed.clone(), &[]).await;
    assert!(cut.body.contains("\"error\""), "{}", cut.body);
    let before = chat_calls(&mock);
    for (q, stream) in [("q1", false), ("q2", false), ("q3", false), ("q4", true)] {
        let mut r = ask(q);
        r["stream"] = json!(stream);
        let a = post(&app, "/v1/chat/completions", r, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{q}");
        assert_eq!(a.cache(), Some("miss"), "{q} was not stored");
    }
    assert_eq!(chat_calls(&mock), before + 4, "every one went upstream again");
}

#[tokio::test]
async fn the_client_chooses_the_mode_per_request() {
    let mock = MockUpstream::start().await.unwrap();
    let app = memory_keel(&mock).await;
    let q = || chat("gpt", "Explain tides in one sentence.");
    let off = post(&app, "/v1/chat/completions", q(), &[("x-keel-cache", "off")]).await;
    assert_eq!(off.cache(), None, "off: not consulted");
    let read = post(&app, "/v1/chat/completions", q(), &[("x-keel-cache", "read")]).await;
    assert_eq!(read.cache(), Some("miss"));
    let write = post(&app, "/v1/chat/completions", q(), &[("x-keel-cache", "write")]).await;
    assert_eq!(write.cache(), Some("bypass"), "write: always upstream, then stored");
    // Neither "off" nor "read" stored anything, "write" did; a read-only request now hits.
    eventually(async || {
        post(&app, "/v1/chat/completions", q(), &[("x-keel-cache", "read")]).await.cache() == Some("hit")
    })
    .await;
    // A client can turn the cache on for an alias whose policy is off.
    let u = || chat("uncached", "Explain tides in one sentence.");
    assert_eq!(post(&app, "/v1/chat/completions", u(), &[("x-keel-cache", "read-write")]).await.cache(), Some("miss"));
    let bad = post(&app, "/v1/chat/completions", q(), &[("x-keel-cache", "sometimes")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["param"], "x-keel-cache");
}

#[tokio::test]
async fn two_instances_share_entries_through_redis() {
    let mock = MockUpstream::start().await.unwrap();
    let prefix = format!("keel:test:{}:{}:", std::process::id(), uuid_like());
    let redis = |p: String| async move {
        Arc::new(keel_cache::RedisBackend::connect("redis://127.0.0.1:6379", &p).await.unwrap())
            as Arc<dyn ExactBackend>
    };
    let a = keel(&mock, redis(prefix.clone()).await, None).await;
    let b = keel(&mock, redis(prefix.clone()).await, None).await;
    let q = || chat("gpt", "Which planet is largest?");
    assert_eq!(post(&a, "/v1/chat/completions", q(), &[]).await.cache(), Some("miss"));
    eventually(async || {
        let before = chat_calls(&mock);
        let hit = post(&b, "/v1/chat/completions", q(), &[]).await.cache() == Some("hit");
        if hit {
            assert_eq!(chat_calls(&mock), before, "the second instance answered from the first one's entry");
        }
        hit
    })
    .await;
    // Entries expire with their route's TTL (60 s here), set on the Redis key.
    let mut conn =
        redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    let _: () = redis::cmd("DEL").arg(&keys[0]).query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn semantic_entries_stay_in_their_scope_and_survive_a_restart() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keel-cache-test-{}-{}", std::process::id(), uuid_like()));
    let url = format!("sqlite://{}", dir.join("keel.db").display());
    let store: Arc<dyn keel_store::Store> = keel_store::open(&url).await.unwrap();
    let app = keel(&mock, Arc::new(keel_cache::MemoryBackend::new(1 << 20)), Some(store.clone())).await;
    let q = || chat("sem", "How do I reset my password?");
    assert_eq!(post(&app, "/v1/chat/completions", q(), &[]).await.cache(), Some("miss"));
    eventually(async || store.cache_load(0).await.unwrap().len() == 1).await;
    // Another system prompt is another scope: never answered from this entry.
    let mut other = q();
    other["messages"][0]["content"] = json!("Answer in French.");
    assert_eq!(post(&app, "/v1/chat/completions", other, &[]).await.cache(), Some("miss"));
    // A restart: a new instance with an empty exact cache loads the semantic entries from the store. The mock's
    // embeddings are equal for equal texts, so the same question is a semantic hit of similarity 1.
    let calls = chat_calls(&mock);
    let restarted = keel(&mock, Arc::new(keel_cache::MemoryBackend::new(1 << 20)), Some(store.clone())).await;
    let a = post(&restarted, "/v1/chat/completions", q(), &[]).await;
    assert_eq!(a.cache(), Some("semantic_hit"));
    let sim: f32 = a.headers["x-keel-cache-similarity"].to_str().unwrap().parse().unwrap();
    assert!(sim > 0.999, "{sim}");
    assert_eq!(chat_calls(&mock), calls, "no upstream call");
    // A different question (the mock's vectors for other texts are unrelated) is a miss.
    assert_eq!(
        post(&restarted, "/v1/chat/completions", chat("sem", "How do I delete my account?"), &[]).await.cache(),
        Some("miss")
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    t ^ N.fetch_add(1, Ordering::Relaxed)
}
