//! Evaluation runs and their case results (issue 15), in the same database as the request log: a run is
//! written case by case as it goes, so an interrupted run keeps what it finished and can be resumed.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One run of a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRun {
    pub id: String,
    pub suite: String,
    /// The hash of the suite file and its dataset: a run is resumable only with the same.
    pub suite_hash: String,
    pub started_ms: i64,
    /// None: interrupted (or still running).
    pub finished_ms: Option<i64>,
    /// Cases the run plans.
    pub cases: u64,
    /// What ran: model or template and version, keel's version, the suite's settings.
    pub meta: serde_json::Value,
    /// The summary written when the run finished.
    pub summary: Option<serde_json::Value>,
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub run_id: String,
    pub case_id: String,
    /// The case's position in the dataset.
    pub seq: u64,
    pub passed: bool,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    /// Inputs, output, every check's verdict, the error if any, tokens, keel's request id.
    pub detail: serde_json::Value,
}

pub trait EvalStore: Send + Sync + 'static {
    fn create_run<'a>(&'a self, run: &'a EvalRun) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Marks a run finished with its summary.
    fn finish_run<'a>(
        &'a self,
        id: &'a str,
        finished_ms: i64,
        summary: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records (or replaces) one case's result.
    fn put_result<'a>(&'a self, result: &'a EvalResult) -> BoxFuture<'a, Result<(), StoreError>>;

    fn run<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<EvalRun>, StoreError>>;

    /// Runs, newest first; of one suite when named.
    fn runs<'a>(&'a self, suite: Option<&'a str>, limit: u32) -> BoxFuture<'a, Result<Vec<EvalRun>, StoreError>>;

    /// A run's results in dataset order.
    fn results<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Vec<EvalResult>, StoreError>>;
}

pub(crate) fn json(text: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
}

/// The eval SQL, one text for both backends (as `sql.rs`).
macro_rules! eval_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn eval_run_row(row: &<$db as sqlx::Database>::Row) -> Result<crate::EvalRun, crate::StoreError> {
                use sqlx::Row;
                let meta: String = row.try_get("meta")?;
                let summary: Option<String> = row.try_get("summary")?;
                Ok(crate::EvalRun {
                    id: row.try_get("id")?,
                    suite: row.try_get("suite")?,
                    suite_hash: row.try_get("suite_hash")?,
                    started_ms: row.try_get("started_ms")?,
                    finished_ms: row.try_get("finished_ms")?,
                    cases: u64::try_from(row.try_get::<i64, _>("cases")?).unwrap_or(0),
                    meta: crate::eval::json(&meta, "eval run meta")?,
                    summary: summary.map(|s| crate::eval::json(&s, "eval run summary")).transpose()?,
                })
            }
        }

        impl crate::EvalStore for $store {
            fn create_run<'a>(
                &'a self,
                r: &'a crate::EvalRun,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO eval_runs (id, suite, suite_hash, started_ms, finished_ms, cases, meta, summary) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(r.id.clone())
                    .bind(r.suite.clone())
                    .bind(r.suite_hash.clone())
                    .bind(r.started_ms)
                    .bind(r.finished_ms)
                    .bind(i64::try_from(r.cases).unwrap_or(i64::MAX))
                    .bind(r.meta.to_string())
                    .bind(r.summary.as_ref().map(ToString::to_string))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                })
            }

            fn finish_run<'a>(
                &'a self,
                id: &'a str,
                finished_ms: i64,
                summary: &'a serde_json::Value,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query("UPDATE eval_runs SET finished_ms = $1, summary = $2 WHERE id = $3")
                        .bind(finished_ms)
                        .bind(summary.to_string())
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                })
            }

            fn put_result<'a>(
                &'a self,
                r: &'a crate::EvalResult,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO eval_results (run_id, case_id, seq, passed, latency_ms, cost_usd, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (run_id, case_id) DO UPDATE SET seq = excluded.seq, passed = excluded.passed, \
                         latency_ms = excluded.latency_ms, cost_usd = excluded.cost_usd, detail = excluded.detail",
                    )
                    .bind(r.run_id.clone())
                    .bind(r.case_id.clone())
                    .bind(i64::try_from(r.seq).unwrap_or(i64::MAX))
                    .bind(i64::from(r.passed))
                    .bind(r.latency_ms)
                    .bind(r.cost_usd)
                    .bind(r.detail.to_string())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                })
            }

            fn run<'a>(
                &'a self,
                id: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<Option<crate::EvalRun>, crate::StoreError>> {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT id, suite, suite_hash, started_ms, finished_ms, cases, meta, summary \
                         FROM eval_runs WHERE id = $1",
                    )
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                    row.as_ref().map(Self::eval_run_row).transpose()
                })
            }

            fn runs<'a>(
                &'a self,
                suite: Option<&'a str>,
                limit: u32,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::EvalRun>, crate::StoreError>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, suite, suite_hash, started_ms, finished_ms, cases, meta, summary FROM eval_runs",
                    );
                    if let Some(s) = suite {
                        qb.push(" WHERE suite = ").push_bind(s.to_string());
                    }
                    qb.push(" ORDER BY started_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit.clamp(1, 10_000)));
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    rows.iter().map(Self::eval_run_row).collect()
                })
            }

            fn results<'a>(
                &'a self,
                run_id: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::EvalResult>, crate::StoreError>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let rows = sqlx::query(
                        "SELECT run_id, case_id, seq, passed, latency_ms, cost_usd, detail FROM eval_results \
                         WHERE run_id = $1 ORDER BY seq",
                    )
                    .bind(run_id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let detail: String = row.try_get("detail")?;
                            Ok(crate::EvalResult {
                                run_id: row.try_get("run_id")?,
                                case_id: row.try_get("case_id")?,
                                seq: u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0),
                                passed: row.try_get::<i64, _>("passed")? != 0,
                                latency_ms: row.try_get("latency_ms")?,
                                cost_usd: row.try_get("cost_usd")?,
                                detail: crate::eval::json(&detail, "eval result detail")?,
                            })
                        })
                        .collect()
                })
            }
        }
    };
}

pub(crate) use eval_impl;
