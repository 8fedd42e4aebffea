//! Operator endpoints: the request log read back (`GET /admin/requests`) and the Prometheus metrics.

use axum::extract::{Query as QueryParams, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_pipeline::InboundApi;
use keel_store::Query;
use serde::Deserialize;

use crate::{ApiError, AppState};

/// Query parameters of `GET /admin/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsParams {
    id: Option<String>,
    key: Option<String>,
    model: Option<String>,
    status: Option<u16>,
    outcome: Option<String>,
    /// Milliseconds since the Unix epoch.
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    limit: Option<u32>,
}

/// `GET /admin/requests?key=&model=&status=&outcome=&since_ms=&until_ms=&limit=`: log rows, newest first.
pub(crate) async fn requests(
    State(app): State<AppState>,
    params: Result<QueryParams<RequestsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(QueryParams(p)) => p,
        Err(e) => {
            return ApiError::invalid(format!("invalid query: {}", e.body_text()), None)
                .into_response_for(InboundApi::OpenAi);
        }
    };
    let Some(store) = &app.inner.store else {
        return ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid("the request log is disabled ([log] enabled = false)", None)
        }
        .into_response_for(InboundApi::OpenAi);
    };
    let outcome = match params.outcome.as_deref().map(|o| keel_store::Outcome::parse(o).ok_or(o)) {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(o)) => {
            let known: Vec<&str> = keel_store::Outcome::ALL.iter().map(|o| o.as_str()).collect();
            return ApiError::invalid(
                format!("outcome: unknown outcome {o:?} (known: {})", known.join(", ")),
                Some("outcome".into()),
            )
            .into_response_for(InboundApi::OpenAi);
        }
    };
    let query = Query {
        id: params.id,
        key_id: params.key,
        model: params.model,
        status: params.status,
        outcome,
        since_ms: params.since_ms,
        until_ms: params.until_ms,
        limit: params.limit,
    };
    match store.query(&query).await {
        Ok(rows) => axum::Json(serde_json::json!({ "object": "list", "data": rows })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading the request log failed");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                ..ApiError::invalid(format!("reading the request log failed: {e}"), None)
            }
            .into_response_for(InboundApi::OpenAi)
        }
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    match app.inner.log.metrics().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
