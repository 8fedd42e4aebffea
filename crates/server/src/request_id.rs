//! `x-request-id` on every response: the client's own when it sent a sane one, a fresh UUIDv7 otherwise.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use keel_pipeline::RequestId;

pub(crate) const HEADER: &str = "x-request-id";

pub(crate) async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let header = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(Arc::from(id)));
    let mut resp = next.run(req).await;
    if let Some(h) = header {
        resp.headers_mut().insert(HEADER, h);
    }
    resp
}
