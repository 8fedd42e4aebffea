//! Streams with honest endings, after their first token reached the client.
//!
//! Each chunk must come within the idle timeout and before the total deadline. A stream ends without error only
//! after the upstream's complete answer (and, when a JSON schema applies, after the answer validated). When it
//! fails part-way, the route's policy decides: end with the error (the default), or continue on the next target
//! that can continue a partial answer (prefill), from exactly what the client already has. A target that
//! rejects the prefill is not the cause the client hears about: the original failure is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use keel_config::{ModelTarget, StreamFailure};
use keel_providers::{ChatStream, ErrorKind, ProviderError};
use keel_types::{ChatChunk, ChatRequest, Message, Role};

use super::{Chain, Schema, first_token, with_timeout};
use crate::{AttemptId, AttemptOutcome, AttemptUsage, cost};

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
    /// The record of the attempt now streaming.
    attempt: AttemptId,
    /// The text the attempt now streaming has delivered (for an estimate of its usage if it breaks).
    attempt_text: String,
    /// Tokens of earlier attempts of this stream that broke part-way, as estimated: added to the usage the
    /// last attempt reports, so that the client, the log and budgets count everything the answer cost.
    earlier: AttemptUsage,
    /// The request the attempt now streaming was sent (the original, or it with a prefill).
    sent: Arc<ChatRequest>,
    request: Arc<ChatRequest>,
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
    (target, attempt): (ModelTarget, AttemptId),
    request: Arc<ChatRequest>,
    inner: ChatStream,
    buffered: Vec<ChatChunk>,
    schema: Option<Schema>,
) -> ChatStream {
    let state = State {
        chain,
        tried: vec![target.clone()],
        target,
        attempt,
        attempt_text: String::new(),
        earlier: AttemptUsage::default(),
        sent: request.clone(),
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
            if let Some(mut chunk) = st.pending.pop_front() {
                st.observe(&mut chunk);
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
    fn observe(&mut self, chunk: &mut ChatChunk) {
        for c in &chunk.choices {
            if let Some(t) = &c.delta.content {
                self.text.push_str(t);
                self.attempt_text.push_str(t);
            }
            self.saw_tool_calls |= c.delta.tool_calls.is_some();
        }
        if let Some(u) = chunk.usage.as_mut()
            && self.earlier != AttemptUsage::default()
        {
            u.prompt_tokens = u.prompt_tokens.saturating_add(self.earlier.input);
            u.completion_tokens = u.completion_tokens.saturating_add(self.earlier.output);
            u.total_tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
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
        if let (Some(b), Some(healthy)) = (self.chain.breakers.get(&self.target), error.health()) {
            b.report(healthy);
        }
        // The attempt that was streaming failed part-way: its one record says so, with what it consumed (its
        // usage chunk never came).
        let attempts = &self.chain.attempts;
        attempts.set_outcome(self.attempt, AttemptOutcome::FailedMidStream { kind: error.kind });
        let used = AttemptUsage {
            input: cost::count_chat_prompt(&self.target.model, &self.sent),
            output: cost::count_text(&self.target.model, &self.attempt_text),
            estimated: true,
        };
        attempts.set_usage(self.attempt, used);
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
            let mut req = ChatRequest::clone(&self.request);
            // Vendors reject a prefill that ends in white space; the continuation supplies it.
            req.messages.push(Message::new(Role::Assistant, self.text.trim_end()));
            let started = Instant::now();
            let ttft = self.chain.plan.policy.first_token_timeout;
            let id = self.chain.start(&target, started);
            let fut = first_token(provider, target.clone(), req.clone());
            match with_timeout(left.min(ttft), fut, target.provider.clone(), "no first token").await {
                Ok((inner, buffered)) => {
                    self.chain.attempts.end(id, AttemptOutcome::Ok, started.elapsed());
                    if let Some(p) = permit {
                        p.record(true);
                    }
                    self.earlier.input = self.earlier.input.saturating_add(used.input);
                    self.earlier.output = self.earlier.output.saturating_add(used.output);
                    self.attempt = id;
                    self.attempt_text.clear();
                    self.sent = Arc::new(req);
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
                    self.chain.attempts.end(
                        id,
                        AttemptOutcome::Failed { kind: e.kind, status: e.status },
                        started.elapsed(),
                    );
                    if let (Some(p), Some(healthy)) = (permit, e.health()) {
                        p.record(healthy);
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
                // White space can be more than one byte (U+3000, U+00A0): cut on a character boundary, never
                // inside one.
                let ws = t.len() - t.trim_start().len();
                let mut cut = ws.min(n);
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.drain(..cut);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel_types::{ChunkChoice, Delta, Extra};

    fn text_chunk(t: &str) -> ChatChunk {
        ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: "m".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta { content: Some(t.into()), ..Delta::default() },
                finish_reason: None,
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }

    #[test]
    fn stripping_white_space_never_cuts_a_character() {
        // U+3000 (ideographic space) is 3 bytes; the prefill dropped 1 or 2 bytes' worth of white space.
        for n in 0..8 {
            let mut pending: VecDeque<ChatChunk> = [text_chunk("\u{3000}\u{a0} next")].into();
            strip_leading_space(&mut pending, n);
            let t = pending[0].choices[0].delta.content.clone().unwrap();
            assert!("\u{3000}\u{a0} next".ends_with(&t), "n = {n}: {t:?}");
        }
        let mut pending: VecDeque<ChatChunk> = [text_chunk("  two")].into();
        strip_leading_space(&mut pending, 1);
        assert_eq!(pending[0].choices[0].delta.content.as_deref(), Some(" two"));
    }
}
