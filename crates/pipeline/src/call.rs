//! The call stage: sends the request to its target provider and records the attempt.
//!
//! Retries and fallbacks across candidates belong here and nowhere else.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_providers::{ModelTarget, ProviderError, Providers};
use tower::Service;

use crate::{AttemptOutcome, AttemptRecord, GatewayError, GatewayRequest, GatewayResponse, Operation, Output};

#[derive(Debug, Clone)]
pub struct Call {
    providers: Providers,
}

impl Call {
    pub fn new(providers: Providers) -> Self {
        Self { providers }
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
        let providers = self.providers.clone();
        async move {
            let GatewayRequest { mut ctx, op } = req;
            let Some(target) = ctx.candidates.first().cloned() else {
                let error = GatewayError::UnknownModel { model: ctx.requested_model.clone(), known: Vec::new() };
                return Ok(GatewayResponse { ctx, result: Err(error) });
            };
            let Some(provider) = providers.get(&target.provider).cloned() else {
                return Ok(GatewayResponse { result: Err(GatewayError::ProviderUnavailable(target.provider)), ctx });
            };
            let started = Instant::now();
            let started_after = started.duration_since(ctx.received);
            let result = match op {
                Operation::Chat(r) if r.stream => provider.chat_stream(&target, r).await.map(Output::ChatStream),
                Operation::Chat(r) => provider.chat(&target, r).await.map(Output::Chat),
                Operation::Embeddings(r) => provider.embeddings(&target, r).await.map(Output::Embeddings),
            };
            ctx.attempts.push(record(&target, started_after, started, &result));
            Ok(GatewayResponse { ctx, result: result.map_err(GatewayError::from) })
        }
        .boxed()
    }
}

fn record(
    target: &ModelTarget,
    started_after: std::time::Duration,
    started: Instant,
    result: &Result<Output, ProviderError>,
) -> AttemptRecord {
    AttemptRecord {
        provider: target.provider.clone(),
        model: target.model.clone(),
        started_after,
        latency: started.elapsed(),
        outcome: match result {
            Ok(_) => AttemptOutcome::Ok,
            Err(e) => AttemptOutcome::Failed { kind: e.kind, status: e.status },
        },
    }
}
