//! Reading a JSON request body into a typed request, with errors that name the offending field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;

use crate::ApiError;

pub(crate) fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body is larger than the configured limit (server.max_body_bytes)")
        } else {
            ApiError::invalid(format!("cannot read request body: {}", rejection.body_text()), None)
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("request body is empty; expected a JSON object", None));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what =
            if inner.is_syntax() || inner.is_eof() { "malformed JSON in request body" } else { "invalid request" };
        if path.is_empty() || path == "." {
            ApiError::invalid(format!("{what}: {inner}"), None)
        } else {
            ApiError::invalid(format!("{what}: {path}: {inner}"), Some(path))
        }
    })
}
