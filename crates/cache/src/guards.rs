//! Guards against the typical false hits of a semantic cache. Sentence embeddings place "What is the capital
//! of France?" and "What is the capital of Spain?" close together, and "Refund order 1234" next to "Refund
//! order 1235": the meaning is alike, the answer is not. So besides being similar, two prompts must agree on
//! the facts that pin an answer down: numbers, dates and times, identifiers (and short quoted literals), the
//! names either mentions, and negation; and their wording must not ask for different things ([`crate::contrast`]:
//! safe / unsafe, ascending / descending, time / space complexity).
//!
//! The extraction is lexical and cheap (microseconds per prompt). It is written by hand because no crate does
//! this normalisation; the rules were shaped on STS-B train (never on the sets they are reported on) and are
//! measured in `docs/cache.md`. Every guard is symmetric.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// The facts of one prompt the guards compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Numeric values, normalised: digits ("1,000", "$5", "5%", "34m", "2.5 million") and number words
    /// ("twenty five", "one hundred and five").
    pub numbers: BTreeSet<String>,
    /// Months, weekdays, today/tomorrow/yesterday/tonight, clock times as 24-hour HH:MM.
    pub dates: BTreeSet<String>,
    /// Identifiers: e-mail addresses, URLs, paths, words mixing letters and digits, snake_case, camelCase,
    /// dotted names, `backticked` text; lower-cased.
    pub identifiers: BTreeSet<String>,
    /// Short quoted literals (one to three words), as space-separated lower-case words.
    pub quoted: BTreeSet<String>,
    /// Names: capitalised words not at a sentence's start, and acronyms; lower-cased.
    pub names: BTreeSet<String>,
    /// Every word, lower-cased (what another prompt's names must be found among).
    pub words: BTreeSet<String>,
    /// The prompt's words in order, space-separated and padded (what quoted literals are looked up in).
    pub phrase: String,
    /// Whether the prompt negates (not, no, never, n't, without, …).
    pub negated: bool,
    /// The words the contrast guard compares ([`crate::contrast::tokens`]).
    pub tokens: Vec<String>,
}

/// Which guard turned a candidate down.
pub type Refusal = &'static str;

/// Whether two prompts agree on every fact; the name of the first guard that fails otherwise.
pub fn check(a: &Features, b: &Features) -> Result<(), Refusal> {
    if a.numbers != b.numbers {
        return Err("numbers");
    }
    if a.dates != b.dates {
        return Err("dates");
    }
    let quoted_in = |q: &BTreeSet<String>, other: &Features| q.iter().all(|p| other.phrase.contains(&format!(" {p} ")));
    if a.identifiers != b.identifiers || !quoted_in(&a.quoted, b) || !quoted_in(&b.quoted, a) {
        return Err("identifiers");
    }
    if !a.names.is_subset(&b.words) || !b.names.is_subset(&a.words) {
        return Err("names");
    }
    if a.negated != b.negated {
        return Err("negation");
    }
    if crate::contrast::contrast(&a.tokens, &b.tokens).is_some() {
        return Err("contrast");
    }
    Ok(())
}

/// The facts of `text`.
pub fn features(text: &str) -> Features {
    let Some(re) = RE.as_ref() else { return Features::default() };
    let s = normalise(re, text);
    let words = words(re, &s);
    let phrase =
        format!(" {} ", re.word_chars.find_iter(&s.to_lowercase()).map(|m| m.as_str()).collect::<Vec<_>>().join(" "));
    let (identifiers, quoted) = identifiers(re, &s);
    Features {
        numbers: numbers(re, &s),
        dates: dates(re, &s),
        identifiers,
        quoted,
        names: names(re, &s),
        words,
        phrase,
        negated: negated(re, &s),
        tokens: crate::contrast::tokens(text),
    }
}

struct Patterns {
    split_nt: Regex,
    split_nt2: Regex,
    split_clitic: Regex,
    dollar: Regex,
    percent: Regex,
    acronym_dots: Regex,
    word: Regex,
    word_chars: Regex,
    ordinal: Regex,
    number_token: Regex,
    alpha_token: Regex,
    clock: Regex,
    ident: Regex,
    digit_letters: Regex,
    unit_like: Regex,
    quote_double: Regex,
    quote_single: Regex,
    name_token: Regex,
    caps: Regex,
    no: Regex,
    clause_split: Regex,
    alnum: Regex,
    negation: Regex,
}

static RE: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    Some(Patterns {
        split_nt: Regex::new(r"n\s+'t\b").ok()?,
        split_nt2: Regex::new(r"\s+n't\b").ok()?,
        split_clitic: Regex::new(r"(\w)\s+'(s|re|ve|ll|d|m)\b").ok()?,
        dollar: Regex::new(r"\$\s+(\d)").ok()?,
        percent: Regex::new(r"(\d)\s+%").ok()?,
        acronym_dots: Regex::new(r"\b(?:[A-Za-z]\.){2,}").ok()?,
        word: Regex::new(r"[A-Za-z][A-Za-z0-9_'\-]*").ok()?,
        word_chars: Regex::new(r"\w+").ok()?,
        ordinal: Regex::new(r"(\d)(?:st|nd|rd|th)\b").ok()?,
        number_token: Regex::new(r"\d+(?:,\d{3})*(?:\.\d+)?[A-Za-z_]*").ok()?,
        alpha_token: Regex::new(r"[A-Za-z]+").ok()?,
        clock: Regex::new(r"(?i)\b(\d{1,2})(?::(\d\d))?\s*([ap])\.?m\b\.?").ok()?,
        ident: Regex::new(
            r"(?x)
               [\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+
             | (?:https?://|www\.)\S+
             | (?:~|\.{1,2})?/[\w.\-/]+
             | [A-Za-z]:\\[\w.\\\-]+
             | \b\w*[A-Za-z]\w*\d\w*\b
             | \b[A-Za-z]+-\d[\w\-]*
             | \b\w+_\w+\b
             | \b[a-z]+[A-Z]\w*\b
             | \b[A-Za-z_]\w*(?:\.\w+)+\(?\)?
             | `[^`]+`",
        )
        .ok()?,
        digit_letters: Regex::new(r"\b\w*\d\w*[A-Za-z]\w*\b").ok()?,
        unit_like: Regex::new(r"^\d+(?:st|nd|rd|th|[a-z]{1,3})$").ok()?,
        quote_double: Regex::new(r#""([^"]{1,40})""#).ok()?,
        quote_single: Regex::new(r"'([^'\s][^']{0,38}[^'\s])'").ok()?,
        name_token: Regex::new(r"[A-Za-z][A-Za-z0-9'\-]*").ok()?,
        caps: Regex::new(r"\b[A-Z]{2,}\b").ok()?,
        no: Regex::new(r"(?i)\bno\b").ok()?,
        clause_split: Regex::new(
            r#"(?i)\s*[,;:()"]\s*|\s+-+\s+|\s+–\s+|\.\s+|\b(?:and|but|which|who|whom|whose|that|said|says|while|whereas|because|although|though|as|when|after|before|if|whether|until|where)\b"#,
        )
        .ok()?,
        alnum: Regex::new(r"[a-z0-9]+").ok()?,
        negation: Regex::new(r"(?i)\b(?:not|never|none|nobody|nothing|nowhere|neither|nor|cannot|without)\b|n't\b").ok()?,
    })
});

const STOP: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "let",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "also",
    "may",
    "might",
    "must",
    "shall",
    "s",
    "t",
    "d",
    "ll",
    "m",
    "re",
    "ve",
    "y",
    "o",
    "one",
    "said",
    "says",
    "say",
];

const TITLES: &[&str] = &[
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sir",
    "lt",
    "lieut",
    "gen",
    "col",
    "capt",
    "sgt",
    "sen",
    "rep",
    "gov",
    "st",
    "jr",
    "sr",
    "president",
    "minister",
    "prime",
    "king",
    "queen",
    "pope",
    "judge",
    "chief",
    "secretary",
    "senator",
    "governor",
    "mayor",
];

const UNITS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: &[&str] = &["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: &[&str] = &["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
const RELATIVE: &[&str] = &["today", "tomorrow", "yesterday", "tonight"];

pub(crate) fn is_stop(w: &str) -> bool {
    STOP.contains(&w)
}

/// Undoes tokenisation artefacts and typography so that both prompts are read alike: curly quotes, split
/// contractions ("doesn 't"), "$ 5", "5 %", dotted acronyms ("U.S." → "US").
fn normalise(re: &Patterns, text: &str) -> String {
    let s = text.replace(['\u{2019}', '\u{2018}'], "'").replace(['\u{201c}', '\u{201d}'], "\"");
    let s = re.split_nt.replace_all(&s, "n't");
    let s = re.split_nt2.replace_all(&s, "n't");
    let s = re.split_clitic.replace_all(&s, "$1'$2");
    let s = re.dollar.replace_all(&s, "$$$1");
    let s = re.percent.replace_all(&s, "$1%");
    re.acronym_dots.replace_all(&s, |c: &Captures<'_>| c[0].replace('.', "")).into_owned()
}

fn words(re: &Patterns, s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in re.word.find_iter(s) {
        let w = strip_possessive(m.as_str());
        for p in w.split(['-', '\'']).filter(|p| !p.is_empty()) {
            out.insert(p.to_lowercase());
        }
    }
    out
}

fn strip_possessive(w: &str) -> &str {
    w.strip_suffix("'s").or_else(|| w.strip_suffix('\'')).unwrap_or(w)
}

fn format_number(x: f64) -> String {
    let x = (x * 1e6).round() / 1e6;
    if x.fract() == 0.0 && x.abs() < 1e18 { format!("{}", x as i64) } else { format!("{x}") }
}

/// Numeric values: digits (with thousands separators, decimals, unit suffixes k/m/bn/tn) and runs of number
/// words combined ("twenty five" = 25, "2.5 million" = 2500000). Digits glued to letters (x86, mp3, COVID-19)
/// are identifiers, not numbers.
fn numbers(re: &Patterns, s: &str) -> BTreeSet<String> {
    let s = re.ordinal.replace_all(s, "$1");
    let bytes = s.as_bytes();
    // Tokens in order: digit tokens (filtered by what surrounds them) and alphabetic words.
    let mut tokens: Vec<(usize, Token)> = Vec::new();
    for m in re.number_token.find_iter(&s) {
        let start = m.start();
        let prev = start.checked_sub(1).map(|i| bytes[i]);
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
            continue;
        }
        if prev == Some(b'-') && start >= 2 && bytes[start - 2].is_ascii_alphabetic() {
            continue;
        }
        let text = m.as_str();
        let digits_end = text.find(|c: char| c.is_ascii_alphabetic() || c == '_').unwrap_or(text.len());
        let (digits, suffix) = text.split_at(digits_end);
        if bytes.get(m.end()).is_some_and(u8::is_ascii_digit) {
            continue; // letters then digits again: an identifier
        }
        let Ok(value) = digits.replace(',', "").parse::<f64>() else { continue };
        let scale = match suffix {
            "k" => 1e3,
            "m" | "mn" => 1e6,
            "bn" | "b" => 1e9,
            "tn" => 1e12,
            _ => 1.0,
        };
        tokens.push((start, Token::Digits(value * scale)));
    }
    for m in re.alpha_token.find_iter(&s) {
        // Letters inside a digit token ("34m") belong to it.
        if m.start() > 0 && bytes[m.start() - 1].is_ascii_digit() {
            continue;
        }
        tokens.push((m.start(), Token::Word(m.as_str().to_lowercase())));
    }
    tokens.sort_by_key(|t| t.0);
    let mut values = BTreeSet::new();
    let (mut cur, mut acc, mut word_run): (Option<f64>, f64, bool) = (None, 0.0, false);
    let mut flush = |cur: &mut Option<f64>, acc: &mut f64, word_run: &mut bool| {
        if let Some(c) = cur.take() {
            values.insert(format_number(*acc + c));
        }
        *acc = 0.0;
        *word_run = false;
    };
    for (_, t) in tokens {
        match t {
            Token::Digits(v) => {
                flush(&mut cur, &mut acc, &mut word_run);
                cur = Some(v);
            }
            Token::Word(w) => {
                let small = UNITS.iter().position(|u| *u == w).map(|i| i as f64);
                let tens = TENS.iter().position(|u| *u == w).map(|i| (i as f64 + 2.0) * 10.0);
                let scale = match w.as_str() {
                    "hundred" => Some(100.0),
                    "thousand" => Some(1e3),
                    "million" => Some(1e6),
                    "billion" => Some(1e9),
                    "trillion" => Some(1e12),
                    _ => None,
                };
                if let Some(v) = small.or(tens) {
                    let joins = match cur {
                        Some(c) if word_run => {
                            (v < 10.0 && c % 10.0 == 0.0 && c % 100.0 >= 20.0)
                                || (v < 100.0 && c % 100.0 == 0.0 && c >= 100.0)
                                || (c == 0.0 && acc > 0.0)
                        }
                        _ => false,
                    };
                    if joins {
                        cur = cur.map(|c| c + v);
                    } else {
                        flush(&mut cur, &mut acc, &mut word_run);
                        cur = Some(v);
                    }
                    word_run = true;
                } else if let Some(sc) = scale {
                    match cur {
                        Some(c) if sc == 100.0 => cur = Some(if c == 0.0 { 100.0 } else { c * 100.0 }),
                        Some(c) => {
                            acc += if c == 0.0 { sc } else { c * sc };
                            cur = Some(0.0);
                        }
                        None => {
                            flush(&mut cur, &mut acc, &mut word_run);
                            cur = Some(sc);
                        }
                    }
                    word_run = true;
                } else if w == "and" && cur.is_some() && word_run {
                    continue;
                } else {
                    flush(&mut cur, &mut acc, &mut word_run);
                }
            }
        }
    }
    flush(&mut cur, &mut acc, &mut word_run);
    values
}

enum Token {
    Digits(f64),
    Word(String),
}

/// Months ("May" only capitalised), weekdays, abbreviated months ("Jan."), relative days, clock times.
fn dates(re: &Patterns, s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in re.alpha_token.find_iter(s) {
        let w = m.as_str();
        let lower = w.to_lowercase();
        let dotted = s[m.end()..].starts_with('.');
        if DAYS.contains(&lower.as_str()) || RELATIVE.contains(&lower.as_str()) {
            out.insert(lower);
        } else if MONTHS.contains(&lower.as_str()) {
            if (lower != "may" || w == "May") && w != "march" {
                out.insert(lower);
            }
        } else if dotted
            && w.starts_with(|c: char| c.is_ascii_uppercase())
            && let Some(full) = MONTHS.iter().find(|mo| {
                matches!(
                    lower.as_str(),
                    "jan" | "feb" | "mar" | "apr" | "jun" | "jul" | "aug" | "sep" | "sept" | "oct" | "nov" | "dec"
                ) && mo.starts_with(&lower[..3])
            })
        {
            out.insert((*full).to_string());
        }
    }
    for c in re.clock.captures_iter(s) {
        let hour = c[1].parse::<u32>().unwrap_or(0) % 12 + if c[3].eq_ignore_ascii_case("p") { 12 } else { 0 };
        let minute = c.get(2).map_or("00", |m| m.as_str());
        out.insert(format!("{hour:02}:{minute}"));
    }
    out
}

/// Identifiers and short quoted literals.
fn identifiers(re: &Patterns, s: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut ids = BTreeSet::new();
    let mut add = |t: &str| {
        let t = t.trim_matches('`').trim_end_matches(['.', ',', ';', ':']);
        if !t.is_empty() && !t.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',') {
            ids.insert(t.to_lowercase());
        }
    };
    for m in re.ident.find_iter(s) {
        add(m.as_str());
    }
    let bytes = s.as_bytes();
    for m in re.digit_letters.find_iter(s) {
        let prev = m.start().checked_sub(1).map(|i| bytes[i]);
        if prev.is_some_and(|c| c.is_ascii_digit() || c == b'.') || re.unit_like.is_match(m.as_str()) {
            continue; // 1st, 34m, 5kg: numbers with a unit
        }
        add(m.as_str());
    }
    let mut quoted = BTreeSet::new();
    let mut quote = |inner: &str| {
        let q: Vec<String> = re.word_chars.find_iter(&inner.to_lowercase()).map(|m| m.as_str().to_string()).collect();
        if !q.is_empty() && q.len() <= 3 {
            quoted.insert(q.join(" "));
        }
    };
    for c in re.quote_double.captures_iter(s) {
        quote(&c[1]);
    }
    for c in re.quote_single.captures_iter(s) {
        let end = c.get(0).map_or(0, |m| m.end());
        if !s[end..].starts_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
            quote(&c[1]);
        }
    }
    (ids, quoted)
}

/// A text whose capitals say nothing about names: a Title-Case headline or all lower case.
fn casing_uninformative(re: &Patterns, s: &str) -> bool {
    let ws: Vec<&str> = re
        .name_token
        .find_iter(s)
        .map(|m| m.as_str())
        .filter(|w| w.len() >= 4 && !is_stop(&w.to_lowercase()))
        .collect();
    let caps = ws.iter().filter(|w| w.starts_with(|c: char| c.is_uppercase())).count();
    (ws.len() >= 3 && caps == ws.len()) || (!ws.is_empty() && caps == 0 && !s.chars().any(|c| c.is_ascii_uppercase()))
}

/// Capitalised words not at a sentence's start (nor after a quote or a colon), and acronyms; titles and
/// function words excluded.
fn names(re: &Patterns, s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if casing_uninformative(re, s) {
        for m in re.caps.find_iter(s) {
            let l = m.as_str().to_lowercase();
            if !is_stop(&l) {
                out.insert(l);
            }
        }
        return out;
    }
    for m in re.name_token.find_iter(s) {
        let w = strip_possessive(m.as_str());
        let before = s[..m.start()].trim_end();
        let mut start = before.is_empty()
            || (before.ends_with(['.', '!', '?', ':', ';', '"', '(', '\'', '[', '-']) && !before.ends_with("..."));
        if start && before.ends_with('.') {
            // "Mr. Clinton", "J. Smith": an abbreviation, not a sentence's end.
            let prev = before[..before.len() - 1].trim_end();
            let prev_word: String = prev
                .chars()
                .rev()
                .take_while(char::is_ascii_alphabetic)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !prev_word.is_empty() && (TITLES.contains(&prev_word.to_lowercase().as_str()) || prev_word.len() == 1) {
                start = false;
            }
        }
        let acronym = w.len() >= 2 && w.chars().all(|c| c.is_ascii_uppercase());
        for part in w.split(['-', '\'']).filter(|p| !p.is_empty()) {
            let lower = part.to_lowercase();
            if is_stop(&lower) || TITLES.contains(&lower.as_str()) {
                continue;
            }
            if acronym || (part.starts_with(|c: char| c.is_uppercase()) && !start) {
                out.insert(lower);
            }
        }
    }
    out
}

/// The clauses of a prompt, for the verification step: the text split at punctuation and at conjunctions and
/// relative pronouns, keeping fragments with at least two content words. Empty when the prompt has fewer than
/// two such clauses (a single clause is already checked by the whole prompt's similarity).
///
/// Why: a request that adds or drops a clause ("… and its impact on exports") stays close to the original
/// as a whole, because the sentence embedding dilutes the clause; embedded on its own, the clause finds nothing
/// similar on the other side. Measured in `docs/cache.md`.
pub fn clauses(text: &str) -> Vec<String> {
    let Some(re) = RE.as_ref() else { return Vec::new() };
    let s = normalise(re, text);
    let kept: Vec<String> = re
        .clause_split
        .split(&s)
        .map(|f| f.trim_matches(|c: char| c.is_whitespace() || matches!(c, '.' | ',' | '\'' | '"')))
        .filter(|f| {
            let lower = f.to_lowercase();
            re.alnum.find_iter(&lower).filter(|w| w.as_str().len() > 1 && !is_stop(w.as_str())).count() >= 2
        })
        .map(str::to_string)
        .collect();
    if kept.len() >= 2 { kept } else { Vec::new() }
}

fn negated(re: &Patterns, s: &str) -> bool {
    if re.negation.is_match(s) {
        return true;
    }
    // "no", but not "No. 1".
    re.no.find_iter(s).any(|m| {
        let rest = &s[m.end()..];
        !(rest.starts_with('.') && rest[1..].trim_start().starts_with(|c: char| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ok(a: &str, b: &str) -> Result<(), Refusal> {
        let r = check(&features(a), &features(b));
        assert_eq!(r, check(&features(b), &features(a)), "guards are symmetric");
        r
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paraphrases_pass() {
        assert_eq!(ok("How do I reset my password?", "What's the way to reset my password?"), Ok(()));
        assert_eq!(ok("A man is playing a guitar.", "A man plays the guitar."), Ok(()));
        assert_eq!(ok("What is the capital of France?", "Tell me the capital city of France."), Ok(()));
        assert_eq!(ok("Give me 3 ideas for dinner", "Suggest three dinner ideas"), Ok(()));
        assert_eq!(ok("It costs 1,000 dollars.", "That costs 1000 dollars."), Ok(()));
        assert_eq!(ok("Revenue was $34m.", "Revenue came to 34 million dollars."), Ok(()));
        assert_eq!(ok("He doesn 't like it.", "He doesn't like it."), Ok(()));
        assert_eq!(ok("The U.S. economy grew.", "The US economy has grown."), Ok(()));
        assert_eq!(ok("Obama met Putin in Moscow.", "In Moscow, Obama and Putin met."), Ok(()));
    }

    #[test]
    fn facts_that_differ_are_refused() {
        assert_eq!(ok("What is the capital of France?", "What is the capital of Spain?"), Err("names"));
        assert_eq!(ok("Refund order 1234", "Refund order 1235"), Err("numbers"));
        assert_eq!(ok("Summarise the meeting of 12 May 2024", "Summarise the meeting of 14 May 2024"), Err("numbers"));
        assert_eq!(ok("What happened in March?", "What happened in April?"), Err("dates"));
        assert_eq!(ok("Book it for Monday at 5pm", "Book it for Monday at 6 p.m."), Err("numbers"));
        assert_eq!(ok("Book a table for Monday", "Book a table for Tuesday"), Err("dates"));
        assert_eq!(ok("Explain the function parse_config", "Explain the function load_config"), Err("identifiers"));
        assert_eq!(ok("Open config.yaml", "Open settings.yaml"), Err("identifiers"));
        assert_eq!(
            ok("Translate \"good morning\" to French", "Translate \"good night\" to French"),
            Err("identifiers")
        );
        assert_eq!(ok("Is this safe to eat?", "Is this not safe to eat?"), Err("negation"));
        assert_eq!(ok("I can swim.", "I can't swim."), Err("negation"));
        assert_eq!(ok("Email bob@example.com", "Email alice@example.com"), Err("identifiers"));
        assert_eq!(ok("Convert userId to snake case", "Convert accountId to snake case"), Err("identifiers"));
        assert_eq!(ok("Who won in 1998?", "Who won in two thousand?"), Err("numbers"));
        assert_eq!(ok("Compare the x86 and arm64 builds", "Compare the x86 and riscv64 builds"), Err("identifiers"));
    }

    #[test]
    fn clauses_split_at_punctuation_and_conjunctions() {
        assert_eq!(
            clauses("The company reported strong earnings, which lifted its shares sharply."),
            vec!["The company reported strong earnings".to_string(), "lifted its shares sharply".to_string()]
        );
        assert!(clauses("A man is playing a guitar.").is_empty(), "one clause: nothing to check separately");
        assert!(clauses("Cats, dogs").is_empty(), "fragments need two content words");
    }

    #[test]
    fn numbers_are_normalised() {
        let re = RE.as_ref().unwrap();
        assert_eq!(numbers(re, "one hundred and five apples"), set(&["105"]));
        assert_eq!(numbers(re, "twenty five or 2.5 million"), set(&["25", "2500000"]));
        assert_eq!(numbers(re, "the 1st of 3 and 5% of $1,200"), set(&["1", "3", "5", "1200"]));
        assert_eq!(numbers(re, "COVID-19 on x86 with mp3"), set(&[]));
    }

    #[test]
    fn sentence_starts_and_titles_are_not_names() {
        let re = RE.as_ref().unwrap();
        assert!(names(re, "Dogs run. Cats sleep.").is_empty());
        assert_eq!(names(re, "Ask Maria about it"), set(&["maria"]));
        assert_eq!(names(re, "the NASA budget"), set(&["nasa"]));
        assert_eq!(names(re, "We met Mr. Clinton"), set(&["clinton"]));
        assert_eq!(names(re, "Stocks Rise On Strong Earnings Report"), set(&[]), "a headline's capitals say nothing");
    }
}
