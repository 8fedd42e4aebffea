//! The task a prompt asks for, read from its last user turn by cues a reader would use: an instruction verb
//! ("translate", "summarize", "classify", "extract"), lettered options, a code block, arithmetic. Rules route
//! on it (`tasks = ["classification"]`). Written by hand rather than learned: it must cost microseconds on
//! every routed request, be predictable from its rules, and need no model; what it gets right and wrong is
//! measured on the public datasets in `docs/routing.md`.

use std::sync::LazyLock;

use keel_config::Task;
use regex::Regex;

/// A case-insensitive regex of a fixed, tested pattern (a test compiles every one of them).
fn re(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("(?i){pattern}")).ok()
}

struct Cues {
    code: Option<Regex>,
    translation: Option<Regex>,
    summarization: Option<Regex>,
    extraction: Option<Regex>,
    classification: Option<Regex>,
    options: Option<Regex>,
    math: Option<Regex>,
    arithmetic: Option<Regex>,
}

static CUES: LazyLock<Cues> = LazyLock::new(|| Cues {
    code: re(concat!(
        r"```|\b(def|fn|func|function|class|import|return|SELECT|#include)\b[^\n]*[({:;]|",
        r"\b(write|fix|debug|refactor|implement|optimi[sz]e|review)\b[^.?!\n]{0,40}\b(code|function|script|program|",
        r"class|method|query|regex|unit tests?|snippet)\b|",
        r"\b(in|using) (python|javascript|typescript|rust|java|golang|c\+\+|c#|sql|bash|ruby|php|kotlin|swift)\b"
    )),
    translation: re(concat!(
        r"\btranslat(e|ion)\b|\b(into|to) (english|french|spanish|german|italian|portuguese|dutch|chinese|",
        r"japanese|korean|russian|arabic|hindi|polish|swedish|turkish)\b[^.?!\n]{0,20}[:?]?\s*$"
    )),
    summarization: re(
        r"\bsummar(y|ize|ise|izing|ising)\b|\btl;?dr\b|\bkey (points|takeaways)\b|\bin (one|two|three|a few) sentences?\b|\bcondense\b",
    ),
    extraction: re(concat!(
        r"\bextract\b|\bpull out\b|\b(list|find|identify) (all|every|each) (the )?",
        r"(names?|dates?|entities|people|places|amounts?|numbers|emails?|addresses)\b|\bparse\b[^.?!\n]{0,30}\binto\b"
    )),
    classification: re(concat!(
        r"\bclassif(y|ication)\b|\bcategori[sz]e\b|\bwhich (category|class|label|option|of the following)\b|",
        r"\bsentiment\b|\b(label|tag) (it|this|the)\b|\bis (this|it|the)( \w+)? (spam|positive|negative|neutral|",
        r"toxic|relevant)\b|\banswer with (only )?(the |one )?(letter|label|word|yes or no)\b|\byes or no\b"
    )),
    // Lettered or numbered options, one per line: "A. …", "(B) …", "C) …".
    options: re(r"(?m)^\s*\(?[A-E][.):]\s+\S[^\n]*\n\s*\(?[A-E][.):]\s+\S"),
    math: re(concat!(
        r"\b(calculate|compute|solve|how (many|much)|what is the (sum|product|difference|total|average|value)|",
        r"equation|percent(age)?|probability|integral|derivative)\b"
    )),
    arithmetic: re(r"\d+(\.\d+)?\s*[-+*/×÷^=]\s*\d+"),
});

/// The task of a prompt whose last user turn is `text`.
pub fn detect(text: &str) -> Task {
    let cues = &*CUES;
    let has = |r: &Option<Regex>| r.as_ref().is_some_and(|r| r.is_match(text));
    if has(&cues.code) {
        Task::Code
    } else if has(&cues.translation) {
        Task::Translation
    } else if has(&cues.summarization) {
        Task::Summarization
    } else if has(&cues.extraction) {
        Task::Extraction
    } else if has(&cues.classification) || has(&cues.options) {
        Task::Classification
    } else if has(&cues.math) && text.chars().any(|c| c.is_ascii_digit()) || has(&cues.arithmetic) {
        Task::Math
    } else {
        Task::Generation
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn every_cue_compiles() {
        let c = &*CUES;
        for (name, r) in [
            ("code", &c.code),
            ("translation", &c.translation),
            ("summarization", &c.summarization),
            ("extraction", &c.extraction),
            ("classification", &c.classification),
            ("options", &c.options),
            ("math", &c.math),
            ("arithmetic", &c.arithmetic),
        ] {
            assert!(r.is_some(), "the {name} cue does not compile");
        }
    }

    #[test]
    fn tasks_are_read_from_their_cues() {
        let cases = [
            ("Write a Python function that reverses a linked list.", Task::Code),
            ("Why does this fail?\n```rust\nlet x: u8 = 256;\n```", Task::Code),
            ("How do I do this in JavaScript?", Task::Code),
            ("Translate 'good morning' into Japanese.", Task::Translation),
            ("Summarize the following article in two sentences:\n...", Task::Summarization),
            ("TL;DR of this thread please", Task::Summarization),
            ("Extract every date and amount from this invoice as JSON.", Task::Extraction),
            ("List all the people mentioned in the text below.", Task::Extraction),
            ("Classify this review as positive, negative or neutral: 'meh'", Task::Classification),
            ("What is the sentiment of: I loved it", Task::Classification),
            ("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth", Task::Classification),
            ("Is this email spam? 'You won a prize'", Task::Classification),
            (
                "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?",
                Task::Math,
            ),
            ("What is 17 * 23?", Task::Math),
            ("Write a short poem about autumn.", Task::Generation),
            ("What is the capital of France?", Task::Generation),
            ("Tell me about the history of Rome.", Task::Generation),
        ];
        let wrong: Vec<_> =
            cases.iter().filter(|(t, want)| detect(t) != *want).map(|(t, w)| (detect(t), *w, t)).collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
