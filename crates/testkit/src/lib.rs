//! A mock LLM provider ("upstream") speaking the OpenAI and Anthropic wire formats, with scripted
//! replies and connection-level faults; the only test double of the project.
//!
//! Start one inside a test, point a provider at [`MockUpstream::url`], script what the next
//! requests get with [`MockUpstream::enqueue`], and read what arrived with
//! [`MockUpstream::attempts`]. The `keel-mock-upstream` binary serves the same mock for tests in
//! other processes, scripted over HTTP through the `/_mock/*` endpoints.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use keel_testkit::{Fault, MockUpstream, Reply};
//! let mock = MockUpstream::start().await?;
//! mock.enqueue(Reply::faulty(Fault::ResetBeforeHeaders)); // the first attempt fails...
//! mock.enqueue(Reply::text("hello there")); // ...and the retry gets an answer
//! // ... send requests to format!("{}/v1/chat/completions", mock.url()) ...
//! assert_eq!(mock.attempt_count(), 2);
//! # Ok(()) }
//! ```
//!
//! Endpoints: `POST /v1/chat/completions` (also `/chat/completions` and the Azure
//! `/openai/deployments/{d}/chat/completions`), `POST /v1/embeddings` (same variants),
//! `POST /v1/messages` (Anthropic), `GET /v1/models`; anything else is a 404 in OpenAI's format.

mod answer;
mod anthropic;
mod control;
mod deliver;
mod http;
mod openai;
mod reply;
mod route;
mod server;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use reply::{Fault, MockToolCall, Reply, ReplyBody};
pub use state::Attempt;

/// The vector the mock answers `/v1/embeddings` with for `text` (at its default dimensions), for tests that must
/// know it in advance (a learned router's weights, say).
pub fn embedding(text: &str) -> Vec<f32> {
    openai::embed(text, openai::DEFAULT_DIMENSIONS)
}

use state::Shared;

/// A running mock upstream. Clones share the same server; the server stops accepting
/// connections when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockUpstream {
    /// Starts a mock on an ephemeral port of 127.0.0.1. Must be called inside a tokio runtime.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a mock on `addr`. Must be called inside a tokio runtime.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        let inner = Inner { addr, shared, server };
        Ok(MockUpstream { inner: Arc::new(inner) })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Queues a reply; each request takes the next one, or the default when the queue is empty.
    pub fn enqueue(&self, reply: Reply) {
        self.inner.shared.enqueue([reply]);
    }

    pub fn enqueue_many(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.shared.enqueue(replies);
    }

    /// Replaces the reply used when the queue is empty (initially [`Reply::echo`]).
    pub fn set_default(&self, reply: Reply) {
        self.inner.shared.set_default(reply);
    }

    /// Every request received so far, in order, including those answered with a fault.
    /// `/_mock/*` control requests are not included.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.shared.attempts()
    }

    pub fn attempt_count(&self) -> usize {
        self.inner.shared.attempt_count()
    }

    /// Clears the queue and the attempts, and sets the default back to echo.
    pub fn reset(&self) {
        self.inner.shared.reset();
    }
}
