//! Production quality (issue 15): feedback on logged requests, from their users and from keel's online
//! evaluators, in the same database as the log; quality over time computed by the database from both; and the
//! approved request/answer pairs read back for a fine-tuning dataset.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{Record, StoreError};

/// Who gave a piece of feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackSource {
    /// The application's user, through `POST /v1/feedback`.
    User,
    /// A deterministic check of keel's online evaluation (schema, regex, …).
    Check,
    /// A judge model of keel's online evaluation.
    Judge,
}

impl FeedbackSource {
    pub const ALL: [FeedbackSource; 3] = [FeedbackSource::User, FeedbackSource::Check, FeedbackSource::Judge];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackSource::User => "user",
            FeedbackSource::Check => "check",
            FeedbackSource::Judge => "judge",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One piece of feedback on one logged request. There is one per request, source and name: given again, it
/// replaces the earlier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: String,
    /// keel's id of the request (the log row's).
    pub request_id: String,
    pub ts_ms: i64,
    /// The key that gave it (user feedback under `[auth]`).
    pub key_id: Option<String>,
    pub source: FeedbackSource,
    /// What was rated ("user" by default, an evaluator's name, or a name the client chose such as
    /// "helpfulness").
    pub name: String,
    /// In [0, 1]; 0.5 or more is positive (thumbs up is 1, thumbs down 0).
    pub score: f64,
    pub comment: Option<String>,
    /// The answer the user says it should have been.
    pub correction: Option<String>,
    /// Anything else (the judge's reasoning, the check's detail, the client's metadata).
    pub meta: serde_json::Value,
}

impl Feedback {
    pub fn positive(&self) -> bool {
        self.score >= 0.5
    }
}

/// Which requests a quality report or an export covers. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// The route (the model alias the client asked for).
    pub route: Option<String>,
    pub template: Option<String>,
    /// The width of a time bucket (default one day).
    pub bucket_ms: Option<i64>,
}

impl QualityQuery {
    pub const DAY_MS: i64 = 86_400_000;

    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms.unwrap_or(Self::DAY_MS).max(1)
    }
}

/// Quality of one time bucket, route and template version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityRow {
    /// The bucket's start, in milliseconds since the Unix epoch.
    pub bucket_ms: i64,
    pub route: Option<String>,
    pub template: Option<String>,
    pub template_version: Option<String>,
    pub requests: u64,
    /// Requests that did not end with a complete answer.
    pub errors: u64,
    /// Answers refused because they did not match the route's or request's JSON schema.
    pub schema_failures: u64,
    /// Requests with at least one guard verdict (flagged, redacted or blocked).
    pub guarded: u64,
    /// Requests with user feedback, the positive ones, and the mean user score.
    pub feedback: u64,
    pub positive: u64,
    pub mean_score: Option<f64>,
    /// Requests scored by an online evaluator (check or judge), and the mean of those scores.
    pub evaluated: u64,
    pub eval_mean: Option<f64>,
}

impl QualityRow {
    /// Requests with user feedback per request.
    pub fn feedback_rate(&self) -> f64 {
        ratio(self.feedback, self.requests)
    }

    /// Positive user feedback per feedback.
    pub fn positive_rate(&self) -> Option<f64> {
        (self.feedback > 0).then(|| ratio(self.positive, self.feedback))
    }

    /// The row as the API and `keel quality --json` give it: its fields and the two rates.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("feedback_rate".into(), self.feedback_rate().into());
            m.insert("positive_rate".into(), self.positive_rate().into());
        }
        v
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// What an export of approved pairs takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportQuery {
    pub scope: QualityQuery,
    /// A request is approved when a correction was given, or when feedback of these sources has a mean score
    /// of at least `min_score` and none of them is negative.
    pub sources: Vec<FeedbackSource>,
    pub min_score: f64,
    pub limit: u32,
}

/// A logged request with all its feedback.
pub type Approved = (Record, Vec<Feedback>);

pub trait FeedbackStore: Send + Sync + 'static {
    /// Stores feedback, replacing the request's earlier feedback of the same source and name.
    fn put_feedback<'a>(&'a self, f: &'a Feedback) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A request's feedback, oldest first.
    fn feedback<'a>(&'a self, request_id: &'a str) -> BoxFuture<'a, Result<Vec<Feedback>, StoreError>>;

    /// Quality per time bucket, route and template version, computed by the database, oldest bucket first.
    fn quality<'a>(&'a self, q: &'a QualityQuery) -> BoxFuture<'a, Result<Vec<QualityRow>, StoreError>>;

    /// Requests answered in full that have a correction or qualifying feedback (see [`ExportQuery`]), oldest
    /// first, each with all its feedback.
    fn approved<'a>(&'a self, q: &'a ExportQuery) -> BoxFuture<'a, Result<Vec<Approved>, StoreError>>;
}

/// The feedback and quality SQL, one text for both backends (as `sql.rs`). Integer sums are cast to BIGINT
/// (PostgreSQL sums BIGINTs into NUMERIC) and float sums to DOUBLE PRECISION (SQLite sums integers as integers).
macro_rules! feedback_impl {
    ($store:ty, $db:ty) => {
        impl $store {
            fn feedback_row(row: &<$db as sqlx::Database>::Row) -> Result<crate::Feedback, crate::StoreError> {
                use sqlx::Row;
                let source: String = row.try_get("source")?;
                let meta: String = row.try_get("meta")?;
                Ok(crate::Feedback {
                    id: row.try_get("id")?,
                    request_id: row.try_get("request_id")?,
                    ts_ms: row.try_get("ts_ms")?,
                    key_id: row.try_get("key_id")?,
                    source: crate::FeedbackSource::parse(&source)
                        .ok_or_else(|| crate::StoreError::Invalid(format!("unknown feedback source {source:?}")))?,
                    name: row.try_get("name")?,
                    score: row.try_get("score")?,
                    comment: row.try_get("comment")?,
                    correction: row.try_get("correction")?,
                    meta: crate::eval::json(&meta, "feedback meta")?,
                })
            }

            /// ` AND …` for a quality scope over `requests r`.
            fn push_scope(qb: &mut sqlx::QueryBuilder<$db>, q: &crate::QualityQuery) {
                if let Some(v) = q.since_ms {
                    qb.push(" AND r.ts_ms >= ").push_bind(v);
                }
                if let Some(v) = q.until_ms {
                    qb.push(" AND r.ts_ms < ").push_bind(v);
                }
                if let Some(v) = &q.route {
                    qb.push(" AND r.model_requested = ").push_bind(v.clone());
                }
                if let Some(v) = &q.template {
                    qb.push(" AND r.template = ").push_bind(v.clone());
                }
            }
        }

        impl crate::FeedbackStore for $store {
            fn put_feedback<'a>(
                &'a self,
                f: &'a crate::Feedback,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO feedback (id, request_id, ts_ms, key_id, source, name, score, comment, \
                         correction, meta) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (request_id, source, name) DO UPDATE SET id = excluded.id, \
                         ts_ms = excluded.ts_ms, key_id = excluded.key_id, score = excluded.score, \
                         comment = excluded.comment, correction = excluded.correction, meta = excluded.meta",
                    )
                    .bind(f.id.clone())
                    .bind(f.request_id.clone())
                    .bind(f.ts_ms)
                    .bind(f.key_id.clone())
                    .bind(f.source.as_str())
                    .bind(f.name.clone())
                    .bind(f.score)
                    .bind(f.comment.clone())
                    .bind(f.correction.clone())
                    .bind(f.meta.to_string())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                })
            }

            fn feedback<'a>(
                &'a self,
                request_id: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::Feedback>, crate::StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT id, request_id, ts_ms, key_id, source, name, score, comment, correction, meta \
                         FROM feedback WHERE request_id = $1 ORDER BY ts_ms, id",
                    )
                    .bind(request_id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(Self::feedback_row).collect()
                })
            }

            fn quality<'a>(
                &'a self,
                q: &'a crate::QualityQuery,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::QualityRow>, crate::StoreError>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let bucket = q.bucket_ms();
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT (r.ts_ms / ");
                    qb.push_bind(bucket).push(") * ").push_bind(bucket).push(
                        " AS bucket, r.model_requested AS route, r.template AS template, \
                         r.template_version AS template_version, \
                         CAST(COUNT(*) AS BIGINT) AS requests, \
                         CAST(COALESCE(SUM(CASE WHEN r.outcome <> 'ok' THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
                         CAST(COALESCE(SUM(CASE WHEN r.error_class = 'invalid_output' THEN 1 ELSE 0 END), 0) \
                           AS BIGINT) AS schema_failures, \
                         CAST(COALESCE(SUM(CASE WHEN r.metadata LIKE '%\"guard\":%' THEN 1 ELSE 0 END), 0) \
                           AS BIGINT) AS guarded, \
                         CAST(COALESCE(SUM(CASE WHEN f.user_n > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS feedback, \
                         CAST(COALESCE(SUM(CASE WHEN f.user_n > 0 AND f.user_sum / f.user_n >= 0.5 THEN 1 ELSE 0 END), \
                           0) AS BIGINT) AS positive, \
                         CAST(SUM(CASE WHEN f.user_n > 0 THEN f.user_sum / f.user_n END) AS DOUBLE PRECISION) \
                           AS score_sum, \
                         CAST(COALESCE(SUM(CASE WHEN f.eval_n > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS evaluated, \
                         CAST(SUM(CASE WHEN f.eval_n > 0 THEN f.eval_sum / f.eval_n END) AS DOUBLE PRECISION) \
                           AS eval_sum \
                         FROM requests r LEFT JOIN ( \
                           SELECT request_id, \
                             CAST(SUM(CASE WHEN source = 'user' THEN 1 ELSE 0 END) AS DOUBLE PRECISION) AS user_n, \
                             CAST(SUM(CASE WHEN source = 'user' THEN score ELSE 0.0 END) AS DOUBLE PRECISION) \
                               AS user_sum, \
                             CAST(SUM(CASE WHEN source <> 'user' THEN 1 ELSE 0 END) AS DOUBLE PRECISION) AS eval_n, \
                             CAST(SUM(CASE WHEN source <> 'user' THEN score ELSE 0.0 END) AS DOUBLE PRECISION) \
                               AS eval_sum \
                           FROM feedback GROUP BY request_id \
                         ) f ON f.request_id = r.id WHERE 1 = 1",
                    );
                    Self::push_scope(&mut qb, q);
                    qb.push(
                        " GROUP BY 1, r.model_requested, r.template, r.template_version \
                         ORDER BY 1, r.model_requested, r.template, r.template_version LIMIT 100000",
                    );
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    rows.iter()
                        .map(|row| {
                            let n = |c: &str| -> Result<u64, crate::StoreError> {
                                Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0))
                            };
                            let (feedback, evaluated) = (n("feedback")?, n("evaluated")?);
                            let mean = |sum: Option<f64>, count: u64| sum.filter(|_| count > 0).map(|s| s / count as f64);
                            Ok(crate::QualityRow {
                                bucket_ms: row.try_get("bucket")?,
                                route: row.try_get("route")?,
                                template: row.try_get("template")?,
                                template_version: row.try_get("template_version")?,
                                requests: n("requests")?,
                                errors: n("errors")?,
                                schema_failures: n("schema_failures")?,
                                guarded: n("guarded")?,
                                feedback,
                                positive: n("positive")?,
                                mean_score: mean(row.try_get("score_sum")?, feedback),
                                evaluated,
                                eval_mean: mean(row.try_get("eval_sum")?, evaluated),
                            })
                        })
                        .collect()
                })
            }

            fn approved<'a>(
                &'a self,
                q: &'a crate::ExportQuery,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::feedback::Approved>, crate::StoreError>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM requests r WHERE r.outcome = 'ok' AND r.request_body IS NOT NULL",
                        crate::sql::COLUMNS_OF_R
                    ));
                    Self::push_scope(&mut qb, &q.scope);
                    qb.push(" AND (r.id IN (SELECT request_id FROM feedback WHERE correction IS NOT NULL)");
                    if !q.sources.is_empty() {
                        qb.push(" OR r.id IN (SELECT request_id FROM feedback WHERE source IN (");
                        let mut list = qb.separated(", ");
                        for s in &q.sources {
                            list.push_bind(s.as_str());
                        }
                        qb.push(") GROUP BY request_id HAVING AVG(score) >= ")
                            .push_bind(q.min_score)
                            .push(" AND MIN(score) >= 0.5)");
                    }
                    qb.push(") ORDER BY r.ts_ms, r.id LIMIT ").push_bind(i64::from(q.limit.clamp(1, 1_000_000)));
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    let records = rows.iter().map(Self::record_row).collect::<Result<Vec<_>, _>>()?;
                    let mut out = Vec::with_capacity(records.len());
                    for chunk in records.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT id, request_id, ts_ms, key_id, source, name, score, comment, correction, meta \
                             FROM feedback WHERE request_id IN (",
                        );
                        let mut list = qb.separated(", ");
                        for r in chunk {
                            list.push_bind(r.id.clone());
                        }
                        qb.push(") ORDER BY ts_ms, id");
                        let fb = qb.build().fetch_all(&self.pool).await?;
                        let mut by_request: std::collections::HashMap<String, Vec<crate::Feedback>> =
                            std::collections::HashMap::new();
                        for row in &fb {
                            let f = Self::feedback_row(row)?;
                            by_request.entry(f.request_id.clone()).or_default().push(f);
                        }
                        for r in chunk {
                            let f = by_request.remove(&r.id).unwrap_or_default();
                            out.push((r.clone(), f));
                        }
                    }
                    Ok(out)
                })
            }
        }
    };
}

pub(crate) use feedback_impl;
