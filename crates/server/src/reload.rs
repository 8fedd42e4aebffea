//! Configuration reload without a restart: the request path of the configuration in force sits behind one
//! swappable handle, and a reload (SIGHUP, or `POST /admin/config/reload`) builds the next one beside it,
//! validated whole, then swaps it in at once. Requests already running finish on the version they started on.
//!
//! What a reload may change, and what needs a restart, is the binary's to decide (it builds the parts); this
//! module holds the typed contract between the two ([`Reload`], [`Reloaded`], [`ReloadError`]), the swap
//! ([`Versions`]), and the operator endpoints.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use tower::{Service, ServiceExt};

use crate::{ApiError, AppState};

/// The header every answer carries: the version of the configuration that served it, so that an operator (or
/// a load balancer's check) sees which instances serve which version.
pub const VERSION_HEADER: &str = "x-keel-config-version";

/// Which configuration an instance serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigVersion {
    /// A content hash of the configuration file (its first 12 hex digits); `embedded` for the built-in default.
    pub version: String,
    /// Where it was read from.
    pub source: String,
    /// When this version was read (Unix milliseconds).
    pub since_ms: u64,
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    pub previous: String,
    pub version: String,
    /// The top-level sections whose content changed (`models`, `providers.openai`, …); empty when the file is
    /// the same (nothing was swapped).
    pub changed: Vec<String>,
}

/// Why a reload did not take effect. In every case the configuration in force keeps serving, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// keel runs on its embedded default: there is no file to read again.
    #[error("keel was started without a configuration file (the embedded default): there is nothing to reload")]
    NoFile,
    /// The file cannot be read.
    #[error("{0}")]
    Unreadable(String),
    /// The new file does not validate: every problem, with its path.
    #[error("the new configuration is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The new file changes what only a restart can change (the listener, the store, the local models, …).
    #[error("these changes need a restart: {}", .0.join("; "))]
    NeedsRestart(Vec<String>),
    /// An evaluation suite of `[reload] gate` failed against the new version: each failure, with its run.
    #[error("the reload gate failed: {}", .0.join("; "))]
    GateFailed(Vec<String>),
    /// Building the new version's parts failed (a model file, a router's weights, …).
    #[error("{0}")]
    Failed(String),
}

/// Reloads the configuration: implemented by the binary, which knows how to build every part.
pub trait Reload: Send + Sync {
    fn reload(&self) -> BoxFuture<'_, Result<Reloaded, ReloadError>>;
}

/// Where `POST /admin/config/reload` finds the reloader: set once the reloader exists (it builds the versions
/// that hold this handle, so the handle is filled after them), weak so that the versions do not keep it alive.
pub type ReloadHandle = Arc<std::sync::OnceLock<std::sync::Weak<dyn Reload>>>;

/// The request path of the configuration in force, swapped whole by a reload.
#[derive(Clone)]
pub struct Versions {
    current: Arc<ArcSwap<Current>>,
}

struct Current {
    router: Router,
    header: HeaderValue,
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions").field("version", &self.current.load().header).finish()
    }
}

impl Versions {
    /// `router` serves `version` until the next [`Versions::swap`].
    pub fn new(router: Router, version: &ConfigVersion) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(Current { router, header: header(version) })) }
    }

    /// From the next request on, `router` serves; requests running on the previous one finish there.
    pub fn swap(&self, router: Router, version: &ConfigVersion) {
        self.current.store(Arc::new(Current { router, header: header(version) }));
    }

    /// The router the accept loop serves: each request goes to the version in force when it arrives.
    pub fn router(&self) -> Router {
        Router::new().fallback_service(self.clone())
    }
}

fn header(v: &ConfigVersion) -> HeaderValue {
    HeaderValue::from_str(&v.version).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

impl Service<Request> for Versions {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let current = self.current.load_full();
        Box::pin(async move {
            let mut resp = current.router.clone().oneshot(req).await?;
            resp.headers_mut().insert(VERSION_HEADER, current.header.clone());
            Ok(resp)
        })
    }
}

/// `GET /admin/config`: the version this instance serves.
pub(crate) async fn show(State(app): State<AppState>) -> Response {
    axum::Json(serde_json::json!({ "config": &*app.inner.config })).into_response()
}

/// `POST /admin/config/reload`: reads the configuration file again and, when it is valid and needs no restart,
/// serves it from the next request on. Refusals leave the version in force serving.
pub(crate) async fn reload(State(app): State<AppState>) -> Response {
    let Some(reloader) = app.inner.reload.as_ref().and_then(|h| h.get()).and_then(std::sync::Weak::upgrade) else {
        return ApiError::new(StatusCode::NOT_IMPLEMENTED, "invalid_request_error", "this keel cannot reload")
            .code("reload_unavailable")
            .into_response_for(keel_pipeline::InboundApi::OpenAi);
    };
    match reloader.reload().await {
        Ok(done) => axum::Json(serde_json::json!({ "reloaded": done })).into_response(),
        Err(e) => refusal(&e).into_response_for(keel_pipeline::InboundApi::OpenAi),
    }
}

/// A refused reload in the API's error format: the client's mistake (409/422) or keel's (500).
pub(crate) fn refusal(e: &ReloadError) -> ApiError {
    let (status, code) = match e {
        ReloadError::NoFile => (StatusCode::CONFLICT, "no_config_file"),
        ReloadError::Unreadable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_unreadable"),
        ReloadError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_invalid"),
        ReloadError::NeedsRestart(_) => (StatusCode::CONFLICT, "restart_required"),
        ReloadError::GateFailed(_) => (StatusCode::CONFLICT, "eval_gate_failed"),
        ReloadError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed"),
    };
    let kind = if status.is_server_error() { "api_error" } else { "invalid_request_error" };
    ApiError::new(status, kind, e.to_string()).code(code)
}
