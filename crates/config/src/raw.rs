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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub log_format: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Option<String>,
    /// The model name sent upstream; defaults to the alias itself.
    pub model: Option<String>,
    /// For Azure OpenAI: the deployment name; defaults to `model`.
    pub deployment: Option<String>,
}
