//! Retrieval measured on BEIR-layout data (`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`): nDCG@10,
//! recall@1/5/10/100 and MRR@100 per retriever, at the document level (a document ranks where its best chunk
//! ranks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::Chunker;
use crate::extract::{Extracted, Kind};
use crate::fusion::Fusion;
use crate::index::{Filter, Index};
use crate::ingest::{Prepared, Progress, embed_and_apply, hash};
use crate::search::{Mode, Searcher};
use crate::{Embed, RagError};

#[derive(Debug, Clone, Deserialize)]
pub struct Doc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    #[serde(rename = "_id")]
    pub id: String,
    pub text: String,
}

/// A BEIR dataset.
#[derive(Debug, Clone)]
pub struct Beir {
    pub corpus: Vec<Doc>,
    pub queries: Vec<Query>,
    /// query id → document id → relevance grade.
    pub qrels: HashMap<String, HashMap<String, u32>>,
}

fn jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, RagError> {
    let file = std::fs::File::open(path).map_err(|e| RagError::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| RagError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| RagError::io(path, format!("line {}: {e}", n + 1)))?);
    }
    Ok(out)
}

impl Beir {
    /// Reads a BEIR directory (the `test` split's judgements).
    pub fn load(dir: &Path) -> Result<Beir, RagError> {
        let corpus: Vec<Doc> = jsonl(&dir.join("corpus.jsonl"))?;
        let mut queries: Vec<Query> = jsonl(&dir.join("queries.jsonl"))?;
        let qrels_path = dir.join("qrels").join("test.tsv");
        let text = std::fs::read_to_string(&qrels_path).map_err(|e| RagError::io(&qrels_path, e))?;
        let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            if n == 0 && cols.first().is_some_and(|c| *c == "query-id") {
                continue;
            }
            match cols.as_slice() {
                [q, d, s, ..] => {
                    let grade: u32 =
                        s.trim().parse().map_err(|_| RagError::io(&qrels_path, format!("line {}", n + 1)))?;
                    if grade > 0 {
                        qrels.entry(q.to_string()).or_default().insert(d.to_string(), grade);
                    }
                }
                [] | [""] => {}
                _ => return Err(RagError::io(&qrels_path, format!("line {}: expected 3 columns", n + 1))),
            }
        }
        queries.retain(|q| qrels.contains_key(&q.id));
        Ok(Beir { corpus, queries, qrels })
    }
}

/// The metrics of one retriever over the queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "recall@1")]
    pub recall1: f64,
    #[serde(rename = "recall@5")]
    pub recall5: f64,
    #[serde(rename = "recall@10")]
    pub recall10: f64,
    #[serde(rename = "recall@100")]
    pub recall100: f64,
    pub mrr: f64,
}

impl Metrics {
    /// A metric by name (`ndcg@10`, `recall@1`, `recall@5`, `recall@10`, `recall@100`, `mrr`).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "ndcg@10" => self.ndcg10,
            "recall@1" => self.recall1,
            "recall@5" => self.recall5,
            "recall@10" => self.recall10,
            "recall@100" => self.recall100,
            "mrr" => self.mrr,
            _ => return None,
        })
    }
}

/// One query's metrics, from its ranked documents and its judgements.
pub fn score(ranked: &[String], relevant: &HashMap<String, u32>) -> Metrics {
    let gain = |d: &String| relevant.get(d).copied().unwrap_or(0) as f64;
    let dcg: f64 =
        ranked.iter().take(10).enumerate().map(|(i, d)| (2f64.powf(gain(d)) - 1.0) / (i as f64 + 2.0).log2()).sum();
    let mut ideal: Vec<f64> = relevant.values().map(|g| *g as f64).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 =
        ideal.iter().take(10).enumerate().map(|(i, g)| (2f64.powf(*g) - 1.0) / (i as f64 + 2.0).log2()).sum();
    let n = relevant.len().max(1) as f64;
    let recall = |k: usize| ranked.iter().take(k).filter(|d| relevant.contains_key(*d)).count() as f64 / n;
    let mrr = ranked.iter().take(100).position(|d| relevant.contains_key(d)).map_or(0.0, |i| 1.0 / (i as f64 + 1.0));
    Metrics {
        ndcg10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall1: recall(1),
        recall5: recall(5),
        recall10: recall(10),
        recall100: recall(100),
        mrr,
    }
}

fn mean(all: &[Metrics]) -> Metrics {
    let n = all.len().max(1) as f64;
    let sum = |f: fn(&Metrics) -> f64| all.iter().map(f).sum::<f64>() / n;
    Metrics {
        ndcg10: sum(|m| m.ndcg10),
        recall1: sum(|m| m.recall1),
        recall5: sum(|m| m.recall5),
        recall10: sum(|m| m.recall10),
        recall100: sum(|m| m.recall100),
        mrr: sum(|m| m.mrr),
    }
}

/// Puts a BEIR corpus into a collection (each document one source; unchanged documents skipped, so a second
/// evaluation of the same corpus and model embeds nothing).
pub async fn ingest_corpus(
    index: Arc<dyn Index>,
    embed: Arc<dyn Embed>,
    chunker: &Chunker,
    corpus: &[Doc],
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), RagError> {
    let known = index.sources().await?;
    let mut prepared = Vec::new();
    for d in corpus {
        let digest = hash(format!("{}\n{}", d.title, d.text).as_bytes());
        if known.get(&d.id).is_some_and(|s| s.hash == digest) {
            continue;
        }
        let title = d.title.replace('_', " ");
        let doc = Extracted { kind: Kind::Text, text: d.text.clone(), title: (!title.is_empty()).then_some(title) };
        prepared.push(Prepared {
            replaces: known.contains_key(&d.id),
            source: d.id.clone(),
            hash: digest,
            meta: BTreeMap::new(),
            chunks: chunker.split(&doc),
        });
    }
    let ids: HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
    let removed = known.keys().filter(|k| !ids.contains(k.as_str())).cloned().collect();
    embed_and_apply(index, embed, prepared, removed, progress).await?;
    Ok(())
}

/// The retrievers an evaluation compares: the two single ones and each fusion.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub retriever: String,
    pub metrics: Metrics,
}

/// Evaluates every query: BM25, vector, and each fusion of the same two candidate lists.
pub async fn evaluate(
    searcher: &Searcher,
    data: &Beir,
    fusions: &[Fusion],
    dense_noise: f32,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Result<Vec<Row>, RagError> {
    let sources = searcher.index.sources().await?;
    // Chunk id → document: ids of a source are one contiguous range.
    let mut ranges: Vec<(u64, u64, &str)> =
        sources.iter().map(|(s, st)| (st.first_id, st.first_id + st.chunks, s.as_str())).collect();
    ranges.sort_unstable();
    let doc_of = |id: u64| -> Option<&str> {
        let i = ranges.partition_point(|r| r.0 <= id).checked_sub(1)?;
        let (lo, hi, s) = ranges[i];
        (lo <= id && id < hi).then_some(s)
    };
    let docs = |list: &[(u64, f32)]| -> Vec<String> {
        let mut seen = HashSet::new();
        list.iter().filter_map(|(id, _)| doc_of(*id)).filter(|d| seen.insert(*d)).map(str::to_string).collect()
    };
    let texts: Vec<String> = data.queries.iter().map(|q| q.text.clone()).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(crate::ingest::BATCH * 2) {
        vectors.extend(searcher.embed.embed(batch.to_vec()).await.map_err(RagError::Embed)?);
    }
    if vectors.len() != texts.len() {
        return Err(RagError::Embed(format!("asked for {} embeddings, got {}", texts.len(), vectors.len())));
    }
    if dense_noise > 0.0 {
        degrade(&mut vectors, dense_noise);
    }
    let mut per: Vec<Vec<Metrics>> = vec![Vec::new(); 2 + fusions.len()];
    let empty = HashMap::new();
    for (i, (q, v)) in data.queries.iter().zip(vectors).enumerate() {
        let ranked =
            searcher.rank(&q.text, Some(v), Mode::Hybrid, crate::search::CANDIDATES, &Filter::default()).await?;
        let rel = data.qrels.get(&q.id).unwrap_or(&empty);
        per[0].push(score(&docs(&ranked.bm25), rel));
        per[1].push(score(&docs(&ranked.vector), rel));
        for (j, f) in fusions.iter().enumerate() {
            per[2 + j].push(score(&docs(&f.fuse(&ranked.bm25, &ranked.vector)), rel));
        }
        if i % 200 == 0 {
            progress(i);
        }
    }
    let mut names = vec!["bm25".to_string(), "vector".to_string()];
    names.extend(fusions.iter().map(|f| format!("hybrid {}", f.name())));
    Ok(names.into_iter().zip(per.iter()).map(|(retriever, m)| Row { retriever, metrics: mean(m) }).collect())
}

/// Adds Gaussian noise of norm about `sigma` to each (unit) query vector, from a fixed seed: a weaker vector
/// retriever on the same data, to check that a fusion does not lose to BM25 when the embeddings model is
/// poor at a domain (`keel rag eval --dense-noise`).
fn degrade(vectors: &mut [Vec<f32>], sigma: f32) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    for v in vectors {
        let scale = sigma as f64 / (v.len().max(1) as f64).sqrt();
        for x in v.iter_mut() {
            // Box-Muller.
            let g = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            *x += (g * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_one_query() {
        let rel: HashMap<String, u32> = [("a".to_string(), 1)].into_iter().collect();
        let ranked: Vec<String> = ["x", "a", "y"].iter().map(|s| s.to_string()).collect();
        let m = score(&ranked, &rel);
        assert!((m.ndcg10 - 1.0 / 3f64.log2()).abs() < 1e-9);
        assert_eq!(m.recall1, 0.0);
        assert_eq!(m.recall5, 1.0);
        assert!((m.mrr - 0.5).abs() < 1e-9);
        let none = score(&["x".to_string()], &rel);
        assert_eq!(none.ndcg10, 0.0);
        assert_eq!(none.mrr, 0.0);
    }
}
