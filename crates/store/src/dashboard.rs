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

/// An hour, the rollups' grain.
pub const HOUR_MS: i64 = 3_600_000;
/// The histograms' buckets: bucket 0 is under 1 ms, bucket `b` covers `[1.1^(b-1), 1.1^b)` ms, the last one
/// everything longer (the migration's `CASE` has the same bounds).
const RATIO: f64 = 1.1;
const LAST_BUCKET: i64 = 200;

pub(crate) fn bucket(ms: f64) -> i64 {
    if ms.is_nan() || ms < 1.0 {
        return 0;
    }
    // ln gives the bucket up to rounding at a bound; the bounds decide, as the SQL `CASE` does.
    let mut b = ((ms.ln() / RATIO.ln()).floor() as i64 + 1).clamp(1, LAST_BUCKET);
    while b > 1 && ms < bound(b - 1) {
        b -= 1;
    }
    while b < LAST_BUCKET && ms >= bound(b) {
        b += 1;
    }
    b
}

/// The upper bound of bucket `b` as the migration writes it (six decimals).
fn bound(b: i64) -> f64 {
    (RATIO.powi(i32::try_from(b).unwrap_or(i32::MAX)) * 1e6).round() / 1e6
}

/// The value a bucket stands for: its geometric middle (within 5% of every value in it).
pub(crate) fn bucket_value(b: i64) -> f64 {
    if b <= 0 { 0.5 } else { RATIO.powf(b as f64 - 0.5) }
}

/// The nearest-rank quantile `q` of a histogram given as `(bucket, count)` sorted by bucket.
pub(crate) fn hist_quantile(hist: &[(i64, i64)], q: f64) -> Option<f64> {
    let n: i64 = hist.iter().map(|(_, c)| *c).sum();
    if n <= 0 {
        return None;
    }
    let r = rank(u64::try_from(n).unwrap_or(0), q);
    let mut seen = 0;
    for (b, c) in hist {
        seen += c;
        if seen > r {
            return Some(bucket_value(*b));
        }
    }
    hist.last().map(|(b, _)| bucket_value(*b))
}

/// One rollup row's sums.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sums {
    pub requests: i64,
    pub errors: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub cache_lookups: i64,
    pub cache_hits: i64,
    pub saved_usd: f64,
    pub fallbacks: i64,
    pub latency_sum_ms: f64,
}

/// The rollups of a batch of newly logged rows, added to the tables in the batch's transaction.
#[derive(Debug, Default)]
pub(crate) struct Rollup {
    /// By dimension (`all`, `model`, `key`, `router`), hour and value.
    pub main: std::collections::HashMap<(&'static str, i64, String), Sums>,
    pub hist: std::collections::HashMap<(i64, i64, i64), i64>,
    pub guards: std::collections::HashMap<(i64, String, String), i64>,
}

impl Rollup {
    pub(crate) fn add(&mut self, r: &crate::Record) {
        let hour = r.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let hit = r.cache.is_some_and(crate::CacheStatus::is_hit);
        let saved = if hit {
            r.metadata.get("cache_saved_usd").and_then(serde_json::Value::as_f64).unwrap_or(0.0)
        } else {
            0.0
        };
        let mut dims = vec![
            ("all", String::new()),
            ("model", r.model_requested.clone().unwrap_or_default()),
            ("key", r.key_id.clone().unwrap_or_default()),
        ];
        if let Some(routing) = &r.routing {
            dims.push(("router", routing.router.clone()));
        }
        for (dim, name) in dims {
            let s = self.main.entry((dim, hour, name)).or_default();
            s.requests += 1;
            s.errors += i64::from(r.outcome != crate::Outcome::Ok);
            s.tokens_in += crate::sql::to_i64(r.tokens_in).unwrap_or(0);
            s.tokens_out += crate::sql::to_i64(r.tokens_out).unwrap_or(0);
            s.cost_usd += r.cost_usd.unwrap_or(0.0);
            s.cache_lookups += i64::from(r.cache.is_some_and(|c| c != crate::CacheStatus::Bypass));
            s.cache_hits += i64::from(hit);
            s.saved_usd += saved;
            s.fallbacks += i64::from(r.attempts.len() > 1);
            s.latency_sum_ms += r.latency_ms;
        }
        *self.hist.entry((hour, 0, bucket(r.latency_ms))).or_default() += 1;
        if let Some(t) = r.ttft_ms {
            *self.hist.entry((hour, 1, bucket(t))).or_default() += 1;
        }
        for v in r.metadata.get("guard").and_then(serde_json::Value::as_array).into_iter().flatten() {
            let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
            *self.guards.entry((hour, text("guard"), text("action"))).or_default() += 1;
        }
    }
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

        impl $store {
            /// The overview from the hourly rollups: a range of whole hours reads one row per hour, alias, key
            /// and router (and the histograms' buckets) instead of every request.
            async fn overview_rollups(&self, r: crate::Range) -> Result<crate::Overview, crate::StoreError> {
                use crate::dashboard::u;
                use sqlx::Row;
                const SUMS: &str = "CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS n, \
                     CAST(COALESCE(SUM(errors), 0) AS BIGINT) AS errors, \
                     CAST(COALESCE(SUM(tokens_in + tokens_out), 0) AS BIGINT) AS tokens, \
                     COALESCE(SUM(cost_usd), 0.0) AS cost, \
                     CAST(COALESCE(SUM(cache_hits), 0) AS BIGINT) AS hits, \
                     COALESCE(SUM(latency_sum_ms), 0.0) AS latency_sum";
                let latency = |row: &<$db as sqlx::Database>::Row| -> Result<f64, crate::StoreError> {
                    let n: i64 = row.try_get("n")?;
                    let sum: f64 = row.try_get("latency_sum")?;
                    Ok(if n > 0 { sum / n as f64 } else { 0.0 })
                };
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SUMS}, CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tin, \
                     CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tout, \
                     CAST(COALESCE(SUM(cache_lookups), 0) AS BIGINT) AS lookups, \
                     COALESCE(SUM(saved_usd), 0.0) AS saved, CAST(COALESCE(SUM(fallbacks), 0) AS BIGINT) AS fallbacks \
                     FROM request_rollups WHERE dim = 'all' AND hour_ms >= $1 AND hour_ms < $2"
                )))
                .bind(r.since_ms)
                .bind(r.until_ms)
                .fetch_one(&self.pool)
                .await?;
                let mut totals = crate::Totals {
                    requests: u(row.try_get("n")?),
                    errors: u(row.try_get("errors")?),
                    tokens_in: u(row.try_get("tin")?),
                    tokens_out: u(row.try_get("tout")?),
                    cost_usd: row.try_get("cost")?,
                    cache_lookups: u(row.try_get("lookups")?),
                    cache_hits: u(row.try_get("hits")?),
                    saved_usd: row.try_get("saved")?,
                    fallbacks: u(row.try_get("fallbacks")?),
                    ..crate::Totals::default()
                };
                let hist = sqlx::query(
                    "SELECT kind, bucket, CAST(SUM(n) AS BIGINT) AS n FROM latency_rollups \
                     WHERE hour_ms >= $1 AND hour_ms < $2 GROUP BY kind, bucket ORDER BY kind, bucket",
                )
                .bind(r.since_ms)
                .bind(r.until_ms)
                .fetch_all(&self.pool)
                .await?;
                let mut by_kind: [Vec<(i64, i64)>; 2] = [Vec::new(), Vec::new()];
                for row in &hist {
                    let kind: i64 = row.try_get("kind")?;
                    if let Some(h) = usize::try_from(kind).ok().and_then(|k| by_kind.get_mut(k)) {
                        h.push((row.try_get("bucket")?, row.try_get("n")?));
                    }
                }
                totals.latency_p50_ms = crate::dashboard::hist_quantile(&by_kind[0], 0.5);
                totals.latency_p99_ms = crate::dashboard::hist_quantile(&by_kind[0], 0.99);
                totals.ttft_p50_ms = crate::dashboard::hist_quantile(&by_kind[1], 0.5);
                totals.ttft_p99_ms = crate::dashboard::hist_quantile(&by_kind[1], 0.99);

                let series = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT (hour_ms / $3) * $3 AS t, {SUMS} FROM request_rollups \
                     WHERE dim = 'all' AND hour_ms >= $1 AND hour_ms < $2 GROUP BY (hour_ms / $3) * $3 ORDER BY t"
                )))
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
                        errors: u(row.try_get("errors")?),
                        cost_usd: row.try_get("cost")?,
                        tokens: u(row.try_get("tokens")?),
                        cache_hits: u(row.try_get("hits")?),
                        latency_avg_ms: latency(row)?,
                    })
                })
                .collect::<Result<Vec<_>, crate::StoreError>>()?;
                let mut groups = Vec::new();
                for dim in ["model", "key", "router"] {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT name, {SUMS} FROM request_rollups WHERE dim = $4 AND hour_ms >= $1 AND hour_ms < $2 \
                         GROUP BY name ORDER BY n DESC, name LIMIT $3"
                    )))
                    .bind(r.since_ms)
                    .bind(r.until_ms)
                    .bind(crate::dashboard::GROUPS_MAX)
                    .bind(dim)
                    .fetch_all(&self.pool)
                    .await?;
                    groups.push(
                        rows.iter()
                            .map(|row| {
                                Ok(crate::Group {
                                    name: row.try_get("name")?,
                                    requests: u(row.try_get("n")?),
                                    errors: u(row.try_get("errors")?),
                                    cost_usd: row.try_get("cost")?,
                                    tokens: u(row.try_get("tokens")?),
                                    latency_avg_ms: latency(row)?,
                                })
                            })
                            .collect::<Result<Vec<_>, crate::StoreError>>()?,
                    );
                }
                let guards = sqlx::query(
                    "SELECT guard, action, CAST(SUM(n) AS BIGINT) AS n FROM guard_rollups \
                     WHERE hour_ms >= $1 AND hour_ms < $2 GROUP BY guard, action ORDER BY n DESC, guard, action",
                )
                .bind(r.since_ms)
                .bind(r.until_ms)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(crate::GuardCount { guard: row.try_get("guard")?, action: row.try_get("action")?, count: u(row.try_get("n")?) })
                })
                .collect::<Result<Vec<_>, crate::StoreError>>()?;
                let mut groups = groups.into_iter();
                Ok(crate::Overview {
                    totals,
                    series,
                    by_model: groups.next().unwrap_or_default(),
                    by_key: groups.next().unwrap_or_default(),
                    by_router: groups.next().unwrap_or_default(),
                    guards,
                })
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
                    // Whole hours come from the rollups; a range finer than an hour scans its rows.
                    if r.bucket_ms >= crate::dashboard::HOUR_MS && r.since_ms.rem_euclid(crate::dashboard::HOUR_MS) == 0 {
                        return self.overview_rollups(r).await;
                    }
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
    #![allow(clippy::unwrap_used)]
    use super::rank;

    #[test]
    fn buckets_match_the_migrations_bounds_and_quantiles_stay_within_five_percent() {
        use super::{bucket, bucket_value, hist_quantile};
        assert_eq!((bucket(0.0), bucket(0.99), bucket(1.0), bucket(1.09), bucket(1.1)), (0, 0, 1, 1, 2));
        assert_eq!(bucket(1e12), 200);
        for ms in [3.0, 25.0, 99.9, 1234.5, 65_000.0] {
            let v = bucket_value(bucket(ms));
            assert!((v / ms - 1.0).abs() < 0.05 + 1e-9, "{ms} -> {v}");
        }
        let hist: Vec<(i64, i64)> = vec![(bucket(10.0), 50), (bucket(100.0), 49), (bucket(1000.0), 1)];
        assert!((hist_quantile(&hist, 0.5).unwrap() / 10.0 - 1.0).abs() < 0.05);
        assert!((hist_quantile(&hist, 0.99).unwrap() / 100.0 - 1.0).abs() < 0.05);
        assert_eq!(hist_quantile(&[], 0.5), None);
    }

    #[test]
    fn nearest_rank() {
        assert_eq!(rank(1, 0.5), 0);
        assert_eq!(rank(100, 0.5), 49);
        assert_eq!(rank(100, 0.99), 98);
        assert_eq!(rank(3, 0.99), 2);
    }
}
