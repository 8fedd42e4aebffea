//! Identity at the edge: who is calling (`layer`, for every route but the configured public ones), before a
//! request's body is read. What the caller's key allows (models, rate limits, budgets) is decided by the key
//! stages of the request path (`keys.rs`); the admin API that manages keys is in `admin.rs`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use keel_limits::{Counters, Keys};
use keel_pipeline::cost::SharedPrices;
use keel_pipeline::{Endpoint, InboundApi, Principal, RequestId};

use crate::keys::Settler;
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
    pub prices: SharedPrices,
    /// What a keyed request gets when the counters cannot be reached.
    pub on_counters_error: keel_config::CountersError,
    /// Keyed requests the unreachable counters could not check, by what they got: `[refused, admitted]`.
    pub counters_unavailable: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

pub(crate) fn error(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> ApiError {
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
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (keel_limits::hash_secret(a), keel_limits::hash_secret(b));
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    // The dashboard has its own sign-in (a session cookie for the admin key): `ui/mod.rs`.
    if path == "/ui" || path.starts_with("/ui/") {
        return next.run(req).await;
    }
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
            if let (Some(endpoint), Some(id)) = (Endpoint::of_path(&path), req.extensions().get::<RequestId>()) {
                let arrival = crate::arrival::Arrival::new(id.clone(), endpoint, None, req.headers());
                app.inner.log.refuse(arrival, &err).await;
            }
            err.into_response_for(api)
        }
    }
}
