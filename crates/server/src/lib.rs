//! The HTTP edge of keel: the axum router, thin handlers for the OpenAI and Anthropic APIs, stream encoding,
//! and the one mapping from gateway errors to HTTP responses. Only this crate knows axum.

mod anthropic;
mod body;
mod error;
mod openai;
mod request_id;
mod stream;

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use keel_pipeline::{Breakers, Pipeline, RouteTable};

pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    routes: RouteTable,
    breakers: Breakers,
}

impl AppState {
    pub fn new(pipeline: Pipeline, routes: RouteTable, breakers: Breakers) -> Self {
        Self { inner: Arc::new(Inner { pipeline, routes, breakers }) }
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
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
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
