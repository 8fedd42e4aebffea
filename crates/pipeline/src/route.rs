//! The route stage: resolves the model alias the client named into the ordered targets that may serve it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::{ModelAlias, ModelTarget, ReliabilityPolicy};
use tower::{Layer, Service};

use crate::call::Schema;
use crate::{GatewayError, GatewayRequest, GatewayResponse};

/// How one model alias is served: its targets in order and the policy for trying them.
#[derive(Debug)]
pub struct RoutePlan {
    pub alias: String,
    pub targets: Vec<ModelTarget>,
    pub context_fallback: Vec<ModelTarget>,
    pub policy: ReliabilityPolicy,
    pub schema: Option<Schema>,
    /// Everything about the route that can change an answer (alias, targets, schema, repairs), as text: part
    /// of every cache key, so that a changed route never serves what the old one answered.
    pub fingerprint: String,
    pub cache: keel_config::CachePolicy,
    /// Grounded answers: the collection every chat request retrieves from.
    pub retrieval: Option<keel_config::Retrieval>,
    /// The route's guardrails, compiled; `None`: no guard runs.
    pub guard: Option<Arc<crate::guard::RouteGuard>>,
}

/// A route that cannot be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("models.{alias}.response_schema: {error}")]
    Schema { alias: String, error: crate::call::InvalidSchema },
    #[error("models.{alias}.guard: {error}")]
    Guard { alias: String, error: keel_guard::InitError },
}

/// Model aliases and their plans, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    aliases: Arc<HashMap<String, Arc<RoutePlan>>>,
}

impl RouteTable {
    /// Builds the plans; a route schema that does not compile is an error naming the alias.
    pub fn new<'a>(aliases: impl IntoIterator<Item = &'a ModelAlias>) -> Result<Self, RouteError> {
        let mut map = HashMap::new();
        let mut engines: Option<Arc<crate::guard::Engines>> = None;
        for a in aliases {
            let schema = match &a.response_schema {
                Some(s) => {
                    Some(Schema::compile(s).map_err(|e| RouteError::Schema { alias: a.name.clone(), error: e })?)
                }
                None => None,
            };
            let target =
                |t: &ModelTarget| serde_json::json!([t.provider.0.as_ref(), t.model, t.deployment, t.supports_prefill]);
            let fingerprint = serde_json::json!({
                "alias": a.name,
                "targets": a.targets.iter().map(target).collect::<Vec<_>>(),
                "context_fallback": a.context_fallback.iter().map(target).collect::<Vec<_>>(),
                "schema": a.response_schema,
                "max_repairs": a.reliability.max_repairs,
                "rag": a.retrieval.as_ref().map(|r| (r.collection.as_str(), r.k, format!("{:?}", r.mode))),
            })
            .to_string();
            let guard = match a.guard.clone().filter(|g| g.any()) {
                Some(policy) => {
                    let guard_error = |error| RouteError::Guard { alias: a.name.clone(), error };
                    let shared = match &engines {
                        Some(e) => e.clone(),
                        None => {
                            let e = Arc::new(crate::guard::Engines::new().map_err(guard_error)?);
                            engines = Some(e.clone());
                            e
                        }
                    };
                    Some(Arc::new(
                        crate::guard::RouteGuard::new(&a.name, &fingerprint, policy, shared).map_err(guard_error)?,
                    ))
                }
                None => None,
            };
            let plan = RoutePlan {
                guard,
                fingerprint,
                cache: a.cache,
                alias: a.name.clone(),
                targets: a.targets.clone(),
                context_fallback: a.context_fallback.clone(),
                policy: a.reliability.clone(),
                schema,
                retrieval: a.retrieval.clone(),
            };
            map.insert(a.name.clone(), Arc::new(plan));
        }
        Ok(Self { aliases: Arc::new(map) })
    }

    pub fn plan(&self, model: &str) -> Option<&Arc<RoutePlan>> {
        self.aliases.get(model)
    }

    pub fn targets(&self, model: &str) -> Option<&[ModelTarget]> {
        self.aliases.get(model).map(|p| p.targets.as_slice())
    }

    /// Every target of every plan with the circuit policy of the first plan naming it.
    pub fn all_targets(&self) -> Vec<(ModelTarget, keel_config::CircuitPolicy)> {
        let mut plans: Vec<_> = self.aliases.values().collect();
        plans.sort_by(|a, b| a.alias.cmp(&b.alias));
        plans
            .iter()
            .flat_map(|p| p.targets.iter().chain(&p.context_fallback).map(|t| (t.clone(), p.policy.circuit.clone())))
            .collect()
    }

    /// Whether any alias answers from a collection (the grounding stage is there only then).
    pub fn grounded(&self) -> bool {
        self.aliases.values().any(|p| p.retrieval.is_some())
    }

    /// Whether any alias runs a guard (the guard stage is there only then).
    pub fn guarded(&self) -> bool {
        self.aliases.values().any(|p| p.guard.is_some())
    }

    /// The alias names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.aliases.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: RouteTable,
}

impl RouteLayer {
    pub fn new(table: RouteTable) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route { table: self.table.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    table: RouteTable,
    inner: S,
}

impl<S> Service<GatewayRequest> for Route<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let Some(plan) = self.table.plan(req.op.model()) else {
            let error = GatewayError::UnknownModel { model: req.op.model().to_string() };
            return futures::future::ready(Ok(GatewayResponse { ctx: req.ctx, result: Err(error) })).boxed();
        };
        req.ctx.route = Some(plan.clone());
        // The clone that was driven to readiness serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move { inner.call(req).await }.boxed()
    }
}
