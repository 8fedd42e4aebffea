//! The shutdown deadline as the request path sees it: a stream still open when `shutdown_grace_ms` runs out is
//! ended with an explicit error event (never cut at the TCP level), and its log entry finished as `shutdown`.
//! [`ShutdownLayer`] is the stage that arms every stream; it sits inside the log stage, so the log sees the
//! error event like the client does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use keel_pipeline::{GatewayRequest, GatewayResponse, Output};
use keel_providers::{ChatStream, ErrorKind, ProviderError};
use keel_types::ChatChunk;
use tokio::sync::watch;

/// The two moments of a shutdown: draining (SIGTERM came: `/ready` says 503 while requests are still served)
/// and the deadline (open streams end). Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0), draining: Arc::default() }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").field("deadline", &*self.tx.borrow()).finish()
    }
}

impl Shutdown {
    /// Shutdown began: from now on `/ready` answers 503, so load balancers stop sending new requests.
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The deadline came: every stream ends with an error event at its next poll.
    pub fn deadline(&self) {
        self.tx.send_replace(true);
    }

    /// `stream`, ended with a `shutdown` error when the deadline comes.
    fn guard(&self, stream: ChatStream) -> ChatStream {
        let mut rx = self.tx.subscribe();
        let deadline = Box::pin(async move {
            let _ = rx.wait_for(|d| *d).await;
        });
        Box::pin(Guarded { inner: stream, deadline, ended: false })
    }
}

/// The stage that ends every stream at the shutdown deadline.
#[derive(Clone)]
pub(crate) struct ShutdownLayer(pub Shutdown);

impl<S> tower::Layer<S> for ShutdownLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { shutdown: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub(crate) struct Guard<S> {
    shutdown: Shutdown,
    inner: S,
}

impl<S> tower::Service<GatewayRequest> for Guard<S>
where
    S: tower::Service<GatewayRequest, Response = GatewayResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<GatewayResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let shutdown = self.shutdown.clone();
        self.inner
            .call(req)
            .map(move |resp| {
                resp.map(|mut resp| {
                    resp.result = match resp.result {
                        Ok(Output::ChatStream(s)) => Ok(Output::ChatStream(shutdown.guard(s))),
                        other => other,
                    };
                    resp
                })
            })
            .boxed()
    }
}

struct Guarded {
    inner: ChatStream,
    deadline: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl Stream for Guarded {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let e = ProviderError::new(
                &"keel".into(),
                ErrorKind::Shutdown,
                "keel is shutting down: the answer was cut at the shutdown deadline; retry the request",
            );
            return Poll::Ready(Some(Err(e)));
        }
        let item = futures::ready!(self.inner.as_mut().poll_next(cx));
        if matches!(item, None | Some(Err(_))) {
            self.ended = true;
        }
        Poll::Ready(item)
    }
}
