//! A circuit breaker per upstream target: it opens on consecutive failures or on an error rate over a sliding
//! window, sends traffic elsewhere while open, lets one probe through after a cool-down, and closes when the
//! probe succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the same as std's at run time, and one that tests can pause and advance.
use tokio::time::Instant;

use keel_config::{CircuitPolicy, ModelTarget};
use serde::Serialize;

/// The window is kept as this many buckets, so memory does not grow with the request rate.
const BUCKETS: u32 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: Option<Instant>,
    total: u32,
    failures: u32,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    buckets: [Bucket; BUCKETS as usize],
    opened: u64,
}

#[derive(Debug)]
pub struct Breaker {
    policy: CircuitPolicy,
    inner: Mutex<Inner>,
}

/// Leave to send one request. Dropped without [`Permit::record`] (the caller went away), it gives a probe slot back.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    recorded: bool,
}

impl Permit {
    pub(crate) fn record(mut self, healthy: bool) {
        self.recorded = true;
        self.breaker.record(healthy);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded
            && let Ok(mut inner) = self.breaker.inner.lock()
            && let State::HalfOpen { probing } = &mut inner.state
        {
            *probing = false;
        }
    }
}

impl Breaker {
    pub fn new(policy: CircuitPolicy) -> Self {
        let inner = Inner { state: State::Closed, consecutive_failures: 0, buckets: Default::default(), opened: 0 };
        Self { policy, inner: Mutex::new(inner) }
    }

    /// Asks to send a request. `None` while open (or while a probe is already out).
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.inner.lock().ok()?;
        let allowed = match inner.state {
            State::Closed => true,
            State::Open { until } if Instant::now() >= until => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
        };
        allowed.then(|| Permit { breaker: self.clone(), recorded: false })
    }

    /// While open, how long until a probe may go.
    pub(crate) fn probe_in(&self) -> Option<Duration> {
        match self.inner.lock().ok()?.state {
            State::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }

    /// Reports the health of a target outside a permit: a stream that failed after its start was counted healthy.
    pub(crate) fn report(&self, healthy: bool) {
        self.record(healthy);
    }

    fn record(&self, healthy: bool) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let now = Instant::now();
        let bucket_len = self.policy.window / BUCKETS;
        let index = bucket_index(now, bucket_len);
        let bucket = &mut inner.buckets[index];
        if bucket.start.is_none_or(|s| now.duration_since(s) >= bucket_len) {
            *bucket = Bucket { start: Some(now), total: 0, failures: 0 };
        }
        bucket.total += 1;
        bucket.failures += u32::from(!healthy);
        inner.consecutive_failures = if healthy { 0 } else { inner.consecutive_failures + 1 };
        match inner.state {
            State::HalfOpen { .. } if healthy => {
                inner.state = State::Closed;
                inner.buckets = Default::default();
            }
            State::HalfOpen { .. } => self.open(&mut inner, now),
            State::Closed if !healthy => {
                let (total, failures) = window(&inner.buckets, now, self.policy.window);
                let rate_tripped = total >= self.policy.min_requests.max(1)
                    && f64::from(failures) / f64::from(total) >= self.policy.error_rate;
                if inner.consecutive_failures >= self.policy.consecutive_failures || rate_tripped {
                    self.open(&mut inner, now);
                }
            }
            State::Closed | State::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open { until: now + self.policy.open_for };
        inner.opened += 1;
    }

    fn snapshot(&self, target: &ModelTarget) -> CircuitState {
        let now = Instant::now();
        let Ok(inner) = self.inner.lock() else {
            return CircuitState { target: target.to_string(), ..CircuitState::default() };
        };
        let (total, failures) = window(&inner.buckets, now, self.policy.window);
        let (state, retry_in_ms) = match inner.state {
            State::Closed => ("closed", None),
            State::Open { until } => ("open", Some(until.saturating_duration_since(now).as_millis() as u64)),
            State::HalfOpen { .. } => ("half_open", None),
        };
        CircuitState {
            target: target.to_string(),
            state,
            consecutive_failures: inner.consecutive_failures,
            window_requests: total,
            window_failures: failures,
            times_opened: inner.opened,
            probe_in_ms: retry_in_ms,
        }
    }
}

fn bucket_index(now: Instant, bucket_len: Duration) -> usize {
    // Buckets rotate on a clock shared by all breakers; any fixed origin works.
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let n = now.duration_since(origin).as_nanos() / bucket_len.as_nanos().max(1);
    (n % u128::from(BUCKETS)) as usize
}

fn window(buckets: &[Bucket], now: Instant, window: Duration) -> (u32, u32) {
    buckets
        .iter()
        .filter(|b| b.start.is_some_and(|s| now.duration_since(s) < window))
        .fold((0, 0), |(t, f), b| (t + b.total, f + b.failures))
}

/// What the admin endpoint shows of one breaker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CircuitState {
    pub target: String,
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    pub times_opened: u64,
    /// While open: how long until a probe is let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_in_ms: Option<u64>,
}

/// Every target's breaker, made once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    map: Arc<HashMap<ModelTarget, Arc<Breaker>>>,
}

impl Breakers {
    pub fn new(targets: impl IntoIterator<Item = (ModelTarget, CircuitPolicy)>) -> Self {
        let mut map = HashMap::new();
        for (target, policy) in targets {
            map.entry(target).or_insert_with(|| Arc::new(Breaker::new(policy)));
        }
        Self { map: Arc::new(map) }
    }

    /// The breakers of a reloaded configuration: a target that was already there with the same policy keeps
    /// its breaker (an open circuit stays open across a reload); new targets, or changed policies, start closed.
    pub fn carry(&self, targets: impl IntoIterator<Item = (ModelTarget, CircuitPolicy)>) -> Self {
        let mut map = HashMap::new();
        for (target, policy) in targets {
            let kept = self.map.get(&target).filter(|b| b.policy == policy).cloned();
            map.entry(target).or_insert_with(|| kept.unwrap_or_else(|| Arc::new(Breaker::new(policy))));
        }
        Self { map: Arc::new(map) }
    }

    pub(crate) fn get(&self, target: &ModelTarget) -> Option<&Arc<Breaker>> {
        self.map.get(target)
    }

    /// The state of every breaker, sorted by target.
    pub fn states(&self) -> Vec<CircuitState> {
        let mut out: Vec<_> = self.map.iter().map(|(t, b)| b.snapshot(t)).collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            consecutive_failures: 3,
            error_rate: 0.5,
            window: Duration::from_secs(60),
            min_requests: 10,
            open_for: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_probes_and_closes() {
        let b = Arc::new(Breaker::new(policy()));
        for _ in 0..3 {
            b.acquire().unwrap().record(false);
        }
        assert!(b.acquire().is_none(), "open after three failures");
        tokio::time::advance(Duration::from_millis(60)).await;
        let probe = b.acquire().expect("a probe after the cool-down");
        assert!(b.acquire().is_none(), "only one probe at a time");
        probe.record(true);
        assert!(b.acquire().is_some(), "closed after a good probe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_a_dropped_one_frees_the_slot() {
        let b = Arc::new(Breaker::new(policy()));
        for _ in 0..3 {
            b.acquire().unwrap().record(false);
        }
        tokio::time::advance(Duration::from_millis(60)).await;
        b.acquire().unwrap().record(false);
        assert!(b.acquire().is_none(), "open again after a failed probe");
        tokio::time::advance(Duration::from_millis(60)).await;
        drop(b.acquire().unwrap());
        assert!(b.acquire().is_some(), "a probe whose caller went away does not block the next one");
    }

    #[test]
    fn opens_on_error_rate_without_a_run_of_failures() {
        let b = Arc::new(Breaker::new(policy()));
        for i in 0..20 {
            let Some(p) = b.acquire() else { break };
            p.record(i % 2 == 0);
        }
        assert!(b.acquire().is_none(), "half of 20 requests failed");
        let s = b.snapshot(&ModelTarget {
            provider: "p".into(),
            model: "m".into(),
            deployment: None,
            supports_prefill: false,
        });
        assert_eq!((s.state, s.times_opened), ("open", 1));
    }

    #[test]
    fn a_reload_keeps_an_open_circuit_open_and_starts_new_or_changed_ones_closed() {
        let target =
            |m: &str| ModelTarget { provider: "p".into(), model: m.into(), deployment: None, supports_prefill: false };
        let old = Breakers::new([(target("a"), policy()), (target("b"), policy())]);
        for _ in 0..3 {
            old.get(&target("a")).unwrap().acquire().unwrap().record(false);
        }
        let changed = CircuitPolicy { consecutive_failures: 9, ..policy() };
        let new = old.carry([(target("a"), policy()), (target("b"), changed), (target("c"), policy())]);
        assert!(new.get(&target("a")).unwrap().acquire().is_none(), "a's circuit is still open");
        assert!(Arc::ptr_eq(new.get(&target("a")).unwrap(), old.get(&target("a")).unwrap()));
        assert!(!Arc::ptr_eq(new.get(&target("b")).unwrap(), old.get(&target("b")).unwrap()), "b's policy changed");
        assert!(new.get(&target("c")).unwrap().acquire().is_some());
    }
}
