"""The `openai` SDK's embeddings and models endpoints against keel."""

from __future__ import annotations

import upstream as up
from upstream import EMBED


def test_embeddings_float(oai, mock):
    inputs = ["hello world", "keel gateway test"]
    raw = oai.embeddings.with_raw_response.create(model=EMBED.alias, input=inputs, encoding_format="float")
    result = raw.parse()

    assert raw.headers["x-keel-served-by"] == EMBED.served_by
    assert raw.headers["x-request-id"]
    assert result.model == EMBED.upstream_model
    assert [d.index for d in result.data] == [0, 1]
    assert [up.as_f32(d.embedding) for d in result.data] == [up.mock_embedding(t) for t in inputs]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (5, 5)

    attempt = mock.only_attempt()
    assert attempt.path == EMBED.upstream_path
    assert attempt.body["model"] == EMBED.upstream_model
    assert attempt.body["input"] == inputs
    assert attempt.body["encoding_format"] == "float"


def test_embeddings_dimensions(oai, mock):
    result = oai.embeddings.create(model=EMBED.alias, input="one two three", dimensions=4, encoding_format="float")

    assert up.as_f32(result.data[0].embedding) == up.mock_embedding("one two three", 4)
    assert result.usage.prompt_tokens == 3
    assert mock.only_attempt().body["dimensions"] == 4


def test_embeddings_sdk_default_asks_for_base64(oai, mock):
    """Without `encoding_format` the SDK asks for base64 and decodes it. This upstream answers floats anyway
    (as some OpenAI-compatible servers do); the SDK must still get exactly the upstream's vectors."""
    result = oai.embeddings.create(model=EMBED.alias, input="hello world")

    assert mock.only_attempt().body["encoding_format"] == "base64"
    assert up.as_f32(result.data[0].embedding) == up.mock_embedding("hello world")


def test_embeddings_base64_answer_is_passed_through(oai, mock):
    vectors = [up.mock_embedding("alpha beta"), up.mock_embedding("gamma")]
    mock.script(up.json_body({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": up.base64_f32(v)} for i, v in enumerate(vectors)],
        "model": "mock-embed",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }))
    result = oai.embeddings.create(model=EMBED.alias, input=["alpha beta", "gamma"])

    # The SDK decoded the base64 keel passed on into exactly the upstream's float32 values.
    assert [d.embedding for d in result.data] == vectors
    assert result.usage.prompt_tokens == 3
    assert mock.only_attempt().body["encoding_format"] == "base64"


def test_models_list(oai, mock):
    models = oai.models.list()

    # The aliases and the routers (test_routing.py) of the test configuration.
    assert sorted(m.id for m in models.data) == ["auto", "claude-guarded", "claude-test", "claude-then-gpt",
                                                 "embed-test", "gpt-guarded", "gpt-mini", "gpt-test", "sentiment"]
    assert {m.object for m in models.data} == {"model"}
    assert mock.attempts() == []  # answered from keel's configuration, not by an upstream


def test_models_retrieve(oai, mock):
    model = oai.models.retrieve("gpt-test")

    assert model.id == "gpt-test"
    assert model.object == "model"
    assert mock.attempts() == []
