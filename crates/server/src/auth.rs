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

use crate::{AdminAccess, ApiError, AppState};

/// Keys, counters and the auth policy.
pub struct Auth {
    pub keys: Arc<Keys>,
    pub counters: Arc<dyn Counters>,
    /// Applies settlements off the request path.
    pub settler: Settler,
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
    reservation: Reservation,
    settler: Settler,
}

impl Admitted {
    /// The request ended: its real cost replaces the reservation (off the request path).
    pub(crate) fn settle(self, cost_usd: f64, tokens: u64) {
        self.settler.settle(self.reservation, cost_usd, tokens);
    }
}

/// How many settlements may wait for the counters. A settlement is small (a reservation's ids and numbers); the
/// bound only matters when the counters' backend (Redis) stalls for a long time.
const SETTLE_QUEUE: usize = 16_384;

/// Settles budget reservations through one bounded queue, drained by a task that runs up to 32 settlements at
/// once (one Redis round trip each, or an in-memory update). When the queue is full (the counters stalled),
/// a settlement is dropped, counted and reported: its reservation then stays counted against the budget until
/// the period ends, which refuses requests early rather than letting spend pass the budget.
#[derive(Clone)]
pub struct Settler {
    tx: tokio::sync::mpsc::Sender<(Reservation, f64, u64)>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Settler {
    /// Starts the settling task on the current runtime.
    pub fn spawn(counters: Arc<dyn Counters>) -> Self {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<(Reservation, f64, u64)>(SETTLE_QUEUE);
        let items = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        tokio::spawn(items.for_each_concurrent(32, move |(reservation, cost, tokens)| {
            let counters = counters.clone();
            async move {
                if let Err(e) = counters.settle(&reservation, cost, tokens).await {
                    tracing::error!(error = %e, key = reservation.key_id, "settling a budget reservation failed");
                }
            }
        }));
        Self { tx, dropped: Arc::default() }
    }

    fn settle(&self, reservation: Reservation, cost: f64, tokens: u64) {
        if let Err(e) = self.tx.try_send((reservation, cost, tokens)) {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = match &e {
                tokio::sync::mpsc::error::TrySendError::Full((r, ..))
                | tokio::sync::mpsc::error::TrySendError::Closed((r, ..)) => r.key_id.clone(),
            };
            tracing::error!(key, "budget settlement queue full; a reservation stays counted until its period ends");
        }
    }

    /// Settlements dropped because the queue was full.
    pub fn dropped(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.dropped
    }
}

fn error(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
    ApiError { status, kind, code: Some(code.into()), ..ApiError::invalid(message, None) }
}

/// The secret a client sent: `Authorization: Bearer …` (OpenAI SDKs; the scheme is case-insensitive, RFC 9110
/// §11.1) or `x-api-key` (Anthropic SDKs).
fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = v.trim_start().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
        && !token.trim().is_empty()
    {
        return Some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

/// Compares without an early exit, so that timing does not reveal how much of the admin key was right.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (keel_limits::hash_secret(a), keel_limits::hash_secret(b));
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The logged endpoint of an API path; `None` for every other path.
pub(crate) fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat"),
        "/v1/embeddings" => Some("embeddings"),
        "/v1/messages" => Some("messages"),
        _ => None,
    }
}

/// `/admin/*` per [`AdminAccess`]: the admin key when one is configured; without one, nobody, unless keel
/// listens on loopback alone and the operator opened it there.
fn admin_allowed(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.inner.admin {
        AdminAccess::OpenOnLoopback => Ok(()),
        AdminAccess::Key(key) => match secret(headers) {
            Some(s) if same_secret(s, key.expose()) => Ok(()),
            Some(_) => Err(error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "admin_key_required",
                "this endpoint needs the admin key",
            )),
            None => Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
                "missing admin key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
            )),
        },
        AdminAccess::Closed => Err(error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "admin_disabled",
            "the admin endpoints are off: set the admin key (KEEL_ADMIN_KEY, or auth.admin_key_env), or, when \
             keel listens on loopback only, auth.open_admin_on_loopback = true",
        )),
    }
}

/// Authenticates every request except the public paths. A refused API request is logged like any other.
pub(crate) async fn layer(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/admin") {
        return match admin_allowed(&app, req.headers()) {
            Ok(()) => {
                req.extensions_mut().insert(Principal::Admin);
                next.run(req).await
            }
            Err(e) => e.into_response_for(InboundApi::OpenAi),
        };
    }
    let Some(auth) = app.inner.auth.clone() else { return next.run(req).await };
    if !auth.enabled || auth.public.contains(&path) {
        return next.run(req).await;
    }
    let api = crate::error::api_of_path(&path);
    let principal = match secret(req.headers()) {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        )),
        Some(s) if auth.admin_key.as_ref().is_some_and(|k| same_secret(s, k.expose())) => Ok(Principal::Admin),
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
            if let (Some(endpoint), Some(id)) = (endpoint(&path), req.extensions().get::<RequestId>()) {
                app.inner.log.start(id, api, endpoint, req.headers()).reject(&err).await;
            }
            err.into_response_for(api)
        }
    }
}

/// Whether a keyed request may go on: its model is allowed, its rate limits and budgets have room. On success,
/// the request's worst-case cost is reserved (see `keel_limits`). For a budgeted key, what was reserved is also
/// what the upstream may produce: a chat request without a token limit gets the reserved one
/// (`auth.default_output_tokens`), and the reservation counts every choice (`n`), so a budget is never exceeded
/// by more than one request's estimate. `input_tokens` counts a request that is not a chat exactly.
pub(crate) async fn admit(
    app: &AppState,
    principal: Option<&Principal>,
    model: &str,
    mut chat: Option<&mut ChatRequest>,
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
    let choices = chat.as_deref().map_or(1, |c| {
        u64::try_from(c.extra.get("n").and_then(serde_json::Value::as_i64).unwrap_or(1).max(1)).unwrap_or(1)
    });
    let per_choice = chat.as_deref().and_then(ChatRequest::max_output_tokens).unwrap_or(auth.default_output_tokens);
    if budgeted
        && let Some(c) = chat.as_deref_mut()
        && c.max_output_tokens().is_none()
    {
        // Reserved is what may come: the upstream is capped at it.
        c.max_completion_tokens = Some(auth.default_output_tokens);
    }
    let output = u64::from(per_choice).saturating_mul(choices);
    let cost_of = |input: u64| {
        if budgeted { worst_case_cost(&app.inner.routes, &auth.prices, model, input, output) } else { 0.0 }
    };
    let bound = cost_of(input_bound);
    let now = keel_store::now_ms();
    let mut decision = auth.counters.admit(key, bound, now).await;
    if let Ok(Admission::Denied { limit, .. }) = &decision
        && limit.is_budget()
    {
        let exact = cost_of(match chat.as_deref() {
            Some(c) => chat_input_tokens(c),
            None => input_tokens(),
        });
        if exact < bound {
            decision = auth.counters.admit(key, exact, now).await;
        }
    }
    match decision {
        Ok(Admission::Admitted(reservation)) => Ok(Some(Admitted { reservation, settler: auth.settler.clone() })),
        Ok(Admission::Denied { limit, reason, retry_after }) => {
            let code = if limit.is_budget() { "budget_exceeded" } else { "rate_limit_exceeded" };
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
pub(crate) async fn create_key(
    State(app): State<AppState>,
    crate::body::RawBody(body): crate::body::RawBody,
) -> Response {
    let result = async {
        let keys = keys_of(&app)?;
        let new: NewKey = crate::body::parse(body)?;
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
