//! What of a request's bodies and headers its log row keeps: the body policy (full, redacted, none) with a size
//! bound, and the client's tags and metadata.

use axum::http::HeaderMap;
use keel_config::BodyPolicy;
use serde_json::Value;

/// A body as the policy keeps it: `raw` when the bytes are at hand, else the JSON `json` makes (only called
/// when the policy keeps something).
pub(super) fn kept(
    policy: BodyPolicy,
    max: usize,
    json: impl FnOnce() -> Option<Value>,
    raw: Option<&[u8]>,
) -> Option<String> {
    let text = match policy {
        BodyPolicy::None => return None,
        BodyPolicy::Full => match raw {
            Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            None => json()?.to_string(),
        },
        BodyPolicy::Redacted => {
            let mut v = match raw {
                Some(bytes) => serde_json::from_slice(bytes).ok()?,
                None => json()?,
            };
            redact(&mut v, false);
            v.to_string()
        }
    };
    Some(truncate(text, max))
}

/// `x-keel-tags: a,b` and `x-keel-metadata: {"k": "v"}` (a JSON object), kept with the row.
pub(crate) fn metadata(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(meta) = headers.get("x-keel-metadata").and_then(|v| v.to_str().ok()) {
        match serde_json::from_str::<Value>(meta) {
            Ok(Value::Object(m)) => out.extend(m),
            _ => {
                out.insert("x-keel-metadata".into(), Value::String(meta.to_string()));
            }
        }
    }
    if let Some(tags) = headers.get("x-keel-tags").and_then(|v| v.to_str().ok()) {
        let tags: Vec<Value> =
            tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::String(t.into())).collect();
        out.insert("tags".into(), Value::Array(tags));
    }
    Value::Object(out)
}

/// Replaces every text a person wrote or a model generated with its length, keeping the JSON's shape (model,
/// parameters, roles, tool names).
fn redact(v: &mut Value, inside_text: bool) {
    const TEXT_KEYS: [&str; 7] = ["content", "text", "arguments", "input", "prompt", "system", "thinking"];
    match v {
        Value::String(s) if inside_text => *s = format!("[redacted: {} chars]", s.chars().count()),
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, inside_text)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                // `type` names a part's kind ("text", "image_url"), not content.
                redact(item, (inside_text || TEXT_KEYS.contains(&k.as_str())) && k != "type");
            }
        }
        _ => {}
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn redaction_keeps_the_shape_and_hides_every_text() {
        let mut v = serde_json::json!({
            "model": "gpt-4o",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "secret system prompt"},
                {"role": "user", "content": [{"type": "text", "text": "my card is 4111"}]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]}
            ],
            "input": ["embed me"]
        });
        redact(&mut v, false);
        let s = v.to_string();
        assert!(
            !s.contains("secret") && !s.contains("4111") && !s.contains("embed me") && !s.contains("\\\"q\\\""),
            "{s}"
        );
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][0]["content"], "[redacted: 20 chars]");
        assert_eq!(v["messages"][2]["tool_calls"][0]["function"]["name"], "lookup");
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h…[truncated]");
        assert_eq!(truncate("short".into(), 10), "short");
    }

    #[test]
    fn metadata_comes_from_the_keel_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-keel-tags", "checkout, beta,".parse().unwrap());
        h.insert("x-keel-metadata", r#"{"team":"payments"}"#.parse().unwrap());
        assert_eq!(metadata(&h), serde_json::json!({"team": "payments", "tags": ["checkout", "beta"]}));
        let mut h = HeaderMap::new();
        h.insert("x-keel-metadata", "not json".parse().unwrap());
        assert_eq!(metadata(&h), serde_json::json!({"x-keel-metadata": "not json"}));
    }
}
