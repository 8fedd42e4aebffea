//! SmolLM2-135M-Instruct through the `local` provider: exact usage, determinism under a seed, limits, stop
//! sequences, streaming through the same chunk shape as any provider, JSON-schema-constrained output, and the
//! bounded queue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use keel_config::{ModelTarget, ProviderId};
use keel_local::LocalProvider;
use keel_providers::{ErrorKind, Provider};
use keel_types::{ChatRequest, FinishReason};
use serde_json::json;

async fn provider(extra: &str) -> (Arc<LocalProvider>, ModelTarget) {
    let path = common::model("smollm2");
    let text = format!("[providers.local]\nkind = \"local\"\ncontext_size = 1024\n{extra}\n");
    let cfg = keel_config::parse(&text, &HashMap::<String, String>::new()).unwrap();
    let p = LocalProvider::new(&cfg.providers[&ProviderId::from("local")]).unwrap();
    let name = path.to_str().unwrap().to_string();
    p.load_chat(&name).await.unwrap();
    let target = ModelTarget { provider: "local".into(), model: name, deployment: None, supports_prefill: false };
    (Arc::new(p), target)
}

fn request(body: serde_json::Value) -> ChatRequest {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    v.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn text(resp: &keel_types::ChatResponse) -> String {
    resp.choices[0].message.content.as_ref().unwrap().text()
}

#[tokio::test]
async fn greedy_answers_are_deterministic_with_exact_usage() {
    let (p, t) = provider("").await;
    let req = request(json!({"temperature": 0, "max_tokens": 24}));
    let a = p.chat(&t, req.clone()).await.unwrap();
    let b = p.chat(&t, req).await.unwrap();
    assert!(!text(&a).trim().is_empty());
    assert_eq!(text(&a), text(&b), "greedy decoding is deterministic");
    let usage = a.usage.unwrap();
    assert!(usage.prompt_tokens > 10, "the chat template's tokens are counted: {usage:?}");
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 24, "{usage:?}");
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

#[tokio::test]
async fn a_seed_makes_sampling_repeatable() {
    let (p, t) = provider("").await;
    let req = request(json!({"temperature": 1.0, "top_p": 0.9, "seed": 42, "max_tokens": 16}));
    let a = text(&p.chat(&t, req.clone()).await.unwrap());
    let b = text(&p.chat(&t, req).await.unwrap());
    assert_eq!(a, b);
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_stop_sequences_cut_the_answer() {
    let (p, t) = provider("").await;
    let r = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 5}))).await.unwrap();
    assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(r.usage.unwrap().completion_tokens, 5);

    let full = text(&p.chat(&t, request(json!({"temperature": 0, "max_tokens": 24}))).await.unwrap());
    let word = full.split_whitespace().nth(2).expect("a few words").to_string();
    let cut = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 24, "stop": [word.clone()]}))).await.unwrap();
    let cut_text = text(&cut);
    assert_eq!(cut.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(!cut_text.contains(&word), "{cut_text:?} stops before {word:?}");
    assert!(full.starts_with(&cut_text), "{full:?} / {cut_text:?}");
}

#[tokio::test]
async fn streaming_gives_the_same_answer_token_by_token_with_usage() {
    let (p, t) = provider("").await;
    let whole = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 20}))).await.unwrap();
    let mut req = request(json!({"temperature": 0, "max_tokens": 20}));
    req.stream = true;
    let chunks: Vec<_> = p.chat_stream(&t, req).await.unwrap().collect().await;
    let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    let streamed: String = chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.delta.content.clone()).collect();
    assert_eq!(streamed, text(&whole));
    assert!(chunks.len() > 3, "token by token");
    assert_eq!(chunks.last().unwrap().usage, whole.usage, "the final chunk carries the exact usage");
    assert!(chunks.iter().flat_map(|c| &c.choices).any(|c| c.finish_reason.is_some()));
}

#[tokio::test]
async fn json_schema_output_is_always_valid() {
    let (p, t) = provider("").await;
    let schema = json!({
        "type": "object",
        // Bounded lengths: the grammar then guarantees a complete object within the token budget.
        "properties": {"city": {"type": "string", "maxLength": 40}, "population": {"type": "integer", "maximum": 100000000}},
        "required": ["city", "population"],
        "additionalProperties": false
    });
    for seed in [1, 2, 3] {
        let req = request(json!({
            "temperature": 0.8, "seed": seed, "max_tokens": 120,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
        }));
        let answer = text(&p.chat(&t, req).await.unwrap());
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
        assert!(v["city"].is_string() && v["population"].is_i64(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    }
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_tools_are_refused_clearly() {
    let (p, t) = provider("queue_depth = 1").await;
    let req = request(json!({"temperature": 0, "max_tokens": 40}));
    let calls: Vec<_> = (0..6).map(|_| p.chat(&t, req.clone())).collect();
    let results = futures::future::join_all(calls).await;
    let busy = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.kind == ErrorKind::Busy)).count();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.health(), None, "a full queue says nothing about the model's health: {e}");
        assert!(!e.retryable(), "not retried on the same model: {e}");
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // One may run and one may wait; the rest are refused at once rather than queued without bound.
    assert!((1..=2).contains(&ok), "{ok} served");
    assert_eq!(busy, 6 - ok, "the others are refused at once (429 at the edge)");

    let tools = request(json!({"tools": [{"type": "function", "function": {"name": "f"}}]}));
    let e = p.chat(&t, tools).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
}

#[tokio::test]
async fn an_abandoned_generation_stops_and_frees_the_worker() {
    let (p, t) = provider("queue_depth = 1").await;
    let (chat, _) = p.stats();
    // Far more than the context holds: capped at the context window, never refused or run past it.
    let long = request(json!({
        "temperature": 0,
        "max_tokens": 4_000_000,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]
    }));
    // The caller gives up (a timeout, a client gone): the future is dropped while the model generates.
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(500), p.chat(&t, long)).await;
    assert!(gave_up.is_err(), "the story takes longer than half a second");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while chat.cancelled.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "the abandoned generation never stopped");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The worker is free: with a queue of one, a new request is served, not refused.
    let next = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 4}))).await.unwrap();
    assert_eq!(next.usage.unwrap().completion_tokens, 4);
}

/// The default queue takes a small burst: eight clients at once are all answered, none refused as busy.
#[tokio::test]
async fn the_default_queue_takes_a_burst_of_eight() {
    let (p, t) = provider("").await;
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (p, t) = (p.clone(), t.clone());
            tokio::spawn(async move { p.chat(&t, request(json!({"temperature": 0, "max_tokens": 2}))).await })
        })
        .collect();
    for c in burst {
        let answer = c.await.unwrap();
        assert!(answer.is_ok(), "{:?}", answer.err());
    }
    assert_eq!(p.stats().0.busy.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A `max_tokens` far beyond the context window is capped at it: the answer ends with `length` when the
/// window is full, never refused and never run past it.
#[tokio::test]
async fn max_tokens_beyond_the_context_window_is_capped_at_it() {
    let path = common::model("smollm2");
    let config = "[providers.local]\nkind = \"local\"\ncontext_size = 128\n";
    let cfg = keel_config::parse(config, &HashMap::<String, String>::new()).unwrap();
    let p = LocalProvider::new(&cfg.providers[&ProviderId::from("local")]).unwrap();
    let name = path.to_str().unwrap().to_string();
    p.load_chat(&name).await.unwrap();
    let t = ModelTarget { provider: "local".into(), model: name, deployment: None, supports_prefill: false };
    let r = p
        .chat(
            &t,
            request(json!({
                "temperature": 0,
                "max_tokens": 4_000_000,
                "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
            })),
        )
        .await
        .unwrap();
    let usage = r.usage.clone().unwrap();
    assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Length), "{:?}", text(&r));
    assert!(usage.prompt_tokens + usage.completion_tokens <= 128, "{usage:?} overruns the 128-token window");
    assert!(usage.completion_tokens >= 64, "the window is used: {usage:?}");
}

#[tokio::test]
async fn without_sampling_settings_the_models_recommended_ones_apply() {
    common::model("smollm2");
    let config = "[providers.local]\nkind = \"local\"\ncontext_size = 1024\n";
    let cfg = keel_config::parse(config, &HashMap::<String, String>::new()).unwrap();
    let p = LocalProvider::new(&cfg.providers[&ProviderId::from("local")]).unwrap();
    // Loaded by its packaged name, whose model card recommends temperature 0.2 and top_p 0.9 (at the API's
    // default of 1.0 the 135M model rambles).
    p.load_chat("smollm2").await.unwrap();
    let t =
        ModelTarget { provider: "local".into(), model: "smollm2".into(), deployment: None, supports_prefill: false };
    let mut paris = 0;
    for seed in 0..5 {
        let a = p.chat(&t, request(json!({"seed": seed, "max_tokens": 24}))).await.unwrap();
        paris += usize::from(text(&a).contains("Paris"));
    }
    assert!(paris >= 4, "at the recommended low temperature the small model answers Paris ({paris}/5)");
}

#[tokio::test]
async fn log_probabilities_come_with_each_token_when_asked() {
    let (p, t) = provider("").await;
    let plain = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 12}))).await.unwrap();
    assert!(plain.choices[0].logprobs.is_none(), "not asked, not sent");
    let a = p.chat(&t, request(json!({"temperature": 0, "max_tokens": 12, "logprobs": true}))).await.unwrap();
    assert_eq!(text(&a), text(&plain), "asking for them does not change the answer");
    let tokens = a.choices[0].logprobs.as_ref().unwrap()["content"].as_array().unwrap().clone();
    assert_eq!(tokens.len() as u64, a.usage.as_ref().unwrap().completion_tokens, "one per generated token");
    let joined: String = tokens.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined.trim(), text(&a).trim(), "the tokens spell the answer");
    for t in &tokens {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && lp.is_finite(), "{t}");
    }
    // Greedy decoding picks the likeliest token: its probability is at least as high as any other's, so the
    // first token of a plain factual answer is far from uniform over the 49k-token vocabulary.
    assert!(tokens[0]["logprob"].as_f64().unwrap() > -(49_152f64).ln() / 2.0, "{:?}", tokens[0]);
}
