//! PII detection on presidio-synth-pii (templates half A), overlap matching:
//!
//! - the pattern layer, per entity type it covers (floors a little below the 1.0 the prototype reached);
//! - the whole detector (patterns and the named-entity tagger) over every gold span, the measure, on
//!   sentence shapes the tagger never saw: five-fold cross-validation grouped by template (the held-out half
//!   of the data set uses other templates), each fold's tagger trained as `examples/train_ner.rs` trains the
//!   committed one. `cargo test --release -p keel-guard --test presidio -- --nocapture` prints the tables
//!   docs/security.md reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keel_guard::Entity;
use keel_guard::ner::{self, Example, TrainOptions};
use keel_guard::pii::Detector;

const DATA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/presidio-synth-pii/synth_dataset_v2-templates-a.jsonl");

/// The types scored here: those the pattern layer is meant to find and the data set labels.
const COVERED: [&str; 6] = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "DOMAIN_NAME"];

const FLOOR_PRECISION: f64 = 0.9;
const FLOOR_RECALL: f64 = 0.9;
/// Types with fewer gold spans are reported, not asserted.
const MIN_GOLD: usize = 5;

struct Span {
    start: usize,
    end: usize,
    entity: String,
}

#[derive(Default)]
struct Counts {
    gold: usize,
    gold_hit: usize,
    pred: usize,
    pred_hit: usize,
}

fn overlaps(a: &Span, b: &Span) -> bool {
    a.start < b.end && b.start < a.end
}

fn f2(p: f64, r: f64) -> f64 {
    if p + r <= 0.0 { 0.0 } else { 5.0 * p * r / (4.0 * p + r) }
}

/// Byte offset of every code point, plus the text's length: the data set's offsets are code points.
fn byte_offsets(text: &str) -> Vec<usize> {
    text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).collect()
}

#[test]
fn presidio_synth_pii_pattern_layer() {
    let raw = std::fs::read_to_string(DATA).unwrap_or_else(|e| panic!("reading {DATA}: {e}"));
    let detector = Detector::new().unwrap();
    let mut counts: BTreeMap<&str, Counts> = COVERED.iter().map(|t| (*t, Counts::default())).collect();
    let mut rows = 0;
    // Over every gold span, whatever its type (the measure): a gold span is found when any prediction
    // overlaps it, a prediction is right when it overlaps any gold span.
    let mut all_types: BTreeMap<String, Counts> = BTreeMap::new();
    let mut all = Counts::default();

    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = row["full_text"].as_str().unwrap();
        let offsets = byte_offsets(text);
        let gold: Vec<Span> = row["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let at = |key: &str| {
                    let cp = usize::try_from(s[key].as_u64().unwrap()).unwrap();
                    *offsets.get(cp).unwrap_or_else(|| panic!("{key} {cp} out of range in {text:?}"))
                };
                let entity = s["entity_type"].as_str().unwrap().to_string();
                Span { start: at("start_position"), end: at("end_position"), entity }
            })
            .collect();
        let pred: Vec<Span> = detector
            .detect_patterns(text)
            .into_iter()
            .map(|f| {
                assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "{f:?} in {text:?}");
                Span { start: f.start, end: f.end, entity: f.entity.as_str().to_string() }
            })
            .collect();
        rows += 1;
        for g in &gold {
            let hit = pred.iter().any(|p| overlaps(g, p));
            let c = all_types.entry(g.entity.clone()).or_default();
            c.gold += 1;
            c.gold_hit += usize::from(hit);
            all.gold += 1;
            all.gold_hit += usize::from(hit);
        }
        all.pred += pred.len();
        all.pred_hit += pred.iter().filter(|p| gold.iter().any(|g| overlaps(g, p))).count();

        for g in &gold {
            if let Some(c) = counts.get_mut(g.entity.as_str()) {
                c.gold += 1;
                if pred.iter().any(|p| p.entity == g.entity && overlaps(g, p)) {
                    c.gold_hit += 1;
                } else {
                    eprintln!("FN {:<14} {:?} in {text:?}", g.entity, &text[g.start..g.end]);
                }
            }
        }
        for p in &pred {
            if let Some(c) = counts.get_mut(p.entity.as_str()) {
                c.pred += 1;
                if gold.iter().any(|g| g.entity == p.entity && overlaps(g, p)) {
                    c.pred_hit += 1;
                } else {
                    eprintln!("FP {:<14} {:?} in {text:?}", p.entity, &text[p.start..p.end]);
                }
            }
        }
    }

    assert!(rows > 100, "only {rows} rows read from {DATA}");
    eprintln!("\npresidio-synth-pii templates-a, {rows} rows, pattern layer, overlap match");
    eprintln!("{:<16} {:>5} {:>5} {:>6} {:>6} {:>6}", "entity", "gold", "pred", "P", "R", "F2");
    let mut failures = Vec::new();
    for (entity, c) in &counts {
        let p = if c.pred == 0 { f64::NAN } else { c.pred_hit as f64 / c.pred as f64 };
        let r = if c.gold == 0 { f64::NAN } else { c.gold_hit as f64 / c.gold as f64 };
        let f = if c.pred == 0 || c.gold == 0 { f64::NAN } else { f2(p, r) };
        eprintln!("{entity:<16} {:>5} {:>5} {p:>6.3} {r:>6.3} {f:>6.3}", c.gold, c.pred);
        if c.gold >= MIN_GOLD {
            // NaN precision (no prediction at all) fails the floor, as it should.
            if p.is_nan() || p < FLOOR_PRECISION {
                failures.push(format!("{entity}: precision {p:.3} < {FLOOR_PRECISION}"));
            }
            if r.is_nan() || r < FLOOR_RECALL {
                failures.push(format!("{entity}: recall {r:.3} < {FLOOR_RECALL}"));
            }
        }
    }
    eprintln!("\nevery gold type, found by any prediction (overlap)\n{:<16} {:>5} {:>6}", "entity", "gold", "R");
    for (entity, c) in &all_types {
        eprintln!("{entity:<16} {:>5} {:>6.3}", c.gold, c.gold_hit as f64 / c.gold as f64);
    }
    let (p, r) = (all.pred_hit as f64 / all.pred.max(1) as f64, all.gold_hit as f64 / all.gold.max(1) as f64);
    eprintln!("all gold spans: {} gold, {} predicted, P {p:.3} R {r:.3} F2 {:.3}", all.gold, all.pred, f2(p, r));
    // Names, addresses and the other free-text types are not covered yet (docs/security.md): the overall figure
    // is reported, and held to what the pattern layer reaches so that a regression shows.
    assert!(p >= 0.9, "overall precision {p}");
    assert!(failures.is_empty(), "below the floors: {failures:?}");
}

struct Row {
    text: String,
    template: u64,
    gold: Vec<Span>,
}

fn rows() -> Vec<Row> {
    let raw = std::fs::read_to_string(DATA).unwrap_or_else(|e| panic!("reading {DATA}: {e}"));
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["full_text"].as_str().unwrap().to_string();
            let offsets = byte_offsets(&text);
            let gold = v["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let at = |k: &str| offsets[usize::try_from(s[k].as_u64().unwrap()).unwrap()];
                    Span {
                        start: at("start_position"),
                        end: at("end_position"),
                        entity: s["entity_type"].as_str().unwrap().to_string(),
                    }
                })
                .collect();
            Row { text, template: v["template_id"].as_u64().unwrap(), gold }
        })
        .collect()
}

/// Templates to folds: the sorted template ids dealt out in a fixed shuffled order.
fn folds(rows: &[Row], k: usize) -> BTreeMap<u64, usize> {
    let mut ids: Vec<u64> = rows.iter().map(|r| r.template).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..ids.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
    ids.into_iter().enumerate().map(|(i, t)| (t, i % k)).collect()
}

#[test]
fn presidio_synth_pii_whole_detector_on_unseen_templates() {
    let rows = rows();
    let silver = ner::examples(&std::fs::read_to_string(ner::SILVER_PATH).unwrap());
    let fold_of = folds(&rows, 5);
    // Per gold type: found by a prediction of the same type / by any prediction; per predicted type: right.
    let mut typed: BTreeMap<String, Counts> = BTreeMap::new();
    let mut any_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut all = Counts::default();
    for fold in 0..5 {
        let gold: Vec<Example> = rows
            .iter()
            .filter(|r| fold_of[&r.template] != fold)
            .map(|r| {
                let gold: Vec<(usize, usize, Entity)> = r
                    .gold
                    .iter()
                    .filter_map(|g| Entity::parse(&g.entity).filter(|e| e.is_tagged()).map(|e| (g.start, g.end, e)))
                    .collect();
                Example::new(&r.text, &gold)
            })
            .collect();
        let train = ner::training_set(&gold, &silver);
        let detector = Detector::with_tagger(ner::train(&train, TrainOptions::default())).unwrap();
        for r in rows.iter().filter(|r| fold_of[&r.template] == fold) {
            let pred: Vec<Span> = detector
                .detect(&r.text)
                .into_iter()
                .map(|f| Span { start: f.start, end: f.end, entity: f.entity.as_str().to_string() })
                .collect();
            for g in &r.gold {
                let same = pred.iter().any(|p| p.entity == g.entity && overlaps(g, p));
                let any = pred.iter().any(|p| overlaps(g, p));
                let t = typed.entry(g.entity.clone()).or_default();
                t.gold += 1;
                t.gold_hit += usize::from(same);
                let a = any_type.entry(g.entity.clone()).or_default();
                a.0 += 1;
                a.1 += usize::from(any);
                all.gold += 1;
                all.gold_hit += usize::from(any);
            }
            for p in &pred {
                let t = typed.entry(p.entity.clone()).or_default();
                t.pred += 1;
                t.pred_hit += usize::from(r.gold.iter().any(|g| g.entity == p.entity && overlaps(g, p)));
                all.pred += 1;
                all.pred_hit += usize::from(r.gold.iter().any(|g| overlaps(g, p)));
            }
        }
    }
    eprintln!("\npresidio-synth-pii templates-a, {} rows, whole detector, 5 folds grouped by template", rows.len());
    eprintln!("| entity | gold | found (same type) | found (any type) | predicted | precision | F2 (same type) |");
    eprintln!("|---|---:|---:|---:|---:|---:|---:|");
    for (entity, c) in &typed {
        let p = c.pred_hit as f64 / c.pred.max(1) as f64;
        let r = c.gold_hit as f64 / c.gold.max(1) as f64;
        let any = any_type.get(entity).map_or(f64::NAN, |(g, h)| *h as f64 / (*g).max(1) as f64);
        eprintln!("| {entity} | {} | {r:.3} | {any:.3} | {} | {p:.3} | {:.3} |", c.gold, c.pred, f2(p, r));
    }
    let (p, r) = (all.pred_hit as f64 / all.pred.max(1) as f64, all.gold_hit as f64 / all.gold.max(1) as f64);
    eprintln!(
        "all gold spans (overlap, any type): {} gold, {} predicted, P {p:.3} R {r:.3} F2 {:.3}",
        all.gold,
        all.pred,
        f2(p, r)
    );
    // The goal is F2 >= 0.80 over all gold spans; the floor sits a little under what this measures so that a
    // regression shows.
    assert!(f2(p, r) >= 0.82, "F2 {:.3} over all gold spans", f2(p, r));
    for (entity, floor) in [("PERSON", 0.75), ("STREET_ADDRESS", 0.8)] {
        let c = &typed[entity];
        let recall = c.gold_hit as f64 / c.gold as f64;
        assert!(recall >= floor, "{entity}: recall {recall:.3} < {floor}");
    }
}
