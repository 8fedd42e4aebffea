//! The call stage: the one place where retries, fallbacks, timeouts and the circuit breaker live.
//!
//! For each request it walks the route's chain of targets in order. At each target it makes attempts through
//! the target's provider (one attempt per provider call), retrying only what can succeed on retry, with
//! exponential backoff, full jitter and `Retry-After`, within a retry budget and the request's total deadline.
//! It falls over to the next target on the error classes the policy names, to the context fallback when the
//! prompt is too long, and never past a content-filter refusal. Streams are handed to the server only after
//! their first token, so that any failure before it fails over transparently; after it, [`stream`] decides.

mod backoff;
mod breaker;
mod cascade;
mod schema;
mod stream;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use keel_config::{ErrorClass, ModelTarget};
use keel_providers::{ChatStream, ErrorKind, Provider, ProviderError, Providers};
use keel_types::{ChatChunk, ChatRequest, EmbeddingsRequest, FinishReason};
use tower::Service;

pub use breaker::{Breakers, Change, CircuitState, Transition};
pub use schema::{InvalidSchema, Schema};

use crate::route::RoutePlan;
use crate::{
    Aside, AttemptId, AttemptOutcome, AttemptRecord, AttemptUsage, Attempts, GatewayError, GatewayRequest,
    GatewayResponse, Operation, Output,
};

#[derive(Debug, Clone)]
pub struct Call {
    providers: Providers,
    breakers: Breakers,
}

impl Call {
    pub fn new(providers: Providers, breakers: Breakers) -> Self {
        Self { providers, breakers }
    }
}

impl Service<GatewayRequest> for Call {
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let this = self.clone();
        async move {
            let GatewayRequest { mut ctx, op } = req;
            let Some(plan) = ctx.route.clone() else {
                let error = GatewayError::UnknownModel { model: ctx.requested_model.clone() };
                return Ok(GatewayResponse { ctx, result: Err(error) });
            };
            if let (Some(cascade), Operation::Chat(chat)) = (&plan.cascade, &op) {
                let result = cascade::serve(&this, cascade, chat.clone(), &mut ctx).await;
                return Ok(GatewayResponse { ctx, result });
            }
            let chain = Chain {
                providers: this.providers,
                breakers: this.breakers,
                plan,
                attempts: ctx.attempts.clone(),
                received: ctx.received,
                deadline: ctx.received + ctx.route.as_ref().map_or(Duration::ZERO, |p| p.policy.total_timeout),
            };
            let result = chain.serve(op).await;
            Ok(GatewayResponse { ctx, result })
        }
        .boxed()
    }
}

/// What a walk over the chain returns: the answer, the target that gave it, and its attempt.
struct Served<T> {
    value: T,
    target: ModelTarget,
    attempt: AttemptId,
}

/// One request's walk over its route.
#[derive(Clone)]
pub(crate) struct Chain {
    providers: Providers,
    breakers: Breakers,
    plan: Arc<RoutePlan>,
    attempts: Attempts,
    received: Instant,
    deadline: Instant,
}

impl Chain {
    async fn serve(self, op: Operation) -> Result<Output, GatewayError> {
        match op {
            Operation::Chat(req) => {
                let schema =
                    Schema::for_request(&req, self.plan.schema.as_ref()).map_err(GatewayError::InvalidRequest)?;
                if req.stream {
                    self.stream(req, schema).await.map(Output::ChatStream).map_err(GatewayError::from)
                } else {
                    self.complete(req, schema).await.map(|s| Output::Chat(s.value)).map_err(GatewayError::from)
                }
            }
            Operation::Embeddings(req) => {
                let served = self
                    .run(|p, t, left| {
                        let fut = p.embeddings(&t, EmbeddingsRequest::clone(&req));
                        with_timeout(left, fut, t.provider.clone(), "no answer")
                    })
                    .await?;
                Ok(Output::Embeddings(served.value))
            }
        }
    }

    /// A non-streamed answer, checked against the schema and repaired when it violates it.
    async fn complete(
        &self,
        req: Arc<ChatRequest>,
        schema: Option<Schema>,
    ) -> Result<Served<keel_types::ChatResponse>, ProviderError> {
        let mut req = req;
        let mut repairs = 0;
        loop {
            let Served { value: resp, target, attempt } = self
                .run(|p, t, left| {
                    let fut = p.chat(&t, ChatRequest::clone(&req));
                    with_timeout(left, fut, t.provider.clone(), "no answer")
                })
                .await?;
            let served = |value| Ok(Served { value, target: target.clone(), attempt });
            let Some(schema) = &schema else { return served(resp) };
            let Some(choice) = resp.choices.first() else { return served(resp) };
            if choice.finish_reason == Some(FinishReason::ToolCalls) {
                return served(resp);
            }
            let text = choice.message.content.as_ref().map(|c| c.text()).unwrap_or_default();
            let violations = schema.violations(&text);
            if violations.is_empty() {
                return served(resp);
            }
            // The answer is not served, but it was made and paid for: its usage stays with its attempt.
            self.attempts.set_outcome(attempt, AttemptOutcome::Aside(Aside::Repaired));
            if let Some(u) = &resp.usage {
                self.attempts.set_usage(
                    attempt,
                    AttemptUsage { input: u.prompt_tokens, output: u.completion_tokens, estimated: false },
                );
            }
            if repairs >= self.plan.policy.max_repairs {
                return Err(invalid_output(&target, &violations, repairs));
            }
            repairs += 1;
            req = Arc::new(schema::repair_request(&req, &text, &violations));
        }
    }

    /// A stream, handed on once its first token arrived.
    async fn stream(self, req: Arc<ChatRequest>, schema: Option<Schema>) -> Result<ChatStream, ProviderError> {
        let ttft = self.plan.policy.first_token_timeout;
        let Served { value: (inner, buffered), target, attempt } = self
            .run(|p, t, left| {
                let fut = first_token(p, t.clone(), ChatRequest::clone(&req));
                with_timeout(left.min(ttft), fut, t.provider.clone(), "no first token")
            })
            .await?;
        Ok(stream::resilient(self, (target, attempt), req, inner, buffered, schema))
    }

    /// Walks the chain: `attempt` makes one attempt at a target with the time left; the answer, the target that
    /// gave it and its attempt's record come back, or the failure that ended the walk.
    async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<Served<T>, ProviderError>
    where
        F: FnMut(Arc<dyn Provider>, ModelTarget, Duration) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let policy = &self.plan.policy;
        let mut chain: VecDeque<ModelTarget> = self.plan.targets.iter().cloned().collect();
        let mut took_context_fallback = false;
        let mut waited = Duration::ZERO;
        let mut last: Option<ProviderError> = None;
        while let Some(target) = chain.pop_front() {
            let Some(provider) = self.providers.get(&target.provider).cloned() else {
                last = Some(ProviderError::new(&target.provider, ErrorKind::Connect, "provider is not available"));
                continue;
            };
            let mut tries = 0u32;
            loop {
                let permit = match self.breakers.get(&target).map(|b| (b.acquire(), b)) {
                    Some((Some(p), _)) => Some(p),
                    Some((None, b)) => {
                        self.record(&target, Instant::now(), AttemptOutcome::CircuitOpen);
                        let probe = b.probe_in();
                        let mut e = ProviderError::new(
                            &target.provider,
                            ErrorKind::CircuitOpen,
                            format!("circuit open for {target} after repeated failures; not sent"),
                        );
                        e.retry_after = probe;
                        last = Some(last.unwrap_or(e));
                        break;
                    }
                    None => None,
                };
                let started = Instant::now();
                let Some(left) = self.deadline.checked_duration_since(started).filter(|d| !d.is_zero()) else {
                    return Err(self.deadline_error(&target, last));
                };
                tries += 1;
                let id = self.start(&target, started);
                let result = attempt(provider.clone(), target.clone(), left).await;
                match result {
                    Ok(value) => {
                        self.attempts.end(id, AttemptOutcome::Ok, started.elapsed());
                        if let Some(p) = permit {
                            p.record(true);
                        }
                        return Ok(Served { value, target, attempt: id });
                    }
                    Err(e) => {
                        self.attempts.end(
                            id,
                            AttemptOutcome::Failed { kind: e.kind, status: e.status },
                            started.elapsed(),
                        );
                        // Back-pressure (a full local queue) says nothing of the target's health: the permit is
                        // handed back unrecorded.
                        if let (Some(p), Some(healthy)) = (permit, e.health()) {
                            p.record(healthy);
                        }
                        match e.kind {
                            ErrorKind::ContextLengthExceeded
                                if !took_context_fallback && !self.plan.context_fallback.is_empty() =>
                            {
                                took_context_fallback = true;
                                chain = self.plan.context_fallback.iter().cloned().collect();
                                last = Some(e);
                                break;
                            }
                            ErrorKind::ContextLengthExceeded | ErrorKind::ContentFilter | ErrorKind::InvalidOutput => {
                                return Err(e);
                            }
                            _ => {}
                        }
                        // A silent target is not asked again: timeouts go straight to the next target.
                        if e.retryable() && e.kind != ErrorKind::Timeout && tries < policy.max_attempts {
                            let delay = backoff::delay(policy, tries, e.retry_after)
                                .filter(|d| waited + *d <= policy.retry_budget && Instant::now() + *d < self.deadline);
                            if let Some(d) = delay {
                                waited += d;
                                tokio::time::sleep(d).await;
                                last = Some(e);
                                continue;
                            }
                        }
                        let falls_over = class_of(e.kind).is_some_and(|c| policy.fallback_on.contains(&c));
                        if !falls_over {
                            return Err(e);
                        }
                        last = Some(e);
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ProviderError::new(&"keel".into(), ErrorKind::Connect, format!("no target serves {}", self.plan.alias))
        }))
    }

    /// Records an attempt that was not sent.
    fn record(&self, target: &ModelTarget, started: Instant, outcome: AttemptOutcome) {
        self.attempts.push(self.attempt_record(target, started, outcome));
    }

    /// Records an attempt that starts now.
    fn start(&self, target: &ModelTarget, started: Instant) -> AttemptId {
        self.attempts.start(self.attempt_record(target, started, AttemptOutcome::InFlight))
    }

    fn attempt_record(&self, target: &ModelTarget, started: Instant, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            provider: target.provider.clone(),
            model: target.model.clone(),
            started_after: started.saturating_duration_since(self.received),
            latency: started.elapsed(),
            outcome,
            usage: None,
        }
    }

    fn deadline_error(&self, target: &ModelTarget, last: Option<ProviderError>) -> ProviderError {
        let total = self.plan.policy.total_timeout.as_millis();
        let cause = last.map(|e| format!("; last failure: {e}")).unwrap_or_default();
        ProviderError::new(
            &target.provider,
            ErrorKind::Timeout,
            format!("total deadline of {total} ms for {} exceeded{cause}", self.plan.alias),
        )
    }
}

/// Bounds one attempt by the time it may take.
async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ProviderError>>,
    provider: keel_providers::ProviderId,
    what: &str,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => {
            Err(ProviderError::new(&provider, ErrorKind::Timeout, format!("{what} within {} ms", limit.as_millis())))
        }
    }
}

/// Opens a stream and reads it up to its first token (content, a tool call, a refusal or a finish), so that a
/// failure before any token reaches the client can still fail over. The chunks read come back with the stream.
async fn first_token(
    provider: Arc<dyn Provider>,
    target: ModelTarget,
    req: ChatRequest,
) -> Result<(ChatStream, Vec<ChatChunk>), ProviderError> {
    let mut inner = provider.chat_stream(&target, req).await?;
    let mut buffered = Vec::new();
    while let Some(item) = inner.next().await {
        let chunk = item?;
        let token = stream::carries_token(&chunk);
        buffered.push(chunk);
        if token {
            break;
        }
    }
    Ok((inner, buffered))
}

fn class_of(kind: ErrorKind) -> Option<ErrorClass> {
    Some(match kind {
        ErrorKind::RateLimited | ErrorKind::Busy => ErrorClass::RateLimited,
        ErrorKind::Server => ErrorClass::Server,
        ErrorKind::Connect | ErrorKind::ConnectionLost | ErrorKind::CircuitOpen => ErrorClass::Connect,
        ErrorKind::Timeout => ErrorClass::Timeout,
        ErrorKind::Auth => ErrorClass::Auth,
        ErrorKind::NotFound => ErrorClass::NotFound,
        ErrorKind::InvalidRequest => ErrorClass::InvalidRequest,
        ErrorKind::Protocol => ErrorClass::Protocol,
        ErrorKind::StreamIncomplete => ErrorClass::StreamIncomplete,
        ErrorKind::Unsupported => ErrorClass::Unsupported,
        ErrorKind::ContentFilter => ErrorClass::ContentFilter,
        ErrorKind::ContextLengthExceeded | ErrorKind::InvalidOutput | ErrorKind::Shutdown => return None,
    })
}

fn invalid_output(target: &ModelTarget, violations: &[String], repairs: u32) -> ProviderError {
    let mut e = ProviderError::new(
        &target.provider,
        ErrorKind::InvalidOutput,
        format!(
            "the answer of {target} does not match the required JSON schema after {repairs} repair(s): {}",
            violations.join("; ")
        ),
    );
    e.code = Some("schema_validation_failed".into());
    e
}
