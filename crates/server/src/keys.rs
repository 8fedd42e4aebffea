//! The key stages: what a caller's virtual key allows. [`AccessLayer`] refuses a model the key may not use,
//! before the alias is even looked up (so a key cannot probe which aliases exist); [`LimitsLayer`], once the
//! route is known, checks the key's rate limits and budgets and reserves the request's worst-case cost on the
//! route's dearest target. The reservation travels in the request's context and is settled with the real cost
//! when the log stage ends the request (off the request path, through [`Settler`]'s bounded queue).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::{BoxFuture, Either, Ready};
use keel_limits::{Admission, Counters, Reservation};
use keel_pipeline::cost::{self, Prices};
use keel_pipeline::{
    Denial, GatewayError, GatewayRequest, GatewayResponse, Operation, Principal, RequestContext, Settle,
};
use tower::{Layer, Service};

// ------------------------------------------------------------------------------------------------ access

/// A key names only the models it may use.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AccessLayer;

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Access<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Access<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<GatewayResponse, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        match &req.ctx.principal {
            Some(Principal::Key(key)) if !key.models.is_empty() && !key.models.iter().any(|m| m == req.op.model()) => {
                let denial = Denial::ModelNotAllowed { model: req.op.model().to_string(), allowed: key.models.clone() };
                let resp = GatewayResponse { ctx: req.ctx, result: Err(GatewayError::from(denial)) };
                Either::Right(futures::future::ready(Ok(resp)))
            }
            _ => Either::Left(self.inner.call(req)),
        }
    }
}

// ------------------------------------------------------------------------------------------------ limits

/// Rate limits and budgets of the caller's key, with the reservation they take.
#[derive(Clone)]
pub(crate) struct LimitsLayer {
    auth: Arc<crate::Auth>,
}

impl LimitsLayer {
    pub(crate) fn new(auth: Arc<crate::Auth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits { auth: self.auth.clone(), inner }
    }
}

#[derive(Clone)]
pub(crate) struct Limits<S> {
    auth: Arc<crate::Auth>,
    inner: S,
}

impl<S> Service<GatewayRequest> for Limits<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<GatewayResponse, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let Some(Principal::Key(key)) = req.ctx.principal.clone() else { return Either::Left(self.inner.call(req)) };
        let auth = self.auth.clone();
        // The clone that was driven to readiness serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(
            async move {
                match admit(&auth, &key, &req.ctx, &mut req.op).await {
                    Ok(reservation) => {
                        if let Some(reservation) = reservation {
                            req.ctx.settlement.set(Box::new(Reserved { reservation, settler: auth.settler.clone() }));
                        }
                        inner.call(req).await
                    }
                    Err(denial) => Ok(GatewayResponse { ctx: req.ctx, result: Err(GatewayError::from(denial)) }),
                }
            }
            .boxed(),
        )
    }
}

/// Whether a keyed request may go on: its rate limits and budgets have room. On success, the request's
/// worst-case cost is reserved (see `keel_limits`). For a budgeted key, what was reserved is also what the
/// upstream may produce: a chat request without a token limit gets the reserved one
/// (`auth.default_output_tokens`), and the reservation counts every choice (`n`), so a budget is never exceeded
/// by more than one request's estimate.
async fn admit(
    auth: &crate::Auth,
    key: &keel_store::KeyRecord,
    ctx: &RequestContext,
    op: &mut Operation,
) -> Result<Option<Reservation>, Denial> {
    let budgeted = key.budget_daily_usd.is_some() || key.budget_monthly_usd.is_some();
    let output = match op {
        Operation::Chat(chat) => {
            let choices =
                u64::try_from(chat.extra.get("n").and_then(serde_json::Value::as_i64).unwrap_or(1).max(1)).unwrap_or(1);
            let per_choice = chat.max_output_tokens().unwrap_or(auth.default_output_tokens);
            if budgeted && chat.max_output_tokens().is_none() {
                // Reserved is what may come: the upstream is capped at it.
                Arc::make_mut(chat).max_completion_tokens = Some(auth.default_output_tokens);
            }
            u64::from(per_choice).saturating_mul(choices)
        }
        Operation::Embeddings(_) => 0,
    };
    let prices = auth.prices.load();
    let cost_of = |input: u64| match (&ctx.route, budgeted) {
        (Some(plan), true) => plan_worst_case(plan, &prices, input, output),
        _ => 0.0,
    };
    // Budgets reserve with the cheap upper bound of the prompt's tokens first; only a refusal is re-checked
    // with the exact count (tokenizing every request would cost more than the rest of admission).
    let bound = cost_of(ctx.prompt.upper_bound());
    let now = keel_store::now_ms();
    let mut decision = auth.counters.admit(key, bound, now).await;
    if let Ok(Admission::Denied { limit, .. }) = &decision
        && limit.is_budget()
    {
        let model = ctx.route.as_ref().and_then(|p| p.targets.first()).map_or(op.model(), |t| t.model.as_str());
        let exact = cost_of(ctx.prompt.tokens(model));
        if exact < bound {
            decision = auth.counters.admit(key, exact, now).await;
        }
    }
    match decision {
        Ok(Admission::Admitted(reservation)) => Ok(Some(reservation)),
        Ok(Admission::Denied { limit, reason, retry_after }) if limit.is_budget() => {
            Err(Denial::BudgetExceeded { reason, retry_after })
        }
        Ok(Admission::Denied { reason, retry_after, .. }) => Err(Denial::RateLimited { reason, retry_after }),
        Err(e) => {
            let admit = auth.on_counters_error == keel_config::CountersError::Admit;
            auth.counters_unavailable[usize::from(admit)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if admit {
                // Served unmetered: nothing is reserved or settled; the row's cost is logged, so the spend counts
                // again when the counters seed from the log.
                tracing::warn!(error = %e, key = %key.id, "budget and rate counters unavailable: admitted unmetered");
                Ok(None)
            } else {
                tracing::error!(error = %e, "budget and rate counters unavailable");
                Err(Denial::LimitsUnavailable)
            }
        }
    }
}

/// The dearest cost the request can have on its plan: on the dearest target of the chain, or, for a cascade,
/// every step's dearest (each may answer before the next is asked) and each judging of a step's answer.
fn plan_worst_case(plan: &keel_pipeline::RoutePlan, prices: &Prices, input: u64, output: u64) -> f64 {
    let chain = |p: &keel_pipeline::RoutePlan, input, output| {
        worst_case_cost(p.targets.iter().chain(&p.context_fallback), prices, input, output)
    };
    let Some(cascade) = &plan.cascade else { return chain(plan, input, output) };
    let steps: f64 = cascade.steps.iter().map(|s| chain(s, input, output)).sum();
    let judged = cascade.steps.len().saturating_sub(1) as f64;
    let judge = match &cascade.check {
        // The judge reads the question and the answer with its instructions (about 200 tokens), answers in 64.
        keel_pipeline::Check::Judge { plan: judge, .. } => judged * chain(judge, input + output + 200, 64),
        _ => 0.0,
    };
    steps + judge
}

/// The dearest cost the request can have on any of `targets`.
fn worst_case_cost<'a>(
    targets: impl Iterator<Item = &'a keel_config::ModelTarget>,
    prices: &Prices,
    input: u64,
    output: u64,
) -> f64 {
    let tokens = cost::Tokens { input, output, cached: 0, estimated: true };
    targets.filter_map(|t| prices.cost(&t.provider, &t.model, tokens)).fold(0.0, f64::max)
}

// ------------------------------------------------------------------------------------------------ settlement

/// A reservation to settle when its request ends.
struct Reserved {
    reservation: Reservation,
    settler: Settler,
}

impl Settle for Reserved {
    fn settle(self: Box<Self>, cost_usd: f64, tokens: u64) {
        self.settler.settle(self.reservation, cost_usd, tokens);
    }
}

/// How many settlements may wait for the counters. A settlement is small (a reservation's ids and numbers); the
/// bound only matters when the counters' backend (Redis) stalls for a long time.
const SETTLE_QUEUE: usize = 16_384;
/// How many settlements run at once.
const SETTLE_CONCURRENCY: usize = 32;

/// Settles budget reservations through one bounded queue, drained by a task that runs up to 32 settlements at
/// once (one Redis round trip each, or an in-memory update). When the queue is full (the counters stalled),
/// a settlement is dropped, counted and reported: its reservation then stays counted against the budget until
/// the period ends, which refuses requests early rather than letting spend pass the budget.
#[derive(Clone)]
pub struct Settler {
    tx: tokio::sync::mpsc::Sender<(Reservation, f64, u64)>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Settler {
    /// Starts the settling task on the current runtime.
    pub fn spawn(counters: Arc<dyn Counters>) -> Self {
        Self::with_queue(counters, SETTLE_QUEUE)
    }

    fn with_queue(counters: Arc<dyn Counters>, queue: usize) -> Self {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<(Reservation, f64, u64)>(queue);
        let items = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        tokio::spawn(items.for_each_concurrent(SETTLE_CONCURRENCY, move |(reservation, cost, tokens)| {
            let counters = counters.clone();
            async move {
                if let Err(e) = counters.settle(&reservation, cost, tokens).await {
                    tracing::error!(error = %e, key = reservation.key_id, "settling a budget reservation failed");
                }
            }
        }));
        Self { tx, dropped: Arc::default() }
    }

    fn settle(&self, reservation: Reservation, cost: f64, tokens: u64) {
        if let Err(e) = self.tx.try_send((reservation, cost, tokens)) {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = match &e {
                tokio::sync::mpsc::error::TrySendError::Full((r, ..))
                | tokio::sync::mpsc::error::TrySendError::Closed((r, ..)) => r.key_id.clone(),
            };
            tracing::error!(key, "budget settlement queue full; a reservation stays counted until its period ends");
        }
    }

    /// Settlements dropped because the queue was full.
    pub fn dropped(&self) -> &Arc<std::sync::atomic::AtomicU64> {
        &self.dropped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use keel_limits::LimitsError;
    use keel_store::KeyRecord;

    use super::*;

    /// Counters whose backend never answers (a stalled Redis): every settlement stays in flight.
    #[derive(Default)]
    struct Stalled {
        settling: AtomicU64,
    }

    impl Counters for Stalled {
        fn admit<'a>(&'a self, _: &'a KeyRecord, _: f64, _: i64) -> BoxFuture<'a, Result<Admission, LimitsError>> {
            futures::future::pending().boxed()
        }

        fn settle<'a>(&'a self, _: &'a Reservation, _: f64, _: u64) -> BoxFuture<'a, Result<(), LimitsError>> {
            self.settling.fetch_add(1, Ordering::Relaxed);
            futures::future::pending().boxed()
        }

        fn spent<'a>(&'a self, _: &'a KeyRecord, _: i64) -> BoxFuture<'a, Result<(f64, f64), LimitsError>> {
            futures::future::pending().boxed()
        }
    }

    #[tokio::test]
    async fn a_stalled_backend_holds_a_bounded_number_of_settlements_and_the_rest_are_dropped_and_counted() {
        let counters = Arc::new(Stalled::default());
        let settler = Settler::with_queue(counters.clone(), 4);
        let reservation = Reservation {
            key_id: "k".into(),
            windows: vec!["d2026-12-03".into()],
            estimate_nano: 1,
            minute: 0,
            counts_tokens: false,
        };
        let total = 200;
        for _ in 0..total {
            settler.settle(reservation.clone(), 0.5, 10);
            tokio::task::yield_now().await;
        }
        for _ in 0..1000 {
            if counters.settling.load(Ordering::Relaxed) == SETTLE_CONCURRENCY as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let settling = counters.settling.load(Ordering::Relaxed);
        let queued = 4 - settler.tx.capacity() as u64;
        let dropped = settler.dropped().load(Ordering::Relaxed);
        assert_eq!(settling, SETTLE_CONCURRENCY as u64, "at most {SETTLE_CONCURRENCY} settlements wait on the backend");
        assert_eq!(queued, 4, "the queue is full");
        assert_eq!(settling + queued + dropped, total, "every settlement is settling, queued or counted as dropped");
    }
}
