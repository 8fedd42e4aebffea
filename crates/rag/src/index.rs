//! The index behind one trait: a collection's chunks, searchable by keywords (BM25) and by vector, updated a
//! source at a time in atomic steps; and the place collections live behind another ([`Store`]). The
//! implementations: `embedded.rs` (tantivy + usearch, files under the data directory) and `pg.rs`
//! (PostgreSQL with pgvector, shared by several keel instances).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::chunk::Chunk;
use crate::{CollectionInfo, RagError};

/// What the collection knows of one source (a file, or a document of an evaluation corpus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// SHA-256 of the source's bytes: an unchanged source is skipped.
    pub hash: String,
    /// Its chunks' ids are `first_id..first_id + chunks`.
    pub first_id: u64,
    pub chunks: u64,
    pub tokens: u64,
}

/// A chunk to add, with its vector and its metadata (`key=value` pairs a filter can match).
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub chunk: Chunk,
    pub vector: Vec<f32>,
}

/// A source's new content: every chunk of it (an empty list removes the source).
#[derive(Debug, Clone)]
pub struct SourceUpdate {
    pub source: String,
    pub hash: String,
    pub meta: BTreeMap<String, String>,
    pub chunks: Vec<NewChunk>,
}

/// One atomic step: sources removed and sources added or replaced. Either all of it is visible after
/// [`Index::apply`] returns `Ok`, or none of it (a crash midway leaves the previous state).
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub remove: Vec<String>,
    pub upsert: Vec<SourceUpdate>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.upsert.is_empty()
    }
}

/// Metadata conditions a chunk must all meet (`key=value`; the keys every chunk has: `source`, `kind`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub all: Vec<(String, String)>,
}

impl Filter {
    /// Parses `key=value` conditions.
    pub fn parse<S: AsRef<str>>(conditions: &[S]) -> Result<Self, RagError> {
        let mut all = Vec::new();
        for c in conditions {
            let c = c.as_ref();
            match c.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => all.push((k.trim().to_string(), v.trim().to_string())),
                _ => return Err(RagError::BadFilter(c.to_string())),
            }
        }
        Ok(Self { all })
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// A chunk as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredChunk {
    pub id: u64,
    pub source: String,
    pub text: String,
    pub headings: Vec<String>,
    pub start: u64,
    pub end: u64,
    pub meta: BTreeMap<String, String>,
}

/// A collection's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    pub sources: u64,
    pub chunks: u64,
    pub tokens: u64,
}

/// A collection's index.
pub trait Index: Send + Sync {
    /// What the collection is (fixed when it is created).
    fn info(&self) -> CollectionInfo;
    /// Every source with its state.
    fn sources(&self) -> BoxFuture<'_, Result<BTreeMap<String, SourceState>, RagError>>;
    fn stats(&self) -> BoxFuture<'_, Result<Stats, RagError>>;
    /// Whether this handle no longer shows the collection as it is (another process committed a newer state
    /// that the handle does not read by itself, or the collection was deleted or recreated): reopen it.
    fn stale(&self) -> BoxFuture<'_, bool>;
    /// Applies an update atomically.
    fn apply(&self, update: Update) -> BoxFuture<'_, Result<(), RagError>>;
    /// The best `k` chunks by BM25 over text and headings: `(id, score)`, best first.
    fn keyword(&self, query: String, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>>;
    /// The `k` nearest chunks by cosine similarity: `(id, similarity)`, best first.
    fn vector(&self, query: Vec<f32>, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>>;
    /// The chunks with these ids, in the same order (missing ones skipped).
    fn chunks(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<Vec<StoredChunk>, RagError>>;
}

/// Where collections live: a directory of embedded indexes, or a PostgreSQL database.
pub trait Store: Send + Sync {
    /// Opens a collection ([`RagError::NoCollection`] when there is none).
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>>;
    /// Opens a collection, or creates an empty one as `info` says. An existing collection of another model
    /// (or vector size) is [`RagError::ModelMismatch`] ([`RagError::Dimensions`]), and stays as it is.
    fn open_or_create(&self, info: CollectionInfo) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>>;
    /// Every collection with its size, by name.
    fn list(&self) -> BoxFuture<'_, Result<Vec<(CollectionInfo, Stats)>, RagError>>;
    /// Deletes a collection; `false` if there was none.
    fn delete(&self, name: &str) -> BoxFuture<'_, Result<bool, RagError>>;
    /// Where, for logs and messages (no secrets).
    fn describe(&self) -> String;
}

/// `index`, when it holds `asked`'s model and vector size: the check of [`Store::open_or_create`].
pub(crate) fn same_model(index: Arc<dyn Index>, asked: &CollectionInfo) -> Result<Arc<dyn Index>, RagError> {
    let stored = index.info();
    if stored.model != asked.model {
        return Err(RagError::ModelMismatch {
            collection: stored.name,
            stored: stored.model,
            asked: asked.model.clone(),
        });
    }
    if stored.dims != asked.dims {
        return Err(RagError::Dimensions { want: stored.dims, got: asked.dims });
    }
    Ok(index)
}
