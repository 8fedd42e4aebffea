//! keel's in-process guardrails (issue 14): checks that run inside the gateway, in microseconds to
//! milliseconds, with no remote service or Python sidecar in the request path.
//!
//! This first part is the PII *pattern layer* ([`pii`]): regexes find candidates for personal data and
//! secrets with a fixed shape (e-mail addresses, phone numbers, payment cards, IBANs, national ids, IP
//! addresses, API keys and high-entropy tokens, URLs, dates), and hand-written validators and guards decide
//! which candidates are real (checksums, issuer and area rules, context words, the characters around the
//! match). Redaction, policies and the other guards build on it.

pub mod pii;

pub use pii::{Detector, Entity, Finding};
