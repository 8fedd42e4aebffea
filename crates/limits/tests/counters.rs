//! Budget exactness under concurrency: 64 clients on one key, in-process and through Redis shared by two
//! instances, never spend past the budget by more than one request's cost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use keel_limits::{Admission, Counters, LocalCounters, RedisCounters, from_nano, to_nano};
use keel_store::{KeyRecord, SqliteStore, Store};

async fn store() -> Arc<dyn Store> {
    Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap())
}

fn key(id: &str, daily: Option<f64>, rpm: Option<u32>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: id.into(),
        hash: format!("hash-{id}"),
        prefix: "sk-keel-test".into(),
        tenant: None,
        created_ms: 0,
        revoked_ms: None,
        models: Vec::new(),
        budget_daily_usd: daily,
        budget_monthly_usd: daily.map(|d| d * 10.0),
        rpm,
        tpm: None,
    }
}

const ESTIMATE: f64 = 0.03;

/// 64 clients spread over `counters`, each admitting, "calling" and settling a real cost at or under the
/// estimate until refused. Returns the total settled cost in nano-dollars.
async fn spend_concurrently(counters: Vec<Arc<dyn Counters>>, key: KeyRecord) -> i64 {
    let total = Arc::new(AtomicI64::new(0));
    let key = Arc::new(key);
    let mut tasks = Vec::new();
    for client in 0..64usize {
        let c = counters[client % counters.len()].clone();
        let key = key.clone();
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                let now = keel_store::now_ms();
                match c.admit(&key, ESTIMATE, now).await.unwrap() {
                    Admission::Admitted(r) => {
                        // A real cost between a third of the estimate and all of it.
                        let cost = ESTIMATE * (1.0 + ((client as u64 * 7 + i) % 3) as f64) / 3.0;
                        tokio::task::yield_now().await;
                        c.settle(&r, cost, 100).await.unwrap();
                        total.fetch_add(to_nano(cost), Ordering::Relaxed);
                        i += 1;
                    }
                    Admission::Denied { limit, reason, retry_after } => {
                        assert_eq!(limit, keel_limits::Limit::DailyBudget, "{reason}");
                        assert!(retry_after.as_secs() > 0);
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total.load(Ordering::Relaxed)
}

fn check_bound(spent: i64, budget: f64) {
    let spent = from_nano(spent);
    assert!(spent <= budget + ESTIMATE, "overspent: ${spent} against a ${budget} budget");
    assert!(spent >= budget - 2.0 * ESTIMATE, "stopped early: ${spent} of ${budget}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_budget_is_exact_for_64_concurrent_clients() {
    let counters: Arc<dyn Counters> = Arc::new(LocalCounters::new(store().await));
    let spent = spend_concurrently(vec![counters.clone()], key("k-local", Some(1.0), None)).await;
    check_bound(spent, 1.0);
    let (day, month) = counters.spent(&key("k-local", Some(1.0), None), keel_store::now_ms()).await.unwrap();
    assert!((day - from_nano(spent)).abs() < 1e-6 && (month - day).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_budget_is_exact_for_64_clients_on_two_instances() {
    let prefix = format!("keel-test-{}-{}", std::process::id(), keel_store::now_ms());
    let store = store().await;
    let a: Arc<dyn Counters> =
        Arc::new(RedisCounters::connect_with_prefix("redis://127.0.0.1:6379", store.clone(), &prefix).await.unwrap());
    let b: Arc<dyn Counters> =
        Arc::new(RedisCounters::connect_with_prefix("redis://127.0.0.1:6379", store, &prefix).await.unwrap());
    let spent = spend_concurrently(vec![a.clone(), b.clone()], key("k-redis", Some(1.0), None)).await;
    check_bound(spent, 1.0);
    // Both instances see the same settled spend.
    let now = keel_store::now_ms();
    let (da, _) = a.spent(&key("k-redis", Some(1.0), None), now).await.unwrap();
    let (db, _) = b.spent(&key("k-redis", Some(1.0), None), now).await.unwrap();
    assert!((da - from_nano(spent)).abs() < 1e-6, "{da} vs {}", from_nano(spent));
    assert_eq!(da, db);
}

/// A logged row of `cost` spent by key `key_id` now.
fn spent_row(id: &str, key_id: &str, cost: f64) -> keel_store::Record {
    keel_store::Record {
        id: id.into(),
        client_request_id: None,
        ts_ms: keel_store::now_ms(),
        key_id: Some(key_id.into()),
        tenant: None,
        api: "openai".into(),
        endpoint: "chat".into(),
        model_requested: None,
        model_served: None,
        status: 200,
        outcome: keel_store::Outcome::Ok,
        error_class: None,
        stream: false,
        attempts: Vec::new(),
        ttft_ms: None,
        latency_ms: 1.0,
        tokens_in: None,
        tokens_out: None,
        tokens_cached: None,
        cost_usd: Some(cost),
        cache: None,
        request_body: None,
        response_body: None,
        metadata: serde_json::json!({}),
        template: None,
        template_version: None,
        routing: None,
    }
}

/// Redis loses a window this process had seen (a restart without persistence, a flush, a failover): the next
/// admission seeds it again from the log's spend, never from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_redis_lost_is_seeded_again_from_the_log() {
    let prefix = format!("keel-test-reseed-{}-{}", std::process::id(), keel_store::now_ms());
    let store = store().await;
    store.insert(&[spent_row("before", "k-lost", 0.20)]).await.unwrap();
    let c = RedisCounters::connect_with_prefix("redis://127.0.0.1:6379", store.clone(), &prefix).await.unwrap();
    let k = key("k-lost", Some(0.25), None);
    let Admission::Admitted(r) = c.admit(&k, ESTIMATE, keel_store::now_ms()).await.unwrap() else {
        panic!("$0.20 spent + $0.03 fits in $0.25")
    };
    c.settle(&r, ESTIMATE, 10).await.unwrap();
    store.insert(&[spent_row("settled", "k-lost", ESTIMATE)]).await.unwrap();
    // Redis loses every counter of the prefix.
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    match c.admit(&k, ESTIMATE, keel_store::now_ms()).await.unwrap() {
        Admission::Denied { limit, .. } => assert_eq!(limit, keel_limits::Limit::DailyBudget),
        Admission::Admitted(_) => panic!("$0.23 logged + $0.03 exceeds $0.25: the lost window restarted at zero"),
    }
    let (day, _) = c.spent(&k, keel_store::now_ms()).await.unwrap();
    assert!((day - 0.23).abs() < 1e-6, "{day}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_already_in_the_log_counts_against_the_budget() {
    let store = store().await;
    let row = spent_row("old", "k-seeded", 0.99);
    store.insert(std::slice::from_ref(&row)).await.unwrap();
    let c = LocalCounters::new(store);
    match c.admit(&key("k-seeded", Some(1.0), None), ESTIMATE, keel_store::now_ms()).await.unwrap() {
        Admission::Denied { limit, reason, .. } => {
            assert_eq!(limit, keel_limits::Limit::DailyBudget, "{reason}");
            assert!(reason.contains("daily budget"), "{reason}");
        }
        Admission::Admitted(_) => panic!("$0.99 spent + $0.03 estimate exceeds $1.00"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_are_limited_in_process_and_in_redis() {
    let prefix = format!("keel-test-rpm-{}-{}", std::process::id(), keel_store::now_ms());
    let redis: Arc<dyn Counters> =
        Arc::new(RedisCounters::connect_with_prefix("redis://127.0.0.1:6379", store().await, &prefix).await.unwrap());
    let local: Arc<dyn Counters> = Arc::new(LocalCounters::new(store().await));
    for c in [local, redis] {
        let k = key("k-rpm", None, Some(10));
        // Within one minute window.
        let now = (keel_store::now_ms() / 60_000) * 60_000 + 1_000;
        for i in 0..10 {
            assert!(matches!(c.admit(&k, 0.0, now + i).await.unwrap(), Admission::Admitted(_)), "request {i}");
        }
        match c.admit(&k, 0.0, now + 10).await.unwrap() {
            Admission::Denied { limit, reason, retry_after } => {
                assert_eq!(limit, keel_limits::Limit::Rpm);
                assert!(reason.contains("10 requests per minute"), "{reason}");
                assert_eq!(retry_after.as_millis(), 60_000 - 1_010);
            }
            Admission::Admitted(_) => panic!("the 11th request in a minute must be refused"),
        }
        // The next minute admits again.
        assert!(matches!(c.admit(&k, 0.0, now + 60_000).await.unwrap(), Admission::Admitted(_)));
    }
}
