//! `[templates.NAME]`: prompts as named, versioned templates (issue 15). A client calls one by name with its
//! variables (`keel_template` in the request body); keel renders the messages, runs them on the template's
//! model alias with its parameters and output schema, and records the template's name and version with the
//! request. The version is a content hash: changing the text, the schema, the model or a parameter is a new
//! version, and nothing else is.
//!
//! ```toml
//! [templates.support-triage]
//! model = "smollm2"
//! system = "You sort support tickets."
//! prompt = "Ticket: {{ ticket }}\nAnswer with one of: billing, bug, other."
//! response_schema = '{"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}'
//! temperature = 0.0
//! max_tokens = 64
//! ```
//!
//! Templates are Jinja (minijinja): `{{ var }}`, filters, `{% for %}` over list variables. A variable the
//! template prints and the request does not give is an error, never an empty string; one it only tests
//! (`{% if hint %}`) is optional.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::Digest as _;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub model: Option<String>,
    pub system: Option<String>,
    pub prompt: Option<String>,
    pub response_schema: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
}

/// A validated template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    /// The model alias it runs on.
    pub model: String,
    /// The system message (a template too), if any.
    pub system: Option<String>,
    /// The user message.
    pub prompt: String,
    /// The JSON Schema its answers must match (sent as `response_format: json_schema` and validated).
    pub response_schema: Option<serde_json::Value>,
    /// Sampling parameters it sets on every request (the request's own values win).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The variables it uses, sorted.
    pub variables: Vec<String>,
    /// The content hash: 12 hex digits of SHA-256 over everything above but the name.
    pub version: String,
}

/// The longest template text accepted (system or prompt).
const MAX_TEMPLATE_BYTES: usize = 64 << 10;

/// A template name: what clients send, and what suites and the log refer to.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn resolve_templates(
    raw: &BTreeMap<String, RawTemplate>,
    aliases: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) -> BTreeMap<String, Template> {
    let mut out = BTreeMap::new();
    for (name, t) in raw {
        if let Some(t) = resolve_template(name, t, aliases, errors) {
            out.insert(name.clone(), t);
        }
    }
    out
}

fn resolve_template(
    name: &str,
    raw: &RawTemplate,
    aliases: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) -> Option<Template> {
    let path = format!("templates.{name}");
    let before = errors.0.len();
    if !valid_name(name) {
        errors.push(&path, "a template name is 1 to 64 letters, digits, '-', '_' or '.'");
    }
    let model = match raw.model.as_deref() {
        Some(m) if aliases(m) => m.to_string(),
        Some(m) => {
            errors.push(format!("{path}.model"), format!("unknown model alias {m:?}"));
            String::new()
        }
        None => {
            errors.push(format!("{path}.model"), "required: the model alias the template runs on");
            String::new()
        }
    };
    let prompt = match raw.prompt.as_deref() {
        Some(p) if !p.trim().is_empty() => p.to_string(),
        _ => {
            errors.push(format!("{path}.prompt"), "required: the user message (a Jinja template)");
            String::new()
        }
    };
    let mut variables = std::collections::BTreeSet::new();
    for (field, text) in [("prompt", Some(prompt.as_str())), ("system", raw.system.as_deref())] {
        let Some(text) = text else { continue };
        if text.len() > MAX_TEMPLATE_BYTES {
            errors.push(format!("{path}.{field}"), format!("longer than {MAX_TEMPLATE_BYTES} bytes"));
            continue;
        }
        match used_variables(text) {
            Ok(vars) => variables.extend(vars),
            Err(e) => errors.push(format!("{path}.{field}"), format!("not a valid template: {e}")),
        }
    }
    let response_schema = raw.response_schema.as_deref().and_then(|text| {
        let at = format!("{path}.response_schema");
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(schema) if schema.is_object() => match jsonschema::validator_for(&schema) {
                Ok(_) => Some(schema),
                Err(e) => {
                    errors.push(at, format!("not a valid JSON Schema: {e}"));
                    None
                }
            },
            Ok(_) => {
                errors.push(at, "a JSON Schema is an object");
                None
            }
            Err(e) => {
                errors.push(at, format!("not JSON: {e}"));
                None
            }
        }
    });
    let mut params = serde_json::Map::new();
    let mut number = |key: &str, v: Option<f64>, range: std::ops::RangeInclusive<f64>, errors: &mut Errors| {
        if let Some(v) = v {
            if range.contains(&v) {
                params.insert(key.into(), serde_json::json!(v));
            } else {
                errors.push(format!("{path}.{key}"), format!("must be within {}..={}", range.start(), range.end()));
            }
        }
    };
    number("temperature", raw.temperature, 0.0..=2.0, errors);
    number("top_p", raw.top_p, 0.0..=1.0, errors);
    match raw.max_tokens {
        Some(0) => errors.push(format!("{path}.max_tokens"), "must be greater than 0"),
        Some(n) => {
            params.insert("max_tokens".into(), n.into());
        }
        None => {}
    }
    if let Some(s) = raw.seed {
        params.insert("seed".into(), s.into());
    }
    if let Some(stop) = &raw.stop {
        if stop.is_empty() || stop.len() > 4 || stop.iter().any(String::is_empty) {
            errors.push(format!("{path}.stop"), "1 to 4 non-empty strings");
        } else {
            params.insert("stop".into(), stop.clone().into());
        }
    }
    if errors.0.len() > before {
        return None;
    }
    let version = version_of(&model, raw.system.as_deref(), &prompt, response_schema.as_ref(), &params);
    Some(Template {
        name: name.to_string(),
        model,
        system: raw.system.clone(),
        prompt,
        response_schema,
        params,
        variables: variables.into_iter().collect(),
        version,
    })
}

/// The variables a template text reads (top level names only), or why it does not parse.
pub fn used_variables(text: &str) -> Result<Vec<String>, String> {
    let env = minijinja::Environment::new();
    let t = env.template_from_str(text).map_err(|e| e.to_string())?;
    let mut v: Vec<String> = t.undeclared_variables(false).into_iter().collect();
    v.sort();
    Ok(v)
}

/// The version of a template: what it sends, hashed canonically (JSON with sorted keys).
fn version_of(
    model: &str,
    system: Option<&str>,
    prompt: &str,
    schema: Option<&serde_json::Value>,
    params: &serde_json::Map<String, serde_json::Value>,
) -> String {
    // serde_json's Map is a BTreeMap here (no `preserve_order` feature): keys serialize sorted.
    let canonical = serde_json::json!({
        "model": model,
        "system": system,
        "prompt": prompt,
        "response_schema": schema,
        "params": params,
    });
    let digest = sha2::Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn one(raw: RawTemplate) -> Result<Template, Vec<String>> {
        let mut errors = Errors(Vec::new());
        let mut m = BTreeMap::new();
        m.insert("t".to_string(), raw);
        let out = resolve_templates(&m, &|a| a == "small" || a == "large", &mut errors);
        if errors.0.is_empty() {
            Ok(out.into_values().next().unwrap())
        } else {
            Err(errors.0.iter().map(ToString::to_string).collect())
        }
    }

    fn base() -> RawTemplate {
        RawTemplate {
            model: Some("small".into()),
            system: Some("You are {{ persona }}.".into()),
            prompt: Some("Q: {{ question }}\n{% for c in choices %}{{ c }}\n{% endfor %}".into()),
            ..RawTemplate::default()
        }
    }

    #[test]
    fn variables_are_read_from_both_texts_and_loop_names_are_not_variables() {
        let t = one(base()).unwrap();
        assert_eq!(t.variables, ["choices", "persona", "question"]);
        assert_eq!(t.version.len(), 12);
    }

    #[test]
    fn the_version_changes_with_what_is_sent_and_only_with_that() {
        let v = one(base()).unwrap().version;
        assert_eq!(one(base()).unwrap().version, v, "deterministic");
        let changed = [
            RawTemplate { prompt: Some("Question: {{ question }}".into()), ..base() },
            RawTemplate { system: None, ..base() },
            RawTemplate { model: Some("large".into()), ..base() },
            RawTemplate { temperature: Some(0.5), ..base() },
            RawTemplate { response_schema: Some(r#"{"type": "object"}"#.into()), ..base() },
        ];
        for (i, raw) in changed.into_iter().enumerate() {
            assert_ne!(one(raw).unwrap().version, v, "change {i}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errs = one(RawTemplate {
            model: Some("nope".into()),
            prompt: Some("{{ unclosed".into()),
            response_schema: Some("[1]".into()),
            temperature: Some(3.0),
            max_tokens: Some(0),
            ..RawTemplate::default()
        })
        .unwrap_err();
        let text = errs.join("\n");
        for path in ["t.model", "t.prompt", "t.response_schema", "t.temperature", "t.max_tokens"] {
            assert!(text.contains(path), "{path} missing in {text}");
        }
    }
}
