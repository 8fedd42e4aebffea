//! The request path of keel as a stack of tower services, outermost stage first.
//!
//! Every stage is a `Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>`: the outcome of a
//! request, success or failure, travels back up the stack inside [`GatewayResponse`] together with its
//! [`RequestContext`], so that an outer stage (the request log) sees every outcome with everything the inner
//! stages recorded. Stages depend on traits (`Provider`), never on concrete implementations.

mod cache;
mod call;
mod context;
pub mod cost;
mod route;

use std::convert::Infallible;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use cache::{CacheLayer, CacheOutcome, CacheParts, Embedder, Saved, Semantic, SemanticStore, load_semantic};
pub use call::{Breakers, Call, CircuitState, Schema};
pub use context::{
    AttemptOutcome, AttemptRecord, Attempts, GatewayError, GatewayRequest, GatewayResponse, InboundApi, Operation,
    Output, RequestContext, RequestId,
};
pub use route::{RouteLayer, RoutePlan, RouteTable};

/// The assembled request path, cheap to clone per request.
pub type Pipeline = BoxCloneSyncService<GatewayRequest, GatewayResponse, Infallible>;

/// Builds the request path from its parts, without a cache.
pub fn build(routes: RouteTable, providers: keel_providers::Providers, breakers: Breakers) -> Pipeline {
    build_with_cache(routes, providers, breakers, None)
}

/// Builds the request path from its parts. Later stages (guard) wrap this same stack.
pub fn build_with_cache(
    routes: RouteTable,
    providers: keel_providers::Providers,
    breakers: Breakers,
    cache: Option<CacheParts>,
) -> Pipeline {
    let stack = ServiceBuilder::new()
        .layer(RouteLayer::new(routes)) // model alias -> its plan: targets in order, reliability policy
        .option_layer(cache.map(CacheLayer::new)) // exact and semantic answers, per the route's cache policy
        .service(Call::new(providers, breakers)); // retries, fallbacks, timeouts, circuit breaking
    BoxCloneSyncService::new(stack)
}
