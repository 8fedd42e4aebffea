//! The collections a running keel serves: opened on first use, reopened when another process (`keel ingest`)
//! committed a newer state, searched off the async runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::embedded::{self, EmbeddedIndex};
use crate::fusion::Fusion;
use crate::index::{Filter, Index, Stats};
use crate::search::{Hit, Mode, Searcher};
use crate::{CollectionInfo, Embed, RagError};

/// How long a collection is served without looking for a newer commit on disk: the staleness bound of a
/// search after an ingest by another process.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Open collections kept at once; past it the least recently used is closed (reopened on its next search).
const MAX_OPEN: usize = 64;

struct Open {
    index: EmbeddedIndex,
    checked: Instant,
    used: Instant,
}

/// The collections under one directory, searched with one embeddings model.
pub struct Collections {
    root: PathBuf,
    embed: Arc<dyn Embed>,
    fusion: Fusion,
    open: Mutex<HashMap<String, Open>>,
}

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collections").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Collections {
    pub fn new(root: PathBuf, embed: Arc<dyn Embed>, fusion: Fusion) -> Self {
        Self { root, embed, fusion, open: Mutex::new(HashMap::new()) }
    }

    /// The embeddings model queries are embedded with.
    pub fn model(&self) -> String {
        self.embed.model()
    }

    /// The collection, open and current within [`RECHECK`].
    async fn index(&self, name: &str) -> Result<EmbeddedIndex, RagError> {
        crate::check_name(name)?;
        let now = Instant::now();
        let cached = {
            let mut open = self.open.lock().map_err(|_| RagError::Index("collections lock poisoned".into()))?;
            match open.get_mut(name) {
                Some(o) => {
                    o.used = now;
                    Some((o.index.clone(), now.duration_since(o.checked) < RECHECK))
                }
                None => None,
            }
        };
        if let Some((index, true)) = &cached {
            return Ok(index.clone());
        }
        let (root, name_owned, current) = (self.root.clone(), name.to_string(), cached.map(|(i, _)| i));
        let index = tokio::task::spawn_blocking(move || match current {
            Some(i) if !i.is_stale() => Ok(i),
            _ => EmbeddedIndex::open(&root, &name_owned),
        })
        .await
        .map_err(|e| RagError::Index(format!("opening task: {e}")))?;
        let mut open = self.open.lock().map_err(|_| RagError::Index("collections lock poisoned".into()))?;
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

    pub async fn search(
        &self,
        name: &str,
        query: &str,
        mode: Mode,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, RagError> {
        let index = self.index(name).await?;
        let searcher = Searcher::new(Arc::new(index), self.embed.clone(), self.fusion)?;
        searcher.search(query, mode, k, filter).await
    }

    /// Every collection with its size.
    pub async fn list(&self) -> Result<Vec<(CollectionInfo, Stats)>, RagError> {
        let root = self.root.clone();
        let infos = tokio::task::spawn_blocking(move || embedded::list(&root))
            .await
            .map_err(|e| RagError::Index(format!("listing task: {e}")))??;
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let stats = self.index(&info.name).await.map(|i| i.stats()).unwrap_or_default();
            out.push((info, stats));
        }
        Ok(out)
    }

    /// Deletes a collection; `false` if there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, RagError> {
        crate::check_name(name)?;
        if let Ok(mut open) = self.open.lock() {
            open.remove(name);
        }
        let (root, name) = (self.root.clone(), name.to_string());
        tokio::task::spawn_blocking(move || embedded::delete(&root, &name))
            .await
            .map_err(|e| RagError::Index(format!("deleting task: {e}")))?
    }
}
