//! One battery, run against both backends: SQLite in a temporary file and the PostgreSQL server on
//! 127.0.0.1:5432 (database `test`, a schema of its own per run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::Arc;

use keel_store::{AttemptRow, KeyRecord, LogWriter, OnFull, PgStore, Query, Record, SqliteStore, Store, WriterConfig};

fn record(i: usize, ts_ms: i64) -> Record {
    Record {
        id: format!("req-{i:05}"),
        client_request_id: Some(format!("client-{i}")),
        ts_ms,
        key_id: Some(if i.is_multiple_of(2) { "key-even".into() } else { "key-odd".into() }),
        tenant: Some("acme".into()),
        api: "openai".into(),
        endpoint: "chat".into(),
        model_requested: Some(if i.is_multiple_of(3) { "fast".into() } else { "smart".into() }),
        model_served: Some("openai/gpt-4o-mini".into()),
        status: if i.is_multiple_of(5) { 429 } else { 200 },
        outcome: if i.is_multiple_of(5) { keel_store::Outcome::Error } else { keel_store::Outcome::Ok },
        error_class: i.is_multiple_of(5).then(|| "rate_limited".into()),
        stream: !i.is_multiple_of(2),
        attempts: vec![AttemptRow {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            started_ms: 0.25,
            latency_ms: 12.5,
            status: Some(200),
            outcome: "ok".into(),
        }],
        ttft_ms: Some(3.5),
        latency_ms: 20.0 + i as f64,
        tokens_in: Some(10 + i as u64),
        tokens_out: Some(5),
        tokens_cached: Some(2),
        cost_usd: Some(0.000_123 * i as f64),
        cache: None,
        request_body: Some(format!("{{\"n\":{i}, \"text\":\"héllo ☃\"}}")),
        response_body: None,
        metadata: serde_json::json!({"tags": ["a", "b"], "user": "u1"}),
        template: None,
        template_version: None,
        routing: None,
    }
}

async fn sqlite() -> (Arc<dyn Store>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("keel-store-{}-{}", std::process::id(), rand_suffix()));
    let url = format!("sqlite://{}", dir.join("keel.db").display());
    (Arc::new(SqliteStore::connect(&url).await.unwrap()), dir)
}

async fn postgres() -> Arc<dyn Store> {
    let schema = format!("keel_test_{}_{}", std::process::id(), rand_suffix());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
    let options = sqlx::postgres::PgConnectOptions::from_str("postgres://postgres@127.0.0.1:5432/test")
        .unwrap()
        .options([("search_path", schema.as_str())]);
    Arc::new(PgStore::connect_with(options).await.unwrap())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48)
}

async fn battery(store: Arc<dyn Store>) {
    let base = 1_700_000_000_000i64;
    let rows: Vec<Record> = (0..1200).map(|i| record(i, base + i as i64)).collect();
    // More rows than one statement holds: chunked in one transaction.
    assert_eq!(store.insert(&rows).await.unwrap(), 1200);
    // A retried batch does not duplicate rows.
    assert_eq!(store.insert(&rows[..10]).await.unwrap(), 0);

    let all = store.query(&Query { limit: Some(10_000), ..Query::default() }).await.unwrap();
    assert_eq!(all.len(), 1200);
    assert_eq!(all[0], rows[1199], "newest first, every field round-trips");

    let one = store.query(&Query { id: Some("req-00007".into()), ..Query::default() }).await.unwrap();
    assert_eq!(one, vec![rows[7].clone()]);

    let q = Query { key_id: Some("key-even".into()), status: Some(429), limit: Some(10_000), ..Query::default() };
    let got = store.query(&q).await.unwrap();
    assert_eq!(got.len(), rows.iter().filter(|r| r.key_id.as_deref() == Some("key-even") && r.status == 429).count());
    assert!(got.iter().all(|r| r.status == 429 && r.key_id.as_deref() == Some("key-even")));

    let q = Query {
        model: Some("fast".into()),
        since_ms: Some(base + 100),
        until_ms: Some(base + 200),
        limit: Some(10_000),
        ..Query::default()
    };
    let got = store.query(&q).await.unwrap();
    assert_eq!(got.len(), (100..200).filter(|i| i % 3 == 0).count());
    let q = Query { model: Some("gpt-4o-mini".into()), limit: Some(5), ..Query::default() };
    assert_eq!(store.query(&q).await.unwrap().len(), 5, "the served model matches too; limit applies");
    let q = Query { outcome: Some(keel_store::Outcome::Error), limit: Some(10_000), ..Query::default() };
    assert_eq!(store.query(&q).await.unwrap().len(), 240);
    // A model name is matched as written: `%` and `_` are not wildcards.
    for pattern in ["%", "_", "gpt-4o-min_", "%mini"] {
        let q = Query { model: Some(pattern.into()), limit: Some(10_000), ..Query::default() };
        assert!(store.query(&q).await.unwrap().is_empty(), "{pattern:?} matched rows as a pattern");
    }
    // keel's id, or the client's x-request-id, finds a row.
    let q = Query { id: Some("client-7".into()), limit: Some(10_000), ..Query::default() };
    let by_client = store.query(&q).await.unwrap();
    assert_eq!(by_client.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["req-00007"]);

    // Spend per key comes from the log.
    let spent = store.spend_since("key-even", base + 1000).await.unwrap();
    let want: f64 = rows
        .iter()
        .filter(|r| r.key_id.as_deref() == Some("key-even") && r.ts_ms >= base + 1000)
        .filter_map(|r| r.cost_usd)
        .sum();
    assert!((spent - want).abs() < 1e-9, "{spent} vs {want}");
    assert_eq!(store.spend_since("nobody", 0).await.unwrap(), 0.0);

    keys(&*store).await;

    assert_eq!(store.purge_before(base + 1000).await.unwrap(), 1000);
    let left = store.query(&Query { limit: Some(10_000), ..Query::default() }).await.unwrap();
    assert_eq!(left.len(), 200);
    assert!(left.iter().all(|r| r.ts_ms >= base + 1000));
}

async fn keys(store: &dyn Store) {
    let key = |id: &str, hash: &str, created_ms: i64| KeyRecord {
        id: id.into(),
        name: format!("{id} name"),
        hash: hash.into(),
        prefix: "sk-keel-abcd".into(),
        tenant: Some("acme".into()),
        created_ms,
        revoked_ms: None,
        models: vec!["fast".into(), "smart".into()],
        budget_daily_usd: Some(1.5),
        budget_monthly_usd: None,
        rpm: Some(60),
        tpm: Some(100_000),
    };
    let a = key("key_a", "hash-a", 1);
    let b = key("key_b", "hash-b", 2);
    store.create_key(&a).await.unwrap();
    store.create_key(&b).await.unwrap();
    assert!(store.create_key(&key("key_c", "hash-a", 3)).await.is_err(), "a hash is unique");
    assert_eq!(store.list_keys().await.unwrap(), vec![b.clone(), a.clone()]);
    assert_eq!(store.key_by_hash("hash-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.key_by_hash("nope").await.unwrap(), None);
    assert!(store.revoke_key("key_a", 99).await.unwrap());
    assert!(!store.revoke_key("key_a", 100).await.unwrap(), "already revoked");
    assert!(!store.revoke_key("nope", 100).await.unwrap());
    assert_eq!(store.key_by_hash("hash-a").await.unwrap().unwrap().revoked_ms, Some(99));
}

async fn writer_battery(store: Arc<dyn Store>) {
    // Many concurrent writers through a small queue: every row arrives exactly once.
    let config =
        WriterConfig { max_queue_bytes: 1 << 16, batch_max: 64, on_full: OnFull::Wait, ..WriterConfig::default() };
    let (writer, task) = LogWriter::spawn(store.clone(), config);
    let mut joins = Vec::new();
    for w in 0..16 {
        let writer = writer.clone();
        joins.push(tokio::spawn(async move {
            for i in 0..125 {
                let mut r = record(w * 1000 + i, 1_800_000_000_000 + (w * 1000 + i) as i64);
                r.request_body = Some("x".repeat(2000));
                writer.write(r).await;
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let stats = writer.stats().clone();
    drop(writer);
    task.close().await;
    let got = store
        .query(&Query { since_ms: Some(1_800_000_000_000), limit: Some(10_000), ..Query::default() })
        .await
        .unwrap();
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|r| r.request_body.as_ref().is_some_and(|b| b.len() == 2000)), "wait keeps bodies");
    assert_eq!(stats.written_rows.load(std::sync::atomic::Ordering::Relaxed), 2000);
    assert_eq!(stats.queued_rows.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(stats.batches.load(std::sync::atomic::Ordering::Relaxed) < 2000, "rows are batched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_battery() {
    let (store, dir) = sqlite().await;
    assert_eq!(store.backend(), "sqlite");
    battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_battery() {
    let store = postgres().await;
    assert_eq!(store.backend(), "postgres");
    battery(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_loses_nothing_under_concurrency() {
    let (store, dir) = sqlite().await;
    writer_battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_loses_nothing_under_concurrency() {
    writer_battery(postgres().await).await;
}

/// A log store that blocks its writes until released, so that the writer's queue fills: the test double
/// implements only the capability it stands in for.
struct Gate {
    inner: Arc<dyn Store>,
    open: tokio::sync::Semaphore,
}

impl keel_store::LogStore for Gate {
    fn insert<'a>(&'a self, rows: &'a [Record]) -> futures::future::BoxFuture<'a, Result<u64, keel_store::StoreError>> {
        Box::pin(async move {
            let _p = self.open.acquire().await.unwrap();
            self.inner.insert(rows).await
        })
    }
    fn query<'a>(
        &'a self,
        q: &'a Query,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Record>, keel_store::StoreError>> {
        self.inner.query(q)
    }
    fn purge_before(&self, ts: i64) -> futures::future::BoxFuture<'_, Result<u64, keel_store::StoreError>> {
        self.inner.purge_before(ts)
    }
    fn spend_since<'a>(
        &'a self,
        k: &'a str,
        t: i64,
    ) -> futures::future::BoxFuture<'a, Result<f64, keel_store::StoreError>> {
        self.inner.spend_since(k, t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_bodies_keeps_every_row_and_counts_the_drops() {
    let (inner, dir) = sqlite().await;
    let gate = Arc::new(Gate { inner: inner.clone(), open: tokio::sync::Semaphore::new(0) });
    let config =
        WriterConfig { max_queue_bytes: 1 << 16, batch_max: 8, on_full: OnFull::DropBodies, ..WriterConfig::default() };
    let (writer, task) = LogWriter::spawn(gate.clone(), config);
    let stats = writer.stats().clone();
    let producer = tokio::spawn(async move {
        for i in 0..200 {
            let mut r = record(i, 1_900_000_000_000 + i as i64);
            r.request_body = Some("y".repeat(4000));
            writer.write(r).await;
        }
    });
    // While the store is stuck, a 64 KiB queue cannot hold 200 rows with 4 KB bodies: bodies are dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stats.bodies_dropped.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no body was dropped");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    gate.open.add_permits(1_000_000);
    producer.await.unwrap();
    let dropped = stats.bodies_dropped.load(std::sync::atomic::Ordering::Relaxed);
    task.close().await;
    let got = inner.query(&Query { limit: Some(10_000), ..Query::default() }).await.unwrap();
    assert_eq!(got.len(), 200, "every row is kept");
    assert_eq!(got.iter().filter(|r| r.request_body.is_none()).count() as u64, dropped);
    let _ = std::fs::remove_dir_all(dir);
}

/// The semantic cache's rows: stored, loaded unexpired and oldest first, deleted, purged.
async fn semantic_battery(store: Arc<dyn Store>) {
    let row = |id: i64, created_ms: i64, expires_ms: i64| keel_store::SemanticRow {
        id,
        scope: format!("{id:064x}"),
        created_ms,
        expires_ms,
        turns: r#"["a question"]"#.into(),
        vectors: (0..8u8).collect(),
        answer: r#"{"response":{}}"#.into(),
    };
    for (id, created, expires) in [(3, 30, 1_000), (1, 10, 1_000), (2, 20, 50)] {
        store.cache_put(&row(id, created, expires)).await.unwrap();
    }
    // Storing an id again changes nothing.
    store.cache_put(&row(1, 99, 5)).await.unwrap();
    let loaded = store.cache_load(100).await.unwrap();
    assert_eq!(loaded.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 3], "unexpired, oldest first");
    assert_eq!(loaded[0], row(1, 10, 1_000), "every column round-trips, bytes included");
    assert_eq!(store.cache_purge(100).await.unwrap(), 1);
    assert_eq!(store.cache_delete(&[3, 42]).await.unwrap(), 1);
    assert_eq!(store.cache_load(0).await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
}

#[tokio::test]
async fn sqlite_keeps_semantic_cache_entries() {
    let (store, dir) = sqlite().await;
    semantic_battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_keeps_semantic_cache_entries() {
    semantic_battery(postgres().await).await;
}

/// Rows whose request is gone (`write_detached`) under `wait`: when the queue is full they wait in at most
/// `max_waiting` background waiters; past that they are dropped and counted, never piled up without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_rows_wait_in_bounded_waiters_and_the_rest_are_counted() {
    let (inner, dir) = sqlite().await;
    let gate = Arc::new(Gate { inner: inner.clone(), open: tokio::sync::Semaphore::new(0) });
    let config = WriterConfig {
        max_queue_bytes: 1 << 16,
        batch_max: 8,
        on_full: OnFull::Wait,
        max_waiting: 16,
        ..WriterConfig::default()
    };
    let (writer, task) = LogWriter::spawn(gate.clone(), config);
    let stats = writer.stats().clone();
    for i in 0..500 {
        let mut r = record(i, 2_000_000_000_000 + i as i64);
        r.request_body = Some("z".repeat(4000));
        writer.write_detached(r);
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert!(load(&stats.waiting_detached) <= 16, "at most max_waiting rows wait: {}", load(&stats.waiting_detached));
    let dropped = load(&stats.dropped);
    assert!(dropped > 0, "past the waiters, rows are dropped and counted");
    gate.open.add_permits(1_000_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while load(&stats.waiting_detached) > 0 {
        assert!(std::time::Instant::now() < deadline, "the waiting rows were never written");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(writer);
    task.close().await;
    let got = inner.query(&Query { limit: Some(10_000), ..Query::default() }).await.unwrap();
    assert_eq!(got.len() as u64 + dropped, 500, "every row is written or counted as dropped");
    let _ = std::fs::remove_dir_all(dir);
}

/// A write whose request goes away before there is room hands its row to the detached path: nothing is lost
/// because the client left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_still_queues_its_row() {
    let (inner, dir) = sqlite().await;
    let gate = Arc::new(Gate { inner: inner.clone(), open: tokio::sync::Semaphore::new(0) });
    let config =
        WriterConfig { max_queue_bytes: 1 << 16, batch_max: 8, on_full: OnFull::Wait, ..WriterConfig::default() };
    let (writer, task) = LogWriter::spawn(gate.clone(), config);
    let big = |i: usize| {
        let mut r = record(i, 2_100_000_000_000 + i as i64);
        r.request_body = Some("w".repeat(30_000));
        r
    };
    // Fill the queue, then give up on a write that has to wait.
    for i in 0..2 {
        writer.write(big(i)).await;
    }
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), writer.write(big(2))).await;
    assert!(waiting.is_err(), "the third row had to wait");
    let stats = writer.stats().clone();
    assert_eq!(stats.waiting_detached.load(std::sync::atomic::Ordering::Relaxed), 1, "handed to a waiter");
    gate.open.add_permits(1_000_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stats.waiting_detached.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        assert!(std::time::Instant::now() < deadline, "the abandoned row was never queued");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(writer);
    task.close().await;
    let got = inner.query(&Query { limit: Some(100), ..Query::default() }).await.unwrap();
    assert_eq!(got.len(), 3, "the abandoned write's row was written too");
    let _ = std::fs::remove_dir_all(dir);
}

/// Evaluation runs: created unfinished, results stored (and replaced) case by case, read in dataset order,
/// listed newest first per suite, finished with a summary; and the request log's template columns.
async fn eval_battery(store: Arc<dyn Store>) {
    use keel_store::{EvalResult, EvalRun};
    let suite = format!("suite-{}", rand_suffix());
    let run = |id: &str, started_ms: i64| EvalRun {
        id: id.into(),
        suite: suite.clone(),
        suite_hash: "abc".into(),
        started_ms,
        finished_ms: None,
        cases: 3,
        meta: serde_json::json!({"target": {"template": "t"}}),
        summary: None,
    };
    let a = format!("{suite}-a");
    let b = format!("{suite}-b");
    store.create_run(&run(&a, 1_000)).await.unwrap();
    store.create_run(&run(&b, 2_000)).await.unwrap();
    assert!(store.create_run(&run(&a, 3_000)).await.is_err(), "a run id is unique");
    let result = |case: &str, seq: u64, passed: bool| EvalResult {
        run_id: a.clone(),
        case_id: case.into(),
        seq,
        passed,
        latency_ms: Some(12.5),
        cost_usd: None,
        detail: serde_json::json!({"output": format!("answer {case}")}),
    };
    store.put_result(&result("z", 2, false)).await.unwrap();
    store.put_result(&result("y", 0, false)).await.unwrap();
    store.put_result(&result("x", 1, true)).await.unwrap();
    // A case run again (a resumed run that re-ran it) replaces its row.
    store.put_result(&result("y", 0, true)).await.unwrap();
    let got = store.results(&a).await.unwrap();
    assert_eq!(
        got.iter().map(|r| (r.case_id.as_str(), r.passed)).collect::<Vec<_>>(),
        [("y", true), ("x", true), ("z", false)]
    );
    assert_eq!(got[1].detail["output"], "answer x");
    assert!(store.results(&b).await.unwrap().is_empty());
    let listed = store.runs(Some(&suite), 10).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [b.as_str(), a.as_str()]);
    assert!(listed.iter().all(|r| r.finished_ms.is_none()));
    store.finish_run(&a, 5_000, &serde_json::json!({"pass_rate": 0.67})).await.unwrap();
    let done = store.run(&a).await.unwrap().unwrap();
    assert_eq!(done.finished_ms, Some(5_000));
    assert_eq!(done.summary, Some(serde_json::json!({"pass_rate": 0.67})));
    assert_eq!(done.meta["target"]["template"], "t");
    assert!(store.run("no-such-run").await.unwrap().is_none());

    let mut r = record(1, 1_950_000_000_000);
    r.id = format!("{suite}-request");
    r.template = Some(suite.clone());
    r.template_version = Some("0123456789ab".into());
    store.insert(&[r.clone(), record(2, 1_950_000_000_001)]).await.unwrap();
    let by_template = store.query(&Query { template: Some(suite.clone()), ..Query::default() }).await.unwrap();
    assert_eq!(by_template, vec![r]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_evaluation_runs() {
    let (store, dir) = sqlite().await;
    eval_battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_evaluation_runs() {
    eval_battery(postgres().await).await;
}

/// Feedback: stored per request, source and name (given again, it replaces the earlier); quality per day,
/// route and template version computed by the database (errors, schema failures, guard verdicts, user and
/// evaluator scores); approved pairs for export (a correction, or qualifying feedback without a negative one).
async fn feedback_battery(store: Arc<dyn Store>) {
    use keel_store::{ExportQuery, Feedback, FeedbackSource, QualityQuery};
    let day = QualityQuery::DAY_MS;
    let t0 = 1_950_000_000_000 / day * day; // a day's start
    let mut rows = Vec::new();
    for i in 0..6 {
        let mut r = record(100 + i, t0 + i as i64 * 1_000);
        r.id = format!("fb-{i}");
        r.model_requested = Some("smart".into());
        r.template = Some("support".into());
        r.template_version = Some(if i < 4 { "v1".into() } else { "v2".into() });
        r.status = 200;
        r.outcome = keel_store::Outcome::Ok;
        r.error_class = None;
        rows.push(r);
    }
    rows[1].outcome = keel_store::Outcome::Error;
    rows[1].error_class = Some("invalid_output".into());
    rows[2].metadata = serde_json::json!({"guard": [{"guard": "pii", "action": "redacted"}]});
    // The next day, another route without a template.
    let mut other = record(200, t0 + day + 5);
    other.id = "fb-other".into();
    other.model_requested = Some("fast".into());
    rows.push(other);
    store.insert(&rows).await.unwrap();

    let fb = |request: &str, source: FeedbackSource, name: &str, score: f64, correction: Option<&str>| Feedback {
        id: format!("{request}-{name}-{score}"),
        request_id: request.into(),
        ts_ms: t0 + 10_000,
        key_id: None,
        source,
        name: name.into(),
        score,
        comment: None,
        correction: correction.map(Into::into),
        meta: serde_json::json!({}),
    };
    store.put_feedback(&fb("fb-0", FeedbackSource::User, "user", 0.0, None)).await.unwrap();
    // The user changed their mind: the earlier thumbs down is replaced.
    store.put_feedback(&fb("fb-0", FeedbackSource::User, "user", 1.0, None)).await.unwrap();
    store.put_feedback(&fb("fb-0", FeedbackSource::Judge, "judge", 0.75, None)).await.unwrap();
    store.put_feedback(&fb("fb-2", FeedbackSource::User, "user", 0.0, Some("the right answer"))).await.unwrap();
    store.put_feedback(&fb("fb-3", FeedbackSource::Check, "schema", 0.0, None)).await.unwrap();
    store.put_feedback(&fb("fb-4", FeedbackSource::User, "user", 1.0, None)).await.unwrap();
    store.put_feedback(&fb("fb-4", FeedbackSource::User, "accuracy", 0.0, None)).await.unwrap();

    let got = store.feedback("fb-0").await.unwrap();
    assert_eq!(got.len(), 2);
    let user = got.iter().find(|f| f.source == FeedbackSource::User).unwrap();
    assert_eq!(user.score, 1.0);
    assert!(store.feedback("fb-5").await.unwrap().is_empty());

    let q = QualityQuery { since_ms: Some(t0), until_ms: Some(t0 + 2 * day), ..QualityQuery::default() };
    let quality = store.quality(&q).await.unwrap();
    let key = |r: &keel_store::QualityRow| (r.bucket_ms, r.route.clone(), r.template_version.clone());
    assert_eq!(
        quality.iter().map(key).collect::<Vec<_>>(),
        [
            (t0, Some("smart".into()), Some("v1".into())),
            (t0, Some("smart".into()), Some("v2".into())),
            (t0 + day, Some("fast".into()), None),
        ]
    );
    let v1 = &quality[0];
    assert_eq!((v1.requests, v1.errors, v1.schema_failures, v1.guarded), (4, 1, 1, 1));
    assert_eq!((v1.feedback, v1.positive), (2, 1), "fb-0 up, fb-2 down");
    assert_eq!(v1.mean_score, Some(0.5));
    assert_eq!(v1.positive_rate(), Some(0.5));
    assert_eq!(v1.feedback_rate(), 0.5);
    assert_eq!(v1.evaluated, 2, "the judge on fb-0 and the check on fb-3");
    assert_eq!(v1.eval_mean, Some(0.375));
    let v2 = &quality[1];
    assert_eq!((v2.requests, v2.feedback, v2.positive), (2, 1, 1), "fb-4's two user scores average 0.5");
    assert_eq!(v2.mean_score, Some(0.5));
    assert_eq!((quality[2].requests, quality[2].feedback, quality[2].mean_score), (1, 0, None));
    let only = store
        .quality(&QualityQuery { template: Some("support".into()), bucket_ms: Some(7 * day), ..q.clone() })
        .await
        .unwrap();
    assert_eq!(only.iter().map(|r| r.requests).sum::<u64>(), 6);

    let export = |sources: Vec<FeedbackSource>, min_score: f64| ExportQuery {
        scope: QualityQuery { since_ms: Some(t0), until_ms: Some(t0 + 2 * day), ..QualityQuery::default() },
        sources,
        min_score,
        limit: 100,
    };
    let approved = store.approved(&export(vec![FeedbackSource::User], 0.5)).await.unwrap();
    // fb-0: positive user feedback; fb-2: a correction; fb-4: one of its user scores is negative.
    assert_eq!(approved.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>(), ["fb-0", "fb-2"]);
    assert_eq!(approved[1].1[0].correction.as_deref(), Some("the right answer"));
    assert_eq!(approved[0].1.len(), 2, "every feedback row of the request comes along");
    let by_judge = store.approved(&export(vec![FeedbackSource::Judge], 0.8)).await.unwrap();
    assert_eq!(by_judge.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>(), ["fb-2"], "0.75 < 0.8");
    let corrections_only = store.approved(&export(vec![], 0.5)).await.unwrap();
    assert_eq!(corrections_only.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_feedback_and_reports_quality() {
    let (store, dir) = sqlite().await;
    feedback_battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_feedback_and_reports_quality() {
    feedback_battery(postgres().await).await;
}

/// Two keel processes (a server and `keel eval`, say) may open a fresh SQLite file at the same moment: each must
/// come up with the whole schema, neither may fail on a migration the other is applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_opened_at_once_on_a_fresh_file_all_migrate() {
    for round in 0..20 {
        let dir =
            std::env::temp_dir().join(format!("keel-store-race-{}-{}-{round}", std::process::id(), rand_suffix()));
        let url = format!("sqlite://{}", dir.join("keel.db").display());
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { SqliteStore::connect(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        assert_eq!(store.insert(&[record(1, 1_000)]).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The dashboard's aggregates, computed by the database: totals, nearest-rank percentiles, cache and guard
/// counts from the JSON metadata, series and breakdowns, over exactly the range asked for.
async fn overview_battery(store: Arc<dyn Store>) {
    let hour = 3_600_000;
    let base = 1_950_000_000_000 / hour * hour;
    let mut rows = Vec::new();
    for i in 1..=10 {
        let mut r = record(i, base + i as i64 * 1000);
        r.id = format!("ov-{i}");
        match i {
            2 => {
                r.cache = Some(keel_store::CacheStatus::Hit);
                r.metadata = serde_json::json!({"cache_saved_usd": 0.5, "guard": [{"guard": "pii", "action": "redact", "found": ["EMAIL"]}]});
            }
            3 => r.cache = Some(keel_store::CacheStatus::Miss),
            4 => r.attempts.push(r.attempts[0].clone()),
            _ => {}
        }
        rows.push(r);
    }
    // Outside the range: must not count.
    rows.push(record(99, base - 1));
    rows.push(record(98, base + hour));
    store.insert(&rows).await.unwrap();
    // A batch written again (a retry after an unclear failure) adds nothing, to the rows or the rollups.
    assert_eq!(store.insert(&rows).await.unwrap(), 0);
    // Finer than an hour: the rows themselves, exact percentiles. Whole hours: the rollups, the same sums and
    // percentiles within 5%.
    let raw =
        store.overview(keel_store::Range { since_ms: base, until_ms: base + hour, bucket_ms: 300_000 }).await.unwrap();
    let rolled =
        store.overview(keel_store::Range { since_ms: base, until_ms: base + hour, bucket_ms: hour }).await.unwrap();
    for (o, exact) in [(&raw, true), (&rolled, false)] {
        let t = &o.totals;
        assert_eq!((t.requests, t.errors), (10, 2));
        assert_eq!((t.tokens_in, t.tokens_out), (155, 50));
        assert!((t.cost_usd - 0.000_123 * 55.0).abs() < 1e-9, "{}", t.cost_usd);
        assert_eq!((t.cache_lookups, t.cache_hits, t.fallbacks), (2, 1, 1));
        assert!((t.saved_usd - 0.5).abs() < 1e-9);
        let near = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            if exact { got == want } else { (got / want - 1.0).abs() < 0.05 }
        };
        assert!(near(t.latency_p50_ms, 25.0) && near(t.latency_p99_ms, 30.0) && near(t.ttft_p50_ms, 3.5), "{t:?}");
        let models: Vec<(&str, u64)> = o.by_model.iter().map(|g| (g.name.as_str(), g.requests)).collect();
        assert_eq!(models, [("smart", 7), ("fast", 3)]);
        assert_eq!(o.by_key.len(), 2);
        assert_eq!(o.guards, [keel_store::GuardCount { guard: "pii".into(), action: "redact".into(), count: 1 }]);
        let total: u64 = o.series.iter().map(|p| p.requests).sum();
        assert_eq!(total, 10);
    }
    assert_eq!(rolled.series.len(), 1);
    assert_eq!((rolled.series[0].start_ms, rolled.series[0].requests, rolled.series[0].errors), (base, 10, 2));
    assert!((rolled.by_model[0].latency_avg_ms - raw.by_model[0].latency_avg_ms).abs() < 1e-9);
    let empty = store.overview(keel_store::Range { since_ms: 0, until_ms: 1, bucket_ms: hour }).await.unwrap();
    assert_eq!((empty.totals.requests, empty.totals.latency_p50_ms), (0, None));

    // The explorer's filters on the JSON metadata: a tag, a key's value (row 2 has neither).
    let count = |q: Query| {
        let store = store.clone();
        async move {
            let q = Query { since_ms: Some(base), until_ms: Some(base + hour), ..q };
            store.query(&q).await.unwrap().len()
        }
    };
    assert_eq!(count(Query { tag: Some("a".into()), ..Query::default() }).await, 9);
    assert_eq!(count(Query { tag: Some("zzz".into()), ..Query::default() }).await, 0);
    assert_eq!(count(Query { metadata: Some(("user".into(), "u1".into())), ..Query::default() }).await, 9);
    assert_eq!(count(Query { metadata: Some(("user".into(), "nobody".into())), ..Query::default() }).await, 0);
    assert_eq!(count(Query { metadata: Some(("us\"er".into(), "u1".into())), ..Query::default() }).await, 0);
    let both = Query { tag: Some("b".into()), metadata: Some(("user".into(), "u1".into())), ..Query::default() };
    assert_eq!(count(both).await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_computes_the_dashboard_overview() {
    let (store, dir) = sqlite().await;
    overview_battery(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_computes_the_dashboard_overview() {
    overview_battery(postgres().await).await;
}
