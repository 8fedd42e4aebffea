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

/// The default configuration text for this environment.
pub(crate) fn text(env: &dyn Env) -> String {
    let mut out = String::from("# keel's embedded default configuration.\n[server]\nlisten = \"127.0.0.1:8080\"\n");
    if env.var("OPENAI_API_KEY").is_some() {
        out.push_str(OPENAI);
    }
    if env.var("ANTHROPIC_API_KEY").is_some() {
        out.push_str(ANTHROPIC);
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
        assert!(cfg.models.is_empty());
        let both: HashMap<String, String> =
            HashMap::from([("OPENAI_API_KEY".into(), "a".into()), ("ANTHROPIC_API_KEY".into(), "b".into())]);
        let cfg = keel_config::parse(&text(&both), &both).unwrap();
        assert!(cfg.models.contains_key("gpt-4o-mini"));
        assert!(cfg.models.contains_key("claude-sonnet-4-5"));
    }
}
