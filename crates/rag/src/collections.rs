//! The collections keel serves and writes, on one [`Store`] with one embeddings model: opened on first use,
//! reopened when their handle goes stale (another process committed, or the collection was deleted or
//! recreated), searched and updated off the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chunk::Chunker;
use crate::extract::{Kind, extract};
use crate::fusion::Fusion;
use crate::index::{Filter, Index, Stats, Store, Update};
use crate::ingest::{self, Prepared, Progress};
use crate::search::{Hit, Mode, Searcher};
use crate::{CollectionInfo, Embed, RagError};

/// How long a collection handle is used without asking whether it went stale: the staleness bound of a
/// search after an ingest by another process.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Open collections kept at once; past it the least recently used is closed (reopened on its next use).
const MAX_OPEN: usize = 64;
/// The largest document [`Collections::add_document`] takes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

struct Open {
    index: Arc<dyn Index>,
    checked: Instant,
    used: Instant,
}

/// What adding one document did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Added {
    pub chunks: usize,
    pub tokens: usize,
    /// The same bytes were there already: nothing was embedded.
    pub unchanged: bool,
}

/// The collections on one store, embedded with one model.
pub struct Collections {
    store: Arc<dyn Store>,
    embed: Arc<dyn Embed>,
    fusion: Fusion,
    /// How documents added through [`Collections::add_document`] are cut; `None`: this keel only searches.
    chunker: Option<Chunker>,
    open: Mutex<HashMap<String, Open>>,
}

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collections").field("store", &self.store.describe()).finish_non_exhaustive()
    }
}

fn poisoned() -> RagError {
    RagError::Index("collections lock poisoned".into())
}

impl Collections {
    pub fn new(store: Arc<dyn Store>, embed: Arc<dyn Embed>, fusion: Fusion, chunker: Option<Chunker>) -> Self {
        Self { store, embed, fusion, chunker, open: Mutex::new(HashMap::new()) }
    }

    /// The embeddings model queries and documents are embedded with.
    pub fn model(&self) -> String {
        self.embed.model()
    }

    /// How hybrid searches fuse the two rankings.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    pub fn embedder(&self) -> Arc<dyn Embed> {
        self.embed.clone()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The collection, current within [`RECHECK`].
    pub async fn index(&self, name: &str) -> Result<Arc<dyn Index>, RagError> {
        crate::check_name(name)?;
        let now = Instant::now();
        let cached = {
            let mut open = self.open.lock().map_err(|_| poisoned())?;
            open.get_mut(name).map(|o| {
                o.used = now;
                (o.index.clone(), now.duration_since(o.checked) < RECHECK)
            })
        };
        let index = match cached {
            Some((index, true)) => return Ok(index),
            Some((index, false)) if !index.stale().await => Ok(index),
            _ => self.store.open(name).await,
        };
        self.remember(name, index, now)
    }

    fn remember(
        &self,
        name: &str,
        index: Result<Arc<dyn Index>, RagError>,
        now: Instant,
    ) -> Result<Arc<dyn Index>, RagError> {
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        match index {
            Ok(index) => {
                if open.len() >= MAX_OPEN
                    && !open.contains_key(name)
                    && let Some(oldest) = open.iter().min_by_key(|(_, o)| o.used).map(|(k, _)| k.clone())
                {
                    open.remove(&oldest);
                }
                open.insert(name.to_string(), Open { index: index.clone(), checked: now, used: now });
                Ok(index)
            }
            Err(e) => {
                open.remove(name);
                Err(e)
            }
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(name);
        }
    }

    /// The collection for adding documents with this model: created (with the model's vector size, from one
    /// probe embedding) when new; a collection of another model is [`RagError::ModelMismatch`].
    pub async fn writable(&self, name: &str) -> Result<Arc<dyn Index>, RagError> {
        let model = self.embed.model();
        let index = match self.index(name).await {
            Ok(index) => index,
            Err(RagError::NoCollection(_)) => {
                let probe = self.embed.embed(vec!["keel".into()]).await.map_err(RagError::Embed)?;
                let dims = probe.first().map(Vec::len).filter(|d| *d > 0);
                let dims = dims.ok_or_else(|| RagError::Embed("the embeddings model returned no vector".into()))?;
                let created =
                    self.store.open_or_create(CollectionInfo { name: name.into(), model: model.clone(), dims });
                self.remember(name, created.await, Instant::now())?
            }
            Err(e) => return Err(e),
        };
        let info = index.info();
        if info.model != model {
            return Err(RagError::ModelMismatch { collection: name.into(), stored: info.model, asked: model });
        }
        Ok(index)
    }

    pub async fn search(
        &self,
        name: &str,
        query: &str,
        mode: Mode,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, RagError> {
        let index = self.index(name).await?;
        let searcher = Searcher::new(index, self.embed.clone(), self.fusion)?;
        let result = searcher.search(query, mode, k, filter).await;
        if matches!(result, Err(RagError::NoCollection(_))) {
            self.forget(name);
        }
        result
    }

    /// Adds one document (or replaces the one with the same `source`), creating the collection when new.
    /// Unchanged bytes are skipped. `meta` is what filters match (`kind` and `title` are set by keel).
    pub async fn add_document(
        &self,
        collection: &str,
        source: &str,
        kind: Kind,
        bytes: Vec<u8>,
        meta: BTreeMap<String, String>,
    ) -> Result<Added, RagError> {
        let chunker = self
            .chunker
            .clone()
            .ok_or_else(|| RagError::Invalid("this keel has no chunker for adding documents".into()))?;
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(RagError::Invalid(format!(
                "{source}: {} bytes is more than the {MAX_DOCUMENT_BYTES} a document may have",
                bytes.len()
            )));
        }
        let index = self.writable(collection).await?;
        let known = index.sources().await?;
        let digest = ingest::hash(&bytes);
        if known.get(source).is_some_and(|s| s.hash == digest) {
            return Ok(Added { unchanged: true, ..Added::default() });
        }
        let (doc, chunks) = tokio::task::spawn_blocking(move || {
            extract(kind, &bytes)
                .map(|doc| {
                    let chunks = chunker.split(&doc);
                    (doc, chunks)
                })
                .map_err(|e| RagError::Invalid(format!("{}: {e}", kind.as_str())))
        })
        .await
        .map_err(|e| RagError::Index(format!("chunking task: {e}")))??;
        let mut meta = meta;
        meta.insert("kind".into(), kind.as_str().into());
        if let Some(t) = doc.title {
            meta.insert("title".into(), t);
        }
        let prepared =
            Prepared { source: source.to_string(), hash: digest, meta, chunks, replaces: known.contains_key(source) };
        let (chunks, tokens, _) =
            ingest::embed_and_apply(index, self.embed.clone(), vec![prepared], Vec::new(), &|_: Progress| {}).await?;
        Ok(Added { chunks, tokens, unchanged: false })
    }

    /// Removes one document; `false` if the collection did not hold it.
    pub async fn remove_document(&self, collection: &str, source: &str) -> Result<bool, RagError> {
        let index = self.index(collection).await?;
        if !index.sources().await?.contains_key(source) {
            return Ok(false);
        }
        index.apply(Update { remove: vec![source.to_string()], upsert: Vec::new() }).await?;
        Ok(true)
    }

    /// Every collection with its size.
    pub async fn list(&self) -> Result<Vec<(CollectionInfo, Stats)>, RagError> {
        self.store.list().await
    }

    /// Deletes a collection; `false` if there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, RagError> {
        crate::check_name(name)?;
        self.forget(name);
        let deleted = self.store.delete(name).await;
        self.forget(name);
        deleted
    }
}
