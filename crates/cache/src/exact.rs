//! The exact cache's backends: in-process, bounded in memory (the default), or Redis, shared by several keel
//! instances. Both keep an entry for its route's TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::answer::CachedAnswer;
use crate::{CacheError, Key};

/// Where exact entries live.
pub trait ExactBackend: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>>;
    fn put(&self, key: Key, answer: Arc<CachedAnswer>, ttl: Duration) -> BoxFuture<'_, Result<(), CacheError>>;
    /// "memory" or "redis".
    fn name(&self) -> &'static str;
}

/// In-process entries, bounded by their approximate size in bytes; the least recently used go first.
pub struct MemoryBackend {
    cache: moka::sync::Cache<Key, (Arc<CachedAnswer>, Duration)>,
}

struct PerEntryTtl;

impl moka::Expiry<Key, (Arc<CachedAnswer>, Duration)> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, value: &(Arc<CachedAnswer>, Duration), _: Instant) -> Option<Duration> {
        Some(value.1)
    }
}

impl MemoryBackend {
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Key, v: &(Arc<CachedAnswer>, Duration)| v.0.weight())
            .expire_after(PerEntryTtl)
            .build();
        Self { cache }
    }
}

impl ExactBackend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>> {
        futures::future::ready(Ok(self.cache.get(key).map(|(a, _)| a))).boxed()
    }

    fn put(&self, key: Key, answer: Arc<CachedAnswer>, ttl: Duration) -> BoxFuture<'_, Result<(), CacheError>> {
        self.cache.insert(key, (answer, ttl));
        futures::future::ready(Ok(())).boxed()
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Entries in Redis as JSON under `PREFIX<hex key>`, expiring with `PX`.
pub struct RedisBackend {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisBackend {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::Backend(e.to_string()))?;
        let conn = client.get_connection_manager().await.map_err(|e| CacheError::Backend(e.to_string()))?;
        Ok(Self { conn, prefix: prefix.to_string() })
    }

    fn name_of(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.hex())
    }
}

impl ExactBackend for RedisBackend {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Arc<CachedAnswer>>, CacheError>> {
        let mut conn = self.conn.clone();
        let name = self.name_of(key);
        async move {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .map_err(|e| CacheError::Backend(e.to_string()))?;
            match bytes {
                None => Ok(None),
                // An entry keel cannot read (another version, corruption) is a miss, not an error for the client.
                Some(b) => match serde_json::from_slice::<CachedAnswer>(&b) {
                    Ok(a) => Ok(Some(Arc::new(a))),
                    Err(e) => {
                        tracing::warn!(error = %e, key = name, "unreadable cache entry ignored");
                        Ok(None)
                    }
                },
            }
        }
        .boxed()
    }

    fn put(&self, key: Key, answer: Arc<CachedAnswer>, ttl: Duration) -> BoxFuture<'_, Result<(), CacheError>> {
        let mut conn = self.conn.clone();
        let name = self.name_of(&key);
        async move {
            let bytes = serde_json::to_vec(&*answer).map_err(|e| CacheError::Backend(e.to_string()))?;
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            redis::cmd("SET")
                .arg(&name)
                .arg(bytes)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| CacheError::Backend(e.to_string()))
        }
        .boxed()
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
