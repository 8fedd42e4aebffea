//! `train_injection` (`cargo run --release -p keel-guard --example train_injection`): trains the prompt-injection classifier on prompt-injection-mix and writes the model file
//! that `keel-guard` embeds (`crates/guard/model/injection.bin`). Deterministic: the same data gives the same
//! bytes (one thread, rows in file order, no randomness).
//!
//! 1. Five-fold cross-validation (rows assigned to folds round-robin within each label, in file order): every
//!    row is scored by a model that did not see it, scored as the gateway would score it (a `vector: indirect`
//!    row is a document: whole and by windows; every other row is a message).
//! 2. The threshold is fixed from those held-out scores: the lowest score such that the whole detector (rules
//!    OR classifier) flags at most `--fpr` of the benign rows. It is written into the model, so the gateway and
//!    every later evaluation use a threshold chosen before they see their data.
//! 3. The final model is trained on every row and written with that threshold.
//!
//! It prints the cross-validated table (rates at 1% and 2% benign false positives and at the fixed threshold,
//! per label, vector and source) that docs/security.md reports.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Parser;
use keel_guard::classifier::{self, Classifier, InputKind, TrainOptions};
use keel_guard::{InjectionGuard, normalize};

#[derive(Debug, Parser)]
struct Args {
    /// prompt-injection-mix's half-a.jsonl.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/prompt-injection-mix/half-a.jsonl"))]
    data: std::path::PathBuf,
    /// Where the model goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/model/injection.bin"))]
    out: std::path::PathBuf,
    /// The benign false-positive rate (of rules and classifier together) the threshold is fixed at, on the
    /// cross-validated scores. Below 1% so that unseen data keeps under 1%.
    #[arg(long, default_value_t = 0.0075)]
    fpr: f64,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Only cross-validate and print; write nothing.
    #[arg(long)]
    dry_run: bool,
}

struct Row {
    label: String,
    vector: String,
    source: String,
    attack: bool,
    kind: InputKind,
    features: Vec<(u32, f32)>,
    folded: String,
    rules: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let raw = std::fs::read_to_string(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    let rules = InjectionGuard::rules_only()?;
    let mut rows = Vec::new();
    for (n, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let text = s("text");
        let vector = if s("vector").is_empty() { "direct".to_string() } else { s("vector") };
        let kind = if vector == "indirect" { InputKind::Document } else { InputKind::Message };
        let folded = normalize::fold(&text);
        rows.push(Row {
            label: s("label"),
            source: s("source"),
            attack: v["is_attack"].as_bool().unwrap_or(false),
            kind,
            features: classifier::features(&folded),
            rules: rules.check(&text, kind).is_attack(),
            folded,
            vector,
        });
    }
    anyhow::ensure!(!rows.is_empty(), "no rows in {}", args.data.display());
    let opts = TrainOptions::default();

    // Folds: round-robin within each label, in file order (the file is shuffled within each source already).
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let fold: Vec<usize> = rows
        .iter()
        .map(|r| {
            let k = seen.entry(r.label.as_str()).or_default();
            *k += 1;
            (*k - 1) % args.folds
        })
        .collect();
    let mut oof = vec![0f32; rows.len()];
    for f in 0..args.folds {
        let train: Vec<(Vec<(u32, f32)>, bool)> =
            rows.iter().zip(&fold).filter(|(_, k)| **k != f).map(|(r, _)| (r.features.clone(), r.attack)).collect();
        let (w, b) = classifier::train(&train, opts);
        let model = Classifier::new(w, b, 0.0)?;
        for (i, r) in rows.iter().enumerate().filter(|(i, _)| fold[*i] == f) {
            oof[i] = model.score_folded(&r.folded, r.kind);
        }
        eprintln!("fold {} of {} trained", f + 1, args.folds);
    }

    let benign: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].label == "benign").collect();
    // The threshold at which rules OR classifier flag at most `rate` of the benign rows.
    let threshold_at = |rate: f64| -> f32 {
        let allowed = (rate * benign.len() as f64).floor() as usize;
        let by_rules = benign.iter().filter(|&&i| rows[i].rules).count();
        let mut rest: Vec<f32> = benign.iter().filter(|&&i| !rows[i].rules).map(|&i| oof[i]).collect();
        rest.sort_by(|a, b| b.total_cmp(a));
        let room = allowed.saturating_sub(by_rules);
        // Flag strictly above the (room+1)-th highest benign score: at most `room` benign rows pass it.
        rest.get(room).copied().unwrap_or(f32::NEG_INFINITY)
    };
    let fixed = threshold_at(args.fpr);
    println!("rows {}, folds {}, C {}, iterations {}", rows.len(), args.folds, opts.c, opts.iterations);
    println!();
    println!("| group | rows | rules alone | rules + classifier at 1% benign FPR | at 2% | at the fixed threshold |");
    println!("|---|---:|---:|---:|---:|---:|");
    let columns = [threshold_at(0.01), threshold_at(0.02), fixed];
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let kind = if r.attack { "attack (injection + jailbreak)" } else { "not attack" };
        for key in [
            kind.to_string(),
            r.label.clone(),
            format!("{} / {}", r.label, r.vector),
            format!("{} / {} ({})", r.label, r.source, r.vector),
        ] {
            groups.entry(key).or_default().push(i);
        }
    }
    for (name, idx) in &groups {
        let rate = |hit: &dyn Fn(usize) -> bool| idx.iter().filter(|&&i| hit(i)).count() as f64 / idx.len() as f64;
        let rules_rate = rate(&|i| rows[i].rules);
        let cells: Vec<String> =
            columns.iter().map(|&t| format!("{:.3}", rate(&|i| rows[i].rules || oof[i] > t))).collect();
        println!("| {name} | {} | {rules_rate:.3} | {} |", idx.len(), cells.join(" | "));
    }
    println!();
    println!(
        "fixed threshold {fixed:.4} (rules OR classifier at {:.2}% benign FPR, cross-validated)",
        args.fpr * 100.0
    );
    if args.dry_run {
        return Ok(());
    }
    let all: Vec<(Vec<(u32, f32)>, bool)> = rows.iter().map(|r| (r.features.clone(), r.attack)).collect();
    let (w, b) = classifier::train(&all, opts);
    let model = Classifier::new(w, b, fixed)?;
    std::fs::write(&args.out, model.encode()).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} bytes)", args.out.display(), model.encode().len());
    Ok(())
}
