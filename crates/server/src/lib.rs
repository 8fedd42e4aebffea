//! The HTTP edge of keel: connections (timeouts, limits, shutdown), the HTTP layers (request ids, header
//! limits, admission control, identity), the request path of the API endpoints (`stack.rs`: the log, the key
//! stages and the pipeline's stages, in one function), handlers for the OpenAI and Anthropic APIs that only
//! parse, run and encode, stream encoding, and the one mapping from gateway errors to HTTP responses. Only this
//! crate knows axum and hyper.

mod admin;
mod admission;
mod anthropic;
mod arrival;
mod auth;
mod body;
mod conn;
mod encode;
mod error;
mod feedback;
mod files;
mod keys;
mod limits;
mod log;
mod metrics;
mod openai;
mod rag;
mod reload;
mod request_id;
mod shutdown;
mod stack;
mod stream;
mod ui;
mod vector_stores;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use keel_pipeline::{Breakers, CacheParts, GatewayResponse, Limiter, Operation, Rejection, RouteLimits, RouteTable};
use tower::ServiceExt;

pub use auth::Auth;
pub use conn::{ConnOptions, ConnStats, serve};
pub use error::ApiError;
pub use feedback::bucket_ms;
pub use keel_pipeline::Principal;
pub use keys::Settler;
pub use log::{RequestLog, RowTap};
pub use metrics::{Metrics, Source, SourceKind};
pub use reload::{ConfigVersion, Reload, ReloadError, ReloadHandle, Reloaded, VERSION_HEADER, Versions};
pub use request_id::enable_request_spans;
pub use shutdown::Shutdown;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The request path of the API endpoints (`stack.rs`).
    stack: stack::Stack,
    routes: RouteTable,
    breakers: Breakers,
    log: Arc<RequestLog>,
    /// The request log's store, for `GET /admin/requests`; none when logging is off.
    store: Option<Arc<dyn keel_store::LogStore>>,
    /// Virtual keys and limits; none without a store.
    auth: Option<Arc<Auth>>,
    admin: AdminAccess,
    /// Admission control for the whole instance.
    admission: Arc<Limiter>,
    shutdown: Shutdown,
    /// Collections for `POST /v1/search`; none when retrieval is off.
    collections: Option<Arc<keel_rag::Collections>>,
    /// Uploaded files and vector store records (`/v1/files`, `/v1/vector_stores`); none: those APIs are off.
    files: Option<Arc<files::FileArea>>,
    /// Prompt templates, expanded when a request's body is parsed.
    templates: Arc<keel_pipeline::Templates>,
    /// Feedback and quality (`/v1/feedback`, `/admin/quality`); none without a store.
    feedback: Option<Arc<dyn keel_store::FeedbackStore>>,
    config: Arc<ConfigVersion>,
    reload: Option<ReloadHandle>,
    /// What the dashboard reads (the log's aggregates, keys, evaluation runs, feedback); none: `/ui` says so.
    dashboard: Option<Arc<dyn keel_store::Store>>,
}

/// Who may use `/admin/*`.
#[derive(Debug, Clone)]
pub enum AdminAccess {
    /// Whoever presents the admin key.
    Key(keel_config::Secret),
    /// Anyone who can reach the port: only when keel listens on loopback alone and the operator said so.
    OpenOnLoopback,
    /// Nobody: no admin key is configured.
    Closed,
}

impl AdminAccess {
    /// The access the configuration grants for a listener on `listen`.
    pub fn of(admin_key: Option<&keel_config::Secret>, open_on_loopback: bool, listen: std::net::SocketAddr) -> Self {
        match admin_key {
            Some(k) => AdminAccess::Key(k.clone()),
            None if open_on_loopback && listen.ip().is_loopback() => AdminAccess::OpenOnLoopback,
            None => AdminAccess::Closed,
        }
    }
}

/// Everything the edge is made of.
pub struct Parts {
    pub routes: RouteTable,
    pub providers: keel_providers::Providers,
    pub breakers: Breakers,
    /// The response cache; none: no cache stage.
    pub cache: Option<CacheParts>,
    /// Per-alias admission; empty: none.
    pub route_limits: RouteLimits,
    pub log: Arc<RequestLog>,
    /// The request log's store, read back by `GET /admin/requests`.
    pub store: Option<Arc<dyn keel_store::LogStore>>,
    pub auth: Option<Arc<Auth>>,
    pub admin: AdminAccess,
    pub admission: Arc<Limiter>,
    pub shutdown: Shutdown,
    /// Collections for retrieval; none: retrieval off.
    pub collections: Option<Arc<keel_rag::Collections>>,
    /// Where `/v1/files` keeps uploads (`<id>` and `<id>.json`) and `/v1/vector_stores` its records
    /// (`vector_stores/<id>.json`); none: the Files and vector stores APIs are off.
    pub files_dir: Option<std::path::PathBuf>,
    /// Prompt templates (`[templates]`); empty: none.
    pub templates: Arc<keel_pipeline::Templates>,
    /// Where feedback is kept and quality computed; none: `/v1/feedback` and `/admin/quality` answer 404.
    pub feedback: Option<Arc<dyn keel_store::FeedbackStore>>,
    /// The configuration version these parts were built from (`GET /admin/config`).
    pub config: ConfigVersion,
    /// What `POST /admin/config/reload` calls.
    pub reload: Option<ReloadHandle>,
    /// The store the dashboard (`/ui`) reads; none: it says there is no store.
    pub dashboard: Option<Arc<dyn keel_store::Store>>,
}

impl Parts {
    /// The edge without a persistent request log (metrics only), cache, keys or per-alias limits, with open
    /// admin endpoints and the default instance admission: the parts as tests of the inner stages want them.
    pub fn new(routes: RouteTable, providers: keel_providers::Providers, breakers: Breakers) -> Self {
        let metrics = Arc::new(Metrics::new(breakers.clone(), None));
        let log = RequestLog::new(
            None,
            keel_config::BodyPolicy::None,
            0,
            keel_pipeline::cost::Prices::default(),
            metrics,
            routes.names(),
        );
        let max = keel_config::default_max_in_flight();
        Self {
            routes,
            providers,
            breakers,
            cache: None,
            route_limits: RouteLimits::default(),
            log: Arc::new(log),
            store: None,
            auth: None,
            admin: AdminAccess::OpenOnLoopback,
            admission: Arc::new(Limiter::new(max, max / 4, Duration::from_secs(1))),
            shutdown: Shutdown::default(),
            collections: None,
            files_dir: None,
            templates: Arc::new(keel_pipeline::Templates::default()),
            feedback: None,
            config: ConfigVersion { version: "embedded".into(), source: "parts".into(), since_ms: 0 },
            reload: None,
            dashboard: None,
        }
    }
}

impl AppState {
    /// The edge of [`Parts::new`].
    pub fn new(routes: RouteTable, providers: keel_providers::Providers, breakers: Breakers) -> Self {
        Self::from_parts(Parts::new(routes, providers, breakers))
    }

    /// The shutdown deadline came: open streams end with an error event, and what is cut from now on is
    /// logged as cut by keel.
    pub fn deadline(&self) {
        self.inner.log.stopping();
        self.inner.shutdown.deadline();
    }

    pub fn from_parts(p: Parts) -> Self {
        let inner = Inner {
            stack: stack::request_path(&p),
            routes: p.routes,
            breakers: p.breakers,
            log: p.log,
            store: p.store,
            auth: p.auth,
            admin: p.admin,
            admission: p.admission,
            shutdown: p.shutdown,
            collections: p.collections,
            files: p.files_dir.map(|dir| Arc::new(files::FileArea::new(dir))),
            templates: p.templates,
            feedback: p.feedback,
            config: Arc::new(p.config),
            reload: p.reload,
            dashboard: p.dashboard,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Expands the prompt template a chat request names (`keel_template`), noting it in the request's context.
    pub(crate) fn template(
        &self,
        req: keel_types::ChatRequest,
        arrival: &mut arrival::Arrival,
    ) -> Result<keel_types::ChatRequest, Rejection> {
        let (req, used) = self.inner.templates.expand(req)?;
        arrival.ctx.template = used;
        Ok(req)
    }

    /// Runs a parsed (or refused) request through the request path.
    pub(crate) async fn serve(
        &self,
        arrival: arrival::Arrival,
        body: body::RawBody,
        op: Result<Operation, Rejection>,
    ) -> GatewayResponse {
        let inbound = log::Inbound { arrival, body: body.bytes(), op: op.map_err(Into::into) };
        match self.inner.stack.clone().oneshot(inbound).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// The server's slice of the configuration that requests see.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// The largest request body; a larger `Content-Length` is refused before the body is read (413).
    pub max_body_bytes: usize,
    /// The most time a request's body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// The most bytes of request headers (431 past it, in the API's error format).
    pub max_header_bytes: usize,
    /// The most request headers (431 past it).
    pub max_headers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

/// All of keel's HTTP routes and the HTTP layers, outermost last: request id, header limits, admission control,
/// identity. They act on a request's head, before its body is read; the API endpoints' stages are in `stack.rs`.
pub fn router(state: AppState, limits: ServerLimits) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/v1/messages", post(anthropic::messages))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/admin/circuits", get(circuits))
        .route("/admin/config", get(reload::show))
        .route("/admin/config/reload", post(reload::reload))
        .route("/admin/requests", get(admin::requests))
        .route("/v1/feedback", post(feedback::create))
        .route("/admin/feedback", get(feedback::list))
        .route("/admin/quality", get(feedback::quality))
        .route("/metrics", get(admin::metrics))
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/v1/search", post(rag::search))
        .route("/admin/collections", get(rag::list))
        .route("/admin/collections/{name}", axum::routing::delete(rag::delete))
        .route(
            "/v1/files",
            get(files::list).post(files::upload).layer(axum::extract::DefaultBodyLimit::max(files::MAX_UPLOAD_BODY)),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .merge(vector_stores::routes())
        .merge(ui::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admission::layer))
        .layer(axum::middleware::from_fn_with_state((state.clone(), limits), limits::layer))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The state of every target's circuit breaker.
async fn circuits(axum::extract::State(app): axum::extract::State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "circuits": app.inner.breakers.states() }))
}

/// Liveness: answered whatever the load (admission control and identity do not apply to it).
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 while keel takes new requests, 503 from the moment shutdown begins (it keeps serving during
/// `shutdown_delay_ms`, so a load balancer polling this stops sending before the listener closes).
async fn ready(axum::extract::State(app): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if app.inner.shutdown.is_draining() {
        let body = axum::Json(serde_json::json!({"status": "draining"}));
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    }
}
