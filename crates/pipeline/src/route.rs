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
use crate::router::learned::{Weights, prompt_text};
use crate::router::{CascadePlan, Check, Features, LearnedPlan, RouteDecision, RouterPlan, first_match};
use crate::{GatewayError, GatewayRequest, GatewayResponse, Operation};

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
    /// A cascade router's plan: its steps, asked cheapest first by the call stage (`targets` is then every
    /// step's, for breakers and budgets; guard, cache and grounding are the last step's).
    pub cascade: Option<Arc<CascadePlan>>,
}

/// A route that cannot be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("models.{alias}.response_schema: {error}")]
    Schema { alias: String, error: crate::call::InvalidSchema },
    #[error("models.{alias}.guard: {error}")]
    Guard { alias: String, error: keel_guard::InitError },
    #[error("routers.{router}: {error}")]
    Router { router: String, error: String },
}

/// Model aliases and their plans, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Plans by the name a client sends: every alias, and every cascade router.
    aliases: Arc<HashMap<String, Arc<RoutePlan>>>,
    routers: Arc<HashMap<String, RouterPlan>>,
}

impl RouteTable {
    /// Builds the plans of the aliases alone (no routers; targets in the written order).
    pub fn new<'a>(aliases: impl IntoIterator<Item = &'a ModelAlias>) -> Result<Self, RouteError> {
        Self::build(aliases, std::iter::empty(), None)
    }

    /// Builds every plan: the aliases' (targets by price where an alias says `choose = "cheapest"` and
    /// `prices` are given) and the routers'. A route schema, guard or check that does not compile is an error
    /// naming its alias or router.
    pub fn build<'a>(
        aliases: impl IntoIterator<Item = &'a ModelAlias>,
        routers: impl IntoIterator<Item = &'a keel_config::Router>,
        prices: Option<&crate::cost::Prices>,
    ) -> Result<Self, RouteError> {
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
            let mut targets = a.targets.clone();
            if let (keel_config::TargetOrder::Cheapest, Some(prices)) = (a.choose, prices) {
                // A stable sort: equal prices keep the written order; an unknown price goes last.
                targets.sort_by(|x, y| {
                    let p = |t: &ModelTarget| {
                        prices.price(&t.provider, &t.model).map_or(f64::INFINITY, |p| p.input + p.output)
                    };
                    p(x).total_cmp(&p(y))
                });
            }
            let plan = RoutePlan {
                guard,
                fingerprint,
                cache: a.cache,
                alias: a.name.clone(),
                targets,
                context_fallback: a.context_fallback.clone(),
                policy: a.reliability.clone(),
                schema,
                retrieval: a.retrieval.clone(),
                cascade: None,
            };
            map.insert(a.name.clone(), Arc::new(plan));
        }
        let mut router_plans = HashMap::new();
        let alias_plans: std::collections::BTreeMap<String, Arc<RoutePlan>> =
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for r in routers {
            let plan = match &r.kind {
                keel_config::RouterKind::Rules { rules, default } => {
                    RouterPlan::Rules { rules: rules.clone(), default: default.clone() }
                }
                keel_config::RouterKind::Cascade(c) => {
                    let error = |error: String| RouteError::Router { router: r.name.clone(), error };
                    let steps = c
                        .steps
                        .iter()
                        .map(|s| alias_plans.get(s).cloned().ok_or_else(|| error(format!("unknown alias {s:?}"))))
                        .collect::<Result<Vec<_>, _>>()?;
                    let check = Check::compile(&c.check, &alias_plans).map_err(error)?;
                    let Some(last) = steps.last().cloned() else {
                        return Err(error("a cascade needs at least two aliases".into()));
                    };
                    let mut targets: Vec<ModelTarget> = Vec::new();
                    for t in steps.iter().flat_map(|s| s.targets.iter().chain(&s.context_fallback)) {
                        if !targets.contains(t) {
                            targets.push(t.clone());
                        }
                    }
                    let fingerprint = serde_json::json!({
                        "router": r.name,
                        "steps": steps.iter().map(|s| s.fingerprint.as_str()).collect::<Vec<_>>(),
                        "check": format!("{:?}", c.check),
                    })
                    .to_string();
                    let cascade = CascadePlan { router: r.name.clone(), steps, check, stream: c.stream };
                    map.insert(
                        r.name.clone(),
                        Arc::new(RoutePlan {
                            alias: r.name.clone(),
                            targets,
                            context_fallback: Vec::new(),
                            policy: last.policy.clone(),
                            schema: None,
                            fingerprint,
                            cache: last.cache,
                            retrieval: last.retrieval.clone(),
                            guard: last.guard.clone(),
                            cascade: Some(Arc::new(cascade)),
                        }),
                    );
                    RouterPlan::Cascade
                }
                keel_config::RouterKind::Learned(l) => {
                    let error = |error: String| RouteError::Router { router: r.name.clone(), error };
                    let side =
                        |a: &str| alias_plans.get(a).cloned().ok_or_else(|| error(format!("unknown alias {a:?}")));
                    let (small, large, embedding) = (side(&l.small)?, side(&l.large)?, side(&l.embedding)?);
                    // Read once at start-up, not on the request path.
                    let weights = Weights::load(&l.weights).map_err(error)?;
                    // The vectors must come from the model the classifier was trained on, whichever target serves.
                    if let Some(other) = embedding.targets.iter().find(|t| t.model != weights.embedding_model) {
                        return Err(error(format!(
                            "{} was trained on embeddings of {:?}, but alias {:?} embeds with {:?}",
                            l.weights.display(),
                            weights.embedding_model,
                            l.embedding,
                            other.model
                        )));
                    }
                    let threshold = l.threshold.map_or(weights.threshold, |t| t as f32);
                    RouterPlan::Learned(Arc::new(LearnedPlan {
                        weights,
                        threshold,
                        small,
                        large,
                        embedding: l.embedding.clone(),
                    }))
                }
            };
            router_plans.insert(r.name.clone(), plan);
        }
        Ok(Self { aliases: Arc::new(map), routers: Arc::new(router_plans) })
    }

    /// The plan that serves a request naming `model` and the router's decision when `model` is a router; or a
    /// learned router to ask (it needs the prompt's embedding), with the reason that led there.
    pub(crate) fn decide(&self, model: &str, features: &Features<'_>) -> Option<Decided> {
        let Some(router) = self.routers.get(model) else {
            return self.aliases.get(model).map(|p| Decided::Plan(p.clone(), None));
        };
        let decision = |to: &str, reason: String| RouteDecision {
            router: model.to_string(),
            to: to.to_string(),
            reason,
            escalations: 0,
            escalation_time: std::time::Duration::ZERO,
        };
        match router {
            RouterPlan::Cascade => {
                let plan = self.aliases.get(model)?.clone();
                let first = plan.cascade.as_ref()?.steps.first()?.alias.clone();
                Some(Decided::Plan(plan, Some(decision(&first, "cascade".into()))))
            }
            RouterPlan::Learned(l) => Some(Decided::Learned(l.clone(), None)),
            RouterPlan::Rules { rules, default } => {
                let (to, reason) = match first_match(rules, features) {
                    Some((i, rule, why)) => (rule.to.as_str(), format!("rule {} ({why})", i + 1)),
                    None => (default.as_str(), "default".to_string()),
                };
                // A rule may hand the request to a learned router, which then embeds the prompt.
                if let Some(RouterPlan::Learned(l)) = self.routers.get(to) {
                    return Some(Decided::Learned(l.clone(), Some(reason)));
                }
                let plan = self.aliases.get(to)?.clone();
                // A rule may hand the request to a cascade, whose call stage then says which step served.
                let (to, reason) = match &plan.cascade {
                    Some(c) => {
                        (c.steps.first().map_or(to.to_string(), |s| s.alias.clone()), format!("{reason}; cascade {to}"))
                    }
                    None => (to.to_string(), reason),
                };
                let decided = decision(&to, reason);
                Some(Decided::Plan(plan, Some(decided)))
            }
        }
    }

    /// Whether `model` names an alias or a router.
    pub fn knows(&self, model: &str) -> bool {
        self.aliases.contains_key(model) || self.routers.contains_key(model)
    }

    pub fn plan(&self, model: &str) -> Option<&Arc<RoutePlan>> {
        self.aliases.get(model)
    }

    pub fn targets(&self, model: &str) -> Option<&[ModelTarget]> {
        self.aliases.get(model).map(|p| p.targets.as_slice())
    }

    /// Every target of every plan with the circuit policy of the first plan naming it.
    pub fn all_targets(&self) -> Vec<(ModelTarget, keel_config::CircuitPolicy)> {
        // A cascade's targets are its steps': their own plans name them with their own circuit policies.
        let mut plans: Vec<_> = self.aliases.values().filter(|p| p.cascade.is_none()).collect();
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
    /// Every model name a client may send (aliases and routers), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.aliases.keys().chain(self.routers.keys()).cloned().collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The names that have a plan of their own (aliases and cascades: what per-alias admission limits), sorted.
    pub fn plan_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.aliases.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

/// What the route table decided for a request.
pub(crate) enum Decided {
    /// The plan that serves it, and the router's decision when the client named a router.
    Plan(Arc<RoutePlan>, Option<RouteDecision>),
    /// A learned router decides once the prompt is embedded; the reason a rules router sent it there, if one did.
    Learned(Arc<LearnedPlan>, Option<String>),
}

/// How long a learned router waits for the prompt's embedding before it sends the request to its large alias.
const EMBED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl LearnedPlan {
    /// Embeds `text` through the embeddings alias's own route and picks a side. A prompt that cannot be embedded
    /// (no text, no embedder, an error, a timeout, a vector of another size) goes to the large alias: routing
    /// never fails a request, and when in doubt it spends rather than risks the answer.
    async fn choose(
        &self,
        text: Option<String>,
        call: Option<&crate::Call>,
        table: &RouteTable,
    ) -> (Arc<RoutePlan>, String) {
        let large = |why: String| (self.large.clone(), format!("learned: {why}; {}", self.large.alias));
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return large("no user text to read".into()) };
        let Some(call) = call else { return large("no embedder in this request path".into()) };
        let embedder = match crate::RoutedEmbedder::new(call.clone(), table, &self.embedding) {
            Ok(e) => e,
            Err(e) => return large(format!("embedding: {e}")),
        };
        let vector = match tokio::time::timeout(EMBED_TIMEOUT, embedder.embed(vec![text])).await {
            Ok(Ok(mut v)) if v.len() == 1 => v.swap_remove(0),
            Ok(Ok(_)) => return large("embedding: no vector".into()),
            Ok(Err(e)) => return large(format!("embedding failed ({e})")),
            Err(_) => return large(format!("embedding timed out after {} ms", EMBED_TIMEOUT.as_millis())),
        };
        let Some(p) = self.weights.probability(&vector) else {
            return large(format!(
                "embedding of {} dimensions, the weights have {}",
                vector.len(),
                self.weights.weights.len()
            ));
        };
        if p >= self.threshold {
            (self.small.clone(), format!("learned: P(pass) {p:.2} >= {:.2}", self.threshold))
        } else {
            (self.large.clone(), format!("learned: P(pass) {p:.2} < {:.2}", self.threshold))
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: RouteTable,
    embed: Option<crate::Call>,
}

impl RouteLayer {
    pub fn new(table: RouteTable) -> Self {
        Self { table, embed: None }
    }

    /// The call stage learned routers embed prompts through (without one, they send every request to their
    /// large alias).
    pub fn embedding_through(mut self, call: crate::Call) -> Self {
        self.embed = Some(call);
        self
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route { table: self.table.clone(), embed: self.embed.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    table: RouteTable,
    embed: Option<crate::Call>,
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
        let decided = {
            let ctx = &req.ctx;
            let chat = match &req.op {
                Operation::Chat(c) => Some(c.as_ref()),
                Operation::Embeddings(_) => None,
            };
            let features = Features {
                template: ctx.template.as_ref().map(|t| t.name.as_ref()),
                metadata: &ctx.client.metadata,
                chat,
                // Counted in the encoding of the model the client named's default: an estimate for a threshold.
                tokens: &|| ctx.prompt.tokens(req.op.model()),
            };
            self.table.decide(req.op.model(), &features)
        };
        // The clone that was driven to readiness serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match decided {
            None => {
                let error = GatewayError::UnknownModel { model: req.op.model().to_string() };
                futures::future::ready(Ok(GatewayResponse { ctx: req.ctx, result: Err(error) })).boxed()
            }
            Some(Decided::Plan(plan, decision)) => {
                req.ctx.route = Some(plan);
                req.ctx.routing = decision;
                async move { inner.call(req).await }.boxed()
            }
            Some(Decided::Learned(learned, via)) => {
                let text = match &req.op {
                    Operation::Chat(c) => Some(prompt_text(c)),
                    Operation::Embeddings(_) => None,
                };
                let (table, embed) = (self.table.clone(), self.embed.clone());
                async move {
                    let (plan, why) = learned.choose(text, embed.as_ref(), &table).await;
                    let reason = match via {
                        Some(via) => format!("{via}; {why}"),
                        None => why,
                    };
                    req.ctx.routing = Some(RouteDecision {
                        router: req.op.model().to_string(),
                        to: plan.alias.clone(),
                        reason,
                        escalations: 0,
                        escalation_time: std::time::Duration::ZERO,
                    });
                    req.ctx.route = Some(plan);
                    inner.call(req).await
                }
                .boxed()
            }
        }
    }
}
