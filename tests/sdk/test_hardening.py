"""What the review of the landed code found, checked through the official SDKs: a fallback for what Anthropic
cannot express, request ids that clients reuse, stop sequences and stop reasons that survive translation,
Anthropic-only fields and betas that reach Anthropic, secrets an upstream echoes, the cost of a request the
client abandoned."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

import upstream as up
from upstream import CLAUDE, GPT, UPSTREAM_KEY

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]


def rows(http, **params) -> list[dict]:
    resp = http.get("/admin/requests", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def wait_rows(http, n: int, timeout: float = 10.0, **params) -> list[dict]:
    """At least `n` log rows matching `params` (rows are written asynchronously)."""
    deadline = time.monotonic() + timeout
    while len(found := rows(http, **params)) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(found)} log rows for {params} within {timeout}s, expected {n}")
        time.sleep(0.05)
    return found


def test_n_above_one_falls_over_from_anthropic_to_openai_with_the_openai_sdk(oai, mock):
    raw = oai.chat.completions.with_raw_response.create(
        model="claude-then-gpt", n=2, messages=[{"role": "user", "content": "two answers please"}])
    assert raw.headers["x-keel-served-by"] == GPT.served_by
    assert raw.headers["x-keel-attempts"] == "2"
    attempts = mock.attempts()
    assert [a.path for a in attempts] == [GPT.upstream_path], "nothing was sent to Anthropic"
    assert attempts[0].body["n"] == 2


def test_n_above_one_falls_over_from_anthropic_to_openai_with_the_anthropic_sdk(anth, mock):
    raw = anth.messages.with_raw_response.create(
        model="claude-then-gpt", max_tokens=32, messages=[{"role": "user", "content": "two answers please"}],
        extra_body={"n": 2})
    assert raw.headers["x-keel-served-by"] == GPT.served_by
    assert raw.parse().content[0].text


def test_a_reused_request_id_keeps_every_row(oai, http, mock):
    rid = f"client-chosen-{time.monotonic_ns()}"
    for _ in range(2):
        raw = oai.chat.completions.with_raw_response.create(
            model=GPT.alias, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": rid})
        assert raw.headers["x-request-id"] == rid, "the client's id is echoed"
    found = wait_rows(http, 2, id=rid)
    assert len(found) == 2, "two requests, two rows: the client's id is not the row's identity"
    assert {r["client_request_id"] for r in found} == {rid}
    assert len({r["id"] for r in found}) == 2
    assert all(r["cost_usd"] > 0 for r in found), "and both costs are kept"


def test_anthropic_stop_sequence_and_pause_turn_reach_an_anthropic_client(anth, mock):
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "mock-claude",
               "content": [{"type": "text", "text": "one two"}], "stop_reason": "stop_sequence",
               "stop_sequence": "END", "usage": {"input_tokens": 3, "output_tokens": 2}}
    mock.script(up.json_body(message), up.json_body({**message, "stop_reason": "pause_turn", "stop_sequence": None}))
    resp = anth.messages.create(model=CLAUDE.alias, max_tokens=20, stop_sequences=["END"],
                                messages=[{"role": "user", "content": "count"}])
    assert (resp.stop_reason, resp.stop_sequence) == ("stop_sequence", "END")
    assert resp._request_id, "Anthropic's SDK finds the request id"
    resp = anth.messages.create(model=CLAUDE.alias, max_tokens=20, messages=[{"role": "user", "content": "go on"}])
    assert (resp.stop_reason, resp.stop_sequence) == ("pause_turn", None)


def test_a_streamed_stop_sequence_reaches_an_anthropic_client(anth, mock):
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_2", "type": "message",
                                                                "role": "assistant", "model": "mock-claude",
                                                                "content": [], "stop_reason": None,
                                                                "stop_sequence": None,
                                                                "usage": {"input_tokens": 3, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "one two"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    import json
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    mock.script(up.raw(200, "text/event-stream", body))
    with anth.messages.stream(model=CLAUDE.alias, max_tokens=20, stop_sequences=["END"],
                              messages=[{"role": "user", "content": "count"}]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


def test_anthropic_only_fields_and_betas_reach_anthropic(anth, mock):
    anth.messages.create(model=CLAUDE.alias, max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                         extra_body={"inference_geo": "eu"},
                         extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    sent = mock.only_attempt()
    assert sent.body["inference_geo"] == "eu"
    assert sent.header("anthropic-beta") == "context-1m-2025-08-07"
    # Served by an OpenAI upstream, they are left out (OpenAI would reject them).
    mock.reset()
    anth.messages.create(model=GPT.alias, max_tokens=20, messages=[{"role": "user", "content": "hi"}],
                         extra_body={"inference_geo": "eu"})
    assert "inference_geo" not in mock.only_attempt().body


def test_an_upstream_error_that_echoes_keels_key_does_not_pass_it_on(oai, http, mock):
    mock.script(up.error(401, "invalid_request_error", f"Incorrect API key provided: {UPSTREAM_KEY}."))
    with pytest.raises(openai.APIStatusError) as exc:
        oai.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    assert UPSTREAM_KEY not in exc.value.response.text
    assert "Incorrect API key provided" in exc.value.response.text
    (row,) = wait_rows(http, 1, id=exc.value.response.headers["x-request-id"])
    assert UPSTREAM_KEY not in (row["response_body"] or "")


def test_a_request_abandoned_while_the_upstream_works_is_charged_for_its_prompt(keel_url, http, mock):
    mock.script(up.text("late answer", delay_before_headers_ms=3000))
    rid = f"abandoned-{time.monotonic_ns()}"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{keel_url}/v1/chat/completions", timeout=0.5, headers={"x-request-id": rid},
                   json={"model": GPT.alias, "messages": [{"role": "user", "content": "a prompt that costs money"}]})
    (row,) = wait_rows(http, 1, id=rid)
    assert row["outcome"] == "client_disconnected"
    assert row["tokens_in"] > 0 and row["cost_usd"] > 0, "the upstream was called: its prompt is counted"
    assert row["attempts"][0]["outcome"] == "in_flight"
