//! The configuration file exactly as written: serde structs, no validation beyond types and unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Defaults for every model alias; `[models.NAME.reliability]` overrides them key by key.
    #[serde(default)]
    pub reliability: RawReliability,
    #[serde(default)]
    pub store: crate::log::RawStore,
    #[serde(default)]
    pub log: crate::log::RawLog,
    #[serde(default)]
    pub auth: crate::log::RawAuth,
    #[serde(default)]
    pub telemetry: crate::log::RawTelemetry,
    /// Prices per model (`"gpt-4o-mini"`) or per target (`"openai/gpt-4o-mini"`), USD per million tokens;
    /// they override keel's built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, crate::log::RawPrice>,
    #[serde(default)]
    pub cache: crate::cache::RawCache,
    #[serde(default)]
    pub rag: crate::rag::RawRag,
    /// `[guard]`: guardrails for every alias (absent: none, unless an alias has its own).
    pub guard: Option<crate::guard::RawGuard>,
    /// `[templates.NAME]`: named, versioned prompt templates.
    #[serde(default)]
    pub templates: BTreeMap<String, crate::template::RawTemplate>,
    /// `[online_evals.NAME]`: checks on a sample of live requests.
    #[serde(default)]
    pub online_evals: BTreeMap<String, crate::online::RawOnlineEval>,
    /// `[routers.NAME]`: model names that choose an alias per request (rules, cascades, learned).
    #[serde(default)]
    pub routers: BTreeMap<String, crate::router::RawRouter>,
    /// `[reload]`: the suites that gate a reloaded configuration.
    #[serde(default)]
    pub reload: crate::reload::RawReload,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReliability {
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub retry_budget_ms: Option<u64>,
    pub retry_after_cap_ms: Option<u64>,
    pub first_token_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    pub on_stream_failure: Option<String>,
    pub fallback_on: Option<Vec<String>>,
    pub max_repairs: Option<u32>,
    #[serde(default)]
    pub circuit: RawCircuit,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuit {
    pub consecutive_failures: Option<u32>,
    pub error_rate: Option<f64>,
    pub window_ms: Option<u64>,
    pub min_requests: Option<u32>,
    pub open_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub log_format: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
    pub shutdown_delay_ms: Option<u64>,
    pub max_in_flight: Option<u32>,
    pub admission_queue: Option<u32>,
    pub admission_queue_timeout_ms: Option<u64>,
    pub max_connections: Option<u32>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_header_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: Option<String>,
    pub base_url: Option<String>,
    /// The name of the environment variable holding the API key. Keys are never written in the file.
    pub api_key_env: Option<String>,
    /// Rejected with a clear message: secrets come from the environment.
    pub api_key: Option<toml::Value>,
    /// Azure OpenAI's `api-version` query parameter.
    pub api_version: Option<String>,
    /// Extra headers sent with every request (values may reference the environment as `${NAME}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub pool_max_idle_per_host: Option<usize>,
    pub pool_idle_timeout_ms: Option<u64>,
    /// Anthropic only: `max_tokens` sent when the client gave none (the Messages API requires it).
    pub default_max_tokens: Option<u32>,
    /// Local only: where models are kept (default: `$KEEL_MODELS_DIR`, else `~/.cache/keel/models`).
    pub models_dir: Option<String>,
    /// Local only: CPU threads per generation (default: all cores).
    pub threads: Option<u32>,
    /// Local only: chat requests that may wait for the model; more are refused with 429 so a route can fall over.
    pub queue_depth: Option<u32>,
    /// Local only: embedding requests that may wait (the semantic cache sends one per chat request).
    pub embed_queue_depth: Option<u32>,
    /// The largest answer read from this upstream, in bytes (a whole body, or a whole stream); past it the
    /// attempt fails with a protocol error instead of holding the memory.
    pub max_response_bytes: Option<u64>,
    /// Local only: the context window in tokens (default: 2048, at most the model's training context).
    pub context_size: Option<u32>,
    /// No longer a setting (the candle engine was removed); kept to say so clearly.
    pub embeddings_engine: Option<String>,
    /// Local only: the ONNX Runtime library (default: `$ORT_DYLIB_PATH`, else the one in the models directory).
    pub onnxruntime_library: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Option<String>,
    /// The model name sent upstream; defaults to the alias itself.
    pub model: Option<String>,
    /// For Azure OpenAI: the deployment name; defaults to `model`.
    pub deployment: Option<String>,
    /// Other aliases tried in order when this one fails (their own first target each).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The alias to fall over to when the prompt does not fit this model's context window.
    pub context_fallback: Option<String>,
    /// Whether this model continues a partial assistant answer given as the last message (prefill).
    pub supports_prefill: Option<bool>,
    /// A JSON Schema (as JSON text) every answer of this alias must satisfy.
    pub response_schema: Option<String>,
    #[serde(default)]
    pub reliability: Option<RawReliability>,
    /// This alias's cache policy over `[cache]`.
    pub cache: Option<crate::cache::RawModelCache>,
    /// Requests of this alias in flight at once, at most (default: three quarters of `server.max_in_flight`).
    pub max_in_flight: Option<u32>,
    /// Grounded answers: the collection this alias retrieves from for every chat request.
    pub rag: Option<crate::rag::RawModelRag>,
    /// `[models.X.guard]`: this alias's guardrails, over `[guard]`.
    pub guard: Option<crate::guard::RawGuard>,
    /// The order its targets are tried in: `"config"` (as written, the default) or `"cheapest"` (by price).
    pub choose: Option<String>,
}
