//! The provider error: where a failure came from, what class it is, and whether another attempt can succeed.

use std::time::Duration;

use keel_config::ProviderId;

/// The class of a provider failure. The retry policy reads only [`ProviderError::retryable`]; the HTTP mapping
/// reads the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP or TLS connection could not be made; nothing was sent.
    Connect,
    /// The connection failed after the request was sent, before any response byte.
    ConnectionLost,
    /// No answer within the configured time.
    Timeout,
    /// 429 from the vendor.
    RateLimited,
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded,
    /// The vendor refused the content (moderation, safety filter).
    ContentFilter,
    /// 401 or 403: the key is wrong or lacks permission.
    Auth,
    /// 404: unknown model or deployment.
    NotFound,
    /// Any other 4xx: the request itself is wrong.
    InvalidRequest,
    /// 5xx (and Anthropic's 529 overloaded).
    Server,
    /// The answer does not follow the vendor's wire format (non-JSON, missing fields, malformed chunk).
    Protocol,
    /// The stream broke or ended before the answer was complete.
    StreamIncomplete,
    /// The request cannot be expressed in the vendor's API (for example `n > 1` for Anthropic).
    Unsupported,
    /// The answer does not satisfy what the request required of it (its JSON schema).
    InvalidOutput,
    /// Not sent: keel's circuit breaker for the target is open after repeated failures.
    CircuitOpen,
    /// keel itself is stopping: an answer still streaming at the shutdown deadline is cut with this error.
    Shutdown,
    /// Refused at once because the target's own bounded queue is full (keel's in-process model): back-pressure,
    /// not a fault. Not retried on the same target, not counted by its circuit breaker; another target may serve.
    Busy,
}

impl ErrorKind {
    /// The class's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::ContentFilter => "content_filter",
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Server => "server_error",
            ErrorKind::Protocol => "protocol",
            ErrorKind::StreamIncomplete => "stream_incomplete",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Busy => "busy",
            ErrorKind::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    pub provider: ProviderId,
    pub kind: ErrorKind,
    /// The upstream HTTP status, when the vendor answered with one.
    pub status: Option<u16>,
    pub message: String,
    /// The vendor's own error type or code (`"rate_limit_exceeded"`, `"overloaded_error"`), when it gave one.
    pub code: Option<String>,
    /// How long the vendor asked us to wait (`Retry-After`, `retry-after-ms`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(provider: &ProviderId, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { provider: provider.clone(), kind, status: None, message: message.into(), code: None, retry_after: None }
    }

    /// What the failure tells the target's circuit breaker: `Some(false)` for a fault of the target,
    /// `Some(true)` for a failure of the request on a working target, `None` for back-pressure (a full queue),
    /// which says neither.
    pub fn health(&self) -> Option<bool> {
        (self.kind != ErrorKind::Busy).then(|| !self.unhealthy())
    }

    /// Whether the failure says something about the target's health (the circuit breaker counts these), as
    /// opposed to something about the request.
    pub fn unhealthy(&self) -> bool {
        self.retryable()
            || matches!(
                self.kind,
                ErrorKind::Protocol | ErrorKind::StreamIncomplete | ErrorKind::Auth | ErrorKind::NotFound
            )
    }

    /// Whether the same request can succeed on another attempt at the same target.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connect
                | ErrorKind::ConnectionLost
                | ErrorKind::Timeout
                | ErrorKind::RateLimited
                | ErrorKind::Server
        )
    }
}
