//! `keel-cache-bench`: the semantic cache's lookup cost and memory. Fills one scope of keel's
//! `SemanticIndex` with N entries (real embeddings of STS-B sentences, then random unit vectors up to N), then
//! times lookups of STS-B paraphrases: embedding the request (all-MiniLM-L6-v2 on ONNX Runtime) plus the
//! lookup, and the lookup alone. Reports the HNSW graph's own memory and the process's RSS growth per entry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use keel_cache::semantic::Entry;
use keel_cache::{CachedAnswer, Key, SemanticIndex, Turn};
use keel_local::{EmbedEngine, OrtEmbedder};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    #[arg(long)]
    models: Option<PathBuf>,
    /// Only the exact cache's miss path, in process: key, lookup and store of N unique requests.
    #[arg(long)]
    exact_only: bool,
    /// ONNX Runtime threads for the query's embedding.
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.exact_only {
        return exact_miss_path(args.entries);
    }
    let dir = keel_local::models::models_dir(args.models.as_deref());
    let engine = OrtEmbedder::load(
        &dir.join(keel_local::models::MINILM.target),
        &dir.join(keel_local::models::ONNXRUNTIME.target),
        args.threads,
    )
    .context("loading all-MiniLM-L6-v2 (run `keel models pull`)")?;
    let text = std::fs::read_to_string(args.data.join("stsb/dev.jsonl")).context("reading STS-B dev")?;
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["sentence1"].as_str().unwrap_or("").to_string(), v["sentence2"].as_str().unwrap_or("").to_string()))
        .collect();
    let dims = engine.dimensions();
    let answer: Arc<CachedAnswer> = Arc::new(serde_json::from_value(serde_json::json!({
        "response": {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"}, "finish_reason": "stop"}]},
        "provider": "p", "model": "m", "created_ms": 0
    }))?);
    let scope = Key([7; 32]);
    let index = SemanticIndex::new(dims, args.entries);
    let rss0 = rss_kb();
    let t = Instant::now();
    let mut id = 0u64;
    // Real entries: the first sentence of every STS-B dev pair.
    for batch in pairs.chunks(32) {
        let texts: Vec<String> = batch.iter().map(|p| p.0.clone()).collect();
        let (vectors, _) = engine.embed(&texts)?;
        for (text, v) in texts.into_iter().zip(vectors) {
            id += 1;
            index.insert(Entry {
                id,
                scope,
                turns: vec![Turn::new(text, v)],
                expires_ms: i64::MAX,
                answer: answer.clone(),
            })?;
        }
    }
    // Random unit vectors up to N, inserted by two threads (as concurrent requests would).
    let start_id = id;
    let remaining = args.entries.saturating_sub(start_id as usize) as u64;
    let index = &index;
    let answer = &answer;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
                    let mut next = || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5
                    };
                    let mut i = w;
                    while i < remaining {
                        let v: Vec<f32> = (0..dims).map(|_| next()).collect();
                        let turns = vec![Turn::new(String::new(), v)];
                        let id = start_id + 1 + i;
                        index.insert(Entry { id, scope, turns, expires_ms: i64::MAX, answer: answer.clone() })?;
                        if id.is_multiple_of(100_000) {
                            eprintln!("{id} entries, {:.0} s", t.elapsed().as_secs_f64());
                        }
                        i += 2;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("insert thread panicked"))??;
        }
        Ok(())
    })?;
    let fill = t.elapsed();
    let rss = rss_kb().saturating_sub(rss0);
    let graph = index.graph_memory();
    let n = index.len();
    let queries: Vec<&String> = pairs.iter().map(|p| &p.1).cycle().take(args.queries).collect();
    let (mut total, mut lookup, mut hits) = (Vec::new(), Vec::new(), 0usize);
    for q in queries {
        let t = Instant::now();
        let (v, _) = engine.embed(std::slice::from_ref(q))?;
        let turn = Turn::new(q.clone(), v.into_iter().next().unwrap_or_default());
        let t_lookup = Instant::now();
        let found = index.lookup(&scope, std::slice::from_ref(&turn), 0.9, 0);
        lookup.push(t_lookup.elapsed().as_secs_f64() * 1000.0);
        total.push(t.elapsed().as_secs_f64() * 1000.0);
        hits += usize::from(found.hit.is_some());
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    println!(
        "entries: {n} in one scope (filled in {:.1} s, {:.0} entries/s)",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );
    println!(
        "memory: HNSW graph {:.0} MiB ({:.0} B/entry); process RSS +{:.0} MiB ({:.0} B/entry, vectors in f32 and entry metadata included)",
        graph as f64 / 1048576.0,
        graph as f64 / n as f64,
        rss as f64 / 1024.0,
        rss as f64 * 1024.0 / n as f64
    );
    println!(
        "lookup with embedding ({} queries, {} ONNX Runtime thread(s)): p50 {:.2} ms, p99 {:.2} ms; lookup alone: p50 {:.3} ms, p99 {:.3} ms; {hits} hits at 0.90",
        total.len(),
        args.threads,
        pct(&mut total, 0.5),
        pct(&mut total, 0.99),
        pct(&mut lookup, 0.5),
        pct(&mut lookup, 0.99)
    );
    Ok(())
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The CPU cost of the exact cache on a miss, without HTTP or a machine's scheduling noise around it: for N
/// unique chat requests, the canonical key, a lookup in the in-process backend (a miss), and storing the
/// answer, timed per request.
fn exact_miss_path(n: usize) -> anyhow::Result<()> {
    use keel_cache::ExactBackend;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let backend = keel_cache::MemoryBackend::new(256 << 20);
    let answer: Arc<CachedAnswer> = Arc::new(serde_json::from_value(serde_json::json!({
        "response": {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Zurich began as a Roman customs post, grew into a free imperial city and became a centre of the Reformation."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 25, "total_tokens": 55}},
        "provider": "p", "model": "m", "created_ms": 0
    }))?);
    let scope =
        keel_cache::Scope { route: r#"{"alias":"bench","targets":[["mock","mock-model",null,false]]}"#, tenant: "" };
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let req: keel_types::ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "bench", "max_tokens": 64,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": format!("Tell me about the history of the city of Zurich in three sentences (request {i}).")}]
        }))?;
        let t = Instant::now();
        let key = keel_cache::key::exact(&req, scope);
        let found = rt.block_on(backend.get(&key))?;
        rt.block_on(backend.put(key, answer.clone(), std::time::Duration::from_secs(3600)))?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(found.is_none(), "unique requests must miss");
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "exact cache miss path (key + lookup + store), {n} unique requests: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    Ok(())
}
