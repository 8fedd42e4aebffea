//! `[guard]` and `[models.X.guard]`: the guardrails a route runs (issue 14). Without either section no guard
//! runs and the request path has no guard stage.
//!
//! ```toml
//! [guard]
//! injection = "flag"          # off | flag | block: prompt injection in user turns, tool results, passages
//! pii = "redact"              # personal data in prompts bound for a third-party provider: off | flag | redact | block
//! pii_local = "off"           # ... bound for the in-process model
//! output = "flag"             # answers carrying secrets, others' personal data, the canary, deny patterns
//! deny = ["(?i)project bluebird"]
//! canary = true               # a canary token in the system prompt; an answer repeating it leaked the prompt
//! [guard.entities]            # per entity type, over `pii` (external providers)
//! DATE_TIME = "off"
//! ```

use std::collections::BTreeMap;

use keel_guard::Entity;
use serde::Deserialize;

use crate::resolve::Errors;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub injection: Option<String>,
    pub pii: Option<String>,
    pub pii_local: Option<String>,
    pub output: Option<String>,
    pub deny: Option<Vec<String>>,
    pub canary: Option<bool>,
    /// Wrap tool results in delimiters marking them as data.
    pub delimit_tool_results: Option<bool>,
    #[serde(default)]
    pub entities: BTreeMap<String, String>,
    /// Entity types the output check looks for (default: secrets, e-mail, cards, IBANs, national ids, SSNs).
    pub output_entities: Option<Vec<String>>,
}

/// What a guard does when it finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuardAction {
    /// Not checked.
    Off,
    /// Checked and reported (header, log, metrics); the request goes on unchanged.
    Flag,
    /// The finding is replaced (placeholders for PII in prompts, a mask in answers) and reported.
    Redact,
    /// The request is refused (input) or the answer withheld (output), with a reason code.
    Block,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Off => "off",
            GuardAction::Flag => "flag",
            GuardAction::Redact => "redact",
            GuardAction::Block => "block",
        }
    }

    fn parse(text: &str, redact: bool) -> Option<Self> {
        match text {
            "off" | "allow" => Some(GuardAction::Off),
            "flag" => Some(GuardAction::Flag),
            "redact" if redact => Some(GuardAction::Redact),
            "block" => Some(GuardAction::Block),
            _ => None,
        }
    }
}

/// The entity types an answer is checked for when `output_entities` is not set: secrets and the personal data
/// whose shape is unambiguous (dates, URLs, phone numbers and IP addresses are common in ordinary answers).
pub const DEFAULT_OUTPUT_ENTITIES: [Entity; 6] =
    [Entity::Secret, Entity::Email, Entity::CreditCard, Entity::Iban, Entity::NationalId, Entity::UsSsn];

/// One route's guards, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardPolicy {
    pub injection: GuardAction,
    /// What to do with each entity type found in a prompt: for this route's targets (an alias any of whose
    /// targets is a third-party provider gets `pii`; one served only by the local model gets `pii_local`),
    /// with `[guard.entities]` over it. Entity types not listed are off.
    pub pii: BTreeMap<Entity, GuardAction>,
    pub output: GuardAction,
    pub output_entities: Vec<Entity>,
    pub deny: Vec<String>,
    pub canary: bool,
    pub delimit_tool_results: bool,
}

impl GuardPolicy {
    /// Whether any guard is on. Delimiting tool results counts: a route with a guard section marks them as data
    /// even with every check off.
    pub fn any(&self) -> bool {
        self.injection != GuardAction::Off
            || self.pii.values().any(|a| *a != GuardAction::Off)
            || self.output != GuardAction::Off
            || self.canary
            || self.delimit_tool_results
    }

    /// Whether a prompt's personal data must be looked for with the named-entity tagger as well as the
    /// patterns: some type only the tagger finds is not off.
    pub fn needs_tagger(&self) -> bool {
        self.pii.iter().any(|(e, a)| e.is_tagged() && *a != GuardAction::Off)
    }
}

fn action(path: &str, text: Option<&str>, default: GuardAction, redact: bool, errors: &mut Errors) -> GuardAction {
    match text {
        None => default,
        Some(t) => GuardAction::parse(t, redact).unwrap_or_else(|| {
            let allowed = if redact { "off, flag, redact, block" } else { "off, flag, block" };
            errors.push(path, format!("{t:?} is not one of {allowed}"));
            default
        }),
    }
}

/// The policy of alias `name`: the model's section over the global one; `external`: whether any target of the
/// alias is a third-party provider. `None` when neither section exists.
pub(crate) fn resolve_guard(
    name: &str,
    global: Option<&RawGuard>,
    model: Option<&RawGuard>,
    external: bool,
    errors: &mut Errors,
) -> Option<GuardPolicy> {
    if global.is_none() && model.is_none() {
        return None;
    }
    let empty = RawGuard::default();
    let g = global.unwrap_or(&empty);
    let m = model.unwrap_or(&empty);
    let path = |key: &str| {
        if model.is_some_and(|m| field_set(m, key)) {
            format!("models.{name}.guard.{key}")
        } else {
            format!("guard.{key}")
        }
    };
    let pick = |key: &str| m_field(m, key).or_else(|| m_field(g, key));
    let injection = action(&path("injection"), pick("injection"), GuardAction::Flag, false, errors);
    let pii_default = if external {
        action(&path("pii"), pick("pii"), GuardAction::Redact, true, errors)
    } else {
        action(&path("pii_local"), pick("pii_local"), GuardAction::Off, true, errors)
    };
    // Dates, places, organisations and the like are everywhere in ordinary prompts and identify no one alone:
    // off unless named (`Entity::redacted_by_default`).
    let pii: BTreeMap<Entity, GuardAction> = Entity::ALL
        .into_iter()
        .map(|e| (e, if e.redacted_by_default() { pii_default } else { GuardAction::Off }))
        .collect();
    let mut pii = pii;
    if external {
        for (src, raw) in [("guard", g), (&*format!("models.{name}.guard"), m)] {
            for (entity, act) in &raw.entities {
                let at = format!("{src}.entities.{entity}");
                match Entity::parse(entity) {
                    Some(e) => {
                        let a = action(&at, Some(act), GuardAction::Off, true, errors);
                        pii.insert(e, a);
                    }
                    None => errors.push(at, format!("unknown entity type (known: {})", entity_names())),
                }
            }
        }
    }
    let output = action(&path("output"), pick("output"), GuardAction::Flag, true, errors);
    let output_entities = match m.output_entities.as_ref().or(g.output_entities.as_ref()) {
        None => DEFAULT_OUTPUT_ENTITIES.to_vec(),
        Some(list) => list
            .iter()
            .filter_map(|n| {
                let e = Entity::parse(n);
                if e.is_none() {
                    errors.push(
                        path("output_entities"),
                        format!("unknown entity type {n:?} (known: {})", entity_names()),
                    );
                }
                e
            })
            .collect(),
    };
    let mut deny = Vec::new();
    for (at, list) in [("guard.deny".to_string(), &g.deny), (format!("models.{name}.guard.deny"), &m.deny)] {
        for (i, p) in list.iter().flatten().enumerate() {
            match regex::Regex::new(p) {
                Ok(_) => deny.push(p.clone()),
                Err(e) => errors.push(format!("{at}[{i}]"), format!("not a valid pattern: {e}")),
            }
        }
    }
    Some(GuardPolicy {
        injection,
        pii,
        output,
        output_entities,
        deny,
        canary: m.canary.or(g.canary).unwrap_or(false),
        delimit_tool_results: m.delimit_tool_results.or(g.delimit_tool_results).unwrap_or(true),
    })
}

fn field_set(r: &RawGuard, key: &str) -> bool {
    m_field(r, key).is_some()
}

fn m_field<'a>(r: &'a RawGuard, key: &str) -> Option<&'a str> {
    match key {
        "injection" => r.injection.as_deref(),
        "pii" => r.pii.as_deref(),
        "pii_local" => r.pii_local.as_deref(),
        "output" => r.output.as_deref(),
        "deny" => r.deny.as_ref().map(|_| ""),
        "output_entities" => r.output_entities.as_ref().map(|_| ""),
        _ => None,
    }
}

fn entity_names() -> String {
    Entity::ALL.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::HashMap;

    use super::*;

    const PROVIDERS: &str = r#"
        [providers.oa]
        kind = "openai"
        base_url = "http://127.0.0.1:9/v1"
        api_key_env = "KEY"
        [providers.here]
        kind = "local"
        [models.gpt]
        provider = "oa"
        [models.small]
        provider = "here"
        model = "smollm2"
        [models.careful]
        provider = "here"
        model = "smollm2"
        fallbacks = ["gpt"]
    "#;

    fn parse(extra: &str) -> Result<crate::Config, crate::ConfigErrors> {
        let env = HashMap::from([("KEY".to_string(), "k".to_string())]);
        crate::parse(&format!("{PROVIDERS}\n{extra}"), &env)
    }

    #[test]
    fn without_a_guard_section_no_route_is_guarded() {
        let cfg = parse("").unwrap();
        assert!(cfg.models.values().all(|m| m.guard.is_none()));
    }

    #[test]
    fn personal_data_may_reach_the_local_model_but_not_a_third_party() {
        let cfg = parse(
            r#"
            [guard]
            injection = "block"
            [guard.entities]
            PHONE_NUMBER = "flag"
            "#,
        )
        .unwrap();
        let gpt = cfg.models["gpt"].guard.clone().unwrap();
        assert_eq!(gpt.injection, GuardAction::Block);
        assert_eq!(gpt.pii[&Entity::Email], GuardAction::Redact);
        assert_eq!(gpt.pii[&Entity::Phone], GuardAction::Flag);
        assert_eq!(gpt.pii[&Entity::DateTime], GuardAction::Off);
        // Names and street addresses are redacted like the pattern types; places and organisations are not.
        assert_eq!(gpt.pii[&Entity::Person], GuardAction::Redact);
        assert_eq!(gpt.pii[&Entity::StreetAddress], GuardAction::Redact);
        assert_eq!(gpt.pii[&Entity::Location], GuardAction::Off);
        assert!(gpt.needs_tagger());
        let small = cfg.models["small"].guard.clone().unwrap();
        assert!(small.pii.values().all(|a| *a == GuardAction::Off), "local only: {small:?}");
        // A local alias whose fallback is a third party is treated as a third party: the chain may end there.
        let careful = cfg.models["careful"].guard.clone().unwrap();
        assert_eq!(careful.pii[&Entity::Email], GuardAction::Redact);
    }

    #[test]
    fn a_model_section_overrides_the_global_one() {
        let cfg = parse(
            r#"
            [guard]
            output = "block"
            deny = ["secret"]
            [models.gpt.guard]
            output = "redact"
            pii = "block"
            deny = ["(?i)bluebird"]
            canary = true
            "#,
        )
        .unwrap();
        let gpt = cfg.models["gpt"].guard.clone().unwrap();
        assert_eq!(gpt.output, GuardAction::Redact);
        assert_eq!(gpt.pii[&Entity::Email], GuardAction::Block);
        assert_eq!(gpt.deny, vec!["secret".to_string(), "(?i)bluebird".to_string()]);
        assert!(gpt.canary);
        assert!(!cfg.models["small"].guard.clone().unwrap().canary);
    }

    #[test]
    fn a_guard_section_with_every_check_off_still_delimits_tool_results() {
        let off = "[guard]\ninjection = \"off\"\npii = \"off\"\noutput = \"off\"\n";
        let gpt = parse(off).unwrap().models["gpt"].guard.clone().unwrap();
        assert!(gpt.delimit_tool_results && !gpt.canary);
        assert!(gpt.any(), "the route keeps its guard stage for the delimiters");
        let none = parse(&format!("{off}delimit_tool_results = false\n")).unwrap();
        assert!(!none.models["gpt"].guard.clone().unwrap().any());
    }

    #[test]
    fn bad_values_are_reported_with_their_paths() {
        let errors = parse(
            r#"
            [guard]
            injection = "redact"
            deny = ["(unclosed"]
            [guard.entities]
            SHOE_SIZE = "block"
            [models.gpt.guard]
            output = "maybe"
            "#,
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("guard.injection: \"redact\" is not one of off, flag, block"), "{text}");
        assert!(text.contains("guard.deny[0]: not a valid pattern"), "{text}");
        assert!(text.contains("guard.entities.SHOE_SIZE: unknown entity type"), "{text}");
        assert!(text.contains("models.gpt.guard.output: \"maybe\" is not one of off, flag, redact, block"), "{text}");
    }
}
