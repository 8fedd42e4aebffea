"""The offline default: `keel serve` with no configuration file and no provider keys answers chat (streaming
too) and embeddings from the local models, through the official OpenAI SDK."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import time

import openai
import pytest

from conftest import _binary


@pytest.fixture(scope="module")
def offline_keel(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "KEEL_CONFIG")}
    work = tmp_path_factory.mktemp("offline")
    env["KEEL_DATA_DIR"] = str(work)  # the default request log's SQLite file
    log = work / "keel.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(_binary("KEEL_BIN", "keel")), "serve", "--listen", f"127.0.0.1:{port}"], env=env, stderr=out)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # the first start may pull the models
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"keel exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"keel did not start:\n{log.read_text()}")
    yield base, log
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(offline_keel):
    return openai.OpenAI(base_url=f"{offline_keel[0]}/v1", api_key="none", max_retries=0, timeout=120)


def test_the_default_answers_the_capital_of_france_without_sampling_settings(client):
    # No temperature: the model's recommended sampling applies (at the API's 1.0 the 135M model rambles).
    answers = [client.chat.completions.create(
        model="smollm2", max_tokens=24, seed=seed,
        messages=[{"role": "user", "content": "What is the capital of France?"}]).choices[0].message.content
        for seed in range(3)]
    assert sum("Paris" in a for a in answers) >= 2, answers


def test_start_up_says_what_matters_only(offline_keel):
    text = offline_keel[1].read_text()
    lines = text[: text.index("keel listening")].splitlines()
    assert len(lines) < 30, f"{len(lines)} lines before listening:\n{text}"
    assert "compatible" not in text and "ONNX Runtime dylib" not in text, "no ONNX Runtime version noise"
    assert "/admin/* is off" in text, "start-up says who may use the admin endpoints"


def test_models_are_the_local_ones(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["all-minilm-l6-v2", "smollm2"]


def test_chat_answers_from_the_local_model(client):
    resp = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    text = resp.choices[0].message.content
    assert text and text.strip()
    assert resp.model == "smollm2"
    assert 1 <= resp.usage.completion_tokens <= 20
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_matches_the_whole_answer(client):
    params = dict(model="smollm2", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**params).choices[0].message.content
    pieces, usage = [], None
    for chunk in client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    assert "".join(pieces) == whole
    assert usage is not None and usage.completion_tokens >= 1


def test_embeddings_from_the_local_model(client):
    resp = client.embeddings.create(model="all-minilm-l6-v2", input=["A man is playing a guitar.", "A man plays the guitar.", "Taxes are due in April."])
    vecs = [d.embedding for d in resp.data]
    assert [len(v) for v in vecs] == [384, 384, 384]
    for v in vecs:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert cos(vecs[0], vecs[1]) > 0.8 > cos(vecs[0], vecs[2])
    assert resp.usage.prompt_tokens > 0
