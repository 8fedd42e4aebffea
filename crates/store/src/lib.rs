//! keel's durable state: the request log (one row per request, whatever its outcome), behind one trait with two
//! real backends: SQLite (the embedded default, WAL) and PostgreSQL (shared by several keel instances). Schema
//! migrations are embedded and run when a store is opened. Writes from the request path go through
//! [`LogWriter`]: a queue bounded in bytes, batched into transactions, with an explicit policy when full.

mod dashboard;
mod eval;
mod feedback;
mod keys;
mod postgres;
mod record;
mod sql;
mod sqlite;
mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use dashboard::{DashboardStore, Group, GuardCount, Overview, Point, Range, Totals};
pub use eval::{EvalResult, EvalRun, EvalStore};
pub use feedback::{ExportQuery, Feedback, FeedbackSource, FeedbackStore, QualityQuery, QualityRow};
pub use keys::KeyRecord;
pub use postgres::PgStore;
pub use record::{AttemptRow, CacheStatus, Outcome, Query, Record, Routing};
pub use sqlite::SqliteStore;
pub use writer::{Acknowledge, LogWriter, OnFull, Write, WriterConfig, WriterStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Invalid(String),
}

/// The request log: rows in, rows out, old rows purged, and the spend the budgets start from.
pub trait LogStore: Send + Sync + 'static {
    /// Inserts rows in one transaction. A row whose id is already stored is left as it is (a retried batch
    /// does not duplicate rows). Returns the number of rows inserted.
    fn insert<'a>(&'a self, rows: &'a [Record]) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Rows matching `query`, newest first.
    fn query<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Vec<Record>, StoreError>>;

    /// Deletes rows received before `ts_ms` (retention). Returns how many.
    fn purge_before(&self, ts_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// What a key has spent since `since_ms`, from the request log.
    fn spend_since<'a>(&'a self, key_id: &'a str, since_ms: i64) -> BoxFuture<'a, Result<f64, StoreError>>;
}

/// Virtual keys, stored by the hash of their secret.
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key. Fails if its id or hash exists.
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every key, newest first, revoked ones included.
    fn list_keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>>;

    /// Marks a key revoked; false when there is no such key or it was already revoked.
    fn revoke_key<'a>(&'a self, id: &'a str, at_ms: i64) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The key whose secret hashes to `hash`, revoked or not.
    fn key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
}

/// The semantic cache's entries, so the index survives a restart.
pub trait CacheStore: Send + Sync + 'static {
    /// Stores a semantic cache entry (an id already stored is left as it is).
    fn cache_put<'a>(&'a self, row: &'a SemanticRow) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every semantic cache entry that has not expired at `now_ms`, oldest first.
    fn cache_load(&self, now_ms: i64) -> BoxFuture<'_, Result<Vec<SemanticRow>, StoreError>>;

    /// Deletes semantic cache entries (evicted from the index); returns how many were stored.
    fn cache_delete<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes semantic cache entries expired at `now_ms`.
    fn cache_purge(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// A database that holds all of keel's state: what the two backends implement. Each component asks only for
/// the capability it uses (`Arc<dyn LogStore>`, …; an `Arc<dyn Store>` converts to each), so a test double
/// implements one small trait.
pub trait Store: LogStore + KeyStore + CacheStore + EvalStore + FeedbackStore + DashboardStore {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;
}

/// One semantic cache entry as stored: user turns as a JSON array of strings, their embeddings as
/// little-endian `f32`s one turn after the other, the answer as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SemanticRow {
    pub id: i64,
    /// The hex SHA-256 of the entry's scope.
    pub scope: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub turns: String,
    pub vectors: Vec<u8>,
    pub answer: String,
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing), `sqlite::memory:`, or
/// `postgres://…` / `postgresql://…`; runs pending migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Invalid(format!("unsupported store URL {url:?} (expected sqlite://PATH or postgres://…)")))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
