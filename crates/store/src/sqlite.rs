//! The embedded default: one SQLite file in WAL mode (readers never block the writer).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::StoreError;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";

    /// Opens (creating if missing) the database at `url` (`sqlite://PATH` or `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL syncs at checkpoints: a power loss can lose the last transactions, never corrupt.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        if let Some(parent) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Invalid(format!("cannot create {}: {e}", parent.display())))?;
        }
        // An in-memory database exists per connection: keep exactly one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = open_pool(max, options).await?;
        // sqlx takes no lock to migrate SQLite (its `Migrate::lock` is a no-op there), so two keel processes that
        // open a fresh file at once (a server and `keel eval`, say) would both apply the first migration and one
        // would fail with "table already exists". The whole run goes in one IMMEDIATE transaction instead: the
        // second opener waits for the first (busy_timeout) and then finds every migration applied. (`run_direct`
        // is `run` minus the `Acquire` bound that a transaction cannot meet here; sqlx documents it as the way.)
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::migrate!("./migrations/sqlite").run_direct(None, &mut *tx, false).await?;
        tx.commit().await?;
        Ok(Self { pool })
    }
}

/// How long an opener keeps retrying a file another process is setting up (the same as the busy timeout).
const OPEN_PATIENCE: Duration = Duration::from_secs(10);

/// Opens the pool, retrying while another process holds the file busy. Switching a fresh file to WAL takes an
/// exclusive lock, and SQLite answers SQLITE_BUSY at once there instead of calling the busy handler, so two
/// processes opening a new file together (CI caught one) need this loop; any other error returns at once.
async fn open_pool(max: u32, options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match SqlitePoolOptions::new().max_connections(max).connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && started.elapsed() < OPEN_PATIENCE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// SQLITE_BUSY or one of its extended codes (the primary code is the low byte).
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 5)
}

crate::sql::store_impl!(SqliteStore, sqlx::Sqlite, crate::sqlite::json);

/// The request log's JSON filters in SQLite's JSON functions.
pub(crate) mod json {
    use sqlx::{QueryBuilder, Sqlite};

    pub(crate) fn tag(qb: &mut QueryBuilder<Sqlite>, tag: &str) {
        qb.push(" AND EXISTS (SELECT 1 FROM json_each(requests.metadata, '$.tags') AS t WHERE t.value = ")
            .push_bind(tag.to_string())
            .push(")");
    }

    /// `key` is quoted in the JSON path (a key with a double quote matches nothing).
    pub(crate) fn metadata(qb: &mut QueryBuilder<Sqlite>, key: &str, value: &str) {
        if key.contains('"') {
            qb.push(" AND 1 = 0");
            return;
        }
        qb.push(" AND CAST(json_extract(requests.metadata, ")
            .push_bind(format!("$.\"{key}\""))
            .push(") AS TEXT) = ")
            .push_bind(value.to_string());
    }
}
crate::eval::eval_impl!(SqliteStore, sqlx::Sqlite);
crate::feedback::feedback_impl!(SqliteStore, sqlx::Sqlite);
crate::dashboard::dashboard_impl!(
    SqliteStore,
    sqlx::Sqlite,
    "SELECT json_extract(j.value, '$.guard') AS guard, json_extract(j.value, '$.action') AS action \
     FROM requests, json_each(requests.metadata, '$.guard') AS j \
     WHERE requests.ts_ms >= $1 AND requests.ts_ms < $2 AND requests.metadata LIKE '%\"guard\"%'",
    "json_extract(metadata, '$.cache_saved_usd')"
);
