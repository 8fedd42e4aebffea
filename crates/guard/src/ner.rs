//! The named-entity tagger: personal data with no fixed shape — people's names, street addresses, places,
//! organisations, titles, ages, nationalities and religious or political groups (Presidio's `NRP`), postal codes
//! and dates written out in words — which no regex finds.
//!
//! A greedy left-to-right tagger: each token gets one class (an entity type or none) from a linear model over
//! hashed features of the token and its neighbours (the word, its shape such as `Xx` or `dd`, its prefixes and
//! suffixes, the words and shapes two to each side, whether it starts a line) and the classes the tagger gave
//! the two tokens before it. Neighbouring tokens of one class make one finding. The model is an averaged
//! perceptron, trained by `cargo run --release -p keel-guard --example train_ner`
//! (crates/guard/examples/train_ner.rs) on presidio-synth-pii, its weights committed in
//! `crates/guard/model/ner.bin`.
//!
//! Why this and not a neural model: it runs in well under a millisecond per kilobyte on one core with nothing to
//! download, and on sentence shapes it never saw in training (cross-validation grouped by template) it finds
//! most names and nearly all street addresses (docs/security.md has the table). Why by hand: the model is a sum
//! of looked-up rows and an arg-max, and training is a perceptron's update rule; a machine-learning crate would
//! bring far more than these lines, and training must be bit-for-bit reproducible (one thread, a fixed order,
//! a fixed-seed shuffle), which is easiest when every step is ours.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::classifier::ModelError;
use crate::pii::Entity;

/// The classes, in the model file's column order: index 0 is "no entity".
pub const CLASSES: [Option<Entity>; 10] = [
    None,
    Some(Entity::Person),
    Some(Entity::StreetAddress),
    Some(Entity::Location),
    Some(Entity::Organization),
    Some(Entity::Title),
    Some(Entity::DateTime),
    Some(Entity::Age),
    Some(Entity::Nrp),
    Some(Entity::ZipCode),
];
const C: usize = CLASSES.len();

/// The committed model (written by the `train_ner` example).
const EMBEDDED: &[u8] = include_bytes!("../model/ner.bin");
const MAGIC: &[u8; 8] = b"KEELNER1";

/// The class index standing for "before the text" in the previous-class features.
const START: u8 = 0xfe;

/// Punctuation that may sit inside one finding between two tokens of its class ("12 Main St., Apt 4",
/// "O'Neil", "Smith-Jones").
const JOINERS: [char; 6] = [',', '.', '-', '\'', '/', '#'];

/// One token of a text: a run of word characters, one other non-space character, or a line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub start: usize,
    pub end: usize,
    /// Lower-cased text.
    lower: String,
    /// The shape: `X` upper, `x` lower, `d` digit, others as they are, runs collapsed, at most 6 characters.
    shape: String,
    newline: bool,
    /// The single character of a punctuation token.
    punct: Option<char>,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of `text`, with byte offsets on char boundaries.
pub fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c == '\n' {
            out.push(token(text, start, start + 1, true, None));
        } else if c.is_whitespace() {
            continue;
        } else if is_word(c) {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !is_word(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            out.push(token(text, start, end, false, None));
        } else {
            out.push(token(text, start, start + c.len_utf8(), false, Some(c)));
        }
    }
    out
}

fn token(text: &str, start: usize, end: usize, newline: bool, punct: Option<char>) -> Token {
    let raw = text.get(start..end).unwrap_or_default();
    let mut shape = String::new();
    let mut last = None;
    for ch in raw.chars() {
        let s = if ch.is_uppercase() {
            'X'
        } else if ch.is_alphabetic() {
            'x'
        } else if ch.is_numeric() {
            'd'
        } else {
            ch
        };
        if last != Some(s) {
            shape.push(s);
            last = Some(s);
            if shape.chars().count() == 6 {
                break;
            }
        }
    }
    Token { start, end, lower: raw.to_lowercase(), shape, newline, punct }
}

/// The first `n` characters of `s`.
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The last `n` characters of `s`.
fn suffix(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n { s } else { s.char_indices().nth(count - n).map_or(s, |(i, _)| &s[i..]) }
}

/// FNV-1a (64-bit) over a template number and its parts, each part followed by a separator: stable across
/// platforms and releases, which a model file needs (std's hasher promises neither).
fn feature(template: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(template);
    for p in parts {
        for &b in *p {
            eat(b);
        }
        eat(0x1f);
    }
    h
}

/// The features of token `i` given the classes of the two tokens before it, appended to `out`.
fn features(toks: &[Token], i: usize, prev: u8, prev2: u8, out: &mut Vec<u64>) {
    const BOS: &[u8] = b"\x02<s>";
    const EOS: &[u8] = b"\x03</s>";
    let word = |j: isize| -> &[u8] {
        match usize::try_from(j).ok().and_then(|j| toks.get(j)) {
            Some(t) => t.lower.as_bytes(),
            None if j < 0 => BOS,
            None => EOS,
        }
    };
    let shape = |j: isize| -> &[u8] {
        match usize::try_from(j).ok().and_then(|j| toks.get(j)) {
            Some(t) => t.shape.as_bytes(),
            None if j < 0 => BOS,
            None => EOS,
        }
    };
    let Some(t) = toks.get(i) else { return };
    let i = i as isize;
    let lw = t.lower.as_str();
    let (w, s) = (lw.as_bytes(), t.shape.as_bytes());
    let len = [u8::try_from(lw.chars().count().min(10)).unwrap_or(10)];
    let (p, p2) = ([prev], [prev2]);
    let suffix_of = |b: &[u8]| -> Vec<u8> { suffix(std::str::from_utf8(b).unwrap_or_default(), 3).as_bytes().to_vec() };
    let (x3_before, x3_after) = (suffix_of(word(i - 1)), suffix_of(word(i + 1)));
    out.extend([
        feature(0, &[]),
        feature(1, &[w]),
        feature(2, &[s]),
        feature(3, &[prefix(lw, 3).as_bytes()]),
        feature(4, &[suffix(lw, 3).as_bytes()]),
        feature(5, &[suffix(lw, 2).as_bytes()]),
        feature(6, &[&len]),
        feature(7, &[word(i - 1)]),
        feature(8, &[word(i + 1)]),
        feature(9, &[word(i - 2)]),
        feature(10, &[word(i + 2)]),
        feature(11, &[shape(i - 1)]),
        feature(12, &[shape(i + 1)]),
        feature(13, &[word(i - 1), s]),
        feature(14, &[s, shape(i + 1)]),
        feature(15, &[&p]),
        feature(16, &[&p2, &p]),
        feature(17, &[&p, w]),
        feature(18, &[word(i - 2), word(i - 1)]),
        feature(19, &[word(i + 1), word(i + 2)]),
        feature(20, &[&x3_before]),
        feature(21, &[&x3_after]),
        feature(23, &[prefix(lw, 4).as_bytes()]),
        feature(24, &[suffix(lw, 4).as_bytes()]),
        feature(25, &[suffix(lw, 1).as_bytes()]),
        feature(26, &[word(i - 1), word(i + 1)]),
        feature(27, &[shape(i - 1), s, shape(i + 1)]),
    ]);
    let line_start = i == 0 || usize::try_from(i - 1).ok().and_then(|j| toks.get(j)).is_some_and(|t| t.newline);
    if line_start {
        out.push(feature(22, &[]));
    }
}

/// The keys are already FNV hashes: hashing them again would only cost time.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Rows<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

/// A trained tagger: one row of class weights per feature seen in training.
#[derive(Clone, Default)]
pub struct Tagger {
    rows: Rows<[f32; C]>,
}

impl fmt::Debug for Tagger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tagger").field("features", &self.rows.len()).finish()
    }
}

/// One finding of the tagger: a class and its byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tagged {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
}

impl Tagger {
    /// The committed model.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::decode(EMBEDDED)
    }

    fn best(&self, feats: &[u64]) -> u8 {
        let mut score = [0f32; C];
        for f in feats {
            if let Some(row) = self.rows.get(f) {
                for (s, w) in score.iter_mut().zip(row) {
                    *s += w;
                }
            }
        }
        // Ties go to the lower index, so an unseen token is "no entity".
        let mut best = 0;
        for (k, s) in score.iter().enumerate() {
            if *s > score[best] {
                best = k;
            }
        }
        u8::try_from(best).unwrap_or(0)
    }

    /// The class index of every token, left to right.
    pub fn tag(&self, toks: &[Token]) -> Vec<u8> {
        let mut tags: Vec<u8> = Vec::with_capacity(toks.len());
        let mut feats = Vec::with_capacity(32);
        for i in 0..toks.len() {
            feats.clear();
            let (p, p2) = previous(&tags);
            features(toks, i, p, p2, &mut feats);
            tags.push(self.best(&feats));
        }
        tags
    }

    /// The entities in `text`, sorted by start, without overlaps.
    pub fn detect(&self, text: &str) -> Vec<Tagged> {
        let toks = tokenize(text);
        let tags = self.tag(&toks);
        spans(&toks, &tags)
    }

    /// The file format: magic, classes (u32), rows (u32), scale (f32), then per row the feature's key (u64) and
    /// one weight per class as i16, each `weight = q * scale`; little-endian, rows sorted by key.
    pub fn encode(&self) -> Vec<u8> {
        let max = self.rows.values().flatten().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 { max / f32::from(i16::MAX) } else { 1.0 };
        let mut keys: Vec<&u64> = self.rows.keys().collect();
        keys.sort_unstable();
        let mut out = Vec::with_capacity(20 + keys.len() * (8 + 2 * C));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(C as u32).to_le_bytes());
        out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        for k in keys {
            out.extend_from_slice(&k.to_le_bytes());
            for w in self.rows.get(k).into_iter().flatten() {
                // Saturating by construction: |w / scale| ≤ i16::MAX.
                out.extend_from_slice(&((w / scale).round() as i16).to_le_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        let err = |m: String| ModelError(format!("named-entity model: {m}"));
        let header = bytes.get(..20).ok_or_else(|| err("file too short".into()))?;
        if &header[..8] != MAGIC {
            return Err(err("not a keel named-entity model (bad magic)".into()));
        }
        let word = |at: usize| [header[at], header[at + 1], header[at + 2], header[at + 3]];
        let classes = u32::from_le_bytes(word(8)) as usize;
        if classes != C {
            return Err(err(format!("{classes} classes, this build reads {C}")));
        }
        let n = u32::from_le_bytes(word(12)) as usize;
        let scale = f32::from_le_bytes(word(16));
        if !scale.is_finite() {
            return Err(err("non-finite scale".into()));
        }
        let row = 8 + 2 * C;
        let body = &bytes[20..];
        if body.len() != n.saturating_mul(row) {
            return Err(err(format!("{} bytes of rows, expected {}", body.len(), n.saturating_mul(row))));
        }
        let mut rows = Rows::with_capacity_and_hasher(n, BuildHasherDefault::default());
        for r in body.chunks_exact(row) {
            let mut key = [0u8; 8];
            key.copy_from_slice(&r[..8]);
            let mut w = [0f32; C];
            for (k, q) in r[8..].chunks_exact(2).enumerate() {
                if let Some(slot) = w.get_mut(k) {
                    *slot = f32::from(i16::from_le_bytes([q[0], q[1]])) * scale;
                }
            }
            rows.insert(u64::from_le_bytes(key), w);
        }
        Ok(Self { rows })
    }
}

/// The classes of the last two tokens tagged, [`START`] before the text.
fn previous(tags: &[u8]) -> (u8, u8) {
    let n = tags.len();
    let at = |k: usize| n.checked_sub(k).and_then(|j| tags.get(j)).copied().unwrap_or(START);
    (at(1), at(2))
}

/// Findings from the tokens' classes: a run of tokens of one class, across a single joiner between two of
/// them, never across a line break; punctuation at either end is left out, except a closing `.` or `)` that
/// belongs to the last word ("Mrs.", "(Orange)").
pub fn spans(toks: &[Token], tags: &[u8]) -> Vec<Tagged> {
    let class = |i: usize| tags.get(i).copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = class(i);
        if t == 0 || toks[i].newline {
            i += 1;
            continue;
        }
        let mut j = i;
        while let Some(next) = toks.get(j + 1) {
            if next.newline {
                break;
            }
            let joins = next.punct.is_some_and(|c| JOINERS.contains(&c))
                && toks.get(j + 2).is_some_and(|t| !t.newline)
                && class(j + 2) == t;
            if class(j + 1) == t || joins {
                j += 1;
            } else {
                break;
            }
        }
        let (mut a, mut b) = (i, j);
        while a < b && toks[a].punct.is_some() {
            a += 1;
        }
        while b > a && toks[b].punct.is_some_and(|c| c != '.' && c != ')') {
            b -= 1;
        }
        let entity = CLASSES.get(usize::from(t)).copied().flatten();
        if let Some(entity) = entity
            && toks[a].punct.is_none()
        {
            out.push(Tagged { entity, start: toks[a].start, end: toks[b].end });
        }
        i = j + 1;
    }
    out
}

/// One training sentence: its tokens and each token's class index.
#[derive(Debug, Clone)]
pub struct Example {
    pub tokens: Vec<Token>,
    pub classes: Vec<u8>,
}

impl Example {
    /// `text` with gold spans as byte ranges: a token takes the class of the span it overlaps.
    pub fn new(text: &str, gold: &[(usize, usize, Entity)]) -> Self {
        let tokens = tokenize(text);
        let classes = tokens
            .iter()
            .map(|t| {
                gold.iter()
                    .rev()
                    .find(|(s, e, _)| t.start < *e && *s < t.end)
                    .and_then(|(_, _, ent)| CLASSES.iter().position(|c| *c == Some(*ent)))
                    .and_then(|k| u8::try_from(k).ok())
                    .unwrap_or(0)
            })
            .collect();
        Self { tokens, classes }
    }
}

impl Example {
    /// A row in presidio-synth-pii's format (`full_text`, `spans` of `entity_type` with code-point
    /// `start_position` and `end_position`), keeping the spans of the tagged types; `None` when the row has no
    /// text or a span falls outside it.
    pub fn from_presidio(row: &serde_json::Value) -> Option<Self> {
        let text = row.get("full_text")?.as_str()?;
        let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).collect();
        let mut gold = Vec::new();
        for s in row.get("spans")?.as_array()? {
            let at = |k: &str| offsets.get(usize::try_from(s.get(k)?.as_u64()?).ok()?).copied();
            let (start, end) = (at("start_position")?, at("end_position")?);
            if let Some(e) = s.get("entity_type").and_then(|e| e.as_str()).and_then(Entity::parse)
                && e.is_tagged()
            {
                gold.push((start, end, e));
            }
        }
        Some(Self::new(text, &gold))
    }
}

/// Where the silver-labelled sentences are committed (written by `scripts/ner-silver.py`): ordinary English
/// text labelled by spaCy's small English pipeline. Read only to train; the gateway embeds the model alone.
pub const SILVER_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/model/ner-silver.jsonl");

/// The examples in a JSONL text of presidio-format rows; lines that are not such a row are skipped.
pub fn examples(jsonl: &str) -> Vec<Example> {
    jsonl.lines().filter_map(|l| serde_json::from_str(l).ok()).filter_map(|v| Example::from_presidio(&v)).collect()
}

/// How many times each gold sentence is seen per epoch for each silver one: the gold set is small and alone
/// has street addresses, titles, ages and postal codes.
pub const GOLD_REPEAT: usize = 3;

/// The training set of the committed model: the gold sentences [`GOLD_REPEAT`] times, then the silver ones.
pub fn training_set(gold: &[Example], silver: &[Example]) -> Vec<Example> {
    let mut out = Vec::with_capacity(gold.len() * GOLD_REPEAT + silver.len());
    for _ in 0..GOLD_REPEAT {
        out.extend_from_slice(gold);
    }
    out.extend_from_slice(silver);
    out
}

/// Options of [`train`].
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub epochs: usize,
    pub seed: u64,
    /// Features whose every class weight is smaller than this (in absolute value) are left out of the model:
    /// they barely move a score, and without them the model file is a fraction of the size.
    pub prune: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { epochs: 8, seed: 1, prune: 1.0 }
    }
}

/// A weight row while training: the weights, their running sums for the average, and when each was last
/// brought up to date.
#[derive(Clone, Copy, Default)]
struct Acc {
    w: [f32; C],
    total: [f64; C],
    stamp: [u64; C],
}

/// An averaged perceptron, trained greedily as it tags (each token's features use the classes the model being
/// trained gave the tokens before it): deterministic, one thread, the examples shuffled by a fixed-seed
/// generator before each epoch.
pub fn train(examples: &[Example], opts: TrainOptions) -> Tagger {
    let mut acc: Rows<Acc> = Rows::default();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = opts.seed.max(1);
    let mut step: u64 = 0;
    let mut feats = Vec::with_capacity(32);
    for _ in 0..opts.epochs {
        // Fisher–Yates with xorshift64.
        for k in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(k, (rng % (k as u64 + 1)) as usize);
        }
        for &e in &order {
            let Some(ex) = examples.get(e) else { continue };
            let mut tags: Vec<u8> = Vec::with_capacity(ex.tokens.len());
            for i in 0..ex.tokens.len() {
                feats.clear();
                let (p, p2) = previous(&tags);
                features(&ex.tokens, i, p, p2, &mut feats);
                let mut score = [0f32; C];
                for f in &feats {
                    if let Some(a) = acc.get(f) {
                        for (s, w) in score.iter_mut().zip(&a.w) {
                            *s += w;
                        }
                    }
                }
                let mut guess = 0;
                for (k, s) in score.iter().enumerate() {
                    if *s > score[guess] {
                        guess = k;
                    }
                }
                step += 1;
                let truth = usize::from(ex.classes.get(i).copied().unwrap_or(0));
                if guess != truth {
                    for f in &feats {
                        let a = acc.entry(*f).or_default();
                        for (k, d) in [(truth, 1f32), (guess, -1f32)] {
                            a.total[k] += (step - a.stamp[k]) as f64 * f64::from(a.w[k]);
                            a.stamp[k] = step;
                            a.w[k] += d;
                        }
                    }
                }
                tags.push(u8::try_from(guess).unwrap_or(0));
            }
        }
    }
    let steps = step.max(1) as f64;
    let rows = acc
        .into_iter()
        .filter_map(|(f, a)| {
            let mut w = [0f32; C];
            for (k, v) in w.iter_mut().enumerate() {
                *v = ((a.total[k] + (step - a.stamp[k]) as f64 * f64::from(a.w[k])) / steps) as f32;
            }
            w.iter().any(|v| v.abs() > opts.prune && *v != 0.0).then_some((f, w))
        })
        .collect();
    Tagger { rows }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn tokens_are_words_single_marks_and_line_breaks_on_char_boundaries() {
        let text = "Zoë O'Neil,\n 12 Rue Émile";
        let toks = tokenize(text);
        let words: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
        assert_eq!(words, ["Zoë", "O", "'", "Neil", ",", "\n", "12", "Rue", "Émile"]);
        assert_eq!(toks[0].shape, "Xx");
        assert_eq!(toks[6].shape, "d");
        assert!(toks[5].newline);
    }

    #[test]
    fn spans_join_runs_across_joiners_but_not_line_breaks_and_trim_punctuation() {
        let text = "Mrs. Ann Lee, 12 Main St.\nBoston";
        let toks = tokenize(text);
        // Mrs . Ann Lee , 12 Main St . \n Boston
        let tags = [5, 5, 1, 1, 0, 2, 2, 2, 2, 0, 2];
        let got: Vec<(&str, Entity)> =
            spans(&toks, &tags).into_iter().map(|s| (&text[s.start..s.end], s.entity)).collect();
        assert_eq!(
            got,
            [
                ("Mrs.", Entity::Title),
                ("Ann Lee", Entity::Person),
                ("12 Main St.", Entity::StreetAddress),
                ("Boston", Entity::StreetAddress)
            ]
        );
    }

    #[test]
    fn training_learns_a_toy_set_and_the_file_roundtrips() {
        let mut examples = Vec::new();
        for (first, last) in [("Anna", "Berg"), ("Tom", "Reyes"), ("Li", "Wong"), ("Sara", "Holm"), ("Ian", "Kerr")] {
            let text = format!("Please call {first} {last} today.");
            let s = text.find(first).unwrap();
            let e = s + first.len() + 1 + last.len();
            examples.push(Example::new(&text, &[(s, e, Entity::Person)]));
            examples.push(Example::new("Please call the office today.", &[]));
        }
        let opts = TrainOptions { prune: 0.0, ..TrainOptions::default() };
        let tagger = train(&examples, opts);
        let text = "Please call Mona Vik today.";
        let found = tagger.detect(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((&text[found[0].start..found[0].end], found[0].entity), ("Mona Vik", Entity::Person));
        assert!(tagger.detect("Please call the office today.").is_empty());
        let back = Tagger::decode(&tagger.encode()).unwrap();
        assert_eq!(back.detect(text), found);
        // Deterministic: the same data gives the same bytes.
        assert_eq!(train(&examples, opts).encode(), tagger.encode());
        assert!(Tagger::decode(b"KEELNER1\x03\0\0\0").is_err());
    }

    #[test]
    fn the_embedded_model_finds_a_name_and_an_address_and_leaves_a_plain_question_alone() {
        let tagger = Tagger::embedded().unwrap();
        let text = "My name is Joanna Kowalski and I live at 1432 Maple Avenue, Springfield.";
        let found: Vec<(&str, Entity)> =
            tagger.detect(text).into_iter().map(|s| (&text[s.start..s.end], s.entity)).collect();
        assert!(found.iter().any(|(t, e)| t.contains("Kowalski") && *e == Entity::Person), "{found:?}");
        assert!(found.iter().any(|(t, e)| t.contains("Maple") && *e == Entity::StreetAddress), "{found:?}");
        let plain = tagger.detect("How do I sort a list of numbers in Python?");
        assert!(!plain.iter().any(|s| matches!(s.entity, Entity::Person | Entity::StreetAddress)), "{plain:?}");
    }
}
