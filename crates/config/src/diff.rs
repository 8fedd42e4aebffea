//! What changed between two configuration files, section by section: what a reload reports, and what it
//! checks against the sections only a restart may change.

use std::collections::BTreeSet;

use crate::{ConfigError, ConfigErrors};

/// Sections whose entries are named (`[models.fast]`): a change is reported per entry (`models.fast`).
const NAMED: [&str; 6] = ["providers", "models", "templates", "routers", "prices", "online_evals"];

/// The sections that differ between `old` and `new` (`server`, `models.fast`, …), sorted. Formatting,
/// comments and the order of keys are not changes; values are compared as TOML values.
pub fn changed_sections(old: &str, new: &str) -> Result<Vec<String>, ConfigErrors> {
    let read = |text: &str| {
        text.parse::<toml::Table>().map_err(|e| {
            ConfigErrors(vec![ConfigError { path: String::new(), message: format!("not valid TOML: {e}") }])
        })
    };
    let (old, new) = (read(old)?, read(new)?);
    let empty = toml::Table::new();
    let mut changed = BTreeSet::new();
    for key in old.keys().chain(new.keys()) {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        if NAMED.contains(&key.as_str()) {
            let table = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).unwrap_or(&empty).clone();
            let (ta, tb) = (table(a), table(b));
            for name in ta.keys().chain(tb.keys()) {
                if ta.get(name) != tb.get(name) {
                    changed.insert(format!("{key}.{name}"));
                }
            }
            // A section that is not a table on one side (a type error the validation reports) counts whole.
            if a.is_some_and(|v| !v.is_table()) || b.is_some_and(|v| !v.is_table()) {
                changed.insert(key.clone());
            }
        } else {
            changed.insert(key.clone());
        }
    }
    Ok(changed.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::changed_sections;

    #[test]
    fn changes_are_reported_per_section_and_per_named_entry() {
        let old = "[server]\nlisten = \"127.0.0.1:1\"\n[models.a]\ntarget = \"p/x\"\n[models.b]\ntarget = \"p/y\"\n";
        // Reordered and reformatted, `a` unchanged, `b` changed, `c` added, a new top-level section.
        let new = "# comment\n[models.b]\ntarget = \"p/z\"\n[models.a]\ntarget   =   \"p/x\"\n[models.c]\n\
                   target = \"p/x\"\n[server]\nlisten = \"127.0.0.1:1\"\n[cache]\nmode = \"exact\"\n";
        assert_eq!(changed_sections(old, new).unwrap(), ["cache", "models.b", "models.c"]);
        assert_eq!(changed_sections(old, old).unwrap(), Vec::<String>::new());
        let removed = "[server]\nlisten = \"127.0.0.1:2\"\n";
        assert_eq!(changed_sections(old, removed).unwrap(), ["models.a", "models.b", "server"]);
        assert!(changed_sections(old, "[models").is_err());
    }
}
