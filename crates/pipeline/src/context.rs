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

/// What the stages learn about one request, recorded as it goes and read by the outer stages.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: RequestId,
    pub api: InboundApi,
    pub received: Instant,
    /// The model name the client sent.
    pub requested_model: String,
    /// How the request is served (targets in order, policy); set by the route stage.
    pub route: Option<Arc<RoutePlan>>,
    /// Every upstream attempt, in order; appended by the call stage. Attempts made after the response began
    /// (a stream continued on a fallback) are appended when they happen, so the log sees them at the end.
    pub attempts: Attempts,
    /// Whose cache entries this request may read and write: the key's tenant, else the key; empty without
    /// keys. Set by the edge.
    pub tenant: String,
    /// The cache mode the client asked for (`x-keel-cache`), over the route's.
    pub cache_mode: Option<keel_config::CacheMode>,
    /// How the cache served the request; set by the cache stage when it was consulted.
    pub cache: Option<crate::cache::CacheOutcome>,
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
    pub fn new(id: RequestId, api: InboundApi, requested_model: impl Into<String>) -> Self {
        Self {
            id,
            api,
            received: Instant::now(),
            requested_model: requested_model.into(),
            route: None,
            attempts: Attempts::default(),
            tenant: String::new(),
            cache_mode: None,
            cache: None,
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
}

impl AttemptOutcome {
    /// The attempt's text in the log and the metrics: "ok", "in_flight", "circuit_open", or the error's class.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptOutcome::InFlight => "in_flight",
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed { kind, .. } | AttemptOutcome::FailedMidStream { kind } => kind.as_str(),
            AttemptOutcome::CircuitOpen => "circuit_open",
        }
    }

    /// Whether the upstream was called (and may have billed for it).
    pub fn was_sent(&self) -> bool {
        !matches!(self, AttemptOutcome::CircuitOpen)
    }
}

/// The operations keel serves.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "moved a handful of times per request; boxing would add an allocation")]
pub enum Operation {
    /// A chat completion; streamed when `stream` is set.
    Chat(ChatRequest),
    Embeddings(EmbeddingsRequest),
}

impl Operation {
    pub fn model(&self) -> &str {
        match self {
            Operation::Chat(r) => &r.model,
            Operation::Embeddings(r) => &r.model,
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
}
