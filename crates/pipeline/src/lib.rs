//! The request path of keel as a stack of tower services, outermost stage first.
//!
//! Every stage is a `Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>`: the outcome of a
//! request, success or failure, travels back up the stack inside [`GatewayResponse`] together with its
//! [`RequestContext`], so that an outer stage (the request log) sees every outcome with everything the inner
//! stages recorded. Stages depend on traits (`Provider`), never on concrete implementations.

pub mod admission;
mod cache;
mod call;
mod context;
pub mod cost;
mod route;

use std::convert::Infallible;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use admission::{Limiter, RouteLimitLayer, RouteLimits};
pub use cache::{
    CacheLayer, CacheOutcome, CacheParts, CacheStats, EmbedError, Embedder, Saved, Semantic, load_semantic,
};
pub use call::{Breakers, Call, CircuitState, Schema};
pub use context::{
    AttemptId, AttemptOutcome, AttemptRecord, AttemptUsage, Attempts, GatewayError, GatewayRequest, GatewayResponse,
    InboundApi, Operation, Output, RequestContext, RequestId,
};
pub use route::{RouteLayer, RoutePlan, RouteTable};

/// The assembled request path, cheap to clone per request.
pub type Pipeline = BoxCloneSyncService<GatewayRequest, GatewayResponse, Infallible>;

/// Builds the request path from its parts, without a cache or per-alias limits (tests of the inner stages).
pub fn build(routes: RouteTable, providers: keel_providers::Providers, breakers: Breakers) -> Pipeline {
    build_with(Parts { routes, providers, breakers, cache: None, limits: RouteLimits::default() })
}

/// Everything the request path is made of.
pub struct Parts {
    pub routes: RouteTable,
    pub providers: keel_providers::Providers,
    pub breakers: Breakers,
    pub cache: Option<CacheParts>,
    /// Per-alias admission; empty: none.
    pub limits: RouteLimits,
}

/// Builds the request path from its parts, outermost stage first. Later stages (guard) are one more line here.
pub fn build_with(parts: Parts) -> Pipeline {
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(parts.routes)) // model alias -> its plan: targets in order, reliability policy
        .layer(RouteLimitLayer::new(parts.limits)) // at most N in flight per alias, a short queue, then 503
        .option_layer(parts.cache.map(CacheLayer::new)) // exact and semantic answers, per the route's cache policy
        .service(Call::new(parts.providers, parts.breakers)); // retries, fallbacks, timeouts, circuit breaking
    BoxCloneSyncService::new(stack)
}
