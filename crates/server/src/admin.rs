//! Operator endpoints: the request log read back (`GET /admin/requests`), the Prometheus metrics, and the
//! virtual keys (`/admin/keys`: create, list, revoke).

use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_limits::{Keys, NewKey};
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
    /// Only requests that used this prompt template.
    template: Option<String>,
    /// Only requests that named this router.
    router: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/requests?key=&model=&status=&outcome=&since_ms=&until_ms=&template=&router=&limit=`: log rows, newest first.
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
        template: params.template,
        router: params.router,
        limit: params.limit,
        ..Query::default()
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

// ------------------------------------------------------------------------------------------- virtual keys

fn keys_of(app: &AppState) -> Result<Arc<Keys>, ApiError> {
    app.inner.auth.as_ref().map(|a| a.keys.clone()).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid("virtual keys need keel's store ([log] enabled)", None)
    })
}

/// `POST /admin/keys`: creates a key; the answer holds its secret, shown this once.
pub(crate) async fn create_key(State(app): State<AppState>, body: crate::body::RawBody) -> Response {
    let result = async {
        let keys = keys_of(&app)?;
        let new: NewKey = body.parse()?;
        new.validate().map_err(|e| ApiError::invalid(e.to_string(), Some(e.field.into())))?;
        let (key, secret) = keys.create(new).await.map_err(unavailable)?;
        let mut v = serde_json::to_value(&key).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("key".into(), secret.into());
        }
        Ok::<_, ApiError>((StatusCode::CREATED, axum::Json(v)).into_response())
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// `GET /admin/keys`: every key, without secrets or hashes.
pub(crate) async fn list_keys(State(app): State<AppState>) -> Response {
    let result = async {
        let keys = keys_of(&app)?;
        let list = keys.store().list_keys().await.map_err(|e| unavailable(e.into()))?;
        Ok::<_, ApiError>(axum::Json(serde_json::json!({ "object": "list", "data": list })).into_response())
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

/// `DELETE /admin/keys/{id}`: revokes a key; refused from the next request on.
pub(crate) async fn revoke_key(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let result = async {
        let keys = keys_of(&app)?;
        if keys.revoke(&id).await.map_err(unavailable)? {
            Ok::<_, ApiError>(axum::Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
        } else {
            Err(ApiError {
                status: StatusCode::NOT_FOUND,
                ..ApiError::invalid(format!("no live key with id `{id}`"), Some("id".into()))
            })
        }
    };
    result.await.unwrap_or_else(|e| e.into_response_for(InboundApi::OpenAi))
}

fn unavailable(e: keel_limits::LimitsError) -> ApiError {
    tracing::error!(error = %e, "key store unavailable");
    crate::auth::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "key_store_unavailable",
        format!("key store: {e}"),
    )
}
