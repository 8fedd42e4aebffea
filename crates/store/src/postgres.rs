//! PostgreSQL, for several keel instances sharing one log.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::StoreError;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";

    /// Connects to `url` and runs pending migrations (serialised across instances by sqlx's advisory lock).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// Connects with explicit options (tests use a schema of their own through `search_path`).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, StoreError> {
        // A connection is waited for at most 5 s (sqlx's default is 30): when the database is down, a key lookup
        // on the request path fails in bounded time, and the log writer's retries come at a steady pace.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

crate::sql::store_impl!(PgStore, sqlx::Postgres, crate::postgres::json);

/// The request log's JSON filters in PostgreSQL's `jsonb` operators.
pub(crate) mod json {
    use sqlx::{Postgres, QueryBuilder};

    pub(crate) fn tag(qb: &mut QueryBuilder<Postgres>, tag: &str) {
        qb.push(" AND (requests.metadata::jsonb -> 'tags') @> jsonb_build_array(CAST(")
            .push_bind(tag.to_string())
            .push(" AS TEXT))");
    }

    pub(crate) fn metadata(qb: &mut QueryBuilder<Postgres>, key: &str, value: &str) {
        qb.push(" AND (requests.metadata::jsonb ->> CAST(")
            .push_bind(key.to_string())
            .push(" AS TEXT)) = CAST(")
            .push_bind(value.to_string())
            .push(" AS TEXT)");
    }
}
crate::eval::eval_impl!(PgStore, sqlx::Postgres);
crate::feedback::feedback_impl!(PgStore, sqlx::Postgres);
crate::dashboard::dashboard_impl!(
    PgStore,
    sqlx::Postgres,
    "SELECT v ->> 'guard' AS guard, v ->> 'action' AS action FROM requests, jsonb_array_elements(\
     CASE WHEN jsonb_typeof(metadata::jsonb -> 'guard') = 'array' THEN metadata::jsonb -> 'guard' \
     ELSE '[]'::jsonb END) AS v \
     WHERE ts_ms >= $1 AND ts_ms < $2 AND metadata LIKE '%\"guard\"%'",
    "(metadata::jsonb ->> 'cache_saved_usd')::float8"
);
