//! Reliability policy: retries, timeouts, fallback rules and the circuit breaker, resolved per model alias.

use std::time::Duration;

use crate::raw::{RawCircuit, RawReliability};
use crate::resolve::Errors;

/// How the call stage treats one model alias.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityPolicy {
    /// Attempts per target, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Exponential backoff with full jitter: the n-th retry waits a random time in `[0, min(max, base·2ⁿ)]`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The most time one request may spend waiting between retries, over all targets.
    pub retry_budget: Duration,
    /// A `Retry-After` longer than this is not waited for: the request falls over to the next target instead.
    pub retry_after_cap: Duration,
    /// Streams: the time from sending the request to the first chunk.
    pub first_token_timeout: Duration,
    /// Streams: the longest gap between two chunks.
    pub idle_timeout: Duration,
    /// The whole request, every attempt and wait included.
    pub total_timeout: Duration,
    pub on_stream_failure: StreamFailure,
    /// Error classes after which the next target in the chain is tried.
    pub fallback_on: Vec<ErrorClass>,
    /// How often an answer that violates the JSON schema is sent back for repair.
    pub max_repairs: u32,
    pub circuit: CircuitPolicy,
}

/// What happens when a stream fails after part of the answer reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// End the stream with an explicit error event.
    Error,
    /// Continue on the next target that can continue a partial answer; error when none can.
    Continue,
}

/// Classes of failure the fallback rules name. The provider's error kinds map onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    RateLimited,
    Server,
    Connect,
    Timeout,
    Auth,
    NotFound,
    InvalidRequest,
    Protocol,
    StreamIncomplete,
    Unsupported,
    ContentFilter,
}

impl ErrorClass {
    const ALL: [(&'static str, ErrorClass); 11] = [
        ("rate_limited", ErrorClass::RateLimited),
        ("server", ErrorClass::Server),
        ("connect", ErrorClass::Connect),
        ("timeout", ErrorClass::Timeout),
        ("auth", ErrorClass::Auth),
        ("not_found", ErrorClass::NotFound),
        ("invalid_request", ErrorClass::InvalidRequest),
        ("protocol", ErrorClass::Protocol),
        ("stream_incomplete", ErrorClass::StreamIncomplete),
        ("unsupported", ErrorClass::Unsupported),
        ("content_filter", ErrorClass::ContentFilter),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, c)| *c == self).map_or("server", |(n, _)| n)
    }
}

/// When a target's circuit opens, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitPolicy {
    /// Opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when this share of the requests in the window failed…
    pub error_rate: f64,
    pub window: Duration,
    /// …and the window holds at least this many requests.
    pub min_requests: u32,
    /// How long it stays open before one probe request is let through.
    pub open_for: Duration,
}

impl Default for ReliabilityPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retry_budget: Duration::from_secs(15),
            retry_after_cap: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            on_stream_failure: StreamFailure::Error,
            fallback_on: vec![
                ErrorClass::RateLimited,
                ErrorClass::Server,
                ErrorClass::Connect,
                ErrorClass::Timeout,
                ErrorClass::Auth,
                ErrorClass::NotFound,
                ErrorClass::Protocol,
                ErrorClass::StreamIncomplete,
                ErrorClass::Unsupported,
            ],
            max_repairs: 1,
            circuit: CircuitPolicy {
                consecutive_failures: 5,
                error_rate: 0.5,
                window: Duration::from_secs(30),
                min_requests: 20,
                open_for: Duration::from_secs(30),
            },
        }
    }
}

/// Applies the keys written in `raw` over `base`, reporting bad values under `path`.
pub(crate) fn overlay(
    base: &ReliabilityPolicy,
    raw: &RawReliability,
    path: &str,
    errors: &mut Errors,
) -> ReliabilityPolicy {
    let mut p = base.clone();
    let ms = |v: Option<u64>, key: &str, cur: Duration, errors: &mut Errors| match v {
        Some(0) => {
            errors.push(format!("{path}.{key}"), "must be greater than 0");
            cur
        }
        Some(n) => Duration::from_millis(n),
        None => cur,
    };
    if let Some(n) = raw.max_attempts {
        if n == 0 {
            errors.push(format!("{path}.max_attempts"), "must be at least 1 (1 means no retry)");
        } else {
            p.max_attempts = n;
        }
    }
    p.backoff_base = ms(raw.backoff_base_ms, "backoff_base_ms", p.backoff_base, errors);
    p.backoff_max = ms(raw.backoff_max_ms, "backoff_max_ms", p.backoff_max, errors);
    if let Some(n) = raw.retry_budget_ms {
        p.retry_budget = Duration::from_millis(n);
    }
    if let Some(n) = raw.retry_after_cap_ms {
        p.retry_after_cap = Duration::from_millis(n);
    }
    p.first_token_timeout = ms(raw.first_token_timeout_ms, "first_token_timeout_ms", p.first_token_timeout, errors);
    p.idle_timeout = ms(raw.idle_timeout_ms, "idle_timeout_ms", p.idle_timeout, errors);
    p.total_timeout = ms(raw.total_timeout_ms, "total_timeout_ms", p.total_timeout, errors);
    match raw.on_stream_failure.as_deref() {
        None => {}
        Some("error") => p.on_stream_failure = StreamFailure::Error,
        Some("continue") => p.on_stream_failure = StreamFailure::Continue,
        Some(other) => errors.push(
            format!("{path}.on_stream_failure"),
            format!("unknown policy {other:?} (expected \"error\" or \"continue\")"),
        ),
    }
    if let Some(list) = &raw.fallback_on {
        let mut classes = Vec::new();
        for name in list {
            match ErrorClass::parse(name) {
                Some(c) => classes.push(c),
                None => {
                    let known: Vec<_> = ErrorClass::ALL.iter().map(|(n, _)| *n).collect();
                    errors.push(
                        format!("{path}.fallback_on"),
                        format!("unknown error class {name:?} (expected one of: {})", known.join(", ")),
                    );
                }
            }
        }
        p.fallback_on = classes;
    }
    if let Some(n) = raw.max_repairs {
        p.max_repairs = n;
    }
    p.circuit = overlay_circuit(&p.circuit, &raw.circuit, &format!("{path}.circuit"), errors);
    p
}

fn overlay_circuit(base: &CircuitPolicy, raw: &RawCircuit, path: &str, errors: &mut Errors) -> CircuitPolicy {
    let mut c = base.clone();
    if let Some(n) = raw.consecutive_failures {
        if n == 0 {
            errors.push(format!("{path}.consecutive_failures"), "must be at least 1");
        } else {
            c.consecutive_failures = n;
        }
    }
    if let Some(r) = raw.error_rate {
        if !(r > 0.0 && r <= 1.0) {
            errors.push(format!("{path}.error_rate"), "must be in (0, 1]");
        } else {
            c.error_rate = r;
        }
    }
    if let Some(n) = raw.window_ms {
        c.window = Duration::from_millis(n.max(1));
    }
    if let Some(n) = raw.min_requests {
        c.min_requests = n;
    }
    if let Some(n) = raw.open_ms {
        c.open_for = Duration::from_millis(n.max(1));
    }
    c
}
