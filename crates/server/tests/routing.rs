//! Routers through keel's request path (issue 16), against mock upstreams: a rules router sends each request
//! to its rule's alias and says why; a cascade serves a cheap answer that passes its check and escalates one
//! that fails, streamed or not, recording every attempt once; an alias with `choose = "cheapest"` tries its
//! cheapest target first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_testkit::{MockUpstream, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Rig {
    router: Router,
    pipeline: keel_pipeline::Pipeline,
    small: MockUpstream,
    large: MockUpstream,
}

async fn rig() -> Rig {
    let (small, large) = (MockUpstream::start().await.unwrap(), MockUpstream::start().await.unwrap());
    let text = format!(
        r#"
        [reliability]
        max_attempts = 1
        total_timeout_ms = 10000
        [providers.s]
        kind = "openai_compatible"
        base_url = "{s}/v1"
        [providers.l]
        kind = "openai_compatible"
        base_url = "{l}/v1"
        [prices."s/tiny"]
        input = 0.1
        output = 0.4
        [prices."l/huge"]
        input = 2.0
        output = 8.0

        [models.small]
        provider = "s"
        model = "tiny"
        [models.large]
        provider = "l"
        model = "huge"
        [models.either]
        provider = "l"
        model = "huge"
        fallbacks = ["small"]
        choose = "cheapest"

        [routers.auto]
        default = "large"
        rules = [
          {{ to = "small", tags = ["bulk"] }},
          {{ to = "small", tasks = ["classification"], tools = false }},
          {{ to = "triage", metadata = {{ team = "support" }} }},
        ]

        [routers.triage]
        cascade = ["small", "large"]
        check = {{ type = "labels", labels = ["positive", "negative"] }}

        [routers.strict]
        cascade = ["small", "large"]
        check = {{ type = "labels", labels = ["positive", "negative"] }}
        stream = "refuse"

        [routers.graded]
        cascade = ["small", "large"]
        check = {{ type = "judge", model = "large", rubric = "The answer is correct.", min_score = 4 }}

        [routers.structured]
        cascade = ["small", "large"]
        check = {{ type = "schema" }}

        [routers.confident]
        cascade = ["small", "large"]
        check = {{ type = "logprob", min_mean_logprob = -0.5 }}
        "#,
        s = small.url(),
        l = large.url(),
    );
    let cfg = keel_config::parse(&text, &HashMap::<String, String>::new()).unwrap_or_else(|e| panic!("{e}"));
    let kinds = cfg.providers.iter().map(|(id, p)| (id.clone(), p.kind)).collect();
    let prices = keel_pipeline::cost::Prices::new(cfg.prices.clone(), kinds);
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::build(cfg.models.values(), cfg.routers.values(), Some(&prices)).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let pipeline = keel_pipeline::Pipeline::new(
        tower::ServiceBuilder::new()
            .layer(keel_pipeline::RouteLayer::new(routes.clone()))
            .service(keel_pipeline::Call::new(providers.clone(), breakers.clone())),
    );
    let router = keel_server::router(
        keel_server::AppState::new(routes, providers, breakers),
        keel_server::ServerLimits { max_body_bytes: 1 << 20, ..Default::default() },
    );
    Rig { router, pipeline, small, large }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> String {
        let v: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
    }

    fn stream_text(&self) -> String {
        self.body
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect()
    }

    fn ended_with_done(&self) -> bool {
        self.body.trim_end().ends_with("data: [DONE]")
    }
}

async fn chat(rig: &Rig, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::post("/v1/chat/completions").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = rig.router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The route stage and the call stage alone: the request's context after it was served.
async fn served(rig: &Rig, body: Value) -> keel_pipeline::GatewayResponse {
    let req: keel_types::ChatRequest = serde_json::from_value(body).unwrap();
    let ctx = keel_pipeline::RequestContext::new(
        keel_pipeline::RequestId("routed".into()),
        keel_pipeline::Endpoint::ChatCompletions,
    );
    let op = keel_pipeline::Operation::chat(req);
    let mut ctx = ctx;
    ctx.prompt = keel_pipeline::Prompt::of(&op);
    rig.pipeline.clone().oneshot(keel_pipeline::GatewayRequest { ctx, op }).await.unwrap()
}

#[tokio::test]
async fn a_rules_router_sends_each_request_to_the_first_matching_rule_and_says_why() {
    let rig = rig().await;
    rig.small.set_default(Reply::text("from small"));
    rig.large.set_default(Reply::text("from large"));

    let a = chat(&rig, ask("auto", "Write a poem about the sea."), &[("x-keel-tags", "nightly, bulk")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), ("from small", "small"));
    assert_eq!(a.header("x-keel-route-reason"), "rule 1 (tag = bulk)");

    let a = chat(&rig, ask("auto", "Classify this review as positive or negative: it broke in a day."), &[]).await;
    assert_eq!(
        (a.header("x-keel-route"), a.header("x-keel-route-reason")),
        ("small", "rule 2 (tools = false, task = classification)")
    );

    let a = chat(&rig, ask("auto", "Write a poem about the sea."), &[]).await;
    assert_eq!(
        (a.text().as_str(), a.header("x-keel-route"), a.header("x-keel-route-reason")),
        ("from large", "large", "default")
    );
    assert_eq!((rig.small.attempt_count(), rig.large.attempt_count()), (2, 1));
    // What the upstream is asked for is the alias's model, not the router's name.
    assert_eq!(rig.large.attempts()[0].body["model"], "huge");

    // A router is a model a client can list.
    let req = Request::get("/v1/models").body(Body::empty()).unwrap();
    let resp = rig.router.clone().oneshot(req).await.unwrap();
    let list: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"auto") && ids.contains(&"triage") && ids.contains(&"large"), "{ids:?}");
}

#[tokio::test]
async fn a_rule_can_hand_the_request_to_a_cascade() {
    let rig = rig().await;
    rig.small.enqueue(Reply::text("Negative."));
    let a = chat(&rig, ask("auto", "My order never came."), &[("x-keel-metadata", r#"{"team": "support"}"#)]).await;
    assert_eq!(a.text(), "Negative.");
    assert_eq!(a.header("x-keel-route"), "small");
    assert_eq!(
        a.header("x-keel-route-reason"),
        "rule 3 (metadata.team = support); cascade triage: small passed labels"
    );
    assert_eq!(rig.large.attempt_count(), 0);
}

#[tokio::test]
async fn a_cascade_serves_a_cheap_answer_that_passes_and_escalates_one_that_fails() {
    let rig = rig().await;
    rig.small.enqueue(Reply::text(" Positive.\n"));
    let a = chat(&rig, ask("triage", "Great phone, love it."), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), (" Positive.\n", "small"));
    assert_eq!((rig.small.attempt_count(), rig.large.attempt_count()), (1, 0));
    assert_eq!(a.header("x-keel-served-by"), "s/tiny");

    rig.small.enqueue(Reply::text("It is hard to say, it depends."));
    rig.large.enqueue(Reply::text("negative"));
    let a = chat(&rig, ask("triage", "It broke after a day but support was kind."), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), ("negative", "large"));
    assert_eq!(a.header("x-keel-route-reason"), "cascade: small failed labels (not one of the labels); large served");
    assert_eq!(a.header("x-keel-served-by"), "l/huge");
    assert_eq!(a.header("x-keel-attempts"), "2");

    // The context says the same, with the escalated attempt kept, and its usage, so that its cost counts.
    rig.small.enqueue(Reply::text("maybe"));
    rig.large.enqueue(Reply::text("positive"));
    let resp = served(&rig, ask("triage", "Fine I guess")).await;
    assert!(resp.result.is_ok());
    let attempts = resp.ctx.attempts.snapshot();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a.model.as_str(), a.outcome.as_str())).collect();
    assert_eq!(outcomes, [("tiny", "escalated"), ("huge", "ok")]);
    let used = attempts[0].usage.expect("the escalated answer's usage");
    assert!(used.input > 0 && used.output > 0 && !used.estimated, "{used:?}");
    let d = resp.ctx.routing.clone().expect("a decision");
    assert_eq!((d.router.as_str(), d.to.as_str(), d.escalations), ("triage", "large", 1));
    assert!(d.escalation_time > std::time::Duration::ZERO);
    assert_eq!(resp.ctx.served_by().map(|a| a.model), Some("huge".to_string()));
}

#[tokio::test]
async fn a_streamed_request_to_a_cascade_gets_nothing_before_the_check() {
    let rig = rig().await;
    // A passing cheap answer is asked for in full, checked, then replayed as a stream.
    rig.small.enqueue(Reply::text("positive"));
    let mut body = ask("triage", "Love it");
    body["stream"] = json!(true);
    let a = chat(&rig, body.clone(), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!((a.stream_text().as_str(), a.header("x-keel-route")), ("positive", "small"));
    assert!(a.ended_with_done(), "{}", a.body);
    assert_ne!(rig.small.attempts()[0].body["stream"], json!(true), "the cheap step is not streamed");

    // A failing one escalates, and the last step streams as it comes.
    rig.small.enqueue(Reply::text("no idea at all"));
    rig.large.enqueue(Reply::text("negative"));
    let a = chat(&rig, body.clone(), &[]).await;
    assert_eq!((a.stream_text().as_str(), a.header("x-keel-route")), ("negative", "large"));
    assert!(a.ended_with_done(), "{}", a.body);
    assert_eq!(rig.large.attempts()[0].body["stream"], json!(true));

    // A cascade that does not stream says so in the API's error format.
    body["model"] = json!("strict");
    let a = chat(&rig, body, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let err: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(err["error"]["param"], "stream");
    assert!(err["error"]["message"].as_str().unwrap().contains("does not stream"), "{}", a.body);
}

#[tokio::test]
async fn a_judged_cascade_escalates_a_low_grade_and_counts_the_judge() {
    let rig = rig().await;
    rig.small.enqueue(Reply::text("The capital of Australia is Sydney."));
    rig.large.enqueue_many([Reply::text("SCORE: 2\nSydney is not the capital."), Reply::text("Canberra.")]);
    let resp = served(&rig, ask("graded", "What is the capital of Australia?")).await;
    let Ok(keel_pipeline::Output::Chat(answer)) = resp.result else { panic!("an answer") };
    assert_eq!(answer.choices[0].message.content.as_ref().unwrap().text(), "Canberra.");
    let outcomes: Vec<_> = resp.ctx.attempts.snapshot().iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["escalated", "judge", "ok"]);
    let judge_prompt = rig.large.attempts()[0].body.to_string();
    for part in ["The answer is correct.", "What is the capital of Australia?", "Sydney"] {
        assert!(judge_prompt.contains(part), "{part} not in {judge_prompt}");
    }
    let d = resp.ctx.routing.unwrap();
    assert_eq!(d.reason, "cascade: small failed judge (judged 2/5); large served");

    rig.small.enqueue(Reply::text("Canberra."));
    rig.large.enqueue(Reply::text("**Score:** 5"));
    let resp = served(&rig, ask("graded", "What is the capital of Australia?")).await;
    let outcomes: Vec<_> = resp.ctx.attempts.snapshot().iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "judge"], "the cheap answer served, the judge's grade set aside");
    assert_eq!(resp.ctx.served_by().map(|a| a.model), Some("tiny".to_string()));
}

#[tokio::test]
async fn a_schema_cascade_escalates_an_answer_that_stays_invalid_and_a_request_without_a_schema() {
    let rig = rig().await;
    let mut body = ask("structured", "Where is the Eiffel tower? Answer as JSON.");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "place", "schema":
        {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}});
    rig.small.set_default(Reply::text("Paris, I believe"));
    rig.large.enqueue(Reply::text(r#"{"city": "Paris"}"#));
    let a = chat(&rig, body.clone(), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), (r#"{"city": "Paris"}"#, "large"));
    assert!(
        a.header("x-keel-route-reason").starts_with("cascade: small failed schema"),
        "{}",
        a.header("x-keel-route-reason")
    );

    rig.small.reset();
    rig.small.enqueue(Reply::text(r#"{"city": "Paris"}"#));
    let a = chat(&rig, body, &[]).await;
    assert_eq!(a.header("x-keel-route"), "small");

    // Nothing to check against: the cheap answer cannot pass.
    rig.small.enqueue(Reply::text("Paris"));
    rig.large.enqueue(Reply::text("Paris, France"));
    let a = chat(&rig, ask("structured", "Where is the Eiffel tower?"), &[]).await;
    assert_eq!(a.header("x-keel-route"), "large");
    assert!(a.header("x-keel-route-reason").contains("no schema to check against"));
}

fn with_logprobs(text: &str, logprobs: &[f64]) -> Reply {
    let content: Vec<Value> =
        logprobs.iter().map(|l| json!({"token": "t", "logprob": l, "top_logprobs": []})).collect();
    Reply::json(
        200,
        json!({"id": "c", "object": "chat.completion", "created": 1, "model": "tiny",
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text},
                            "logprobs": {"content": content}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    )
}

#[tokio::test]
async fn a_logprob_cascade_asks_for_log_probabilities_and_escalates_an_unsure_answer() {
    let rig = rig().await;
    rig.small.enqueue(with_logprobs("Paris", &[-0.1, -0.2]));
    let a = chat(&rig, ask("confident", "Capital of France?"), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), ("Paris", "small"));
    assert_eq!(rig.small.attempts()[0].body["logprobs"], json!(true), "the step asks for them");
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert!(v["choices"][0].get("logprobs").is_none_or(Value::is_null), "the client did not ask: {}", a.body);

    rig.small.enqueue(with_logprobs("Lyon", &[-2.0, -1.5]));
    rig.large.enqueue(Reply::text("Paris"));
    let a = chat(&rig, ask("confident", "Capital of France?"), &[]).await;
    assert_eq!(a.header("x-keel-route"), "large");
    assert_eq!(
        a.header("x-keel-route-reason"),
        "cascade: small failed logprob (mean log-probability -1.750 under -0.5); large served"
    );

    // A provider that returns none cannot pass.
    rig.small.enqueue(Reply::text("Paris"));
    rig.large.enqueue(Reply::text("Paris"));
    let a = chat(&rig, ask("confident", "Capital of France?"), &[]).await;
    assert!(
        a.header("x-keel-route-reason").contains("returned no log-probabilities"),
        "{}",
        a.header("x-keel-route-reason")
    );
}

#[tokio::test]
async fn an_alias_that_chooses_the_cheapest_tries_its_cheapest_target_first() {
    let rig = rig().await;
    rig.small.enqueue(Reply::text("cheap answer"));
    let a = chat(&rig, ask("either", "hello"), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-served-by")), ("cheap answer", "s/tiny"));
    assert_eq!(rig.large.attempt_count(), 0);
    // The dearer target is still the fallback.
    rig.small.enqueue(Reply::error(503, "server_error", "down"));
    rig.large.enqueue(Reply::text("dear answer"));
    let a = chat(&rig, ask("either", "hello"), &[]).await;
    assert_eq!(a.header("x-keel-served-by"), "l/huge");
}

/// A learned router embeds the prompt through its embeddings alias and sends it to the small alias when the
/// classifier's probability reaches the threshold, else to the large one; a prompt it cannot embed goes to the
/// large alias; a rules router may hand a request to it. The weights here are built by hand from the mock's
/// (deterministic) vectors so that one prompt scores high and another low, whatever the two vectors are.
#[tokio::test]
async fn a_learned_router_sends_to_the_small_alias_only_prompts_predicted_to_pass() {
    let (small, large) = (MockUpstream::start().await.unwrap(), MockUpstream::start().await.unwrap());
    small.set_default(Reply::text("from small"));
    large.set_default(Reply::text("from large"));
    let easy = "Which planet is known as the red planet? A. Mars B. Venus";
    let hard = "Prove that there are infinitely many primes p such that p + 2 is prime.";
    let (e, h) = (keel_testkit::embedding(easy), keel_testkit::embedding(hard));
    // w = 20 (e - h), b = 0: p(easy) = sigmoid(20 (1 - cos)) > 1/2 > p(hard) = sigmoid(-20 (1 - cos)).
    let weights: Vec<f32> = e.iter().zip(&h).map(|(a, b)| 20.0 * (a - b)).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, model: &str| {
        let path = dir.path().join(name);
        let w = json!({"format": "keel-learned-router/1", "embedding_model": model, "weights": weights,
                       "bias": 0.0, "threshold": 0.5, "trained": {}});
        std::fs::write(&path, w.to_string()).unwrap();
        path.display().to_string()
    };
    let (good, other) = (file("w.json", "mock-embed"), file("other.json", "text-embedding-3-small"));
    let (s_url, l_url) = (small.url(), large.url());
    let config = |weights: &str| {
        format!(
            r#"
            [reliability]
            max_attempts = 1
            total_timeout_ms = 10000
            [providers.s]
            kind = "openai_compatible"
            base_url = "{s}/v1"
            [providers.l]
            kind = "openai_compatible"
            base_url = "{l}/v1"
            [providers.gone]
            kind = "openai_compatible"
            base_url = "http://127.0.0.1:1/v1"
            [models.small]
            provider = "s"
            model = "tiny"
            [models.large]
            provider = "l"
            model = "huge"
            [models.embed]
            provider = "s"
            model = "mock-embed"
            [models.lost]
            provider = "gone"
            model = "mock-embed"
            [routers.guess]
            learned = {{ weights = "{weights}", small = "small", large = "large", embedding = "embed" }}
            [routers.blind]
            learned = {{ weights = "{weights}", small = "small", large = "large", embedding = "lost" }}
            [routers.front]
            default = "guess"
            rules = [{{ to = "small", tags = ["bulk"] }}]
            "#,
            s = s_url,
            l = l_url,
        )
    };
    let cfg = keel_config::parse(&config(&good), &HashMap::<String, String>::new()).unwrap_or_else(|e| panic!("{e}"));
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).unwrap();
    let routes = keel_pipeline::RouteTable::build(cfg.models.values(), cfg.routers.values(), None).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let pipeline = keel_pipeline::Pipeline::new(
        tower::ServiceBuilder::new()
            .layer(keel_pipeline::RouteLayer::new(routes.clone()))
            .service(keel_pipeline::Call::new(providers.clone(), breakers.clone())),
    );
    let router = keel_server::router(
        keel_server::AppState::new(routes, providers, breakers),
        keel_server::ServerLimits { max_body_bytes: 1 << 20, ..Default::default() },
    );
    let rig = Rig { router, pipeline, small, large };

    let a = chat(&rig, ask("guess", easy), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), ("from small", "small"));
    let reason = a.header("x-keel-route-reason").to_string();
    assert!(reason.starts_with("learned: P(pass) ") && reason.ends_with(" >= 0.50"), "{reason}");
    // The prompt was embedded through the embeddings alias: the small provider's mock, with the prompt's text.
    let embedded: Vec<Value> =
        rig.small.attempts().into_iter().filter(|a| a.path.ends_with("/embeddings")).map(|a| a.body).collect();
    assert_eq!(embedded.len(), 1);
    assert_eq!((embedded[0]["model"].as_str(), &embedded[0]["input"]), (Some("mock-embed"), &json!([easy])));

    let a = chat(&rig, ask("guess", hard), &[]).await;
    assert_eq!((a.text().as_str(), a.header("x-keel-route")), ("from large", "large"));
    assert!(a.header("x-keel-route-reason").ends_with(" < 0.50"), "{}", a.header("x-keel-route-reason"));

    // Through a rules router: its reason, then the learned router's.
    let a = chat(&rig, ask("front", easy), &[]).await;
    assert_eq!(a.header("x-keel-route"), "small");
    assert!(
        a.header("x-keel-route-reason").starts_with("default; learned: P(pass)"),
        "{}",
        a.header("x-keel-route-reason")
    );
    let a = chat(&rig, ask("front", hard), &[("x-keel-tags", "bulk")]).await;
    assert_eq!((a.header("x-keel-route"), a.header("x-keel-route-reason")), ("small", "rule 1 (tag = bulk)"));

    // An embeddings alias that cannot answer: the large alias serves, and the reason says why.
    let a = chat(&rig, ask("blind", easy), &[]).await;
    assert_eq!((a.status, a.text().as_str(), a.header("x-keel-route")), (StatusCode::OK, "from large", "large"));
    assert!(
        a.header("x-keel-route-reason").starts_with("learned: embedding failed"),
        "{}",
        a.header("x-keel-route-reason")
    );

    // Weights trained on another embeddings model are refused when the routes are built.
    let cfg = keel_config::parse(&config(&other), &HashMap::<String, String>::new()).unwrap();
    let e = keel_pipeline::RouteTable::build(cfg.models.values(), cfg.routers.values(), None).unwrap_err();
    assert!(e.to_string().contains("was trained on embeddings of \"text-embedding-3-small\""), "{e}");
}
