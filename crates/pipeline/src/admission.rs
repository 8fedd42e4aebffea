//! Admission control: at most N requests in flight, a short bounded queue behind them, and an immediate refusal
//! beyond it. [`Limiter`] is the one mechanism; the server applies one to the whole instance before a request
//! is read, and [`RouteLimitLayer`] one per model alias after the route is known, so that a stalled upstream
//! holds at most its alias's share of the instance.
//!
//! A slot is held until the answer is complete: for a stream, until its last chunk (or until it is dropped).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::{GatewayError, GatewayRequest, GatewayResponse, Output, RouteTable};

/// When a refused client may try again: about the time a slot takes to free up on a busy gateway.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a limiter has decided so far.
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Admitted at once.
    pub admitted: AtomicU64,
    /// Admitted after waiting in the queue.
    pub queued: AtomicU64,
    /// Refused: queue full, or no slot within the wait.
    pub refused: AtomicU64,
}

/// At most `max_in_flight` holders of a slot; up to `queue` more wait at most `wait` for one, in arrival order;
/// anyone else is refused at once.
#[derive(Debug)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    wait: Duration,
    capacity: usize,
    stats: LimiterStats,
}

/// A slot, held while the request (and its stream) is in flight.
#[derive(Debug)]
pub struct InFlight(#[allow(dead_code)] OwnedSemaphorePermit);

/// No slot: the queue was full or the wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl Limiter {
    pub fn new(max_in_flight: usize, queue: usize, wait: Duration) -> Self {
        let capacity = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            queue: Arc::new(Semaphore::new(queue.min(Semaphore::MAX_PERMITS))),
            wait,
            capacity,
            stats: LimiterStats::default(),
        }
    }

    /// A slot now, or after waiting in the queue, or a refusal. Waiters are served in arrival order (tokio's
    /// semaphore is fair, and a request that finds no free slot never takes one from a waiter).
    pub async fn admit(&self) -> Result<InFlight, Refused> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            self.stats.admitted.fetch_add(1, Ordering::Relaxed);
            return Ok(InFlight(p));
        }
        let Ok(place) = self.queue.clone().try_acquire_owned() else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused);
        };
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        drop(place);
        match slot {
            Ok(Ok(p)) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(InFlight(p))
            }
            _ => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(Refused)
            }
        }
    }

    /// Slots taken now.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &LimiterStats {
        &self.stats
    }
}

/// A stream that holds a slot until it ends or is dropped.
pub struct Holding<S> {
    inner: S,
    slot: Option<InFlight>,
}

impl<S> Holding<S> {
    pub fn new(inner: S, slot: InFlight) -> Self {
        Self { inner, slot: Some(slot) }
    }
}

impl<S: Stream + Unpin> Stream for Holding<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let item = futures::ready!(Pin::new(&mut self.inner).poll_next(cx));
        if item.is_none() {
            self.slot = None;
        }
        Poll::Ready(item)
    }
}

/// The per-alias limiters, built once from the route table.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    by_alias: Arc<HashMap<String, Arc<Limiter>>>,
}

impl RouteLimits {
    /// One limiter per alias: its own `max_in_flight`, else `default_in_flight`; each with `queue` waiting
    /// places and `wait`.
    pub fn new(
        routes: &RouteTable,
        limit_of: impl Fn(&str) -> Option<usize>,
        default_in_flight: usize,
        queue: usize,
        wait: Duration,
    ) -> Self {
        Self::default().carry(routes, limit_of, default_in_flight, queue, wait)
    }

    pub fn get(&self, alias: &str) -> Option<&Arc<Limiter>> {
        self.by_alias.get(alias)
    }

    /// The limiters of a reloaded configuration: an alias whose limit is unchanged keeps its limiter, so the
    /// requests it holds still count against the new configuration; a new alias or a changed limit gets a new
    /// one (requests admitted under the old limit finish under it).
    pub fn carry(
        &self,
        routes: &RouteTable,
        limit_of: impl Fn(&str) -> Option<usize>,
        default_in_flight: usize,
        queue: usize,
        wait: Duration,
    ) -> Self {
        let by_alias = routes
            .plan_names()
            .into_iter()
            .map(|alias| {
                let n = limit_of(&alias).unwrap_or(default_in_flight).clamp(1, Semaphore::MAX_PERMITS);
                let limiter = match self.by_alias.get(&alias) {
                    Some(l) if l.capacity() == n => l.clone(),
                    _ => Arc::new(Limiter::new(n, queue, wait)),
                };
                (alias, limiter)
            })
            .collect();
        Self { by_alias: Arc::new(by_alias) }
    }

    /// Every alias's limiter, sorted by alias (for the metrics).
    pub fn all(&self) -> Vec<(&str, &Arc<Limiter>)> {
        let mut v: Vec<_> = self.by_alias.iter().map(|(a, l)| (a.as_str(), l)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }
}

/// The per-alias admission stage, after route (it needs the alias) and before the cache.
#[derive(Debug, Clone)]
pub struct RouteLimitLayer {
    limits: RouteLimits,
}

impl RouteLimitLayer {
    pub fn new(limits: RouteLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for RouteLimitLayer {
    type Service = RouteLimit<S>;

    fn layer(&self, inner: S) -> RouteLimit<S> {
        RouteLimit { limits: self.limits.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct RouteLimit<S> {
    limits: RouteLimits,
    inner: S,
}

impl<S> Service<GatewayRequest> for RouteLimit<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = req.ctx.route.as_ref().and_then(|p| self.limits.get(&p.alias)).cloned();
        let Some(limiter) = limiter else { return inner.call(req).boxed() };
        async move {
            let slot = match limiter.admit().await {
                Ok(slot) => slot,
                Err(Refused) => {
                    let alias = req.ctx.route.as_ref().map(|p| p.alias.clone()).unwrap_or_default();
                    let error = GatewayError::Overloaded { alias: Some(alias), retry_after: RETRY_AFTER };
                    return Ok(GatewayResponse { ctx: req.ctx, result: Err(error) });
                }
            };
            let mut resp = inner.call(req).await?;
            if let Ok(Output::ChatStream(s)) = resp.result {
                resp.result = Ok(Output::ChatStream(Box::pin(Holding::new(s, slot))));
            }
            Ok(resp)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_then_a_bounded_queue_then_refusal() {
        let l = Arc::new(Limiter::new(2, 1, Duration::from_millis(500)));
        let a = l.admit().await.unwrap();
        let _b = l.admit().await.unwrap();
        assert_eq!(l.in_flight(), 2);
        // The third waits in the queue; a fourth finds the queue full and is refused at once.
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.admit().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(l.admit().await.unwrap_err(), Refused);
        // A slot frees up within the wait: the queued request gets it.
        drop(a);
        let _c = waiting.await.unwrap().unwrap();
        assert_eq!(l.stats().queued.load(Ordering::Relaxed), 1);
        // Nobody frees a slot: the wait runs out (paused time advances on its own).
        assert_eq!(l.admit().await.unwrap_err(), Refused);
        assert_eq!(l.stats().refused.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_stream_holds_its_slot_until_it_ends() {
        let l = Limiter::new(1, 0, Duration::ZERO);
        let slot = l.admit().await.unwrap();
        let mut s = Holding::new(futures::stream::iter([1, 2]), slot);
        assert_eq!(l.in_flight(), 1);
        use futures::StreamExt;
        assert_eq!(s.next().await, Some(1));
        assert_eq!(l.in_flight(), 1);
        assert_eq!(s.next().await, Some(2));
        assert_eq!(s.next().await, None);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_reload_keeps_the_limiter_of_an_alias_whose_limit_did_not_change() {
        let routes = |text: &str| {
            let cfg = keel_config::parse(text, &std::collections::HashMap::<String, String>::new()).unwrap();
            RouteTable::build(cfg.models.values(), cfg.routers.values(), None).unwrap()
        };
        let base = "[providers.p]\nkind = \"vllm\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
        let old_table =
            routes(&format!("{base}[models.a]\nprovider = \"p\"\n[models.b]\nprovider = \"p\"\nmax_in_flight = 4\n"));
        let limit = |n: Option<usize>| move |alias: &str| if alias == "b" { n } else { None };
        let old = RouteLimits::new(&old_table, limit(Some(4)), 8, 1, Duration::from_secs(1));
        let held = old.get("a").unwrap().clone();
        let new_table = routes(&format!(
            "{base}[models.a]\nprovider = \"p\"\n[models.b]\nprovider = \"p\"\n[models.c]\nprovider = \"p\"\n"
        ));
        let new = old.carry(&new_table, limit(Some(2)), 8, 1, Duration::from_secs(1));
        assert!(Arc::ptr_eq(new.get("a").unwrap(), &held), "a's slots still count the requests it holds");
        assert_eq!(new.get("b").unwrap().capacity(), 2, "b's new limit applies");
        assert!(new.get("c").is_some());
    }
}
