//! keel's configuration: one TOML file, parsed once into raw structs, then validated into the resolved form.
//!
//! Validation collects every error with its path (`models.fast.provider: unknown provider "opnai"`) and reports
//! them together. Components receive their slice of the resolved [`Config`], never the whole file.

mod cache;
mod log;
mod raw;
mod reliability;
mod resolve;

use std::path::Path;

pub use cache::{CacheBackend, CacheConfig, CacheMode, CachePolicy, DEFAULT_THRESHOLD};
pub use log::{AuthConfig, BodyPolicy, LogConfig, Price, QueueFull, TelemetryConfig, default_store};
pub use reliability::{CircuitPolicy, ErrorClass, ReliabilityPolicy, StreamFailure};
pub use resolve::{
    Config, EmbeddingsEngine, LocalSettings, LogFormat, ModelAlias, ModelTarget, ProviderConfig, ProviderId,
    ProviderKind, Secret, ServerConfig,
};

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
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(&e)]))?;
    resolve::resolve(raw, env)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { path: String::new(), message: format!("cannot read {}: {e}", path.display()) }])
    })?;
    parse(&text, env)
}

fn toml_error(e: &toml::de::Error) -> ConfigError {
    // toml reports the span but not the key path; the message names the key for unknown fields and types.
    let message = e.message().trim().to_string();
    let path = match e.span() {
        Some(span) => format!("at byte {}", span.start),
        None => String::new(),
    };
    ConfigError { path, message }
}

#[cfg(test)]
mod tests;
