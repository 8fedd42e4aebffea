//! keel's in-process guardrails (issue 14): checks that run inside the gateway, in microseconds to
//! milliseconds, with no remote service or Python sidecar in the request path. No IO: the request path's
//! guard stage (`keel_pipeline::guard`) and `keel guard check` drive these parts.
//!
//! - [`pii`]: the PII pattern layer: regexes find candidates for personal data and secrets with a fixed shape
//!   (e-mail addresses, phone numbers, payment cards, IBANs, national ids, IP addresses, API keys and
//!   high-entropy tokens, URLs, dates), and hand-written validators and guards decide which are real.
//! - [`ner`]: the named-entity tagger for personal data with no fixed shape: names, street addresses, places,
//!   organisations and the like.
//! - [`redact`]: reversible redaction: consistent placeholders out, the original values back in answers and
//!   streams.
//! - [`normalize`], [`injection`] and [`classifier`]: prompt-injection and jailbreak detection on text with its
//!   disguises undone: rule families and a trained linear classifier.
//! - [`output`]: what an answer must not carry, checked whole or as a stream passes.

pub mod classifier;
pub mod injection;
pub mod ner;
pub mod normalize;
pub mod output;
pub mod pii;
pub mod redact;

pub use classifier::{Classifier, InputKind};
pub use injection::{Family, InitError, InjectionGuard, InjectionVerdict};
pub use output::{Catch, OutputContext, OutputFilter, StreamScan, StreamStep, SystemPrompt};
pub use pii::{Detector, Entity, Finding};
pub use redact::{Restorer, Vault};
/// Compiles one of keel's own patterns with ASCII word boundaries: a Unicode `\b` makes the regex crate's lazy
/// DFA give up on any haystack holding a non-ASCII character and fall back to its slower engines (measured: a
/// 10 KB prompt with one accented letter took ten times as long). Letters outside ASCII then count as non-word
/// characters next to a boundary, which none of the patterns relies on.
pub(crate) fn ascii_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&pattern.replace(r"\b", r"(?-u:\b)")).size_limit(32 << 20).build()
}

/// A pattern (the operator's deny list) that does not compile.
pub use regex::Error as PatternError;

impl Entity {
    /// The entity named `name` (its [`Entity::as_str`] spelling, case-insensitive).
    pub fn parse(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.as_str().eq_ignore_ascii_case(name))
    }
}
