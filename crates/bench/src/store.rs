//! `keel-store-bench`: sustained write throughput of a request-log backend through keel's own write path
//! (`LogWriter`: bounded queue, batched transactions), with rows shaped like real ones (attempts, metadata,
//! 1 KB request and response bodies).

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
    let body = "x".repeat(1024);
    let started = Instant::now();
    let base = keel_store::now_ms();
    for i in 0..args.rows {
        writer.write(row(i, base, &body)).await;
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
    if let Some((admin, schema)) = admin {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await?;
    }
    Ok(())
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
