//! `[online_evals.NAME]`: online evaluation (issue 15). A check of keel-eval's suite syntax (a deterministic
//! one, or a judge or similarity that asks a model through keel) runs on a sample of live requests of a route
//! or template, off the request path, and its score is stored as feedback of source `check` or `judge` with the
//! request. The check itself is compiled by keel-eval (this crate keeps it as written and checks its shape).
//!
//! ```toml
//! [online_evals.triage-schema]
//! template = "support-triage"
//! sample = 0.1
//! check = { type = "json_schema", schema = '{"type": "object", "required": ["label"]}' }
//!
//! [online_evals.helpful]
//! route = "smart"
//! sample = 0.02
//! check = { type = "judge", model = "smart", rubric = "Is the answer correct and helpful?" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnlineEval {
    pub route: Option<String>,
    pub template: Option<String>,
    pub sample: Option<f64>,
    pub check: Option<toml::Value>,
    pub embedding_model: Option<String>,
}

/// A validated online evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineEval {
    /// The feedback name its scores are stored under.
    pub name: String,
    /// Requests to this model alias (when set) …
    pub route: Option<String>,
    /// … and/or made with this template (when set).
    pub template: Option<String>,
    /// The fraction of matching requests evaluated, in (0, 1].
    pub sample: f64,
    /// The check, as written (keel-eval's `CheckSpec`: `type = "regex"`, `"json_schema"`, `"judge"`, …).
    pub check: toml::Value,
    /// The embeddings alias of a similarity check.
    pub embedding_model: Option<String>,
}

pub(crate) fn resolve_online(
    raw: &BTreeMap<String, RawOnlineEval>,
    aliases: &dyn Fn(&str) -> bool,
    templates: &dyn Fn(&str) -> bool,
    bodies_full: bool,
    errors: &mut Errors,
) -> BTreeMap<String, OnlineEval> {
    let mut out = BTreeMap::new();
    for (name, e) in raw {
        let path = format!("online_evals.{name}");
        let before = errors.0.len();
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.push(&path, "a name is 1 to 64 letters, digits, '-', '_' or '.'");
        }
        if e.route.is_none() && e.template.is_none() {
            errors.push(&path, "name the requests to evaluate: route = \"ALIAS\", template = \"NAME\", or both");
        }
        if let Some(r) = &e.route
            && !aliases(r)
        {
            errors.push(format!("{path}.route"), format!("unknown model alias {r:?}"));
        }
        if let Some(t) = &e.template
            && !templates(t)
        {
            errors.push(format!("{path}.template"), format!("unknown template {t:?}"));
        }
        let sample = e.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            errors.push(format!("{path}.sample"), format!("{sample} is not a fraction in (0, 1]"));
        }
        let check = match &e.check {
            Some(c @ toml::Value::Table(t)) if t.get("type").is_some_and(toml::Value::is_str) => c.clone(),
            _ => {
                errors.push(
                    format!("{path}.check"),
                    "required: a check table as in eval suites, e.g. { type = \"regex\", pattern = \"...\" }",
                );
                toml::Value::Boolean(false)
            }
        };
        if let Some(m) = &e.embedding_model
            && !aliases(m)
        {
            errors.push(format!("{path}.embedding_model"), format!("unknown model alias {m:?}"));
        }
        if !bodies_full {
            errors.push(
                &path,
                "online evaluation reads the prompt and the answer from the request log: set [log] enabled = true \
                 and bodies = \"full\"",
            );
        }
        if errors.0.len() == before {
            out.insert(
                name.clone(),
                OnlineEval {
                    name: name.clone(),
                    route: e.route.clone(),
                    template: e.template.clone(),
                    sample,
                    check,
                    embedding_model: e.embedding_model.clone(),
                },
            );
        }
    }
    out
}
