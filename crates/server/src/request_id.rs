//! Request ids: keel's own (a UUIDv7) for every request, and `x-request-id` on every response: the client's
//! own when it sent a sane one, keel's otherwise. When
//! traces are exported, each request also gets a `request` span (OpenTelemetry's HTTP server conventions plus
//! keel's own attributes); without an exporter no span is created, so the request path pays nothing for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument;
use tracing::field::Empty;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use keel_pipeline::RequestId;

pub(crate) const HEADER: &str = "x-request-id";

static SPANS: AtomicBool = AtomicBool::new(false);

/// Turns on the per-request span (call once, when a trace exporter is installed).
pub fn enable_request_spans() {
    SPANS.store(true, Ordering::Relaxed);
}

/// The client's own `x-request-id`, when it sent a sane one (printable ASCII, at most 128 bytes). It is echoed
/// and logged as the client's, never used as the identity of keel's log row: clients reuse ids.
pub(crate) fn client_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// Gives every request keel's own id (a UUIDv7, unique: the log row's identity) and answers with the client's
/// id when it sent one, else keel's.
pub(crate) async fn layer(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    let echoed = client_id(req.headers()).unwrap_or(&id);
    let header = HeaderValue::from_str(echoed).ok();
    let span = if SPANS.load(Ordering::Relaxed) {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        tracing::info_span!(
            "request",
            "otel.name" = %format!("{method} {path}"),
            "otel.kind" = "server",
            "http.request.method" = %method,
            "url.path" = %path,
            "keel.request_id" = %id,
            "gen_ai.request.model" = Empty,
            "keel.served_by" = Empty,
            "keel.attempts" = Empty,
            "http.response.status_code" = Empty,
        )
    } else {
        tracing::Span::none()
    };
    // Anthropic's SDKs read the id from `request-id` (`_request_id`): answers of the Anthropic API, errors
    // included, carry it there too.
    let anthropic = req.uri().path().starts_with("/v1/messages");
    req.extensions_mut().insert(RequestId(Arc::from(id)));
    let mut resp = next.run(req).instrument(span.clone()).await;
    if !span.is_none() {
        span.record("http.response.status_code", resp.status().as_u16());
        for (header, field) in [("x-keel-served-by", "keel.served_by"), ("x-keel-attempts", "keel.attempts")] {
            if let Some(v) = resp.headers().get(header).and_then(|v| v.to_str().ok()) {
                span.record(field, v);
            }
        }
    }
    if let Some(h) = header {
        if anthropic {
            resp.headers_mut().insert("request-id", h.clone());
        }
        resp.headers_mut().insert(HEADER, h);
    }
    resp
}
