//! The mock's shared state: the reply queue, the default reply, and the recorded attempts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::reply::Reply;

/// One request the mock received, recorded before any delay or fault was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, or `Null` when the body is empty or not JSON.
    pub body: serde_json::Value,
    /// Milliseconds since the mock started.
    pub at_ms: u64,
}

impl Attempt {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    started: Instant,
    seq: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Reply>,
    default: Reply,
    attempts: Vec<Attempt>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self { started: Instant::now(), seq: AtomicU64::new(0), state: Mutex::new(State::default()) }
    }

    /// A poisoned lock only means a panic elsewhere; the state itself is always consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The next response sequence number, from 1.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records an attempt that takes no reply (a path the mock does not serve).
    pub(crate) fn record(&self, attempt: Attempt) {
        self.lock().attempts.push(attempt);
    }

    /// Records the attempt and takes its reply under the same lock, so that the n-th recorded
    /// attempt is the one that got the n-th scripted reply.
    pub(crate) fn record_and_take(&self, attempt: Attempt) -> Reply {
        let mut state = self.lock();
        state.attempts.push(attempt);
        match state.queue.pop_front() {
            Some(reply) => reply,
            None => state.default.clone(),
        }
    }

    pub(crate) fn enqueue(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().queue.extend(replies);
    }

    pub(crate) fn set_default(&self, reply: Reply) {
        self.lock().default = reply;
    }

    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    pub(crate) fn attempt_count(&self) -> usize {
        self.lock().attempts.len()
    }

    pub(crate) fn reset(&self) {
        *self.lock() = State::default();
    }
}

/// Unix seconds now, for `created` fields.
pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
