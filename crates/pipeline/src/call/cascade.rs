//! A cascade router's walk (`[routers.NAME] cascade = [...]`): each step but the last answers in full, its
//! answer is checked, and only a failed check (or a failed step) escalates to the next step. The last step
//! serves as any alias does, streamed when the client streams. A streamed request gets a passing cheap answer
//! replayed as a stream, so nothing reaches the client before the check: the client never sees an answer that
//! is then taken back. Every step's attempts go in the request's record; an answer set aside keeps its usage,
//! so the row's cost is what the cascade really spent, and the time the failed steps took is the escalation's
//! latency, reported with the decision.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use keel_config::CascadeStream;
use keel_types::{ChatRequest, ChatResponse, FinishReason, Message, ResponseFormat, Role};

use super::{Call, Chain, Schema, Served};
use crate::router::{CascadePlan, Check, fold_label};
use keel_providers::ErrorKind;

use crate::{
    Aside, AttemptOutcome, AttemptUsage, Attempts, GatewayError, Operation, Output, Rejection, RequestContext,
};

/// A check's verdict on one answer.
enum Verdict {
    Pass,
    Fail(String),
}

pub(super) async fn serve(
    call: &Call,
    cascade: &CascadePlan,
    req: Arc<ChatRequest>,
    ctx: &mut RequestContext,
) -> Result<Output, GatewayError> {
    if req.stream && cascade.stream == CascadeStream::Refuse {
        return Err(Rejection::invalid(
            format!("model {:?} is a cascade that does not stream; send stream: false", cascade.router),
            Some("stream".into()),
        )
        .into());
    }
    let started = Instant::now();
    let mut verdicts: Vec<String> = Vec::new();
    // One deadline for the whole cascade: the cascade's (its last step's) total timeout.
    let (received, attempts) = (ctx.received, ctx.attempts.clone());
    let deadline = received + ctx.route.as_ref().map_or(std::time::Duration::ZERO, |p| p.policy.total_timeout);
    let chain = |plan| Chain {
        providers: call.providers.clone(),
        breakers: call.breakers.clone(),
        deadline,
        plan,
        attempts: attempts.clone(),
        received,
    };
    let (last, cheap) = match cascade.steps.split_last() {
        Some(split) => split,
        None => return Err(GatewayError::UnknownModel { model: cascade.router.clone() }),
    };
    let asked_logprobs = req.extra.get("logprobs").is_some_and(|v| v.as_bool() == Some(true));
    for (escalations, step) in cheap.iter().enumerate() {
        let mut step_req = ChatRequest::clone(&req);
        step_req.stream = false;
        step_req.stream_options = None;
        if matches!(cascade.check, Check::Logprob { .. }) {
            step_req.extra.insert("logprobs".into(), serde_json::Value::Bool(true));
        }
        let schema = Schema::for_request(&step_req, step.schema.as_ref()).map_err(GatewayError::InvalidRequest)?;
        let step_chain = chain(step.clone());
        let served = step_chain.complete(Arc::new(step_req), schema.clone()).await;
        let verdict = match &served {
            Ok(Served { value, .. }) => judge(&cascade.check, value, &req, schema.as_ref(), &chain, &attempts).await,
            // The client's own mistakes and refusals end the walk: a bigger model would not change them.
            Err(e) if matches!(e.kind, ErrorKind::InvalidRequest | ErrorKind::ContentFilter) => {
                return Err(GatewayError::Provider(e.clone()));
            }
            Err(e) => Verdict::Fail(format!("error: {}", e.kind.as_str())),
        };
        match (verdict, served) {
            (Verdict::Pass, Ok(Served { mut value, .. })) => {
                verdicts.push(format!("{} passed {}", step.alias, cascade.check.name()));
                decide(ctx, &step.alias, &verdicts, escalations, started);
                if !asked_logprobs {
                    value.choices.iter_mut().for_each(|c| c.logprobs = None);
                }
                return Ok(if req.stream {
                    let chunks = keel_cache::replay(&value);
                    Output::ChatStream(futures::stream::iter(chunks.into_iter().map(Ok)).boxed())
                } else {
                    Output::Chat(value)
                });
            }
            (verdict, served) => {
                let why = match verdict {
                    Verdict::Fail(why) => why,
                    Verdict::Pass => "no answer".into(),
                };
                verdicts.push(format!("{} failed {} ({why})", step.alias, cascade.check.name()));
                if let Ok(Served { value, attempt, .. }) = served {
                    set_aside(&attempts, attempt, &value, Aside::Escalated);
                }
            }
        }
    }
    verdicts.push(format!("{} served", last.alias));
    decide(ctx, &last.alias, &verdicts, cheap.len(), started);
    chain(last.clone()).serve(Operation::Chat(req)).await
}

/// Records which step serves and why on the route stage's decision: the steps' verdicts after the route
/// stage's reason, how many steps failed before it (escalations) and the time they took.
fn decide(ctx: &mut RequestContext, to: &str, verdicts: &[String], escalations: usize, started: Instant) {
    let Some(d) = ctx.routing.as_mut() else { return };
    d.to = to.to_string();
    d.reason = format!("{}: {}", d.reason, verdicts.join("; "));
    d.escalations = u32::try_from(escalations).unwrap_or(u32::MAX);
    if d.escalations > 0 {
        d.escalation_time = started.elapsed();
    }
}

/// Marks an answered attempt as set aside, with its provider-reported usage (so its cost counts).
fn set_aside(attempts: &Attempts, attempt: crate::AttemptId, resp: &ChatResponse, why: Aside) {
    attempts.set_outcome(attempt, AttemptOutcome::Aside(why));
    if let Some(u) = &resp.usage {
        attempts
            .set_usage(attempt, AttemptUsage { input: u.prompt_tokens, output: u.completion_tokens, estimated: false });
    }
}

/// The answer's text (first choice), or `None` when it called tools instead.
fn text_of(resp: &ChatResponse) -> Option<String> {
    let choice = resp.choices.first()?;
    if choice.finish_reason == Some(FinishReason::ToolCalls) {
        return None;
    }
    Some(choice.message.content.as_ref().map(|c| c.text()).unwrap_or_default())
}

async fn judge(
    check: &Check,
    resp: &ChatResponse,
    req: &ChatRequest,
    schema: Option<&Schema>,
    chain: &(dyn Fn(Arc<crate::RoutePlan>) -> Chain + Sync),
    attempts: &Attempts,
) -> Verdict {
    let fail = |why: &str| Verdict::Fail(why.to_string());
    if resp.choices.first().is_some_and(|c| c.finish_reason == Some(FinishReason::Length)) {
        return fail("the answer was cut at its token limit");
    }
    match check {
        Check::Schema => {
            // `complete` already refused an answer that violates the schema (after the step's repairs).
            if schema.is_some() {
                return Verdict::Pass;
            }
            match (&req.response_format, text_of(resp)) {
                (Some(ResponseFormat::JsonObject), Some(t)) => {
                    match serde_json::from_str::<serde_json::Value>(t.trim()) {
                        Ok(serde_json::Value::Object(_)) => Verdict::Pass,
                        _ => fail("not a JSON object"),
                    }
                }
                (_, None) => Verdict::Pass,
                _ => fail("the request has no schema to check against"),
            }
        }
        Check::Labels { labels, case_sensitive } => match text_of(resp) {
            Some(t) if labels.contains(&fold_label(&t, *case_sensitive)) => Verdict::Pass,
            Some(_) => fail("not one of the labels"),
            None => fail("tool calls, not a label"),
        },
        Check::Regex(re) => match text_of(resp) {
            Some(t) if re.is_match(&t) => Verdict::Pass,
            _ => fail("no match"),
        },
        Check::Logprob { min_mean } => match mean_logprob(resp) {
            Some(m) if m >= *min_mean => Verdict::Pass,
            Some(m) => Verdict::Fail(format!("mean log-probability {m:.3} under {min_mean}")),
            None => fail("the provider returned no log-probabilities"),
        },
        Check::Judge { plan, rubric, min_score } => {
            let Some(answer) = text_of(resp) else { return fail("tool calls, nothing to grade") };
            let question = req
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .and_then(|m| m.content.as_ref())
                .map(|c| c.text())
                .unwrap_or_default();
            let Some(ask) = judge_request(&plan.alias, rubric, &question, &answer) else {
                return fail("the judge's request could not be built");
            };
            match chain(plan.clone()).complete(Arc::new(ask), None).await {
                Ok(Served { value, attempt, .. }) => {
                    set_aside(attempts, attempt, &value, Aside::Judge);
                    match text_of(&value).as_deref().and_then(score_of) {
                        Some(s) if s >= *min_score => Verdict::Pass,
                        Some(s) => Verdict::Fail(format!("judged {s}/5")),
                        None => fail("the judge gave no score"),
                    }
                }
                Err(e) => Verdict::Fail(format!("the judge failed: {}", e.kind.as_str())),
            }
        }
    }
}

/// The mean of the first choice's token log-probabilities (OpenAI's `logprobs.content[].logprob`).
fn mean_logprob(resp: &ChatResponse) -> Option<f64> {
    let content = resp.choices.first()?.logprobs.as_ref()?.get("content")?.as_array()?;
    let values: Vec<f64> = content.iter().filter_map(|t| t.get("logprob")?.as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

const JUDGE_SYSTEM: &str = "You grade an answer to a question against a rubric. Reply with one line \
     \"SCORE: N\" where N is 1 (fails the rubric) to 5 (fully meets it), then one short sentence why.";

fn judge_request(model: &str, rubric: &str, question: &str, answer: &str) -> Option<ChatRequest> {
    let user = format!(
        "<rubric>\n{rubric}\n</rubric>\n<question>\n{question}\n</question>\n<answer_to_grade>\n{answer}\n</answer_to_grade>"
    );
    let messages = [Message::new(Role::System, JUDGE_SYSTEM), Message::new(Role::User, user)];
    serde_json::from_value(serde_json::json!({
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        "max_completion_tokens": 64,
    }))
    .ok()
}

/// The score in a judge's reply: "SCORE: 4", "Score: 4/5", "**Score:** 4", or a reply that is one digit.
fn score_of(text: &str) -> Option<u8> {
    let lower = text.to_lowercase();
    let after = lower.find("score").map_or(lower.as_str(), |i| &lower[i + 5..]);
    let digit = after.chars().find(|c| c.is_ascii_digit())?;
    let n = u8::try_from(digit.to_digit(10)?).ok()?;
    (1..=5).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn scores_are_read_in_the_forms_judges_write() {
        assert_eq!(score_of("SCORE: 4\nGood."), Some(4));
        assert_eq!(score_of("**Score:** 2/5 - wrong"), Some(2));
        assert_eq!(score_of("5"), Some(5));
        assert_eq!(score_of("Score: 9"), None);
        assert_eq!(score_of("no idea"), None);
    }

    #[test]
    fn the_mean_log_probability_is_over_the_first_choices_tokens() {
        let resp: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "Paris"},
              "logprobs": {"content": [{"token": "Par", "logprob": -0.1}, {"token": "is", "logprob": -0.3}]}}]
        }))
        .unwrap();
        assert!((mean_logprob(&resp).unwrap() + 0.2).abs() < 1e-9);
    }
}
