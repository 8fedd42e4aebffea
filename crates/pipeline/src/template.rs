//! Prompt templates (issue 15): a request that names a template (`keel_template: {"name", "variables",
//! "version"?}` in its body, either API) is expanded, at parse time, into the template's messages on the
//! template's model alias, with its parameters and output schema. What the client sent besides stays: messages
//! it sent follow the template's, and its own sampling parameters win over the template's. The template's name
//! and version travel in the context ([`TemplateUse`]) to the log, the metrics and the response headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_types::ChatRequest;
use keel_types::chat::{JsonSchemaFormat, Message, ResponseFormat, Role, Stop};

use crate::Rejection;

/// The body field that names a template.
pub const FIELD: &str = "keel_template";

/// The template a request used: its name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateUse {
    pub name: Arc<str>,
    pub version: Arc<str>,
}

/// The configured templates, compiled once.
#[derive(Debug, Default)]
pub struct Templates {
    env: minijinja::Environment<'static>,
    by_name: BTreeMap<String, keel_config::Template>,
}

/// What a request says in `keel_template`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    name: String,
    #[serde(default)]
    variables: serde_json::Map<String, serde_json::Value>,
    /// A version the client pins: the request is refused if the template changed since.
    version: Option<String>,
}

impl Templates {
    pub fn new(templates: &BTreeMap<String, keel_config::Template>) -> Result<Self, String> {
        let mut env = minijinja::Environment::new();
        // A variable printed and not given is an error; one only tested (`{% if hint %}`) is optional.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        // Prompts are text, not HTML: nothing is escaped.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(true);
        for t in templates.values() {
            env.add_template_owned(format!("{}/prompt", t.name), t.prompt.clone())
                .map_err(|e| format!("templates.{}.prompt: {e}", t.name))?;
            if let Some(s) = &t.system {
                env.add_template_owned(format!("{}/system", t.name), s.clone())
                    .map_err(|e| format!("templates.{}.system: {e}", t.name))?;
            }
        }
        Ok(Self { env, by_name: templates.clone() })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&keel_config::Template> {
        self.by_name.get(name)
    }

    /// Whether a request names a template (before [`Templates::expand`]; lets the APIs accept it without
    /// messages of its own).
    pub fn named(req: &ChatRequest) -> bool {
        req.extra.contains_key(FIELD)
    }

    /// Expands the template a request names; a request that names none is returned as it came.
    pub fn expand(&self, mut req: ChatRequest) -> Result<(ChatRequest, Option<TemplateUse>), Rejection> {
        let Some(raw) = req.extra.remove(FIELD) else { return Ok((req, None)) };
        if let Some(origin) = req.anthropic.as_mut() {
            origin.fields.retain(|f| f != FIELD);
        }
        let param = || Some(FIELD.to_string());
        let call: Call = serde_json::from_value(raw).map_err(|e| {
            Rejection::invalid(
                format!("{FIELD}: {e} (expected {{\"name\": \"...\", \"variables\": {{...}}, \"version\": \"...\"}})"),
                param(),
            )
        })?;
        let Some(t) = self.by_name.get(&call.name) else {
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.truncate(20);
            return Err(Rejection::invalid(
                format!(
                    "{FIELD}.name: no template {:?} in this keel gateway (configured: {})",
                    call.name,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
                Some(format!("{FIELD}.name")),
            ));
        };
        if let Some(v) = &call.version
            && *v != t.version
        {
            return Err(Rejection::invalid(
                format!("{FIELD}.version: template {:?} is at version {}, the request pins {v}", t.name, t.version),
                Some(format!("{FIELD}.version")),
            ));
        }
        if !req.model.is_empty() && req.model != t.name && req.model != t.model {
            return Err(Rejection::invalid(
                format!(
                    "model: template {:?} runs on model {:?}; send that, the template's name, or an empty model",
                    t.name, t.model
                ),
                Some("model".into()),
            ));
        }
        let missing: Vec<&str> =
            t.variables.iter().map(String::as_str).filter(|v| !call.variables.contains_key(*v)).collect();
        let vars = minijinja::Value::from_serialize(&call.variables);
        let render = |part: &str| -> Result<String, Rejection> {
            let tmpl = self.env.get_template(&format!("{}/{part}", t.name)).map_err(|e| {
                Rejection::invalid(format!("template {:?}: {e}", t.name), Some(format!("{FIELD}.name")))
            })?;
            tmpl.render(&vars).map_err(|e| {
                let hint =
                    if missing.is_empty() { String::new() } else { format!(" (not given: {})", missing.join(", ")) };
                Rejection::invalid(
                    format!("{FIELD}.variables: template {:?} cannot be rendered: {e}{hint}", t.name),
                    Some(format!("{FIELD}.variables")),
                )
            })
        };
        let mut messages = Vec::with_capacity(req.messages.len() + 2);
        if t.system.is_some() {
            messages.push(Message::new(Role::System, render("system")?));
        }
        messages.push(Message::new(Role::User, render("prompt")?));
        messages.append(&mut req.messages);
        req.messages = messages;
        req.model = t.model.clone();
        apply_params(&mut req, t);
        Ok((req, Some(TemplateUse { name: t.name.as_str().into(), version: t.version.as_str().into() })))
    }
}

/// The template's parameters, where the request set none of its own.
fn apply_params(req: &mut ChatRequest, t: &keel_config::Template) {
    let p = &t.params;
    if req.temperature.is_none() {
        req.temperature = p.get("temperature").and_then(serde_json::Value::as_f64);
    }
    if req.top_p.is_none() {
        req.top_p = p.get("top_p").and_then(serde_json::Value::as_f64);
    }
    if req.max_output_tokens().is_none() {
        req.max_tokens = p.get("max_tokens").and_then(|v| v.as_u64()).and_then(|n| u32::try_from(n).ok());
    }
    if req.seed.is_none() {
        req.seed = p.get("seed").and_then(serde_json::Value::as_i64);
    }
    if req.stop.is_none()
        && let Some(stop) = p.get("stop").and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
    {
        req.stop = Some(Stop::Many(stop));
    }
    if let Some(schema) = &t.response_schema
        && req.response_format.is_none()
    {
        req.response_format = Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: schema_name(&t.name),
                description: None,
                schema: Some(schema.clone()),
                strict: Some(true),
            },
        });
    }
}

/// OpenAI's schema names are `[a-zA-Z0-9_-]{1,64}`.
fn schema_name(template: &str) -> String {
    template.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use keel_types::chat::Content;

    fn text(m: &Message) -> Option<&str> {
        match &m.content {
            Some(Content::Text(s)) => Some(s),
            _ => None,
        }
    }

    fn templates() -> Templates {
        let cfg = keel_config::parse(
            r#"
[providers.local]
kind = "local"
[models.small]
provider = "local"
model = "smollm2"
[templates.mc]
model = "small"
system = "Answer with a letter."
prompt = "{{ question }}\n{% for c in choices %}{{ 'ABCD'[loop.index0] }}. {{ c }}\n{% endfor %}Answer:"
temperature = 0.0
max_tokens = 5
response_schema = '{"type": "object"}'
"#,
            &std::collections::HashMap::new(),
        )
        .unwrap();
        Templates::new(&cfg.templates).unwrap()
    }

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_named_template_becomes_its_messages_model_and_parameters() {
        let t = templates();
        let req = request(serde_json::json!({
            "model": "mc", "messages": [], "max_tokens": 9,
            "keel_template": {"name": "mc", "variables": {"question": "2+2?", "choices": ["3", "4"], "extra": 1}}
        }));
        let (req, used) = t.expand(req).unwrap();
        let used = used.unwrap();
        assert_eq!(&*used.name, "mc");
        assert_eq!(used.version.len(), 12);
        assert_eq!(req.model, "small");
        assert_eq!(text(&req.messages[0]), Some("Answer with a letter."));
        assert_eq!(text(&req.messages[1]), Some("2+2?\nA. 3\nB. 4\nAnswer:"));
        assert_eq!(req.temperature, Some(0.0));
        assert_eq!(req.max_tokens, Some(9), "the request's own value wins");
        assert!(matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })));
        assert!(!req.extra.contains_key(FIELD), "the field never reaches a provider");
    }

    #[test]
    fn a_request_without_a_template_is_untouched() {
        let req = request(serde_json::json!({"model": "small", "messages": [{"role": "user", "content": "hi"}]}));
        let (out, used) = templates().expand(req.clone()).unwrap();
        assert!(used.is_none());
        assert_eq!(out, req);
    }

    #[test]
    fn bad_calls_are_refused_with_the_field_at_fault() {
        let t = templates();
        let cases = [
            (serde_json::json!({"name": "nope"}), "keel_template.name"),
            (serde_json::json!({"name": "mc", "variables": {"question": "q"}}), "keel_template.variables"),
            (
                serde_json::json!({"name": "mc", "variables": {"question": "q", "choices": 3}}),
                "keel_template.variables",
            ),
            (
                serde_json::json!({"name": "mc", "version": "000000000000", "variables": {"question": "q", "choices": []}}),
                "keel_template.version",
            ),
            (serde_json::json!({"nom": "mc"}), "keel_template"),
        ];
        for (call, param) in cases {
            let req = request(serde_json::json!({"model": "", "messages": [], "keel_template": call}));
            let e = t.expand(req).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
        }
        let req = request(serde_json::json!({"model": "gpt-4o", "messages": [],
            "keel_template": {"name": "mc", "variables": {"question": "q", "choices": []}}}));
        assert_eq!(t.expand(req).unwrap_err().param.as_deref(), Some("model"));
    }
}
