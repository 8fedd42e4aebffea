//! `[store]` (keel's database), `[log]` (the request log), `[auth]` (virtual keys and limits) and `[prices]`
//! (cost accounting), resolved.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub enabled: Option<bool>,
    pub bodies: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub queue_bytes: Option<usize>,
    pub on_full: Option<String>,
    pub batch_max: Option<usize>,
    pub retention_days: Option<u32>,
    pub acknowledge: Option<String>,
    pub acknowledge_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

/// What of a request's and response's bodies the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Bodies as sent and received (up to `max_body_bytes` each).
    Full,
    /// The JSON structure, with every text (message contents, tool arguments, embedding input) replaced by
    /// its length.
    Redacted,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    Wait,
    DropBodies,
}

/// When an answer may go out, as far as its log row is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledge {
    /// Once the row is queued (fast; a process killed with rows in the queue loses them).
    Queued,
    /// Once the row has committed to the store (an answer a client got is never missing from the log).
    Committed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub enabled: bool,
    pub bodies: BodyPolicy,
    pub max_body_bytes: usize,
    pub queue_bytes: usize,
    pub on_full: QueueFull,
    pub batch_max: usize,
    pub retention: Option<Duration>,
    pub acknowledge: Acknowledge,
    /// With `Committed`: the longest an answer waits for its row's commit (then it goes out, counted).
    pub acknowledge_timeout: Duration,
}

/// A price in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input tokens served from the provider's prompt cache; `input` when not given.
    pub cached_input: f64,
}

/// keel's data directory: `$KEEL_DATA_DIR`, else `$XDG_DATA_HOME/keel` (`~/.local/share/keel`).
pub fn data_dir(env: &dyn crate::Env) -> String {
    env.var("KEEL_DATA_DIR")
        .or_else(|| env.var("XDG_DATA_HOME").map(|d| format!("{d}/keel")))
        .or_else(|| env.var("HOME").map(|h| format!("{h}/.local/share/keel")))
        .unwrap_or_else(|| ".".into())
}

/// The default store: `keel.db` in the data directory ([`data_dir`]).
pub fn default_store(env: &dyn crate::Env) -> String {
    format!("sqlite://{}/keel.db", data_dir(env))
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite://PATH` or `postgres://…`; may reference the environment as `${NAME}`.
    pub url: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub enabled: Option<bool>,
    pub admin_key_env: Option<String>,
    pub public: Option<Vec<String>>,
    pub redis: Option<String>,
    pub default_output_tokens: Option<u32>,
    pub open_admin_on_loopback: Option<bool>,
    pub on_counters_error: Option<String>,
    pub key_cache_ttl_ms: Option<u64>,
}

/// Virtual keys, budgets and rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub enabled: bool,
    /// The admin key (from the environment); also accepted on every API route, without limits.
    pub admin_key: Option<crate::resolve::Secret>,
    /// Paths served without a key.
    pub public: Vec<String>,
    /// Shared counters for several keel instances; in-process counters when unset.
    pub redis: Option<String>,
    /// Output tokens reserved against a budget when a request sets no `max_tokens`; such a request is capped
    /// at this many upstream.
    pub default_output_tokens: u32,
    /// Whether `/admin/*` answers without the admin key when keel listens only on a loopback address (the
    /// operator's own machine). Without an admin key and without this, `/admin/*` is refused.
    pub open_admin_on_loopback: bool,
    /// What a keyed request gets when the budget and rate counters cannot be reached (Redis down).
    pub on_counters_error: CountersError,
    /// How long a verified key is trusted without reading the store again: the bound on how long another
    /// instance accepts a revoked key when revocations cannot reach it through Redis.
    pub key_cache_ttl: std::time::Duration,
}

/// When the budget and rate counters are unreachable: refuse keyed requests (503, budgets stay exact), or
/// admit them unmetered (served, logged with their cost, counted; budgets may be overspent meanwhile, and the
/// logged spend counts again once the counters are back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CountersError {
    #[default]
    Refuse,
    Admit,
}

pub(crate) fn resolve_store(raw: RawStore, env: &dyn crate::Env, errors: &mut Errors) -> String {
    match raw.url {
        Some(s) => match crate::resolve::expand_env(&s, env) {
            Ok(s) if s.starts_with("sqlite:") || s.starts_with("postgres://") || s.starts_with("postgresql://") => s,
            Ok(s) => {
                errors.push("store.url", format!("not a store URL: {s:?} (expected sqlite://PATH or postgres://…)"));
                s
            }
            Err(var) => {
                errors.push("store.url", format!("environment variable {var} is not set"));
                String::new()
            }
        },
        None => default_store(env),
    }
}

pub(crate) fn resolve_auth(raw: RawAuth, env: &dyn crate::Env, errors: &mut Errors) -> AuthConfig {
    let enabled = raw.enabled.unwrap_or(false);
    let var = raw.admin_key_env.unwrap_or_else(|| "KEEL_ADMIN_KEY".into());
    let admin_key = env.var(&var).map(crate::resolve::Secret::new);
    if enabled && admin_key.is_none() {
        errors.push("auth.admin_key_env", format!("environment variable {var} is not set (the admin key)"));
    }
    let redis = raw.redis.and_then(|r| match crate::resolve::expand_env(&r, env) {
        Ok(r) if r.starts_with("redis://") || r.starts_with("rediss://") => Some(r),
        Ok(r) => {
            errors.push("auth.redis", format!("not a Redis URL: {r:?} (expected redis://HOST:PORT)"));
            None
        }
        Err(var) => {
            errors.push("auth.redis", format!("environment variable {var} is not set"));
            None
        }
    });
    AuthConfig {
        enabled,
        admin_key,
        public: raw.public.unwrap_or_else(|| vec!["/health".into(), "/ready".into()]),
        redis,
        default_output_tokens: raw.default_output_tokens.unwrap_or(4096).max(1),
        open_admin_on_loopback: raw.open_admin_on_loopback.unwrap_or(false),
        key_cache_ttl: std::time::Duration::from_millis(raw.key_cache_ttl_ms.unwrap_or(5_000)),
        on_counters_error: match raw.on_counters_error.as_deref() {
            None | Some("refuse") => CountersError::Refuse,
            Some("admit") => CountersError::Admit,
            Some(other) => {
                errors.push("auth.on_counters_error", format!("expected \"refuse\" or \"admit\", got {other:?}"));
                CountersError::Refuse
            }
        },
    }
}

pub(crate) fn resolve_log(raw: RawLog, errors: &mut Errors) -> LogConfig {
    let bodies = match raw.bodies.as_deref() {
        None | Some("none") => BodyPolicy::None,
        Some("full") => BodyPolicy::Full,
        Some("redacted") => BodyPolicy::Redacted,
        Some(other) => {
            errors
                .push("log.bodies", format!("unknown policy {other:?} (expected \"full\", \"redacted\" or \"none\")"));
            BodyPolicy::None
        }
    };
    let on_full = match raw.on_full.as_deref() {
        None | Some("wait") => QueueFull::Wait,
        Some("drop_bodies") => QueueFull::DropBodies,
        Some(other) => {
            errors.push("log.on_full", format!("unknown policy {other:?} (expected \"wait\" or \"drop_bodies\")"));
            QueueFull::Wait
        }
    };
    let acknowledge = match raw.acknowledge.as_deref() {
        None | Some("queued") => Acknowledge::Queued,
        Some("committed") => Acknowledge::Committed,
        Some(other) => {
            errors.push("log.acknowledge", format!("unknown setting {other:?} (expected \"queued\" or \"committed\")"));
            Acknowledge::Queued
        }
    };
    let acknowledge_timeout = match raw.acknowledge_timeout_ms {
        Some(0) => {
            errors.push("log.acknowledge_timeout_ms", "must be greater than 0");
            Duration::from_secs(5)
        }
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_secs(5),
    };
    let positive = |v: Option<usize>, default: usize, key: &str, errors: &mut Errors| match v {
        Some(0) => {
            errors.push(format!("log.{key}"), "must be greater than 0");
            default
        }
        Some(n) => n,
        None => default,
    };
    LogConfig {
        enabled: raw.enabled.unwrap_or(true),
        bodies,
        max_body_bytes: positive(raw.max_body_bytes, 64 * 1024, "max_body_bytes", errors),
        queue_bytes: positive(raw.queue_bytes, 64 << 20, "queue_bytes", errors),
        on_full,
        batch_max: positive(raw.batch_max, 512, "batch_max", errors),
        retention: match raw.retention_days {
            Some(0) => None,
            Some(d) => Some(Duration::from_secs(u64::from(d) * 86_400)),
            None => Some(Duration::from_secs(30 * 86_400)),
        },
        acknowledge,
        acknowledge_timeout,
    }
}

pub(crate) fn resolve_prices(raw: BTreeMap<String, RawPrice>, errors: &mut Errors) -> BTreeMap<String, Price> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let cached = p.cached_input.unwrap_or(p.input);
        if [p.input, p.output, cached].iter().any(|v| !v.is_finite() || *v < 0.0) {
            errors.push(format!("prices.{name}"), "prices must be finite and not negative (USD per million tokens)");
            continue;
        }
        out.insert(name, Price { input: p.input, output: p.output, cached_input: cached });
    }
    out
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

/// OpenTelemetry trace export (off unless an endpoint is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans go to `/v1/traces` under it.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

pub(crate) fn resolve_telemetry(raw: RawTelemetry, env: &dyn crate::Env, errors: &mut Errors) -> TelemetryConfig {
    let otlp_endpoint = raw.otlp_endpoint.and_then(|e| match crate::resolve::expand_env(&e, env) {
        Ok(e) if e.starts_with("http://") || e.starts_with("https://") => Some(e.trim_end_matches('/').to_string()),
        Ok(e) => {
            errors.push("telemetry.otlp_endpoint", format!("not an http(s) URL: {e:?}"));
            None
        }
        Err(var) => {
            errors.push("telemetry.otlp_endpoint", format!("environment variable {var} is not set"));
            None
        }
    });
    TelemetryConfig { otlp_endpoint, service_name: raw.service_name.unwrap_or_else(|| "keel".into()) }
}
