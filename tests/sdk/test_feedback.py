"""Production quality through the official SDKs: feedback on an answer the moment it arrives (by keel's request id
or the client's own), bad feedback refused in the API's error format with nothing stored, quality per template
version from /admin/quality, and the online evaluation of the `capital` template scoring answers off the request
path."""

from __future__ import annotations

import time
import uuid

import pytest

from test_request_log import row_of


def give(http, **body):
    return http.post("/v1/feedback", json=body)


def feedback_of(http, request_id: str) -> list[dict]:
    resp = http.get("/admin/feedback", params={"request_id": request_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_feedback_right_after_an_openai_answer_is_stored_with_its_request(oai, http):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "Rate me"}])
    request_id = raw.headers["x-request-id"]
    # At once: the log writer may not have stored the row yet; keel knows the request all the same.
    resp = give(http, request_id=request_id, thumbs="up", comment="spot on")
    assert resp.status_code == 201, resp.text
    stored = resp.json()
    assert stored["object"] == "feedback" and stored["request_id"] == request_id
    assert stored["score"] == 1.0 and stored["source"] == "user" and stored["name"] == "user"
    # Given again, it replaces the earlier (a user changed their mind); another name is another rating.
    assert give(http, request_id=request_id, thumbs="down", correction="A better answer").status_code == 201
    assert give(http, request_id=request_id, name="tone", score=0.75).status_code == 201
    got = {f["name"]: f for f in feedback_of(http, request_id)}
    assert set(got) == {"user", "tone"}
    assert got["user"]["score"] == 0.0 and got["user"]["correction"] == "A better answer"
    assert got["tone"]["score"] == 0.75
    row_of(http, request_id)  # the request itself is logged


def test_feedback_by_the_clients_own_request_id_and_from_the_anthropic_sdk(oai, anth, http):
    mine = f"client-{uuid.uuid4()}"
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": mine})
    assert raw.headers["x-request-id"] == mine
    resp = give(http, request_id=mine, score=0.9)
    assert resp.status_code == 201, resp.text
    keel_id = resp.json()["request_id"]
    assert keel_id != mine, "stored against keel's own id of the request"
    assert row_of(http, keel_id)["client_request_id"] == mine

    message = anth.messages.create(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert message._request_id
    resp = give(http, request_id=message._request_id, thumbs="up")
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("body,status,param", [
    ({"request_id": "no-such-request", "thumbs": "up"}, 404, "request_id"),
    ({"score": 1.0}, 400, None),
    ({"request_id": "x", "score": 1.5}, 400, "score"),
    ({"request_id": "x", "score": 1.0, "thumbs": "up"}, 400, "score"),
    ({"request_id": "x", "thumbs": "sideways"}, 400, None),
    ({"request_id": "x"}, 400, "score"),
    ({"request_id": "x", "thumbs": "up", "stars": 5}, 400, None),
    ({"request_id": "x", "thumbs": "up", "name": "no spaces"}, 400, "name"),
])
def test_bad_feedback_is_refused_in_the_openai_error_format(http, body, status, param):
    resp = give(http, **body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"]
    if param:
        assert error["param"] == param


def test_a_refused_feedback_changes_nothing(oai, http):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "keep me"}])
    request_id = raw.headers["x-request-id"]
    assert give(http, request_id=request_id, score=-0.1).status_code == 400
    for raw_score in ["NaN", "1e999", "\"1\""]:
        resp = http.post("/v1/feedback", content=f'{{"request_id": "{request_id}", "score": {raw_score}}}',
                         headers={"content-type": "application/json"})
        assert resp.status_code == 400, (raw_score, resp.text)
    assert feedback_of(http, request_id) == []


def test_quality_per_template_version_and_the_online_check(oai, http):
    since_ms = int(time.time() * 1000) - 1
    ids = []
    for country in ["France", "Peru", "Chile"]:
        raw = oai.chat.completions.with_raw_response.create(
            model="capital", messages=[], extra_body={"keel_template": {"name": "capital", "variables": {"country": country}}})
        ids.append(raw.headers["x-request-id"])
        version = raw.headers["x-keel-template"].split("@")[1]
    assert give(http, request_id=ids[0], thumbs="up").status_code == 201
    assert give(http, request_id=ids[1], thumbs="down").status_code == 201
    for i in ids:
        row_of(http, i)

    # The online evaluation checks every answer of the template (the mock echoes a whole sentence, so the
    # one-word check fails) and stores the score with the request, off the request path.
    deadline = time.monotonic() + 15
    while True:
        checks = [f for i in ids for f in feedback_of(http, i) if f["source"] == "check"]
        if len(checks) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(checks) == 3, checks
    assert {c["name"] for c in checks} == {"capital-one-word"}
    assert all(c["score"] == 0.0 for c in checks)

    resp = http.get("/admin/quality", params={"template": "capital", "since_ms": since_ms, "bucket": "hour"})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert len(data) == 1, data
    q = data[0]
    assert (q["template"], q["template_version"], q["route"]) == ("capital", version, "gpt-test")
    assert (q["requests"], q["errors"], q["feedback"], q["positive"]) == (3, 0, 2, 1)
    assert q["feedback_rate"] == pytest.approx(2 / 3) and q["positive_rate"] == 0.5
    assert (q["evaluated"], q["eval_mean"]) == (3, 0.0)
    assert http.get("/admin/quality", params={"bucket": "fortnight"}).status_code == 400


def test_feedback_is_counted_in_the_metrics(oai, http):
    raw = oai.chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "m"}])
    before = http.get("/metrics").text
    assert give(http, request_id=raw.headers["x-request-id"], thumbs="up").status_code == 201
    after = http.get("/metrics").text

    def count(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('keel_feedback_total{verdict="positive"}'):
                return float(line.split()[-1])
        return 0.0

    assert count(after) == count(before) + 1
    assert 'keel_online_evals_total{outcome="evaluated"}' in after
