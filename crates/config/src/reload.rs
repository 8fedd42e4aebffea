//! `[reload]`: the evaluation suites that gate a reloaded configuration before it takes traffic.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub gate: Option<Vec<String>>,
    pub gate_timeout_s: Option<u64>,
}

/// What a reload must pass before the new version serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Suite files (`keel eval` suites), relative to the configuration file's directory. A reload that changes
    /// a model alias, router or template a suite runs (or what they depend on) runs that suite against the new
    /// version first, and the version in force keeps serving unless every gate passes.
    pub gate: Vec<PathBuf>,
    /// The most time the gate suites may take together; past it the reload is refused.
    pub gate_timeout: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { gate: Vec::new(), gate_timeout: Duration::from_secs(600) }
    }
}

pub(crate) fn resolve_reload(raw: &RawReload, errors: &mut Errors) -> ReloadConfig {
    let mut out = ReloadConfig::default();
    for (i, path) in raw.gate.iter().flatten().enumerate() {
        if path.trim().is_empty() {
            errors.push(format!("reload.gate[{i}]"), "an empty path");
        } else {
            out.gate.push(PathBuf::from(path));
        }
    }
    match raw.gate_timeout_s {
        Some(0) => errors.push("reload.gate_timeout_s", "must be at least 1"),
        Some(s) => out.gate_timeout = Duration::from_secs(s),
        None => {}
    }
    out
}
