//! The log stage, outermost in the request path: it opens a request's entry as the request arrives, parsed or
//! not, and finishes it exactly once with what the client got: a refusal (unreadable body, invalid request, the
//! key's limits), a failure in the API's error format, an answer (with its cost, which the key's settlement and
//! the `x-keel-cost-usd` header take from here), the end of a stream, or nothing at all when the client went
//! away (the entry's `Drop`). It is outermost so that it sees every outcome of every stage inside it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use keel_pipeline::{GatewayError, GatewayRequest, GatewayResponse, Operation, Output, Prompt};
use tower::{Layer, Service};

use super::{Answer, RequestLog};
use crate::ApiError;
use crate::arrival::Arrival;

/// A request as its handler hands it to the request path: how it arrived, its body as received (for the log)
/// and what parsing made of it.
pub(crate) struct Inbound {
    pub arrival: Arrival,
    pub body: Bytes,
    pub op: Result<Operation, GatewayError>,
}

#[derive(Clone)]
pub(crate) struct LogLayer {
    log: Arc<RequestLog>,
}

impl LogLayer {
    pub(crate) fn new(log: Arc<RequestLog>) -> Self {
        Self { log }
    }
}

impl<S> Layer<S> for LogLayer {
    type Service = Logged<S>;

    fn layer(&self, inner: S) -> Logged<S> {
        Logged { log: self.log.clone(), inner }
    }
}

#[derive(Clone)]
pub(crate) struct Logged<S> {
    log: Arc<RequestLog>,
    inner: S,
}

impl<S> Service<Inbound> for Logged<S>
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

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let Inbound { arrival, body, op } = inbound;
        let mut entry = self.log.start(&arrival, &body);
        let mut ctx = arrival.ctx;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move {
            let op = match op {
                Ok(op) => op,
                Err(e) => {
                    entry.reject(&ApiError::from(e.clone()), e.class()).await;
                    return Ok(GatewayResponse { ctx, result: Err(e) });
                }
            };
            ctx.requested_model = op.model().to_string();
            ctx.prompt = Prompt::of(&op);
            entry.attach(&ctx, &op);
            let GatewayResponse { mut ctx, result } = inner.call(GatewayRequest { ctx, op }).await?;
            entry.cache(ctx.cache.clone());
            entry.guard(ctx.guard.clone());
            entry.routing(ctx.routing.as_ref());
            let result = match result {
                Ok(Output::Chat(r)) => {
                    ctx.cost_usd = entry.finish(Answer::Chat(&r)).await;
                    Ok(Output::Chat(r))
                }
                Ok(Output::Embeddings(r)) => {
                    ctx.cost_usd = entry.finish(Answer::Embeddings(&r)).await;
                    Ok(Output::Embeddings(r))
                }
                Ok(Output::ChatStream(s)) => Ok(Output::ChatStream(entry.watch(s))),
                Err(e) if e.is_refusal() => {
                    entry.reject(&ApiError::from(e.clone()), e.class()).await;
                    Err(e)
                }
                Err(e) => {
                    entry.finish(Answer::Failed(&ApiError::from(e.clone()), e.class())).await;
                    Err(e)
                }
            };
            Ok(GatewayResponse { ctx, result })
        }
        .boxed()
    }
}
