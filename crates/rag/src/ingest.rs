//! Keeping a collection up to date with files: unchanged files (by SHA-256) are skipped, changed ones
//! replaced, deleted ones removed, a file that cannot be read is reported and skipped (its previous version
//! stays). Chunks are embedded in batches with two batches in flight, so the embedder never waits for keel,
//! and written in atomic steps of bounded size (a crash leaves the last step's state, queryable).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunk::{Chunk, Chunker};
use crate::extract::{Extracted, Kind, extract};
use crate::index::{Index, NewChunk, SourceUpdate, Update};
use crate::{Embed, RagError};

/// Texts per embeddings request.
pub const BATCH: usize = 32;
/// Embeddings requests in flight at once.
const IN_FLIGHT: usize = 2;
/// Chunks per atomic step: bounds the vectors held in memory before a commit.
const STEP_CHUNKS: usize = 4096;

/// What an ingest did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub files: usize,
    pub unchanged: usize,
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    pub failed: Vec<Failure>,
    /// Files under the given directories that keel does not read (by extension).
    pub ignored: usize,
    pub chunks: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Time spent waiting for embeddings requests, summed over requests (with two in flight it can exceed
    /// the wall time they overlap).
    pub embed_seconds: f64,
}

/// A file that was not ingested, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub source: String,
    pub reason: String,
}

/// How far an ingest is.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Files read and chunked; this many chunks to embed.
    Planned { files: usize, chunks: usize },
    /// Chunks embedded so far.
    Embedded { chunks: usize },
}

/// A source's content, chunked, before its embeddings.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub source: String,
    pub hash: String,
    pub meta: BTreeMap<String, String>,
    pub chunks: Vec<Chunk>,
    pub replaces: bool,
}

/// SHA-256 of bytes, hex.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files under `roots` that keel reads, and the number it does not (files named directly must be
/// readable kinds: one that is not is a failure).
fn walk(roots: &[PathBuf], failed: &mut Vec<Failure>) -> (Vec<(PathBuf, Kind)>, usize) {
    let mut files = Vec::new();
    let mut ignored = 0;
    for root in roots {
        if root.is_file() {
            match Kind::of(root) {
                Some(k) => files.push((root.clone(), k)),
                None => failed.push(Failure {
                    source: root.display().to_string(),
                    reason: "not a kind keel reads (Markdown, HTML, plain text)".into(),
                }),
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
        for entry in walker.filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.')) {
            match entry {
                Ok(e) if e.file_type().is_file() => match Kind::of(e.path()) {
                    Some(k) => files.push((e.path().to_path_buf(), k)),
                    None => ignored += 1,
                },
                Ok(_) => {}
                Err(e) => failed.push(Failure {
                    source: e.path().map_or_else(|| root.display().to_string(), |p| p.display().to_string()),
                    reason: e.to_string(),
                }),
            }
        }
    }
    (files, ignored)
}

/// Ingests files and directories into a collection.
pub async fn ingest(
    index: Arc<dyn Index>,
    embed: Arc<dyn Embed>,
    chunker: Chunker,
    roots: &[PathBuf],
    meta: &BTreeMap<String, String>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Report, RagError> {
    let started = Instant::now();
    let mut report = Report::default();
    let mut canonical_roots = Vec::new();
    for r in roots {
        canonical_roots.push(std::fs::canonicalize(r).map_err(|e| RagError::io(r, e))?);
    }
    let (files, ignored) = walk(&canonical_roots, &mut report.failed);
    report.ignored = ignored;
    report.files = files.len();
    let known = index.sources().await?;
    let mut seen = BTreeSet::new();
    let mut prepared = Vec::new();
    for (path, kind) in files {
        let source = path.display().to_string();
        seen.insert(source.clone());
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                report.failed.push(Failure { source, reason: e.to_string() });
                continue;
            }
        };
        let digest = hash(&bytes);
        if known.get(&source).is_some_and(|s| s.hash == digest) {
            report.unchanged += 1;
            continue;
        }
        let chunker = chunker.clone();
        let split = tokio::task::spawn_blocking(move || {
            extract(kind, &bytes).map(|doc| {
                let chunks = chunker.split(&doc);
                (doc, chunks)
            })
        })
        .await
        .map_err(|e| RagError::Index(format!("chunking task: {e}")))?;
        match split {
            Ok((doc, chunks)) => {
                let mut m = meta.clone();
                m.insert("kind".into(), kind.as_str().into());
                if let Some(t) = doc_title(&doc) {
                    m.insert("title".into(), t);
                }
                prepared.push(Prepared {
                    replaces: known.contains_key(&source),
                    source,
                    hash: digest,
                    meta: m,
                    chunks,
                });
            }
            Err(e) => report.failed.push(Failure { source, reason: e.to_string() }),
        }
    }
    // Sources that were under a root and are gone now; a file that failed to read is not gone.
    let removed: Vec<String> = known
        .keys()
        .filter(|s| !seen.contains(*s) && canonical_roots.iter().any(|r| Path::new(s).starts_with(r)))
        .cloned()
        .collect();
    report.removed = removed.len();
    report.added = prepared.iter().filter(|p| !p.replaces).count();
    report.replaced = prepared.iter().filter(|p| p.replaces).count();
    let (chunks, tokens, embed_time) = embed_and_apply(index, embed, prepared, removed, progress).await?;
    report.chunks = chunks;
    report.tokens = tokens;
    report.embed_seconds = embed_time.as_secs_f64();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn doc_title(doc: &Extracted) -> Option<String> {
    doc.title.clone()
}

/// Embeds prepared sources and writes them (and the removals) in atomic steps. Returns the chunks and tokens
/// written and the time spent in embeddings requests.
pub async fn embed_and_apply(
    index: Arc<dyn Index>,
    embed: Arc<dyn Embed>,
    prepared: Vec<Prepared>,
    removed: Vec<String>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(usize, usize, Duration), RagError> {
    let total: usize = prepared.iter().map(|p| p.chunks.len()).sum();
    let tokens: usize = prepared.iter().flat_map(|p| &p.chunks).map(|c| c.tokens).sum();
    progress(Progress::Planned { files: prepared.len(), chunks: total });
    let mut embed_time = Duration::ZERO;
    let mut done = 0;
    let mut pending_remove = removed;
    // Steps: consecutive sources up to STEP_CHUNKS chunks (a source is never split across steps).
    let mut steps: Vec<Vec<Prepared>> = Vec::new();
    let mut size = 0;
    for p in prepared {
        if steps.is_empty() || size + p.chunks.len() > STEP_CHUNKS {
            steps.push(Vec::new());
            size = 0;
        }
        size += p.chunks.len();
        if let Some(last) = steps.last_mut() {
            last.push(p);
        }
    }
    if steps.is_empty() {
        steps.push(Vec::new());
    }
    for step in steps {
        let texts: Vec<String> = step.iter().flat_map(|p| &p.chunks).map(Chunk::embedding_text).collect();
        let batches: Vec<Vec<String>> = texts.chunks(BATCH).map(<[String]>::to_vec).collect();
        let embed = &embed;
        let mut results = futures::stream::iter(batches.into_iter().map(|b| async move {
            let n = b.len();
            let t = Instant::now();
            let r = embed.embed(b).await;
            (n, t.elapsed(), r)
        }))
        .buffered(IN_FLIGHT);
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
        while let Some((n, took, r)) = results.next().await {
            embed_time += took;
            let got = r.map_err(RagError::Embed)?;
            if got.len() != n {
                return Err(RagError::Embed(format!("asked for {n} embeddings, got {}", got.len())));
            }
            vectors.extend(got);
            done += n;
            progress(Progress::Embedded { chunks: done });
        }
        let mut vectors = vectors.into_iter();
        let mut update = Update { remove: std::mem::take(&mut pending_remove), upsert: Vec::new() };
        for p in step {
            let chunks = p.chunks.into_iter().zip(vectors.by_ref()).map(|(chunk, vector)| NewChunk { chunk, vector });
            update.upsert.push(SourceUpdate { source: p.source, hash: p.hash, meta: p.meta, chunks: chunks.collect() });
        }
        if !update.is_empty() {
            index.apply(update).await?;
        }
    }
    Ok((total, tokens, embed_time))
}
