//! `[cache]` and `[models.NAME.cache]`: keel's response cache.

use std::time::Duration;

use serde::Deserialize;

use crate::resolve::Errors;

/// The default similarity a semantic hit needs, chosen from the measured table in `docs/cache.md`.
pub const DEFAULT_THRESHOLD: f32 = 0.92;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// "memory" (default) or "redis".
    pub backend: Option<String>,
    /// The Redis URL when `backend = "redis"`.
    pub redis: Option<String>,
    /// The in-process backend's bound, in bytes of answers kept.
    pub max_bytes: Option<u64>,
    /// The mode of every alias without its own: "off" (default), "read", "write", "read-write".
    pub mode: Option<String>,
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub semantic: RawSemantic,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemantic {
    /// The embeddings model alias (default: the local all-MiniLM-L6-v2).
    pub model: Option<String>,
    /// The default threshold for aliases with `semantic = true`.
    pub threshold: Option<f64>,
    /// Entries kept in memory (and in the store); the oldest go first.
    pub max_entries: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelCache {
    pub mode: Option<String>,
    pub ttl_seconds: Option<u64>,
    /// Opt in to the semantic cache for this alias.
    pub semantic: Option<bool>,
    pub threshold: Option<f64>,
}

/// Whether the cache is read, written, both, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Off,
    Read,
    Write,
    ReadWrite,
}

impl CacheMode {
    /// `off`, `read`, `write`, `read-write` (also `read_write`, `on`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "no-store" => Some(Self::Off),
            "read" | "read-only" => Some(Self::Read),
            "write" | "write-only" | "refresh" => Some(Self::Write),
            "read-write" | "read_write" | "on" => Some(Self::ReadWrite),
            _ => None,
        }
    }

    pub fn reads(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Read => "read",
            Self::Write => "write",
            Self::ReadWrite => "read-write",
        }
    }
}

/// Where exact entries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheBackend {
    Memory { max_bytes: u64 },
    Redis { url: String },
}

/// The cache's global settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub backend: CacheBackend,
    /// The embeddings alias of the semantic cache.
    pub semantic_model: String,
    pub max_semantic_entries: usize,
}

/// One alias's cache policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachePolicy {
    pub mode: CacheMode,
    pub ttl: Duration,
    /// The similarity threshold when the semantic cache is on for this alias.
    pub semantic: Option<f32>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self { mode: CacheMode::Off, ttl: Duration::from_secs(3600), semantic: None }
    }
}

pub(crate) fn resolve_cache(raw: &RawCache, env: &dyn crate::Env, errors: &mut Errors) -> CacheConfig {
    let backend = match raw.backend.as_deref() {
        None | Some("memory") => CacheBackend::Memory { max_bytes: raw.max_bytes.unwrap_or(256 << 20).max(1) },
        Some("redis") => match raw.redis.as_deref().map(|r| crate::resolve::expand_env(r, env)) {
            Some(Ok(url)) if url.starts_with("redis://") || url.starts_with("rediss://") => CacheBackend::Redis { url },
            Some(Ok(url)) => {
                errors.push("cache.redis", format!("not a Redis URL: {url:?} (expected redis://HOST:PORT)"));
                CacheBackend::Memory { max_bytes: 1 }
            }
            Some(Err(var)) => {
                errors.push("cache.redis", format!("environment variable {var} is not set"));
                CacheBackend::Memory { max_bytes: 1 }
            }
            None => {
                errors.push("cache.redis", "required when backend = \"redis\"");
                CacheBackend::Memory { max_bytes: 1 }
            }
        },
        Some(other) => {
            errors.push("cache.backend", format!("unknown backend {other:?} (expected \"memory\" or \"redis\")"));
            CacheBackend::Memory { max_bytes: 1 }
        }
    };
    if let Some(m) = raw.mode.as_deref()
        && CacheMode::parse(m).is_none()
    {
        errors.push("cache.mode", format!("unknown mode {m:?} (expected off, read, write or read-write)"));
    }
    if raw.ttl_seconds == Some(0) {
        errors.push("cache.ttl_seconds", "must be greater than 0");
    }
    if let Some(t) = raw.semantic.threshold
        && !(0.0..=1.0).contains(&t)
    {
        errors.push("cache.semantic.threshold", format!("must be between 0 and 1, got {t}"));
    }
    CacheConfig {
        backend,
        semantic_model: raw.semantic.model.clone().unwrap_or_else(|| "all-minilm-l6-v2".into()),
        max_semantic_entries: raw.semantic.max_entries.unwrap_or(100_000).max(1),
    }
}

/// An alias's policy: its own keys over the `[cache]` defaults.
pub(crate) fn resolve_policy(
    name: &str,
    own: Option<&RawModelCache>,
    global: &RawCache,
    errors: &mut Errors,
) -> CachePolicy {
    // A key the alias sets is reported under the alias; the `[cache]` defaults are checked once, in
    // `resolve_cache`.
    let own_path = |key: &str| format!("models.{name}.cache.{key}");
    let mode = match own.and_then(|c| c.mode.as_deref()) {
        Some(s) => CacheMode::parse(s).unwrap_or_else(|| {
            errors.push(own_path("mode"), format!("unknown mode {s:?} (expected off, read, write or read-write)"));
            CacheMode::Off
        }),
        None => global.mode.as_deref().and_then(CacheMode::parse).unwrap_or(CacheMode::Off),
    };
    let ttl = match own.and_then(|c| c.ttl_seconds) {
        Some(0) => {
            errors.push(own_path("ttl_seconds"), "must be greater than 0");
            Duration::from_secs(1)
        }
        Some(s) => Duration::from_secs(s),
        None => Duration::from_secs(global.ttl_seconds.filter(|s| *s > 0).unwrap_or(3600)),
    };
    let path = own_path;
    let semantic = own.and_then(|c| c.semantic).unwrap_or(false).then(|| {
        let t = own.and_then(|c| c.threshold).or(global.semantic.threshold);
        match t {
            Some(t) if (0.0..=1.0).contains(&t) => t as f32,
            Some(t) => {
                errors.push(path("threshold"), format!("must be between 0 and 1, got {t}"));
                DEFAULT_THRESHOLD
            }
            None => DEFAULT_THRESHOLD,
        }
    });
    if own.is_some_and(|c| c.threshold.is_some() && c.semantic != Some(true)) {
        errors.push(path("threshold"), "set, but semantic is not enabled for this alias (semantic = true)");
    }
    CachePolicy { mode, ttl, semantic }
}
