//! The local model behind the whole call stage: its full queue is back-pressure, not a fault.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use keel_local::LocalProvider;
use keel_pipeline::{AttemptOutcome, Call, Endpoint, GatewayRequest, Operation, RequestContext, RequestId, RouteLayer};
use keel_providers::ErrorKind;
use tower::ServiceExt;

#[tokio::test]
async fn a_full_local_queue_neither_opens_the_circuit_nor_is_retried_on_the_same_model() {
    let path = common::model("smollm2");
    let text = format!(
        r#"
        [reliability]
        max_attempts = 3
        backoff_base_ms = 1
        [reliability.circuit]
        consecutive_failures = 1
        min_requests = 1
        [providers.local]
        kind = "local"
        queue_depth = 1
        context_size = 1024
        [models.small]
        provider = "local"
        model = {path:?}
        "#,
        path = path.display().to_string()
    );
    let cfg = keel_config::parse(&text, &HashMap::<String, String>::new()).unwrap();
    let local = LocalProvider::new(&cfg.providers[&"local".into()]).unwrap();
    local.load_chat(&path.display().to_string()).await.unwrap();
    let providers = keel_providers::Providers::default().with(Arc::new(local));
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).unwrap();
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    // The route and call stages, as the request path has them.
    let pipeline =
        tower::ServiceBuilder::new().layer(RouteLayer::new(routes)).service(Call::new(providers, breakers.clone()));
    let request = |i: usize| {
        let req = serde_json::from_value(serde_json::json!({
            "model": "small", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Name a colour."}]
        }))
        .unwrap();
        let ctx = RequestContext::new(RequestId(format!("r{i}").into()), Endpoint::ChatCompletions);
        GatewayRequest { ctx, op: Operation::chat(req) }
    };
    let calls = (0..8).map(|i| pipeline.clone().oneshot(request(i)));
    let answers: Vec<_> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let mut busy = 0;
    for a in &answers {
        let attempts = a.ctx.attempts.snapshot();
        if let Err(e) = &a.result {
            busy += 1;
            assert_eq!(attempts.len(), 1, "a full queue is not retried on the same model: {attempts:?}");
            assert_eq!(attempts[0].outcome, AttemptOutcome::Failed { kind: ErrorKind::Busy, status: None }, "{e}");
        }
    }
    assert!(busy >= 5, "eight at once on a queue of one: most are refused ({busy})");
    let states = breakers.states();
    assert!(states.iter().all(|s| s.state == "closed"), "back-pressure does not open the circuit: {states:?}");
    // And the model serves the next request at once.
    let next = pipeline.clone().oneshot(request(99)).await.unwrap();
    assert!(next.result.is_ok());
}
