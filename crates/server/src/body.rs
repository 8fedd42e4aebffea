//! Reading a request body: bounded in size (a `Content-Length` over the limit is refused before a byte of the
//! body is read) and in time, then parsed into a typed request with errors that name the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::BodyExt;
use keel_pipeline::{Rejection, RejectionKind};
use serde::de::DeserializeOwned;

use crate::ServerLimits;

/// A request's body as read within the server's limits, or why it could not be.
pub(crate) struct RawBody(pub Result<Bytes, Rejection>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limits = req.extensions().get::<ServerLimits>().copied().unwrap_or_default();
        Ok(RawBody(read(req, limits).await))
    }
}

impl RawBody {
    /// The body parsed as a `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, Rejection> {
        parse(self.0.as_ref().map_err(Clone::clone)?)
    }

    /// The bytes as received; empty when the body could not be read.
    pub(crate) fn bytes(&self) -> Bytes {
        match &self.0 {
            Ok(bytes) => bytes.clone(),
            Err(_) => Bytes::new(),
        }
    }
}

async fn read(req: Request, limits: ServerLimits) -> Result<Bytes, Rejection> {
    let too_large = || {
        Rejection::new(
            RejectionKind::TooLarge,
            format!(
                "request body is larger than the configured limit of {} bytes (server.max_body_bytes)",
                limits.max_body_bytes
            ),
            None,
        )
    };
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(n) = announced {
        match n.parse::<u64>() {
            Ok(n) if n > limits.max_body_bytes as u64 => return Err(too_large()),
            Ok(_) => {}
            Err(_) => return Err(Rejection::new(RejectionKind::Malformed, "Content-Length: not a number", None)),
        }
    }
    let body = http_body_util::Limited::new(req.into_body(), limits.max_body_bytes);
    match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Rejection::new(RejectionKind::Malformed, format!("cannot read request body: {e}"), None)),
        Err(_) => Err(Rejection::new(
            RejectionKind::Timeout,
            format!(
                "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
                limits.body_read_timeout.as_millis()
            ),
            None,
        )),
    }
}

/// `bytes` parsed as a `T`; an error names the field at fault.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(RejectionKind::Malformed, "request body is empty; expected a JSON object", None));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what =
            if inner.is_syntax() || inner.is_eof() { "malformed JSON in request body" } else { "invalid request" };
        if path.is_empty() || path == "." {
            Rejection::new(RejectionKind::Malformed, format!("{what}: {inner}"), None)
        } else {
            Rejection::new(RejectionKind::Malformed, format!("{what}: {path}: {inner}"), Some(path))
        }
    })
}
