//! Secrets never echoed: an upstream's error can quote the credential keel sent ("Incorrect API key provided:
//! sk-…", "invalid header Authorization: Bearer …"), and that text would reach the client and the request log.
//! Every failure an HTTP provider returns passes through [`Scrubber::error`]: the provider's own secrets (its
//! API key, configured header values) are replaced wherever they appear, and so are the shapes of well-known
//! API keys and bearer tokens, whoever's they are.

use std::sync::OnceLock;

use keel_config::ProviderConfig;
use regex::Regex;

use crate::ProviderError;

/// What replaces a secret.
const REDACTED: &str = "[redacted]";

/// Key shapes of the vendors keel speaks to and of keel itself, and bearer credentials in any header quoted.
fn shapes() -> Option<&'static Regex> {
    static SHAPES: OnceLock<Option<Regex>> = OnceLock::new();
    SHAPES
        .get_or_init(|| {
            Regex::new(concat!(
                r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
                r"|\bsk-[A-Za-z0-9_-]{12,}",
                r"|\b(?:gsk|xai|pplx|csk)[_-][A-Za-z0-9_-]{16,}",
                r"|\bAIza[0-9A-Za-z_-]{30,}",
                r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
                r"|\bhf_[A-Za-z0-9]{20,}",
                r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
            ))
            .ok()
        })
        .as_ref()
}

/// One provider's secrets, and the known key shapes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub(crate) fn new(cfg: &ProviderConfig) -> Self {
        let mut secrets: Vec<String> = cfg.api_key.iter().map(|k| k.expose().to_string()).collect();
        // Header values may carry credentials (`Authorization`, `x-api-key`, a gateway's token).
        secrets.extend(cfg.headers.iter().map(|(_, v)| v.clone()));
        // Short values ("1", "true") are not secrets and would garble every message.
        secrets.retain(|s| s.len() >= 8);
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// `text` with every secret and key-shaped token replaced.
    pub(crate) fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        match shapes() {
            Some(re) => re.replace_all(&out, REDACTED).into_owned(),
            None => out,
        }
    }

    pub(crate) fn error(&self, mut e: ProviderError) -> ProviderError {
        e.message = self.text(&e.message);
        if let Some(code) = &e.code {
            e.code = Some(self.text(code));
        }
        e
    }
}

/// `fut`'s failure, scrubbed.
pub(crate) fn future<T: Send + 'static>(
    scrub: Scrubber,
    fut: impl std::future::Future<Output = Result<T, ProviderError>> + Send + 'static,
) -> futures::future::BoxFuture<'static, Result<T, ProviderError>> {
    use futures::FutureExt;
    fut.map(move |r| r.map_err(|e| scrub.error(e))).boxed()
}

/// A stream whose opening and every mid-stream failure are scrubbed.
pub(crate) fn stream(
    scrub: Scrubber,
    fut: impl std::future::Future<Output = Result<crate::ChatStream, ProviderError>> + Send + 'static,
) -> futures::future::BoxFuture<'static, Result<crate::ChatStream, ProviderError>> {
    use futures::{FutureExt, StreamExt};
    fut.map(move |r| match r {
        Ok(s) => {
            let scrub = scrub.clone();
            Ok(s.map(move |item| item.map_err(|e| scrub.error(e))).boxed())
        }
        Err(e) => Err(scrub.error(e)),
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber(key: &str) -> Scrubber {
        let mut s = Scrubber { secrets: vec![key.to_string()] };
        s.secrets.retain(|s| s.len() >= 8);
        s
    }

    #[test]
    fn the_providers_own_key_and_known_shapes_are_replaced() {
        let s = scrubber("my-internal-gateway-token-123");
        let cases = [
            (
                "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx. You can find your API key at …",
                "Incorrect API key provided: [redacted]. You can find your API key at …",
            ),
            ("invalid x-api-key: sk-ant-api03-AAAAAAAAAAAAAAAAAAAA", "invalid x-api-key: [redacted]"),
            ("provided: Bearer abc.def-ghi_jkl", "provided: [redacted]"),
            ("token my-internal-gateway-token-123 rejected", "token [redacted] rejected"),
            ("AKIAABCDEFGHIJKLMNOP is not allowed", "[redacted] is not allowed"),
            ("the model `gpt-4o` does not exist", "the model `gpt-4o` does not exist"),
            ("maximum context length is 8192 tokens", "maximum context length is 8192 tokens"),
        ];
        for (input, expected) in cases {
            assert_eq!(s.text(input), expected, "{input}");
        }
    }
}
