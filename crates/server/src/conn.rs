//! Serving connections: keel's own accept loop over hyper, because the edge must bound what a client can hold
//! before it is authenticated. Every connection gets `TCP_NODELAY` (SSE frames leave at once), a deadline for
//! its request headers (which also closes a keep-alive connection idle that long), an idle timeout when no
//! request is in flight (HTTP/2 included), and a place among at most `max_connections`; past that, a new
//! connection is answered with a 503 and closed. On shutdown the listener closes, connections finish what is in
//! flight, and at the grace deadline the streams still open end with an error event before the connections are
//! dropped, so that every log row is written.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// After shutdown begins, how long in-flight requests and streams may take.
    pub grace: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// The request headers keel reads at most (hyper's buffer is sized from it).
    pub max_header_bytes: usize,
    /// Counters for the metrics.
    pub stats: Arc<ConnStats>,
}

/// What the accept loop has seen.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused with a 503 because `max_connections` were open.
    pub refused: AtomicU64,
    /// Closed for idleness (no request in flight, no traffic).
    pub idle_closed: AtomicU64,
}

/// How long a stream cut at the deadline has to write its error event and its log row.
const FLUSH: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets in-flight requests
/// and streams finish for at most `opts.grace`; at the deadline `at_deadline` runs (it ends the open streams
/// with an error event), and what is still open after a short flush is dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    opts: ConnOptions,
    at_deadline: impl FnOnce() + Send,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true)
        // Above keel's own limits, so that keel answers an oversized request in the API's format (431) and
        // hyper's bare 431 is left for the grossly oversized.
        .max_buf_size((opts.max_header_bytes * 4).max(64 << 10))
        .max_headers(1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes * 4).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let places = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    // Refusals in progress (each writes a 503 and waits briefly for the client to read it), bounded too.
    let refusals = Arc::new(Semaphore::new(1024));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors and the like: say so (once a second at most) and let
                        // connections close before accepting again, instead of spinning.
                        if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            last_accept_error = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while tasks.try_join_next().is_some() {}
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
                match places.clone().try_acquire_owned() {
                    Ok(place) => {
                        opts.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let (builder, router, stop) = (builder.clone(), router.clone(), stop_rx.clone());
                        let (idle, stats) = (opts.idle_timeout, opts.stats.clone());
                        tasks.spawn(async move {
                            stats.open.fetch_add(1, Ordering::Relaxed);
                            connection(tcp, &builder, router, stop, idle, &stats).await;
                            stats.open.fetch_sub(1, Ordering::Relaxed);
                            drop(place);
                        });
                    }
                    Err(_) => {
                        opts.stats.refused.fetch_add(1, Ordering::Relaxed);
                        if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                            tasks.spawn(async move {
                                refuse(tcp).await;
                                drop(refusal);
                            });
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = opts.grace.as_millis() as u64,
            open = tasks.len(),
            "shutdown grace period over; ending the open streams with an error event"
        );
        at_deadline();
        let _ = tokio::time::timeout(FLUSH, async { while tasks.join_next().await.is_some() {} }).await;
        // Whatever is left is dropped now: its handlers' log entries are finished by their `Drop`.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// The 503 a connection gets when `max_connections` are open, readable by both APIs' SDKs (Anthropic's shape,
/// which carries OpenAI's `error.message` and `error.type` too).
/// (`refusal_is_well_formed` checks the length.)
const REFUSAL: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 146\r\n\r\n{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\
\"message\":\"keel has reached its connection limit (server.max_connections); try again shortly\"}}";

async fn refuse(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let write = async {
        tcp.write_all(REFUSAL.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sent until it closes, so that closing does not reset the connection before the
        // client has read the refusal.
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// A connection's activity: when bytes last moved, and how many requests are in flight on it.
struct Activity {
    since: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            (self.since.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}

async fn connection(
    tcp: TcpStream,
    builder: &Builder<TokioExecutor>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
    stats: &ConnStats,
) {
    let activity =
        Arc::new(Activity { since: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) });
    let io = TokioIo::new(Tracked { inner: tcp, activity: activity.clone() });
    let seen = activity.clone();
    let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
        let (router, activity) = (router.clone(), seen.clone());
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(activity);
        async move {
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|body| Body::new(Counted { body, _guard: guard })))
        }
    });
    let conn = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let quiet = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !closing => {
                if changed.is_ok() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(quiet.max(Duration::from_millis(10))), if !closing => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle {
                    closing = true;
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Decrements a connection's in-flight count when a response is complete (its body done or dropped).
struct InFlightGuard(Arc<Activity>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

struct Counted {
    body: Body,
    _guard: InFlightGuard,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream that notes when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refusal_is_well_formed() {
        let (head, body) = REFUSAL.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
    }
}
