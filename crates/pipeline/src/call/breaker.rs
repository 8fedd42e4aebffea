//! A circuit breaker per upstream target: it opens on consecutive failures or on an error rate over a sliding
//! window, sends traffic elsewhere while open, lets one probe through after a cool-down, and closes when the
//! probe succeeds.
//!
//! Several instances share their circuits' state, not their counts: an instance whose own counts open a
//! circuit (or whose probe closes one) reports the [`Transition`] on the queue [`Breakers::share`] returns,
//! the binary publishes it, and every other instance [`Breakers::apply`]s it, so a failing target is avoided
//! everywhere once one instance has seen enough of it. Applying one is never reported again (no echo).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Its target as transitions name it, and where they go once sharing is on.
    target: String,
    share: Arc<Share>,
}

/// A change of a circuit's state that other instances should apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The target, as `/admin/circuits` names it.
    pub target: String,
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Opened, for this much longer (a duration, not a time: instances' clocks need not agree).
    Opened { for_ms: u64 },
    /// A probe succeeded: the target is healthy again.
    Closed,
}

/// Where transitions go: nowhere until [`Breakers::share`]; a full queue drops one (counted). It also knows
/// every breaker alive, those of configuration versions made by later reloads included, so that another
/// instance's transition reaches them all.
#[derive(Debug, Default)]
struct Share {
    tx: OnceLock<tokio::sync::mpsc::Sender<Transition>>,
    dropped: AtomicU64,
    live: Mutex<Vec<std::sync::Weak<Breaker>>>,
}

impl Share {
    fn send(&self, target: &str, change: Change) {
        let Some(tx) = self.tx.get() else { return };
        if tx.try_send(Transition { target: target.to_string(), change }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
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
    #[cfg(test)]
    fn new(policy: CircuitPolicy) -> Self {
        Self::shared(policy, String::new(), Arc::default())
    }

    fn shared(policy: CircuitPolicy, target: String, share: Arc<Share>) -> Self {
        let inner = Inner { state: State::Closed, consecutive_failures: 0, buckets: Default::default(), opened: 0 };
        Self { policy, inner: Mutex::new(inner), target, share }
    }

    /// Another instance's transition: open until the same moment (unless already open for longer), or close.
    fn apply(&self, change: Change) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let now = Instant::now();
        match change {
            Change::Opened { for_ms } => {
                let until = now + Duration::from_millis(for_ms);
                match inner.state {
                    State::Open { until: mine } if mine >= until => {}
                    State::Open { .. } => inner.state = State::Open { until },
                    State::Closed | State::HalfOpen { .. } => {
                        inner.state = State::Open { until };
                        inner.opened += 1;
                    }
                }
            }
            Change::Closed => {
                if !matches!(inner.state, State::Closed) {
                    inner.state = State::Closed;
                    inner.buckets = Default::default();
                    inner.consecutive_failures = 0;
                }
            }
        }
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
                self.share.send(&self.target, Change::Closed);
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
        let for_ms = u64::try_from(self.policy.open_for.as_millis()).unwrap_or(u64::MAX);
        self.share.send(&self.target, Change::Opened { for_ms });
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
    share: Arc<Share>,
}

/// Transitions waiting to be published, at most; past that one is dropped (counted: [`Breakers::unshared`]).
const SHARE_QUEUE: usize = 1024;

impl Breakers {
    pub fn new(targets: impl IntoIterator<Item = (ModelTarget, CircuitPolicy)>) -> Self {
        Self::default().carry(targets)
    }

    /// Turns sharing on: from now on, every transition this instance's own counts or probes cause comes out of
    /// the returned queue (bounded). `None` when sharing is already on.
    pub fn share(&self) -> Option<tokio::sync::mpsc::Receiver<Transition>> {
        let (tx, rx) = tokio::sync::mpsc::channel(SHARE_QUEUE);
        self.share.tx.set(tx).ok().map(|()| rx)
    }

    /// Applies another instance's transition to the breakers of the same target (in every configuration
    /// version alive), if this instance has any.
    pub fn apply(&self, transition: &Transition) {
        for b in self.live() {
            if b.target == transition.target {
                b.apply(transition.change);
            }
        }
    }

    /// The targets of every breaker alive (every version's), each once.
    pub fn targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = self.live().iter().map(|b| b.target.clone()).collect();
        targets.sort();
        targets.dedup();
        targets
    }

    fn live(&self) -> Vec<Arc<Breaker>> {
        let Ok(mut live) = self.share.live.lock() else { return Vec::new() };
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    /// Transitions not shared because the queue was full.
    pub fn unshared(&self) -> u64 {
        self.share.dropped.load(Ordering::Relaxed)
    }

    /// The breakers of a reloaded configuration: a target that was already there with the same policy keeps
    /// its breaker (an open circuit stays open across a reload); new targets, or changed policies, start closed.
    pub fn carry(&self, targets: impl IntoIterator<Item = (ModelTarget, CircuitPolicy)>) -> Self {
        let mut map = HashMap::new();
        for (target, policy) in targets {
            let kept = self.map.get(&target).filter(|b| b.policy == policy).cloned();
            let fresh = || {
                let b = Arc::new(Breaker::shared(policy, target.to_string(), self.share.clone()));
                if let Ok(mut live) = self.share.live.lock() {
                    live.retain(|w| w.strong_count() > 0);
                    live.push(Arc::downgrade(&b));
                }
                b
            };
            let breaker = kept.unwrap_or_else(fresh);
            map.entry(target).or_insert(breaker);
        }
        Self { map: Arc::new(map), share: self.share.clone() }
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

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_opens_or_closes_a_circuit_tells_the_others_which_do_not_echo() {
        let target = ModelTarget { provider: "p".into(), model: "m".into(), deployment: None, supports_prefill: false };
        let here = Breakers::new([(target.clone(), policy())]);
        let there = Breakers::new([(target.clone(), policy())]);
        let mut out = here.share().expect("sharing turns on once");
        assert!(here.share().is_none());
        let mut theirs = there.share().unwrap();
        for _ in 0..3 {
            here.get(&target).unwrap().acquire().unwrap().record(false);
        }
        let opened = out.try_recv().expect("the opening is reported");
        assert_eq!(opened, Transition { target: target.to_string(), change: Change::Opened { for_ms: 50 } });
        assert!(there.get(&target).unwrap().acquire().is_some(), "closed there until told");
        there.apply(&opened);
        assert!(there.get(&target).unwrap().acquire().is_none(), "open there too");
        assert_eq!(there.states()[0].state, "open");
        assert!(theirs.try_recv().is_err(), "an applied transition is not reported again");
        there.apply(&Transition { target: "other/target".into(), change: Change::Closed });
        assert!(there.get(&target).unwrap().acquire().is_none(), "another target's transition changes nothing");
        tokio::time::advance(Duration::from_millis(60)).await;
        here.get(&target).unwrap().acquire().expect("a probe").record(true);
        let closed = out.try_recv().expect("the closing is reported");
        assert_eq!(closed.change, Change::Closed);
        assert_eq!(there.states()[0].state, "open");
        there.apply(&closed);
        assert_eq!(there.states()[0].state, "closed", "closed there once a probe succeeded here");
        assert!(theirs.try_recv().is_err());
    }
}
