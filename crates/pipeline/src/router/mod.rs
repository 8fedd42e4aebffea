//! Routers (`[routers.NAME]`, issue 16): a model name that picks, per request, the alias that serves it.
//!
//! A rules router reads the request's features (its template, tags and metadata, prompt length, tools, schema,
//! and the task [`task::detect`] reads from its last user turn) and sends it to the first rule's alias whose
//! conditions all hold, else to its default. A cascade is a plan of its own ([`CascadePlan`] on a
//! [`RoutePlan`]): the call stage asks its cheapest alias first, checks the answer ([`Check`]) and escalates to
//! the next only when the check fails. A learned router ([`learned`]) embeds the prompt and sends it to its cheap
//! alias when a trained classifier predicts that it will pass. Whichever way, the decision and its reason travel in the request's context
//! ([`RouteDecision`]) to the log row, the `x-keel-route` header and the metrics.

pub mod learned;
pub mod task;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_config::{CascadeCheck, CascadeStream, Rule, Task};
use keel_types::{ChatRequest, ResponseFormat, Role};

use crate::route::RoutePlan;

/// What a router decided for one request. Set by the route stage; a cascade's verdicts are added by the call
/// stage.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The router the client named.
    pub router: String,
    /// The alias that serves (for a cascade, the step whose answer was sent; until then, its first step).
    pub to: String,
    /// Why, in words: `rule 2 (tasks = classification)`, `default`, `cascade: small failed labels; large`.
    pub reason: String,
    /// Cascade steps whose answer failed the check before the one that served.
    pub escalations: u32,
    /// The time those failed steps took: the latency an escalation added.
    pub escalation_time: Duration,
}

/// A cascade's steps (each its alias's own plan, cheapest first) and what an answer must pass.
#[derive(Debug)]
pub struct CascadePlan {
    pub router: String,
    pub steps: Vec<Arc<RoutePlan>>,
    pub check: Check,
    pub stream: CascadeStream,
}

/// A cascade's check, compiled.
#[derive(Debug)]
pub enum Check {
    Schema,
    Labels { labels: Vec<String>, case_sensitive: bool },
    Regex(regex::Regex),
    Logprob { min_mean: f64 },
    Judge { plan: Arc<RoutePlan>, rubric: String, min_score: u8 },
}

impl Check {
    pub(crate) fn compile(check: &CascadeCheck, plans: &BTreeMap<String, Arc<RoutePlan>>) -> Result<Self, String> {
        Ok(match check {
            CascadeCheck::Schema => Check::Schema,
            CascadeCheck::Labels { labels, case_sensitive } => Check::Labels {
                labels: labels.iter().map(|l| fold_label(l, *case_sensitive)).collect(),
                case_sensitive: *case_sensitive,
            },
            CascadeCheck::Regex { pattern } => Check::Regex(regex::Regex::new(pattern).map_err(|e| e.to_string())?),
            CascadeCheck::Logprob { min_mean } => Check::Logprob { min_mean: *min_mean },
            CascadeCheck::Judge { model, rubric, min_score } => Check::Judge {
                plan: plans.get(model).cloned().ok_or_else(|| format!("unknown judge alias {model:?}"))?,
                rubric: rubric.clone(),
                min_score: *min_score,
            },
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Check::Schema => "schema",
            Check::Labels { .. } => "labels",
            Check::Regex(_) => "regex",
            Check::Logprob { .. } => "logprob",
            Check::Judge { .. } => "judge",
        }
    }
}

/// A label or an answer as compared: trimmed of white space, quotes and a final full stop; lower case unless
/// the check is case sensitive.
pub(crate) fn fold_label(s: &str, case_sensitive: bool) -> String {
    let t = s.trim().trim_matches(|c: char| c == '"' || c == '\'' || c == '`').trim_end_matches('.').trim();
    if case_sensitive { t.to_string() } else { t.to_lowercase() }
}

/// A rules router, or the name of a cascade's plan.
#[derive(Debug)]
pub(crate) enum RouterPlan {
    Rules {
        rules: Vec<Rule>,
        default: String,
    },
    /// The cascade's own plan: the route table holds it under the router's name.
    Cascade,
    Learned(Arc<LearnedPlan>),
}

/// A learned router, ready: its classifier and the plans of its two sides.
#[derive(Debug)]
pub(crate) struct LearnedPlan {
    pub weights: learned::Weights,
    pub threshold: f32,
    pub small: Arc<RoutePlan>,
    pub large: Arc<RoutePlan>,
    /// The embeddings alias.
    pub embedding: String,
}

/// What rules read of a request.
pub(crate) struct Features<'a> {
    pub template: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub chat: Option<&'a ChatRequest>,
    /// The prompt's tokens, counted only when a rule asks.
    pub tokens: &'a dyn Fn() -> u64,
}

impl Features<'_> {
    fn tags(&self) -> impl Iterator<Item = &str> {
        self.metadata.get("tags").and_then(|t| t.as_array()).into_iter().flatten().filter_map(|t| t.as_str())
    }

    /// A metadata value: `x-keel-metadata` first, then the OpenAI request's own `metadata`.
    fn metadata(&self, key: &str) -> Option<String> {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
        self.metadata
            .get(key)
            .and_then(text)
            .or_else(|| self.chat.and_then(|c| c.metadata.as_ref()).and_then(|m| m.get(key)).and_then(text))
    }

    fn task(&self) -> Task {
        let Some(chat) = self.chat else { return Task::Generation };
        let last_user = chat.messages.iter().rev().find(|m| m.role == Role::User);
        task::detect(&last_user.and_then(|m| m.content.as_ref()).map(|c| c.text()).unwrap_or_default())
    }
}

/// The first rule whose conditions all hold, with its position and the conditions it checked.
pub(crate) fn first_match<'r>(rules: &'r [Rule], f: &Features<'_>) -> Option<(usize, &'r Rule, String)> {
    let mut task: Option<Task> = None;
    let mut tokens: Option<u64> = None;
    'rules: for (i, rule) in rules.iter().enumerate() {
        let mut why = Vec::new();
        if !rule.templates.is_empty() {
            if !f.template.is_some_and(|t| rule.templates.iter().any(|r| r == t)) {
                continue;
            }
            why.push(format!("template = {}", f.template.unwrap_or_default()));
        }
        if !rule.tags.is_empty() {
            let Some(tag) = f.tags().find(|t| rule.tags.iter().any(|r| r == t)) else { continue };
            why.push(format!("tag = {tag}"));
        }
        for (k, v) in &rule.metadata {
            if f.metadata(k).as_deref() != Some(v.as_str()) {
                continue 'rules;
            }
            why.push(format!("metadata.{k} = {v}"));
        }
        if rule.min_prompt_tokens.is_some() || rule.max_prompt_tokens.is_some() {
            let n = *tokens.get_or_insert_with(|| (f.tokens)());
            if rule.min_prompt_tokens.is_some_and(|m| n < m) || rule.max_prompt_tokens.is_some_and(|m| n > m) {
                continue;
            }
            why.push(format!("prompt tokens = {n}"));
        }
        if let Some(want) = rule.tools {
            let has = f.chat.is_some_and(|c| c.tools.as_ref().is_some_and(|t| !t.is_empty()));
            if has != want {
                continue;
            }
            why.push(format!("tools = {has}"));
        }
        if let Some(want) = rule.schema {
            let has = f.chat.is_some_and(|c| {
                matches!(c.response_format, Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }))
            });
            if has != want {
                continue;
            }
            why.push(format!("schema = {has}"));
        }
        if !rule.tasks.is_empty() {
            let t = *task.get_or_insert_with(|| f.task());
            if !rule.tasks.contains(&t) {
                continue;
            }
            why.push(format!("task = {}", t.as_str()));
        }
        return Some((i, rule, why.join(", ")));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn chat(text: &str) -> ChatRequest {
        serde_json::from_value(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]}))
            .unwrap()
    }

    fn rule(to: &str) -> Rule {
        Rule { to: to.into(), ..Rule::default() }
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_wins_and_says_why() {
        let rules = vec![
            Rule { templates: vec!["triage".into()], tasks: vec![Task::Math], ..rule("never") },
            Rule { tags: vec!["bulk".into()], max_prompt_tokens: Some(100), ..rule("small") },
            Rule { metadata: [("tier".to_string(), "gold".to_string())].into(), ..rule("large") },
            Rule { tasks: vec![Task::Classification], tools: Some(false), ..rule("small") },
        ];
        let req = chat("Classify this review as positive or negative: great!");
        let meta = serde_json::json!({"tags": ["checkout", "bulk"], "tier": "gold"});
        let f = Features { template: Some("triage"), metadata: &meta, chat: Some(&req), tokens: &|| 40 };
        let (i, r, why) = first_match(&rules, &f).unwrap();
        assert_eq!((i, r.to.as_str(), why.as_str()), (1, "small", "tag = bulk, prompt tokens = 40"));

        // Too long for rule 1: the metadata rule matches.
        let f = Features { template: None, metadata: &meta, chat: Some(&req), tokens: &|| 500 };
        let (i, _, why) = first_match(&rules, &f).unwrap();
        assert_eq!((i, why.as_str()), (2, "metadata.tier = gold"));

        // No tags or metadata: the task rule; with tools offered, nothing matches.
        let none = serde_json::json!({});
        let f = Features { template: None, metadata: &none, chat: Some(&req), tokens: &|| 500 };
        assert_eq!(first_match(&rules, &f).unwrap().2, "tools = false, task = classification");
        let mut with_tools = req.clone();
        with_tools.tools = Some(vec![
            serde_json::from_value(
                serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {}}}),
            )
            .unwrap(),
        ]);
        let f = Features { template: None, metadata: &none, chat: Some(&with_tools), tokens: &|| 500 };
        assert!(first_match(&rules, &f).is_none());
    }

    #[test]
    fn metadata_is_read_from_the_header_then_from_the_request() {
        let rules = vec![Rule { metadata: [("team".to_string(), "payments".to_string())].into(), ..rule("a") }];
        let mut req = chat("hi");
        req.metadata = Some(serde_json::json!({"team": "payments"}));
        let none = serde_json::json!({});
        let f = Features { template: None, metadata: &none, chat: Some(&req), tokens: &|| 1 };
        assert!(first_match(&rules, &f).is_some());
        let header = serde_json::json!({"team": "search"});
        let f = Features { template: None, metadata: &header, chat: Some(&req), tokens: &|| 1 };
        assert!(first_match(&rules, &f).is_none(), "the header's value comes first");
    }

    #[test]
    fn labels_are_compared_folded() {
        assert_eq!(fold_label("  Positive.\n", false), "positive");
        assert_eq!(fold_label("\"Negative\"", true), "Negative");
    }
}
