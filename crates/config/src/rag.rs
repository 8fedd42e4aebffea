//! `[rag]`: where collections live (a directory, or a PostgreSQL database with pgvector), the embeddings model
//! they are built and searched with, and how documents added through the API are cut into chunks.

use std::path::PathBuf;

use serde::Deserialize;

use crate::resolve::Errors;

/// The embeddings model of the embedded default.
pub const DEFAULT_RAG_MODEL: &str = "all-minilm-l6-v2";

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRag {
    pub dir: Option<String>,
    pub postgres: Option<String>,
    pub model: Option<String>,
    pub min_tokens: Option<usize>,
    pub max_tokens: Option<usize>,
    pub overlap_tokens: Option<usize>,
}

/// `[models.X.rag]`: the collection an alias answers from.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelRag {
    pub collection: Option<String>,
    pub k: Option<usize>,
    pub mode: Option<String>,
}

/// How a collection is searched for grounded answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetrievalMode {
    Bm25,
    Vector,
    #[default]
    Hybrid,
}

/// The most passages a route may put in a prompt.
pub const MAX_GROUNDING_K: usize = 20;

/// A route's grounding: every chat request of the alias is answered from this collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrieval {
    pub collection: String,
    /// Passages put in the prompt, at most.
    pub k: usize,
    pub mode: RetrievalMode,
}

pub(crate) fn resolve_model_rag(name: &str, raw: &RawModelRag, errors: &mut Errors) -> Option<Retrieval> {
    let path = format!("models.{name}.rag");
    let collection = match raw.collection.as_deref() {
        Some(c)
            if !c.is_empty()
                && c.len() <= 64
                && !c.starts_with('.')
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) =>
        {
            c.to_string()
        }
        Some(c) => {
            errors.push(
                format!("{path}.collection"),
                format!("{c:?} is not a collection name (letters, digits, -, _, .)"),
            );
            return None;
        }
        None => {
            errors.push(format!("{path}.collection"), "required: the collection to answer from");
            return None;
        }
    };
    let k = raw.k.unwrap_or(5);
    if k == 0 || k > MAX_GROUNDING_K {
        errors.push(format!("{path}.k"), format!("must be between 1 and {MAX_GROUNDING_K}"));
    }
    let mode = match raw.mode.as_deref() {
        None | Some("hybrid") => RetrievalMode::Hybrid,
        Some("bm25") => RetrievalMode::Bm25,
        Some("vector") => RetrievalMode::Vector,
        Some(m) => {
            errors.push(format!("{path}.mode"), format!("{m:?} is not one of bm25, vector, hybrid"));
            RetrievalMode::Hybrid
        }
    };
    Some(Retrieval { collection, k, mode })
}

/// Chunk sizes, in the embeddings model's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min_tokens: usize,
    pub max_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkSizes {
    fn default() -> Self {
        Self { min_tokens: 112, max_tokens: 224, overlap_tokens: 24 }
    }
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
    /// `[rag] postgres`: collections in this PostgreSQL database (pgvector) instead of under `dir`, shared by
    /// every keel instance that names it.
    pub postgres: Option<String>,
    pub chunks: ChunkSizes,
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
    let postgres = raw.postgres.as_ref().and_then(|u| match crate::resolve::expand_env(u, env) {
        Ok(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Some(u),
        Ok(_) => {
            errors.push("rag.postgres", "must be a postgres:// URL".to_string());
            None
        }
        Err(var) => {
            errors.push("rag.postgres", format!("environment variable {var} is not set"));
            None
        }
    });
    let d = ChunkSizes::default();
    let chunks = ChunkSizes {
        min_tokens: raw.min_tokens.unwrap_or(d.min_tokens),
        max_tokens: raw.max_tokens.unwrap_or(d.max_tokens),
        overlap_tokens: raw.overlap_tokens.unwrap_or(d.overlap_tokens),
    };
    if chunks.min_tokens == 0 || chunks.min_tokens > chunks.max_tokens {
        errors.push("rag.min_tokens", "must be at least 1 and at most max_tokens".to_string());
    }
    if chunks.overlap_tokens >= chunks.min_tokens {
        errors.push("rag.overlap_tokens", "must be less than min_tokens".to_string());
    }
    RagConfig {
        dir,
        model: raw.model.clone().unwrap_or_else(|| DEFAULT_RAG_MODEL.into()),
        model_configured: raw.model.is_some(),
        postgres,
        chunks,
    }
}
