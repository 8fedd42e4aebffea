//! Limits every request meets before anything else reads it: the size and number of its headers (431 in the
//! API's error format, logged like any refusal), and the body limits the handlers' [`crate::body::RawBody`]
//! applies (placed in the request's extensions here).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState, ServerLimits};

pub(crate) async fn layer(
    State((app, limits)): State<(AppState, ServerLimits)>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        let err = ApiError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: Some("headers_too_large".into()),
            ..ApiError::invalid(
                format!(
                    "request headers too large: {} headers, {bytes} bytes (at most {} headers and {} bytes, \
                     server.max_header_bytes)",
                    headers.len(),
                    limits.max_headers,
                    limits.max_header_bytes
                ),
                None,
            )
        };
        let path = req.uri().path().to_string();
        let api = crate::error::api_of_path(&path);
        if let (Some(endpoint), Some(id)) =
            (keel_pipeline::Endpoint::of_path(&path), req.extensions().get::<keel_pipeline::RequestId>())
        {
            let arrival = crate::arrival::Arrival::new(id.clone(), endpoint, None, req.headers());
            app.inner.log.refuse_detached(arrival, &err);
        }
        return err.into_response_for(api);
    }
    req.extensions_mut().insert(limits);
    next.run(req).await
}
