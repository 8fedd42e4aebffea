//! `keel-rag-bench`: what keel's ingest pipeline costs on top of the embedder, and how fast a collection answers.
//!
//! 1. The embedder's own throughput: the chunks of a document set embedded in batches of 32, one after the
//!    other, straight on the engine (all-MiniLM-L6-v2 on ONNX Runtime).
//! 2. `keel_rag::ingest` of the same set into a fresh collection, with the same engine behind the `Embed` trait:
//!    walking, reading, hashing, extracting, chunking, indexing and committing included.
//! 3. Query latency per mode (the query's embedding included) at the set's size and at `--scale` chunks: the set's
//!    chunks repeated (each copy's vector perturbed, its text tagged) until the collection holds that many.
//!    Index size on disk and the vectors' memory.
//! 4. With `--postgres URL` (PostgreSQL with pgvector, e.g. from `scripts/pgvector-server`), step 3 again on the
//!    PostgreSQL index, with the same chunks and queries, in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use futures::FutureExt;
use futures::future::BoxFuture;
use keel_local::{EmbedEngine, OrtEmbedder, TokenCounter};
use keel_rag::index::{NewChunk, SourceUpdate};
use keel_rag::{
    Chunker, CollectionInfo, Embed, EmbeddedIndex, Filter, Index, Mode, PgStore, Searcher, Store, TokenCount, Update,
};

#[derive(Debug, Parser)]
struct Args {
    /// The document set to ingest.
    docs: PathBuf,
    /// Queries, one JSON object with a `text` field per line (BEIR `queries.jsonl`).
    #[arg(long)]
    queries: PathBuf,
    /// Queries timed per mode.
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// The collection size of the scaled latency run.
    #[arg(long, default_value_t = 100_000)]
    scale: usize,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Also measure the PostgreSQL index (pgvector) at `--scale` chunks.
    #[arg(long)]
    postgres: Option<String>,
}

struct Engine(Arc<OrtEmbedder>);

impl Embed for Engine {
    fn model(&self) -> String {
        "all-minilm-l6-v2".into()
    }
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, String>> {
        let engine = self.0.clone();
        async move {
            tokio::task::spawn_blocking(move || engine.embed(&texts).map(|(v, _)| v).map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())?
        }
        .boxed()
    }
}

struct Tokens(TokenCounter);
impl TokenCount for Tokens {
    fn count(&self, text: &str) -> usize {
        self.0.count(text)
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn latency(searcher: &Searcher, queries: &[String], mode: Mode) -> anyhow::Result<(f64, f64)> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for q in queries {
        let t = Instant::now();
        searcher.search(q, mode, 10, &Filter::default()).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok((h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = keel_local::models::models_dir(None);
    let minilm = dir.join(keel_local::models::MINILM.target);
    let engine = Arc::new(
        OrtEmbedder::load(&minilm, &dir.join(keel_local::models::ONNXRUNTIME.target), args.threads)
            .context("loading all-MiniLM-L6-v2 (run `keel models pull`)")?,
    );
    let counter: Arc<dyn TokenCount> = Arc::new(Tokens(TokenCounter::open(&minilm)?));
    let chunker = Chunker::new(112, 224, 24, counter)?;
    let embed: Arc<dyn Embed> = Arc::new(Engine(engine.clone()));

    // The chunks, as ingest makes them.
    let mut texts = Vec::new();
    for entry in walkdir::WalkDir::new(&args.docs).sort_by_file_name().into_iter().flatten() {
        let Some(kind) = keel_rag::extract::Kind::of(entry.path()) else { continue };
        let bytes = std::fs::read(entry.path())?;
        if let Ok(doc) = keel_rag::extract::extract(kind, &bytes) {
            texts.extend(chunker.split(&doc).iter().map(keel_rag::Chunk::embedding_text));
        }
    }
    let n = texts.len();
    let t = Instant::now();
    // Kept: the scaled collections below are built from these vectors.
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
    for batch in texts.chunks(32) {
        let e = engine.clone();
        let b = batch.to_vec();
        vectors.extend(tokio::task::spawn_blocking(move || e.embed(&b)).await??.0);
    }
    let embed_only = t.elapsed().as_secs_f64();
    println!("embedder alone: {n} chunks in {embed_only:.1} s = {:.1} chunks/s", n as f64 / embed_only);

    let tmp = std::env::temp_dir().join(format!("keel-rag-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let dims = engine.dimensions();
    let info = |name: &str| CollectionInfo { name: name.into(), model: "all-minilm-l6-v2".into(), dims };
    let index = EmbeddedIndex::open_or_create(&tmp, info("docs"))?;
    let report = keel_rag::ingest::ingest(
        Arc::new(index.clone()),
        embed.clone(),
        chunker.clone(),
        std::slice::from_ref(&args.docs),
        &BTreeMap::new(),
        &|_| {},
    )
    .await?;
    println!(
        "ingest: {} files, {} chunks in {:.1} s = {:.1} chunks/s; pipeline adds {:+.1}% to the embedder alone",
        report.files,
        report.chunks,
        report.seconds,
        report.chunks as f64 / report.seconds,
        (report.seconds / embed_only - 1.0) * 100.0
    );

    let queries: Vec<String> = std::fs::read_to_string(&args.queries)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["text"].as_str().map(String::from))
        .take(args.n)
        .collect();
    let searcher = Searcher::new(Arc::new(index.clone()), embed.clone(), keel_rag::fusion::Fusion::default())?;
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let (p50, p99) = latency(&searcher, &queries, mode).await?;
        println!("{} chunks, {:>6}: p50 {p50:.2} ms, p99 {p99:.2} ms", index.stats().await?.chunks, mode.as_str());
    }

    // Scaled: the same chunks repeated until `scale`, each copy's vector perturbed.
    let big = EmbeddedIndex::open_or_create(&tmp, info("scaled"))?;
    let rss_before = rss_mib();
    let made = scaled("embedded", Arc::new(big.clone()), &texts, &vectors, args.scale, &queries, &embed).await?;
    println!(
        "embedded, {made} chunks: {:.1} MiB on disk, vectors {:.1} MiB in memory (usearch), process RSS grew {:.1} MiB",
        big.disk_bytes() as f64 / 1048576.0,
        big.vector_memory_bytes() as f64 / 1048576.0,
        rss_mib() - rss_before
    );
    if let Some(url) = &args.postgres {
        let pg = PgStore::connect(url).await?;
        let name = format!("keel-rag-bench-{}", std::process::id());
        pg.delete(&name).await?;
        let index = pg.open_or_create(info(&name)).await?;
        let made = scaled("postgres", index, &texts, &vectors, args.scale, &queries, &embed).await?;
        println!(
            "postgres, {made} chunks: {:.1} MiB on disk (tables and indexes)",
            pg.disk_bytes(&name).await? as f64 / 1048576.0
        );
        pg.delete(&name).await?;
    }
    let t = Instant::now();
    for q in &queries {
        embed.embed(vec![q.clone()]).await.map_err(anyhow::Error::msg)?;
    }
    println!("the query's embedding alone: mean {:.2} ms", t.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// A collection of `scale` chunks: the set's chunks repeated (each copy's text tagged, its vector perturbed),
/// then timed per mode. Returns the chunks it holds.
async fn scaled(
    label: &str,
    big: Arc<dyn Index>,
    texts: &[String],
    vectors: &[Vec<f32>],
    scale: usize,
    queries: &[String],
    embed: &Arc<dyn Embed>,
) -> anyhow::Result<usize> {
    let n = texts.len();
    let t = Instant::now();
    let mut made = 0usize;
    let mut copy = 0u64;
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    while made < scale {
        let take = (scale - made).min(n);
        let chunks = (0..take)
            .map(|i| {
                let text = format!("{} copy{copy}", texts[i]);
                let vector = vectors[i]
                    .iter()
                    .map(|x| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        x + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
                    })
                    .collect();
                let end = text.len();
                NewChunk { chunk: keel_rag::Chunk { text, start: 0, end, headings: vec![], tokens: 0 }, vector }
            })
            .collect();
        big.apply(Update {
            remove: vec![],
            upsert: vec![SourceUpdate {
                source: format!("copy{copy}"),
                hash: copy.to_string(),
                meta: BTreeMap::new(),
                chunks,
            }],
        })
        .await?;
        made += take;
        copy += 1;
    }
    println!("{label}: {made} chunks built in {:.1} s (no embedding)", t.elapsed().as_secs_f64());
    let searcher = Searcher::new(big, embed.clone(), keel_rag::fusion::Fusion::default())?;
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let (p50, p99) = latency(&searcher, queries, mode).await?;
        println!("{label}, {made} chunks, {:>6}: p50 {p50:.2} ms, p99 {p99:.2} ms", mode.as_str());
    }
    Ok(made)
}
