//! A stream under watch: times the first token, keeps the usage (and, per the body policy, the text) and
//! finishes its log entry at the end marker, at an error, or when dropped before either. At the end, the last
//! item is held until the row is queued: a full log slows the stream's end, it never loses the row.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use keel_providers::{ChatStream, ProviderError};
use keel_store::{Outcome, Record};
use keel_types::{ChatChunk, Usage};

use super::{Entry, Reported, tokens_of};

type Item = Result<ChatChunk, ProviderError>;

pub(super) struct Watched {
    inner: ChatStream,
    entry: Option<Entry>,
    first_token: Option<f64>,
    usage: Option<Usage>,
    text: String,
    keep_text: bool,
    model: String,
    finish_reason: Option<String>,
    /// The last item, released once its row is queued (a write dropped unfinished queues its row detached).
    held: Option<(Option<Item>, Option<keel_store::Write>)>,
    done: bool,
}

impl Watched {
    pub(super) fn new(inner: ChatStream, entry: Entry, keep_text: bool) -> Self {
        Self {
            inner,
            entry: Some(entry),
            first_token: None,
            usage: None,
            text: String::new(),
            keep_text,
            model: String::new(),
            finish_reason: None,
            held: None,
            done: false,
        }
    }

    fn observe(&mut self, chunk: &ChatChunk) {
        if self.model.is_empty() && !chunk.model.is_empty() {
            self.model = chunk.model.clone();
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.clone());
        }
        for c in &chunk.choices {
            let piece = c.delta.content.as_deref().unwrap_or("");
            if self.first_token.is_none() && (!piece.is_empty() || c.delta.tool_calls.is_some()) {
                self.first_token = self.entry.as_ref().map(|e| e.received.elapsed().as_secs_f64() * 1000.0);
            }
            // Kept for the body (per policy) and for counting when the provider reports no usage.
            if self.keep_text || self.usage.is_none() {
                self.text.push_str(piece);
            }
            if let Some(f) = &c.finish_reason {
                self.finish_reason = serde_json::to_value(f).ok().and_then(|v| v.as_str().map(str::to_string));
            }
        }
    }

    /// Finishes the entry; the row comes back for the caller to queue.
    fn end(&mut self, outcome: Outcome, error: Option<&ProviderError>) -> Option<(Entry, Record)> {
        let mut entry = self.entry.take()?;
        let mut r = entry.record.take()?;
        r.outcome = outcome;
        r.error_class = error.map(|e| e.kind.as_str().to_string());
        if outcome == Outcome::Shutdown {
            r.error_class = Some("shutdown".into());
        }
        if self.keep_text {
            let body = serde_json::json!({
                "content": self.text,
                "finish_reason": self.finish_reason,
                "error": error.map(|e| e.to_string()),
            });
            r.response_body = entry.log.body(|| Some(body), None);
        }
        let reported = match &self.usage {
            Some(u) => Reported::Usage(tokens_of(u)),
            None => Reported::Unknown { text: &self.text },
        };
        let (r, _) = entry.complete(r, reported, self.first_token);
        Some((entry, r))
    }

    /// Ends the entry and holds `last` until its row is queued.
    fn hold(&mut self, last: Option<Item>, outcome: Outcome, error: Option<&ProviderError>) {
        let write = self.end(outcome, error).and_then(|(entry, r)| entry.write(r));
        self.held = Some((last, write));
    }
}

impl Stream for Watched {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        loop {
            if let Some((_, write)) = self.held.as_mut() {
                if let Some(w) = write {
                    futures::ready!(Pin::new(w).poll(cx));
                }
                let last = self.held.take().and_then(|(last, _)| last);
                self.done = true;
                return Poll::Ready(last);
            }
            if self.done {
                return Poll::Ready(None);
            }
            match futures::ready!(self.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    self.observe(&chunk);
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e)) => {
                    let outcome = if e.kind == keel_providers::ErrorKind::Shutdown {
                        Outcome::Shutdown
                    } else {
                        Outcome::StreamError
                    };
                    self.hold(Some(Err(e.clone())), outcome, Some(&e));
                }
                None => self.hold(None, Outcome::Ok, None),
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let outcome = match &self.entry {
            Some(e) if e.log.stopping.load(std::sync::atomic::Ordering::Relaxed) => Outcome::Shutdown,
            _ => Outcome::ClientDisconnected,
        };
        if let Some((entry, r)) = self.end(outcome, None) {
            entry.queue_detached(r);
        }
    }
}
