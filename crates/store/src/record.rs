//! The request log's row and the filters it is read back with.

use serde::{Deserialize, Serialize};

/// One request, as logged: identity, routing, every upstream attempt, timing, usage, cost, bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// keel's id of the request (a UUIDv7, unique): the row's identity.
    pub id: String,
    /// The client's own `x-request-id`, when it sent one (clients may reuse theirs).
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// When the request arrived, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    /// The API the client called: "openai" or "anthropic".
    pub api: String,
    /// "chat", "embeddings" or "messages".
    pub endpoint: String,
    pub model_requested: Option<String>,
    /// `provider/model` of the attempt that answered.
    pub model_served: Option<String>,
    /// The HTTP status the client got (200 for a stream that started, whatever happened after).
    pub status: u16,
    /// How the request ended.
    pub outcome: Outcome,
    /// The class of the error that ended the request (`rate_limited`, `timeout`, …).
    pub error_class: Option<String>,
    pub stream: bool,
    pub attempts: Vec<AttemptRow>,
    pub ttft_ms: Option<f64>,
    pub latency_ms: f64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Input tokens served from the provider's prompt cache (part of `tokens_in`).
    pub tokens_cached: Option<u64>,
    pub cost_usd: Option<f64>,
    /// keel's own cache, when it was consulted.
    pub cache: Option<CacheStatus>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// The client's metadata and tags (`x-keel-metadata`, `x-keel-tags`, OpenAI `user`/`metadata`).
    pub metadata: serde_json::Value,
    /// The prompt template the request named (`keel_template`), and its version.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_version: Option<String>,
    /// When the client named a router: what it decided.
    #[serde(default)]
    pub routing: Option<Routing>,
}

/// A router's decision for one request (`[routers.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The router the client named as its model.
    pub router: String,
    /// The model alias that served (for a cascade: the step whose answer was sent).
    pub to: String,
    /// Why: the rule that matched, the learned router's estimate, each cascade step's verdict.
    pub reason: String,
    /// Cascade steps whose answer failed the check before the one that served.
    pub escalations: u32,
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A complete answer.
    Ok,
    /// An error answer from the pipeline (upstream failure, timeout, overload).
    Error,
    /// A stream that started and then ended with an error event.
    StreamError,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// Refused before any upstream call (unreadable or invalid request, auth, limits, admission).
    Rejected,
    /// Cut by keel's shutdown deadline.
    Shutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::StreamError,
        Outcome::ClientDisconnected,
        Outcome::Rejected,
        Outcome::Shutdown,
    ];

    /// The column's (and the metrics label's) text.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::StreamError => "stream_error",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::Rejected => "rejected",
            Outcome::Shutdown => "shutdown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// How keel's response cache served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    Hit,
    SemanticHit,
    Miss,
    /// Not read (the client asked for `write`).
    Bypass,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 4] =
        [CacheStatus::Hit, CacheStatus::SemanticHit, CacheStatus::Miss, CacheStatus::Bypass];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::SemanticHit => "semantic_hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Answered from the cache: nothing was spent upstream.
    pub fn is_hit(self) -> bool {
        matches!(self, CacheStatus::Hit | CacheStatus::SemanticHit)
    }
}

/// One upstream attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub provider: String,
    pub model: String,
    /// When it started, from the request's arrival.
    pub started_ms: f64,
    pub latency_ms: f64,
    /// The upstream's HTTP status, when there was one.
    pub status: Option<u16>,
    /// "ok", "circuit_open", or the error class.
    pub outcome: String,
}

/// A filter over the log. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub key_id: Option<String>,
    /// Matches the requested or the served model.
    pub model: Option<String>,
    pub status: Option<u16>,
    pub outcome: Option<Outcome>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// keel's id of the request or the client's `x-request-id`.
    pub id: Option<String>,
    /// Only requests that used this prompt template.
    pub template: Option<String>,
    /// Only requests that named this router.
    pub router: Option<String>,
    /// Only requests with this cache outcome.
    pub cache: Option<CacheStatus>,
    /// Only requests whose request or response body contains this text (any case), where bodies are logged.
    pub text: Option<String>,
    /// Only requests tagged so (`x-keel-tags`).
    pub tag: Option<String>,
    /// Only requests whose metadata (`x-keel-metadata`) has this key with this value (as text).
    pub metadata: Option<(String, String)>,
    /// At most this many rows (default 100, at most 10,000).
    pub limit: Option<u32>,
}

impl Query {
    pub fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).clamp(1, 10_000))
    }
}

impl Record {
    /// An estimate of the memory the row holds while queued, for the writer's byte bound.
    pub fn weight(&self) -> usize {
        512 + self.request_body.as_ref().map_or(0, String::len)
            + self.response_body.as_ref().map_or(0, String::len)
            + self.attempts.len() * 96
            + self.metadata.as_object().map_or(0, |m| m.len() * 64)
    }
}
