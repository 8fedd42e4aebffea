//! When to try the same target again: exponential backoff with full jitter, and the vendor's `Retry-After`.

use std::time::Duration;

use keel_config::ReliabilityPolicy;
use rand::Rng;

/// The wait before retry number `retry` (1 for the first retry): a random time in `[0, min(max, base·2^(retry-1))]`
/// ("full jitter", so that many clients that failed together do not retry together), but never shorter than the
/// vendor's `Retry-After`. `None` when the vendor asks for longer than the policy allows: the caller moves on to
/// the next target rather than hammering or waiting.
pub(crate) fn delay(policy: &ReliabilityPolicy, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let exp = policy.backoff_base.saturating_mul(1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX));
    let ceiling = exp.min(policy.backoff_max);
    let jitter = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=1.0) * ceiling.as_secs_f64());
    match retry_after {
        Some(after) if after > policy.retry_after_cap => None,
        Some(after) => Some(jitter.max(after)),
        None => Some(jitter),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let p = ReliabilityPolicy::default(); // base 100 ms, max 5 s
        for retry in 1..=10 {
            let ceiling = (p.backoff_base * 2u32.pow(retry - 1)).min(p.backoff_max);
            for _ in 0..200 {
                assert!(delay(&p, retry, None).unwrap() <= ceiling);
            }
        }
        // Jitter spreads: 200 draws are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| delay(&p, 3, None).unwrap()).collect();
        assert!(draws.len() > 100);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = ReliabilityPolicy::default(); // cap 10 s
        assert!(delay(&p, 1, Some(Duration::from_secs(2))).unwrap() >= Duration::from_secs(2));
        assert_eq!(delay(&p, 1, Some(Duration::from_secs(11))), None);
    }
}
