"""The request log and metrics as an operator sees them: every request the SDKs make is recorded exactly once
(`GET /admin/requests`), whatever its outcome (answer, upstream error, rejected body, client gone mid-stream),
with its attempts, usage, cost and bodies; the cost is also in `x-keel-cost-usd` and in `/metrics`."""

from __future__ import annotations

import time

import openai
import pytest

import upstream as up
from upstream import GPT, CLAUDE

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]


def rows(http, **params) -> list[dict]:
    resp = http.get("/admin/requests", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def row_of(http, request_id: str, timeout: float = 10.0) -> dict:
    """The log row of one request: rows are written asynchronously, so wait until it is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(http, id=request_id)
        if found:
            assert len(found) == 1
            return found[0]
        if time.monotonic() > deadline:
            pytest.fail(f"no log row for request {request_id} within {timeout}s")
        time.sleep(0.05)


def test_a_chat_completion_is_logged_with_usage_cost_and_bodies(oai, http, mock):
    raw = oai.chat.completions.with_raw_response.create(
        model=GPT.alias,
        messages=[{"role": "user", "content": "Say hello to the world"}],
        extra_headers={"x-keel-tags": "checkout,beta", "x-keel-metadata": '{"team": "payments"}'},
        user="user-42",
    )
    resp = raw.parse()
    rid = raw.headers["x-request-id"]
    r = row_of(http, rid)
    assert (r["api"], r["endpoint"], r["status"], r["outcome"], r["stream"]) == ("openai", "chat", 200, "ok", False)
    assert r["model_requested"] == GPT.alias and r["model_served"] == GPT.served_by
    assert r["tokens_in"] == resp.usage.prompt_tokens and r["tokens_out"] == resp.usage.completion_tokens
    # mock-gpt is priced at $2 / $8 per million input / output tokens in the test config.
    expected = (resp.usage.prompt_tokens * 2.0 + resp.usage.completion_tokens * 8.0) / 1e6
    assert r["cost_usd"] == pytest.approx(expected)
    assert float(raw.headers["x-keel-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    assert [a["outcome"] for a in r["attempts"]] == ["ok"]
    assert "Say hello to the world" in r["request_body"]
    assert resp.choices[0].message.content in r["response_body"]
    assert r["metadata"] == {"team": "payments", "tags": ["checkout", "beta"], "user": "user-42"}


def test_an_upstream_error_is_logged_with_its_class(oai, http, mock):
    mock.script(up.error(429, "rate_limit_error", "slow down"))
    with pytest.raises(openai.RateLimitError) as exc:
        oai.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    r = row_of(http, exc.value.response.headers["x-request-id"])
    assert (r["status"], r["outcome"], r["error_class"]) == (429, "error", "rate_limited")
    assert r["attempts"][0]["outcome"] == "rate_limited" and r["attempts"][0]["status"] == 429
    assert r["cost_usd"] is None


def test_a_rejected_body_is_logged(http, mock):
    resp = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    r = row_of(http, resp.headers["x-request-id"])
    assert (r["status"], r["outcome"], r["model_requested"]) == (400, "rejected", None)
    assert r["attempts"] == []


def test_a_client_that_leaves_mid_stream_leaves_one_complete_row(keel_url, http, mock):
    # A long, slow stream; the client reads the first chunk and goes away.
    mock.script(up.text(" ".join(f"word{i}" for i in range(200)), chunk_delay_ms=20))
    with httpx.Client(base_url=keel_url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json={
            "model": GPT.alias, "stream": True, "messages": [{"role": "user", "content": "long please"}],
        }) as resp:
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            for line in resp.iter_lines():
                if line.startswith("data: ") and "word" in line:
                    break
    r = row_of(http, rid)
    assert (r["status"], r["outcome"], r["stream"]) == (200, "client_disconnected", True)
    assert r["ttft_ms"] is not None and r["ttft_ms"] <= r["latency_ms"]
    assert r["model_served"] == GPT.served_by
    assert r["tokens_out"] is not None and r["tokens_out"] > 0, "what was generated so far is counted"
    assert "word0" in r["response_body"]


def test_streams_are_logged_with_time_to_first_token_for_both_apis(oai, anth, http, mock):
    stream = oai.chat.completions.with_raw_response.create(
        model=GPT.alias, stream=True, messages=[{"role": "user", "content": "Say hello"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    r = row_of(http, stream.headers["x-request-id"])
    assert (r["outcome"], r["stream"]) == ("ok", True)
    assert r["tokens_in"] > 0 and r["tokens_out"] > 0, "usage from the upstream's usage chunk"
    assert text in r["response_body"]

    with anth.messages.with_streaming_response.create(
            model=CLAUDE.alias, max_tokens=50, stream=True,
            messages=[{"role": "user", "content": "Say hello"}]) as resp:
        rid = resp.headers["x-request-id"]
        for _ in resp.iter_lines():
            pass
    r = row_of(http, rid)
    assert (r["api"], r["endpoint"], r["outcome"], r["model_served"]) == ("anthropic", "messages", "ok", CLAUDE.served_by)
    assert r["ttft_ms"] is not None


def test_filters_and_metrics_agree_with_the_log(oai, http, mock):
    oai.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "priced"}])
    ids = [oai.embeddings.with_raw_response.create(model="embed-test", input=["one", "two"]).headers["x-request-id"]
           for _ in range(3)]
    found = [row_of(http, rid) for rid in ids]  # rows are written asynchronously: wait for each
    assert all(r["endpoint"] == "embeddings" and r["tokens_in"] > 0 for r in found)
    assert all(r["tokens_in"] == found[0]["tokens_in"] for r in found)
    listed = rows(http, model="embed-test", outcome="ok", limit=3)
    assert len(listed) == 3 and all(r["model_requested"] == "embed-test" for r in listed), "filters and limit"
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    text = metrics.text
    line = next(l for l in text.splitlines()
                if l.startswith("keel_requests_total{") and 'model="embed-test"' in l and 'outcome="ok"' in l)
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert "keel_log_queue_rows" in text and "keel_circuit_state" in text
    assert 'keel_cost_usd_total{model="gpt-test"}' in text


def test_admin_requests_rejects_bad_filters(http, mock):
    resp = http.get("/admin/requests", params={"status": "abc"})
    assert resp.status_code == 400
    assert "invalid query" in resp.json()["error"]["message"]
