//! Reading the error bodies of OpenAI-compatible vendors, which differ: `{"error":{"message":…}}` (OpenAI),
//! `{"error":"…"}` (Ollama), `{"detail":…}` (FastAPI-based servers), `{"message":…}` (Mistral, vLLM).

use keel_config::ProviderId;
use serde_json::Value;

use crate::http::{kind_of_status, refine, snippet};
use crate::{ErrorKind, ProviderError};

pub(crate) fn classify(provider: &ProviderId, status: u16, body: &[u8]) -> ProviderError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let (message, code) = match &json {
        Some(v) => message_and_code(v),
        None => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        if body.is_empty() {
            format!("upstream returned HTTP {status}")
        } else {
            format!("upstream returned HTTP {status}: {}", snippet(body))
        }
    });
    let kind = refine(kind_of_status(status), code.as_deref(), &message);
    ProviderError { status: Some(status), code, ..ProviderError::new(provider, kind, message) }
}

/// An `{"error": …}` object sent as a stream event, if `data` is one.
pub(crate) fn stream_error(provider: &ProviderId, data: &str) -> Option<ProviderError> {
    let v: Value = serde_json::from_str(data).ok()?;
    v.get("error")?;
    let (message, code) = message_and_code(&v);
    let message = message.unwrap_or_else(|| "upstream reported an error mid-stream".to_string());
    let kind = refine(ErrorKind::Server, code.as_deref(), &message);
    Some(ProviderError { code, ..ProviderError::new(provider, kind, message) })
}

fn message_and_code(v: &Value) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    if let Some(err) = v.get("error") {
        if err.is_object() {
            let code = text(err.get("code")).or_else(|| text(err.get("type")));
            return (text(err.get("message")), code);
        }
        return (text(Some(err)), None);
    }
    (text(v.get("message")).or_else(|| text(v.get("detail"))), text(v.get("code")).or_else(|| text(v.get("type"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &str) -> (ErrorKind, String) {
        let e = classify(&ProviderId::from("p"), status, body.as_bytes());
        (e.kind, e.message)
    }

    #[test]
    fn bodies_of_every_vendor_shape() {
        assert_eq!(
            kind(400, r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#).0,
            ErrorKind::ContextLengthExceeded
        );
        assert_eq!(kind(400, r#"{"error":{"message":"x","code":"content_filter"}}"#).0, ErrorKind::ContentFilter);
        assert_eq!(kind(429, r#"{"error":"slow down"}"#), (ErrorKind::RateLimited, "slow down".to_string()));
        assert_eq!(
            kind(422, r#"{"detail":[{"msg":"bad"}]}"#),
            (ErrorKind::InvalidRequest, r#"[{"msg":"bad"}]"#.to_string())
        );
        assert_eq!(
            kind(502, "<html>bad gateway</html>"),
            (ErrorKind::Server, "upstream returned HTTP 502: <html>bad gateway</html>".to_string())
        );
        assert_eq!(kind(503, "").1, "upstream returned HTTP 503");
    }
}
