//! The contrast guard: refuses two prompts whose wording asks for different, often opposite, things although
//! their sentence embeddings are close ("Is it safe to …" / "Is it unsafe to …", ascending / descending,
//! time / space complexity, causes / consequences, haiku / limerick). It fires on any of:
//!
//! 1. opposites by morphology among the words only one prompt has: `x` / `un`+`x` (and other negating
//!    prefixes), opposite prefix pairs (import / export, ascending / descending), opposite suffixes
//!    (careful / careless, sugar / sugar-free);
//! 2. opposite function words: in / out, before / after, more / less, …;
//! 3. a single slot: the content words of both prompts, in order, are the same except for one word on each
//!    side at the same place (a synonym cannot be told from a contrast there, so a synonym swap is refused
//!    too: a miss costs one upstream call, a false hit a wrong answer);
//! 4. a direction swap: the same content words crossing the same marker both ways ("convert X to Y" /
//!    "convert Y to X").
//!
//! Lexical and cheap (microseconds per pair), symmetric, English only. Written by hand because no crate does
//! this; designed on STS-B train and on hand-made prompt pairs (the research, its tables and its weaknesses are
//! summarised in `docs/cache.md`), and checked here against the research's reference implementation.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;

/// The words of one prompt as the guard compares them: lower-cased, contractions and clitics undone,
/// hyphenated words split (or joined after a negating prefix), irregular forms at their base, British
/// spellings made American.
pub fn tokens(text: &str) -> Vec<String> {
    let Some(re) = RE.as_ref() else { return Vec::new() };
    let s = text.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'");
    let s = re.cant.replace_all(&s, "can not");
    let s = re.wont.replace_all(&s, "will not");
    let s = re.nt.replace_all(&s, " not");
    let s = re.clitic.replace_all(&s, " ");
    let mut out = Vec::new();
    for m in re.word.find_iter(&s) {
        let mut parts = m.as_str().split('-');
        let Some(first) = parts.next() else { continue };
        let mut cur = first.to_string();
        for p in parts {
            if JOIN_PREFIXES.contains(&cur.as_str()) || JOIN_SUFFIXES.contains(&p) {
                cur.push_str(p);
            } else {
                out.push(std::mem::take(&mut cur));
                cur = p.to_string();
            }
        }
        out.push(cur);
    }
    out.into_iter().map(|t| spelling(re, &base_form(&t))).collect()
}

/// Why two prompts' words ask for different things, if they do (the guard's reasons, for tests and logs).
pub fn contrast(a: &[String], b: &[String]) -> Option<&'static str> {
    let (pa, pb) = (Prompt::new(a, b), Prompt::new(b, a));
    let only_a: Vec<&String> = pa.content.iter().filter(|w| !pb.stems.contains(&stem(w))).collect();
    let only_b: Vec<&String> = pb.content.iter().filter(|w| !pa.stems.contains(&stem(w))).collect();
    // 1. Morphological opposites among the words only one side has.
    if only_a.iter().any(|x| only_b.iter().any(|y| opposite(x, y) || opposite(&stem(x), &stem(y)))) {
        return Some("opposite");
    }
    // 2. Opposite function words.
    for &(p, q) in POLAR_PAIRS {
        for (x, y) in [(&pa, &pb), (&pb, &pa)] {
            if x.words.contains(p) && y.words.contains(q) && !y.words.contains(p) && !x.words.contains(q) {
                return Some("opposite");
            }
        }
    }
    // 3. A single slot: the common beginning and end of the content words taken away, one word is left on each
    //    side, and they are not the same word.
    let (ca, cb) = (&pa.content, &pb.content);
    let mut i = 0;
    while i < ca.len() && i < cb.len() && same_word(&ca[i], &cb[i]) {
        i += 1;
    }
    let mut j = 0;
    while j < ca.len() - i && j < cb.len() - i && same_word(&ca[ca.len() - 1 - j], &cb[cb.len() - 1 - j]) {
        j += 1;
    }
    let (ma, mb) = (&ca[i..ca.len() - j], &cb[i..cb.len() - j]);
    if (1..=SLOT_MAX).contains(&ma.len())
        && (1..=SLOT_MAX).contains(&mb.len())
        && !ma.iter().any(|x| mb.iter().any(|y| same_word(x, y)))
    {
        return Some("slot");
    }
    // 4. A direction swap, in prompts with the same content words (only their order differs: allowing even two
    //    other words made a dev paraphrase trip it, docs/cache.md).
    if only_a.is_empty() && only_b.is_empty() && swapped(&pa.seq, &pb.seq) {
        return Some("swap");
    }
    None
}

/// Words of one side of a pair, with what the rules need.
struct Prompt {
    /// Every word, compounds the other side writes as one merged ("set up" / "setup").
    words: BTreeSet<String>,
    /// Content words, in order.
    content: Vec<String>,
    stems: BTreeSet<String>,
    /// Content stems and direction markers (`M:to`), in order.
    seq: Vec<String>,
}

impl Prompt {
    fn new(toks: &[String], other: &[String]) -> Self {
        let other: BTreeSet<&str> = other.iter().map(String::as_str).collect();
        let mut merged = Vec::with_capacity(toks.len());
        let mut i = 0;
        while i < toks.len() {
            if let Some(next) = toks.get(i + 1) {
                let joined = format!("{}{next}", toks[i]);
                if other.contains(joined.as_str()) {
                    merged.push(joined);
                    i += 2;
                    continue;
                }
            }
            merged.push(toks[i].clone());
            i += 1;
        }
        let content: Vec<String> = merged.iter().filter(|t| is_content(t)).cloned().collect();
        let stems = content.iter().map(|w| stem(w)).collect();
        let seq = merged
            .iter()
            .filter_map(|t| {
                if DIRECTION_MARKERS.contains(&t.as_str()) {
                    Some(format!("M:{t}"))
                } else {
                    is_content(t).then(|| stem(t))
                }
            })
            .collect();
        Self { words: merged.into_iter().collect(), content, stems, seq }
    }
}

/// Whether words cross a direction marker both ways between the two prompts.
fn swapped(a: &[String], b: &[String]) -> bool {
    let count = |s: &[String], m: &String| s.iter().filter(|x| *x == m).count();
    for m in a.iter().filter(|m| m.starts_with("M:")) {
        if count(a, m) != 1 || count(b, m) != 1 {
            continue;
        }
        let (Some(ia), Some(ib)) = (a.iter().position(|x| x == m), b.iter().position(|x| x == m)) else {
            continue;
        };
        let set = |s: &[String]| s.iter().filter(|w| !w.starts_with("M:")).cloned().collect::<BTreeSet<_>>();
        let (la, ra, lb, rb) = (set(&a[..ia]), set(&a[ia + 1..]), set(&b[..ib]), set(&b[ib + 1..]));
        let right = la.intersection(&rb).any(|w| !ra.contains(w) && !lb.contains(w));
        let left = ra.intersection(&lb).any(|w| !la.contains(w) && !rb.contains(w));
        if right && left {
            return true;
        }
    }
    false
}

/// The size of the slot rule 3 looks for.
const SLOT_MAX: usize = 1;

fn is_content(t: &str) -> bool {
    !crate::guards::is_stop(t) && !FRAMING.contains(&t) && !t.bytes().all(|b| b.is_ascii_digit()) && t.len() > 1
}

/// Two different words that are opposites by morphology.
pub fn opposite(x: &str, y: &str) -> bool {
    if x == y {
        return false;
    }
    if neg_prefix(x, y) || neg_prefix(y, x) {
        return true;
    }
    for (p, q) in OPPOSITE_PREFIXES {
        for (a, b) in [(x, y), (y, x)] {
            if let (Some(ra), Some(rb)) = (a.strip_prefix(p), b.strip_prefix(q))
                && ra == rb
                && ra.len() >= 3
            {
                return true;
            }
        }
    }
    for (p, q) in OPPOSITE_SUFFIXES {
        for (a, b) in [(x, y), (y, x)] {
            if let (Some(ra), Some(rb)) = (a.strip_suffix(p), b.strip_suffix(q))
                && ra == rb
                && ra.len() >= 3
            {
                return true;
            }
        }
    }
    false
}

/// `y` is a negating prefix and `x` (the bare "a" only before words of 5+ letters ending in -ic or -al).
fn neg_prefix(x: &str, y: &str) -> bool {
    NEG_PREFIXES.iter().any(|p| {
        y.strip_prefix(p).is_some_and(|rest| rest == x)
            && x.len() >= 3
            && (*p != "a" || (x.len() >= 5 && (x.ends_with("ic") || x.ends_with("al"))))
    })
}

/// Rule 3's notion of one word: equal stems, or, unless opposites, an abbreviation (one begins the other, 4+
/// letters), a compound's head (one ends the other, 5+ letters) or a spelling variant (one edit, 6+ letters).
pub fn same_word(x: &str, y: &str) -> bool {
    let (sx, sy) = (stem(x), stem(y));
    if x == y || sx == sy {
        return true;
    }
    if opposite(x, y) || opposite(&sx, &sy) {
        return false;
    }
    let (s, l) = if x.len() <= y.len() { (x, y) } else { (y, x) };
    (s.len() >= 4 && l.starts_with(s)) || (s.len() >= 5 && l.ends_with(s)) || (s.len() >= 6 && edit1(s, l))
}

/// Whether `a` and `b` differ by one substitution, insertion or deletion.
fn edit1(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    if a.len() == b.len() {
        return a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1;
    }
    let (short, long) = if a.len() < b.len() { (&a, &b) } else { (&b, &a) };
    (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
}

/// A small suffix stripper: one suffix removed (the first that qualifies), then a final e dropped, a final y
/// made i, a doubled final consonant (not l or s) undoubled. causes, cause → caus; running → run; flies → fli.
pub fn stem(w: &str) -> String {
    if w.len() <= 2 || w.bytes().all(|b| b.is_ascii_digit()) {
        return w.to_string();
    }
    if w.len() == 5 && w.ends_with("ying") {
        return format!("{}i", &w[..1]);
    }
    let mut s = w.to_string();
    for suf in ["ingly", "edly", "ings", "ing", "ies", "ied", "es", "ed", "s", "ly", "er", "est"] {
        let min_base = if matches!(suf, "ies" | "ied" | "ed" | "es") { 2 } else { 3 };
        let Some(base) = s.strip_suffix(suf) else { continue };
        if base.len() < min_base {
            continue;
        }
        if suf == "s" && (s.ends_with("ss") || s.ends_with("us") || s.ends_with("is")) {
            continue;
        }
        let mut base = base.to_string();
        if suf == "es" && !["s", "x", "z", "ch", "sh"].iter().any(|e| base.ends_with(e)) {
            base = s[..s.len() - 1].to_string();
        }
        if suf == "ies" || suf == "ied" {
            base.push('i');
        }
        if suf == "ed" && base.ends_with('e') {
            continue;
        }
        if !base.chars().any(|c| "aeiouy".contains(c)) {
            continue;
        }
        s = base;
        break;
    }
    if s.len() >= 3 && s.ends_with('e') {
        s.pop();
    }
    if s.len() >= 3 && s.ends_with('y') {
        s.pop();
        s.push('i');
    }
    let b = s.as_bytes();
    if b.len() > 3 && b[b.len() - 1] == b[b.len() - 2] && !b"aeiouls".contains(&b[b.len() - 1]) {
        s.pop();
    }
    s
}

fn base_form(t: &str) -> String {
    if let Some(base) = IRREGULAR.get(t) {
        return (*base).to_string();
    }
    for p in ["under", "over", "with", "for", "re", "mis", "out", "up", "be", "fore"] {
        if let Some(rest) = t.strip_prefix(p)
            && rest.len() >= 3
            && let Some(base) = IRREGULAR.get(rest)
        {
            return format!("{p}{base}");
        }
    }
    t.to_string()
}

/// British spellings made American (colour → color, organise → organize, centre → center, catalogue → catalog).
fn spelling(re: &Patterns, t: &str) -> String {
    let mut t = t.to_string();
    for (pattern, replacement) in &re.spelling {
        t = pattern.replace(&t, *replacement).into_owned();
    }
    t
}

struct Patterns {
    cant: Regex,
    wont: Regex,
    nt: Regex,
    clitic: Regex,
    word: Regex,
    spelling: Vec<(Regex, &'static str)>,
}

static RE: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    let spelling = [
        (r"^(\w{3,})our(s?)$", "${1}or${2}"),
        (r"^(\w{3,})is(e|es|ed|ing|ation|ations)$", "${1}iz${2}"),
        (r"^(\w{2,})ys(e|es|ed|ing)$", "${1}yz${2}"),
        (r"^(\w{2,})tre(s?)$", "${1}ter${2}"),
        (r"^(\w{3,})ogue(s?)$", "${1}og${2}"),
    ];
    Some(Patterns {
        cant: Regex::new(r"\bcan\s*'t\b|\bcannot\b").ok()?,
        wont: Regex::new(r"\bwon\s*'t\b").ok()?,
        nt: Regex::new(r"n\s*'t\b").ok()?,
        clitic: Regex::new(r"\s*'(?:s|re|ve|ll|d|m)\b").ok()?,
        word: Regex::new(r"[a-z0-9]+(?:-[a-z0-9]+)*").ok()?,
        spelling: spelling.iter().map(|(p, r)| Regex::new(p).ok().map(|re| (re, *r))).collect::<Option<_>>()?,
    })
});

/// Words that frame a request rather than say what it is about ("How do I …", "Can you explain …"), and
/// indefinite pronouns: not content words.
const FRAMING: &[&str] = &[
    "please",
    "pls",
    "kindly",
    "thanks",
    "thank",
    "hi",
    "hello",
    "hey",
    "tell",
    "explain",
    "describe",
    "show",
    "give",
    "help",
    "know",
    "need",
    "want",
    "way",
    "ways",
    "whats",
    "hows",
    "im",
    "ive",
    "id",
    "youre",
    "dont",
    "doesnt",
    "someone",
    "somebody",
    "something",
    "anyone",
    "anybody",
    "anything",
    "everyone",
    "everybody",
    "everything",
];

/// Prefixes that negate or reverse a word.
const NEG_PREFIXES: &[&str] = &["un", "in", "im", "il", "ir", "dis", "non", "anti", "mis", "mal", "de", "counter", "a"];

/// Prefix pairs that make opposites of one stem.
const OPPOSITE_PREFIXES: &[(&str, &str)] = &[
    ("in", "out"),
    ("in", "ex"),
    ("im", "ex"),
    ("in", "de"),
    ("a", "de"),
    ("en", "de"),
    ("en", "dis"),
    ("up", "down"),
    ("over", "under"),
    ("pre", "post"),
    ("inter", "intra"),
    ("hyper", "hypo"),
    ("sub", "super"),
    ("micro", "macro"),
    ("max", "min"),
    ("on", "off"),
    ("un", "re"),
    ("homo", "hetero"),
    ("pro", "anti"),
];

/// Suffix pairs that make opposites of one stem ("" is the bare stem).
const OPPOSITE_SUFFIXES: &[(&str, &str)] =
    &[("ful", "less"), ("", "less"), ("", "free"), ("in", "out"), ("on", "off"), ("up", "down")];

/// Opposite function words (stop words, so rule 3 does not see them).
const POLAR_PAIRS: &[(&str, &str)] = &[
    ("before", "after"),
    ("above", "below"),
    ("up", "down"),
    ("over", "under"),
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("on", "off"),
    ("in", "out"),
    ("into", "out"),
];

const DIRECTION_MARKERS: &[&str] = &["to", "into", "from", "for", "than", "versus", "vs", "instead"];

/// Hyphenated words are joined after these prefixes and before these suffixes ("non-stick" → "nonstick").
const JOIN_PREFIXES: &[&str] = &[
    "non", "anti", "un", "dis", "mis", "de", "pre", "post", "counter", "hyper", "hypo", "sub", "super", "multi",
    "over", "under", "in", "out", "up", "down", "re",
];
const JOIN_SUFFIXES: &[&str] = &["free", "less", "ful"];

/// Irregular verb forms and plurals, each line a base form and its forms (ambiguous forms such as left,
/// ground, lay, rose, bit, bound, born are left out on purpose).
const IRREGULAR_TABLE: &str = "arise arose arisen|beat beaten|become became|begin began begun|bend bent|bite bitten|bleed bled|blow blew blown|break broke broken|breed bred|bring brought|build built|burn burnt|buy bought|catch caught|choose chose chosen|come came|creep crept|deal dealt|dig dug|draw drew drawn|dream dreamt|drink drank drunk|drive drove driven|eat ate eaten|fall fell fallen|feed fed|feel felt|fight fought|find found|flee fled|fly flew flown|forbid forbade forbidden|forget forgot forgotten|forgive forgave forgiven|freeze froze frozen|get got gotten|give gave given|go went gone|grow grew grown|hang hung|hear heard|hide hid hidden|hold held|keep kept|kneel knelt|know knew known|lead led|lend lent|light lit|lose lost|make made|mean meant|meet met|pay paid|ride rode ridden|ring rang rung|rise risen|run ran|see saw seen|seek sought|sell sold|send sent|shake shook shaken|shine shone|shoot shot|show shown|shrink shrank shrunk|sing sang sung|sink sank sunk|sit sat|sleep slept|slide slid|speak spoke spoken|spend spent|spin spun|stand stood|steal stole stolen|stick stuck|sting stung|strike struck|swear swore sworn|sweep swept|swim swam swum|swing swung|take took taken|teach taught|tear tore torn|tell told|think thought|throw threw thrown|understand understood|wake woke woken|wear wore worn|weave wove woven|win won|write wrote written|withdraw withdrew withdrawn|undertake undertook undertaken|overcome overcame|man men|woman women|child children|person people|foot feet|tooth teeth|mouse mice|goose geese";

static IRREGULAR: LazyLock<HashMap<&'static str, &'static str>> = LazyLock::new(|| {
    let mut map = HashMap::new();
    for line in IRREGULAR_TABLE.split('|') {
        let mut words = line.split_whitespace();
        let Some(base) = words.next() else { continue };
        for form in words {
            map.insert(form, base);
        }
    }
    map
});

#[cfg(test)]
mod tests;
