"""Virtual keys through the official SDKs: keys made with the admin API, refused when missing, unknown, revoked
or outside their models (in each API's own error format), and a daily budget that 16 concurrent clients cannot
overspend by more than one request's cost."""

from __future__ import annotations

import concurrent.futures
import time

import anthropic
import openai
import pytest

import conftest
from upstream import CLAUDE, GPT

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

ADMIN_KEY = "admin-secret-for-tests"


@pytest.fixture(scope="module")
def secured(_servers, tmp_path_factory):
    """A keel with `[auth] enabled`, in front of the session's mock upstream."""
    mock, _ = _servers
    work = tmp_path_factory.mktemp("keel-auth")
    config = work / "keel.toml"
    conftest._write_config(config, mock.url)
    text = config.read_text()
    assert text.count("[auth]\n") == 1, "the session config has one [auth] table to add to"
    text = text.replace("[auth]\n", "[auth]\nenabled = true\n", 1)
    config.write_text(text)
    _, url = conftest._serve("keel-auth", config, work, {"KEEL_ADMIN_KEY": ADMIN_KEY}, timeout_s=60)
    with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        yield url, admin


def new_key(admin, **fields) -> dict:
    resp = admin.post("/admin/keys", json={"name": "test", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_keys_are_required_and_checked_in_each_apis_format(secured, mock):
    url, admin = secured
    assert httpx.get(f"{url}/health").status_code == 200, "public path"
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": GPT.alias, "messages": []})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-keel-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "invalid_api_key"
    anth = anthropic.Anthropic(base_url=url, api_key="sk-keel-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        anth.messages.create(model=CLAUDE.alias, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["error"]["type"] == "authentication_error"
    assert mock.attempts() == [], "nothing reached the upstream"
    # The refusals are logged.
    deadline = time.monotonic() + 10  # rows are written asynchronously
    while len(rows := admin.get("/admin/requests", params={"status": 401}).json()["data"]) < 3:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert all(r["outcome"] == "rejected" for r in rows)


def test_a_key_works_in_both_sdks_and_is_logged_then_revoked(secured, mock):
    url, admin = secured
    key = new_key(admin, models=[GPT.alias, CLAUDE.alias], tenant="acme")
    assert key["key"].startswith("sk-keel-") and "hash" not in key
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    rid = raw.headers["x-request-id"]
    anth = anthropic.Anthropic(base_url=url, api_key=key["key"], max_retries=0)
    assert anth.messages.create(model=CLAUDE.alias, max_tokens=20, messages=[{"role": "user", "content": "hi"}]).content
    deadline = time.monotonic() + 10
    while not (rows := admin.get("/admin/requests", params={"id": rid}).json()["data"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (rows[0]["key_id"], rows[0]["tenant"]) == (key["id"], "acme")
    listed = admin.get("/admin/keys").json()["data"]
    assert any(k["id"] == key["id"] and k["revoked_ms"] is None for k in listed)
    assert all("hash" not in k and "key" not in k for k in listed)

    # A model outside the key's list: 403 in the API's format.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.embeddings.create(model="embed-test", input="x")
    assert exc.value.code == "model_not_allowed"

    # Revoked: refused from the next request on.
    assert admin.delete(f"/admin/keys/{key['id']}").json() == {"id": key["id"], "revoked": True}
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    assert admin.delete(f"/admin/keys/{key['id']}").status_code == 404
    # A virtual key cannot use the admin API.
    other = new_key(admin)
    resp = httpx.get(f"{url}/admin/keys", headers={"authorization": f"Bearer {other['key']}"})
    assert resp.status_code == 403


def test_bad_key_definitions_are_refused(secured, mock):
    _, admin = secured
    for body in ({"name": ""}, {"name": "x", "budget_daily_usd": -1}, {"name": "x", "rpm": 0}, {"name": "x", "colour": 1}):
        resp = admin.post("/admin/keys", json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request_error"


def test_sixteen_concurrent_clients_cannot_overspend_a_daily_budget(secured, mock):
    url, admin = secured
    budget = 0.002
    key = new_key(admin, budget_daily_usd=budget)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0, timeout=30)
    costs: list[float] = []

    def worker() -> int:
        refused = 0
        while True:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=GPT.alias, max_tokens=16, messages=[{"role": "user", "content": "Say hello to the world"}])
                costs.append(float(raw.headers["x-keel-cost-usd"]))
            except openai.RateLimitError as e:
                assert e.code == "budget_exceeded"
                assert int(e.response.headers["retry-after"]) > 0
                refused += 1
                if refused >= 3:
                    return len(costs)
                time.sleep(0.05)  # let in-flight reservations settle, then try again

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: worker(), range(16)))
    spent = sum(costs)
    one = max(costs)
    assert spent <= budget + one, f"spent {spent} against {budget}"
    assert spent >= budget / 2, f"only {spent} of {budget} was admitted"


def test_a_budgeted_request_without_max_tokens_is_capped_at_what_was_reserved(secured, mock):
    url, admin = secured
    key = new_key(admin, budget_daily_usd=1.0)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0, timeout=30)
    client.chat.completions.create(model=GPT.alias, messages=[{"role": "user", "content": "hi"}])
    sent = mock.only_attempt().body
    # The reservation counted auth.default_output_tokens (4096); the upstream may not produce more.
    assert sent["max_completion_tokens"] == 4096, sent


def test_every_choice_is_reserved_against_the_budget(secured, mock):
    url, admin = secured
    # gpt-test costs $8 per million output tokens: one choice of 1,000 tokens reserves $0.008, four $0.032.
    key = new_key(admin, budget_daily_usd=0.02)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0, timeout=30)
    client.chat.completions.create(model=GPT.alias, max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=GPT.alias, max_tokens=1000, n=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "budget_exceeded"


def test_models_lists_only_what_the_key_may_use(secured, mock):
    url, admin = secured
    key = new_key(admin, models=[GPT.alias])
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == [GPT.alias]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(CLAUDE.alias)
    anyone = openai.OpenAI(base_url=f"{url}/v1", api_key=new_key(admin)["key"], max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as exc:
        anyone.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert CLAUDE.alias not in exc.value.message, "an unknown model's error does not list the configured ones"


def test_the_bearer_scheme_is_case_insensitive(secured, mock):
    url, admin = secured
    key = new_key(admin)
    resp = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"BEARER {key['key']}"},
                      json={"model": GPT.alias, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert resp.status_code == 200, resp.text
