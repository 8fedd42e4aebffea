//! What travels through the stack: the request, its context, and the outcome.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_providers::{ChatStream, ErrorKind, ProviderError, ProviderId};

use crate::route::RoutePlan;
use keel_types::{ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// The id of one request, echoed in `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(pub Arc<str>);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which API the client called; decides the shape of answers and errors at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundApi {
    OpenAi,
    Anthropic,
}

impl InboundApi {
    /// The API's name in the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundApi::OpenAi => "openai",
            InboundApi::Anthropic => "anthropic",
        }
    }
}

/// The API endpoints that run the request path (every other route is the server's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/messages`.
    Messages,
}

impl Endpoint {
    /// The endpoint served at `path`, if any.
    pub fn of_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/messages" => Some(Endpoint::Messages),
            _ => None,
        }
    }

    pub fn api(self) -> InboundApi {
        match self {
            Endpoint::ChatCompletions | Endpoint::Embeddings => InboundApi::OpenAi,
            Endpoint::Messages => InboundApi::Anthropic,
        }
    }

    /// The endpoint's name in the log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }
}

/// Who is calling, as the identity check at the edge established it.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin key: every model, no limits.
    Admin,
    /// A virtual key, with its allowed models, limits and tenant.
    Key(Arc<keel_store::KeyRecord>),
}

impl Principal {
    /// Whose cache entries the caller may read and write: the key's tenant, else the key itself; the admin
    /// shares the unkeyed scope.
    pub fn tenant(&self) -> String {
        match self {
            Principal::Key(k) => match &k.tenant {
                Some(t) => format!("tenant:{t}"),
                None => format!("key:{}", k.id),
            },
            Principal::Admin => String::new(),
        }
    }

    /// Whether the caller may use the model alias `name` (a key may be limited to some).
    pub fn may_use(&self, name: &str) -> bool {
        match self {
            Principal::Key(k) => k.models.is_empty() || k.models.iter().any(|m| m == name),
            Principal::Admin => true,
        }
    }
}

/// What the client said about the request besides its body, read once from its headers at the edge.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts {
    /// The client's own `x-request-id` (echoed and logged; never the log row's identity: clients reuse ids).
    pub request_id: Option<String>,
    /// `x-keel-cache` as sent, parsed by the scope stage (an invalid value is refused there).
    pub cache: Option<String>,
    /// `x-keel-tags` (under `"tags"`) and `x-keel-metadata`, as one JSON object (routing rules read it; the log
    /// keeps it with the row).
    pub metadata: Arc<serde_json::Value>,
}

/// What the stages learn about one request, recorded as it goes and read by the outer stages. Facts are
/// computed once, by the stage named on each field, and read by the others: no stage re-derives them.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: RequestId,
    pub endpoint: Endpoint,
    pub api: InboundApi,
    pub received: Instant,
    /// Who is calling; set at the edge by the identity check (none when keys are off).
    pub principal: Option<Principal>,
    /// What the client said in its headers; set at the edge.
    pub client: ClientFacts,
    /// The model name the client sent; set by the log stage once the body is parsed.
    pub requested_model: String,
    /// The request's prompt and its token count (counted once, when first needed); set by the log stage.
    pub prompt: Prompt,
    /// How the request is served (targets in order, policy); set by the route stage.
    pub route: Option<Arc<RoutePlan>>,
    /// When the client named a router: what it decided and why; set by the route stage, a cascade's verdicts
    /// by the call stage.
    pub routing: Option<crate::router::RouteDecision>,
    /// Every upstream attempt, in order; appended by the call stage. Attempts made after the response began
    /// (a stream continued on a fallback) are appended when they happen, so the log sees them at the end.
    pub attempts: Attempts,
    /// Whose cache entries this request may read and write: the key's tenant, else the key; empty without
    /// keys. Set by the scope stage.
    pub tenant: String,
    /// The cache mode the client asked for (`x-keel-cache`), over the route's; set by the scope stage.
    pub cache_mode: Option<keel_config::CacheMode>,
    /// How the cache served the request; set by the cache stage when it was consulted.
    pub cache: Option<crate::cache::CacheOutcome>,
    /// The key's budget reservation, settled with the real cost when the request ends: put here by the limits
    /// stage, taken by the log stage (which computes the cost), shared so that a request cut short settles too.
    pub settlement: Settlement,
    /// What the request cost in USD when the provider's price is known; set by the log stage on a complete,
    /// non-streamed answer (a stream's cost is known only at its end, after the headers).
    pub cost_usd: Option<f64>,
    /// The passages a grounded answer was given (`[models.X.rag]`), returned with it; set by the grounding
    /// stage.
    pub sources: Option<Arc<Vec<crate::ground::Passage>>>,
    /// The guards' verdicts (`[guard]`); appended by the guard stage, during a stream too.
    pub guard: crate::guard::GuardReport,
    /// The prompt template the request named, with its version; set when its body is parsed.
    pub template: Option<crate::template::TemplateUse>,
}

/// The attempt records of one request, shared with the stream that outlives the pipeline call. An attempt is
/// recorded when it starts ([`AttemptOutcome::InFlight`]) and updated in place when it ends, so that an outer
/// stage (the log of a request its client abandoned) sees the upstream call that was under way, and an attempt
/// is never listed twice.
#[derive(Debug, Clone, Default)]
pub struct Attempts(Arc<Mutex<Vec<AttemptRecord>>>);

/// Which attempt of [`Attempts`] to update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptId(usize);

impl Attempts {
    /// Records a finished attempt (or one that was not sent).
    pub fn push(&self, record: AttemptRecord) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record);
        }
    }

    /// Records an attempt that starts now; [`Attempts::end`] sets how it went.
    pub fn start(&self, record: AttemptRecord) -> AttemptId {
        match self.0.lock() {
            Ok(mut v) => {
                v.push(record);
                AttemptId(v.len() - 1)
            }
            Err(_) => AttemptId(usize::MAX),
        }
    }

    /// Sets the outcome (and the time it took) of a started attempt.
    pub fn end(&self, id: AttemptId, outcome: AttemptOutcome, latency: Duration) {
        if let Ok(mut v) = self.0.lock()
            && let Some(a) = v.get_mut(id.0)
        {
            a.outcome = outcome;
            a.latency = latency;
        }
    }

    /// Sets the outcome of an attempt, its latency as it was (a stream that failed after its first token).
    pub fn set_outcome(&self, id: AttemptId, outcome: AttemptOutcome) {
        if let Ok(mut v) = self.0.lock()
            && let Some(a) = v.get_mut(id.0)
        {
            a.outcome = outcome;
        }
    }

    /// Records what an attempt that did not report its usage consumed, as estimated (a stream that broke
    /// after part of its answer).
    pub fn set_usage(&self, id: AttemptId, usage: AttemptUsage) {
        if let Ok(mut v) = self.0.lock()
            && let Some(a) = v.get_mut(id.0)
        {
            a.usage = Some(usage);
        }
    }

    pub fn snapshot(&self) -> Vec<AttemptRecord> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl RequestContext {
    /// The context of a request that just arrived at `endpoint`.
    pub fn new(id: RequestId, endpoint: Endpoint) -> Self {
        Self {
            id,
            endpoint,
            api: endpoint.api(),
            received: Instant::now(),
            principal: None,
            client: ClientFacts::default(),
            requested_model: String::new(),
            prompt: Prompt::default(),
            route: None,
            routing: None,
            attempts: Attempts::default(),
            tenant: String::new(),
            cache_mode: None,
            cache: None,
            settlement: Settlement::default(),
            cost_usd: None,
            sources: None,
            guard: crate::guard::GuardReport::default(),
            template: None,
        }
    }

    /// The last attempt that succeeded.
    pub fn served_by(&self) -> Option<AttemptRecord> {
        self.attempts.snapshot().into_iter().rev().find(|a| matches!(a.outcome, AttemptOutcome::Ok))
    }
}

/// One attempt at one upstream target.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub provider: ProviderId,
    pub model: String,
    /// When the attempt started, from the request's arrival.
    pub started_after: Duration,
    /// How long until the full answer (non-streamed) or the first token (streamed).
    pub latency: Duration,
    pub outcome: AttemptOutcome,
    /// What the attempt consumed, when keel had to estimate it because the answer that would have said so never
    /// came (a stream broken after part of its answer). The attempt that answered reports its own usage.
    pub usage: Option<AttemptUsage>,
}

/// Tokens an attempt consumed, as estimated by keel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptUsage {
    pub input: u64,
    pub output: u64,
    /// Counted by keel (a broken stream) rather than reported by the provider (an answer set aside).
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Sent, and not ended yet.
    InFlight,
    Ok,
    Failed {
        kind: ErrorKind,
        status: Option<u16>,
    },
    /// Served the start of a stream that then failed (`kind`): part of the answer came from it.
    FailedMidStream {
        kind: ErrorKind,
    },
    /// Not sent: the target's circuit was open.
    CircuitOpen,
    /// Answered in full, but not what the client got: an answer that violated the schema, a cascade step whose
    /// answer failed its check, or a judge's grade. Its usage is recorded, so its cost counts.
    Aside(Aside),
}

/// Why an attempt's answer was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// A cascade step's answer that failed the check: the request escalated.
    Escalated,
    /// A cascade's judge grading a step's answer.
    Judge,
    /// An answer that violated the required JSON schema (a repair was asked for, or the request failed).
    Repaired,
}

impl AttemptOutcome {
    /// The attempt's text in the log and the metrics: "ok", "in_flight", "circuit_open", or the error's class.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptOutcome::InFlight => "in_flight",
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed { kind, .. } | AttemptOutcome::FailedMidStream { kind } => kind.as_str(),
            AttemptOutcome::CircuitOpen => "circuit_open",
            AttemptOutcome::Aside(Aside::Escalated) => "escalated",
            AttemptOutcome::Aside(Aside::Judge) => "judge",
            AttemptOutcome::Aside(Aside::Repaired) => "schema_violation",
        }
    }

    /// Whether the upstream was called (and may have billed for it).
    pub fn was_sent(&self) -> bool {
        !matches!(self, AttemptOutcome::CircuitOpen)
    }
}

/// The operations keel serves. The request is shared (reference-counted) with the context's [`Prompt`], so that
/// the stages that count its tokens never parse or copy it again; a stage that changes it (the limits stage
/// capping the output) copies it on write.
#[derive(Debug, Clone)]
pub enum Operation {
    /// A chat completion; streamed when `stream` is set.
    Chat(Arc<ChatRequest>),
    Embeddings(Arc<EmbeddingsRequest>),
}

impl Operation {
    pub fn chat(req: ChatRequest) -> Self {
        Operation::Chat(Arc::new(req))
    }

    pub fn embeddings(req: EmbeddingsRequest) -> Self {
        Operation::Embeddings(Arc::new(req))
    }

    pub fn model(&self) -> &str {
        match self {
            Operation::Chat(r) => &r.model,
            Operation::Embeddings(r) => &r.model,
        }
    }

    /// Whether the answer comes as a stream.
    pub fn streams(&self) -> bool {
        matches!(self, Operation::Chat(r) if r.stream)
    }
}

/// A request's prompt as the stages that price it see it: a cheap upper bound of its tokens at any time, and its
/// exact count (tiktoken), computed once when first needed: by the limits stage when the bound alone would
/// refuse a budget, by the log stage when a provider reports no usage. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Prompt(Arc<PromptInner>);

#[derive(Debug, Default)]
struct PromptInner {
    of: Option<Operation>,
    tokens: std::sync::OnceLock<u64>,
}

impl Prompt {
    pub fn of(op: &Operation) -> Self {
        Self(Arc::new(PromptInner { of: Some(op.clone()), tokens: std::sync::OnceLock::new() }))
    }

    /// At least as many tokens as the prompt has, without tokenizing (bytes of text, plus message overhead).
    pub fn upper_bound(&self) -> u64 {
        match &self.0.of {
            Some(Operation::Chat(r)) => crate::cost::chat_prompt_upper_bound(r),
            Some(Operation::Embeddings(r)) => crate::cost::embeddings_input_upper_bound(r),
            None => 0,
        }
    }

    /// The prompt's tokens in the encoding of `model` (the model of the first count: an estimate either way,
    /// the provider's own count being what a row records when there is one).
    pub fn tokens(&self, model: &str) -> u64 {
        *self.0.tokens.get_or_init(|| match &self.0.of {
            Some(Operation::Chat(r)) => crate::cost::count_chat_prompt(model, r),
            Some(Operation::Embeddings(r)) => crate::cost::count_embeddings_input(model, r),
            None => 0,
        })
    }
}

/// Settles a budget reservation with the request's real cost (implemented by the limits stage's reservation).
pub trait Settle: Send {
    fn settle(self: Box<Self>, cost_usd: f64, tokens: u64);
}

/// The slot for a request's [`Settle`]: filled by the limits stage, emptied once by whoever ends the request.
#[derive(Clone, Default)]
pub struct Settlement(Arc<Mutex<Option<Box<dyn Settle>>>>);

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|s| s.is_some()).unwrap_or(false);
        f.debug_tuple("Settlement").field(&held).finish()
    }
}

impl Settlement {
    pub fn set(&self, settle: Box<dyn Settle>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(settle);
        }
    }

    /// Settles the reservation, if there is one (at most once).
    pub fn settle(&self, cost_usd: f64, tokens: u64) {
        let taken = self.0.lock().ok().and_then(|mut slot| slot.take());
        if let Some(s) = taken {
            s.settle(cost_usd, tokens);
        }
    }
}

#[derive(Debug)]
pub struct GatewayRequest {
    pub ctx: RequestContext,
    pub op: Operation,
}

pub enum Output {
    Chat(ChatResponse),
    ChatStream(ChatStream),
    Embeddings(EmbeddingsResponse),
}

impl GatewayError {
    /// The failure's class in the log and the metrics.
    pub fn class(&self) -> &'static str {
        match self {
            GatewayError::Rejected(r) => match r.kind {
                RejectionKind::Malformed | RejectionKind::Invalid => "invalid_request_error",
                RejectionKind::TooLarge => "request_too_large",
                RejectionKind::Timeout => "request_timeout",
            },
            GatewayError::Denied(d) => match d {
                Denial::ModelNotAllowed { .. } => "model_not_allowed",
                Denial::RateLimited { .. } => "rate_limit_exceeded",
                Denial::BudgetExceeded { .. } => "budget_exceeded",
                Denial::LimitsUnavailable => "limits_unavailable",
            },
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::UnknownModel { .. } => "unknown_model",
            GatewayError::ProviderUnavailable(_) => "provider_unavailable",
            GatewayError::Provider(p) => p.kind.as_str(),
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::Retrieval { .. } => "retrieval_failed",
            GatewayError::Guarded(g) => g.code,
        }
    }

    /// Whether the request was refused before anything was done with it (logged as `rejected`, not as a
    /// failure).
    pub fn is_refusal(&self) -> bool {
        matches!(self, GatewayError::Rejected(_) | GatewayError::Denied(_))
            || matches!(self, GatewayError::Guarded(g) if g.guard != crate::guard::GuardKind::Output)
    }
}

/// Why a request was refused before anything was done with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
    /// The field at fault, as a JSON path (`messages[0].content`), or the header.
    pub param: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The body is not JSON, or not of the API's shape.
    Malformed,
    /// Well-formed, but not a valid request (no model, no messages, an invalid header value).
    Invalid,
    /// Larger than the server accepts.
    TooLarge,
    /// The body did not arrive in time.
    Timeout,
}

impl Rejection {
    pub fn new(kind: RejectionKind, message: impl Into<String>, param: Option<String>) -> Self {
        Self { kind, message: message.into(), param }
    }

    pub fn invalid(message: impl Into<String>, param: Option<String>) -> Self {
        Self::new(RejectionKind::Invalid, message, param)
    }
}

/// Why a caller's key refused a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denial {
    #[error("this key may not use model `{model}` (allowed: {})", allowed.join(", "))]
    ModelNotAllowed { model: String, allowed: Vec<String> },
    /// A request or token rate limit.
    #[error("{reason}")]
    RateLimited { reason: String, retry_after: Duration },
    /// A daily or monthly budget.
    #[error("{reason}")]
    BudgetExceeded { reason: String, retry_after: Duration },
    /// The counters cannot be reached, so the limits cannot be checked.
    #[error("cannot check this key's limits now")]
    LimitsUnavailable,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Chat(r) => f.debug_tuple("Chat").field(r).finish(),
            Output::ChatStream(_) => f.write_str("ChatStream(..)"),
            Output::Embeddings(r) => f.debug_tuple("Embeddings").field(r).finish(),
        }
    }
}

/// The outcome of a request together with its context; every stage returns this, failure included.
#[derive(Debug)]
pub struct GatewayResponse {
    pub ctx: RequestContext,
    pub result: Result<Output, GatewayError>,
}

/// Why the gateway could not answer. Mapped to HTTP statuses in one place, at the server's edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The request could not be read or is not valid; nothing was done with it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The caller's key does not allow it (model, rate limits, budgets); nothing was sent upstream.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// Valid JSON that the route cannot serve as asked (a response format whose schema does not compile).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model {model:?} is not configured")]
    UnknownModel { model: String },
    #[error("provider {0} is configured but not available")]
    ProviderUnavailable(ProviderId),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Refused by admission control: every slot taken (of the alias, or of the whole instance) and no room to
    /// wait. Nothing was sent upstream.
    #[error("keel is at capacity{}; try again shortly", alias.as_ref().map(|a| format!(" for model {a:?}")).unwrap_or_default())]
    Overloaded { alias: Option<String>, retry_after: Duration },
    /// A grounded route could not retrieve its passages; nothing was sent upstream (an answer without its
    /// reference data would look grounded and not be).
    #[error("retrieval from collection {collection:?} failed: {error}")]
    Retrieval { collection: String, error: crate::ground::RetrieveError },
    /// A guard refused the request (injection, personal data; nothing was sent upstream) or withheld its answer
    /// (output).
    #[error(transparent)]
    Guarded(crate::guard::GuardRefusal),
}
