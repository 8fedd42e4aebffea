"""Routers through the official SDKs: a rules router picks the alias by the request's task or tags and says so in
`x-keel-route`, a cascade serves the cheaper model's answer when it passes its check and escalates when it does
not (streamed too, from either SDK), and each decision is in the request's log row, with the cost of every step,
and in /metrics."""

from __future__ import annotations

import pytest

import upstream as up
from test_request_log import row_of


def test_a_rules_router_sends_a_classification_to_the_small_model(oai, http, mock):
    raw = oai.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Classify this ticket: my card was charged twice."}])
    assert raw.headers["x-keel-route"] == "gpt-mini"
    assert raw.headers["x-keel-route-reason"] == "rule 1 (task = classification)"
    assert mock.only_attempt().body["model"] == "mock-mini"
    r = row_of(http, raw.headers["x-request-id"])
    assert r["model_requested"] == "auto" and r["model_served"] == "oa/mock-mini"
    assert r["routing"] == {"router": "auto", "to": "gpt-mini", "reason": "rule 1 (task = classification)",
                            "escalations": 0}

    raw = oai.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a haiku about rain."}])
    assert (raw.headers["x-keel-route"], raw.headers["x-keel-route-reason"]) == ("gpt-test", "default")
    listed = {m.id for m in oai.models.list()}
    assert {"auto", "sentiment"} <= listed
    assert oai.models.retrieve("sentiment").id == "sentiment"


def test_a_cascade_escalates_an_answer_that_is_no_label_and_counts_both_steps(oai, http, mock):
    mock.script(up.text("Hard to tell, honestly"), up.text("negative"))
    raw = oai.chat.completions.with_raw_response.create(
        model="sentiment", messages=[{"role": "user", "content": "It broke after one day."}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "negative"
    assert raw.headers["x-keel-route"] == "gpt-test"
    assert [a.body["model"] for a in mock.attempts()] == ["mock-mini", "mock-gpt"]
    r = row_of(http, raw.headers["x-request-id"])
    assert r["routing"]["escalations"] == 1 and r["routing"]["to"] == "gpt-test"
    assert r["routing"]["reason"] == "cascade: gpt-mini failed labels (not one of the labels); gpt-test served"
    assert [(a["model"], a["outcome"]) for a in r["attempts"]] == [("mock-mini", "escalated"), ("mock-gpt", "ok")]
    assert r["model_served"] == "oa/mock-gpt"
    # Both steps were paid for: the row's tokens and cost include the escalated answer at its own price.
    assert r["tokens_in"] > answer.usage.prompt_tokens and r["tokens_out"] > answer.usage.completion_tokens
    small_in = r["tokens_in"] - answer.usage.prompt_tokens
    small_out = r["tokens_out"] - answer.usage.completion_tokens
    expected = (small_in * 0.5 + small_out * 1.0 + answer.usage.prompt_tokens * 2.0
                + answer.usage.completion_tokens * 8.0) / 1e6
    assert r["cost_usd"] == pytest.approx(expected)

    metrics = http.get("/metrics").text
    assert 'keel_routed_total{router="sentiment",to="gpt-test"}' in metrics
    assert 'keel_cascade_escalations_total{model="sentiment"}' in metrics


def test_a_passing_cheap_answer_is_streamed_to_both_sdks_after_its_check(oai, anth, http, mock):
    mock.script(up.text("positive"))
    stream = oai.chat.completions.create(
        model="auto", stream=True, extra_headers={"x-keel-tags": "reviews"},
        messages=[{"role": "user", "content": "Best purchase this year."}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "positive"
    assert mock.only_attempt().body.get("stream") in (False, None), "the cheap step answers in full"

    mock.reset()
    mock.script(up.text("I would rather not say"), up.text("neutral"))
    with anth.messages.stream(model="sentiment", max_tokens=20,
                              messages=[{"role": "user", "content": "It arrived."}]) as s:
        got = "".join(s.text_stream)
        final = s.get_final_message()
    assert got == "neutral" and final.stop_reason == "end_turn"
    assert [a.body["model"] for a in mock.attempts()] == ["mock-mini", "mock-gpt"]
