//! What every HTTP-speaking provider shares: the client, status classification and transport errors.

use std::time::{Duration, SystemTime};

use keel_config::{ProviderConfig, ProviderId};

use crate::{ErrorKind, ProviderError};

/// A reqwest client tuned for one upstream: pooled keep-alive connections, no Nagle delay, and the provider's
/// connect timeout. The overall deadline is applied per call by the caller, since streams outlive any fixed one.
pub(crate) fn client(cfg: &ProviderConfig) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::new(&cfg.id, ErrorKind::Connect, format!("cannot build HTTP client: {e}")))
}

/// Sends a request and returns the response if its status is a success; otherwise the failure, classified by
/// the vendor's `classify` from the status and error body, with the vendor's `Retry-After`.
pub(crate) async fn send(
    provider: &ProviderId,
    rb: reqwest::RequestBuilder,
    classify: fn(&ProviderId, u16, &[u8]) -> ProviderError,
) -> Result<reqwest::Response, ProviderError> {
    let resp = rb.send().await.map_err(|e| transport_error(provider, &e))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let body = resp.bytes().await.unwrap_or_default();
    let mut err = classify(provider, status, &body);
    err.retry_after = retry_after;
    Err(err)
}

/// Classifies a failure of reqwest before a response arrived.
pub(crate) fn transport_error(provider: &ProviderId, e: &reqwest::Error) -> ProviderError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::ConnectionLost
    };
    ProviderError::new(provider, kind, format!("request failed: {}", error_chain(e)))
}

/// The full cause chain of an error; reqwest's top-level message alone ("error sending request") hides it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The class of an HTTP error status, before the vendor's body refines it.
pub(crate) fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        413 => ErrorKind::ContextLengthExceeded,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::InvalidRequest,
    }
}

/// Refines the class of a failure by the vendor's code and message: context overflow and content filtering look
/// like any other 400, but must not be retried on the same model.
pub(crate) fn refine(kind: ErrorKind, code: Option<&str>, message: &str) -> ErrorKind {
    let code = code.unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    if code == "context_length_exceeded"
        || lower.contains("maximum context length")
        || lower.contains("context length")
        || lower.contains("context window")
        || lower.contains("prompt is too long")
    {
        ErrorKind::ContextLengthExceeded
    } else if code == "content_filter"
        || code == "content_policy_violation"
        || lower.contains("content management policy")
        || lower.contains("content_filter")
    {
        ErrorKind::ContentFilter
    } else {
        kind
    }
}

/// `Retry-After` (seconds or an HTTP date) or the vendors' `retry-after-ms`.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The first bytes of an unexpected body, for an error message.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    match trimmed.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
