//! `keel-store-bench`: sustained write throughput of a request-log backend through keel's own write path
//! (`LogWriter`: bounded queue, batched transactions, the dashboard's rollups), with rows shaped like real ones
//! (attempts, metadata, 1 KB request and response bodies); with `--dashboard`, the rows spread over 90 days and
//! the dashboard's overview timed for each range, from the rollups and from the rows.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use keel_store::{AttemptRow, LogWriter, PgStore, Record, Store, WriterConfig};

#[derive(Debug, Parser)]
struct Args {
    /// `sqlite://PATH` or `postgres://…`.
    #[arg(long)]
    url: String,
    /// PostgreSQL only: a schema of its own, created for the run and dropped after.
    #[arg(long)]
    schema: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Bytes of each request and response body.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Spread the rows over the last 90 days (varied models, keys, latencies, errors, cache outcomes) and time
    /// the dashboard's overview afterwards.
    #[arg(long)]
    dashboard: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (store, admin): (Arc<dyn Store>, Option<(sqlx::PgPool, String)>) = match &args.schema {
        Some(schema) => {
            let admin = sqlx::PgPool::connect(&args.url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await?;
            let options =
                sqlx::postgres::PgConnectOptions::from_str(&args.url)?.options([("search_path", schema.as_str())]);
            (Arc::new(PgStore::connect_with(options).await?), Some((admin, schema.clone())))
        }
        None => (keel_store::open(&args.url).await?, None),
    };
    let (writer, task) = LogWriter::spawn(store.clone(), WriterConfig::default());
    let body = "x".repeat(args.body_bytes);
    let started = Instant::now();
    let base = keel_store::now_ms();
    let span = 90 * 86_400_000_i64;
    for i in 0..args.rows {
        let mut r = row(i, base, &body);
        if args.dashboard {
            spread(&mut r, i, args.rows, base, span);
        }
        writer.write(r).await;
    }
    let stats = writer.stats().clone();
    drop(writer);
    task.close().await;
    let secs = started.elapsed().as_secs_f64();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{}: {} rows in {secs:.2} s = {:.0} rows/s ({batches} transactions, {:.0} rows each)",
        store.backend(),
        args.rows,
        args.rows as f64 / secs,
        args.rows as f64 / batches.max(1) as f64
    );
    if args.dashboard {
        println!("| range | from | overview (ms, best of 3) | requests counted |");
        println!("|---|---|---:|---:|");
        let now = keel_store::now_ms();
        for (name, len, bucket) in [
            ("1h", 3_600_000_i64, 300_000_i64),
            ("24h", 86_400_000, 3_600_000),
            ("7d", 7 * 86_400_000, 86_400_000),
            ("30d", 30 * 86_400_000, 86_400_000),
            ("90d", 90 * 86_400_000, 86_400_000),
        ] {
            // As the dashboard asks: buckets aligned to their width (whole hours: the rollups). The same range
            // with 30-minute buckets reads the rows themselves, for comparison.
            let rolled =
                keel_store::Range { since_ms: (now - len) / bucket * bucket, until_ms: now + 1, bucket_ms: bucket };
            let raw = keel_store::Range {
                bucket_ms: bucket.min(1_800_000),
                since_ms: (now - len) / 300_000 * 300_000,
                ..rolled
            };
            for (from, range) in [("rollups", rolled), ("rows", raw)] {
                if from == "rollups" && range.bucket_ms < 3_600_000 {
                    continue;
                }
                let mut best = f64::MAX;
                let mut counted = 0;
                for _ in 0..3 {
                    let t = Instant::now();
                    counted = store.overview(range).await?.totals.requests;
                    best = best.min(t.elapsed().as_secs_f64() * 1000.0);
                }
                println!("| {name} | {from} | {best:.1} | {counted} |");
            }
        }
    }
    if let Some((admin, schema)) = admin {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await?;
    }
    Ok(())
}

/// Makes row `i` of `n` one of a realistic mix, at a time spread evenly over the `span` before `base`.
fn spread(r: &mut Record, i: usize, n: usize, base: i64, span: i64) {
    r.ts_ms = base - span + (i as i64).saturating_mul(span) / (n.max(1) as i64);
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    r.model_requested = Some(["gpt-4o-mini", "claude-haiku", "smollm2", "gpt-4o", "router"][(h % 5) as usize].into());
    r.key_id = Some(format!("key_{}", (h >> 8) % 200));
    r.latency_ms = 20.0 + ((h >> 16) % 4000) as f64 / 2.0;
    r.ttft_ms = Some(r.latency_ms / 4.0);
    if (h >> 32).is_multiple_of(50) {
        r.status = 502;
        r.outcome = keel_store::Outcome::Error;
    }
    r.cache = match (h >> 40) % 10 {
        0 => Some(keel_store::CacheStatus::Hit),
        1..=6 => Some(keel_store::CacheStatus::Miss),
        _ => None,
    };
    if r.cache == Some(keel_store::CacheStatus::Hit) {
        r.metadata = serde_json::json!({"tags": ["bench"], "cache_saved_usd": 0.0002});
    }
    if (h >> 48).is_multiple_of(100) {
        r.metadata = serde_json::json!({"guard": [{"guard": "pii", "action": "redact", "found": ["EMAIL_ADDRESS"]}]});
    }
}

fn row(i: usize, base: i64, body: &str) -> Record {
    Record {
        id: format!("bench-{base}-{i}"),
        client_request_id: None,
        ts_ms: base + i as i64,
        key_id: Some(format!("key_{}", i % 50)),
        tenant: Some("bench".into()),
        api: "openai".into(),
        endpoint: "chat".into(),
        model_requested: Some("bench".into()),
        model_served: Some("mock/mock-model".into()),
        status: 200,
        outcome: keel_store::Outcome::Ok,
        error_class: None,
        stream: i % 2 == 1,
        attempts: vec![AttemptRow {
            provider: "mock".into(),
            model: "mock-model".into(),
            started_ms: 0.1,
            latency_ms: 2.5,
            status: None,
            outcome: "ok".into(),
        }],
        ttft_ms: Some(1.5),
        latency_ms: 3.0,
        tokens_in: Some(40),
        tokens_out: Some(60),
        tokens_cached: Some(0),
        cost_usd: Some(0.000_16),
        cache: None,
        request_body: Some(body.to_string()),
        response_body: Some(body.to_string()),
        metadata: serde_json::json!({"tags": ["bench"]}),
        template: None,
        template_version: None,
        routing: None,
    }
}
