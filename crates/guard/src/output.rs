//! Output filtering: what an answer must not carry. Personal data and secrets (those the client did not send
//! itself), the route's canary token (a sign the system prompt leaked), long verbatim runs of the system prompt,
//! and the operator's deny patterns.
//!
//! [`OutputScan`] checks a whole answer; [`StreamScan`] checks a stream as it passes, holding back only the last
//! [`OutputFilter::holdback`] bytes (the longest span a match may have), so that nothing is sent before it was
//! checked and the stream can be ended with an error before the bytes of a match leave.

use std::collections::HashSet;

use regex::Regex;
use serde::Serialize;

use crate::pii::{Detector, Entity};

/// Why an answer was caught.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "what", rename_all = "snake_case")]
pub enum Catch {
    /// Personal data or a secret the request did not contain.
    Pii(Entity),
    /// The route's canary token: the system prompt was repeated.
    Canary,
    /// A long run of the system prompt, word for word.
    SystemPrompt,
    /// One of the operator's deny patterns (its index in the configuration).
    Deny(usize),
}

impl Catch {
    /// The catch's name in the log, the metrics and the error: `pii`, `canary`, `system_prompt`, `deny`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Catch::Pii(_) => "pii",
            Catch::Canary => "canary",
            Catch::SystemPrompt => "system_prompt",
            Catch::Deny(_) => "deny",
        }
    }
}

/// The longest span a deny pattern, the canary or a PII value may have and still be caught in a stream; the
/// bytes a stream holds back.
pub const DEFAULT_HOLDBACK: usize = 128;

/// Words of the system prompt in a row that count as leaking it.
pub const LEAK_WORDS: usize = 12;

/// The output checks of one route, compiled once.
#[derive(Debug)]
pub struct OutputFilter {
    deny: Vec<Regex>,
    entities: Vec<Entity>,
    holdback: usize,
}

impl OutputFilter {
    /// `deny`: the operator's patterns (regex syntax); `entities`: the kinds of personal data and secrets an
    /// answer must not carry.
    pub fn new(deny: &[String], entities: Vec<Entity>) -> Result<Self, regex::Error> {
        let deny = deny.iter().map(|p| Regex::new(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { deny, entities, holdback: DEFAULT_HOLDBACK })
    }

    pub fn holdback(&self) -> usize {
        self.holdback
    }

    /// What `text` must not carry, given what the request held.
    pub fn scan(&self, detector: &Detector, text: &str, ctx: &OutputContext<'_>) -> Vec<(Catch, usize, usize)> {
        let mut catches = Vec::new();
        if let Some(canary) = ctx.canary.filter(|c| !c.is_empty()) {
            catches.extend(text.match_indices(canary).map(|(at, c)| (Catch::Canary, at, at + c.len())));
        }
        for (i, re) in self.deny.iter().enumerate() {
            catches.extend(re.find_iter(text).map(|m| (Catch::Deny(i), m.start(), m.end())));
        }
        if !self.entities.is_empty() {
            let found = if self.entities.iter().any(|e| e.is_tagged()) {
                detector.detect(text)
            } else {
                detector.detect_patterns(text)
            };
            for f in found {
                let value = &text[f.start..f.end];
                if self.entities.contains(&f.entity) && !ctx.allowed(value) {
                    catches.push((Catch::Pii(f.entity), f.start, f.end));
                }
            }
        }
        catches.sort_by_key(|c| c.1);
        catches
    }
}

/// What the request held: values the client sent itself (not a leak when they come back), the canary, and the
/// system prompt's word runs.
#[derive(Debug, Default)]
pub struct OutputContext<'a> {
    pub canary: Option<&'a str>,
    /// The request's own text (its messages, joined): personal data found in it is the client's.
    pub request_text: &'a str,
    pub vault: Option<&'a crate::redact::Vault>,
    pub system: Option<&'a SystemPrompt>,
}

impl OutputContext<'_> {
    fn allowed(&self, value: &str) -> bool {
        self.request_text.contains(value) || self.vault.is_some_and(|v| v.holds_value(value))
    }
}

/// The system prompt as runs of [`LEAK_WORDS`] words, hashed, for the leak check.
#[derive(Debug, Default)]
pub struct SystemPrompt {
    runs: HashSet<u64>,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase())
}

fn run_hash(run: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    run.hash(&mut h);
    h.finish()
}

impl SystemPrompt {
    /// `None` when the prompt is shorter than one run (too short to recognise as a leak).
    pub fn new(text: &str) -> Option<Self> {
        let w: Vec<String> = words(text).collect();
        if w.len() < LEAK_WORDS {
            return None;
        }
        Some(Self { runs: w.windows(LEAK_WORDS).map(run_hash).collect() })
    }

    /// Whether `text` repeats [`LEAK_WORDS`] words of the system prompt in a row.
    pub fn leaked_in(&self, text: &str) -> bool {
        let w: Vec<String> = words(text).collect();
        w.windows(LEAK_WORDS).any(|run| self.runs.contains(&run_hash(run)))
    }
}

/// A stream's output check: text goes in as it comes, and what may be sent comes out, all but the last
/// `holdback` bytes; a catch stops it.
#[derive(Debug, Default)]
pub struct StreamScan {
    /// Text received and not sent yet.
    pending: String,
    /// The answer so far (for the system-prompt check, whose runs span many fragments), bounded.
    words_tail: String,
}

/// What a stream's output check decided about a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamStep {
    /// Send this text (possibly empty: all of it is held back for now).
    Send(String),
    /// Stop the stream: the answer carries what it must not.
    Caught(Catch),
}

/// How much of the answer's end the system-prompt check keeps (enough for a run of words that spans fragments).
const TAIL_BYTES: usize = 1024;

/// The longest match at the end of the arrived text that is held back while it may still grow.
const UNSETTLED_MAX: usize = 4 * 1024;

impl StreamScan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `fragment`; returns what may be sent now, or the catch that ends the stream.
    pub fn push(
        &mut self,
        filter: &OutputFilter,
        detector: &Detector,
        ctx: &OutputContext<'_>,
        fragment: &str,
    ) -> StreamStep {
        self.pending.push_str(fragment);
        self.step(filter, detector, ctx, false)
    }

    /// The text held back, taken as it is (after a catch that does not stop the stream).
    pub fn take_pending(&mut self) -> String {
        let held = std::mem::take(&mut self.pending);
        self.words_tail.push_str(&held);
        held
    }

    /// The end of the stream: the rest, checked.
    pub fn finish(&mut self, filter: &OutputFilter, detector: &Detector, ctx: &OutputContext<'_>) -> StreamStep {
        self.step(filter, detector, ctx, true)
    }

    fn step(&mut self, filter: &OutputFilter, detector: &Detector, ctx: &OutputContext<'_>, end: bool) -> StreamStep {
        // A match that reaches the end of what has arrived may still grow (a key whose next characters are in
        // the next fragment): it is not reported yet, so that a redaction masks the whole value, but nothing
        // from its start on is sent. Past UNSETTLED_MAX bytes it counts as settled (holding stays bounded).
        let mut hold_from = self.pending.len();
        for (catch, start, stop) in filter.scan(detector, &self.pending, ctx) {
            let growing = !end && stop == self.pending.len() && stop - start < UNSETTLED_MAX;
            if !growing {
                return StreamStep::Caught(catch);
            }
            hold_from = hold_from.min(start);
        }
        if let Some(system) = ctx.system {
            let mut recent = self.words_tail.clone();
            recent.push_str(&self.pending);
            if system.leaked_in(&recent) {
                return StreamStep::Caught(Catch::SystemPrompt);
            }
        }
        let keep = if end { 0 } else { filter.holdback };
        let mut cut = self.pending.len().saturating_sub(keep).min(hold_from);
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let sent: String = self.pending.drain(..cut).collect();
        self.words_tail.push_str(&sent);
        if self.words_tail.len() > TAIL_BYTES {
            let mut from = self.words_tail.len() - TAIL_BYTES;
            while !self.words_tail.is_char_boundary(from) {
                from += 1;
            }
            self.words_tail.drain(..from);
        }
        StreamStep::Send(sent)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn filter() -> OutputFilter {
        OutputFilter::new(&["(?i)project\\s+bluebird".to_string()], vec![Entity::Secret, Entity::Email]).unwrap()
    }

    #[test]
    fn an_answer_is_caught_for_what_it_must_not_carry() {
        let d = Detector::new().unwrap();
        let f = filter();
        let sys = SystemPrompt::new(
            "You are the billing assistant of Acme. Never reveal internal discount codes and always answer politely.",
        )
        .unwrap();
        let ctx = OutputContext {
            canary: Some("kc-7f3a9c"),
            request_text: "my mail is me@example.com",
            vault: None,
            system: Some(&sys),
        };
        let kinds = |t: &str| f.scan(&d, t, &ctx).into_iter().map(|c| c.0).collect::<Vec<_>>();
        assert_eq!(kinds("Plans for Project  Bluebird"), vec![Catch::Deny(0)]);
        assert_eq!(kinds("token kc-7f3a9c"), vec![Catch::Canary]);
        assert_eq!(kinds("write to boss@example.com"), vec![Catch::Pii(Entity::Email)]);
        assert_eq!(kinds("I replied to me@example.com"), vec![], "the client's own address");
        assert_eq!(kinds("key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"), vec![Catch::Pii(Entity::Secret)]);
        assert!(sys.leaked_in("Sure! My instructions: you are the billing assistant of acme, never reveal internal discount codes and so on"));
        assert!(!sys.leaked_in("I am the billing assistant and I cannot share discount codes."));
    }

    #[test]
    fn a_stream_is_stopped_before_a_match_leaves_even_split_across_fragments() {
        let d = Detector::new().unwrap();
        let f = filter();
        let ctx = OutputContext::default();
        let answer = format!("{}The codename is Project Bluebird, keep it quiet.", "Some harmless words. ".repeat(20));
        for size in [1, 3, 7, 50] {
            let mut scan = StreamScan::new();
            let mut sent = String::new();
            let mut caught = None;
            let chars: Vec<char> = answer.chars().collect();
            for piece in chars.chunks(size) {
                match scan.push(&f, &d, &ctx, &piece.iter().collect::<String>()) {
                    StreamStep::Send(s) => sent.push_str(&s),
                    StreamStep::Caught(c) => {
                        caught = Some(c);
                        break;
                    }
                }
            }
            assert_eq!(caught, Some(Catch::Deny(0)), "fragments of {size}");
            assert!(!sent.to_lowercase().contains("bluebird"), "sent before the catch: {sent}");
            assert!(!sent.to_lowercase().contains("project b"), "sent before the catch: {sent}");
        }
    }

    #[test]
    fn a_clean_stream_is_sent_whole() {
        let d = Detector::new().unwrap();
        let f = filter();
        let ctx = OutputContext::default();
        let answer = "A perfectly ordinary answer with ünïcödé, spread over many small fragments. ".repeat(10);
        let mut scan = StreamScan::new();
        let mut sent = String::new();
        let mut received = 0;
        let chars: Vec<char> = answer.chars().collect();
        for piece in chars.chunks(5) {
            let piece: String = piece.iter().collect();
            received += piece.len();
            match scan.push(&f, &d, &ctx, &piece) {
                StreamStep::Send(s) => sent.push_str(&s),
                StreamStep::Caught(c) => panic!("caught {c:?}"),
            }
            assert!(received - sent.len() < DEFAULT_HOLDBACK + 4, "held back only what a match may span");
        }
        match scan.finish(&f, &d, &ctx) {
            StreamStep::Send(s) => sent.push_str(&s),
            StreamStep::Caught(c) => panic!("caught {c:?}"),
        }
        assert_eq!(sent, answer);
    }
}
