//! Checks that ask a model, through keel: embedding similarity to references, a judge grading against a
//! rubric, and a pairwise judge asked twice with the answers' positions swapped (a judge that prefers
//! whichever answer comes first cannot pass an answer on position alone).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Value, json};

use crate::check::{Check, Verdict};
use crate::client::Keel;
use crate::render::render;
use crate::suite::Case;

const JUDGE_SYSTEM: &str = "You are a strict, impartial evaluator of answers. Follow the rubric exactly. Do not \
                            reward length or confidence; judge only what the rubric asks.";

/// Evaluates a check that asks a model. `prompt`: what the case asked (for the judge's context).
pub(crate) async fn evaluate(
    check: &Check,
    keel: &Keel,
    embedding_model: &str,
    answer: &str,
    prompt: &str,
    case: &Case,
) -> Verdict {
    let label = check.label();
    let out = match check {
        Check::Similarity { reference, references_field, against_field, threshold } => {
            similarity(
                keel,
                embedding_model,
                answer,
                case,
                reference.as_deref(),
                references_field.as_deref(),
                against_field.as_deref(),
                *threshold,
            )
            .await
        }
        Check::Judge { model, rubric, reference, pass_score } => {
            judge(keel, model, rubric, reference.as_deref(), *pass_score, answer, prompt, case).await
        }
        Check::Pairwise { model, reference, rubric } => {
            pairwise(keel, model, reference, rubric.as_deref(), answer, prompt, case).await
        }
        _ => Err("not a model check".to_string()),
    };
    match out {
        Ok(v) => Verdict { check: label, ..v },
        Err(why) => Verdict::broken(label, why),
    }
}

fn texts(case: &Case, field: &str) -> Result<Vec<String>, String> {
    match case.fields.get(field) {
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .filter(|s| !s.trim().is_empty())
            .collect()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        _ => Err(format!("the case has no list field `{field}`")),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

#[allow(clippy::too_many_arguments)]
async fn similarity(
    keel: &Keel,
    model: &str,
    answer: &str,
    case: &Case,
    reference: Option<&str>,
    references_field: Option<&str>,
    against_field: Option<&str>,
    threshold: Option<f64>,
) -> Result<Verdict, String> {
    let mut refs = Vec::new();
    if let Some(r) = reference {
        refs.push(render(r, &case.fields)?);
    }
    if let Some(f) = references_field {
        refs.extend(texts(case, f)?);
    }
    let against = match against_field {
        Some(f) => texts(case, f)?,
        None => Vec::new(),
    };
    if refs.is_empty() {
        return Err("no reference to compare with".into());
    }
    if answer.trim().is_empty() {
        return Ok(Verdict {
            note: Some("empty answer".into()),
            score: Some(0.0),
            ..Verdict::new(String::new(), false)
        });
    }
    let mut inputs = vec![answer.to_string()];
    inputs.extend(refs.iter().cloned());
    inputs.extend(against.iter().cloned());
    let vectors = keel.embed(model, &inputs).await.map_err(|e| format!("embeddings ({model}): {e}"))?;
    let (a, rest) = vectors.split_first().ok_or("no embeddings")?;
    let (r, w) = rest.split_at(refs.len());
    let best_right = r.iter().map(|v| cosine(a, v)).fold(f64::MIN, f64::max);
    let best_wrong = w.iter().map(|v| cosine(a, v)).fold(f64::MIN, f64::max);
    let closer = against.is_empty() || best_right > best_wrong;
    let over = threshold.is_none_or(|t| best_right >= t);
    let note = (!against.is_empty()).then(|| format!("closest wrong answer {best_wrong:.3}"));
    Ok(Verdict {
        score: Some(best_right),
        expected: threshold.map(|t| format!(">= {t}")),
        note,
        ..Verdict::new(String::new(), closer && over)
    })
}

async fn ask(keel: &Keel, model: &str, user: String) -> Result<String, String> {
    let body = json!({
        "model": model,
        "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}],
        "temperature": 0.0,
        "max_tokens": 300,
    });
    let reply =
        keel.chat(&body, false, &json!({"eval_judge": model})).await.map_err(|e| format!("judge {model}: {e}"))?;
    Ok(reply.text)
}

#[allow(clippy::too_many_arguments)]
async fn judge(
    keel: &Keel,
    model: &str,
    rubric: &str,
    reference: Option<&str>,
    pass_score: u8,
    answer: &str,
    prompt: &str,
    case: &Case,
) -> Result<Verdict, String> {
    let rubric = render(rubric, &case.fields)?;
    let reference = reference.map(|r| render(r, &case.fields)).transpose()?;
    let text = ask(keel, model, judge_prompt(&rubric, prompt, reference.as_deref(), answer)).await?;
    let Some(score) = parse_score(&text) else {
        return Err(format!("the judge gave no score: {}", clip(&text, 200)));
    };
    Ok(Verdict {
        score: Some(f64::from(score)),
        expected: Some(format!(">= {pass_score} of 5")),
        note: Some(clip(&text, 300)),
        ..Verdict::new(String::new(), score >= pass_score)
    })
}

pub(crate) fn judge_prompt(rubric: &str, prompt: &str, reference: Option<&str>, answer: &str) -> String {
    let mut s = format!("Rubric:\n{rubric}\n\n<question>\n{prompt}\n</question>\n\n");
    if let Some(r) = reference {
        s.push_str(&format!("<reference_answer>\n{r}\n</reference_answer>\n\n"));
    }
    s.push_str(&format!(
        "<answer_to_grade>\n{answer}\n</answer_to_grade>\n\nGrade the answer from 1 (fails the rubric) to 5 (fully \
         meets it). Reply with the line `SCORE: N` first, then one sentence of reasons."
    ));
    s
}

/// Which answer a pairwise judge preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Winner {
    First,
    Second,
    Tie,
}

async fn pairwise(
    keel: &Keel,
    model: &str,
    reference: &str,
    rubric: Option<&str>,
    answer: &str,
    prompt: &str,
    case: &Case,
) -> Result<Verdict, String> {
    let reference = render(reference, &case.fields)?;
    let rubric = match rubric {
        Some(r) => render(r, &case.fields)?,
        None => "Which answer answers the question more correctly and helpfully?".into(),
    };
    let (one, two) = futures::join!(
        ask(keel, model, pairwise_prompt(&rubric, prompt, answer, &reference)),
        ask(keel, model, pairwise_prompt(&rubric, prompt, &reference, answer)),
    );
    let (one, two) = (one?, two?);
    let first = parse_winner(&one).ok_or_else(|| format!("the judge named no winner: {}", clip(&one, 200)))?;
    let second = parse_winner(&two).ok_or_else(|| format!("the judge named no winner: {}", clip(&two, 200)))?;
    // The answer is "first" in the first order and "second" in the swapped one.
    let not_worse = |w: Winner, answer_is: Winner| w == answer_is || w == Winner::Tie;
    let passed = not_worse(first, Winner::First) && not_worse(second, Winner::Second);
    let consistent = matches!(
        (first, second),
        (Winner::Tie, Winner::Tie) | (Winner::First, Winner::Second) | (Winner::Second, Winner::First)
    );
    let score = match (first, second) {
        (Winner::First, Winner::Second) => 1.0,
        (Winner::Second, Winner::First) => 0.0,
        _ => 0.5,
    };
    Ok(Verdict {
        score: Some(score),
        note: Some(format!(
            "answer first: {first:?}; answer second: {second:?}{}",
            if consistent { "" } else { " (the judge changed its mind with the order)" }
        )),
        ..Verdict::new(String::new(), passed)
    })
}

fn pairwise_prompt(rubric: &str, prompt: &str, a: &str, b: &str) -> String {
    format!(
        "{rubric}\n\n<question>\n{prompt}\n</question>\n\n<answer_a>\n{a}\n</answer_a>\n\n<answer_b>\n{b}\n</answer_b>\n\n\
         Reply with exactly one line first: `WINNER: A`, `WINNER: B` or `WINNER: TIE`; then one sentence of reasons."
    )
}

static SCORE: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
    Regex::new(r"(?i)score\**\s*[:=]?\s*\**\s*([1-5])\b").unwrap()
});

/// The judge's grade: `SCORE: N`, else a lone digit 1–5 that opens the reply.
pub(crate) fn parse_score(text: &str) -> Option<u8> {
    if let Some(c) = SCORE.captures(text) {
        return c.get(1)?.as_str().parse().ok();
    }
    let t = text.trim_start();
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(d @ '1'..='5'), next) if next.is_none_or(|c| !c.is_ascii_digit()) => d.to_digit(10).map(|d| d as u8),
        _ => None,
    }
}

static WINNER: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by the tests
    Regex::new(r"(?i)winner\**\s*[:=]?\s*\**\s*(a|b|tie)\b").unwrap()
});

pub(crate) fn parse_winner(text: &str) -> Option<Winner> {
    let c = WINNER.captures(text)?;
    match c.get(1)?.as_str().to_ascii_lowercase().as_str() {
        "a" => Some(Winner::First),
        "b" => Some(Winner::Second),
        "tie" => Some(Winner::Tie),
        _ => None,
    }
}

fn clip(s: &str, n: usize) -> String {
    let t = s.trim();
    match t.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn grades_and_winners_are_read_from_what_judges_write() {
        assert_eq!(parse_score("SCORE: 4\nGood answer."), Some(4));
        assert_eq!(parse_score("**Score:** 2 — wrong year"), Some(2));
        assert_eq!(parse_score("5. Fully correct."), Some(5));
        assert_eq!(parse_score("The answer deserves a 10"), None);
        assert_eq!(parse_score("12 points"), None);
        assert_eq!(parse_winner("WINNER: B\nbecause"), Some(Winner::Second));
        assert_eq!(parse_winner("Winner: tie"), Some(Winner::Tie));
        assert_eq!(parse_winner("**Winner**: A"), Some(Winner::First));
        assert_eq!(parse_winner("I prefer the first"), None);
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-9);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-9);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn the_judge_prompt_holds_the_rubric_the_reference_and_the_answer() {
        let p = judge_prompt("Be right.", "2+2?", Some("4"), "five");
        for part in ["Be right.", "2+2?", "<reference_answer>\n4", "<answer_to_grade>\nfive", "SCORE: N"] {
            assert!(p.contains(part), "{part}");
        }
    }
}
