//! Production quality (issue 15): `POST /v1/feedback` (a user's verdict on one logged answer, stored with the
//! request log), `GET /admin/feedback?request_id=` (a request's feedback, from users and online evaluators) and
//! `GET /admin/quality` (quality over time per route and template version, computed by the database).

use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_pipeline::{InboundApi, Principal};
use keel_store::{Feedback, FeedbackSource, FeedbackStore, QualityQuery};
use serde::Deserialize;

use crate::{ApiError, AppState};

/// The most bytes of a comment, and of a correction (a whole corrected answer).
const MAX_COMMENT: usize = 8 << 10;
const MAX_CORRECTION: usize = 256 << 10;

/// The body of `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// keel's id of the request (the `x-request-id` keel answered with) or the client's own `x-request-id`.
    request_id: String,
    /// A score in [0, 1] …
    score: Option<f64>,
    /// … or thumbs: "up" (1) or "down" (0).
    thumbs: Option<Thumbs>,
    /// What is rated (default "user"): feedback with the same name replaces the earlier.
    name: Option<String>,
    comment: Option<String>,
    /// The answer it should have been (exported for fine-tuning).
    correction: Option<String>,
    /// The client's own fields, kept with the feedback.
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Thumbs {
    Up,
    Down,
}

impl FeedbackBody {
    /// The score it gives, or why it is invalid.
    fn validate(&self) -> Result<f64, ApiError> {
        let bad = |msg: String, param: &str| Err(ApiError::invalid(msg, Some(param.into())));
        if self.request_id.trim().is_empty() || self.request_id.len() > 128 {
            return bad("request_id: expected keel's or the client's request id (1 to 128 bytes)".into(), "request_id");
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
        {
            return bad(format!("name: {name:?} is not 1 to 64 of [A-Za-z0-9_.-]"), "name");
        }
        if self.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
            return bad(format!("comment: longer than {MAX_COMMENT} bytes"), "comment");
        }
        if self.correction.as_ref().is_some_and(|c| c.len() > MAX_CORRECTION) {
            return bad(format!("correction: longer than {MAX_CORRECTION} bytes"), "correction");
        }
        match (self.score, self.thumbs) {
            (Some(_), Some(_)) => bad("give either score or thumbs, not both".into(), "score"),
            (Some(s), None) if s.is_finite() && (0.0..=1.0).contains(&s) => Ok(s),
            (Some(s), None) => bad(format!("score: {s} is not in [0, 1]"), "score"),
            (None, Some(Thumbs::Up)) => Ok(1.0),
            (None, Some(Thumbs::Down)) => Ok(0.0),
            // A correction alone says the answer was wrong.
            (None, None) if self.correction.is_some() => Ok(0.0),
            (None, None) => bad("give a score in [0, 1], thumbs (\"up\" or \"down\") or a correction".into(), "score"),
        }
    }
}

fn feedback_store(app: &AppState) -> Result<Arc<dyn FeedbackStore>, ApiError> {
    app.inner.feedback.clone().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid("feedback needs keel's store ([log] enabled = true)", None)
    })
}

fn store_failed(e: keel_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "the feedback store failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", format!("keel's store: {e}"))
        .code("store_unavailable")
}

/// The logged request an id names, visible to `principal`: one its key made (any, for the admin or without
/// `[auth]`). Rows just queued are found before the log writer has stored them.
async fn logged(app: &AppState, id: &str, principal: Option<&Principal>) -> Result<String, ApiError> {
    let key = match principal {
        Some(Principal::Key(k)) => Some(k.id.clone()),
        Some(Principal::Admin) | None => None,
    };
    if let Some(found) = app.inner.log.recent(id)
        && (key.is_none() || found.key_id == key)
    {
        return Ok(found.id);
    }
    let store = app.inner.store.as_ref().ok_or_else(|| ApiError::invalid("the request log is disabled", None))?;
    let query = keel_store::Query { id: Some(id.to_string()), key_id: key, limit: Some(1), ..Default::default() };
    match store.query(&query).await.map_err(store_failed)?.into_iter().next() {
        Some(row) => Ok(row.id),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid(format!("no logged request with id {id:?}"), Some("request_id".into()))
        }
        .code("request_not_found")),
    }
}

/// `POST /v1/feedback`: stores a user's verdict on a logged request; 201 with the stored feedback.
pub(crate) async fn create(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    body: crate::body::RawBody,
) -> Response {
    let result = async {
        let store = feedback_store(&app)?;
        let b: FeedbackBody = body.parse()?;
        let score = b.validate()?;
        let principal = principal.map(|p| p.0);
        let request_id = logged(&app, &b.request_id, principal.as_ref()).await?;
        let feedback = Feedback {
            id: uuid::Uuid::now_v7().to_string(),
            request_id,
            ts_ms: keel_store::now_ms(),
            key_id: match &principal {
                Some(Principal::Key(k)) => Some(k.id.clone()),
                _ => None,
            },
            source: FeedbackSource::User,
            name: b.name.unwrap_or_else(|| "user".into()),
            score,
            comment: b.comment,
            correction: b.correction,
            meta: serde_json::Value::Object(b.metadata.unwrap_or_default()),
        };
        store.put_feedback(&feedback).await.map_err(store_failed)?;
        app.inner.log.metrics().feedback(feedback.positive());
        let mut v = serde_json::to_value(&feedback).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("object".into(), "feedback".into());
        }
        Ok::<_, ApiError>((StatusCode::CREATED, axum::Json(v)).into_response())
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackParams {
    request_id: String,
}

/// `GET /admin/feedback?request_id=`: every piece of feedback on one request.
pub(crate) async fn list(
    State(app): State<AppState>,
    params: Result<QueryParams<FeedbackParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let QueryParams(p) =
            params.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text()), None))?;
        let store = feedback_store(&app)?;
        let id = logged(&app, &p.request_id, Some(&Principal::Admin)).await?;
        let list = store.feedback(&id).await.map_err(store_failed)?;
        Ok::<_, ApiError>(
            axum::Json(serde_json::json!({ "object": "list", "request_id": id, "data": list })).into_response(),
        )
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// Query parameters of `GET /admin/quality`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QualityParams {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// The model alias clients asked for.
    route: Option<String>,
    template: Option<String>,
    /// "hour", "day" (default) or "week".
    bucket: Option<String>,
}

/// `GET /admin/quality?since_ms=&until_ms=&route=&template=&bucket=`: per bucket, route and template version:
/// requests, errors, schema failures, guard verdicts, feedback rate, positive rate, mean user score, online
/// evaluation scores. Without `since_ms`, the last 30 days.
pub(crate) async fn quality(
    State(app): State<AppState>,
    params: Result<QueryParams<QualityParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let QueryParams(p) =
            params.map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text()), None))?;
        let bucket_ms = bucket_ms(p.bucket.as_deref()).ok_or_else(|| {
            ApiError::invalid("bucket: expected \"hour\", \"day\" or \"week\"", Some("bucket".into()))
        })?;
        let store = feedback_store(&app)?;
        let q = QualityQuery {
            since_ms: Some(p.since_ms.unwrap_or_else(|| keel_store::now_ms() - 30 * QualityQuery::DAY_MS)),
            until_ms: p.until_ms,
            route: p.route,
            template: p.template,
            bucket_ms: Some(bucket_ms),
        };
        let rows = store.quality(&q).await.map_err(store_failed)?;
        let data: Vec<serde_json::Value> = rows.iter().map(keel_store::QualityRow::to_json).collect();
        Ok::<_, ApiError>(
            axum::Json(serde_json::json!({ "object": "list", "bucket_ms": bucket_ms, "data": data })).into_response(),
        )
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// The width of a named bucket.
pub fn bucket_ms(name: Option<&str>) -> Option<i64> {
    match name.unwrap_or("day") {
        "hour" => Some(3_600_000),
        "day" => Some(QualityQuery::DAY_MS),
        "week" => Some(7 * QualityQuery::DAY_MS),
        _ => None,
    }
}
