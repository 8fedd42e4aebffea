//! Structured output: an answer that must satisfy a JSON schema is checked before it is used, and a failing
//! one is sent back to the model with the violations, for a bounded number of repairs.

use std::sync::Arc;

use jsonschema::Validator;
use keel_types::{ChatRequest, Content, Message, ResponseFormat, Role};

/// A compiled schema, shared by the requests of one route or made for one request.
#[derive(Clone)]
pub struct Schema(Arc<Validator>);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema(..)")
    }
}

/// A JSON schema that does not compile, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSchema(pub String);

impl Schema {
    pub fn compile(schema: &serde_json::Value) -> Result<Self, InvalidSchema> {
        jsonschema::validator_for(schema).map(|v| Schema(Arc::new(v))).map_err(|e| InvalidSchema(e.to_string()))
    }

    /// The schema the answer to `req` must satisfy: the request's `json_schema` response format, else the
    /// route's. A request schema that does not compile is reported as an error.
    pub(crate) fn for_request(req: &ChatRequest, route: Option<&Schema>) -> Result<Option<Schema>, String> {
        if let Some(ResponseFormat::JsonSchema { json_schema }) = &req.response_format
            && let Some(schema) = &json_schema.schema
        {
            return Schema::compile(schema).map(Some).map_err(|e| format!("response_format.json_schema.schema: {e}"));
        }
        Ok(route.cloned())
    }

    /// Every violation of `text` (which must be JSON), as readable lines; empty when valid.
    pub(crate) fn violations(&self, text: &str) -> Vec<String> {
        let value: serde_json::Value = match serde_json::from_str(text.trim()) {
            Ok(v) => v,
            Err(e) => return vec![format!("the answer is not valid JSON: {e}")],
        };
        self.0
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path.to_string();
                if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
            })
            .collect()
    }
}

/// The conversation extended with the invalid answer and a request to fix it.
pub(crate) fn repair_request(req: &ChatRequest, answer: &str, violations: &[String]) -> ChatRequest {
    let mut repaired = req.clone();
    repaired.messages.push(Message::new(Role::Assistant, answer));
    let list = violations.iter().map(|v| format!("- {v}")).collect::<Vec<_>>().join("\n");
    repaired.messages.push(Message {
        content: Some(Content::Text(format!(
            "Your previous answer does not match the required JSON schema:\n{list}\n\
             Answer again with only the corrected JSON, nothing else."
        ))),
        ..Message::new(Role::User, "")
    });
    repaired
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn violations_name_the_place() {
        let s = Schema::compile(&serde_json::json!({
            "type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}
        }))
        .unwrap();
        assert!(s.violations(r#"{"n": 3}"#).is_empty());
        assert_eq!(s.violations(r#"{"n": "x"}"#), [r#"at /n: "x" is not of type "integer""#]);
        assert_eq!(s.violations("{}"), [r#""n" is a required property"#]);
        assert!(s.violations("not json")[0].starts_with("the answer is not valid JSON"));
    }
}
