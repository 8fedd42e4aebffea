//! `keel-local-bench`: speed and memory of keel's in-process models, measured through the same engines the
//! `local` provider uses: load time, prompt and generation tokens/s, time to first token, embedding throughput
//! for batches of 32 and latency for one sentence, and resident memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use keel_local::{ChatEngine, EmbedEngine, GenerateParams, LlamaEngine, OrtEmbedder};

#[derive(Debug, Parser)]
struct Args {
    /// The models directory (default: keel's).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// CPU threads for generation and for the ONNX Runtime encoder.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Sentences for the embedding benchmark, one per line (default: built-in).
    #[arg(long)]
    sentences: Option<PathBuf>,
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = keel_local::models::models_dir(args.dir.as_deref());
    let gguf = dir.join(keel_local::models::SMOLLM2.target);
    let minilm = dir.join(keel_local::models::MINILM.target);
    let base_rss = rss_kb("VmRSS:");

    let t = Instant::now();
    let chat = LlamaEngine::load(&gguf, args.threads, 2048).context("loading SmolLM2 (run `keel models pull`)")?;
    let chat_load = t.elapsed();
    let chat_rss = rss_kb("VmRSS:").saturating_sub(base_rss);

    // Prompt processing: a long prompt, one generated token.
    let long: String = (0..40).map(|i| format!("Sentence number {i} talks about the weather in a city. ")).collect();
    let params = |text: &str, max: u32| GenerateParams {
        messages: vec![("user".into(), text.to_string())],
        max_tokens: Some(max),
        temperature: 0.0,
        top_p: 1.0,
        seed: 1,
        stops: Vec::new(),
        json_schema: None,
        logprobs: false,
    };
    let mut prompt_rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let g = chat.generate(&params(&long, 1), &mut |_| true)?;
        prompt_rates.push(g.prompt_tokens as f64 / t.elapsed().as_secs_f64());
    }
    // Generation: a short prompt, 128 tokens; the first emitted text marks the first token.
    let mut gen_rates = Vec::new();
    let mut ttfts = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut first: Option<Duration> = None;
        let p = GenerateParams {
            max_tokens: Some(128),
            stops: Vec::new(),
            ..params("Write a long story about a robot who learns to paint.", 128)
        };
        let g = chat.generate(&p, &mut |_| {
            first.get_or_insert_with(|| t.elapsed());
            true
        })?;
        let total = t.elapsed();
        let ttft = first.unwrap_or(total);
        ttfts.push(ttft.as_secs_f64() * 1000.0);
        gen_rates.push(g.completion_tokens.saturating_sub(1) as f64 / (total - ttft).as_secs_f64());
    }

    let sentences: Vec<String> = match &args.sentences {
        Some(p) => std::fs::read_to_string(p)?.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
        None => (0..320).map(|i| format!("A short sentence number {i} about cats, trains and the sea.")).collect(),
    };
    let library = dir.join(keel_local::models::ONNXRUNTIME.target);
    let mut embed_rows = Vec::new();
    let t = Instant::now();
    let ort = OrtEmbedder::load(&minilm, &library, args.threads).context("loading all-MiniLM-L6-v2 on ONNX Runtime")?;
    embed_rows.push(bench_embed(&ort, t.elapsed(), &sentences)?);
    drop(ort);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("threads: {}", args.threads);
    println!(
        "chat (SmolLM2-135M-Instruct Q4_1): load {:.0} ms, +{} MiB RSS",
        chat_load.as_secs_f64() * 1000.0,
        chat_rss / 1024
    );
    println!("  prompt processing: {:.0} tokens/s (median of 3)", med(&mut prompt_rates));
    println!("  generation: {:.0} tokens/s (median of 3, 128 tokens)", med(&mut gen_rates));
    println!("  time to first token: {:.1} ms (median of 3, short prompt)", med(&mut ttfts));
    for row in embed_rows {
        println!("{row}");
    }
    println!("RSS: {} MiB now, {} MiB peak", rss_kb("VmRSS:") / 1024, rss_kb("VmHWM:") / 1024);
    Ok(())
}

/// Throughput in batches of 32 (after one warm-up batch) and the latency of one sentence, on one engine.
fn bench_embed(engine: &dyn EmbedEngine, load: Duration, sentences: &[String]) -> anyhow::Result<String> {
    let _ = engine.embed(&sentences[..32.min(sentences.len())])?;
    let t = Instant::now();
    let mut n = 0;
    for batch in sentences.chunks(32).take(10) {
        n += engine.embed(batch)?.0.len();
    }
    let per_sec = n as f64 / t.elapsed().as_secs_f64();
    let mut single = Vec::new();
    for s in sentences.iter().take(50) {
        let t = Instant::now();
        engine.embed(std::slice::from_ref(s))?;
        single.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    single.sort_by(f64::total_cmp);
    Ok(format!(
        "embeddings (all-MiniLM-L6-v2) on {}: load {:.0} ms\n  batches of 32: {per_sec:.0} sentences/s ({n} \
         sentences)\n  one sentence: p50 {:.2} ms, p90 {:.2} ms",
        engine.engine(),
        load.as_secs_f64() * 1000.0,
        single[single.len() / 2],
        single[single.len() * 9 / 10]
    ))
}
