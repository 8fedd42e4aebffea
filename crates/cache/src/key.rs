//! Cache keys: a canonical hash of everything that can change an answer.
//!
//! The exact key covers the whole request after alias resolution: the route (its alias, every target it may
//! reach, its schema and repair policy), every message with every field, tools, the response format, every
//! sampling and provider-specific parameter (including fields keel does not model, which travel in `extra`),
//! and the tenant. Only fields that cannot change the answer are left out ([`NOT_IN_KEY`]): how it is delivered
//! (`stream`, `stream_options`) and bookkeeping the provider does not act on (`user`, `metadata`, `store`).
//! The semantic scope is the same hash without the text of the user's messages, which the semantic layer
//! compares by meaning instead.

use keel_types::{ChatRequest, Content, Role};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Request fields that cannot change the answer and so are not part of any key.
pub const NOT_IN_KEY: &[&str] = &["stream", "stream_options", "user", "metadata", "store"];

/// Bumped whenever the key's construction changes, so that old entries are never read by a new keel.
const VERSION: &str = "keel-cache-v1";

/// A SHA-256 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// What, besides the request, a key depends on.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The route's identity: alias, targets, schema (`RoutePlan::fingerprint`).
    pub route: &'a str,
    /// Whose cache it is: the key's tenant, else the key itself; empty without keys.
    pub tenant: &'a str,
}

/// The exact key of `req`.
pub fn exact(req: &ChatRequest, scope: Scope<'_>) -> Key {
    let mut v = request_value(req);
    hash("exact", scope, &mut v)
}

/// The semantic scope of `req`: every part of the request but the text of its user messages, which must then
/// be similar in meaning (and pass the guards) for an earlier answer to be served. `None` when the request
/// cannot be compared by meaning: a user message with something other than text (an image, a file, audio).
pub fn semantic_scope(req: &ChatRequest, scope: Scope<'_>) -> Option<(Key, Vec<String>)> {
    let turns = user_turns(req)?;
    let mut v = request_value(req);
    if let Some(Value::Array(messages)) = v.get_mut("messages") {
        for m in messages.iter_mut() {
            if m.get("role").and_then(Value::as_str) == Some("user")
                && let Some(obj) = m.as_object_mut()
            {
                obj.remove("content");
            }
        }
    }
    Some((hash("semantic", scope, &mut v), turns))
}

/// The text of every user message, in order; `None` if one holds anything but text.
pub fn user_turns(req: &ChatRequest) -> Option<Vec<String>> {
    let mut turns = Vec::new();
    for m in req.messages.iter().filter(|m| m.role == Role::User) {
        match &m.content {
            Some(Content::Text(s)) => turns.push(s.clone()),
            Some(Content::Parts(parts)) => {
                if parts.iter().any(|p| p.kind != "text" || !p.extra.is_empty()) {
                    return None;
                }
                turns.push(parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join("\n"));
            }
            None => turns.push(String::new()),
        }
    }
    if turns.is_empty() { None } else { Some(turns) }
}

fn request_value(req: &ChatRequest) -> Value {
    let mut v = serde_json::to_value(req).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        for f in NOT_IN_KEY {
            obj.remove(*f);
        }
        // The alias is hashed through the route's fingerprint (which names it and what it resolves to).
        obj.remove("model");
        // Two spellings of one limit: normalised so that either finds the other's entry.
        if let Some(max) = obj.remove("max_completion_tokens") {
            obj.insert("max_tokens".into(), max);
        }
        // An Anthropic client's beta features change what Anthropic answers (its fields are in `extra` already).
        if let Some(beta) = req.anthropic.as_ref().and_then(|a| a.beta.as_deref()) {
            obj.insert("@anthropic-beta".into(), Value::String(beta.to_string()));
        }
    }
    v
}

fn hash(kind: &str, scope: Scope<'_>, v: &mut Value) -> Key {
    let mut h = Sha256::new();
    for part in [VERSION, kind, scope.route, scope.tenant] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    canonical(v, &mut h);
    Key(h.finalize().into())
}

/// Feeds `v` to the hasher in a canonical form: object keys sorted (whatever map type serde_json was built
/// with), every string length-prefixed so that no two values share an encoding.
fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            str(h, &n.to_string());
        }
        Value::String(s) => {
            h.update(b"s");
            str(h, s);
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update((a.len() as u64).to_le_bytes());
            for x in a {
                canonical(x, h);
            }
        }
        Value::Object(o) => {
            h.update(b"{");
            h.update((o.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_unstable();
            for k in keys {
                str(h, k);
                if let Some(x) = o.get(k) {
                    canonical(x, h);
                }
            }
        }
    }
}

fn str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const SCOPE: Scope<'static> = Scope { route: "route-a", tenant: "t1" };

    /// A request that sets every field keel models and a few it does not.
    fn full() -> Value {
        json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is 2+2?", "name": "alice"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"x\":2}"}}]},
                {"role": "tool", "content": "4", "tool_call_id": "c1"},
                {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "calc", "description": "adds",
                "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": "auto",
            "parallel_tool_calls": true,
            "response_format": {"type": "json_object"},
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 100,
            "stop": ["END"],
            "seed": 7,
            "n": 1,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.1,
            "logit_bias": {"50256": -100},
            "logprobs": false,
            "reasoning_effort": "low",
            "service_tier": "default",
            "prediction": {"type": "content", "content": "x"},
            "top_k": 40,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": false,
            "stream_options": {"include_usage": true},
            "user": "u1",
            "metadata": {"a": "b"},
            "store": false
        })
    }

    fn key_of(v: &Value, scope: Scope<'_>) -> Key {
        exact(&serde_json::from_value(v.clone()).unwrap(), scope)
    }

    /// Every leaf value of `v`, by JSON pointer.
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => o.iter().for_each(|(k, x)| leaves(x, format!("{at}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
            _ => out.push(at),
        }
    }

    fn changed(v: &Value) -> Value {
        match v {
            Value::Null => json!("set"),
            Value::Bool(b) => json!(!b),
            Value::Number(n) if n.is_f64() => json!(n.as_f64().unwrap() + 0.5),
            Value::Number(n) => json!(n.as_i64().unwrap() + 1),
            Value::String(s) if s == "function" || s == "text" || s == "content" || s == "enabled" => v.clone(),
            Value::String(s) => json!(format!("{s}!")),
            _ => v.clone(),
        }
    }

    #[test]
    fn every_field_that_can_change_the_answer_changes_the_key() {
        let base = full();
        let k0 = key_of(&base, SCOPE);
        let mut paths = Vec::new();
        leaves(&base, String::new(), &mut paths);
        let mut checked = 0;
        for p in &paths {
            let top = p.split('/').nth(1).unwrap();
            let mut v = base.clone();
            let leaf = v.pointer_mut(p).unwrap();
            let new = changed(leaf);
            if new == *leaf {
                continue; // an enum tag whose other values would not parse as this request
            }
            *leaf = new;
            let Ok(req) = serde_json::from_value::<ChatRequest>(v) else { continue };
            let k = exact(&req, SCOPE);
            if NOT_IN_KEY.contains(&top) || top == "model" {
                assert_eq!(k, k0, "{p} must not change the key");
            } else {
                assert_ne!(k, k0, "{p} must change the key");
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} fields checked");
    }

    #[test]
    fn adding_or_removing_a_field_changes_the_key() {
        let base = full();
        let k0 = key_of(&base, SCOPE);
        for field in ["temperature", "tools", "response_format", "reasoning_effort", "top_k", "seed", "stop"] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            assert_ne!(key_of(&v, SCOPE), k0, "removing {field}");
        }
        let mut v = base.clone();
        v["some_future_vendor_option"] = json!(1);
        assert_ne!(key_of(&v, SCOPE), k0);
        let mut v = base.clone();
        v["messages"].as_array_mut().unwrap().remove(0);
        assert_ne!(key_of(&v, SCOPE), k0, "the system prompt is part of the key");
    }

    #[test]
    fn route_and_tenant_are_part_of_the_key() {
        let base = full();
        let k0 = key_of(&base, SCOPE);
        assert_ne!(key_of(&base, Scope { route: "route-b", tenant: "t1" }), k0);
        assert_ne!(key_of(&base, Scope { route: "route-a", tenant: "t2" }), k0);
        assert_ne!(key_of(&base, Scope { route: "route-a", tenant: "" }), k0);
    }

    #[test]
    fn the_key_is_canonical() {
        // Key order in objects and the spelling of the output limit do not matter.
        let a: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"max_tokens":9,"x":{"b":1,"a":2}}"#,
        )
        .unwrap();
        let b: ChatRequest = serde_json::from_str(
            r#"{"x":{"a":2,"b":1},"max_completion_tokens":9,"temperature":0.5,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(exact(&a, SCOPE), exact(&b, SCOPE));
        // A string cannot collide with the concatenation of two others.
        let c: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"ab"}]}"#).unwrap();
        let d: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#,
        )
        .unwrap();
        assert_ne!(exact(&c, SCOPE), exact(&d, SCOPE));
    }

    #[test]
    fn the_semantic_scope_ignores_only_user_text() {
        let base = full();
        let req: ChatRequest = serde_json::from_value(base.clone()).unwrap();
        let (s0, turns) = semantic_scope(&req, SCOPE).unwrap();
        assert_eq!(turns, vec!["What is 2+2?".to_string(), "And 3+3?".to_string()]);
        let mut v = base.clone();
        v["messages"][1]["content"] = json!("What's two plus two?");
        let (s1, _) = semantic_scope(&serde_json::from_value(v).unwrap(), SCOPE).unwrap();
        assert_eq!(s0, s1, "user text is compared by meaning, not hashed");
        for (p, new) in [
            ("/messages/0/content", json!("You are verbose.")),
            ("/messages/3/content", json!("5")),
            ("/messages/1/name", json!("bob")),
            ("/temperature", json!(0.9)),
            ("/tools/0/function/name", json!("mul")),
        ] {
            let mut v = base.clone();
            *v.pointer_mut(p).unwrap() = new;
            let (s, _) = semantic_scope(&serde_json::from_value(v).unwrap(), SCOPE).unwrap();
            assert_ne!(s, s0, "{p} is part of the semantic scope");
        }
        let mut v = base.clone();
        v["messages"][4]["content"] = json!([{"type": "image_url", "image_url": {"url": "data:,"}}]);
        assert!(semantic_scope(&serde_json::from_value(v).unwrap(), SCOPE).is_none(), "images are not compared");
    }
}
