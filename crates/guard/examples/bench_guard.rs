//! `bench_guard` (`cargo run --release -p keel-guard --example bench_guard`): what the guardrails add to a request, per guard and all together, on one core.
//!
//! Prompts of 1 KB and 10 KB are built from benign requests and documents of prompt-injection-mix (half A), with
//! a few e-mail addresses, phone numbers and card numbers sprinkled in, so that the redaction path does real
//! work. For each size: the injection rules alone and with the
//! classifier (as a message, and as a document scored by windows), the PII pattern layer, PII redaction, the whole input check with every
//! guard on (injection rules and classifier, PII, placeholders), the output check of an answer of
//! the same size, and the stream check of that answer in 8-byte fragments; p50 and p99 over many runs. Then
//! hostile 10 KB inputs (runs of digits, colons, at-signs, base64) for the input check's worst case.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use keel_guard::{
    Detector, Entity, InjectionGuard, InputKind, OutputContext, OutputFilter, StreamScan, StreamStep, Vault,
};

#[derive(Debug, Parser)]
struct Args {
    /// prompt-injection-mix's half-a.jsonl.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/prompt-injection-mix/half-a.jsonl"))]
    data: std::path::PathBuf,
    /// Runs per measurement at 1 KB (a tenth of it at 10 KB).
    #[arg(long, default_value_t = 2000)]
    runs: usize,
}

/// Everything the input check redacts by default for an external provider (patterns and tagger, the types
/// `Entity::redacted_by_default` names).
fn redacted(detector: &Detector, text: &str) -> String {
    let findings: Vec<_> = detector.detect(text).into_iter().filter(|f| f.entity.redacted_by_default()).collect();
    Vault::new().redact(text, &findings)
}

/// The input check with every guard on, as the request path's guard stage runs it on a user message.
fn input_check(injection: &InjectionGuard, detector: &Detector, text: &str) -> String {
    std::hint::black_box(injection.check(text, InputKind::Message));
    redacted(detector, text)
}

/// Texts of about `size` bytes, each different: benign rows joined, PII sprinkled every ~400 bytes.
fn prompts(benign: &[String], size: usize, count: usize) -> Vec<String> {
    let pii = [
        " Contact jane.doe@example.com for details.",
        " Call +44 20 7946 0958 tomorrow.",
        " Card 4111 1111 1111 1111 was charged.",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    for n in 0..count {
        let mut t = String::new();
        let mut next_pii = 400;
        while t.len() < size {
            t.push_str(&benign[i % benign.len()]);
            t.push(' ');
            i += 1;
            if t.len() >= next_pii {
                t.push_str(pii[(n + i) % pii.len()]);
                next_pii += 400;
            }
        }
        let mut cut = size.min(t.len());
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        out.push(t);
    }
    out
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn measure(name: &str, size: &str, texts: &[String], runs: usize, mut f: impl FnMut(&str)) {
    for t in texts.iter().take(20) {
        f(t);
    }
    let mut ms = Vec::with_capacity(runs);
    for r in 0..runs {
        let t = &texts[r % texts.len()];
        let start = Instant::now();
        f(t);
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = percentiles(ms);
    println!("| {name} | {size} | {p50:.3} | {p99:.3} |");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let raw = std::fs::read_to_string(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    let mut benign = Vec::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line)?;
        if row["label"] == "benign"
            && let Some(t) = row["text"].as_str()
        {
            benign.push(t.to_string());
        }
    }
    anyhow::ensure!(!benign.is_empty(), "no benign rows in {}", args.data.display());
    let injection = InjectionGuard::new()?;
    let rules = InjectionGuard::rules_only()?;
    let detector = Detector::new()?;
    let tagger = keel_guard::ner::Tagger::embedded()?;
    let deny = ["(?i)project\\s+bluebird".to_string(), "(?i)internal use only".to_string()];
    let output = OutputFilter::new(
        &deny,
        vec![Entity::Secret, Entity::Email, Entity::CreditCard, Entity::Iban, Entity::NationalId, Entity::UsSsn],
    )?;
    let ctx = OutputContext { canary: Some("kc-0123456789abcdef01234567"), ..Default::default() };

    println!("| guard | size | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|");
    for (size, label, runs) in [(1024, "1 KB", args.runs), (10 * 1024, "10 KB", (args.runs / 10).max(50))] {
        let texts = prompts(&benign, size, 64);
        measure("injection rules", label, &texts, runs, |t| {
            std::hint::black_box(rules.check(t, InputKind::Message));
        });
        measure("injection rules + classifier, as a message", label, &texts, runs, |t| {
            std::hint::black_box(injection.check(t, InputKind::Message));
        });
        measure("injection rules + classifier, as a document (windows)", label, &texts, runs, |t| {
            std::hint::black_box(injection.check(t, InputKind::Document));
        });
        measure("PII pattern layer", label, &texts, runs, |t| {
            std::hint::black_box(detector.detect_patterns(t));
        });
        measure("PII named-entity tagger", label, &texts, runs, |t| {
            std::hint::black_box(tagger.detect(t));
        });
        measure("PII detection, patterns + tagger", label, &texts, runs, |t| {
            std::hint::black_box(detector.detect(t));
        });
        measure("PII redaction (detect + placeholders)", label, &texts, runs, |t| {
            std::hint::black_box(redacted(&detector, t));
        });
        measure("input, all guards (injection + PII redaction)", label, &texts, runs, |t| {
            std::hint::black_box(input_check(&injection, &detector, t));
        });
        measure("output check, whole answer", label, &texts, runs, |t| {
            std::hint::black_box(output.scan(&detector, t, &ctx));
        });
        measure("output check, streamed in 8-byte fragments", label, &texts, runs, |t| {
            let mut scan = StreamScan::new();
            let mut at = 0;
            while at < t.len() {
                let mut end = (at + 8).min(t.len());
                while !t.is_char_boundary(end) {
                    end += 1;
                }
                // A catch under flag or redact: the held text is taken and the stream goes on, as the gateway does.
                if let StreamStep::Caught(c) = scan.push(&output, &detector, &ctx, &t[at..end]) {
                    std::hint::black_box((c, scan.take_pending()));
                }
                at = end;
            }
            std::hint::black_box(scan.finish(&output, &detector, &ctx));
        });
    }
    let hostile: Vec<(&str, String)> = vec![
        ("digits and spaces", "12 34 56 78 90 ".repeat(700)),
        ("colons (IPv6-like)", "a1:b2:".repeat(1750)),
        ("at-signs and dots", "a.b@c.d@".repeat(1300)),
        ("one base64 run", "QUJD".repeat(2600)),
        ("letters spelled out", "i g n o r e ".repeat(870)),
    ];
    for (name, text) in &hostile {
        let texts = vec![text[..10 * 1024.min(text.len())].to_string()];
        measure(&format!("input, all guards: hostile {name}"), "10 KB", &texts, 50, |t| {
            std::hint::black_box(input_check(&injection, &detector, t));
        });
    }
    Ok(())
}
