//! Streams with honest endings, after their first token reached the client.
//!
//! Each chunk must come within the idle timeout and before the total deadline. A stream ends without error only
//! after the upstream's complete answer (and, when a JSON schema applies, after the answer validated). When it
//! fails part-way, the route's policy decides: end with the error (the default), or continue on the next target
//! that can continue a partial answer (prefill), from exactly what the client already has. A target that
//! rejects the prefill is not the cause the client hears about: the original failure is.

use std::collections::VecDeque;
use std::time::Instant;

use futures::StreamExt;
use keel_config::{ModelTarget, StreamFailure};
use keel_providers::{ChatStream, ErrorKind, ProviderError};
use keel_types::{ChatChunk, ChatRequest, Message, Role};

use super::{Chain, Schema, first_token, with_timeout};
use crate::AttemptOutcome;

/// Whether a chunk carries part of the answer (as opposed to a role-only opening or an empty keep-alive).
pub(crate) fn carries_token(chunk: &ChatChunk) -> bool {
    chunk.usage.is_some()
        || chunk.choices.iter().any(|c| {
            c.finish_reason.is_some()
                || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.tool_calls.is_some()
                || c.delta.refusal.is_some()
        })
}

struct State {
    chain: Chain,
    target: ModelTarget,
    request: ChatRequest,
    inner: ChatStream,
    pending: VecDeque<ChatChunk>,
    schema: Option<Schema>,
    /// The answer text the client has received so far.
    text: String,
    saw_tool_calls: bool,
    /// After a continuation, the new stream's opening role chunk is not repeated to the client.
    skip_opening: bool,
    tried: Vec<ModelTarget>,
    done: bool,
}

pub(super) fn resilient(
    chain: Chain,
    target: ModelTarget,
    request: ChatRequest,
    inner: ChatStream,
    buffered: Vec<ChatChunk>,
    schema: Option<Schema>,
) -> ChatStream {
    let state = State {
        chain,
        tried: vec![target.clone()],
        target,
        request,
        inner,
        pending: buffered.into(),
        schema,
        text: String::new(),
        saw_tool_calls: false,
        skip_opening: false,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                st.observe(&chunk);
                return Some((Ok(chunk), st));
            }
            if st.done {
                return None;
            }
            let now = Instant::now();
            let left = st.chain.deadline.saturating_duration_since(now);
            let idle = st.chain.plan.policy.idle_timeout;
            match tokio::time::timeout(idle.min(left), st.inner.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if st.skip_opening && !carries_token(&chunk) {
                        continue;
                    }
                    st.skip_opening = false;
                    st.pending.push_back(chunk);
                }
                Ok(None) => {
                    st.done = true;
                    if let Some(err) = st.validate() {
                        return Some((Err(err), st));
                    }
                    return None;
                }
                Ok(Some(Err(e))) => {
                    if let Some(err) = st.failed(e).await {
                        st.done = true;
                        return Some((Err(err), st));
                    }
                }
                Err(_) => {
                    let what = if left <= idle {
                        format!(
                            "total deadline of {} ms exceeded mid-stream",
                            st.chain.plan.policy.total_timeout.as_millis()
                        )
                    } else {
                        format!("no chunk for {} ms (idle timeout)", idle.as_millis())
                    };
                    let e = ProviderError::new(&st.target.provider, ErrorKind::Timeout, what);
                    if let Some(err) = st.failed(e).await {
                        st.done = true;
                        return Some((Err(err), st));
                    }
                }
            }
        }
    })
    .boxed()
}

impl State {
    fn observe(&mut self, chunk: &ChatChunk) {
        for c in &chunk.choices {
            if let Some(t) = &c.delta.content {
                self.text.push_str(t);
            }
            self.saw_tool_calls |= c.delta.tool_calls.is_some();
        }
    }

    /// Before the final event: the complete answer must satisfy the schema.
    fn validate(&self) -> Option<ProviderError> {
        let schema = self.schema.as_ref()?;
        if self.saw_tool_calls {
            return None;
        }
        let violations = schema.violations(&self.text);
        if violations.is_empty() {
            return None;
        }
        let mut e = super::invalid_output(&self.target, &violations, 0);
        e.message.push_str(" (streamed answers cannot be repaired)");
        Some(e)
    }

    /// Handles a failure after the first token: continues on another target when the policy allows and one
    /// can, otherwise returns the error that ends the stream.
    async fn failed(&mut self, error: ProviderError) -> Option<ProviderError> {
        if let Some(b) = self.chain.breakers.get(&self.target) {
            b.report(!error.unhealthy());
        }
        self.chain.record(
            &self.target,
            Instant::now(),
            AttemptOutcome::Failed { kind: error.kind, status: error.status },
        );
        let policy = &self.chain.plan.policy;
        // A partial tool call cannot be continued as text; nothing to continue from an empty answer either.
        if policy.on_stream_failure != StreamFailure::Continue || self.saw_tool_calls || self.text.is_empty() {
            return Some(error);
        }
        let candidates: Vec<ModelTarget> =
            self.chain.plan.targets.iter().filter(|t| t.supports_prefill && !self.tried.contains(t)).cloned().collect();
        for target in candidates {
            self.tried.push(target.clone());
            let Some(provider) = self.chain.providers.get(&target.provider).cloned() else { continue };
            let permit = match self.chain.breakers.get(&target) {
                Some(b) => match b.acquire() {
                    Some(p) => Some(p),
                    None => continue,
                },
                None => None,
            };
            let left = self.chain.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut req = self.request.clone();
            // Vendors reject a prefill that ends in white space; the continuation supplies it.
            req.messages.push(Message::new(Role::Assistant, self.text.trim_end()));
            let started = Instant::now();
            let ttft = self.chain.plan.policy.first_token_timeout;
            let fut = first_token(provider, target.clone(), req);
            match with_timeout(left.min(ttft), fut, target.provider.clone(), "no first token").await {
                Ok((inner, buffered)) => {
                    self.chain.record(&target, started, AttemptOutcome::Ok);
                    if let Some(p) = permit {
                        p.record(true);
                    }
                    self.inner = inner;
                    let trimmed = self.text.len() - self.text.trim_end().len();
                    self.pending = buffered.into_iter().filter(carries_token).collect();
                    if trimmed > 0 {
                        // The white space the prefill dropped was already sent; the model usually repeats it.
                        strip_leading_space(&mut self.pending, trimmed);
                    }
                    self.skip_opening = self.pending.is_empty();
                    self.target = target;
                    return None;
                }
                Err(e) => {
                    self.chain.record(&target, started, AttemptOutcome::Failed { kind: e.kind, status: e.status });
                    if let Some(p) = permit {
                        p.record(!e.unhealthy());
                    }
                    // A rejected prefill says nothing about the original failure, which stays the cause.
                }
            }
        }
        Some(error)
    }
}

/// Removes up to `n` bytes of leading white space from the first text the continuation sends.
fn strip_leading_space(pending: &mut VecDeque<ChatChunk>, n: usize) {
    for chunk in pending.iter_mut() {
        for c in &mut chunk.choices {
            if let Some(t) = &mut c.delta.content
                && !t.is_empty()
            {
                let ws = t.len() - t.trim_start().len();
                t.drain(..ws.min(n));
                return;
            }
        }
    }
}
