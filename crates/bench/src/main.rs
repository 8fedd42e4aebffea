//! `keel-bench`: an open-loop HTTP load generator for keel's gateway benchmark.
//!
//! It sends requests at a fixed rate (a request is started at its scheduled time whether or not earlier ones have
//! finished, so a slow server cannot slow the load down and hide its own latency), and reports latency
//! percentiles; for streams, the time to the first body byte too. Written here rather than using `oha` because
//! it must time the first byte of SSE streams, which general load generators do not report.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;

#[derive(Debug, Parser)]
struct Args {
    /// The chat completions URL (`http://127.0.0.1:PORT/v1/chat/completions`).
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
    /// Number of measured requests (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    requests: u32,
    /// Warm-up requests at the same rate, not measured.
    #[arg(long, default_value_t = 500)]
    warmup: u32,
    #[arg(long, default_value = "bench")]
    model: String,
    /// Stream the answer (`"stream": true`) and time the first byte.
    #[arg(long)]
    stream: bool,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// Make every request's prompt different (a request number in the text), so that no two requests share a
    /// cache entry: the cache's miss path.
    #[arg(long)]
    unique: bool,
    /// Sent as `Authorization: Bearer KEY` (a virtual key).
    #[arg(long)]
    api_key: Option<String>,
}

struct Sample {
    total: Duration,
    first_byte: Duration,
    fate: Fate,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// A complete answer (2xx, the whole body read).
    Ok,
    /// A clean refusal: 503 or 429 with `Retry-After` (load shedding).
    Refused,
    /// Anything else: an error status without `Retry-After`, a connection error, a broken body.
    Error,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker thread: the generator must not take both cores from the system under test.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    }
    // An open loop against a slow server holds a connection per request in flight.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .default_headers(headers)
        .build()?;
    // Unique across runs too: a second run must not find the first one's entries.
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let body_of = |i: u32| {
        let question = if args.unique {
            format!("Tell me about the history of the city of Zurich in three sentences (run {run_id}, request {i}).")
        } else {
            "Tell me about the history of the city of Zurich in three sentences.".to_string()
        };
        serde_json::json!({
            "model": args.model,
            "stream": args.stream,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": question}
            ],
            "max_tokens": 64
        })
        .to_string()
    };
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let total = args.warmup + args.requests;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + interval * i;
        let client = client.clone();
        let body = body_of(i);
        let url = args.url.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            one(&client, &url, body).await
        }));
    }
    let mut lat = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut ttfb = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut refusal = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut errors, mut refused, mut served) = (0u32, 0u32, 0u32);
    for (i, t) in tasks.into_iter().enumerate() {
        let s = t.await.context("request task")?;
        if (i as u32) < args.warmup {
            continue;
        }
        match s.fate {
            Fate::Error => errors += 1,
            Fate::Refused => {
                refused += 1;
                refusal.record(s.total.as_micros().max(1) as u64)?;
            }
            Fate::Ok => {
                served += 1;
                lat.record(s.total.as_micros().max(1) as u64)?;
                ttfb.record(s.first_byte.as_micros().max(1) as u64)?;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let measured = f64::from(args.requests) / f64::from(args.rate);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let out = serde_json::json!({
        "label": args.label,
        "rate": args.rate,
        "stream": args.stream,
        "requests": args.requests,
        "errors": errors,
        "refused": refused,
        "served": served,
        "achieved_rps": f64::from(total) / elapsed,
        "served_rps": f64::from(served) / measured,
        "refusal_p99_ms": ms(&refusal, 0.99),
        "p50_ms": ms(&lat, 0.50), "p99_ms": ms(&lat, 0.99), "p999_ms": ms(&lat, 0.999), "max_ms": lat.max() as f64 / 1000.0,
        "ttfb_p50_ms": ms(&ttfb, 0.50), "ttfb_p99_ms": ms(&ttfb, 0.99), "ttfb_p999_ms": ms(&ttfb, 0.999),
    });
    println!("{out}");
    Ok(())
}

async fn one(client: &reqwest::Client, url: &str, body: String) -> Sample {
    let started = Instant::now();
    let end = |started: Instant, fate| Sample { total: started.elapsed(), first_byte: started.elapsed(), fate };
    let Ok(resp) = client.post(url).header("content-type", "application/json").body(body).send().await else {
        return end(started, Fate::Error);
    };
    if !resp.status().is_success() {
        let shed = matches!(resp.status().as_u16(), 429 | 503) && resp.headers().contains_key("retry-after");
        let _ = resp.bytes().await;
        return end(started, if shed { Fate::Refused } else { Fate::Error });
    }
    let mut stream = resp.bytes_stream();
    let mut first_byte = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) if !b.is_empty() => {
                first_byte.get_or_insert_with(|| started.elapsed());
            }
            Ok(_) => {}
            Err(_) => return end(started, Fate::Error),
        }
    }
    let total = started.elapsed();
    Sample { total, first_byte: first_byte.unwrap_or(total), fate: Fate::Ok }
}
