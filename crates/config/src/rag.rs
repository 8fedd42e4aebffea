//! `[rag]`: where collections live and the embeddings model they are built and searched with.

use std::path::PathBuf;

use serde::Deserialize;

use crate::resolve::Errors;

/// The embeddings model of the embedded default.
pub const DEFAULT_RAG_MODEL: &str = "all-minilm-l6-v2";

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRag {
    pub dir: Option<String>,
    pub model: Option<String>,
}

/// Retrieval settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RagConfig {
    /// Where collections live: `[rag] dir`, else `collections` in keel's data directory.
    pub dir: PathBuf,
    /// The embeddings model (an alias) collections are built and searched with.
    pub model: String,
    /// Whether `model` was configured (a default that is not configured leaves retrieval off, quietly).
    pub model_configured: bool,
}

pub(crate) fn resolve_rag(raw: &RawRag, env: &dyn crate::Env, errors: &mut Errors) -> RagConfig {
    let dir = match &raw.dir {
        Some(d) => match crate::resolve::expand_env(d, env) {
            Ok(d) => PathBuf::from(d),
            Err(var) => {
                errors.push("rag.dir", format!("environment variable {var} is not set"));
                PathBuf::new()
            }
        },
        None => PathBuf::from(crate::log::data_dir(env)).join("collections"),
    };
    RagConfig {
        dir,
        model: raw.model.clone().unwrap_or_else(|| DEFAULT_RAG_MODEL.into()),
        model_configured: raw.model.is_some(),
    }
}
