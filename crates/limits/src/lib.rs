//! Virtual keys and what they may spend: key secrets and their verification (`keys.rs`), and budgets and rate
//! limits kept exact under concurrency (`counters.rs`): a request reserves its worst-case cost before it is
//! sent and settles its real cost when it ends, atomically, in-process or in Redis (shared by several keel
//! instances).
//!
//! Money is counted in integer nano-dollars: sums of many small costs must not drift, and Redis counts in
//! integers.

mod counters;
mod keys;
mod period;
mod revoke;

pub use counters::{Admission, Counters, Limit, LocalCounters, RedisCounters, Reservation};
pub use keys::{Keys, NewKey, generate_secret, hash_secret};
pub use period::Periods;
pub use revoke::{Listener, Revocations};

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("{0}")]
    Store(#[from] keel_store::StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A thread panicked while holding the in-process counters (a bug); they can no longer be trusted.
    #[error("the in-process budget counters are unusable after an internal error")]
    Poisoned,
}

/// US dollars to nano-dollars, rounded up: a budget check never under-counts.
pub fn to_nano(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    let n = (usd * 1e9).ceil();
    if n >= i64::MAX as f64 { i64::MAX } else { n as i64 }
}

pub fn from_nano(n: i64) -> f64 {
    n as f64 / 1e9
}
