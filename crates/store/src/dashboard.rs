//! What the web dashboard shows of the request log, computed by the database: totals, percentiles, a time
//! series and breakdowns over a time range. Every query is bounded by the range on `ts_ms` (indexed), the
//! breakdowns by a row limit; the JSON parts (guard verdicts, what a cache hit saved) use each backend's JSON
//! functions, the rest is the same SQL for both.

use futures::future::BoxFuture;
use serde::Serialize;

use crate::StoreError;

/// One range of the log: `[since_ms, until_ms)`, its series in buckets of `bucket_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub requests: u64,
    /// Requests whose outcome was not `ok`.
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// Cache lookups (hit or miss; bypasses not counted) and hits.
    pub cache_lookups: u64,
    pub cache_hits: u64,
    /// What cache hits saved: the price of the answers they gave again.
    pub saved_usd: f64,
    /// Requests served after more than one attempt (a retry or a fallback).
    pub fallbacks: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

/// One bucket of the series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Point {
    pub start_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub cost_usd: f64,
    pub tokens: u64,
    pub cache_hits: u64,
    pub latency_avg_ms: f64,
}

/// One row of a breakdown (by model alias, by key, by router).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    /// The alias, key id or router; empty for requests without one.
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub cost_usd: f64,
    pub tokens: u64,
    pub latency_avg_ms: f64,
}

/// Guard verdicts of one guard and action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardCount {
    pub guard: String,
    pub action: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Overview {
    pub totals: Totals,
    pub series: Vec<Point>,
    pub by_model: Vec<Group>,
    pub by_key: Vec<Group>,
    pub by_router: Vec<Group>,
    pub guards: Vec<GuardCount>,
}

/// The most rows a breakdown shows (the largest by requests).
pub const GROUPS_MAX: i64 = 25;

pub trait DashboardStore: Send + Sync + 'static {
    fn overview(&self, range: Range) -> BoxFuture<'_, Result<Overview, StoreError>>;
}

pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The value at quantile `q` of `n` sorted values is the one at this offset (nearest rank).
pub(crate) fn rank(n: u64, q: f64) -> i64 {
    let r = ((n as f64) * q).ceil() as i64 - 1;
    r.clamp(0, i64::try_from(n).unwrap_or(i64::MAX).saturating_sub(1))
}

/// `$guards` is the backend's SQL for `(guard, action)` pairs of every verdict in the range's rows, `$saved` its
/// expression for what a cache hit saved (a row's `metadata.cache_saved_usd`).
macro_rules! dashboard_impl {
    ($store:ty, $db:ty, $guards:expr, $saved:expr) => {
        impl $store {
            async fn percentile(&self, column: &str, r: crate::Range, n: u64, q: f64) -> Result<Option<f64>, crate::StoreError> {
                use sqlx::Row;
                if n == 0 {
                    return Ok(None);
                }
                // Nearest rank, by the database: ORDER BY on the range's rows (the ts index bounds them).
                let sql = format!(
                    "SELECT {column} AS v FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 AND {column} IS NOT NULL \
                     ORDER BY {column} LIMIT 1 OFFSET $3"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(r.since_ms)
                    .bind(r.until_ms)
                    .bind(crate::dashboard::rank(n, q))
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|row| row.try_get::<f64, _>("v")).transpose()?)
            }

            async fn groups(&self, column: &str, r: crate::Range) -> Result<Vec<crate::Group>, crate::StoreError> {
                use sqlx::Row;
                let sql = format!(
                    "SELECT COALESCE({column}, '') AS name, COUNT(*) AS n, \
                     SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END) AS errors, \
                     COALESCE(SUM(cost_usd), 0.0) AS cost, \
                     CAST(COALESCE(SUM(COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0)), 0) AS BIGINT) AS tokens, \
                     AVG(latency_ms) AS latency \
                     FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY COALESCE({column}, '') \
                     ORDER BY n DESC, name LIMIT $3"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(r.since_ms)
                    .bind(r.until_ms)
                    .bind(crate::dashboard::GROUPS_MAX)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(crate::Group {
                            name: row.try_get("name")?,
                            requests: crate::dashboard::u(row.try_get("n")?),
                            errors: crate::dashboard::u(row.try_get::<Option<i64>, _>("errors")?.unwrap_or(0)),
                            cost_usd: row.try_get("cost")?,
                            tokens: crate::dashboard::u(row.try_get("tokens")?),
                            latency_avg_ms: row.try_get::<Option<f64>, _>("latency")?.unwrap_or(0.0),
                        })
                    })
                    .collect()
            }
        }

        impl crate::DashboardStore for $store {
            fn overview(
                &self,
                r: crate::Range,
            ) -> futures::future::BoxFuture<'_, Result<crate::Overview, crate::StoreError>> {
                Box::pin(async move {
                    use crate::dashboard::u;
                    use sqlx::Row;
                    let totals_sql = format!(
                        "SELECT COUNT(*) AS n, \
                         SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END) AS errors, \
                         CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tin, \
                         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tout, \
                         COALESCE(SUM(cost_usd), 0.0) AS cost, \
                         SUM(CASE WHEN cache IN ('hit', 'semantic_hit', 'miss') THEN 1 ELSE 0 END) AS lookups, \
                         SUM(CASE WHEN cache IN ('hit', 'semantic_hit') THEN 1 ELSE 0 END) AS hits, \
                         COALESCE(SUM(CASE WHEN cache IN ('hit', 'semantic_hit') THEN {} END), 0.0) AS saved, \
                         SUM(CASE WHEN attempts LIKE '%}},{{%' THEN 1 ELSE 0 END) AS fallbacks, \
                         COUNT(ttft_ms) AS ttft_n \
                         FROM requests WHERE ts_ms >= $1 AND ts_ms < $2",
                        $saved
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(totals_sql))
                        .bind(r.since_ms)
                        .bind(r.until_ms)
                        .fetch_one(&self.pool)
                        .await?;
                    let opt = |name: &str| -> Result<u64, crate::StoreError> {
                        Ok(u(row.try_get::<Option<i64>, _>(name)?.unwrap_or(0)))
                    };
                    let requests = u(row.try_get("n")?);
                    let ttft_n = u(row.try_get("ttft_n")?);
                    let mut totals = crate::Totals {
                        requests,
                        errors: opt("errors")?,
                        tokens_in: u(row.try_get("tin")?),
                        tokens_out: u(row.try_get("tout")?),
                        cost_usd: row.try_get("cost")?,
                        cache_lookups: opt("lookups")?,
                        cache_hits: opt("hits")?,
                        saved_usd: row.try_get("saved")?,
                        fallbacks: opt("fallbacks")?,
                        ..crate::Totals::default()
                    };
                    totals.latency_p50_ms = self.percentile("latency_ms", r, requests, 0.5).await?;
                    totals.latency_p99_ms = self.percentile("latency_ms", r, requests, 0.99).await?;
                    totals.ttft_p50_ms = self.percentile("ttft_ms", r, ttft_n, 0.5).await?;
                    totals.ttft_p99_ms = self.percentile("ttft_ms", r, ttft_n, 0.99).await?;

                    let series = sqlx::query(
                        "SELECT (ts_ms / $3) * $3 AS t, COUNT(*) AS n, \
                         SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END) AS errors, \
                         COALESCE(SUM(cost_usd), 0.0) AS cost, \
                         CAST(COALESCE(SUM(COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0)), 0) AS BIGINT) AS tokens, \
                         SUM(CASE WHEN cache IN ('hit', 'semantic_hit') THEN 1 ELSE 0 END) AS hits, \
                         AVG(latency_ms) AS latency \
                         FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY (ts_ms / $3) * $3 ORDER BY t",
                    )
                    .bind(r.since_ms)
                    .bind(r.until_ms)
                    .bind(r.bucket_ms.max(1))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(crate::Point {
                            start_ms: row.try_get("t")?,
                            requests: u(row.try_get("n")?),
                            errors: u(row.try_get::<Option<i64>, _>("errors")?.unwrap_or(0)),
                            cost_usd: row.try_get("cost")?,
                            tokens: u(row.try_get("tokens")?),
                            cache_hits: u(row.try_get::<Option<i64>, _>("hits")?.unwrap_or(0)),
                            latency_avg_ms: row.try_get::<Option<f64>, _>("latency")?.unwrap_or(0.0),
                        })
                    })
                    .collect::<Result<Vec<_>, crate::StoreError>>()?;

                    let guards = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT guard, action, COUNT(*) AS n FROM ({}) g GROUP BY guard, action ORDER BY n DESC, guard, action",
                        $guards
                    )))
                    .bind(r.since_ms)
                    .bind(r.until_ms)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(crate::GuardCount {
                            guard: row.try_get::<Option<String>, _>("guard")?.unwrap_or_default(),
                            action: row.try_get::<Option<String>, _>("action")?.unwrap_or_default(),
                            count: u(row.try_get("n")?),
                        })
                    })
                    .collect::<Result<Vec<_>, crate::StoreError>>()?;

                    Ok(crate::Overview {
                        totals,
                        series,
                        by_model: self.groups("model_requested", r).await?,
                        by_key: self.groups("key_id", r).await?,
                        by_router: self.groups("router", r).await?,
                        guards,
                    })
                })
            }
        }
    };
}
pub(crate) use dashboard_impl;

#[cfg(test)]
mod tests {
    use super::rank;

    #[test]
    fn nearest_rank() {
        assert_eq!(rank(1, 0.5), 0);
        assert_eq!(rank(100, 0.5), 49);
        assert_eq!(rank(100, 0.99), 98);
        assert_eq!(rank(3, 0.99), 2);
    }
}
