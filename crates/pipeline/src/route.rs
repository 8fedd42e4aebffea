//! The route stage: resolves the model alias the client named into the ordered targets that may serve it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use keel_config::{ModelAlias, ModelTarget};
use tower::{Layer, Service};

use crate::{GatewayError, GatewayRequest, GatewayResponse};

/// Model aliases and their targets, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    aliases: Arc<HashMap<String, Vec<ModelTarget>>>,
}

impl RouteTable {
    pub fn new<'a>(aliases: impl IntoIterator<Item = &'a ModelAlias>) -> Self {
        let aliases = aliases.into_iter().map(|a| (a.name.clone(), a.targets.clone())).collect();
        Self { aliases: Arc::new(aliases) }
    }

    pub fn targets(&self, model: &str) -> Option<&[ModelTarget]> {
        self.aliases.get(model).map(Vec::as_slice)
    }

    /// The alias names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.aliases.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: RouteTable,
}

impl RouteLayer {
    pub fn new(table: RouteTable) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route { table: self.table.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    table: RouteTable,
    inner: S,
}

impl<S> Service<GatewayRequest> for Route<S>
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

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let Some(targets) = self.table.targets(req.op.model()) else {
            let error = GatewayError::UnknownModel { model: req.op.model().to_string(), known: self.table.names() };
            return futures::future::ready(Ok(GatewayResponse { ctx: req.ctx, result: Err(error) })).boxed();
        };
        req.ctx.candidates = targets.to_vec();
        // The clone that was driven to readiness serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move { inner.call(req).await }.boxed()
    }
}
