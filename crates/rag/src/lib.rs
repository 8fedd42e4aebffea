//! Retrieval-augmented generation: documents into chunks (`extract`, `chunk`), chunks into an index with a
//! keyword side (BM25) and a vector side (HNSW) behind one trait (`index`, with the embedded implementation in
//! `embedded` and the PostgreSQL one, pgvector, in `pg`), queries answered by either side or by both fused (`search`, `fusion`), collections kept up to
//! date incrementally (`ingest`), and retrieval measured on BEIR-layout data (`eval`).
//!
//! Nothing here knows HTTP or a provider: embeddings come through the [`Embed`] trait, which the binary
//! implements over keel's own request path (retries, fallbacks, timeouts, circuit breakers).

pub mod chunk;
pub mod collections;
pub mod embedded;
pub mod eval;
pub mod extract;
pub mod fusion;
pub mod index;
pub mod ingest;
pub mod pdf;
pub mod pg;
pub mod search;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use chunk::{Chunk, Chunker, TokenCount};
pub use collections::Collections;
pub use embedded::{EmbeddedIndex, EmbeddedStore};
pub use index::{Filter, Index, NewChunk, SourceState, Store, Update};
pub use pg::PgStore;
pub use search::{Hit, Mode, Searcher};

/// Computes embeddings for texts, one vector per text, in order.
pub trait Embed: Send + Sync {
    /// The model's identity, recorded with every collection: vectors of two models are not comparable.
    fn model(&self) -> String;
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, String>>;
}

/// What a collection is: its name, and the embeddings model (and its vectors' size) its vectors came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub name: String,
    pub model: String,
    pub dims: usize,
}

/// What can go wrong in retrieval.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    #[error("collection {0:?} does not exist")]
    NoCollection(String),
    #[error("invalid collection name {0:?}: use letters, digits, '-', '_' and '.', at most 64 characters")]
    BadName(String),
    #[error(
        "collection {collection:?} was embedded with {stored:?}; querying or adding with {asked:?} would compare \
         vectors of two different models"
    )]
    ModelMismatch { collection: String, stored: String, asked: String },
    #[error("the embeddings model returned vectors of {got} dimensions, the collection holds {want}")]
    Dimensions { want: usize, got: usize },
    #[error("embeddings failed: {0}")]
    Embed(String),
    #[error("invalid filter {0:?}: use key=value")]
    BadFilter(String),
    #[error("{0}")]
    Invalid(String),
    #[error("index: {0}")]
    Index(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl RagError {
    pub(crate) fn index(e: impl std::fmt::Display) -> Self {
        RagError::Index(e.to_string())
    }
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        RagError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}

/// Checks a collection's name: it becomes a directory name and a table key.
pub fn check_name(name: &str) -> Result<(), RagError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(RagError::BadName(name.to_string())) }
}
