//! Virtual keys at the edge: who is calling (`layer`, for every route but the configured public ones), whether
//! they may (`admit`: allowed models, rate limits, budgets, before any upstream call), and the admin API that
//! manages keys.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_limits::{Admission, Counters, Keys, NewKey, Reservation};
use keel_pipeline::cost::{self, Prices};
use keel_pipeline::{InboundApi, RequestId, RouteTable};
use keel_store::KeyRecord;
use keel_types::ChatRequest;

use crate::{ApiError, AppState};

/// Keys, counters and the auth policy.
pub struct Auth {
    pub keys: Arc<Keys>,
    pub counters: Arc<dyn Counters>,
    /// Whether API routes need a key.
    pub enabled: bool,
    pub admin_key: Option<keel_config::Secret>,
    pub public: Vec<String>,
    pub default_output_tokens: u32,
    pub prices: Prices,
}

/// Who is calling, set by [`layer`].
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin key: every route, no limits.
    Admin,
    Key(Arc<KeyRecord>),
}

/// A key that passed [`admit`]: its reservation is settled when the request's log entry is finished.
pub(crate) struct Admitted {
    pub reservation: Reservation,
    pub counters: Arc<dyn Counters>,
}

fn error(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
    ApiError { status, kind, code: Some(code.into()), ..ApiError::invalid(message, None) }
}

/// The secret a client sent: `Authorization: Bearer …` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs).
fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(token) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Compares without an early exit, so that timing does not reveal how much of the admin key was right.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (keel_limits::hash_secret(a), keel_limits::hash_secret(b));
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn endpoint(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/embeddings" => "embeddings",
        "/v1/messages" => "messages",
        _ => "other",
    }
}

/// Authenticates every request except the public paths. A refused API request is logged like any other.
pub(crate) async fn layer(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(auth) = app.inner.auth.clone() else { return next.run(req).await };
    let path = req.uri().path().to_string();
    if !auth.enabled || auth.public.contains(&path) {
        return next.run(req).await;
    }
    let api = if path == "/v1/messages" { InboundApi::Anthropic } else { InboundApi::OpenAi };
    let admin_route = path.starts_with("/admin");
    let principal = match secret(req.headers()) {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        )),
        Some(s) if auth.admin_key.as_ref().is_some_and(|k| same_secret(s, k.expose())) => Ok(Principal::Admin),
        Some(_) if admin_route => Err(error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "admin_key_required",
            "this endpoint needs the admin key",
        )),
        Some(s) => match auth.keys.verify(s).await {
            Ok(Some(key)) => Ok(Principal::Key(key)),
            Ok(None) => Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "invalid API key (unknown or revoked)",
            )),
            Err(e) => {
                tracing::error!(error = %e, "verifying an API key failed");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "key_store_unavailable",
                    "cannot verify the API key now",
                ))
            }
        },
    };
    match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(err) => {
            if path.starts_with("/v1/")
                && let Some(id) = req.extensions().get::<RequestId>()
            {
                app.inner.log.start(id, api, endpoint(&path), req.headers()).reject(&err);
            }
            err.into_response_for(api)
        }
    }
}

/// Whether a keyed request may go on: its model is allowed, its rate limits and budgets have room. On success,
/// the request's worst-case cost is reserved (see `keel_limits`).
pub(crate) async fn admit(
    app: &AppState,
    principal: Option<&Principal>,
    model: &str,
    chat: Option<&ChatRequest>,
    input_bound: u64,
    input_tokens: impl FnOnce() -> u64,
) -> Result<Option<Admitted>, ApiError> {
    let (Some(auth), Some(Principal::Key(key))) = (&app.inner.auth, principal) else { return Ok(None) };
    if !key.models.is_empty() && !key.models.iter().any(|m| m == model) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
            format!("this key may not use model `{model}` (allowed: {})", key.models.join(", ")),
        ));
    }
    // Budgets reserve with the cheap upper bound of the prompt's tokens first; only a refusal is re-checked
    // with the exact count (tokenizing every request would cost more than the rest of admission).
    let budgeted = key.budget_daily_usd.is_some() || key.budget_monthly_usd.is_some();
    let output = u64::from(chat.and_then(ChatRequest::max_output_tokens).unwrap_or(auth.default_output_tokens));
    let cost_of = |input: u64| {
        if budgeted { worst_case_cost(&app.inner.routes, &auth.prices, model, input, output) } else { 0.0 }
    };
    let bound = cost_of(input_bound);
    let now = keel_store::now_ms();
    let mut decision = auth.counters.admit(key, bound, now).await;
    if let Ok(Admission::Denied { reason, .. }) = &decision
        && budgeted
        && reason.contains("budget")
    {
        let exact = cost_of(input_tokens());
        if exact < bound {
            decision = auth.counters.admit(key, exact, now).await;
        }
    }
    match decision {
        Ok(Admission::Admitted(reservation)) => Ok(Some(Admitted { reservation, counters: auth.counters.clone() })),
        Ok(Admission::Denied { reason, retry_after }) => {
            let code = if reason.contains("budget") { "budget_exceeded" } else { "rate_limit_exceeded" };
            Err(ApiError {
                retry_after: Some(retry_after),
                ..error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", code, reason)
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "budget and rate counters unavailable");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "limits_unavailable",
                "cannot check this key's limits now",
            ))
        }
    }
}

/// The dearest cost the request can have on any target its alias may reach (fallbacks included).
fn worst_case_cost(routes: &RouteTable, prices: &Prices, alias: &str, input: u64, output: u64) -> f64 {
    let tokens = cost::Tokens { input, output, cached: 0, estimated: true };
    routes
        .targets(alias)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| prices.cost(&t.provider, &t.model, tokens))
        .fold(0.0, f64::max)
}

/// Prompt tokens of a chat request for the estimate (tiktoken; the route's first target's encoding).
pub(crate) fn chat_input_tokens(req: &ChatRequest) -> u64 {
    cost::count_chat_prompt(&req.model, req)
}

// ------------------------------------------------------------------------------------------- admin API

fn keys_of(app: &AppState) -> Result<Arc<Keys>, ApiError> {
    app.inner.auth.as_ref().map(|a| a.keys.clone()).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid("virtual keys need keel's store ([log] enabled)", None)
    })
}

/// `POST /admin/keys`: creates a key; the answer holds its secret, shown this once.
pub(crate) async fn create_key(State(app): State<AppState>, body: axum::body::Bytes) -> Response {
    let result = async {
        let keys = keys_of(&app)?;
        let new: NewKey = crate::body::parse(Ok(body))?;
        new.validate().map_err(|m| ApiError::invalid(m, None))?;
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
    error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "key_store_unavailable", format!("key store: {e}"))
}
