//! The checks an answer must pass. Deterministic ones (exact, contains, regex, JSON Schema, the final number,
//! the chosen letter) are evaluated here; similarity and judges ask models through keel (`judge.rs`).
//! Expectations are Jinja over the case's fields (`expected = "{{ final_answer }}"`); checks that compare with
//! several references name a case field holding a list (`references_field = "correct_answers"`).

use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::render::{check_template, render};
use crate::suite::Case;

/// A check as written in a suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckSpec {
    /// The answer equals the expectation (surrounding white space ignored unless `trim = false`).
    Exact {
        expected: String,
        #[serde(default)]
        ignore_case: bool,
        #[serde(default = "yes")]
        trim: bool,
    },
    /// The answer contains the expectation.
    Contains {
        expected: String,
        #[serde(default = "yes")]
        ignore_case: bool,
    },
    /// The answer does not contain it.
    NotContains {
        unexpected: String,
        #[serde(default = "yes")]
        ignore_case: bool,
    },
    /// The answer matches a regular expression (Rust `regex` syntax).
    Regex { pattern: String },
    /// The answer is JSON valid against a schema (inline, as a TOML table or a JSON string).
    JsonSchema { schema: toml::Value },
    /// The answer's final number equals the expectation (GSM8K: `#### N`, "the answer is N", or the last
    /// number of the answer).
    Numeric {
        expected: String,
        #[serde(default = "tolerance")]
        tolerance: f64,
    },
    /// The letter of a multiple-choice answer.
    Choice {
        expected: String,
        #[serde(default = "letters")]
        letters: String,
        /// A case field with the options' texts: an answer that gives an option's text instead of its
        /// letter counts as that letter.
        options_field: Option<String>,
    },
    /// Cosine similarity of embeddings: to `reference` (Jinja) or the best of `references_field`, at least
    /// `threshold`; with `against_field` (wrong answers), closer to a right answer than to any wrong one.
    Similarity {
        reference: Option<String>,
        references_field: Option<String>,
        against_field: Option<String>,
        threshold: Option<f64>,
    },
    /// A model grades the answer against a rubric, 1 to 5; passes at `pass_score` or above.
    Judge {
        model: String,
        rubric: String,
        reference: Option<String>,
        #[serde(default = "pass_score")]
        pass_score: u8,
    },
    /// A model compares the answer with a reference, twice with the positions swapped; the answer passes
    /// when it is at least as good in both orders.
    Pairwise { model: String, reference: String, rubric: Option<String> },
}

fn yes() -> bool {
    true
}
fn tolerance() -> f64 {
    1e-6
}
fn letters() -> String {
    "ABCD".into()
}
fn pass_score() -> u8 {
    4
}

/// A compiled check.
#[derive(Debug, Clone)]
pub enum Check {
    Exact {
        expected: String,
        ignore_case: bool,
        trim: bool,
    },
    Contains {
        expected: String,
        ignore_case: bool,
    },
    NotContains {
        unexpected: String,
        ignore_case: bool,
    },
    Regex {
        re: Regex,
    },
    JsonSchema {
        validator: Arc<jsonschema::Validator>,
    },
    Numeric {
        expected: String,
        tolerance: f64,
    },
    Choice {
        expected: String,
        letters: Vec<char>,
        options_field: Option<String>,
    },
    Similarity {
        reference: Option<String>,
        references_field: Option<String>,
        against_field: Option<String>,
        threshold: Option<f64>,
    },
    Judge {
        model: String,
        rubric: String,
        reference: Option<String>,
        pass_score: u8,
    },
    Pairwise {
        model: String,
        reference: String,
        rubric: Option<String>,
    },
}

/// One check's verdict on one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The check's label (`numeric`, `judge:gpt-4o`, …).
    pub check: String,
    pub passed: bool,
    /// A score where the check has one (similarity, the judge's grade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// What was expected, as rendered for this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What the check read from the answer (the number, the letter), where that differs from the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub got: Option<String>,
    /// Why, in a few words (the judge's reasons, an extraction failure, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Verdict {
    pub(crate) fn new(check: String, passed: bool) -> Self {
        Self { check, passed, score: None, expected: None, got: None, note: None }
    }

    /// A check that could not be evaluated (a missing field, a model that failed): it fails, saying why.
    pub(crate) fn broken(check: String, why: impl Into<String>) -> Self {
        Self { note: Some(why.into()), ..Self::new(check, false) }
    }
}

impl Check {
    pub fn new(spec: &CheckSpec) -> Result<Self, String> {
        let tmpl = |t: &str, what: &str| check_template(t).map_err(|e| format!("{what}: {e}"));
        Ok(match spec {
            CheckSpec::Exact { expected, ignore_case, trim } => {
                tmpl(expected, "expected")?;
                Check::Exact { expected: expected.clone(), ignore_case: *ignore_case, trim: *trim }
            }
            CheckSpec::Contains { expected, ignore_case } => {
                tmpl(expected, "expected")?;
                Check::Contains { expected: expected.clone(), ignore_case: *ignore_case }
            }
            CheckSpec::NotContains { unexpected, ignore_case } => {
                tmpl(unexpected, "unexpected")?;
                Check::NotContains { unexpected: unexpected.clone(), ignore_case: *ignore_case }
            }
            CheckSpec::Regex { pattern } => {
                let re = regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("pattern: {e}"))?;
                Check::Regex { re }
            }
            CheckSpec::JsonSchema { schema } => {
                let schema = match schema {
                    toml::Value::String(s) => serde_json::from_str(s).map_err(|e| format!("schema: not JSON: {e}"))?,
                    other => serde_json::to_value(other).map_err(|e| format!("schema: {e}"))?,
                };
                let validator = jsonschema::validator_for(&schema).map_err(|e| format!("schema: {e}"))?;
                Check::JsonSchema { validator: Arc::new(validator) }
            }
            CheckSpec::Numeric { expected, tolerance } => {
                tmpl(expected, "expected")?;
                if !(tolerance.is_finite() && *tolerance >= 0.0) {
                    return Err("tolerance: a number, 0 or more".into());
                }
                Check::Numeric { expected: expected.clone(), tolerance: *tolerance }
            }
            CheckSpec::Choice { expected, letters, options_field } => {
                tmpl(expected, "expected")?;
                let letters: Vec<char> = letters.chars().collect();
                if letters.is_empty() || letters.iter().any(|c| !c.is_ascii_uppercase()) {
                    return Err("letters: capital letters, e.g. \"ABCD\"".into());
                }
                Check::Choice { expected: expected.clone(), letters, options_field: options_field.clone() }
            }
            CheckSpec::Similarity { reference, references_field, against_field, threshold } => {
                if reference.is_none() && references_field.is_none() {
                    return Err("similarity needs `reference` or `references_field`".into());
                }
                if let Some(r) = reference {
                    tmpl(r, "reference")?;
                }
                if threshold.is_none() && against_field.is_none() {
                    return Err("similarity needs `threshold`, `against_field` or both".into());
                }
                if let Some(t) = threshold
                    && !(-1.0..=1.0).contains(t)
                {
                    return Err("threshold: a cosine similarity, -1 to 1".into());
                }
                Check::Similarity {
                    reference: reference.clone(),
                    references_field: references_field.clone(),
                    against_field: against_field.clone(),
                    threshold: *threshold,
                }
            }
            CheckSpec::Judge { model, rubric, reference, pass_score } => {
                tmpl(rubric, "rubric")?;
                if let Some(r) = reference {
                    tmpl(r, "reference")?;
                }
                if !(1..=5).contains(pass_score) {
                    return Err("pass_score: 1 to 5".into());
                }
                Check::Judge {
                    model: model.clone(),
                    rubric: rubric.clone(),
                    reference: reference.clone(),
                    pass_score: *pass_score,
                }
            }
            CheckSpec::Pairwise { model, reference, rubric } => {
                tmpl(reference, "reference")?;
                if let Some(r) = rubric {
                    tmpl(r, "rubric")?;
                }
                Check::Pairwise { model: model.clone(), reference: reference.clone(), rubric: rubric.clone() }
            }
        })
    }

    /// The check's name in reports.
    pub fn label(&self) -> String {
        match self {
            Check::Exact { .. } => "exact".into(),
            Check::Contains { .. } => "contains".into(),
            Check::NotContains { .. } => "not_contains".into(),
            Check::Regex { .. } => "regex".into(),
            Check::JsonSchema { .. } => "json_schema".into(),
            Check::Numeric { .. } => "numeric".into(),
            Check::Choice { .. } => "choice".into(),
            Check::Similarity { .. } => "similarity".into(),
            Check::Judge { model, .. } => format!("judge:{model}"),
            Check::Pairwise { model, .. } => format!("pairwise:{model}"),
        }
    }

    /// Whether the check asks a model (similarity, judges).
    pub fn needs_model(&self) -> bool {
        matches!(self, Check::Similarity { .. } | Check::Judge { .. } | Check::Pairwise { .. })
    }

    /// Evaluates a deterministic check; `None` for checks that ask a model.
    pub fn local(&self, answer: &str, case: &Case) -> Option<Verdict> {
        let label = self.label();
        let expect = |t: &str| render(t, &case.fields).map_err(|e| Verdict::broken(label.clone(), e));
        Some(match self {
            Check::Exact { expected, ignore_case, trim } => match expect(expected) {
                Err(v) => v,
                Ok(e) => {
                    let (a, b) = if *trim { (answer.trim(), e.trim()) } else { (answer, e.as_str()) };
                    let passed = if *ignore_case { a.to_lowercase() == b.to_lowercase() } else { a == b };
                    Verdict { expected: Some(e.clone()), ..Verdict::new(label, passed) }
                }
            },
            Check::Contains { expected, ignore_case } => match expect(expected) {
                Err(v) => v,
                Ok(e) => {
                    let passed = contains(answer, &e, *ignore_case);
                    Verdict { expected: Some(e), ..Verdict::new(label, passed) }
                }
            },
            Check::NotContains { unexpected, ignore_case } => match expect(unexpected) {
                Err(v) => v,
                Ok(e) => {
                    let passed = !contains(answer, &e, *ignore_case);
                    Verdict { expected: Some(format!("not {e:?}")), ..Verdict::new(label, passed) }
                }
            },
            Check::Regex { re } => {
                Verdict { expected: Some(re.as_str().to_string()), ..Verdict::new(label, re.is_match(answer)) }
            }
            Check::JsonSchema { validator } => match serde_json::from_str::<serde_json::Value>(json_body(answer)) {
                Err(e) => Verdict::broken(label, format!("not JSON: {e}")),
                Ok(v) => match validator.validate(&v) {
                    Ok(()) => Verdict::new(label, true),
                    Err(e) => Verdict::broken(label, format!("{} at {}", e, e.instance_path)),
                },
            },
            Check::Numeric { expected, tolerance } => match expect(expected) {
                Err(v) => v,
                Ok(e) => match parse_number(e.trim()) {
                    None => Verdict::broken(label, format!("the expectation {e:?} is not a number")),
                    Some(want) => {
                        let got = final_number(answer);
                        let passed = got.is_some_and(|g| (g - want).abs() <= tolerance * want.abs().max(1.0));
                        Verdict {
                            expected: Some(e.trim().to_string()),
                            got: got.map(|g| g.to_string()),
                            note: got.is_none().then(|| "no number in the answer".to_string()),
                            ..Verdict::new(label, passed)
                        }
                    }
                },
            },
            Check::Choice { expected, letters, options_field } => match expect(expected) {
                Err(v) => v,
                Ok(e) => {
                    let options: Vec<String> = options_field
                        .as_ref()
                        .and_then(|f| case.fields.get(f))
                        .and_then(|v| v.as_array())
                        .map(|a| a.iter().map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string)).collect())
                        .unwrap_or_default();
                    let got = chosen(answer, letters, &options);
                    let want = e.trim().to_uppercase();
                    let note = match &got {
                        Ok(_) => None,
                        Err(NoChoice::NotFound) => Some("no choice found in the answer".to_string()),
                        Err(NoChoice::Conflict { letter, text_of }) => {
                            Some(format!("the answer opens with {letter} but gives the text of option {text_of}"))
                        }
                    };
                    Verdict {
                        expected: Some(want.clone()),
                        got: got.as_ref().ok().map(|g| g.to_string()),
                        note,
                        ..Verdict::new(label, got.is_ok_and(|g| g.to_string() == want))
                    }
                }
            },
            Check::Similarity { .. } | Check::Judge { .. } | Check::Pairwise { .. } => return None,
        })
    }
}

fn contains(hay: &str, needle: &str, ignore_case: bool) -> bool {
    if ignore_case { hay.to_lowercase().contains(&needle.to_lowercase()) } else { hay.contains(needle) }
}

/// The JSON of an answer that may wrap it in a Markdown code fence.
fn json_body(answer: &str) -> &str {
    let t = answer.trim();
    let Some(rest) = t.strip_prefix("```") else { return t };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
    Regex::new(r"-?\$?\s?\d[\d,]*(?:\.\d+)?").unwrap()
});

/// A number as people write it: `1,234.5`, `$18`, `-3`.
pub fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s.chars().filter(|c| !matches!(c, ',' | '$' | ' ')).collect();
    let cleaned = cleaned.trim_end_matches('.');
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The final number of an answer, as GSM8K grades it: after the last `####`, else after the last "answer is",
/// else the last number in the text.
pub fn final_number(answer: &str) -> Option<f64> {
    let lower = answer.to_lowercase();
    let tail = if let Some(i) = answer.rfind("####") {
        &answer[i + 4..]
    } else if let Some(i) =
        ["answer is", "answer:", "answer ="].iter().filter_map(|m| lower.rfind(m).map(|i| i + m.len())).max()
    {
        // `to_lowercase` can change byte lengths outside ASCII; fall back to the whole text when it did.
        if lower.len() == answer.len() && answer.is_char_boundary(i) { &answer[i..] } else { answer }
    } else {
        answer
    };
    let in_tail = |t: &str, first: bool| {
        let mut it = NUMBER.find_iter(t).map(|m| m.as_str());
        let m = if first { it.next() } else { it.last() };
        m.and_then(parse_number)
    };
    if std::ptr::eq(tail, answer) {
        in_tail(answer, false)
    } else {
        in_tail(tail, true).or_else(|| in_tail(answer, false))
    }
}

/// The letter a multiple-choice answer chose, by the first rule that finds one: "answer is (B)" and its
/// variants; the answer opening with the letter ("B", "B.", "(B)", "B) …"); a lone "(B)"; the text of exactly
/// one option. An answer that opens with one letter and goes on with another option's text ("A. 21000 km/h"
/// where 21000 km/h is B) chose nothing: small models often open with "A." whatever they mean, and counting the
/// letter would score position bias as knowledge.
pub fn chosen_letter(answer: &str, letters: &[char], options: &[String]) -> Option<char> {
    chosen(answer, letters, options).ok()
}

/// Why an answer chose no letter.
#[derive(Debug, Clone, PartialEq)]
pub enum NoChoice {
    NotFound,
    /// It opened with `letter` and went on with the text of option `text_of`.
    Conflict {
        letter: char,
        text_of: char,
    },
}

/// The option texts that `rest` (what follows an opening letter) gives, whole or cut short (at least three
/// characters, as an answer cut by `max_tokens` is).
fn options_given(rest: &str, options: &[String]) -> Vec<usize> {
    let rest = rest.trim().trim_end_matches(['.', ',', ';']).trim().to_lowercase();
    if rest.chars().count() < 3 {
        return Vec::new();
    }
    options
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            let o = o.trim().trim_end_matches('.').trim().to_lowercase();
            !o.is_empty() && (rest.starts_with(&o) || o.starts_with(&rest))
        })
        .map(|(i, _)| i)
        .collect()
}

/// [`chosen_letter`], saying why when it finds none.
pub fn chosen(answer: &str, letters: &[char], options: &[String]) -> Result<char, NoChoice> {
    chosen_rules(answer, letters, options).ok_or(NoChoice::NotFound)?
}

fn chosen_rules(answer: &str, letters: &[char], options: &[String]) -> Option<Result<char, NoChoice>> {
    let is_letter = |c: char| letters.contains(&c);
    let t = answer.trim();
    // 1. "answer is B", "Answer: (c)", "the correct option is D." (a bare lower-case letter is a word).
    static STATED: LazyLock<Regex> = LazyLock::new(|| {
        #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
        Regex::new(r"(?i:answer|option|choice)\s*(?i:is|:|=)?\s*(?:[\(\[]([A-Za-z])[\)\]]|([A-Z])(?:[^A-Za-z]|$))")
            .unwrap()
    });
    for c in STATED.captures_iter(t) {
        if let Some(ch) =
            c.get(1).or_else(|| c.get(2)).and_then(|m| m.as_str().chars().next()).map(|c| c.to_ascii_uppercase())
            && is_letter(ch)
        {
            return Some(Ok(ch));
        }
    }
    // 2. The answer opens with the letter ("B", "B.", "(B)", "B) …"), but not with the word "A" or "I".
    let open = t.trim_start_matches(['(', '[', '*', ' ']);
    let mut chars = open.chars();
    if let Some(first) = chars.next()
        && is_letter(first)
    {
        let next = chars.next();
        let word = matches!(first, 'A' | 'I') && next == Some(' ') && chars.next().is_some_and(char::is_lowercase);
        if next.is_none_or(|c| !c.is_alphanumeric()) && !word {
            // What follows the letter, on its line: the option's text, another option's, or free words.
            let rest = open[first.len_utf8()..].trim_start_matches(['.', ')', ']', ':', '*', ' ']);
            let rest = rest.lines().next().unwrap_or_default();
            let given = options_given(rest, options);
            let own = letters.iter().position(|l| *l == first);
            if !given.is_empty() && !own.is_some_and(|i| given.contains(&i)) {
                let text_of = given.first().and_then(|i| letters.get(*i)).copied().unwrap_or('?');
                return Some(Err(NoChoice::Conflict { letter: first, text_of }));
            }
            return Some(Ok(first));
        }
    }
    // 3. A lone parenthesised letter.
    static PAREN: LazyLock<Regex> = LazyLock::new(|| {
        #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
        Regex::new(r"\(([A-Z])\)").unwrap()
    });
    let found: Vec<char> =
        PAREN.captures_iter(t).filter_map(|c| c.get(1)?.as_str().chars().next()).filter(|c| is_letter(*c)).collect();
    if let [one] = found.as_slice() {
        return Some(Ok(*one));
    }
    // 4. The text of exactly one option.
    let lower = t.to_lowercase();
    let hits: Vec<usize> = options
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.trim().is_empty() && lower.contains(&o.trim().to_lowercase()))
        .map(|(i, _)| i)
        .collect();
    if let [i] = hits.as_slice() {
        return letters.get(*i).copied().map(Ok);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn case(fields: serde_json::Value) -> Case {
        Case { id: "c".into(), seq: 0, fields: fields.as_object().unwrap().clone() }
    }

    fn check(toml_text: &str) -> Check {
        #[derive(Deserialize)]
        struct W {
            c: CheckSpec,
        }
        let w: W = toml::from_str(&format!("[c]\n{toml_text}")).unwrap();
        Check::new(&w.c).unwrap()
    }

    #[test]
    fn final_numbers_are_read_as_gsm8k_grades_them() {
        let cases = [
            ("She makes 9 * 2 = $18 every day.\n#### 18", Some(18.0)),
            ("So the answer is 1,250 dollars. Check: 3 + 4", Some(1250.0)),
            ("First 3 eggs, then 4, leaving 9.", Some(9.0)),
            ("The answer is: -2.5.", Some(-2.5)),
            ("Answer: $1,000,000", Some(1_000_000.0)),
            ("no digits here", None),
            ("Ünïcödé ANSWER IS 7", Some(7.0)),
        ];
        for (text, want) in cases {
            assert_eq!(final_number(text), want, "{text}");
        }
    }

    #[test]
    fn chosen_letters_follow_the_rules_in_order() {
        let abcd = ['A', 'B', 'C', 'D'];
        let opts =
            vec!["cellular telephone".to_string(), "television".into(), "refrigerator".into(), "airplane".into()];
        let cases = [
            ("B", Some('B')),
            ("B. television", Some('B')),
            ("(C) refrigerator", Some('C')),
            ("The answer is D.", Some('D')),
            ("Answer: (a)", Some('A')),
            ("I think a television, which is (B), fits", Some('B')),
            ("A television was developed most recently.", Some('B')),
            ("A lot of things could be right", None),
            // The letter of one option with the text of another: no choice (whole or cut short).
            ("A. television", None),
            ("A. telev", None),
            ("C. refrigerator, since it keeps food cold", Some('C')),
            ("B. because it was invented last", Some('B')),
            ("Both television and airplane", None),
            ("E", None),
        ];
        for (text, want) in cases {
            assert_eq!(chosen_letter(text, &abcd, &opts), want, "{text}");
        }
    }

    #[test]
    fn deterministic_checks_pass_and_fail() {
        let c = case(
            serde_json::json!({"final_answer": "18", "answer_letter": "B", "choices": ["x", "y"], "word": "Paris"}),
        );
        let run = |spec: &str, answer: &str| check(spec).local(answer, &c).unwrap().passed;
        assert!(run("type = \"numeric\"\nexpected = \"{{ final_answer }}\"", "#### 18"));
        assert!(!run("type = \"numeric\"\nexpected = \"{{ final_answer }}\"", "#### 19"));
        assert!(run("type = \"choice\"\nexpected = \"{{ answer_letter }}\"", "B"));
        assert!(run("type = \"choice\"\nexpected = \"{{ answer_letter }}\"\noptions_field = \"choices\"", "it is y"));
        assert!(!run("type = \"choice\"\nexpected = \"{{ answer_letter }}\"", "A"));
        assert!(run("type = \"exact\"\nexpected = \"{{ word }}\"", "  Paris\n"));
        assert!(!run("type = \"exact\"\nexpected = \"{{ word }}\"", "paris"));
        assert!(run("type = \"exact\"\nexpected = \"{{ word }}\"\nignore_case = true", "paris"));
        assert!(run("type = \"contains\"\nexpected = \"{{ word }}\"", "It is paris."));
        assert!(!run("type = \"not_contains\"\nunexpected = \"{{ word }}\"", "It is Paris."));
        assert!(run("type = \"regex\"\npattern = \"^[0-9]+$\"", "42"));
        assert!(!run("type = \"regex\"\npattern = \"^[0-9]+$\"", "42a"));
        let schema = "type = \"json_schema\"\nschema = { type = \"object\", required = [\"label\"] }";
        assert!(run(schema, "```json\n{\"label\": \"bug\"}\n```"));
        assert!(!run(schema, "{\"lbl\": 1}"));
        assert!(!run(schema, "not json"));
        let broken = check("type = \"exact\"\nexpected = \"{{ missing }}\"").local("x", &c).unwrap();
        assert!(!broken.passed && broken.note.is_some(), "a missing field fails the check, saying why");
        assert!(check("type = \"judge\"\nmodel = \"m\"\nrubric = \"r\"").local("x", &c).is_none());
    }
}
