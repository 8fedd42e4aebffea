//! Jinja rendering of prompts and expectations over a case's fields: strict (a field the text names and the
//! case lacks is an error, never an empty string), no escaping (prompts are text).

use std::sync::OnceLock;

fn env() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env
    })
}

/// Whether a text is a valid template.
pub(crate) fn check_template(text: &str) -> Result<(), String> {
    env().template_from_str(text).map(|_| ()).map_err(|e| e.to_string())
}

/// Renders `text` with a case's fields.
pub(crate) fn render(text: &str, fields: &serde_json::Map<String, serde_json::Value>) -> Result<String, String> {
    let t = env().template_from_str(text).map_err(|e| e.to_string())?;
    t.render(minijinja::Value::from_serialize(fields)).map_err(|e| e.to_string())
}
