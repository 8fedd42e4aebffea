//! The embedded default configuration: it routes to the vendors whose API keys are in the environment.

use keel_config::Env;

const OPENAI: &str = r#"
[providers.openai]
kind = "openai"
api_key_env = "OPENAI_API_KEY"

[models."gpt-4o"]
provider = "openai"
[models."gpt-4o-mini"]
provider = "openai"
[models."gpt-4.1"]
provider = "openai"
[models."gpt-4.1-mini"]
provider = "openai"
[models."gpt-4.1-nano"]
provider = "openai"
[models."text-embedding-3-small"]
provider = "openai"
[models."text-embedding-3-large"]
provider = "openai"
"#;

const ANTHROPIC: &str = r#"
[providers.anthropic]
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[models."claude-sonnet-4-5"]
provider = "anthropic"
[models."claude-haiku-4-5"]
provider = "anthropic"
[models."claude-opus-4-1"]
provider = "anthropic"
"#;

/// In-process models: always there, the only ones without keys, and the last fallback of every chat model.
const LOCAL: &str = r#"
[providers.local]
kind = "local"

[models.smollm2]
provider = "local"
model = "smollm2"
[models.all-minilm-l6-v2]
provider = "local"
model = "all-minilm-l6-v2"
"#;

/// The default configuration text for this environment.
pub(crate) fn text(env: &dyn Env) -> String {
    let mut out = String::from("# keel's embedded default configuration.\n[server]\nlisten = \"127.0.0.1:8080\"\n");
    let local = cfg!(feature = "local");
    if local {
        out.push_str(LOCAL);
    }
    let with_fallback = |block: &str| {
        if !local {
            return block.to_string();
        }
        // Every chat model falls back to the local one; embedding models have no equivalent fallback.
        let mut table = "";
        block.lines().fold(String::new(), |mut acc, line| {
            if line.starts_with('[') {
                table = line;
            }
            acc.push_str(line);
            acc.push('\n');
            if line.starts_with("provider = ") && table.starts_with("[models.") && !table.contains("embedding") {
                acc.push_str("fallbacks = [\"smollm2\"]\n");
            }
            acc
        })
    };
    if env.var("OPENAI_API_KEY").is_some() {
        out.push_str(&with_fallback(OPENAI));
    }
    if env.var("ANTHROPIC_API_KEY").is_some() {
        out.push_str(&with_fallback(ANTHROPIC));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn default_config_is_valid_with_and_without_keys() {
        let none: HashMap<String, String> = HashMap::new();
        let cfg = keel_config::parse(&text(&none), &none).unwrap();
        let names: Vec<_> = cfg.models.keys().cloned().collect();
        assert_eq!(names, ["all-minilm-l6-v2", "smollm2"], "offline: the local models only");
        let both: HashMap<String, String> =
            HashMap::from([("OPENAI_API_KEY".into(), "a".into()), ("ANTHROPIC_API_KEY".into(), "b".into())]);
        let cfg = keel_config::parse(&text(&both), &both).unwrap();
        assert!(cfg.models.contains_key("gpt-4o-mini"));
        assert!(cfg.models.contains_key("claude-sonnet-4-5"));
        let chain: Vec<_> = cfg.models["gpt-4o-mini"].targets.iter().map(|t| t.model.as_str()).collect();
        assert_eq!(chain, ["gpt-4o-mini", "smollm2"], "the local model is the last fallback");
    }
}
