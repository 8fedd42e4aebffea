//! File attributes and the filters that match them. Attributes are kept in the store's record as given
//! (strings, numbers, booleans) and indexed as chunk metadata `attr.<key>=<value>`, the value in one canonical
//! spelling (`2024` and `2024.0` are the same number), so that a filter is keel's equality filter. OpenAI's
//! comparison filter `eq` (and `in` with one value) and the compound `and` (and `or` of one filter) map to it;
//! what keel's index cannot answer exactly (`ne`, `gt`, `gte`, `lt`, `lte`, `nin`, `in` or `or` of several) is
//! a 400 rather than an approximation.

use std::collections::BTreeMap;

use keel_rag::Filter;
use serde_json::Value;

use crate::ApiError;

/// A file's attributes: string, number or boolean values.
pub(crate) type Attributes = BTreeMap<String, Value>;

/// The metadata key prefix of attributes, apart from keel's own keys (`kind`, `title`, `source`).
const ATTR_PREFIX: &str = "attr.";
/// Attributes a file may have, and their sizes (OpenAI's limits).
const MAX_ATTRIBUTES: usize = 16;
const MAX_KEY_CHARS: usize = 64;
const MAX_VALUE_CHARS: usize = 512;
/// Conditions and nesting a filter may have.
const MAX_CONDITIONS: usize = 16;
const MAX_DEPTH: usize = 4;

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::invalid(message, Some(param.into()))
}

fn check_key(param: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.contains('=') || key.chars().any(char::is_control) {
        return Err(invalid(
            param,
            format!(
                "{param}: key {key:?} must have 1 to {MAX_KEY_CHARS} characters, without '=' or control characters"
            ),
        ));
    }
    Ok(())
}

/// The canonical spelling of a scalar value; `None` for anything else.
fn canonical(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// Checks attributes against OpenAI's limits.
pub(crate) fn check_attributes(attributes: &Attributes) -> Result<(), ApiError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(invalid("attributes", format!("attributes: at most {MAX_ATTRIBUTES} pairs")));
    }
    for (k, v) in attributes {
        check_key("attributes", k)?;
        let ok = match v {
            Value::String(s) => s.chars().count() <= MAX_VALUE_CHARS,
            Value::Bool(_) | Value::Number(_) => true,
            _ => false,
        };
        if !ok {
            return Err(invalid(
                "attributes",
                format!("attributes.{k}: a string of at most {MAX_VALUE_CHARS} characters, a number or a boolean"),
            ));
        }
    }
    Ok(())
}

/// The chunk metadata of a file's attributes.
pub(crate) fn meta_of(attributes: &Attributes) -> BTreeMap<String, String> {
    attributes.iter().filter_map(|(k, v)| Some((format!("{ATTR_PREFIX}{k}"), canonical(v)?))).collect()
}

/// An OpenAI filter (`{"type": "eq", "key", "value"}`, `{"type": "and", "filters": [...]}`) as keel's filter.
pub(crate) fn parse_filter(v: &Value) -> Result<Filter, ApiError> {
    let mut all = Vec::new();
    collect(v, 0, &mut all)?;
    Ok(Filter { all })
}

fn unsupported(what: &str) -> ApiError {
    invalid(
        "filters",
        format!(
            "filters: {what} is not supported by keel's vector stores; they match attributes exactly: `eq` (or `in` \
             with one value), combined with `and`"
        ),
    )
}

fn collect(v: &Value, depth: usize, all: &mut Vec<(String, String)>) -> Result<(), ApiError> {
    if depth > MAX_DEPTH {
        return Err(invalid("filters", format!("filters: nested more than {MAX_DEPTH} deep")));
    }
    let Some(obj) = v.as_object() else {
        return Err(invalid("filters", "filters: expected an object with a `type`".into()));
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(invalid("filters", "filters: `type` is missing".into()));
    };
    let list = || match obj.get("filters") {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        _ => Err(invalid("filters", format!("filters: `{kind}` needs a non-empty `filters` array"))),
    };
    let condition = |value: &Value| -> Result<(String, String), ApiError> {
        let key = obj
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("filters", format!("filters: `{kind}` needs a string `key`")))?;
        check_key("filters", key)?;
        let value = canonical(value).ok_or_else(|| {
            invalid("filters", format!("filters: the value of {key:?} must be a string, a number or a boolean"))
        })?;
        Ok((format!("{ATTR_PREFIX}{key}"), value))
    };
    match kind {
        "eq" => all.push(condition(obj.get("value").unwrap_or(&Value::Null))?),
        "in" => match obj.get("value").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => all.push(condition(one)?),
            Some(_) => return Err(unsupported("`in` with several values")),
            None => return Err(invalid("filters", "filters: `in` needs an array `value`".into())),
        },
        "and" => {
            for f in list()? {
                collect(f, depth + 1, all)?;
            }
        }
        "or" => match list()?.as_slice() {
            [one] => collect(one, depth + 1, all)?,
            _ => return Err(unsupported("`or` of several filters")),
        },
        "ne" | "gt" | "gte" | "lt" | "lte" | "nin" => return Err(unsupported(&format!("`{kind}`"))),
        other => {
            return Err(invalid(
                "filters",
                format!("filters: {other:?} is not a filter type (eq, ne, gt, gte, lt, lte, in, nin, and, or)"),
            ));
        }
    }
    if all.len() > MAX_CONDITIONS {
        return Err(invalid("filters", format!("filters: more than {MAX_CONDITIONS} conditions")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn pairs(v: Value) -> Result<Vec<(String, String)>, String> {
        parse_filter(&v).map(|f| f.all).map_err(|e| e.message)
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn equality_and_conjunctions_become_keel_filters() {
        assert_eq!(pairs(json!({"type": "eq", "key": "lang", "value": "en"})), Ok(vec![p("attr.lang", "en")]));
        assert_eq!(
            pairs(json!({"type": "and", "filters": [
                {"type": "eq", "key": "year", "value": 2024.0},
                {"type": "or", "filters": [{"type": "in", "key": "draft", "value": [false]}]},
            ]})),
            Ok(vec![p("attr.year", "2024"), p("attr.draft", "false")])
        );
    }

    #[test]
    fn what_equality_cannot_answer_is_refused_by_name() {
        let err = pairs(json!({"type": "gt", "key": "year", "value": 2020})).unwrap_err();
        assert!(err.contains("`gt` is not supported"), "{err}");
        let err = pairs(json!({"type": "or", "filters": [
            {"type": "eq", "key": "a", "value": 1}, {"type": "eq", "key": "a", "value": 2}]}))
        .unwrap_err();
        assert!(err.contains("`or` of several"), "{err}");
        assert!(pairs(json!({"type": "like", "key": "a", "value": 1})).unwrap_err().contains("not a filter type"));
        assert!(pairs(json!({"type": "eq", "key": "a", "value": [1]})).is_err());
        assert!(pairs(json!({"type": "eq", "key": "a=b", "value": 1})).is_err());
        assert!(pairs(json!({"type": "and", "filters": []})).is_err());
        let deep =
            (0..6).fold(json!({"type": "eq", "key": "a", "value": 1}), |f, _| json!({"type": "and", "filters": [f]}));
        assert!(pairs(deep).unwrap_err().contains("nested"));
    }

    #[test]
    fn attributes_are_checked_and_indexed_in_one_spelling() {
        let attrs: Attributes =
            serde_json::from_value(json!({"lang": "en", "year": 2024, "score": 0.5, "draft": true})).unwrap();
        check_attributes(&attrs).unwrap();
        let meta = meta_of(&attrs);
        assert_eq!(meta["attr.year"], "2024");
        assert_eq!(meta["attr.score"], "0.5");
        assert_eq!(meta["attr.draft"], "true");
        let nested: Attributes = serde_json::from_value(json!({"a": {"b": 1}})).unwrap();
        assert!(check_attributes(&nested).is_err());
        let many: Attributes = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(check_attributes(&many).is_err());
    }
}
