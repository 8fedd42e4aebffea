//! Tests of the contrast guard: hand-made contrasts and paraphrases, and agreement with the reference implementation.

#![allow(clippy::unwrap_used)]

use super::*;

fn refuses(a: &str, b: &str) -> Option<&'static str> {
    let r = contrast(&tokens(a), &tokens(b));
    assert_eq!(r.is_some(), contrast(&tokens(b), &tokens(a)).is_some(), "symmetric: {a:?} / {b:?}");
    r
}

#[test]
fn contrasts_are_refused() {
    for (a, b) in [
        ("Is it safe to eat raw cookie dough?", "Is it unsafe to eat raw cookie dough?"),
        ("How do I sort a list in ascending order in Python?", "How do I sort a list in descending order in Python?"),
        ("What is the time complexity of merge sort?", "What is the space complexity of merge sort?"),
        ("What are the causes of the French Revolution?", "What are the consequences of the French Revolution?"),
        ("Write a haiku about autumn leaves.", "Write a limerick about autumn leaves."),
        ("What should I do before a job interview?", "What should I do after a job interview?"),
        ("How do I import a CSV file?", "How do I export a CSV file?"),
        ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius"),
        ("Why is my code so careless?", "Why is my code so careful?"),
    ] {
        assert!(refuses(a, b).is_some(), "{a:?} / {b:?} should be refused");
    }
}

#[test]
fn paraphrases_pass() {
    for (a, b) in [
        ("How do I reset my password?", "What's the way to reset my password?"),
        ("A man is playing a guitar.", "A man plays the guitar."),
        ("What is the capital of France?", "Tell me the capital city of France."),
        ("How can I improve my sleep quality?", "What are ways to improve the quality of my sleep?"),
        ("Can you explain how photosynthesis works?", "Explain how photosynthesis works, please."),
        ("What colour is the sky?", "What color is the sky?"),
        ("How do I set up a Python virtual environment?", "How do I setup a Python virtual environment?"),
    ] {
        assert_eq!(refuses(a, b), None, "{a:?} / {b:?} should pass");
    }
}

/// The price of rule 3: one word swapped for a synonym at the same place cannot be told from a contrast, so
/// it is refused too (a miss, one upstream call; never a wrong answer).
#[test]
fn a_synonym_in_a_single_slot_is_refused() {
    assert_eq!(refuses("It costs 1,000 dollars.", "The price is 1000 dollars."), Some("slot"));
    assert_eq!(refuses("The U.S. economy grew.", "The US economy expanded."), Some("slot"));
}

#[test]
fn tokens_undo_contractions_and_spelling() {
    assert_eq!(
        tokens("I can't organise the centre's colours"),
        ["i", "can", "not", "organize", "the", "center", "colors"]
    );
    assert_eq!(tokens("Non-stick pans are sugar-free"), ["nonstick", "pans", "are", "sugarfree"]);
    assert_eq!(tokens("She wrote; they ran"), ["she", "write", "they", "run"]);
}

#[test]
fn stems() {
    for (w, s) in [
        ("causes", "caus"),
        ("cause", "caus"),
        ("running", "run"),
        ("flies", "fli"),
        ("fly", "fli"),
        ("lying", "li"),
        ("ascending", "ascend"),
        ("falls", "fall"),
        ("need", "need"),
        ("1990s", "1990s"),
    ] {
        assert_eq!(stem(w), s, "{w}");
    }
}

/// The guard agrees with the research's reference implementation (the Python program `docs/cache.md`
/// describes) on every hand-made pair and on 500 STS-B train pairs: same tokens, same verdict.
#[test]
fn agrees_with_the_reference() {
    #[derive(serde::Deserialize)]
    struct Case {
        a: String,
        b: String,
        refuses: bool,
        tokens_a: Vec<String>,
    }
    let data = include_str!("../../tests/data/contrast_reference.jsonl");
    let mut n = 0;
    for line in data.lines().filter(|l| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(line).unwrap();
        assert_eq!(tokens(&case.a), case.tokens_a, "tokens of {:?}", case.a);
        assert_eq!(contrast(&tokens(&case.a), &tokens(&case.b)).is_some(), case.refuses, "{:?} / {:?}", case.a, case.b);
        n += 1;
    }
    assert_eq!(n, 568);
}
