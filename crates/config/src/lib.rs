//! keel's configuration: one TOML file, parsed once into raw structs, then validated into the resolved form.
//!
//! Validation collects every error with its path (`models.fast.provider: unknown provider "opnai"`) and reports
//! them together. Components receive their slice of the resolved [`Config`], never the whole file.

mod cache;
mod diff;
mod guard;
mod log;
mod online;
mod rag;
mod raw;
mod reliability;
mod reload;
mod resolve;
mod router;
mod template;
mod toml_errors;

use std::path::Path;

pub use cache::{CacheBackend, CacheConfig, CacheMode, CachePolicy, DEFAULT_THRESHOLD};
pub use diff::changed_sections;
pub use guard::{DEFAULT_OUTPUT_ENTITIES, GuardAction, GuardPolicy};
pub use log::{
    Acknowledge, AuthConfig, BodyPolicy, CountersError, LogConfig, Price, QueueFull, TelemetryConfig, data_dir,
    default_store,
};
pub use online::OnlineEval;
pub use rag::{ChunkSizes, DEFAULT_RAG_MODEL, MAX_GROUNDING_K, RagConfig, Retrieval, RetrievalMode};
pub use reliability::{CircuitPolicy, ErrorClass, ReliabilityPolicy, StreamFailure};
pub use reload::ReloadConfig;
pub use resolve::{
    Config, DEFAULT_MAX_RESPONSE_BYTES, LocalSettings, LogFormat, ModelAlias, ModelTarget, ProviderConfig, ProviderId,
    ProviderKind, Secret, ServerConfig, TargetOrder, default_max_in_flight,
};
pub use router::{Cascade, CascadeCheck, CascadeStream, Learned, Router, RouterKind, Rule, Task};
pub use template::{Template, used_variables};

/// One problem in a configuration file, with the dotted path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where secrets referenced by the configuration are looked up. The process environment in production,
/// a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Parses and validates configuration text.
pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = toml_errors::read(text).map_err(ConfigErrors)?;
    resolve::resolve(raw, env)
}

/// The store URL of configuration text, for commands that only read keel's store (`keel logs`, `keel keys`):
/// the whole file must parse, but the providers' secrets need not be in the environment.
pub fn store_url(text: &str, env: &dyn Env) -> Result<String, ConfigErrors> {
    let raw: raw::RawConfig = toml_errors::read(text).map_err(ConfigErrors)?;
    let mut errors = resolve::Errors::default();
    let url = log::resolve_store(raw.store, env, &mut errors);
    if errors.0.is_empty() { Ok(url) } else { Err(ConfigErrors(errors.0)) }
}

/// Reads a configuration file's store URL (see [`store_url`]).
pub fn load_store_url(path: &Path, env: &dyn Env) -> Result<String, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { path: String::new(), message: format!("cannot read {}: {e}", path.display()) }])
    })?;
    store_url(&text, env)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { path: String::new(), message: format!("cannot read {}: {e}", path.display()) }])
    })?;
    parse(&text, env)
}

#[cfg(test)]
mod tests;
