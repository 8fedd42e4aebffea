//! The PII pattern layer: personal data and secrets with a fixed shape, found by regex and confirmed by code.
//!
//! Every recognizer is a candidate regex (the `regex` crate does the matching), an optional validator on the
//! matched text, an optional context rule on the 48 characters before it, and guards on the characters around
//! it. The `regex` crate has no lookaround and no backreferences, so what a lookbehind or lookahead would say
//! ("not part of a longer token", "not right after `sha256-`") is written here as plain code, as are the
//! checksums no regex can express (Luhn, IBAN mod-97, the national-id check digits). That code — validators and
//! guards — is the part that is ours; it is a port of the prototype measured for issue 14
//! (`pii_regex.py`: precision and recall 1.0 on e-mail, phone, card, IBAN, SSN and URL spans of the
//! presidio-synth-pii set).
//!
//! A validation that fails does not hide a valid match that starts inside the rejected one: the search
//! restarts at the next character after the rejected match's start. Overlapping findings are then resolved by
//! priority (validated, specific kinds before loose ones), then length, then position.
//!
//! Offsets in a [`Finding`] are byte offsets into the `&str` given to [`Detector::detect`], always on char
//! boundaries, so `&text[f.start..f.end]` is the matched value.

use std::cmp::Reverse;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;
use serde::Serialize;

use crate::injection::InitError;
use crate::ner::Tagger;

/// A kind of personal data or secret the pattern layer recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// API keys with known prefixes, private keys, `password=…` assignments and high-entropy tokens.
    Secret,
    Email,
    /// A URL (`http(s)://…` or `www.…`); Presidio calls it `DOMAIN_NAME`.
    Url,
    Iban,
    /// A European national id: ES DNI/NIE, IT codice fiscale, FR NIR, UK NINO, SE personnummer, FI HETU,
    /// BE national number, NL BSN, PL PESEL, DE tax id.
    NationalId,
    UsSsn,
    CreditCard,
    IpAddress,
    DateTime,
    UsDriverLicense,
    Phone,
    // Found by the named-entity tagger ([`crate::ner`]), not by a pattern.
    Person,
    StreetAddress,
    /// A place: a city, region or country (Presidio's `GPE`, geopolitical entity).
    Location,
    Organization,
    /// A form of address or job title ("Mrs.", "Dr.", "Software Engineer").
    Title,
    Age,
    /// A nationality or a religious or political group (Presidio's `NRP`).
    Nrp,
    ZipCode,
}

impl Entity {
    /// Every entity, in declaration order.
    pub const ALL: [Entity; 19] = [
        Entity::Secret,
        Entity::Email,
        Entity::Url,
        Entity::Iban,
        Entity::NationalId,
        Entity::UsSsn,
        Entity::CreditCard,
        Entity::IpAddress,
        Entity::DateTime,
        Entity::UsDriverLicense,
        Entity::Phone,
        Entity::Person,
        Entity::StreetAddress,
        Entity::Location,
        Entity::Organization,
        Entity::Title,
        Entity::Age,
        Entity::Nrp,
        Entity::ZipCode,
    ];

    /// The entity's name as Presidio (and the presidio-synth-pii data set) spells it; `SECRET` and
    /// `EU_NATIONAL_ID` are keel's own.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Secret => "SECRET",
            Entity::Email => "EMAIL_ADDRESS",
            Entity::Url => "DOMAIN_NAME",
            Entity::Iban => "IBAN_CODE",
            Entity::NationalId => "EU_NATIONAL_ID",
            Entity::UsSsn => "US_SSN",
            Entity::CreditCard => "CREDIT_CARD",
            Entity::IpAddress => "IP_ADDRESS",
            Entity::DateTime => "DATE_TIME",
            Entity::UsDriverLicense => "US_DRIVER_LICENSE",
            Entity::Phone => "PHONE_NUMBER",
            Entity::Person => "PERSON",
            Entity::StreetAddress => "STREET_ADDRESS",
            Entity::Location => "GPE",
            Entity::Organization => "ORGANIZATION",
            Entity::Title => "TITLE",
            Entity::Age => "AGE",
            Entity::Nrp => "NRP",
            Entity::ZipCode => "ZIP_CODE",
        }
    }

    /// Which finding wins when two overlap (higher first): validated and specific kinds beat loose ones; a
    /// phone number, the loosest shape, loses to everything.
    pub fn priority(self) -> u8 {
        match self {
            Entity::Secret | Entity::Email => 9,
            Entity::Url | Entity::Iban => 8,
            Entity::NationalId | Entity::UsSsn | Entity::CreditCard => 7,
            Entity::IpAddress => 6,
            Entity::DateTime | Entity::UsDriverLicense => 5,
            Entity::Phone => 4,
            // The tagger's findings never meet the patterns' in `resolve_overlaps` (see `Detector::detect`).
            Entity::Person
            | Entity::StreetAddress
            | Entity::Location
            | Entity::Organization
            | Entity::Title
            | Entity::Age
            | Entity::Nrp
            | Entity::ZipCode => 3,
        }
    }

    /// Whether the named-entity tagger finds this type (or only it, for [`Entity::DateTime`] the patterns
    /// too); the others come from the pattern layer alone.
    pub fn is_tagged(self) -> bool {
        crate::ner::CLASSES.contains(&Some(self))
    }

    /// Whether a prompt bound for a third-party provider is redacted of this type unless the configuration
    /// says otherwise: personal data that points at a person (names, street addresses, contact details, ids,
    /// cards, secrets) is; what is everywhere in ordinary prompts and rarely identifies anyone alone (dates,
    /// places, organisations, titles, ages, nationalities, postal codes) is found but left alone.
    pub fn redacted_by_default(self) -> bool {
        !matches!(
            self,
            Entity::DateTime
                | Entity::Location
                | Entity::Organization
                | Entity::Title
                | Entity::Age
                | Entity::Nrp
                | Entity::ZipCode
        )
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Entity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One detected span: `start..end` are byte offsets into the detected text, on char boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
}

/// The PII detector: the pattern layer, compiled once, and the named-entity tagger ([`crate::ner`]).
/// [`Detector::detect`] takes `&self` and can be shared across threads.
#[derive(Debug)]
pub struct Detector {
    recognizers: Vec<Recognizer>,
    tagger: Tagger,
    /// Dates and times (`2021-03-04 10:22`, `04.03.2021`, `14:11:22`): a phone-number candidate that overlaps
    /// one is a timestamp, not a phone number.
    date_blocker: Regex,
    /// Words that announce a phone number, for national-format numbers shorter than 10 digits.
    phone_context: Regex,
}

/// How candidates are found.
#[derive(Debug)]
enum Matcher {
    Regex(Regex),
    /// A PEM private key: the BEGIN line, then the first END line within 8000 characters. Written as two
    /// regexes and code because `[\s\S]{0,8000}?` in one regex would unroll into a very large automaton.
    PrivateKey {
        begin: Regex,
        end: Regex,
    },
}

/// The longest rejected candidate (in bytes) that the search restarts inside of; a longer one is skipped.
const RESTART_SPAN: usize = 64;

/// How much of a PEM body (in characters) may lie between the BEGIN and END lines.
const PEM_MAX_BODY: usize = 8000;

/// What must appear in the lower-cased 48 characters before a candidate for it to be kept.
#[derive(Debug)]
enum Context {
    None,
    /// Any of these substrings.
    Contains(&'static [&'static str]),
    /// A match of this regex.
    Regex(Regex),
    /// A national-format phone number: kept with phone context before it; without, only when it has 10 or more
    /// digits and no word follows it ("17151 2450 Crown St" is a street address).
    PhoneNational,
}

/// The validator run on a candidate's text.
#[derive(Debug, Clone, Copy)]
enum Check {
    None,
    KeywordSecret,
    HighEntropySecret,
    HexSecret,
    Iban,
    CreditCard,
    UsSsn,
    UkNino,
    EsDni,
    ItCodiceFiscale,
    FrNir,
    SePersonnummer,
    FiHetu,
    BeNationalNumber,
    NlBsn,
    PlPesel,
    DeTaxId,
    Ipv4,
    Ipv6,
    Phone,
}

impl Check {
    fn ok(self, s: &str) -> bool {
        match self {
            Check::None => true,
            Check::KeywordSecret => keyword_secret_ok(s),
            Check::HighEntropySecret => high_entropy_secret_ok(s),
            Check::HexSecret => hex_secret_ok(s),
            Check::Iban => iban_ok(s),
            Check::CreditCard => card_ok(s),
            Check::UsSsn => ssn_ok(s),
            Check::UkNino => uk_nino_ok(s),
            Check::EsDni => es_dni_ok(s),
            Check::ItCodiceFiscale => it_cf_ok(s),
            Check::FrNir => fr_nir_ok(s),
            Check::SePersonnummer => se_pnr_ok(s),
            Check::FiHetu => fi_hetu_ok(s),
            Check::BeNationalNumber => be_nn_ok(s),
            Check::NlBsn => nl_bsn_ok(s),
            Check::PlPesel => pl_pesel_ok(s),
            Check::DeTaxId => de_taxid_ok(s),
            Check::Ipv4 => ipv4_ok(s),
            Check::Ipv6 => ipv6_ok(s),
            Check::Phone => phone_ok(s),
        }
    }
}

#[derive(Debug)]
struct Recognizer {
    entity: Entity,
    matcher: Matcher,
    check: Check,
    context: Context,
}

impl Matcher {
    /// The first candidate starting at or after byte `pos` (a char boundary), as `(start, end)`.
    fn find_at(&self, text: &str, pos: usize) -> Option<(usize, usize)> {
        match self {
            Matcher::Regex(re) => re.find_at(text, pos).map(|m| (m.start(), m.end())),
            Matcher::PrivateKey { begin, end } => {
                let mut at = pos;
                while at <= text.len() {
                    let b = begin.find_at(text, at)?;
                    // No END line after this BEGIN: none after a later one either.
                    let m = end.find_at(text, b.end())?;
                    let body = text.get(b.end()..m.start()).map_or(usize::MAX, |g| g.chars().count());
                    if body <= PEM_MAX_BODY {
                        return Some((b.start(), m.end()));
                    }
                    at = next_boundary(text, b.start());
                }
                None
            }
        }
    }
}

// ---------------------------------------------------------------- recognizers

/// Secrets with a known prefix: high precision, no validator needed.
const SECRET_PREFIXED: &[&str] = &[
    r"\bsk-(?:proj-|ant-(?:api\d\d-)?|live-)?[A-Za-z0-9_\-]{20,}", // OpenAI, Anthropic
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",          // AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{36,251}\b",                          // GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{60,}\b",                           // GitHub fine-grained tokens
    r"\bglpat-[A-Za-z0-9_\-]{20,}",                                // GitLab
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",                           // Slack
    r"\bxapp-\d-[A-Za-z0-9\-]{10,}",                               // Slack app-level tokens
    r"\bAIza[0-9A-Za-z_\-]{35}",                                   // Google API keys
    r"\b(?:sk|pk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",              // Stripe
    r"\bhf_[A-Za-z0-9]{30,}\b",                                    // Hugging Face
    r"\bnpm_[A-Za-z0-9]{36}\b",                                    // npm
    r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b",             // SendGrid
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", // JWTs
];

fn recognizers() -> Result<Vec<Recognizer>, regex::Error> {
    use Check as C;
    use Entity as E;

    fn rec(entity: Entity, pattern: &str, check: Check, context: Context) -> Result<Recognizer, regex::Error> {
        Ok(Recognizer { entity, matcher: Matcher::Regex(crate::ascii_regex(pattern)?), check, context })
    }
    fn ctx(pattern: &str) -> Result<Context, regex::Error> {
        Ok(Context::Regex(crate::ascii_regex(pattern)?))
    }

    let mut out = Vec::with_capacity(48);

    // -- Secrets. Known prefixes first; then PEM private keys; then `password = …` style assignments (the
    //    validator drops code such as `secret = self.secret`); then generic tokens, kept only when long, mixed
    //    (lower, upper, digits), not an identifier and of high Shannon entropy; then hex strings, which are
    //    mostly hashes and commit ids and so need a key word before them.
    for pattern in SECRET_PREFIXED {
        out.push(rec(E::Secret, pattern, C::None, Context::None)?);
    }
    out.push(Recognizer {
        entity: E::Secret,
        matcher: Matcher::PrivateKey {
            begin: Regex::new(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")?,
            end: Regex::new(r"-----END (?:[A-Z]+ )?PRIVATE KEY-----")?,
        },
        check: C::None,
        context: Context::None,
    });
    out.push(rec(
        E::Secret,
        r#"(?i)\b[\w-]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)[\w-]*\s*[:=]\s*["']?[^\s"'();,]{6,}"#,
        C::KeywordSecret,
        Context::None,
    )?);
    out.push(rec(E::Secret, r"\b[A-Za-z0-9+/_\-]{24,}={0,2}", C::HighEntropySecret, Context::None)?);
    out.push(rec(
        E::Secret,
        r"\b[0-9a-fA-F]{32,128}\b",
        C::HexSecret,
        Context::Contains(&["key", "token", "secret", "password", "bearer", "auth"]),
    )?);

    // -- E-mail addresses (the local part may hold any word character: `zoë@example.com`) and URLs.
    out.push(rec(
        E::Email,
        r"\b[\w.%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b",
        C::None,
        Context::None,
    )?);
    out.push(rec(E::Url, r#"\b(?:https?://|www\.)[^\s<>"'()]+[^\s<>"'().,;:!?]"#, C::None, Context::None)?);

    // -- Payment data and US ids, each with its checksum or issuing rules. A bare 9-digit SSN needs context.
    out.push(rec(
        E::Iban,
        r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b",
        C::Iban,
        Context::None,
    )?);
    out.push(rec(
        E::CreditCard,
        r"\b(?:\d{12,19}|\d{4}[ \-]\d{4}[ \-]\d{4}[ \-]\d{1,7}|\d{4}[ \-]\d{6}[ \-]\d{4,5})\b",
        C::CreditCard,
        Context::None,
    )?);
    out.push(rec(E::UsSsn, r"\b\d{3}[- ]\d{2}[- ]\d{4}\b", C::UsSsn, Context::None)?);
    out.push(rec(
        E::UsSsn,
        r"\b\d{9}\b",
        C::UsSsn,
        Context::Contains(&["ssn", "social security", "soc sec", "soc. sec"]),
    )?);

    // -- European national ids, each with its check digit or letter; the pure-digit ones need context.
    out.push(rec(E::NationalId, r"\b[A-Za-z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-Da-d]\b", C::UkNino, Context::None)?);
    out.push(rec(E::NationalId, r"\b(?:\d{8}|[XYZxyz]\d{7})-?[A-Za-z]\b", C::EsDni, Context::None)?);
    out.push(rec(
        E::NationalId,
        r"\b[A-Za-z]{6}\d{2}[A-EHLMPRSTa-ehlmprst]\d{2}[A-Za-z]\d{3}[A-Za-z]\b",
        C::ItCodiceFiscale,
        Context::None,
    )?);
    out.push(rec(
        E::NationalId,
        r"\b[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b",
        C::FrNir,
        Context::None,
    )?);
    out.push(rec(E::NationalId, r"\b\d{6}[-+]\d{4}\b", C::SePersonnummer, Context::None)?);
    out.push(rec(E::NationalId, r"\b\d{6}[-+A-FU-Ya-fu-y]\d{3}[0-9A-Ya-y]\b", C::FiHetu, Context::None)?);
    out.push(rec(E::NationalId, r"\b\d{2}\.\d{2}\.\d{2}-\d{3}\.\d{2}\b", C::BeNationalNumber, Context::None)?);
    out.push(rec(E::NationalId, r"\b\d{9}\b", C::NlBsn, Context::Contains(&["bsn", "burgerservice", "sofi"]))?);
    out.push(rec(E::NationalId, r"\b\d{11}\b", C::PlPesel, Context::Contains(&["pesel"]))?);
    out.push(rec(
        E::NationalId,
        r"\b\d{11}\b",
        C::DeTaxId,
        Context::Contains(&["steuer", "tax id", "identifikationsnummer", "idnr"]),
    )?);

    // -- IP addresses. The IPv4 regex over-matches `1.2.3.4.5` on purpose so that the parser rejects it
    //    whole; the IPv6 one matches any colon group and leaves the rest to the parser and extra checks.
    // Four parts only: a longer dotted run (`1.2.3.4.5`, a version) is refused by the guard on the characters
    // around the match, so every candidate stays short and a long run costs linear time, not quadratic.
    out.push(rec(E::IpAddress, r"\b(?:\d{1,3}\.){3}\d{1,3}\b", C::Ipv4, Context::None)?);
    out.push(rec(
        E::IpAddress,
        r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%[0-9A-Za-z]+)?",
        C::Ipv6,
        Context::None,
    )?);

    // -- Phone numbers: international (`+` or `00`) and national formats; the validator drops dates, SSN- and
    //    IPv4-shaped strings and bare digit runs.
    out.push(rec(
        E::Phone,
        r"(?:\+|\b00)\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{1,4}){1,5}\b",
        C::Phone,
        Context::None,
    )?);
    out.push(rec(
        E::Phone,
        r"(?:\(\d{1,4}\)[ .\-]?|\b)\d{2,5}(?:[ .\-/]\d{2,8}){1,4}\b",
        C::Phone,
        Context::PhoneNational,
    )?);

    // -- US driver's licences: no common shape, so only right after "driver's license".
    out.push(rec(
        E::UsDriverLicense,
        r"\b[A-Za-z]?\d[\d\-]{4,16}\d\b|\b[A-Za-z]\d{4,16}\b",
        C::None,
        ctx(r"(?:driver'?s?|driving)\W+licen[cs]e")?,
    )?);

    // -- Dates and times (Presidio's DATE_TIME): ISO, numeric, weekdays, a bare year after a preposition,
    //    month names.
    out.push(rec(
        E::DateTime,
        r"\b(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:[ T][0-2]\d:[0-5]\d(?::[0-5]\d)?)?\b",
        C::None,
        Context::None,
    )?);
    out.push(rec(
        E::DateTime,
        r"\b(?:0?[1-9]|[12]\d|3[01])[/.](?:0?[1-9]|1[0-2])[/.](?:19|20)?\d\d\b|\b(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d\d\b",
        C::None,
        Context::None,
    )?);
    out.push(rec(E::DateTime, r"(?i)\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b", C::None, Context::None)?);
    out.push(rec(
        E::DateTime,
        r"\b(?:19|20)\d\d\b",
        C::None,
        ctx(r"\b(?:in|during|since|of|year|born|from|until)\W+$")?,
    )?);
    out.push(rec(
        E::DateTime,
        r"(?i)\b(?:\d{1,2}(?:st|nd|rd|th)? )?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? (?:19|20)\d\d\b",
        C::None,
        Context::None,
    )?);

    Ok(out)
}

const DATE_BLOCKER: &str = concat!(
    r"\b(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?:[ T]\d{1,2}(?::\d\d){0,2}(?:\.\d+)?(?: ?[+-]\d\d(?::?\d\d)?)?)?",
    r"|\b\d{1,2}[/.]\d{1,2}[/.](?:19|20)\d\d(?: \d{1,2}:\d\d(?::\d\d)?(?:\.\d+)?)?",
    r"|\b\d{1,2}:\d\d(?::\d\d)?(?:\.\d+)?(?:[+-]\d\d(?::\d\d)?)?",
);

const PHONE_CONTEXT: &str = r"(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text me|messages|contact|reach me|number|nummer|numéro|ph\.?)\W";

/// How many characters before a candidate the context rules look at.
const CONTEXT_CHARS: usize = 48;

impl Detector {
    /// Compiles every recognizer. The patterns are constants, so an error here is a programming error (and
    /// the unit tests would fail); it is returned rather than panicking so callers decide.
    pub fn new() -> Result<Self, InitError> {
        Ok(Detector {
            recognizers: recognizers()?,
            tagger: Tagger::embedded()?,
            date_blocker: crate::ascii_regex(DATE_BLOCKER)?,
            phone_context: crate::ascii_regex(PHONE_CONTEXT)?,
        })
    }

    /// The pattern layer with another tagger than the committed one (to measure a tagger trained apart).
    pub fn with_tagger(tagger: Tagger) -> Result<Self, InitError> {
        Ok(Detector { tagger, ..Self::new()? })
    }

    /// All findings in `text`, without overlaps, sorted by start: the pattern layer's, then the tagger's
    /// where they overlap none of them (a validated card number or e-mail address is more certain than a
    /// tagged span around it).
    pub fn detect(&self, text: &str) -> Vec<Finding> {
        let mut found = self.detect_patterns(text);
        let patterns = found.len();
        for t in self.tagger.detect(text) {
            if found[..patterns].iter().all(|f| t.end <= f.start || t.start >= f.end) {
                found.push(Finding { entity: t.entity, start: t.start, end: t.end });
            }
        }
        found.sort_by_key(|f| (f.start, f.end));
        found
    }

    /// The pattern layer's findings alone, for callers whose policy asks for none of the tagged types (see
    /// [`Entity::is_tagged`]).
    pub fn detect_patterns(&self, text: &str) -> Vec<Finding> {
        let blockers: Vec<(usize, usize)> = self.date_blocker.find_iter(text).map(|m| (m.start(), m.end())).collect();
        let mut candidates = Vec::new();
        for rec in &self.recognizers {
            let mut pos = 0;
            // Find-all with restarts: a candidate that fails validation must not hide a valid one that starts
            // inside it, so the search resumes at the next character after the failed candidate's start.
            while pos <= text.len() {
                let Some((start, end)) = rec.matcher.find_at(text, pos) else { break };
                if end > start && self.accept(rec, text, start, end, &blockers) {
                    candidates.push(Finding { entity: rec.entity, start, end });
                    pos = end;
                } else if end - start > RESTART_SPAN {
                    // A long rejected candidate is skipped whole: restarting inside it at every character
                    // would make a hostile run of one shape cost quadratic time.
                    pos = end;
                } else {
                    pos = next_boundary(text, start);
                }
            }
        }
        resolve_overlaps(text, candidates)
    }

    /// Validator, then context, then guards.
    fn accept(&self, rec: &Recognizer, text: &str, start: usize, end: usize, blockers: &[(usize, usize)]) -> bool {
        let Some(token) = text.get(start..end) else { return false };
        if !rec.check.ok(token) {
            return false;
        }
        let context_ok = match &rec.context {
            Context::None => true,
            Context::Contains(words) => {
                let window = context_window(text, start);
                words.iter().any(|w| window.contains(w))
            }
            Context::Regex(re) => re.is_match(&context_window(text, start)),
            Context::PhoneNational => {
                self.phone_context.is_match(&context_window(text, start))
                    || (digits(token).len() >= 10 && !followed_by_word(text, end))
            }
        };
        context_ok && guard_ok(rec.entity, text, start, end, blockers)
    }
}

/// Keeps the best of overlapping candidates: priority, then length (in characters), then the earlier start;
/// the result is sorted by start.
fn resolve_overlaps(text: &str, mut candidates: Vec<Finding>) -> Vec<Finding> {
    let chars = |f: &Finding| text.get(f.start..f.end).map_or(0, |t| t.chars().count());
    // Stable: equal keys keep recognizer order.
    candidates.sort_by_cached_key(|f| (Reverse(f.entity.priority()), Reverse(chars(f)), f.start));
    let mut out: Vec<Finding> = Vec::with_capacity(candidates.len());
    for c in candidates {
        if out.iter().all(|o| c.end <= o.start || c.start >= o.end) {
            out.push(c);
        }
    }
    out.sort_by_key(|f| (f.start, f.end));
    out
}

// ---------------------------------------------------------------- text around a candidate

/// The byte offset of the char after the one starting at `at` (or `at + 1` at the end of the text).
fn next_boundary(text: &str, at: usize) -> usize {
    at + text.get(at..).and_then(|t| t.chars().next()).map_or(1, char::len_utf8)
}

fn before(text: &str, at: usize) -> &str {
    text.get(..at).unwrap_or_default()
}

fn after(text: &str, at: usize) -> &str {
    text.get(at..).unwrap_or_default()
}

/// The last `n` characters before byte `at`.
fn window_before(text: &str, at: usize, n: usize) -> &str {
    let head = before(text, at);
    let start = head.char_indices().rev().take(n).last().map_or(head.len(), |(i, _)| i);
    head.get(start..).unwrap_or_default()
}

/// The lower-cased context window before a candidate.
fn context_window(text: &str, at: usize) -> String {
    window_before(text, at, CONTEXT_CHARS).to_lowercase()
}

/// A word character as regex `\w` sees it (close enough: letters, digits, underscore).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn joins_left(c: char) -> bool {
    is_word(c) || matches!(c, '.' | '-' | '/' | '+' | ':' | '@')
}

fn joins_right(c: char) -> bool {
    is_word(c) || matches!(c, '-' | '/' | ':' | '@')
}

/// As [`joins_right`], but a `/` may follow an IP address (CIDR `/24`).
fn joins_right_ip(c: char) -> bool {
    is_word(c) || matches!(c, '-' | ':' | '@')
}

/// The candidate is part of a larger token: a version string, a file name, a path, a hex dump. A `.` after
/// it counts only when an alphanumeric follows (a sentence may end right after a number).
fn embedded(text: &str, start: usize, end: usize, joins_right: fn(char) -> bool) -> bool {
    if before(text, start).chars().next_back().is_some_and(joins_left) {
        return true;
    }
    let mut rest = after(text, end).chars();
    match rest.next() {
        Some('.') => rest.next().is_some_and(char::is_alphanumeric),
        Some(c) => joins_right(c),
        None => false,
    }
}

/// Hex-dump bytes (`4f 1a `) right before or after the candidate.
fn hexdump_neighbour(text: &str, start: usize, end: usize) -> bool {
    let prev: Vec<char> = before(text, start).chars().rev().take(3).collect();
    let left = matches!(prev.as_slice(), [' ', a, b] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit());
    let mut next = after(text, end).chars();
    let right = next.next() == Some(' ')
        && next.next().is_some_and(|c| c.is_ascii_hexdigit())
        && next.next().is_some_and(|c| c.is_ascii_hexdigit());
    left || right
}

/// One or two blanks and then a letter right after the candidate (`17151 2450 Crown St`).
fn followed_by_word(text: &str, end: usize) -> bool {
    let letter = |c: char| c.is_ascii_alphabetic() || ('À'..='ž').contains(&c);
    let next: Vec<char> = after(text, end).chars().take(3).collect();
    let blanks = next.iter().take_while(|&&c| c == ' ' || c == '\t').count();
    blanks > 0 && next.get(blanks).is_some_and(|&c| letter(c))
}

/// The whitespace-delimited word that contains the candidate.
fn enclosing_word(text: &str, start: usize, end: usize) -> &str {
    let from = before(text, start)
        .char_indices()
        .rev()
        .take_while(|(_, c)| !c.is_whitespace())
        .last()
        .map_or(start, |(i, _)| i);
    let tail = after(text, end);
    let to = end + tail.find(char::is_whitespace).unwrap_or(tail.len());
    text.get(from..to).unwrap_or_default()
}

/// `host.tld/` or `host.co.uk/` at the start of a word: a URL without a scheme.
fn starts_with_domain_path(word: &str) -> bool {
    let rest = word.trim_start_matches(|c: char| is_word(c) || c == '-');
    if rest.len() == word.len() {
        return false;
    }
    let Some(rest) = rest.strip_prefix('.') else { return false };
    let after_label = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    if rest.len() - after_label.len() < 2 {
        return false;
    }
    if after_label.starts_with('/') {
        return true;
    }
    let Some(rest) = after_label.strip_prefix('.') else { return false };
    let after_label = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    rest.len() - after_label.len() >= 2 && after_label.starts_with('/')
}

/// A subresource-integrity or key-pinning hash (`sha384-…`, `integrity="…`): public, not a secret.
fn after_hash_label(text: &str, start: usize) -> bool {
    let window = window_before(text, start, 16).to_lowercase();
    let window = window.strip_suffix('"').unwrap_or(&window);
    if window.ends_with("integrity=") {
        return true;
    }
    let Some(label) = window.strip_suffix(|c: char| matches!(c, '-' | '=' | ':')) else { return false };
    ["sha1", "sha224", "sha256", "sha384", "sha512"].iter().any(|h| label.ends_with(h))
}

/// Whether the candidate is (part of) a labelled hash: right after the label, or inside a token run that
/// starts with one (`'sha256-…'`) or follows one (`integrity="sha384-…`). The prototype looked only right
/// before the candidate, which missed candidates that start at the `-` of `sha384-` or inside the hash after a
/// rejected one (the search restarts inside it).
fn hash_labelled(text: &str, start: usize) -> bool {
    let run_start = before(text, start)
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(*c, '+' | '/' | '_' | '-'))
        .last()
        .map_or(start, |(i, _)| i);
    after_hash_label(text, start) || after_hash_label(text, run_start) || starts_with_hash_label(after(text, run_start))
}

/// `sha256-`, `sha384=`, `sha1:`, … at the start of `s`.
fn starts_with_hash_label(s: &str) -> bool {
    let head = s.chars().take(7).collect::<String>().to_ascii_lowercase();
    ["sha1", "sha224", "sha256", "sha384", "sha512"]
        .iter()
        .any(|h| head.strip_prefix(h).is_some_and(|rest| rest.starts_with(['-', '=', ':'])))
}

/// `section 1.2.3.4`, `RFC 1918`, `v1.2.3.4`, `OID 1.3.6.1`: a numbering, not an address.
fn after_numbering_label(text: &str, start: usize) -> bool {
    const LABELS: [&str; 7] = ["section", "chapter", "§", "rfc", "oid", "version", "v"];
    let window: Vec<char> = window_before(text, start, 12).chars().collect();
    for skip in 0..=2 {
        let Some(cut) = window.len().checked_sub(skip) else { break };
        let (head, tail) = window.split_at(cut);
        if tail.iter().any(|c| is_word(*c)) {
            break;
        }
        if LABELS.iter().any(|label| ends_with_ignore_case(head, label)) {
            return true;
        }
    }
    false
}

fn ends_with_ignore_case(head: &[char], suffix: &str) -> bool {
    let suffix: Vec<char> = suffix.chars().collect();
    let Some(from) = head.len().checked_sub(suffix.len()) else { return false };
    head.iter().skip(from).zip(&suffix).all(|(a, b)| a.to_lowercase().eq(b.to_lowercase()))
}

/// The checks on the surroundings that lookaround would do in another regex engine.
fn guard_ok(entity: Entity, text: &str, start: usize, end: usize, blockers: &[(usize, usize)]) -> bool {
    match entity {
        Entity::Phone | Entity::CreditCard | Entity::UsSsn | Entity::Iban | Entity::NationalId => {
            if embedded(text, start, end, joins_right) {
                return false;
            }
            if entity == Entity::Phone
                && (hexdump_neighbour(text, start, end) || blockers.iter().any(|&(a, b)| a < end && start < b))
            {
                return false;
            }
            true
        }
        Entity::IpAddress => {
            if embedded(text, start, end, joins_right_ip) {
                return false;
            }
            let token = text.get(start..end).unwrap_or_default();
            // Loopback and unspecified addresses are not personal data.
            if matches!(token, "0.0.0.0" | "::" | "::1" | "::0") || token.starts_with("127.") {
                return false;
            }
            !after_numbering_label(text, start)
        }
        Entity::Secret => {
            let word = enclosing_word(text, start, end);
            if word.contains("://") || word.starts_with("www.") || starts_with_domain_path(word) {
                return false; // part of a URL
            }
            !hash_labelled(text, start)
        }
        Entity::Email | Entity::Url | Entity::DateTime | Entity::UsDriverLicense => true,
        // Not pattern recognizers.
        Entity::Person
        | Entity::StreetAddress
        | Entity::Location
        | Entity::Organization
        | Entity::Title
        | Entity::Age
        | Entity::Nrp
        | Entity::ZipCode => true,
    }
}

// ---------------------------------------------------------------- validators

/// The ASCII digits of `s`, as values.
fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The number the digits spell (saturating; callers pass at most 13 digits).
fn number(ds: &[u32]) -> u64 {
    ds.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d)))
}

fn distinct_digits(ds: &[u32]) -> usize {
    let mut seen = [false; 10];
    for &d in ds {
        if let Some(s) = seen.get_mut(d as usize) {
            *s = true;
        }
    }
    seen.iter().filter(|&&s| s).count()
}

fn luhn_ok(ds: &[u32]) -> bool {
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry: SEPA and the common others).
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16), ("BG", 22), ("BH", 22),
    ("BR", 29), ("CH", 21), ("CR", 22), ("CY", 28), ("CZ", 24), ("DE", 22), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23), ("GL", 18),
    ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IS", 26), ("IT", 27), ("JO", 30),
    ("KW", 30), ("KZ", 20), ("LB", 28), ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21), ("MC", 27), ("MD", 24),
    ("ME", 22), ("MK", 19), ("MR", 27), ("MT", 31), ("MU", 30), ("NL", 18), ("NO", 15), ("PK", 24), ("PL", 28),
    ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("SA", 24), ("SE", 24), ("SI", 19), ("SK", 24),
    ("SM", 27), ("TN", 24), ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
];

/// Length for the country, then mod-97 over the rearranged string, computed digit by digit (no big integers).
fn iban_ok(s: &str) -> bool {
    let compact: Vec<char> =
        s.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect();
    let Some((head, tail)) = compact.split_at_checked(4) else { return false };
    let country: String = head.iter().take(2).collect();
    if IBAN_LENGTHS.iter().find(|(c, _)| *c == country).map(|&(_, len)| len) != Some(compact.len()) {
        return false;
    }
    let mut n: u32 = 0;
    for c in tail.iter().chain(head) {
        let Some(v) = c.to_digit(36) else { return false };
        let shift = if v > 9 { 100 } else { 10 };
        n = (n * shift + v) % 97;
    }
    n == 1
}

/// US SSN: no area 000, 666 or 9xx, no group 00, no serial 0000, not one repeated digit, not a famous
/// example number.
fn ssn_ok(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let area = number(&d[..3]);
    if area == 0 || area == 666 || d[0] == 9 || number(&d[3..5]) == 0 || number(&d[5..]) == 0 {
        return false;
    }
    if d.iter().all(|&x| x == d[0]) {
        return false;
    }
    !matches!(number(&d), 123_456_789 | 78_051_120 | 219_099_999)
}

/// Payment card: 12–19 digits, Luhn, not one repeated digit, and a plausible issuer: 2 (Mastercard),
/// 3 (Amex, JCB, Diners), 4 (Visa), 5 (Mastercard, Maestro), 6 (Discover, UnionPay, Maestro), 1800 (JCB).
fn card_ok(s: &str) -> bool {
    let d = digits(s);
    if !(12..=19).contains(&d.len()) || !luhn_ok(&d) || distinct_digits(&d) <= 1 {
        return false;
    }
    matches!(d[0], 2..=6) || d.starts_with(&[1, 8, 0, 0])
}

fn ipv4_ok(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

/// A valid IPv6 address (zone id allowed) that is not just a pair of short groups: `::`, `8::F`, `de::` and
/// times such as `14:11:22` are rejected.
fn ipv6_ok(s: &str) -> bool {
    if s.matches(':').count() < 2 {
        return false;
    }
    let addr = s.split('%').next().unwrap_or_default();
    let groups: Vec<&str> = addr.split(':').filter(|g| !g.is_empty()).collect();
    if groups.len() < 2 || groups.iter().map(|g| g.len()).max().unwrap_or(0) < 3 {
        return false;
    }
    addr.parse::<Ipv6Addr>().is_ok()
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return 0.0;
    }
    chars.sort_unstable();
    let n = chars.len() as f64;
    chars
        .chunk_by(|a, b| a == b)
        .map(|run| {
            let p = run.len() as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A generic token: 24+ characters with lower case, upper case and enough digits, not pure hex (hashes and
/// commit ids), no letter run longer than 16 (CamelCase and snake_case identifiers), entropy ≥ 4 bits.
fn high_entropy_secret_ok(s: &str) -> bool {
    let n = s.chars().count();
    if n < 24 {
        return false;
    }
    let n_digits = s.chars().filter(char::is_ascii_digit).count();
    if n_digits == 0 || s.chars().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) || !s.chars().any(|c| c.is_ascii_uppercase()) {
        return false;
    }
    if n_digits < (n / 20).max(2) {
        return false;
    }
    let longest_letters = s.split(|c: char| !c.is_ascii_alphabetic()).map(str::len).max().unwrap_or(0);
    longest_letters <= 16 && entropy(s) >= 4.0
}

/// `password = …`: an unquoted value made only of letters, `_`, `.` and `$` is code (`secret = secret`,
/// `x = obj.method`), not a secret.
fn keyword_secret_ok(s: &str) -> bool {
    let Some(i) = s.find([':', '=']) else { return false };
    let value = after(s, i + 1).trim_start();
    let quoted = value.starts_with(['"', '\'']);
    quoted || !value.chars().all(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '$'))
}

/// A hex string after a key word: long and not trivially repetitive.
fn hex_secret_ok(s: &str) -> bool {
    s.chars().count() >= 32 && entropy(s) >= 3.0
}

/// ES DNI (8 digits) or NIE (X/Y/Z + 7 digits): control letter = number mod 23.
fn es_dni_ok(s: &str) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let chars: Vec<char> = s.chars().filter(|c| !matches!(*c, '-' | ' ')).map(|c| c.to_ascii_uppercase()).collect();
    let Some((&control, body)) = chars.split_last() else { return false };
    if body.is_empty() {
        return false;
    }
    let mut n: u64 = 0;
    for (i, &c) in body.iter().enumerate() {
        let v = match (i, c) {
            (0, 'X') => 0,
            (0, 'Y') => 1,
            (0, 'Z') => 2,
            _ => match c.to_digit(10) {
                Some(v) => v,
                None => return false,
            },
        };
        n = n.saturating_mul(10).saturating_add(u64::from(v));
    }
    LETTERS.get((n % 23) as usize).is_some_and(|&l| char::from(l) == control)
}

/// Values of the characters in odd positions (1st, 3rd, …) of an Italian codice fiscale, for 0–9 then A–Z.
const CF_ODD: [u32; 36] = [
    1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10,
    22, 25, 24, 23,
];

/// IT codice fiscale: the 16th letter is the weighted sum of the first 15 mod 26.
fn it_cf_ok(s: &str) -> bool {
    let chars: Vec<char> = s.chars().map(|c| c.to_ascii_uppercase()).collect();
    let [body @ .., control] = chars.as_slice() else { return false };
    if body.len() != 15 {
        return false;
    }
    let mut total = 0u32;
    for (i, c) in body.iter().enumerate() {
        let Some(v) = c.to_digit(36) else { return false };
        total += if i % 2 == 0 {
            CF_ODD.get(v as usize).copied().unwrap_or(0)
        } else if c.is_ascii_digit() {
            v
        } else {
            v - 10
        };
    }
    char::from(b'A' + (total % 26) as u8) == *control
}

/// FR NIR (numéro de sécurité sociale): key = 97 − (first 13 digits mod 97); Corsica's 2A/2B count as 19/18.
fn fr_nir_ok(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
    let d = compact.replace("2A", "19").replace("2B", "18");
    if d.len() != 15 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let ds = digits(&d);
    97 - number(&ds[..13]) % 97 == number(&ds[13..])
}

/// UK NINO: no prefix that HMRC never issues, no O as second letter.
fn uk_nino_ok(s: &str) -> bool {
    let chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
    let [a, b, ..] = chars.as_slice() else { return false };
    let prefix: String = [*a, *b].iter().collect();
    !["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"].contains(&prefix.as_str()) && *b != 'O'
}

/// SE personnummer (YYMMDD-NNNC): Luhn over the 10 digits.
fn se_pnr_ok(s: &str) -> bool {
    let d = digits(s);
    d.len() == 10 && luhn_ok(&d)
}

/// FI HETU (DDMMYY, century sign, NNN, control): control = the 9 digits mod 31 in a fixed alphabet.
fn fi_hetu_ok(s: &str) -> bool {
    const CONTROL: &[u8; 31] = b"0123456789ABCDEFHJKLMNPRSTUVWXY";
    let chars: Vec<char> = s.chars().map(|c| c.to_ascii_uppercase()).collect();
    if chars.len() != 11 {
        return false;
    }
    let mut n: u64 = 0;
    for c in chars[..6].iter().chain(&chars[7..10]) {
        let Some(v) = c.to_digit(10) else { return false };
        n = n * 10 + u64::from(v);
    }
    CONTROL.get((n % 31) as usize).is_some_and(|&b| char::from(b) == chars[10])
}

/// BE national number (YY.MM.DD-NNN.CC): CC = 97 − (first 9 digits mod 97), with a 2 in front for people
/// born from 2000.
fn be_nn_ok(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 {
        return false;
    }
    let base = number(&d[..9]);
    let check = number(&d[9..]);
    97 - base % 97 == check || 97 - (2_000_000_000 + base) % 97 == check
}

/// NL BSN: the "elfproef", weights 9..2 and −1.
fn nl_bsn_ok(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let weighted: i64 =
        d[..8].iter().zip((2..=9i64).rev()).map(|(&x, w)| i64::from(x) * w).sum::<i64>() - i64::from(d[8]);
    weighted != 0 && weighted.rem_euclid(11) == 0
}

/// PL PESEL: weights 1-3-7-9, the 11th digit completes the sum to a multiple of 10.
fn pl_pesel_ok(s: &str) -> bool {
    const WEIGHTS: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
    let d = digits(s);
    if d.len() != 11 {
        return false;
    }
    let sum: u32 = d.iter().zip(WEIGHTS).map(|(&x, w)| x * w).sum();
    (10 - sum % 10) % 10 == d[10]
}

/// DE Steuer-IdNr: ISO 7064 MOD 11,10 over the first 10 digits; no leading zero.
fn de_taxid_ok(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 || d[0] == 0 {
        return false;
    }
    let mut p = 10u32;
    for &x in &d[..10] {
        let t = match (x + p) % 10 {
            0 => 10,
            t => t,
        };
        p = (2 * t) % 11;
    }
    (11 - p) % 10 == d[10]
}

/// `\d{3}-\d{2}-\d{4}`, the SSN shape.
fn ssn_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11 && b.iter().enumerate().all(|(i, &x)| if i == 3 || i == 6 { x == b'-' } else { x.is_ascii_digit() })
}

/// `\d{1,3}(\.\d{1,3}){3}` anywhere in `s`: an IPv4 shape.
fn contains_dotted_quad(s: &str) -> bool {
    let short_run = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = s.split('.').collect();
    parts.windows(4).any(|w| {
        w[0].ends_with(|c: char| c.is_ascii_digit())
            && short_run(w[1])
            && short_run(w[2])
            && w[3].starts_with(|c: char| c.is_ascii_digit())
    })
}

/// A numeric date, year first (`2021-03-04`) or day first (`04.03.2021`, `4/3/21`).
fn looks_like_date(s: &str) -> bool {
    fn century_year(p: &str) -> bool {
        p.len() == 4 && (p.starts_with("19") || p.starts_with("20"))
    }
    fn month(p: &str) -> bool {
        matches!(p.as_bytes(), [b'1'..=b'9'] | [b'0', b'1'..=b'9'] | [b'1', b'0'..=b'2'])
    }
    fn day(p: &str) -> bool {
        matches!(p.as_bytes(), [b'1'..=b'9'] | [b'0', b'1'..=b'9'] | [b'1' | b'2', b'0'..=b'9'] | [b'3', b'0' | b'1'])
    }
    let parts: Vec<&str> = s.split(['-', '.', '/']).collect();
    let [a, b, c] = parts.as_slice() else { return false };
    if !parts.iter().all(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit())) {
        return false;
    }
    (century_year(a) && month(b) && day(c)) || (day(a) && month(b) && (c.len() == 2 || century_year(c)))
}

/// A phone number: at least 3 different digits, not SSN- or IPv4-shaped. International (`+`, `00`): 8–15
/// digits, or 11–15 without separators (`+2147483647` is an integer). National: 7–13 digits, with a
/// separator, not a date.
fn phone_ok(s: &str) -> bool {
    let d = digits(s);
    if distinct_digits(&d) < 3 || ssn_shaped(s) || contains_dotted_quad(s) {
        return false;
    }
    if s.starts_with('+') || s.starts_with("00") {
        let separated = s.chars().any(|c| c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')'));
        return if separated { (8..=15).contains(&d.len()) } else { (11..=15).contains(&d.len()) };
    }
    if !(7..=13).contains(&d.len()) || looks_like_date(s) {
        return false;
    }
    s.chars().any(|c| c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')' | '/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn detector() -> Detector {
        Detector::new().unwrap()
    }

    fn kinds(d: &Detector, text: &str) -> Vec<(String, Entity)> {
        d.detect_patterns(text).iter().map(|f| (text[f.start..f.end].to_string(), f.entity)).collect()
    }

    #[test]
    fn the_tagger_adds_what_no_pattern_found_and_never_overlaps_a_pattern() {
        let d = detector();
        let text = "Please ship it to Joanna Kowalski, 1432 Maple Avenue, and mail joanna.k@example.com.";
        let all = d.detect(text);
        let patterns = d.detect_patterns(text);
        assert!(patterns.iter().all(|p| all.contains(p)), "{all:?}");
        assert!(all.iter().any(|f| f.entity == Entity::Person), "{all:?}");
        for f in all.iter().filter(|f| f.entity.is_tagged()) {
            assert!(patterns.iter().all(|p| f.end <= p.start || f.start >= p.end), "{f:?} overlaps {patterns:?}");
        }
        assert!(all.windows(2).all(|w| w[0].start <= w[1].start), "sorted: {all:?}");
    }

    #[test]
    fn luhn() {
        assert!(luhn_ok(&digits("4539148803436467")));
        assert!(!luhn_ok(&digits("4539148803436468")));
        assert!(luhn_ok(&digits("79927398713")));
    }

    #[test]
    fn iban() {
        assert!(iban_ok("DE89370400440532013000"));
        assert!(iban_ok("GB82WEST12345698765432"));
        assert!(iban_ok("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_ok("fr1420041010050500013m02606"));
        assert!(!iban_ok("DE89370400440532013001")); // checksum
        assert!(!iban_ok("DE8937040044053201300")); // length for DE
        assert!(!iban_ok("QQ89370400440532013000")); // unknown country
        assert!(!iban_ok("DE8"));
    }

    #[test]
    fn ssn() {
        assert!(ssn_ok("123-45-6780"));
        assert!(ssn_ok("123 45 6780"));
        for bad in ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "111-11-1111"] {
            assert!(!ssn_ok(bad), "{bad}");
        }
        for bad in ["123-45-6789", "078-05-1120", "219-09-9999", "12-345-678"] {
            assert!(!ssn_ok(bad), "{bad}");
        }
    }

    #[test]
    fn card() {
        assert!(card_ok("4539 1488 0343 6467"));
        assert!(card_ok("5500-0000-0000-0004"));
        assert!(card_ok("180000000000002"));
        // The test numbers everyone types are still card numbers (two distinct digits).
        assert!(card_ok("4111 1111 1111 1111"));
        assert!(!card_ok("0000000000000000")); // one digit
        assert!(!card_ok("7992739871300002")); // Luhn-valid, no issuer starts with 7
        assert!(!card_ok("4539148803436468")); // Luhn
        assert!(!card_ok("79927398713")); // too short
    }

    #[test]
    fn ip() {
        assert!(ipv4_ok("192.168.10.254"));
        assert!(!ipv4_ok("999.1.1.1"));
        assert!(!ipv4_ok("1.2.3.4.5"));
        assert!(!ipv4_ok("01.2.3.4"));
        assert!(ipv6_ok("2001:db8:85a3::8a2e:370:7334"));
        assert!(ipv6_ok("fe80::1%eth0"));
        for bad in ["14:11:22", "::", "8::F", "de::", "12345::abcd", "abc:"] {
            assert!(!ipv6_ok(bad), "{bad}");
        }
    }

    #[test]
    fn secrets() {
        assert!(entropy("aaaa").abs() < 1e-9);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(high_entropy_secret_ok("8f3Kq9ZpLw2Xv7RtYb5NcM1sDh4Jg6Ae"));
        assert!(!high_entropy_secret_ok("ThisIsAVeryLongCamelCaseIdentifierName"));
        assert!(!high_entropy_secret_ok("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"));
        assert!(!high_entropy_secret_ok("short1Aa"));
        assert!(keyword_secret_ok("password=hunter22"));
        assert!(keyword_secret_ok("password: \"abcdef\""));
        assert!(!keyword_secret_ok("secret = secretValue"));
        assert!(!keyword_secret_ok("api_key = self.api_key"));
        assert!(hex_secret_ok("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"));
        assert!(!hex_secret_ok("00000000000000000000000000000000"));
    }

    #[test]
    fn national_ids() {
        assert!(es_dni_ok("12345678Z"));
        assert!(es_dni_ok("12345678-z"));
        assert!(es_dni_ok("X1234567L"));
        assert!(!es_dni_ok("12345678A"));
        assert!(it_cf_ok("RSSMRA85T10A562S"));
        assert!(!it_cf_ok("RSSMRA85T10A562T"));
        assert!(fr_nir_ok("2 84 12 76 451 089 93"));
        assert!(fr_nir_ok("1 85 05 2A 123 456 33"));
        assert!(!fr_nir_ok("2 84 12 76 451 089 94"));
        assert!(uk_nino_ok("AB123456C"));
        assert!(!uk_nino_ok("BG123456C"));
        assert!(!uk_nino_ok("AO123456C"));
        assert!(se_pnr_ok("811218-9876"));
        assert!(!se_pnr_ok("811218-9875"));
        assert!(fi_hetu_ok("131052-308T"));
        assert!(!fi_hetu_ok("131052-308U"));
        assert!(be_nn_ok("85.07.30-033.28"));
        assert!(be_nn_ok("00.01.01-001.05")); // born in 2000
        assert!(!be_nn_ok("85.07.30-033.29"));
        assert!(nl_bsn_ok("111222333"));
        assert!(!nl_bsn_ok("111222334"));
        assert!(!nl_bsn_ok("000000000"));
        assert!(pl_pesel_ok("44051401359"));
        assert!(!pl_pesel_ok("44051401358"));
        assert!(de_taxid_ok("86095742719"));
        assert!(!de_taxid_ok("86095742718"));
        assert!(!de_taxid_ok("06095742719"));
    }

    #[test]
    fn phones_and_dates() {
        assert!(phone_ok("+44 20 7946 0958"));
        assert!(phone_ok("+21474836470"));
        assert!(phone_ok("(555) 123-4567"));
        assert!(phone_ok("555 123 4567"));
        for bad in ["+2147483647", "123-45-6789", "2021-03-04", "04.03.2021", "1234567", "192.168.1.1", "111 111 1111"]
        {
            assert!(!phone_ok(bad), "{bad}");
        }
        assert!(looks_like_date("2021-03-04"));
        assert!(looks_like_date("04.03.2021"));
        assert!(looks_like_date("4/3/21"));
        assert!(!looks_like_date("12/31/2021"));
        assert!(!looks_like_date("555-123-4567"));
        assert!(ssn_shaped("123-45-6789"));
        assert!(!ssn_shaped("123-456-789"));
        assert!(contains_dotted_quad("call 10.0.0.12"));
        assert!(!contains_dotted_quad("1.2.3"));
    }

    #[test]
    fn surroundings() {
        assert!(starts_with_domain_path("example.com/abc"));
        assert!(starts_with_domain_path("bbc.co.uk/x"));
        assert!(!starts_with_domain_path("example.c/abc"));
        assert!(!starts_with_domain_path("abc=def"));
        assert!(after_hash_label("integrity=\"sha384-", 18));
        assert!(hash_labelled("integrity=\"sha384-oqVuAfXRKap7fdgc", 17)); // at the `-`
        assert!(hash_labelled("'sha256-oqVuAfXRKap7fdgc+R9GqQ8K", 24)); // inside, at the `+`
        assert!(!hash_labelled("token oqVuAfXRKap7fdgc", 6));
        assert!(starts_with_hash_label("SHA256-abc"));
        assert!(!starts_with_hash_label("sha256abc"));
        assert!(after_numbering_label("see RFC 1918", 8));
        assert!(!after_numbering_label("host ", 5));
        assert_eq!(window_before("aé€b", 6, 1), "€");
        assert_eq!(window_before("aé€b", 6, 2), "é€");
        assert_eq!(window_before("aé€b", 6, 48), "aé€");
        assert_eq!(window_before("aé€b", 0, 48), "");
        assert_eq!(enclosing_word("x http://a.b/c y", 9, 12), "http://a.b/c");
        assert_eq!(next_boundary("é", 0), 2);
        assert!(followed_by_word("12 Crown", 2));
        assert!(!followed_by_word("12 34", 2));
        assert!(followed_by_word("12 \tÉvry", 2));
        assert!(!followed_by_word("12   X", 2));
        assert!(!followed_by_word("12X", 2));
    }

    const SELFTEST_POS: &[(Entity, &str)] = &[
        (Entity::IpAddress, "server at 192.168.10.254 is down"),
        (Entity::IpAddress, "ping 2001:db8:85a3::8a2e:370:7334 now"),
        (Entity::IpAddress, "link-local fe80::1%eth0 here"),
        (Entity::IpAddress, "iface fe80::1ff:fe23:4567:890a up"),
        (Entity::Secret, "key sk-proj-abcDEF1234567890ghijKLMNopqr"),
        (Entity::Secret, "AKIAIOSFODNN7EXAMPLE"),
        (Entity::Secret, "token ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        (Entity::Secret, "xoxb-123456789012-abcdefABCDEF"),
        (Entity::Secret, "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
        (Entity::Secret, "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        (Entity::Secret, "aws_secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        (Entity::Secret, "tok 8f3Kq9ZpLw2Xv7RtYb5NcM1sDh4Jg6Ae"),
        (
            Entity::Secret,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        (
            Entity::Secret,
            "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX\n-----END RSA PRIVATE KEY-----",
        ),
        (Entity::NationalId, "NINO AB123456C"),
        (Entity::NationalId, "DNI 12345678Z"),
        (Entity::NationalId, "NIE X1234567L"),
        (Entity::NationalId, "CF RSSMRA85T10A562S"),
        (Entity::NationalId, "NIR 2 84 12 76 451 089 93"),
        (Entity::NationalId, "personnummer 811218-9876"),
        (Entity::NationalId, "HETU 131052-308T"),
        (Entity::NationalId, "mijn BSN is 111222333"),
        (Entity::NationalId, "PESEL 44051401359"),
        (Entity::Phone, "call +44 20 7946 0958"),
        (Entity::Phone, "tel +1 (415) 555-2671"),
        (Entity::Phone, "+49 30 901820"),
        (Entity::Phone, "mobile 0033 6 12 34 56 78"),
        (Entity::Phone, "phone: (555) 123-4567"),
        (Entity::Iban, "DE89 3704 0044 0532 0130 00"),
        (Entity::Iban, "FR1420041010050500013M02606"),
        (Entity::CreditCard, "4539 1488 0343 6467"),
        (Entity::CreditCard, "5500-0000-0000-0004"),
        (Entity::UsSsn, "ssn 123-45-6780"),
        (Entity::Email, "mail a.b+c@ex-ample.co.uk"),
    ];

    const SELFTEST_NEG: &[&str] = &[
        "version 1.2.3.4.5 and 999.1.1.1",
        "the time is 14:11:22",
        "sha a94a8fe5ccb19ba61c4c0873d391e987982fbbd3 commit",
        "function_name_with_many_words_inside_it",
        "ThisIsAVeryLongCamelCaseIdentifierName",
        "/usr/local/lib/python3.11/site-packages",
        "ISBN 978-3-16-148410-0",
        "order 1234567",
        "in 2019-2020 we",
        "room 12 34",
        "pg_stat_statements_reset",
        "https://example.com/some/path",
        "ab123456cx",
        "dated 2021-03-04",
        "000-12-3456",
        "loopback 127.0.0.1 and ::1",
        "see section 10.1.2.3",
        "<script integrity=\"sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC\">",
        "script-src 'sha256-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1w='",
        "pin-sha256:oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC",
    ];

    #[test]
    fn selftest_positives() {
        let d = detector();
        for (entity, text) in SELFTEST_POS {
            let found = kinds(&d, text);
            assert!(found.iter().any(|(_, e)| e == entity), "missed {entity} in {text:?}: {found:?}");
        }
    }

    #[test]
    fn selftest_negatives() {
        let d = detector();
        let watched =
            [Entity::Secret, Entity::IpAddress, Entity::Phone, Entity::NationalId, Entity::CreditCard, Entity::UsSsn];
        for text in SELFTEST_NEG {
            let found: Vec<_> = kinds(&d, text).into_iter().filter(|(_, e)| watched.contains(e)).collect();
            assert!(found.is_empty(), "false positive in {text:?}: {found:?}");
        }
    }

    #[test]
    fn context_gated() {
        let d = detector();
        assert!(kinds(&d, "order 111222333").is_empty());
        assert_eq!(kinds(&d, "SSN: 123456780"), vec![("123456780".to_string(), Entity::UsSsn)]);
        assert_eq!(kinds(&d, "driver's license D1234567"), vec![("D1234567".to_string(), Entity::UsDriverLicense)]);
        assert_eq!(kinds(&d, "born in 1984"), vec![("1984".to_string(), Entity::DateTime)]);
        // A national number without context needs 10 digits and no word after it.
        assert!(kinds(&d, "at 17151 2450 Crown St").iter().all(|(_, e)| *e != Entity::Phone));
        assert_eq!(kinds(&d, "fax 030 901820"), vec![("030 901820".to_string(), Entity::Phone)]);
    }

    #[test]
    fn overlaps_resolved_by_priority() {
        let d = detector();
        // The URL contains a token that would otherwise be a secret; the URL wins and the secret is guarded.
        let text = "see https://example.com/a/8f3Kq9ZpLw2Xv7RtYb5NcM1sDh4Jg6Ae ok";
        assert_eq!(
            kinds(&d, text),
            vec![("https://example.com/a/8f3Kq9ZpLw2Xv7RtYb5NcM1sDh4Jg6Ae".to_string(), Entity::Url)]
        );
        let findings = d.detect("a@b.io and +44 20 7946 0958");
        assert!(findings.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn multibyte_offsets() {
        let d = detector();
        let text = "Zoë’s mail: zoë@example.com, tel +44 20 7946 0958 — ünïcödé";
        let findings = d.detect(text);
        for f in &findings {
            assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "{f:?}");
        }
        assert_eq!(
            kinds(&d, text),
            vec![("zoë@example.com".to_string(), Entity::Email), ("+44 20 7946 0958".to_string(), Entity::Phone),]
        );
        // A failed candidate right after multi-byte characters restarts on a char boundary.
        let text = "ééé 4539148803436468 ëëë 4539 1488 0343 6467 ü";
        assert_eq!(kinds(&d, text), vec![("4539 1488 0343 6467".to_string(), Entity::CreditCard)]);
        assert!(d.detect("").is_empty());
        assert!(d.detect("ü").is_empty());
    }

    #[test]
    fn entity_names() {
        assert_eq!(Entity::Url.as_str(), "DOMAIN_NAME");
        assert_eq!(Entity::Phone.to_string(), "PHONE_NUMBER");
        assert!(Entity::Secret.priority() > Entity::Phone.priority());
        assert_eq!(Entity::ALL.len(), 19);
        assert_eq!(Entity::parse("person"), Some(Entity::Person));
        assert!(Entity::Person.is_tagged() && Entity::DateTime.is_tagged() && !Entity::Email.is_tagged());
        assert!(!Entity::Location.redacted_by_default() && Entity::Email.redacted_by_default());
    }
}
