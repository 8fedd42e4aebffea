//! A query against a collection: keywords, vector, or both fused.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::fusion::Fusion;
use crate::index::{Filter, Index};
use crate::{Embed, RagError};

/// Which retriever answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Vector,
    Hybrid,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "bm25" | "keyword" => Some(Mode::Bm25),
            "vector" | "dense" => Some(Mode::Vector),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Vector => "vector",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// One result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
    pub source: String,
    pub text: String,
    pub headings: Vec<String>,
    pub start: u64,
    pub end: u64,
    pub meta: std::collections::BTreeMap<String, String>,
    /// The chunk's rank (1-based) in each retriever's own list, when it was in it.
    pub bm25_rank: Option<usize>,
    pub vector_rank: Option<usize>,
}

/// Candidates each retriever gives the fusion.
pub const CANDIDATES: usize = 100;

/// Ranked ids of one query, before the chunks are read.
#[derive(Debug, Clone, Default)]
pub struct Ranked {
    pub ids: Vec<(u64, f32)>,
    pub bm25: Vec<(u64, f32)>,
    pub vector: Vec<(u64, f32)>,
}

/// Searches one collection with one embeddings model.
#[derive(Clone)]
pub struct Searcher {
    pub index: Arc<dyn Index>,
    pub embed: Arc<dyn Embed>,
    pub fusion: Fusion,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher").field("fusion", &self.fusion).finish_non_exhaustive()
    }
}

impl Searcher {
    /// Checks that the collection was embedded with this model.
    pub fn new(index: Arc<dyn Index>, embed: Arc<dyn Embed>, fusion: Fusion) -> Result<Self, RagError> {
        let info = index.info();
        let asked = embed.model();
        if info.model != asked {
            return Err(RagError::ModelMismatch { collection: info.name, stored: info.model, asked });
        }
        Ok(Self { index, embed, fusion })
    }

    /// The query's embedding.
    pub async fn embed_query(&self, query: &str) -> Result<Vec<f32>, RagError> {
        let mut v = self.embed.embed(vec![query.to_string()]).await.map_err(RagError::Embed)?;
        v.pop().ok_or_else(|| RagError::Embed("no vector came back".into()))
    }

    /// The ranking of a query, with a precomputed embedding when there is one (evaluations embed in batches).
    pub async fn rank(
        &self,
        query: &str,
        vector: Option<Vec<f32>>,
        mode: Mode,
        k: usize,
        filter: &Filter,
    ) -> Result<Ranked, RagError> {
        let want = if mode == Mode::Hybrid { CANDIDATES.max(k) } else { k };
        let bm25 = if mode != Mode::Vector {
            self.index.keyword(query.to_string(), want, filter.clone()).await?
        } else {
            Vec::new()
        };
        let dense = if mode != Mode::Bm25 {
            let v = match vector {
                Some(v) => v,
                None => self.embed_query(query).await?,
            };
            self.index.vector(v, want, filter.clone()).await?
        } else {
            Vec::new()
        };
        let mut ids = match mode {
            Mode::Bm25 => bm25.clone(),
            Mode::Vector => dense.clone(),
            Mode::Hybrid => self.fusion.fuse(&bm25, &dense),
        };
        ids.truncate(k);
        Ok(Ranked { ids, bm25, vector: dense })
    }

    /// The best `k` chunks for a query.
    pub async fn search(&self, query: &str, mode: Mode, k: usize, filter: &Filter) -> Result<Vec<Hit>, RagError> {
        if query.trim().is_empty() {
            return Err(RagError::Invalid("the query is empty".into()));
        }
        let ranked = self.rank(query, None, mode, k, filter).await?;
        let rank_of = |list: &[(u64, f32)]| -> HashMap<u64, usize> {
            list.iter().enumerate().map(|(i, (id, _))| (*id, i + 1)).collect()
        };
        let (bm25, dense) = (rank_of(&ranked.bm25), rank_of(&ranked.vector));
        let scores: HashMap<u64, f32> = ranked.ids.iter().copied().collect();
        let chunks = self.index.chunks(ranked.ids.iter().map(|(id, _)| *id).collect()).await?;
        Ok(chunks
            .into_iter()
            .map(|c| Hit {
                id: c.id,
                score: scores.get(&c.id).copied().unwrap_or_default(),
                bm25_rank: bm25.get(&c.id).copied(),
                vector_rank: dense.get(&c.id).copied(),
                source: c.source,
                text: c.text,
                headings: c.headings,
                start: c.start,
                end: c.end,
                meta: c.meta,
            })
            .collect())
    }
}
