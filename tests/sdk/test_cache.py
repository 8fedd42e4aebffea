"""The response cache through the official SDKs: an identical request answered again without an upstream call
(whole and as a replayed stream, in each API's shape), the semantic layer on the real local MiniLM with its
guards, per-tenant scopes, `keel cache warm`, and what the request log and the metrics record of it.

Cache writes happen just after the response, off the request path, so a test that needs an entry stored repeats
its request until it is a hit (with a deadline) rather than assuming the very next one is. Every test works in a
tenant of its own (a fresh key) or with prompts of its own, so that none depends on another's entries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anthropic
import openai
import pytest

import conftest
import upstream as up
from conftest import _Process, _binary
from upstream import CLAUDE, GPT

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

ADMIN_KEY = "admin-secret-for-cache-tests"
EMBEDDINGS = "all-minilm-l6-v2"  # the local embeddings model: the semantic cache's default
SEMANTIC = "gpt-semantic"  # gpt-test's upstream, with the semantic cache on
LOOSE = "gpt-semantic-loose"  # the same at a lower threshold than the default, as a user may set it
LOOSE_THRESHOLD = 0.8
STARTUP_TIMEOUT_S = 120  # loading the local embeddings model takes a while in a debug build
HIT_TIMEOUT_S = 10.0


@dataclass
class Keel:
    url: str
    admin: httpx.Client
    process: _Process


@pytest.fixture(scope="module")
def cached(_servers, tmp_path_factory):
    """A keel with `[auth] enabled` and the cache on (read-write on gpt-test and claude-test, semantic on
    gpt-semantic with the local MiniLM), in front of the session's mock upstream."""
    mock, _ = _servers
    work = tmp_path_factory.mktemp("keel-cache")
    config = work / "keel.toml"
    conftest._write_config(config, mock.url)
    text = config.read_text()
    for table in ("[cache", "[providers.local]", f"[models.{EMBEDDINGS}]", f"[models.{SEMANTIC}]", f"[models.{LOOSE}]"):
        assert table not in text, f"the session config now has {table}: merge instead of appending"
    assert text.count("[auth]\n") == 1, "the session config has one [auth] table to add to"
    text = text.replace("[auth]\n", "[auth]\nenabled = true\n", 1)
    for route in (GPT, CLAUDE):
        table = f'[models.{route.alias}]\nprovider = "{route.provider}"\nmodel = "{route.upstream_model}"\n'
        assert text.count(table) == 1, f"expected one alias {route.alias}"
        text = text.replace(table, table + 'cache = { mode = "read-write", ttl_seconds = 600 }\n')
    text += f"""
[cache]
backend = "memory"

[cache.semantic]
model = "{EMBEDDINGS}"

[providers.local]
kind = "local"

[models.{EMBEDDINGS}]
provider = "local"
model = "{EMBEDDINGS}"

[models.{SEMANTIC}]
provider = "{GPT.provider}"
model = "{GPT.upstream_model}"
cache = {{ mode = "read-write", semantic = true }}

[models.{LOOSE}]
provider = "{GPT.provider}"
model = "{GPT.upstream_model}"
cache = {{ mode = "read-write", semantic = true, threshold = {LOOSE_THRESHOLD} }}
"""
    config.write_text(text)
    p, url = conftest._serve("keel-cache", config, work, {"KEEL_ADMIN_KEY": ADMIN_KEY}, timeout_s=STARTUP_TIMEOUT_S)
    with httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        yield Keel(url, admin, p)


# --------------------------------------------------------------------------------------------- helpers


def uid() -> str:
    return uuid.uuid4().hex


def new_key(keel: Keel, tenant: str | None = None) -> str:
    body: dict[str, Any] = {"name": "cache-test"}
    if tenant is not None:
        body["tenant"] = tenant
    resp = keel.admin.post("/admin/keys", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def oai_client(keel: Keel, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{keel.url}/v1", api_key=key, max_retries=0, timeout=60)


def anth_client(keel: Keel, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=keel.url, api_key=key, max_retries=0, timeout=60)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def until_cached(send: Callable[[], tuple[Any, Any]], mock: up.MockUpstream, want: tuple[str, ...] = ("hit",),
                 timeout: float = HIT_TIMEOUT_S) -> tuple[Any, Any, int]:
    """Repeats `send` (which returns the response headers and the parsed answer) until keel answers it from the
    cache (`x-keel-cache` in `want`); returns the hit's headers and answer and how many misses came first. A hit
    must not reach the upstream."""
    misses = 0
    deadline = time.monotonic() + timeout
    while True:
        before = len(mock.attempts())
        headers, value = send()
        outcome = headers.get("x-keel-cache")
        if outcome in want:
            assert len(mock.attempts()) == before, "a cache hit called the upstream"
            return headers, value, misses
        assert outcome == "miss", f"x-keel-cache: {outcome!r} (expected one of {want} or, until stored, 'miss')"
        misses += 1
        if time.monotonic() > deadline:
            pytest.fail(f"still a miss after {misses} requests in {timeout}s", pytrace=False)
        time.sleep(0.05)


def rows(keel: Keel, **params) -> list[dict]:
    resp = keel.admin.get("/admin/requests", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def row_of(keel: Keel, request_id: str, timeout: float = 10.0) -> dict:
    """The log row of one request (rows are written asynchronously)."""
    deadline = time.monotonic() + timeout
    while not (found := rows(keel, id=request_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"no log row for request {request_id} within {timeout}s", pytrace=False)
        time.sleep(0.05)
    assert len(found) == 1
    return found[0]


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)")


def metric(keel: Keel, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    resp = keel.admin.get("/metrics")
    assert resp.status_code == 200, resp.text
    total = 0.0
    for line in resp.text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m["value"])
    return total


def chat_text(chunks: list) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


def finish_reasons(chunks: list) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


# --------------------------------------------------------------------------------------------- exact


def test_an_identical_request_is_answered_from_the_cache_without_an_upstream_call(cached, mock):
    client = oai_client(cached, new_key(cached, tenant=f"exact-{uid()}"))
    answer = f"The cached answer {uid()}"
    mock.set_default(up.text(answer))  # every upstream answer is the same, whichever request stored the entry
    messages = [user(f"Explain response caching {uid()}")]

    def send(temperature: float = 0.2, **kw):
        raw = client.chat.completions.with_raw_response.create(
            model=GPT.alias, messages=messages, temperature=temperature, **kw)
        return raw.headers, raw.parse()

    headers, first = send()
    assert headers["x-keel-cache"] == "miss"
    assert "x-keel-cache-similarity" not in headers
    assert first.choices[0].message.content == answer
    assert len(mock.attempts()) == 1

    headers, second, misses = until_cached(send, mock)
    assert len(mock.attempts()) == 1 + misses, "only the misses reached the upstream"
    assert "x-keel-cache-similarity" not in headers, "an exact hit has no similarity"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.choices[0].finish_reason == first.choices[0].finish_reason == "stop"
    assert second.model == first.model == GPT.upstream_model
    assert second.usage == first.usage
    assert second.id != first.id, "the hit answers under its own request's id"
    assert float(headers["x-keel-cost-usd"]) == 0.0, "a hit costs nothing"

    # Fields that cannot change the answer are not in the key.
    n = len(mock.attempts())
    headers, _ = send(user="someone-else", metadata={"k": "v"}, store=False)
    assert headers["x-keel-cache"] == "hit"
    assert len(mock.attempts()) == n

    # A different temperature is another request.
    headers, other = send(temperature=0.3)
    assert headers["x-keel-cache"] == "miss"
    assert len(mock.attempts()) == n + 1
    assert mock.attempts()[-1].body["temperature"] == 0.3

    # `x-keel-cache: write` skips the read (and refreshes the entry); `off` does not consult the cache at all.
    headers, _ = send(extra_headers={"x-keel-cache": "write"})
    assert headers["x-keel-cache"] == "bypass"
    assert len(mock.attempts()) == n + 2
    headers, _ = send(extra_headers={"x-keel-cache": "off"})
    assert "x-keel-cache" not in headers
    assert len(mock.attempts()) == n + 3


# --------------------------------------------------------------------------------------------- streams


def test_an_openai_stream_is_replayed_from_the_cache(cached, mock):
    client = oai_client(cached, new_key(cached, tenant=f"stream-{uid()}"))
    answer = f"Streams are recorded as they pass and replayed later {uid()}"
    mock.set_default(up.text(answer))
    messages = [user(f"Tell me about streaming {uid()}")]

    def send():
        raw = client.chat.completions.with_raw_response.create(
            model=GPT.alias, messages=messages, stream=True, stream_options={"include_usage": True})
        assert raw.headers["content-type"].startswith("text/event-stream")
        return raw.headers, list(raw.parse())  # the SDK raises on a stream that ends in an error

    headers, live = send()
    assert headers["x-keel-cache"] == "miss"
    assert chat_text(live) == answer
    assert finish_reasons(live) == ["stop"]
    live_usage = live[-1].usage
    assert live_usage is not None and live_usage.completion_tokens == up.words(answer)

    headers, replay, misses = until_cached(send, mock)
    assert len(mock.attempts()) == 1 + misses
    assert chat_text(replay) == chat_text(live)
    assert finish_reasons(replay) == ["stop"], "the replayed stream ends normally"
    assert {c.model for c in replay} == {GPT.upstream_model}
    assert len({c.id for c in replay}) == 1
    assert replay[-1].usage == live_usage, "the replay reports the usage it was asked for"

    # `stream` is not in the key: the same request unstreamed is answered from the streamed answer.
    n = len(mock.attempts())
    raw = client.chat.completions.with_raw_response.create(model=GPT.alias, messages=messages)
    assert raw.headers["x-keel-cache"] == "hit"
    assert raw.parse().choices[0].message.content == answer
    assert len(mock.attempts()) == n


def test_an_anthropic_stream_is_replayed_from_the_cache(cached, mock):
    client = anth_client(cached, new_key(cached, tenant=f"anthropic-{uid()}"))
    answer = f"Messages streams are replayed event by event {uid()}"
    mock.set_default(up.text(answer))
    messages = [user(f"Tell me about Messages streams {uid()}")]

    def send():
        with client.messages.stream(model=CLAUDE.alias, max_tokens=256, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
            return stream.response.headers, (text, final)

    headers, (live_text, live) = send()
    assert headers["x-keel-cache"] == "miss"
    assert live_text == answer and live.stop_reason == "end_turn"

    headers, (text, final), misses = until_cached(send, mock)
    assert len(mock.attempts()) == 1 + misses
    assert text == live_text
    assert final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["text"]
    assert final.model == live.model == CLAUDE.upstream_model
    assert final.usage.output_tokens == live.usage.output_tokens

    # The raw events of the replay: a well-formed Messages stream, ending with message_stop.
    n = len(mock.attempts())
    raw = client.messages.with_raw_response.create(model=CLAUDE.alias, max_tokens=256, messages=messages, stream=True)
    assert raw.headers["x-keel-cache"] == "hit"
    events = list(raw.parse())
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop", types
    assert "content_block_start" in types and "content_block_stop" in types
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert "".join(d.text for d in deltas if d.type == "text_delta") == answer
    assert [e.delta.stop_reason for e in events if e.type == "message_delta"] == ["end_turn"]
    assert len(mock.attempts()) == n


# --------------------------------------------------------------------------------------------- semantic


def semantic_asker(keel: Keel, tenant: str, alias: str = SEMANTIC):
    """`ask(question)` returns a sender of `question` to the semantic alias with a key of `tenant` (the tenant is
    part of the semantic scope, so each tenant starts with an empty semantic cache)."""
    client = oai_client(keel, new_key(keel, tenant=tenant))

    def ask(question: str):
        def send():
            raw = client.chat.completions.with_raw_response.create(model=alias, messages=[user(question)])
            return raw.headers, raw.parse()
        return send
    return ask


def test_the_semantic_cache_answers_a_paraphrase(cached, mock):
    assert "semantic cache on" in cached.process.log_text(), "keel started without its semantic cache"
    ask = semantic_asker(cached, f"semantic-{uid()}")
    answer = "Use the reset link on the sign-in page."
    mock.set_default(up.text(answer))
    question = "How do I reset my password?"
    headers, first = ask(question)()
    assert headers["x-keel-cache"] == "miss"
    # Stored: the semantic entry as the answer is returned, the exact one just after.
    until_cached(ask(question), mock, want=("hit", "semantic_hit"))

    n = len(mock.attempts())
    headers, para = ask("How can I reset my password?")()
    assert headers["x-keel-cache"] == "semantic_hit"
    similarity = float(headers["x-keel-cache-similarity"])
    assert 0.8 < similarity <= 1.0
    assert para.choices[0].message.content == first.choices[0].message.content == answer
    assert len(mock.attempts()) == n, "a semantic hit does not call the upstream"
    r = row_of(cached, headers["x-request-id"])
    assert (r["cache"], r["cost_usd"]) == ("semantic_hit", 0)
    assert r["metadata"]["cache_similarity"] == pytest.approx(similarity, abs=1e-4)
    assert r["metadata"]["cache_source"] == GPT.served_by

    # Another question is not answered from it.
    mock.set_default(up.text("Sunny."))
    headers, weather = ask("What's the weather in Paris?")()
    assert headers["x-keel-cache"] == "miss"
    assert "x-keel-cache-similarity" not in headers
    assert weather.choices[0].message.content == "Sunny."
    assert len(mock.attempts()) == n + 1

    # Nor is another tenant's paraphrase.
    headers, _ = semantic_asker(cached, f"semantic-other-{uid()}")("How can I reset my password?")()
    assert headers["x-keel-cache"] == "miss"


@pytest.mark.parametrize("stored, asked", [
    pytest.param("Refund order 1234", "Refund order 1235", id="number"),
    pytest.param("Please refund my order number 1234.", "Please refund my order number 1235.", id="number-long"),
    pytest.param("Please explain why the deployment of the billing service failed last night.",
                 "Please explain why the deployment of the billing service did not fail last night.", id="negation"),
    # The contrast guard: wording that asks for something else (docs/cache.md).
    pytest.param("Is it safe to eat raw cookie dough?", "Is it unsafe to eat raw cookie dough?", id="safe-unsafe"),
    pytest.param("How do I sort a list in ascending order in Python?",
                 "How do I sort a list in descending order in Python?", id="ascending-descending"),
    pytest.param("What is the time complexity of merge sort?", "What is the space complexity of merge sort?",
                 id="time-space"),
    pytest.param("What are the causes of the French Revolution?",
                 "What are the consequences of the French Revolution?", id="causes-consequences"),
    pytest.param("Write a haiku about autumn leaves.", "Write a limerick about autumn leaves.", id="haiku-limerick"),
    pytest.param("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", id="direction"),
])
def test_the_semantic_guards_refuse_a_close_but_different_request(cached, mock, stored, asked):
    """Pairs whose cosine alone would be a hit on an alias with a threshold below the default (0.8; the default
    is 0.92, docs/cache.md) but whose answers differ: the guards turn the candidate down."""
    ask = semantic_asker(cached, f"guards-{uid()}", LOOSE)
    data = oai_client(cached, ADMIN_KEY).embeddings.create(model=EMBEDDINGS, input=[stored, asked]).data
    cosine = sum(p * q for p, q in zip(data[0].embedding, data[1].embedding))
    assert cosine >= LOOSE_THRESHOLD + 0.02, f"the test needs a pair above the alias's threshold, got {cosine:.4f}"
    mock.set_default(up.text("The stored answer."))
    until_cached(ask(stored), mock, want=("hit", "semantic_hit"))

    mock.set_default(up.text("A fresh answer."))
    n = len(mock.attempts())
    headers, got = ask(asked)()
    assert headers["x-keel-cache"] == "miss", (headers.get("x-keel-cache-similarity"), got.choices[0].message.content)
    assert got.choices[0].message.content == "A fresh answer."
    assert len(mock.attempts()) == n + 1


def test_a_paraphrase_below_the_default_threshold_hits_on_a_looser_alias(cached, mock):
    """The per-alias threshold is what a hit needs: a paraphrase at about 0.87 misses at the default (0.92) and
    hits on the alias set to 0.8."""
    stored, asked = "How does photosynthesis work?", "What is the process of photosynthesis?"
    data = oai_client(cached, ADMIN_KEY).embeddings.create(model=EMBEDDINGS, input=[stored, asked]).data
    cosine = sum(p * q for p, q in zip(data[0].embedding, data[1].embedding))
    assert LOOSE_THRESHOLD < cosine < 0.92, f"the test needs a pair between the thresholds, got {cosine:.4f}"
    mock.set_default(up.text("Light to sugar."))
    for alias, want in ((SEMANTIC, "miss"), (LOOSE, "semantic_hit")):
        ask = semantic_asker(cached, f"threshold-{uid()}", alias)
        until_cached(ask(stored), mock, want=("hit", "semantic_hit"))
        headers, got = ask(asked)()
        assert headers["x-keel-cache"] == want, (alias, headers.get("x-keel-cache-similarity"))
        assert got.choices[0].message.content == "Light to sugar."


TOPICS = ["bread", "glass", "paper", "chess", "jazz", "tea", "silk", "coffee", "soap", "rice", "cheese", "wine",
          "pottery", "sugar", "salt", "chocolate", "cotton", "steel", "printing", "clocks", "bicycles", "maps",
          "umbrellas", "kites"]


def test_concurrent_semantic_lookups_are_all_embedded_and_stored(cached, mock):
    """As many semantic lookups at once as clients send (24 here): none is skipped for a full embeddings queue,
    and each answer is stored for semantic hits."""
    assert "keel_cache_semantic_embed_failures_total" in cached.admin.get("/metrics").text
    failures = metric(cached, "keel_cache_semantic_embed_failures_total")
    stored = metric(cached, "keel_cache_stored_total")
    ask = semantic_asker(cached, f"concurrent-{uid()}")
    mock.set_default(up.text("A long story."))
    with ThreadPoolExecutor(len(TOPICS)) as pool:
        first = list(pool.map(lambda t: ask(f"What is the history of {t}?")(), TOPICS))
    assert [h["x-keel-cache"] for h, _ in first] == ["miss"] * len(TOPICS)
    assert metric(cached, "keel_cache_semantic_embed_failures_total") == failures
    deadline = time.monotonic() + HIT_TIMEOUT_S
    while metric(cached, "keel_cache_stored_total") < stored + len(TOPICS):
        assert time.monotonic() < deadline, "the answers were not all stored"
        time.sleep(0.05)
    n = len(mock.attempts())
    for topic in TOPICS:
        headers, _ = ask(f"What's the history of {topic}?")()
        assert headers["x-keel-cache"] == "semantic_hit", (topic, headers.get("x-keel-cache"))
    assert len(mock.attempts()) == n


# --------------------------------------------------------------------------------------------- tenants


def test_the_cache_is_per_tenant(cached, mock):
    tenant, other_tenant = f"acme-{uid()}", f"globex-{uid()}"
    mock.set_default(up.text(f"Tenant answer {uid()}"))
    messages = [user(f"What is on the tenant menu {uid()}")]

    def sender(key: str):
        client = oai_client(cached, key)

        def send():
            raw = client.chat.completions.with_raw_response.create(model=GPT.alias, messages=messages)
            return raw.headers, raw.parse()
        return send

    first = sender(new_key(cached, tenant=tenant))
    headers, answer = first()
    assert headers["x-keel-cache"] == "miss"
    until_cached(first, mock)

    n = len(mock.attempts())
    headers, _ = sender(new_key(cached, tenant=other_tenant))()
    assert headers["x-keel-cache"] == "miss", "another tenant's identical request"
    assert len(mock.attempts()) == n + 1

    headers, _ = sender(new_key(cached))()
    assert headers["x-keel-cache"] == "miss", "a key without a tenant is a scope of its own"

    n = len(mock.attempts())
    headers, same = sender(new_key(cached, tenant=tenant))()
    assert headers["x-keel-cache"] == "hit", "another key of the same tenant"
    assert same.choices[0].message.content == answer.choices[0].message.content
    assert len(mock.attempts()) == n


# --------------------------------------------------------------------------------------------- keel cache warm


def warm(keel: Keel, file: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [str(_binary("KEEL_BIN", "keel")), "cache", "warm", str(file), "--url", keel.url, "--api-key", ADMIN_KEY,
            *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("KEEL_URL", "KEEL_API_KEY")}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def test_keel_cache_warm_stores_answers_the_sdk_then_gets(cached, mock, tmp_path):
    requests = [
        {"model": GPT.alias, "messages": [user(f"Warm question one {uid()}")]},
        {"model": GPT.alias, "messages": [{"role": "system", "content": "Be brief."},
                                          user(f"Warm question two {uid()}")], "temperature": 0.5, "max_tokens": 64},
    ]
    file = tmp_path / "warm.jsonl"
    file.write_text("# predictable requests\n" + "".join(json.dumps(r) + "\n" for r in requests) + "\n")
    warmed = f"Warmed answer {uid()}"
    mock.set_default(up.text(warmed))

    done = warm(cached, file, "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warmed 2 requests: 2 stored, 0 already cached, 0 not cacheable, 0 failed" in done.stdout, done.stdout
    assert len(mock.attempts()) == 2

    # The SDK's requests (the admin key: the same, empty, tenant) are answered with what was warmed. Until the
    # entries are written they are asked with `x-keel-cache: read`, which does not store the later answer.
    mock.set_default(up.text("not the warmed answer"))
    client = oai_client(cached, ADMIN_KEY)
    for body in requests:
        def send(body=body):
            raw = client.chat.completions.with_raw_response.create(**body, extra_headers={"x-keel-cache": "read"})
            return raw.headers, raw.parse()
        _, answer, _ = until_cached(send, mock)
        assert answer.choices[0].message.content == warmed

    n = len(mock.attempts())
    again = warm(cached, file)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "warmed 2 requests: 0 stored, 2 already cached, 0 not cacheable, 0 failed" in again.stdout, again.stdout
    assert len(mock.attempts()) == n

    refreshed = warm(cached, file, "--refresh")
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert "warmed 2 requests: 2 stored, 0 already cached, 0 not cacheable, 0 failed" in refreshed.stdout
    assert len(mock.attempts()) == n + 2

    # A request keel refuses counts as failed, and the exit code says so.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"model": "no-such-model", "messages": [user("hi")]}) + "\n")
    failed = warm(cached, bad)
    assert failed.returncode != 0
    assert "warmed 1 requests: 0 stored, 0 already cached, 0 not cacheable, 1 failed" in failed.stdout, failed.stdout
    assert "line 1" in failed.stderr


# --------------------------------------------------------------------------------------------- log and metrics


def test_the_log_and_the_metrics_record_hits(cached, mock):
    client = oai_client(cached, new_key(cached, tenant=f"log-{uid()}"))
    mock.set_default(up.text(f"Logged answer {uid()}"))
    messages = [user(f"Log this cached request {uid()}")]
    hits_before = metric(cached, "keel_cache_lookups_total", outcome="hit")
    misses_before = metric(cached, "keel_cache_lookups_total", outcome="miss")
    saved_before = metric(cached, "keel_cache_saved_usd_total")

    def send():
        raw = client.chat.completions.with_raw_response.create(model=GPT.alias, messages=messages)
        return raw.headers, raw.parse()

    headers, _ = send()
    assert headers["x-keel-cache"] == "miss"
    miss = row_of(cached, headers["x-request-id"])
    assert miss["cache"] == "miss"
    assert miss["cost_usd"] > 0, "mock-gpt is priced"
    assert [a["outcome"] for a in miss["attempts"]] == ["ok"]

    headers, answer, misses = until_cached(send, mock)
    hit = row_of(cached, headers["x-request-id"])
    assert (hit["status"], hit["outcome"], hit["cache"]) == (200, "ok", "hit")
    assert hit["cost_usd"] == 0
    assert hit["attempts"] == []
    assert hit["tokens_out"] == answer.usage.completion_tokens
    assert hit["metadata"]["cache_source"] == GPT.served_by
    assert hit["metadata"]["cache_saved_usd"] == pytest.approx(miss["cost_usd"])
    assert "cache_similarity" not in hit["metadata"]
    assert answer.choices[0].message.content in hit["response_body"]

    # Every lookup is counted by outcome, and what the hit saved is added up.
    deadline = time.monotonic() + 10
    while True:
        hits = metric(cached, "keel_cache_lookups_total", outcome="hit")
        missed = metric(cached, "keel_cache_lookups_total", outcome="miss")
        saved = metric(cached, "keel_cache_saved_usd_total")
        if hits >= hits_before + 1 and missed >= misses_before + 1 + misses:
            break
        assert time.monotonic() < deadline, (hits_before, hits, misses_before, missed)
        time.sleep(0.05)
    assert hits > 0
    assert saved == pytest.approx(saved_before + miss["cost_usd"], rel=1e-6)


# --------------------------------------------------------------------------------------------- refusals


def test_a_bad_cache_header_is_refused_in_each_apis_format(cached, mock):
    client = oai_client(cached, new_key(cached))
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=GPT.alias, messages=[user("hi")],
                                       extra_headers={"x-keel-cache": "sometimes"})
    assert exc.value.param == "x-keel-cache"
    assert exc.value.type == "invalid_request_error"
    assert "x-keel-cache" in exc.value.message

    anth = anth_client(cached, new_key(cached))
    with pytest.raises(anthropic.BadRequestError) as exc2:
        anth.messages.create(model=CLAUDE.alias, max_tokens=16, messages=[user("hi")],
                             extra_headers={"x-keel-cache": "sometimes"})
    assert exc2.value.body["error"]["type"] == "invalid_request_error"
    assert mock.attempts() == [], "nothing reached the upstream"
    r = row_of(cached, exc.value.response.headers["x-request-id"])
    assert (r["status"], r["outcome"]) == (400, "rejected")
