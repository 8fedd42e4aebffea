//! The one mapping from failures to HTTP responses, in the error format of the API the client called.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_pipeline::{Denial, GatewayError, InboundApi, Rejection, RejectionKind};
use keel_providers::{ErrorKind, ProviderError};
use keel_types::error::{AnthropicError, AnthropicErrorBody, OpenAiError, OpenAiErrorBody};

/// An error as the client sees it. Built from [`GatewayError`] in one exhaustive match, rendered per API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The error type in OpenAI's vocabulary (`invalid_request_error`, `rate_limit_error`, …).
    pub kind: &'static str,
    pub message: String,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), code: None, param: None, retry_after: None }
    }

    pub fn invalid(message: impl Into<String>, param: Option<String>) -> Self {
        Self { param, ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub(crate) fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    /// The error type in Anthropic's vocabulary.
    fn anthropic_kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    pub fn openai_body(&self) -> OpenAiErrorBody {
        OpenAiErrorBody {
            error: OpenAiError {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }

    pub fn anthropic_body(&self) -> AnthropicErrorBody {
        AnthropicErrorBody {
            kind: "error".into(),
            error: AnthropicError { kind: self.anthropic_kind().into(), message: self.message.clone() },
        }
    }

    pub fn into_response_for(self, api: InboundApi) -> Response {
        let mut resp = match api {
            InboundApi::OpenAi => (self.status, Json(self.openai_body())).into_response(),
            InboundApi::Anthropic => (self.status, Json(self.anthropic_body())).into_response(),
        };
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long is not early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Rejected(r) => r.into(),
            GatewayError::Denied(d) => denial(d),
            // The configured aliases are not listed: `GET /v1/models` shows a caller the ones it may use.
            GatewayError::UnknownModel { model } => ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist in this keel gateway (GET /v1/models lists the models you may use)."),
            )
            .code("model_not_found"),
            GatewayError::ProviderUnavailable(id) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("provider {id} is configured but not available"),
            ),
            GatewayError::InvalidRequest(message) => ApiError::invalid(message, None),
            GatewayError::Provider(e) => provider_error(e),
            GatewayError::Overloaded { alias, retry_after } => {
                let what = alias.map(|a| format!(" for model `{a}`")).unwrap_or_default();
                ApiError {
                    retry_after: Some(retry_after),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded_error",
                        format!("keel is at capacity{what}: every slot is taken; try again shortly"),
                    )
                    .code("overloaded")
                }
            }
            GatewayError::Guarded(g) => {
                let status = match g.guard {
                    // The answer broke the route's policy: not the client's request at fault, nor an upstream
                    // failure to retry elsewhere.
                    keel_pipeline::GuardKind::Output => StatusCode::UNPROCESSABLE_ENTITY,
                    keel_pipeline::GuardKind::Injection | keel_pipeline::GuardKind::Pii => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, "invalid_request_error", g.message).code(g.code)
            }
            GatewayError::Retrieval { collection, error } => {
                let message = format!("retrieval for this model failed: collection `{collection}`: {error}");
                match error {
                    keel_pipeline::RetrieveError::NoCollection(_) => {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
                            .code("collection_not_found")
                    }
                    keel_pipeline::RetrieveError::Misconfigured(_) => {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
                            .code("retrieval_misconfigured")
                    }
                    keel_pipeline::RetrieveError::Failed(_) => {
                        ApiError::new(StatusCode::BAD_GATEWAY, "api_error", message).code("retrieval_failed")
                    }
                }
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let Rejection { kind, message, param } = r;
        match kind {
            RejectionKind::Malformed | RejectionKind::Invalid => ApiError::invalid(message, param),
            RejectionKind::TooLarge => {
                ApiError { param, ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message) }
            }
            RejectionKind::Timeout => ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                ..ApiError::invalid(message, param).code("request_timeout")
            },
        }
    }
}

fn denial(d: Denial) -> ApiError {
    let message = d.to_string();
    match d {
        Denial::ModelNotAllowed { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).code("model_not_allowed")
        }
        Denial::RateLimited { retry_after, .. } => ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).code("rate_limit_exceeded")
        },
        Denial::BudgetExceeded { retry_after, .. } => ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).code("budget_exceeded")
        },
        Denial::LimitsUnavailable => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("limits_unavailable")
        }
    }
}

fn provider_error(e: ProviderError) -> ApiError {
    let upstream = match e.status {
        Some(s) => format!("provider {} (HTTP {s}): {}", e.provider, e.message),
        None => format!("provider {}: {}", e.provider, e.message),
    };
    let mut err = match e.kind {
        ErrorKind::Connect | ErrorKind::ConnectionLost => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", format!("cannot reach {upstream}"))
        }
        ErrorKind::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", upstream),
        ErrorKind::RateLimited | ErrorKind::Busy => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", upstream)
        }
        ErrorKind::ContextLengthExceeded => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", upstream).code("context_length_exceeded")
        }
        // keel's own output guard ending a stream: its reason code, not a vendor's filter.
        ErrorKind::ContentFilter if e.provider.0.as_ref() == keel_pipeline::guard::GUARD_PROVIDER => {
            let code = e.code.clone().unwrap_or_else(|| "output_blocked".into());
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", e.message.clone()).code(&code)
        }
        ErrorKind::ContentFilter => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", upstream).code("content_filter")
        }
        // The provider refused keel's own credentials: a gateway misconfiguration, not the client's fault.
        ErrorKind::Auth => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_auth_error", upstream),
        ErrorKind::NotFound => {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", upstream).code("model_not_found")
        }
        ErrorKind::InvalidRequest => {
            let status = e.status.and_then(|s| StatusCode::from_u16(s).ok()).filter(|s| s.is_client_error());
            ApiError::new(status.unwrap_or(StatusCode::BAD_REQUEST), "invalid_request_error", upstream)
        }
        ErrorKind::Unsupported => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", upstream),
        ErrorKind::Server if matches!(e.status, Some(503 | 529)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", upstream)
        }
        ErrorKind::Server | ErrorKind::Protocol | ErrorKind::StreamIncomplete => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", upstream)
        }
        ErrorKind::InvalidOutput => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", upstream),
        ErrorKind::CircuitOpen => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", upstream),
        ErrorKind::Shutdown => {
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", e.message.clone());
            err.code = Some("shutting_down".into());
            err
        }
    };
    if err.code.is_none() {
        err.code = e.code;
    }
    err.retry_after = e.retry_after;
    err
}

/// Any path keel does not serve.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no route for {}", uri.path()))
        .code("unknown_url")
        .into_response_for(api_of_path(uri.path()))
}

pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response_for(api_of_path(uri.path()))
}

pub(crate) fn api_of_path(path: &str) -> InboundApi {
    if path.starts_with("/v1/messages") { InboundApi::Anthropic } else { InboundApi::OpenAi }
}
