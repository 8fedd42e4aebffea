//! Admission control for the whole instance, before a request is read: at most `server.max_in_flight` API
//! requests at once (a stream counts until its last byte), up to `server.admission_queue` more waiting at most
//! `server.admission_queue_timeout_ms`, and beyond that an immediate 503 in the API's error format with
//! `Retry-After`, counted in the metrics and logged. `/health`, `/metrics` and `/admin/*` are not subject to it,
//! so an overloaded keel still says how it is.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;
use keel_pipeline::admission::{InFlight, RETRY_AFTER};
use keel_pipeline::{Endpoint, RequestId};

use crate::{ApiError, AppState};

pub(crate) async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(endpoint) = Endpoint::of_path(req.uri().path()) else { return next.run(req).await };
    let api = endpoint.api();
    match app.inner.admission.admit().await {
        Ok(slot) => next.run(req).await.map(|body| Body::new(Holding { body, _slot: slot })),
        Err(_) => {
            let limiter = &app.inner.admission;
            let err = ApiError {
                retry_after: Some(RETRY_AFTER),
                code: Some("overloaded".into()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded_error",
                    format!(
                        "keel is at capacity: {} requests in flight (server.max_in_flight) and no room to wait; \
                         try again shortly",
                        limiter.capacity()
                    ),
                )
            };
            // Shedding load must not wait for the log: the row goes through its bounded detached path.
            if let Some(id) = req.extensions().get::<RequestId>() {
                let arrival = crate::arrival::Arrival::new(id.clone(), endpoint, None, req.headers());
                app.inner.log.refuse_detached(arrival, &err);
            }
            err.into_response_for(api)
        }
    }
}

/// A response body that holds its request's admission slot until it is complete or dropped.
struct Holding {
    body: Body,
    _slot: InFlight,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
