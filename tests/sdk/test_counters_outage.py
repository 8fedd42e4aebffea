"""Budgets on a shared Redis that fails: a Redis that restarts empty is seeded again from the logged spend (never
from zero), and while Redis is down keyed requests get what `[auth] on_counters_error` says: refused in the API's
format (`refuse`, the default) or served unmetered (`admit`), counted in /metrics either way.

Each test runs its own redis-server on a free port: the machine's shared Redis is never restarted."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import openai
import pytest

import conftest
from upstream import GPT

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

ADMIN_KEY = "admin-secret-for-counters"


class Redis:
    """A private redis-server on `port`, keeping nothing on disk (a restart loses every counter)."""

    def __init__(self, port: int, work: Path) -> None:
        self.port = port
        self.work = work
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not start within 20 s"
            assert self.proc.poll() is None, "redis-server exited"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    r = Redis(conftest._free_port(), tmp_path)
    r.start()
    yield r
    r.stop()


def serve(mock, redis: Redis, work: Path, on_error: str) -> str:
    config = work / f"keel-{on_error}.toml"
    conftest._write_config(config, mock.url)
    text = config.read_text()
    assert text.count("[auth]\n") == 1, "the session config has one [auth] table to add to"
    text = text.replace(
        "[auth]\n",
        f'[auth]\nenabled = true\nredis = "redis://127.0.0.1:{redis.port}"\non_counters_error = "{on_error}"\n', 1)
    config.write_text(text)
    _, url = conftest._serve(f"keel-counters-{on_error}", config, work, {"KEEL_ADMIN_KEY": ADMIN_KEY}, timeout_s=60)
    return url


def new_key(url: str, **fields) -> str:
    resp = httpx.post(f"{url}/admin/keys", json={"name": "counters", **fields},
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def ask(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": GPT.alias, "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Say hello to the world"}]})


def unavailable_count(url: str, action: str) -> int:
    resp = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    metrics = resp.text
    line = f'keel_counters_unavailable_total{{action="{action}"}} '
    found = [ln for ln in metrics.splitlines() if ln.startswith(line)]
    assert found, f"no {line!r} in /metrics"
    return int(float(found[0].split()[-1]))


def test_a_redis_that_restarts_empty_is_seeded_again_from_the_logged_spend(mock, redis, tmp_path):
    url = serve(mock, redis, tmp_path, "refuse")
    key = new_key(url, budget_daily_usd=0.002)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    served = 0
    while True:
        try:
            client.chat.completions.create(model=GPT.alias, max_tokens=16,
                                           messages=[{"role": "user", "content": "Say hello to the world"}])
            served += 1
            assert served < 1000, "the budget never ran out"
        except openai.RateLimitError as e:
            assert e.code == "budget_exceeded"
            break
    assert served > 0
    # Redis restarts with nothing: the spend of today is only in keel's log now.
    redis.stop()
    redis.start()
    # The first calls may find the old connection broken (refused as unavailable while it reconnects); then the
    # budget must still be spent, seeded from the log, not a fresh zero.
    deadline = time.monotonic() + 30
    while True:
        r = ask(url, key)
        if r.status_code != 503:
            break
        assert r.json()["error"]["code"] == "limits_unavailable", r.text
        assert time.monotonic() < deadline, "keel did not reconnect to Redis within 30 s"
        time.sleep(0.1)
    assert r.status_code == 429, f"a budget spent before the restart is still spent: {r.status_code} {r.text}"
    assert r.json()["error"]["code"] == "budget_exceeded"


@pytest.mark.parametrize("on_error", ["refuse", "admit"])
def test_while_redis_is_down_keyed_requests_get_the_configured_policy(mock, redis, tmp_path, on_error):
    url = serve(mock, redis, tmp_path, on_error)
    key = new_key(url, budget_daily_usd=1.0)
    assert ask(url, key).status_code == 200
    before = unavailable_count(url, "admitted" if on_error == "admit" else "refused")
    redis.stop()
    r = ask(url, key)
    if on_error == "refuse":
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "limits_unavailable"
        assert unavailable_count(url, "refused") == before + 1
    else:
        assert r.status_code == 200, r.text
        assert unavailable_count(url, "admitted") == before + 1
    # Requests without a key's limits (the admin key) never needed the counters.
    admin = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30,
                       json={"model": GPT.alias, "messages": [{"role": "user", "content": "hello"}]})
    assert admin.status_code == 200, admin.text


def test_a_redis_that_stalls_for_a_second_delays_keyed_requests_but_does_not_refuse_them(mock, redis, tmp_path):
    """Within keel's stated bound for a Redis call (2 s), a slow Redis is waited for: a pause of about a second
    (a fork for a snapshot, a busy machine) must not turn into refusals. The Redis client's own default response
    timeout (500 ms) once cut under that bound."""
    import signal
    import threading

    url = serve(mock, redis, tmp_path, "refuse")
    key = new_key(url, budget_daily_usd=1.0)
    assert ask(url, key).status_code == 200
    result: list[httpx.Response] = []
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        worker = threading.Thread(target=lambda: result.append(ask(url, key)))
        worker.start()
        time.sleep(1.0)  # the stall, not a measurement
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    worker.join(timeout=30)
    assert result, "the request did not finish"
    assert result[0].status_code == 200, result[0].text
