//! The request path of the API endpoints, in one function that reads top to bottom as a request flows.
//!
//! Before it, every route passes the HTTP layers of [`crate::router`], which act on the request's head alone,
//! before its body is read, so that refusing is cheap: request id → header limits → instance admission →
//! identity. Then the endpoint's handler parses the body in the API the client called and hands the request
//! here; what comes back, it encodes in that API. Everything in between is a stage of this stack.

use std::convert::Infallible;

use keel_pipeline::{
    CacheLayer, Call, GatewayResponse, GroundLayer, GuardLayer, RouteLayer, RouteLimitLayer, ScopeLayer,
};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::keys::{AccessLayer, LimitsLayer};
use crate::log::{Inbound, LogLayer};
use crate::shutdown::ShutdownLayer;

/// The assembled request path, cheap to clone per request.
pub(crate) type Stack = BoxCloneSyncService<Inbound, GatewayResponse, Infallible>;

/// The stages, outermost first. Adding a stage (a guardrail, retrieval) is adding its line here.
pub(crate) fn request_path(p: &crate::Parts) -> Stack {
    let stack = ServiceBuilder::new()
        // Opens the log row and finishes it exactly once with what the client got: a refusal, an error, an
        // answer and its cost, a stream's end, a disconnect. Outermost, so it sees every other stage's outcome.
        .layer(LogLayer::new(p.log.clone()))
        // A stream still open at the shutdown deadline ends with an error event (inside the log: its row says so).
        .layer(ShutdownLayer(p.shutdown.clone()))
        // Whose cache entries the request may use (the caller's tenant) and the cache mode it asked for.
        .layer(ScopeLayer)
        // A key names only its models: refused before the alias is looked up, so aliases cannot be probed.
        .layer(AccessLayer)
        // The model alias becomes its plan: targets in order, reliability policy, cache policy. A router picks the
        // alias; a learned one embeds the prompt first, through the call stage (the embeddings alias's own route).
        .layer(RouteLayer::new(p.routes.clone()).embedding_through(Call::new(p.providers.clone(), p.breakers.clone())))
        // The key's rate limits and budgets; the worst case on the plan's targets is reserved, settled by the log.
        .option_layer(p.auth.clone().map(LimitsLayer::new))
        // At most N requests in flight per alias, a short queue, then 503: a stalled upstream holds its share.
        .layer(RouteLimitLayer::new(p.route_limits.clone()))
        // A grounded alias: passages retrieved for the conversation go into the prompt as reference data, and
        // back to the client as `sources`. Before the cache, so that a cached answer is keyed on its passages.
        // Only when an alias is grounded: other configurations pay nothing for it per request.
        .option_layer(p.routes.grounded().then(|| GroundLayer::new(p.collections.clone().map(crate::rag::retriever))))
        // Guardrails: injection checks on user turns, tool results and the passages just retrieved; personal data
        // redacted (or refused) before it leaves; placeholders restored and answers checked on the way back, on
        // streams as they pass. Outside the cache, so cached answers are restored and checked like fresh ones.
        .option_layer(p.routes.guarded().then_some(GuardLayer))
        // Exact and semantic answers, per the route's cache policy and the request's mode.
        .option_layer(p.cache.clone().map(CacheLayer::new))
        // Retries, fallbacks, timeouts, circuit breaking, streams that never end silently.
        .service(Call::new(p.providers.clone(), p.breakers.clone()));
    BoxCloneSyncService::new(stack)
}
