//! Key verification and counters as the request path uses them: an unknown secret reaches the store once per
//! cache lifetime, not once per request; one key's slow first look at the log does not hold up another key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use keel_limits::{Admission, Counters, Keys, LocalCounters, NewKey};
use keel_store::{KeyRecord, KeyStore, LogStore, Query, Record, SqliteStore, StoreError};

/// Key lookups counted on their way to a real store.
struct Counting {
    inner: Arc<SqliteStore>,
    lookups: AtomicUsize,
}

impl KeyStore for Counting {
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.create_key(key)
    }
    fn list_keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        self.inner.list_keys()
    }
    fn revoke_key<'a>(&'a self, id: &'a str, at_ms: i64) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.revoke_key(id, at_ms)
    }
    fn key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.key_by_hash(hash)
    }
}

#[tokio::test]
async fn unknown_secrets_are_remembered_and_new_keys_are_found_at_once() {
    let store = Arc::new(Counting {
        inner: Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap()),
        lookups: AtomicUsize::new(0),
    });
    let keys = Keys::new(store.clone(), Duration::from_secs(60));
    for _ in 0..100 {
        assert!(keys.verify("sk-keel-not-a-key").await.unwrap().is_none());
    }
    assert_eq!(store.lookups.load(Ordering::Relaxed), 1, "one lookup for a hundred tries of one unknown secret");
    let (key, secret) = keys.create(NewKey { name: "n".into(), ..NewKey::default() }).await.unwrap();
    assert_eq!(keys.verify(&secret).await.unwrap().map(|k| k.id.clone()), Some(key.id));
}

/// A log whose spend lookup for one key waits until released.
struct SlowLog {
    inner: Arc<SqliteStore>,
    release: tokio::sync::Semaphore,
}

impl LogStore for SlowLog {
    fn insert<'a>(&'a self, rows: &'a [Record]) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.insert(rows)
    }
    fn query<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Vec<Record>, StoreError>> {
        self.inner.query(q)
    }
    fn purge_before(&self, ts: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.purge_before(ts)
    }
    fn spend_since<'a>(&'a self, key: &'a str, since: i64) -> BoxFuture<'a, Result<f64, StoreError>> {
        Box::pin(async move {
            if key == "slow" {
                let _p = self.release.acquire().await.unwrap();
            }
            self.inner.spend_since(key, since).await
        })
    }
}

fn budgeted(id: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: id.into(),
        hash: format!("hash-{id}"),
        prefix: "sk-keel-test".into(),
        tenant: None,
        created_ms: 0,
        revoked_ms: None,
        models: Vec::new(),
        budget_daily_usd: Some(10.0),
        budget_monthly_usd: None,
        rpm: None,
        tpm: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_slow_seeding_does_not_hold_up_another_key() {
    let log = Arc::new(SlowLog {
        inner: Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap()),
        release: tokio::sync::Semaphore::new(0),
    });
    let counters = Arc::new(LocalCounters::new(log.clone()));
    let slow = {
        let c = counters.clone();
        tokio::spawn(async move { c.admit(&budgeted("slow"), 0.01, keel_store::now_ms()).await })
    };
    tokio::task::yield_now().await;
    // While the first key waits for the log, the second is decided. (Before, both waited on one lock held
    // across the first key's query: this would never return.)
    let fast =
        tokio::time::timeout(Duration::from_secs(10), counters.admit(&budgeted("fast"), 0.01, keel_store::now_ms()))
            .await
            .expect("the second key waited for the first key's query");
    assert!(matches!(fast.unwrap(), Admission::Admitted(_)));
    log.release.add_permits(1);
    assert!(matches!(slow.await.unwrap().unwrap(), Admission::Admitted(_)));
}
