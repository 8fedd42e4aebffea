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

/// How much of an error body is read: enough for any vendor's error message, and no more whatever the upstream
/// sends.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Sends a request and returns the response if its status is a success; otherwise the failure, classified by
/// the vendor's `classify` from the status and (the first 64 KiB of the) error body, with the vendor's
/// `Retry-After`.
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
    let body = match read_body(provider, resp, MAX_ERROR_BODY as u64).await {
        Ok(b) | Err(BodyError::TooLarge(b)) => b,
        Err(BodyError::Transport(_)) => Vec::new(),
    };
    let mut err = classify(provider, status, &body);
    err.retry_after = retry_after;
    Err(err)
}

/// Why a body could not be read whole.
pub(crate) enum BodyError {
    /// Longer than the limit; what was read up to it.
    TooLarge(Vec<u8>),
    Transport(ProviderError),
}

/// Reads a response body of at most `limit` bytes, chunk by chunk: an upstream that sends more (or announces
/// more in `Content-Length`) costs keel no more than `limit`.
pub(crate) async fn read_body(
    provider: &ProviderId,
    mut resp: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    let announced = resp.content_length().unwrap_or(0);
    let mut body = Vec::with_capacity(usize::try_from(announced.min(limit).min(1 << 20)).unwrap_or(0));
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return Err(BodyError::TooLarge(body));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let mut err = transport_error(provider, &e);
                if err.kind == ErrorKind::ConnectionLost {
                    // The status line came: the answer broke part-way.
                    err.kind = ErrorKind::StreamIncomplete;
                }
                return Err(BodyError::Transport(err));
            }
        }
    }
}

/// A successful answer's body, at most `limit` bytes; longer is a protocol error naming the limit.
pub(crate) async fn answer_body(
    provider: &ProviderId,
    resp: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, ProviderError> {
    read_body(provider, resp, limit).await.map_err(|e| match e {
        BodyError::TooLarge(_) => too_large(provider, limit),
        BodyError::Transport(e) => e,
    })
}

/// The failure of an answer longer than the provider's `max_response_bytes`.
pub(crate) fn too_large(provider: &ProviderId, limit: u64) -> ProviderError {
    let mut e = ProviderError::new(
        provider,
        ErrorKind::Protocol,
        format!("the upstream's answer is larger than max_response_bytes ({limit} bytes); not read further"),
    );
    e.code = Some("response_too_large".into());
    e
}

/// The longest line of a streamed answer: an SSE line holds one event's data (one JSON chunk, a few hundred
/// bytes to tens of kilobytes). The SSE parser rescans an unfinished event as bytes arrive, so this also bounds
/// the work an upstream that never ends its line can cause.
pub(crate) const MAX_SSE_LINE: usize = 1 << 20;

/// The body of a streamed answer, bounded in total bytes and in line length: past either, the stream yields
/// one error and ends.
pub(crate) fn bounded_stream<S, E>(
    body: S,
    limit: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, BoundedError<E>>> + Send + 'static
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    use futures::StreamExt;
    let mut seen: u64 = 0;
    let mut line: usize = 0;
    let mut over = false;
    body.scan((), move |(), item| {
        if over {
            return futures::future::ready(None);
        }
        futures::future::ready(Some(match item {
            Ok(chunk) => {
                seen = seen.saturating_add(chunk.len() as u64);
                line = match chunk.iter().rposition(|b| *b == b'\n') {
                    Some(i) => chunk.len() - i - 1,
                    None => line.saturating_add(chunk.len()),
                };
                if seen > limit {
                    over = true;
                    Err(BoundedError::TooLarge(limit))
                } else if line > MAX_SSE_LINE {
                    over = true;
                    Err(BoundedError::LineTooLong)
                } else {
                    Ok(chunk)
                }
            }
            Err(e) => Err(BoundedError::Transport(e)),
        }))
    })
}

/// Why a bounded stream's body broke.
#[derive(Debug)]
pub(crate) enum BoundedError<E> {
    TooLarge(u64),
    LineTooLong,
    Transport(E),
}

impl<E: std::error::Error> std::fmt::Display for BoundedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundedError::TooLarge(limit) => write!(f, "stream larger than max_response_bytes ({limit} bytes)"),
            BoundedError::LineTooLong => write!(f, "a stream line longer than {MAX_SSE_LINE} bytes"),
            BoundedError::Transport(e) => f.write_str(&error_chain(e)),
        }
    }
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

/// The longest wait an upstream's `Retry-After` is read as: longer values (`1e20`, a date in the next century)
/// mean "not soon", and the retry policy's cap refuses anything near this anyway.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` (seconds or an HTTP date) or the vendors' `retry-after-ms`, at most [`RETRY_AFTER_MAX`].
/// Upstream bytes: any value, however large, negative or malformed, gives a duration or `None`, never a panic.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds = |v: f64| {
        (v.is_finite() && v >= 0.0)
            .then(|| Duration::try_from_secs_f64(v).unwrap_or(RETRY_AFTER_MAX).min(RETRY_AFTER_MAX))
    };
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && let Some(d) = seconds(ms / 1000.0)
    {
        return Some(d);
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).min(RETRY_AFTER_MAX))
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

    #[test]
    fn huge_and_odd_retry_after_values_do_not_panic() {
        let day = Some(Duration::from_secs(24 * 3600));
        for (header, value, expected) in [
            ("retry-after", "1e20", day),
            ("retry-after", "18446744073709551616", day),
            ("retry-after", "1.7e308", day),
            ("retry-after", "1e400", None),
            ("retry-after", "inf", None),
            ("retry-after", "NaN", None),
            ("retry-after", "-1", None),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", day),
            ("retry-after-ms", "1e300", day),
            ("retry-after-ms", "-5", None),
        ] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(header, value.parse().unwrap());
            assert_eq!(retry_after(&h), expected, "{header}: {value}");
        }
    }
}
