//! Reversible redaction: personal data is replaced by placeholders before a prompt leaves, and the placeholders
//! in the answer are replaced by the original values on the way back, in whole answers and in streams.
//!
//! A placeholder names the entity and a number (`[EMAIL_ADDRESS_1]`): the model sees what kind of value stood
//! there, so it can still write "I have sent it to [EMAIL_ADDRESS_1]". One request's [`Vault`] gives the same
//! value the same placeholder everywhere in the conversation, and never a placeholder that already occurs in
//! the text (a user quoting `[EMAIL_ADDRESS_1]` keeps it as written).
//!
//! [`Restorer`] restores a stream: a placeholder split across chunks (`[EMAIL_AD` + `DRESS_1]`) is held back
//! until it is complete or can no longer be one, so what leaves is never a broken placeholder or a partial value.

use std::collections::HashMap;

use crate::pii::{Entity, Finding};

/// The longest placeholder keel writes, in bytes (`[US_DRIVER_LICENSE_99999]` and a margin).
pub const MAX_PLACEHOLDER: usize = 40;

/// One request's placeholders and the values they stand for.
#[derive(Debug, Clone, Default)]
pub struct Vault {
    by_value: HashMap<(Entity, String), String>,
    by_placeholder: HashMap<String, String>,
    next: HashMap<Entity, usize>,
    /// How many values each entity had replaced (a value replaced twice counts once).
    pub counts: HashMap<Entity, usize>,
}

impl Vault {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    /// Whether `value` is one of the values this vault replaced (the client's own data, not a leak).
    pub fn holds_value(&self, value: &str) -> bool {
        self.by_value.keys().any(|(_, v)| v == value)
    }

    /// The placeholder for `value`: the one it already has, or a new one not found in `avoid`.
    fn placeholder(&mut self, entity: Entity, value: &str, avoid: &str) -> String {
        if let Some(p) = self.by_value.get(&(entity, value.to_string())) {
            return p.clone();
        }
        let n = self.next.entry(entity).or_insert(0);
        let placeholder = loop {
            *n += 1;
            let p = format!("[{}_{}]", entity.as_str(), n);
            if !avoid.contains(&p) && !self.by_placeholder.contains_key(&p) {
                break p;
            }
        };
        self.by_value.insert((entity, value.to_string()), placeholder.clone());
        self.by_placeholder.insert(placeholder.clone(), value.to_string());
        *self.counts.entry(entity).or_insert(0) += 1;
        placeholder
    }

    /// `text` with each finding replaced by its placeholder. `findings` are those of
    /// [`crate::Detector::detect`] on `text` (sorted, not overlapping); the caller filters them by policy.
    pub fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            if f.start < at || f.end > text.len() || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
                continue;
            }
            out.push_str(&text[at..f.start]);
            let p = self.placeholder(f.entity, &text[f.start..f.end], text);
            out.push_str(&p);
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// `text` with every placeholder of this vault replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        if self.is_empty() || !text.contains('[') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match tail.find(']').filter(|&close| close < MAX_PLACEHOLDER) {
                Some(close) => match self.by_placeholder.get(&tail[..=close]) {
                    Some(value) => {
                        out.push_str(value);
                        rest = &tail[close + 1..];
                    }
                    None => {
                        out.push('[');
                        rest = &tail[1..];
                    }
                },
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Restores a JSON text (tool-call arguments): a value is escaped as a JSON string's content, so that the
    /// arguments stay valid JSON whatever the value holds.
    pub fn restore_json(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let escaped = Vault {
            by_placeholder: self
                .by_placeholder
                .iter()
                .map(|(p, v)| {
                    let quoted = serde_json::to_string(v).unwrap_or_default();
                    (p.clone(), quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string())
                })
                .collect(),
            ..Vault::default()
        };
        escaped.restore(text)
    }
}

/// Restores placeholders in a stream of text fragments, holding back only what may be the start of one.
#[derive(Debug, Default)]
pub struct Restorer {
    held: String,
    json: bool,
}

impl Restorer {
    /// For text (`json: false`) or for JSON text such as tool-call arguments (`json: true`).
    pub fn new(json: bool) -> Self {
        Self { held: String::new(), json }
    }

    /// What can be sent of `fragment` now, restored; the rest is held for the next fragment or [`Self::finish`].
    pub fn push(&mut self, vault: &Vault, fragment: &str) -> String {
        self.held.push_str(fragment);
        // Hold back from the last `[` that has no `]` after it, if it is near enough the end to be the start of
        // a placeholder.
        let cut = match self.held.rfind('[') {
            Some(open) if !self.held[open..].contains(']') && self.held.len() - open < MAX_PLACEHOLDER => open,
            _ => self.held.len(),
        };
        let ready: String = self.held.drain(..cut).collect();
        self.apply(vault, &ready)
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self, vault: &Vault) -> String {
        let rest = std::mem::take(&mut self.held);
        self.apply(vault, &rest)
    }

    fn apply(&self, vault: &Vault, text: &str) -> String {
        if self.json { vault.restore_json(text) } else { vault.restore(text) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::Detector;

    #[test]
    fn redaction_is_consistent_and_reversible() {
        let d = Detector::new().unwrap();
        let mut v = Vault::new();
        let a = "Mail jane.doe@example.com or call +44 20 7946 0958; again: jane.doe@example.com";
        let r = v.redact(a, &d.detect(a));
        assert_eq!(r, "Mail [EMAIL_ADDRESS_1] or call [PHONE_NUMBER_1]; again: [EMAIL_ADDRESS_1]");
        let b = "and bob@example.org";
        assert_eq!(v.redact(b, &d.detect(b)), "and [EMAIL_ADDRESS_2]");
        assert_eq!(v.restore(&r), a);
        assert_eq!(v.counts[&Entity::Email], 2);
        assert!(v.holds_value("bob@example.org"));
    }

    #[test]
    fn a_placeholder_the_user_wrote_is_never_reused() {
        let d = Detector::new().unwrap();
        let mut v = Vault::new();
        let text = "literal [EMAIL_ADDRESS_1] and real ann@example.com";
        let r = v.redact(text, &d.detect(text));
        assert_eq!(r, "literal [EMAIL_ADDRESS_1] and real [EMAIL_ADDRESS_2]");
        assert_eq!(v.restore(&r), text);
    }

    #[test]
    fn a_placeholder_split_across_fragments_is_restored() {
        let d = Detector::new().unwrap();
        let mut v = Vault::new();
        let text = "write to ann@example.com";
        v.redact(text, &d.detect(text));
        let answer = "Sure, I wrote to [EMAIL_ADDRESS_1] and [x] done [";
        for split in 1..answer.len() {
            let mut r = Restorer::new(false);
            let mut out = r.push(&v, &answer[..split]);
            out.push_str(&r.push(&v, &answer[split..]));
            out.push_str(&r.finish(&v));
            assert_eq!(out, "Sure, I wrote to ann@example.com and [x] done [", "split at {split}");
        }
        // Fragment by fragment, one character at a time.
        let mut r = Restorer::new(false);
        let out: String = answer.chars().map(|c| r.push(&v, &c.to_string())).collect::<String>() + &r.finish(&v);
        assert_eq!(out, "Sure, I wrote to ann@example.com and [x] done [");
    }

    #[test]
    fn tool_arguments_stay_valid_json() {
        let mut v = Vault::new();
        let text = "x \"quoted\"@example.com";
        let f = Finding { entity: Entity::Email, start: 2, end: text.len() };
        v.redact(text, &[f]);
        let args = r#"{"to": "[EMAIL_ADDRESS_1]"}"#;
        let restored = v.restore_json(args);
        let parsed: serde_json::Value = serde_json::from_str(&restored).unwrap();
        assert_eq!(parsed["to"], "\"quoted\"@example.com");
    }
}
