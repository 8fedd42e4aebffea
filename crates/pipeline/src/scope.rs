//! The scope stage: whose cache entries a request may use (its caller's tenant) and the cache mode its client
//! asked for in `x-keel-cache`, decided once for the stages after it. An invalid header value is refused here,
//! in the API's error format, before anything else happens.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use keel_config::CacheMode;
use tower::{Layer, Service};

use crate::{GatewayError, GatewayRequest, GatewayResponse, Rejection};

#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeLayer;

impl<S> Layer<S> for ScopeLayer {
    type Service = Scope<S>;

    fn layer(&self, inner: S) -> Scope<S> {
        Scope { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Scope<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for Scope<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<GatewayResponse, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        req.ctx.tenant = req.ctx.principal.as_ref().map(|p| p.tenant()).unwrap_or_default();
        if let Some(value) = &req.ctx.client.cache {
            match CacheMode::parse(value) {
                Some(mode) => req.ctx.cache_mode = Some(mode),
                None => {
                    let e = Rejection::invalid(
                        "x-keel-cache: expected off, read, write or read-write",
                        Some("x-keel-cache".into()),
                    );
                    let resp = GatewayResponse { ctx: req.ctx, result: Err(GatewayError::from(e)) };
                    return Either::Right(futures::future::ready(Ok(resp)));
                }
            }
        }
        Either::Left(self.inner.call(req))
    }
}
