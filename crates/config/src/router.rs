//! `[routers.NAME]`: names a client may send as its model that choose, per request, which model alias serves it
//! (issue 16). Three kinds, one per router:
//!
//! ```toml
//! # Rules: the first rule whose conditions all hold picks the alias; none does: `default`.
//! [routers.auto]
//! default = "large"
//! rules = [
//!   { to = "small", templates = ["triage"] },
//!   { to = "small", tasks = ["classification", "extraction"], max_prompt_tokens = 2000, tools = false },
//!   { to = "small", tags = ["bulk"] },
//!   { to = "large", metadata = { tier = "enterprise" } },
//! ]
//!
//! # Cascade: the cheapest alias first; its answer is checked, and only a failed check escalates to the next.
//! [routers.cheap-first]
//! cascade = ["small", "large"]
//! check = { type = "labels", labels = ["positive", "negative", "neutral"] }
//! stream = "buffer"      # a streamed request: the cheap answer is checked before its first byte is sent
//!
//! # Learned: a classifier over the prompt's embedding predicts whether `small` will pass; below the threshold
//! # the request goes to `large`. The weights come from `keel route train` (eval runs of both aliases).
//! [routers.predicted]
//! learned = { weights = "routers/arc.json", small = "small", large = "large", embedding = "all-minilm-l6-v2" }
//! ```
//!
//! A rule sends to a model alias, a cascade or a learned router; a cascade's steps and a learned router's two
//! sides are model aliases. So no router reaches itself.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    pub default: Option<String>,
    pub rules: Option<Vec<RawRule>>,
    pub cascade: Option<Vec<String>>,
    pub check: Option<RawCheck>,
    pub stream: Option<String>,
    pub learned: Option<RawLearned>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLearned {
    pub weights: Option<std::path::PathBuf>,
    pub small: Option<String>,
    pub large: Option<String>,
    pub embedding: Option<String>,
    pub threshold: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub to: Option<String>,
    #[serde(default)]
    pub templates: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub tools: Option<bool>,
    pub schema: Option<bool>,
    #[serde(default)]
    pub tasks: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub labels: Option<Vec<String>>,
    pub case_sensitive: Option<bool>,
    pub pattern: Option<String>,
    pub min_mean_logprob: Option<f64>,
    pub model: Option<String>,
    pub rubric: Option<String>,
    pub min_score: Option<u8>,
}

/// A validated router.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    pub name: String,
    pub kind: RouterKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouterKind {
    Rules { rules: Vec<Rule>, default: String },
    Cascade(Cascade),
    Learned(Learned),
}

/// A learned router: the probability that `small` passes, predicted from the prompt's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// The file `keel route train` wrote (relative to the working directory, like the store's path).
    pub weights: std::path::PathBuf,
    /// The cheap alias, served when the predicted probability is at least the threshold.
    pub small: String,
    /// The alias served otherwise (and when the prompt cannot be embedded).
    pub large: String,
    /// The embeddings alias; the weights file names the model it was trained on, which must be this alias's.
    pub embedding: String,
    /// Overrides the threshold the weights file was trained for.
    pub threshold: Option<f64>,
}

/// One rule: every condition given must hold (a list holds when any of its items does).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    pub to: String,
    /// The request names one of these templates (`keel_template`).
    pub templates: Vec<String>,
    /// The request carries one of these tags (`x-keel-tags`).
    pub tags: Vec<String>,
    /// The request's metadata (`x-keel-metadata`, OpenAI `metadata`) has each of these keys with this value.
    pub metadata: BTreeMap<String, String>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    /// The request offers tools (`true`) or none (`false`).
    pub tools: Option<bool>,
    /// The request asks for a JSON schema or JSON output (`true`) or not (`false`).
    pub schema: Option<bool>,
    /// The detected task is one of these.
    pub tasks: Vec<Task>,
}

/// What a request asks the model to do, as keel's task detector reads its last user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Classification,
    Extraction,
    Math,
    Code,
    Summarization,
    Translation,
    /// Anything else: open-ended generation, conversation, reasoning.
    Generation,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Classification,
        Task::Extraction,
        Task::Math,
        Task::Code,
        Task::Summarization,
        Task::Translation,
        Task::Generation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Extraction => "extraction",
            Task::Math => "math",
            Task::Code => "code",
            Task::Summarization => "summarization",
            Task::Translation => "translation",
            Task::Generation => "generation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    /// Aliases, cheapest first; the last one's answer is served whatever it is.
    pub steps: Vec<String>,
    pub check: CascadeCheck,
    pub stream: CascadeStream,
}

/// What a cascade step's answer must pass to be served instead of escalating.
#[derive(Debug, Clone, PartialEq)]
pub enum CascadeCheck {
    /// The answer satisfies the JSON schema the request asked for or the route requires (and is JSON when
    /// the request asked for a JSON object).
    Schema,
    /// The answer, trimmed of white space and a final full stop, is one of these labels.
    Labels { labels: Vec<String>, case_sensitive: bool },
    /// The answer matches this regular expression (Rust `regex` syntax, unanchored).
    Regex { pattern: String },
    /// The mean log-probability of the answer's tokens is at least this (the step's provider must return
    /// token log-probabilities: OpenAI, and keel's local models, do).
    Logprob { min_mean: f64 },
    /// A model alias grades the answer from 1 to 5 against a rubric; `min_score` passes.
    Judge { model: String, rubric: String, min_score: u8 },
}

impl CascadeCheck {
    pub fn as_str(&self) -> &'static str {
        match self {
            CascadeCheck::Schema => "schema",
            CascadeCheck::Labels { .. } => "labels",
            CascadeCheck::Regex { .. } => "regex",
            CascadeCheck::Logprob { .. } => "logprob",
            CascadeCheck::Judge { .. } => "judge",
        }
    }
}

/// How a cascade serves a streamed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CascadeStream {
    /// Every step but the last answers in full inside keel and is checked before its first byte is sent (its
    /// answer is then replayed as a stream); the last step streams as it comes.
    Buffer,
    /// Streamed requests are refused (400) with a message saying so.
    Refuse,
}

pub(crate) fn resolve_routers(
    raw: &BTreeMap<String, RawRouter>,
    aliases: &dyn Fn(&str) -> bool,
    templates: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) -> BTreeMap<String, Router> {
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let path = format!("routers.{name}");
        let before = errors.0.len();
        if aliases(name) {
            errors.push(&path, format!("{name:?} is also a model alias: a client's model names one or the other"));
        }
        // A rule sends to an alias or a cascade, never to a rules router (so no router can reach itself).
        let target = |t: &str, key: &str, errors: &mut Errors| match raw.get(t) {
            _ if aliases(t) => {}
            Some(_) if t == name => errors.push(format!("{path}.{key}"), "a router cannot name itself"),
            Some(other) if other.cascade.is_none() && other.learned.is_none() => errors.push(
                format!("{path}.{key}"),
                format!("{t:?} is a rules router: a rule sends to a model alias, a cascade or a learned router"),
            ),
            Some(_) => {}
            None if aliases(t) => {}
            None => errors.push(format!("{path}.{key}"), format!("unknown model alias or router {t:?}")),
        };
        let kinds = [r.rules.is_some() || r.default.is_some(), r.cascade.is_some(), r.learned.is_some()];
        let kind = match kinds {
            [true, false, false] => {
                let default = r.default.clone().unwrap_or_default();
                if default.is_empty() {
                    errors.push(format!("{path}.default"), "required: the alias that serves when no rule matches");
                } else {
                    target(&default, "default", errors);
                }
                let mut rules = Vec::new();
                for (i, raw_rule) in r.rules.iter().flatten().enumerate() {
                    let rule_path = format!("{path}.rules[{i}]");
                    if let Some(rule) = resolve_rule(&rule_path, raw_rule, templates, errors) {
                        target(&rule.to, &format!("rules[{i}].to"), errors);
                        rules.push(rule);
                    }
                }
                RouterKind::Rules { rules, default }
            }
            [false, true, false] => {
                let steps = r.cascade.clone().unwrap_or_default();
                if steps.len() < 2 {
                    errors.push(format!("{path}.cascade"), "a cascade needs at least two aliases, cheapest first");
                }
                for (i, s) in steps.iter().enumerate() {
                    if raw.contains_key(s) && !aliases(s) {
                        errors.push(format!("{path}.cascade[{i}]"), "a cascade step is a model alias, not a router");
                    } else {
                        target(s, &format!("cascade[{i}]"), errors);
                    }
                }
                let check = resolve_check(&path, r.check.as_ref(), aliases, errors);
                let stream = match r.stream.as_deref() {
                    None | Some("buffer") => CascadeStream::Buffer,
                    Some("refuse") => CascadeStream::Refuse,
                    Some(other) => {
                        errors.push(format!("{path}.stream"), format!("{other:?}: expected \"buffer\" or \"refuse\""));
                        CascadeStream::Buffer
                    }
                };
                RouterKind::Cascade(Cascade { steps, check: check.unwrap_or(CascadeCheck::Schema), stream })
            }
            [false, false, true] => {
                let l = r.learned.clone().unwrap_or_default();
                let side = |key: &str, value: Option<String>, errors: &mut Errors| {
                    let value = value.unwrap_or_default();
                    if !aliases(&value) {
                        errors.push(
                            format!("{path}.learned.{key}"),
                            format!("required: a model alias (got {value:?}); a learned router's sides are aliases"),
                        );
                    }
                    value
                };
                let small = side("small", l.small, errors);
                let large = side("large", l.large, errors);
                let embedding = side("embedding", l.embedding, errors);
                let weights = l.weights.unwrap_or_default();
                if weights.as_os_str().is_empty() {
                    errors.push(format!("{path}.learned.weights"), "required: the file `keel route train` wrote");
                }
                if let Some(t) = l.threshold
                    && !(0.0..=1.0).contains(&t)
                {
                    errors.push(format!("{path}.learned.threshold"), "a probability from 0 to 1");
                }
                RouterKind::Learned(Learned { weights, small, large, embedding, threshold: l.threshold })
            }
            _ => {
                errors.push(
                    &path,
                    "a router is one of: rules (rules = [...] and default), a cascade (cascade = [...]) or learned \
                     (learned = { weights, small, large, embedding })",
                );
                continue;
            }
        };
        for (key, set) in [("check", r.check.is_some()), ("stream", r.stream.is_some())] {
            if set && !matches!(kind, RouterKind::Cascade(_)) {
                errors.push(format!("{path}.{key}"), "not a setting of this kind of router");
            }
        }
        if errors.0.len() == before {
            out.insert(name.clone(), Router { name: name.clone(), kind });
        }
    }
    out
}

fn resolve_rule(path: &str, r: &RawRule, templates: &dyn Fn(&str) -> bool, errors: &mut Errors) -> Option<Rule> {
    let before = errors.0.len();
    let Some(to) = r.to.clone() else {
        errors.push(format!("{path}.to"), "required: the alias or router this rule sends to");
        return None;
    };
    for t in &r.templates {
        if !templates(t) {
            errors.push(format!("{path}.templates"), format!("unknown template {t:?}"));
        }
    }
    let mut tasks = Vec::new();
    for t in &r.tasks {
        match Task::parse(t) {
            Some(t) => tasks.push(t),
            None => errors.push(
                format!("{path}.tasks"),
                format!(
                    "unknown task {t:?}; one of {}",
                    Task::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
    if let (Some(min), Some(max)) = (r.min_prompt_tokens, r.max_prompt_tokens)
        && min > max
    {
        errors.push(path, format!("min_prompt_tokens {min} is over max_prompt_tokens {max}"));
    }
    (errors.0.len() == before).then(|| Rule {
        to,
        templates: r.templates.clone(),
        tags: r.tags.clone(),
        metadata: r.metadata.clone(),
        min_prompt_tokens: r.min_prompt_tokens,
        max_prompt_tokens: r.max_prompt_tokens,
        tools: r.tools,
        schema: r.schema,
        tasks,
    })
}

fn resolve_check(
    path: &str,
    c: Option<&RawCheck>,
    aliases: &dyn Fn(&str) -> bool,
    errors: &mut Errors,
) -> Option<CascadeCheck> {
    let path = format!("{path}.check");
    let Some(c) = c else {
        errors.push(&path, "required: what a cheap answer must pass, e.g. { type = \"schema\" }");
        return None;
    };
    let unused = |errors: &mut Errors, keys: &[(&str, bool)]| {
        for (key, set) in keys {
            if *set {
                errors.push(format!("{path}.{key}"), "not a setting of this type of check");
            }
        }
    };
    let check = match c.kind.as_deref() {
        Some("schema") => {
            unused(
                errors,
                &[
                    ("labels", c.labels.is_some()),
                    ("pattern", c.pattern.is_some()),
                    ("min_mean_logprob", c.min_mean_logprob.is_some()),
                    ("model", c.model.is_some()),
                ],
            );
            CascadeCheck::Schema
        }
        Some("labels") => {
            let labels = c.labels.clone().unwrap_or_default();
            if labels.is_empty() || labels.iter().any(|l| l.trim().is_empty()) {
                errors.push(format!("{path}.labels"), "required: the answers that pass, none empty");
            }
            unused(errors, &[("pattern", c.pattern.is_some()), ("model", c.model.is_some())]);
            CascadeCheck::Labels { labels, case_sensitive: c.case_sensitive.unwrap_or(false) }
        }
        Some("regex") => {
            let pattern = c.pattern.clone().unwrap_or_default();
            if let Err(e) = regex::Regex::new(&pattern) {
                errors.push(format!("{path}.pattern"), format!("not a regular expression: {e}"));
            }
            unused(errors, &[("labels", c.labels.is_some()), ("model", c.model.is_some())]);
            CascadeCheck::Regex { pattern }
        }
        Some("logprob") => {
            let Some(min_mean) = c.min_mean_logprob.filter(|m| m.is_finite() && *m <= 0.0) else {
                errors.push(
                    format!("{path}.min_mean_logprob"),
                    "required: the lowest mean token log-probability that passes, a number <= 0 (e.g. -0.3)",
                );
                return None;
            };
            CascadeCheck::Logprob { min_mean }
        }
        Some("judge") => {
            let model = c.model.clone().unwrap_or_default();
            if !aliases(&model) {
                errors.push(format!("{path}.model"), format!("required: the judge's model alias (got {model:?})"));
            }
            let rubric = c.rubric.clone().unwrap_or_default();
            if rubric.trim().is_empty() {
                errors.push(format!("{path}.rubric"), "required: what a good answer does");
            }
            let min_score = c.min_score.unwrap_or(4);
            if !(1..=5).contains(&min_score) {
                errors.push(format!("{path}.min_score"), "a score from 1 to 5");
            }
            CascadeCheck::Judge { model, rubric, min_score }
        }
        other => {
            errors.push(
                format!("{path}.type"),
                format!("{other:?}: expected \"schema\", \"labels\", \"regex\", \"logprob\" or \"judge\""),
            );
            return None;
        }
    };
    Some(check)
}
