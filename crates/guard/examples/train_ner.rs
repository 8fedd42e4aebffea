//! `train_ner` (`cargo run --release -p keel-guard --example train_ner`): trains the named-entity tagger on
//! presidio-synth-pii (templates half A) and writes the model file that `keel-guard` embeds
//! (`crates/guard/model/ner.bin`). Deterministic: the same data gives the same bytes (one thread, rows in file
//! order, a fixed-seed shuffle per epoch).
//!
//! Its accuracy on sentence shapes it has not seen — cross-validation grouped by template, as the held-out half
//! of the data set is split — is measured by `cargo test --release -p keel-guard --test presidio -- --nocapture`,
//! which trains the same way on four fifths of the templates and scores the rest.

use anyhow::Context;
use clap::Parser;
use keel_guard::ner::{self, Example, TrainOptions};

#[derive(Debug, Parser)]
struct Args {
    /// presidio-synth-pii's templates half A.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/presidio-synth-pii/synth_dataset_v2-templates-a.jsonl"))]
    data: std::path::PathBuf,
    /// Where the model goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/model/ner.bin"))]
    out: std::path::PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    epochs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let raw = std::fs::read_to_string(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    let mut gold = Vec::new();
    for (n, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?;
        gold.push(Example::from_presidio(&v).with_context(|| format!("line {}: not a presidio row", n + 1))?);
    }
    let silver = ner::examples(
        &std::fs::read_to_string(ner::SILVER_PATH).with_context(|| format!("reading {}", ner::SILVER_PATH))?,
    );
    let examples = ner::training_set(&gold, &silver);
    let opts = TrainOptions { epochs: args.epochs, ..TrainOptions::default() };
    let tagger = ner::train(&examples, opts);
    println!("{} gold and {} silver sentences", gold.len(), silver.len());
    let bytes = tagger.encode();
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{} sentences, {} epochs: {tagger:?}", examples.len(), opts.epochs);
    println!("wrote {} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}
