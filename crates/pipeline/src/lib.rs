//! The request path's stages that know nothing of HTTP, each a tower layer: scope (tenant and cache mode),
//! route (alias to plan), per-alias admission, grounding (retrieved passages in the prompt), guardrails, the response cache, and the call (retries, fallbacks, timeouts,
//! circuit breaking, streams). The server composes them with its own stages (log, key checks, shutdown) in one
//! function, `keel_server::stack`, which reads top to bottom as a request flows.
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
mod embed;
pub mod ground;
pub mod guard;
mod route;
pub mod router;
mod scope;
pub mod template;

pub use admission::{Limiter, RouteLimitLayer, RouteLimits};
pub use cache::{
    CacheLayer, CacheOutcome, CacheParts, CacheStats, EmbedError, Embedder, Saved, Semantic, insert_row, load_semantic,
};
pub use call::{Breakers, Call, Change, CircuitState, InvalidSchema, Schema, Transition};
pub use context::{
    Aside, AttemptId, AttemptOutcome, AttemptRecord, AttemptUsage, Attempts, ClientFacts, Denial, Endpoint,
    GatewayError, GatewayRequest, GatewayResponse, InboundApi, Operation, Output, Principal, Prompt, Rejection,
    RejectionKind, RequestContext, RequestId, Settle, Settlement,
};
pub use embed::{EmbedRouteError, RoutedEmbedder};
pub use ground::{GroundLayer, Passage, RetrieveError, Retriever};
pub use guard::{GuardKind, GuardLayer, GuardRefusal, GuardReport, GuardVerdict};
pub use route::{RouteError, RouteLayer, RoutePlan, RouteTable};
pub use router::{CascadePlan, Check, RouteDecision};
pub use scope::ScopeLayer;
pub use template::{TemplateUse, Templates};

/// A request path (or part of one), cheap to clone per request.
pub type Pipeline = tower::util::BoxCloneSyncService<GatewayRequest, GatewayResponse, std::convert::Infallible>;
