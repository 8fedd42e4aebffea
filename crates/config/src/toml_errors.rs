//! Reading the TOML file into the raw structs with every error reported at once: a syntax error with its line
//! and column; type errors and unknown keys each with the key's dotted path, line and column. serde stops at
//! the first error of a struct, so the reader takes the offending key out and reads again, until the file reads
//! or 64 errors were found.

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Value};

use crate::ConfigError;

/// Errors reported at most; past it the file is too broken for more to help.
const MAX_ERRORS: usize = 64;

pub(crate) fn read<T: DeserializeOwned>(text: &str) -> Result<T, Vec<ConfigError>> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| position(text, s.start)).unwrap_or_default();
        let message = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        vec![ConfigError { path: at, message }]
    })?;
    let doc = ImDocument::parse(text).ok();
    let mut errors = Vec::new();
    while errors.len() < MAX_ERRORS {
        let e = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(_) => break,
            Err(e) => e,
        };
        let mut path: Vec<String> = e.path().iter().filter_map(segment).collect();
        // The deserializer's message may go on with where it happened ("in `server.listen`"): the path says so.
        let full = e.inner().to_string();
        let message = full.lines().next().unwrap_or_default().trim().to_string();
        // An unknown key may be reported at the table holding it; serde names it in its message.
        if let Some(key) = unknown_field(&message)
            && path.last().map(String::as_str) != Some(key)
        {
            path.push(key.to_string());
        }
        let at = doc.as_ref().and_then(|d| span(d, &path)).map(|s| format!(" (at {})", position(text, s)));
        errors.push(ConfigError { path: path.join("."), message: format!("{message}{}", at.unwrap_or_default()) });
        if path.is_empty() || !remove(&mut table, &path) {
            break;
        }
    }
    Err(errors)
}

fn segment(s: &serde_path_to_error::Segment) -> Option<String> {
    match s {
        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
        serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
        serde_path_to_error::Segment::Unknown => None,
    }
}

/// The key serde's `unknown field` error names (its message is "unknown field `KEY`, expected …").
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(key, _)| key)
}

/// Takes the value at `path` out of the table, so that the next read goes past it.
fn remove(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut value: &mut toml::Value = match table.get_mut(&parents.first().cloned().unwrap_or_default()) {
        Some(v) if !parents.is_empty() => v,
        _ => return table.remove(last).is_some(),
    };
    for key in &parents[1..] {
        value = match value {
            toml::Value::Table(t) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            toml::Value::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match value {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Where the key at `path` is written (its key, or its value when it has no key of its own).
fn span(doc: &ImDocument<&str>, path: &[String]) -> Option<usize> {
    let mut item: &Item = doc.as_table().get(path.first()?)?;
    let mut at = doc.as_table().key(path.first()?).and_then(|k| k.span()).or_else(|| item.span());
    for key in &path[1..] {
        let next = match item {
            Item::Table(t) => {
                at = t.key(key).and_then(|k| k.span());
                t.get(key)
            }
            // Inside an inline table (`cache = { mode = 1 }`), the key's own position is as deep as it goes.
            Item::Value(Value::InlineTable(t)) => {
                return t.key(key).and_then(|k| k.span()).or_else(|| t.span()).map(|s| s.start);
            }
            Item::ArrayOfTables(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)).map(|_| item),
            _ => None,
        };
        item = next?;
        at = at.or_else(|| item.span());
    }
    at.map(|s| s.start)
}

/// "line L, column C" of a byte offset (both from 1; the column in characters).
fn position(text: &str, offset: usize) -> String {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}
