//! The HTTP edge of keel: the axum router, thin handlers for the OpenAI and Anthropic APIs, stream encoding,
//! and the one mapping from gateway errors to HTTP responses. Only this crate knows axum.

mod admin;
mod anthropic;
mod auth;
mod body;
mod error;
mod log;
mod metrics;
mod openai;
mod request_id;
mod stream;

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use keel_pipeline::{Breakers, Pipeline, RouteTable};

pub use auth::{Auth, Principal};
pub use error::ApiError;
pub use log::RequestLog;
pub use metrics::Metrics;
pub use request_id::enable_request_spans;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    routes: RouteTable,
    breakers: Breakers,
    log: Arc<RequestLog>,
    /// The request log's store, for `GET /admin/requests`; none when logging is off.
    store: Option<Arc<dyn keel_store::Store>>,
    /// Virtual keys and limits; none without a store.
    auth: Option<Arc<Auth>>,
}

impl AppState {
    /// State without a persistent request log (metrics only).
    pub fn new(pipeline: Pipeline, routes: RouteTable, breakers: Breakers) -> Self {
        let metrics = Arc::new(Metrics::new(breakers.clone(), None));
        let log = RequestLog::new(
            None,
            keel_config::BodyPolicy::None,
            0,
            keel_pipeline::cost::Prices::default(),
            metrics,
            routes.names(),
        );
        Self::with_log(pipeline, routes, breakers, Arc::new(log), None, None)
    }

    /// State with a request log (and the store it writes to, for reading it back).
    pub fn with_log(
        pipeline: Pipeline,
        routes: RouteTable,
        breakers: Breakers,
        log: Arc<RequestLog>,
        store: Option<Arc<dyn keel_store::Store>>,
        auth: Option<Arc<Auth>>,
    ) -> Self {
        Self { inner: Arc::new(Inner { pipeline, routes, breakers, log, store, auth }) }
    }
}

/// The server's slice of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_body_bytes: usize,
}

/// All of keel's HTTP routes.
pub fn router(state: AppState, limits: ServerLimits) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/v1/messages", post(anthropic::messages))
        .route("/health", get(health))
        .route("/admin/circuits", get(circuits))
        .route("/admin/requests", get(admin::requests))
        .route("/metrics", get(admin::metrics))
        .route("/admin/keys", get(auth::list_keys).post(auth::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(auth::revoke_key))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The state of every target's circuit breaker.
async fn circuits(axum::extract::State(app): axum::extract::State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "circuits": app.inner.breakers.states() }))
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Serves the router on `listener` until `shutdown` resolves, then stops accepting and lets in-flight requests
/// and streams finish for at most `grace`. Accepted connections get `TCP_NODELAY`: without it, small SSE frames
/// wait for Nagle's algorithm.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    let deadline = async move {
        if stopping_rx.wait_for(|stopping| *stopping).await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server.into_future() => result,
        () = deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace period over; closing remaining connections");
            Ok(())
        }
    }
}
