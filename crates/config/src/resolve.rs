//! Phase two of configuration: the raw file checked as a whole and turned into the resolved form.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::raw::{RawConfig, RawModel, RawProvider, RawServer};
use crate::reliability::{ReliabilityPolicy, overlay};
use crate::{ConfigError, ConfigErrors, Env};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: BTreeMap<ProviderId, ProviderConfig>,
    /// Model aliases by the name clients send, in file order of their names.
    pub models: BTreeMap<String, ModelAlias>,
    /// keel's database (request log, keys): `sqlite://…` or `postgres://…`.
    pub store: String,
    pub log: crate::log::LogConfig,
    pub auth: crate::log::AuthConfig,
    pub telemetry: crate::log::TelemetryConfig,
    pub rag: crate::rag::RagConfig,
    pub prices: BTreeMap<String, crate::log::Price>,
    pub cache: crate::cache::CacheConfig,
    /// Prompt templates by name.
    pub templates: BTreeMap<String, crate::template::Template>,
    /// Online evaluations by name.
    pub online_evals: BTreeMap<String, crate::online::OnlineEval>,
    /// Routers by the model name clients send.
    pub routers: BTreeMap<String, crate::router::Router>,
    /// What a reloaded configuration must pass before it serves.
    pub reload: crate::reload::ReloadConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    /// After SIGTERM, how long in-flight requests and streams may take to finish before keel exits anyway.
    pub shutdown_grace: Duration,
    /// After SIGTERM and before the listener closes: `/ready` answers 503 while keel still accepts and serves,
    /// so that a load balancer or Kubernetes stops sending new requests first.
    pub shutdown_delay: Duration,
    /// API requests in flight at once, at most (instance-wide).
    pub max_in_flight: usize,
    /// API requests that may wait for a slot when all are taken; more are refused at once.
    pub admission_queue: usize,
    /// How long a request waits for a slot before it is refused.
    pub admission_queue_timeout: Duration,
    /// Open client connections, at most; `None`: derived from the process's file descriptor limit at start.
    pub max_connections: Option<usize>,
    /// The most time a connection may take to send a request's headers, counted from when it is ready for a
    /// request (new, or idle after an answer): slow or silent clients, and idle keep-alive connections, are
    /// closed after it.
    pub header_read_timeout: Duration,
    /// The most time a request's body may take to arrive.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed (HTTP/2 too).
    pub idle_timeout: Duration,
    /// The most bytes of request headers (names and values) keel reads; more get 431.
    pub max_header_bytes: usize,
}

/// The default of `server.max_in_flight`: 256 per core (a request in flight mostly waits on its upstream, and
/// costs memory, not CPU), at least 64 and at most 4,096.
pub fn default_max_in_flight() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (256 * cores).clamp(64, 4096)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The name of a configured provider, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId(pub Arc<str>);

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ProviderId {
    fn from(s: &str) -> Self {
        ProviderId(Arc::from(s))
    }
}

/// Which wire protocol and which vendor's variant of it a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Azure,
    Vllm,
    Ollama,
    Groq,
    Together,
    Mistral,
    /// Any other server speaking the OpenAI chat completions API.
    OpenAiCompatible,
    Anthropic,
    /// Models run inside keel's own process.
    Local,
}

impl ProviderKind {
    const ALL: [(&'static str, ProviderKind); 10] = [
        ("openai", ProviderKind::OpenAi),
        ("azure", ProviderKind::Azure),
        ("vllm", ProviderKind::Vllm),
        ("ollama", ProviderKind::Ollama),
        ("groq", ProviderKind::Groq),
        ("together", ProviderKind::Together),
        ("mistral", ProviderKind::Mistral),
        ("openai_compatible", ProviderKind::OpenAiCompatible),
        ("anthropic", ProviderKind::Anthropic),
        ("local", ProviderKind::Local),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(name, _)| *name == s).map(|(_, k)| *k)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("openai", |(name, _)| name)
    }

    /// The vendor's public endpoint, when it has one that does not depend on the account.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Groq => Some("https://api.groq.com/openai/v1"),
            ProviderKind::Together => Some("https://api.together.xyz/v1"),
            ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderKind::Ollama => Some("http://127.0.0.1:11434/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Local => Some("local://"),
            ProviderKind::Azure | ProviderKind::Vllm | ProviderKind::OpenAiCompatible => None,
        }
    }

    /// Whether the vendor's hosted API refuses requests without a key.
    fn needs_key(self) -> bool {
        !matches!(
            self,
            ProviderKind::Vllm | ProviderKind::Ollama | ProviderKind::OpenAiCompatible | ProviderKind::Local
        )
    }
}

/// One upstream provider: where it is, how to authenticate, and how to hold connections to it.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: ProviderId,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    /// The resolved secret. Never printed: see the `Debug` of [`Secret`].
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
    pub default_max_tokens: u32,
    /// The largest answer read from the upstream (a body or a whole stream), in bytes.
    pub max_response_bytes: u64,
    /// Settings of in-process models (kind `local`).
    pub local: LocalSettings,
}

/// The default bound on one upstream answer: 64 MiB holds a long streamed answer many times over (100,000
/// tokens stream as about 20 MiB of SSE), and bounds what a broken upstream can make keel hold.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    pub models_dir: Option<std::path::PathBuf>,
    pub threads: Option<u32>,
    /// Chat requests that may wait for the model.
    pub queue_depth: u32,
    /// Embedding requests that may wait.
    pub embed_queue_depth: u32,
    pub context_size: u32,
    pub onnxruntime_library: Option<std::path::PathBuf>,
}

/// A secret value read from the environment. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A model name clients send, and the upstream targets that serve it, in order of preference.
#[derive(Debug, Clone)]
pub struct ModelAlias {
    pub name: String,
    /// The alias's own target first, then its fallbacks' targets, in order.
    pub targets: Vec<ModelTarget>,
    /// Where a prompt too long for these targets goes instead (empty: fail at once).
    pub context_fallback: Vec<ModelTarget>,
    pub reliability: ReliabilityPolicy,
    /// A JSON Schema every answer must satisfy, whatever the request says.
    pub response_schema: Option<serde_json::Value>,
    pub cache: crate::cache::CachePolicy,
    /// Requests of this alias in flight at once, at most; `None`: three quarters of `server.max_in_flight`,
    /// so that one stalled upstream cannot take every slot.
    pub max_in_flight: Option<usize>,
    /// Grounded answers: the collection every chat request of the alias retrieves from.
    pub retrieval: Option<crate::rag::Retrieval>,
    /// The alias's guardrails (`[guard]`, `[models.X.guard]`); `None`: no guard runs.
    pub guard: Option<crate::guard::GuardPolicy>,
    /// The order its targets are tried in.
    pub choose: TargetOrder,
}

/// The order an alias tries its targets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetOrder {
    /// As written: its own target, then its fallbacks'.
    #[default]
    Config,
    /// Cheapest first by the price table (for one model offered by several providers); ties keep the written
    /// order, and a target whose circuit is open is skipped like any other.
    Cheapest,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelTarget {
    pub provider: ProviderId,
    /// The model name sent upstream.
    pub model: String,
    /// Azure OpenAI deployment name (defaults to `model`).
    pub deployment: Option<String>,
    /// Whether the model continues a partial assistant answer given as the last message.
    pub supports_prefill: bool,
}

impl std::fmt::Display for ModelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    /// Records an error; the same error twice (a global section checked for each alias) is recorded once.
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let e = ConfigError { path: path.into(), message: message.into() };
        if !self.0.contains(&e) {
            self.0.push(e);
        }
    }
}

pub(crate) fn resolve(raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let mut errors = Errors(Vec::new());
    let server = resolve_server(raw.server, &mut errors);
    let declared: BTreeMap<String, Option<ProviderKind>> = raw
        .providers
        .iter()
        .map(|(name, p)| (name.clone(), ProviderKind::parse(p.kind.as_deref().unwrap_or(name))))
        .collect();
    let defaults = overlay(&ReliabilityPolicy::default(), &raw.reliability, "reliability", &mut errors);
    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        if let Some(p) = resolve_provider(&name, p, env, &mut errors) {
            providers.insert(p.id.clone(), p);
        }
    }
    // Phase one: each alias with its own target; phase two: fallback chains, which name other aliases.
    let mut models = BTreeMap::new();
    let mut chains = Vec::new();
    let mut guards = Vec::new();
    for (name, m) in raw.models {
        let chain = (name.clone(), m.fallbacks.clone(), m.context_fallback.clone());
        guards.push((name.clone(), m.guard.clone()));
        let cache = crate::cache::resolve_policy(&name, m.cache.as_ref(), &raw.cache, &mut errors);
        if let Some(mut m) = resolve_model(&name, m, &declared, &defaults, &mut errors) {
            m.cache = cache;
            models.insert(name, m);
            chains.push(chain);
        }
    }
    let primaries: BTreeMap<String, ModelTarget> = models
        .iter()
        .filter_map(|(n, m): (&String, &ModelAlias)| Some((n.clone(), m.targets.first()?.clone())))
        .collect();
    for (name, fallbacks, context) in chains {
        let lookup = |alias: &str, key: &str, errors: &mut Errors| {
            if alias == name {
                errors.push(format!("models.{name}.{key}"), "an alias cannot fall back to itself");
                return None;
            }
            let found = primaries.get(alias).cloned();
            if found.is_none() {
                errors.push(format!("models.{name}.{key}"), format!("unknown model alias {alias:?}"));
            }
            found
        };
        let mut extra = Vec::new();
        for alias in &fallbacks {
            if let Some(t) = lookup(alias, "fallbacks", &mut errors) {
                extra.push(t);
            }
        }
        let context_target = context.and_then(|alias| lookup(&alias, "context_fallback", &mut errors));
        if let Some(m) = models.get_mut(&name) {
            for t in extra {
                if !m.targets.contains(&t) {
                    m.targets.push(t);
                }
            }
            m.context_fallback.extend(context_target);
        }
    }
    // Guards last: what an alias may send depends on every target of its chain (PII may go to the local model
    // and not to a third party, and a fallback could take the request anywhere in the chain).
    for (name, raw_guard) in guards {
        if let Some(m) = models.get_mut(&name) {
            let external = m
                .targets
                .iter()
                .chain(&m.context_fallback)
                .any(|t| declared.get(t.provider.0.as_ref()).is_none_or(|k| *k != Some(ProviderKind::Local)));
            m.guard = crate::guard::resolve_guard(&name, raw.guard.as_ref(), raw_guard.as_ref(), external, &mut errors);
        }
    }
    let store = crate::log::resolve_store(raw.store, env, &mut errors);
    let log = crate::log::resolve_log(raw.log, &mut errors);
    let auth = crate::log::resolve_auth(raw.auth, env, &mut errors);
    let telemetry = crate::log::resolve_telemetry(raw.telemetry, env, &mut errors);
    let prices = crate::log::resolve_prices(raw.prices, &mut errors);
    let cache = crate::cache::resolve_cache(&raw.cache, env, &mut errors);
    if models.values().any(|m| m.cache.semantic.is_some()) && !models.contains_key(&cache.semantic_model) {
        errors.push(
            "cache.semantic.model",
            format!("unknown model alias {:?} (the embeddings model of the semantic cache)", cache.semantic_model),
        );
    }
    let rag = crate::rag::resolve_rag(&raw.rag, env, &mut errors);
    if rag.model_configured && !models.contains_key(&rag.model) {
        errors.push("rag.model", format!("unknown model alias {:?} (the embeddings model of collections)", rag.model));
    }
    let mut grounded: Vec<&str> = models.values().filter(|m| m.retrieval.is_some()).map(|m| m.name.as_str()).collect();
    grounded.sort_unstable();
    if let Some(first) = grounded.first()
        && !models.contains_key(&rag.model)
    {
        errors.push(
            format!("models.{first}.rag"),
            format!(
                "retrieval needs the collections' embeddings model: no model alias {:?} is configured ([rag] model)",
                rag.model
            ),
        );
    }
    let routers = crate::router::resolve_routers(
        &raw.routers,
        &|a| models.contains_key(a),
        &|t| raw.templates.contains_key(t),
        &mut errors,
    );
    let templates = crate::template::resolve_templates(
        &raw.templates,
        &|a| models.contains_key(a) || routers.contains_key(a),
        &mut errors,
    );
    let online_evals = crate::online::resolve_online(
        &raw.online_evals,
        &|a| models.contains_key(a),
        &|t| templates.contains_key(t),
        log.enabled && log.bodies == crate::BodyPolicy::Full,
        &mut errors,
    );
    let reload = crate::reload::resolve_reload(&raw.reload, &mut errors);
    if errors.0.is_empty() {
        Ok(Config {
            server,
            providers,
            models,
            store,
            log,
            auth,
            telemetry,
            prices,
            cache,
            rag,
            templates,
            online_evals,
            routers,
            reload,
        })
    } else {
        Err(ConfigErrors(errors.0))
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn resolve_server(raw: RawServer, errors: &mut Errors) -> ServerConfig {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse().unwrap_or_else(|_| {
        errors.push("server.listen", format!("not a socket address: {listen_text:?} (expected HOST:PORT)"));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let max_body_bytes = match raw.max_body_bytes {
        None => 16 * 1024 * 1024,
        Some(0) => {
            errors.push("server.max_body_bytes", "must be greater than 0");
            0
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push("server.log_format", format!("unknown format {other:?} (expected \"text\" or \"json\")"));
            LogFormat::Text
        }
    };
    let shutdown_grace = Duration::from_millis(raw.shutdown_grace_ms.unwrap_or(30_000));
    let shutdown_delay = Duration::from_millis(raw.shutdown_delay_ms.unwrap_or(0));
    let positive = |v: Option<u64>, key: &str, errors: &mut Errors| -> Option<u64> {
        match v {
            Some(0) => {
                errors.push(format!("server.{key}"), "must be greater than 0");
                None
            }
            v => v,
        }
    };
    let ms = |v: Option<u64>, default: u64, key: &str, errors: &mut Errors| {
        Duration::from_millis(positive(v, key, errors).unwrap_or(default))
    };
    let count = |v: Option<u32>, key: &str, errors: &mut Errors| {
        positive(v.map(u64::from), key, errors).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    };
    let max_in_flight = count(raw.max_in_flight, "max_in_flight", errors).unwrap_or_else(default_max_in_flight);
    let admission_queue = match raw.admission_queue {
        Some(n) => n as usize,
        None => max_in_flight / 4,
    };
    ServerConfig {
        listen,
        max_body_bytes,
        log_format,
        shutdown_grace,
        shutdown_delay,
        max_in_flight,
        admission_queue,
        admission_queue_timeout: ms(raw.admission_queue_timeout_ms, 1_000, "admission_queue_timeout_ms", errors),
        max_connections: count(raw.max_connections, "max_connections", errors),
        header_read_timeout: ms(raw.header_read_timeout_ms, 30_000, "header_read_timeout_ms", errors),
        body_read_timeout: ms(raw.body_read_timeout_ms, 60_000, "body_read_timeout_ms", errors),
        idle_timeout: ms(raw.idle_timeout_ms, 60_000, "idle_timeout_ms", errors),
        max_header_bytes: positive(raw.max_header_bytes, "max_header_bytes", errors)
            .map_or(64 * 1024, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

fn resolve_provider(name: &str, raw: RawProvider, env: &dyn Env, errors: &mut Errors) -> Option<ProviderConfig> {
    let path = |key: &str| format!("providers.{name}.{key}");
    let before = errors.0.len();
    let kind_name = raw.kind.as_deref().unwrap_or(name);
    let kind = ProviderKind::parse(kind_name);
    if kind.is_none() {
        let known: Vec<_> = ProviderKind::ALL.iter().map(|(n, _)| *n).collect();
        let key = if raw.kind.is_some() { path("kind") } else { format!("providers.{name}") };
        errors.push(key, format!("unknown provider kind {kind_name:?} (expected one of: {})", known.join(", ")));
    }
    if raw.api_key.is_some() {
        errors.push(path("api_key"), "secrets are not written in the config file: use api_key_env = \"ENV_VAR_NAME\"");
    }
    let base_url = match (&raw.base_url, kind.and_then(ProviderKind::default_base_url)) {
        (Some(url), _) => {
            if !(url.starts_with("http://") || url.starts_with("https://") || kind == Some(ProviderKind::Local)) {
                errors.push(path("base_url"), format!("not an http(s) URL: {url:?}"));
            }
            url.trim_end_matches('/').to_string()
        }
        (None, Some(default)) => default.to_string(),
        (None, None) => {
            if let Some(k) = kind {
                errors.push(path("base_url"), format!("required for kind {:?}", k.name()));
            }
            String::new()
        }
    };
    let api_key = match &raw.api_key_env {
        Some(var) => match env.var(var) {
            Some(value) => Some(Secret(value)),
            None => {
                errors.push(path("api_key_env"), format!("environment variable {var} is not set"));
                None
            }
        },
        None => {
            if kind.is_some_and(ProviderKind::needs_key) && raw.base_url.is_none() {
                errors.push(path("api_key_env"), "required: the name of the environment variable holding the API key");
            }
            None
        }
    };
    if kind == Some(ProviderKind::Azure) && raw.api_version.is_none() {
        errors.push(path("api_version"), "required for kind \"azure\" (for example \"2024-10-21\")");
    }
    let mut headers = Vec::new();
    for (header, value) in raw.headers {
        match expand_env(&value, env) {
            Ok(v) => headers.push((header, v)),
            Err(var) => {
                errors.push(path(&format!("headers.{header}")), format!("environment variable {var} is not set"))
            }
        }
    }
    if raw.embeddings_engine.is_some() {
        errors.push(
            path("embeddings_engine"),
            "no longer a setting: local embeddings run on ONNX Runtime (the candle engine was removed: 3x slower, \
             and a tenth of keel's build); remove the line",
        );
    }
    let ms = |v: Option<u64>, default: u64, key: &str, errors: &mut Errors| match v {
        Some(0) => {
            errors.push(path(key), "must be greater than 0");
            Duration::from_millis(default)
        }
        Some(n) => Duration::from_millis(n),
        None => Duration::from_millis(default),
    };
    let connect_timeout = ms(raw.connect_timeout_ms, 5_000, "connect_timeout_ms", errors);
    let request_timeout = ms(raw.request_timeout_ms, 120_000, "request_timeout_ms", errors);
    let pool_idle_timeout = ms(raw.pool_idle_timeout_ms, 90_000, "pool_idle_timeout_ms", errors);
    if errors.0.len() > before {
        return None;
    }
    Some(ProviderConfig {
        id: ProviderId::from(name),
        kind: kind?,
        base_url,
        api_key,
        api_version: raw.api_version,
        headers,
        connect_timeout,
        request_timeout,
        pool_max_idle_per_host: raw.pool_max_idle_per_host.unwrap_or(64),
        pool_idle_timeout,
        default_max_tokens: raw.default_max_tokens.unwrap_or(4096),
        max_response_bytes: raw.max_response_bytes.filter(|n| *n > 0).unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
        local: LocalSettings {
            models_dir: raw.models_dir.map(std::path::PathBuf::from),
            threads: raw.threads.filter(|t| *t > 0),
            // A small burst (a page of tabs, a retry wave) waits its turn instead of being refused; deeper
            // queues only add waiting time on a model that generates one answer at a time.
            queue_depth: raw.queue_depth.unwrap_or(16).max(1),
            // Embeddings take milliseconds; the semantic cache asks for one per chat request.
            embed_queue_depth: raw.embed_queue_depth.unwrap_or(256).max(1),
            context_size: raw.context_size.unwrap_or(2048).max(64),
            onnxruntime_library: raw.onnxruntime_library.map(std::path::PathBuf::from),
        },
    })
}

/// Replaces `${NAME}` with the environment variable's value; returns the name of a missing variable.
pub(crate) fn expand_env(value: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&env.var(var).ok_or_else(|| var.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_model(
    name: &str,
    raw: RawModel,
    declared: &BTreeMap<String, Option<ProviderKind>>,
    defaults: &ReliabilityPolicy,
    errors: &mut Errors,
) -> Option<ModelAlias> {
    let Some(provider) = raw.provider else {
        errors.push(format!("models.{name}.provider"), "required: the name of a provider");
        return None;
    };
    let Some(kind) = declared.get(&provider) else {
        let hint = if declared.is_empty() {
            "no providers are configured".to_string()
        } else {
            format!("known: {}", declared.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        errors.push(format!("models.{name}.provider"), format!("unknown provider {provider:?} ({hint})"));
        return None;
    };
    let reliability = match &raw.reliability {
        Some(r) => overlay(defaults, r, &format!("models.{name}.reliability"), errors),
        None => defaults.clone(),
    };
    let response_schema = raw.response_schema.as_deref().and_then(|text| {
        let path = format!("models.{name}.response_schema");
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(schema) => match jsonschema::validator_for(&schema) {
                Ok(_) => Some(schema),
                Err(e) => {
                    errors.push(path, format!("not a valid JSON Schema: {e}"));
                    None
                }
            },
            Err(e) => {
                errors.push(path, format!("not JSON: {e}"));
                None
            }
        }
    });
    let retrieval = raw.rag.as_ref().and_then(|r| crate::rag::resolve_model_rag(name, r, errors));
    let id = ProviderId::from(provider.as_str());
    let model = raw.model.unwrap_or_else(|| name.to_string());
    // Anthropic's Messages API continues a trailing assistant message; OpenAI's chat API starts a new turn.
    let supports_prefill = raw.supports_prefill.unwrap_or(*kind == Some(ProviderKind::Anthropic));
    Some(ModelAlias {
        name: name.to_string(),
        targets: vec![ModelTarget { provider: id, model, deployment: raw.deployment, supports_prefill }],
        context_fallback: Vec::new(),
        reliability,
        response_schema,
        cache: crate::cache::CachePolicy::default(),
        max_in_flight: match raw.max_in_flight {
            Some(0) => {
                errors.push(format!("models.{name}.max_in_flight"), "must be greater than 0");
                None
            }
            n => n.map(|n| n as usize),
        },
        retrieval,
        guard: None,
        choose: match raw.choose.as_deref() {
            None | Some("config") => TargetOrder::Config,
            Some("cheapest") => TargetOrder::Cheapest,
            Some(other) => {
                errors.push(format!("models.{name}.choose"), format!("{other:?}: expected \"config\" or \"cheapest\""));
                TargetOrder::Config
            }
        },
    })
}
