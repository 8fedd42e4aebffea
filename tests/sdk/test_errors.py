"""Errors as the SDKs see them: keel's own, upstream errors mapped per API, and broken upstream streams, which
must end in an error and never look like a complete answer."""

from __future__ import annotations

import anthropic
import openai
import pytest

import upstream as up
from upstream import CHAT_ROUTES, CLAUDE, Route

PROMPT = "Say hello to the world"
FULL_ANSWER = "echo: Say hello to the world"


def upstream_error(route: Route, status: int, message: str, *, openai_kind: str, anthropic_kind: str,
                   code: str | None = None, **kw) -> dict:
    """An error as the route's upstream would write it (the mock renders the endpoint's own format)."""
    if route.openai_upstream:
        return up.error(status, openai_kind, message, code, **kw)
    return up.error(status, anthropic_kind, message, **kw)


# Stream faults count upstream events. OpenAI: role chunk, "echo: ", "Say ", ...; Anthropic: message_start,
# content_block_start, ping, "echo: ", "Say ", ... Cutting after these many events leaves "echo: Say " sent.
CUT_AFTER_TWO_WORDS = {"openai": 3, "anthropic": 5}


# --------------------------------------------------------------------------------------------- keel's own errors


def test_openai_unknown_model(oai, mock):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    err = exc.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.type == "invalid_request_error"
    assert "no-such-model" in err.message
    assert err.response.headers["x-request-id"]
    assert mock.attempts() == []


def test_openai_retrieve_unknown_model(oai, mock):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.models.retrieve("no-such-model")
    assert exc.value.code == "model_not_found"


def test_anthropic_unknown_model(anth, mock):
    with pytest.raises(anthropic.NotFoundError) as exc:
        anth.messages.create(model="no-such-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    body = exc.value.body
    assert exc.value.status_code == 404
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]
    assert mock.attempts() == []


def test_openai_malformed_json(http, mock):
    resp = http.post("/v1/chat/completions", content=b'{"model": "gpt-test", "messages": [',
                     headers={"content-type": "application/json"})
    assert resp.status_code == 400
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert resp.headers["x-request-id"]
    assert mock.attempts() == []


def test_anthropic_malformed_json(http, mock):
    resp = http.post("/v1/messages", content=b'{"model": "claude-test", "max_tokens": 5, "messages": [',
                     headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert mock.attempts() == []


def test_openai_empty_messages_is_rejected_by_keel(oai, mock):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="gpt-test", messages=[])
    assert exc.value.type == "invalid_request_error"
    assert exc.value.param == "messages"
    assert mock.attempts() == []


def test_embeddings_on_a_chat_only_upstream(oai, mock):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.embeddings.create(model=CLAUDE.alias, input="hello", encoding_format="float")
    assert exc.value.type == "invalid_request_error"
    assert mock.attempts() == []


# --------------------------------------------------------------------------------------------- upstream errors


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_rate_limited(oai, mock, route: Route):
    message = "Rate limit reached for requests per minute"
    mock.script(upstream_error(route, 429, message, openai_kind="requests", code="rate_limit_exceeded",
                               anthropic_kind="rate_limit_error", headers={"retry-after": "2"}))
    with pytest.raises(openai.RateLimitError) as exc:
        oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    err = exc.value
    assert err.status_code == 429
    assert message in err.message
    assert err.response.headers["retry-after"] == "2"
    assert err.response.headers["x-request-id"]


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_rate_limited(anth, mock, route: Route):
    message = "Number of requests has exceeded your rate limit"
    mock.script(upstream_error(route, 429, message, openai_kind="requests", code="rate_limit_exceeded",
                               anthropic_kind="rate_limit_error", headers={"retry-after": "2"}))
    with pytest.raises(anthropic.RateLimitError) as exc:
        anth.messages.create(model=route.alias, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    err = exc.value
    assert err.status_code == 429
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"
    assert message in err.body["error"]["message"]
    assert err.response.headers["retry-after"] == "2"


CONTEXT_MESSAGES = {
    "openai": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.",
    "anthropic": "prompt is too long: 250000 tokens > 200000 maximum",
}


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_context_length_exceeded(oai, mock, route: Route):
    message = CONTEXT_MESSAGES[route.upstream_kind]
    mock.script(upstream_error(route, 400, message, openai_kind="invalid_request_error",
                               code="context_length_exceeded", anthropic_kind="invalid_request_error"))
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "a very long prompt"}])
    err = exc.value
    assert err.status_code == 400
    assert err.code == "context_length_exceeded"
    assert err.type == "invalid_request_error"
    assert message in err.message


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_context_length_exceeded(anth, mock, route: Route):
    message = CONTEXT_MESSAGES[route.upstream_kind]
    mock.script(upstream_error(route, 400, message, openai_kind="invalid_request_error",
                               code="context_length_exceeded", anthropic_kind="invalid_request_error"))
    with pytest.raises(anthropic.BadRequestError) as exc:
        anth.messages.create(model=route.alias, max_tokens=16, messages=[{"role": "user", "content": "long"}])
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert message in exc.value.body["error"]["message"]


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_upstream_500_is_502(oai, mock, route: Route):
    mock.script(upstream_error(route, 500, "The server had an error while processing your request.",
                               openai_kind="server_error", anthropic_kind="api_error"))
    with pytest.raises(openai.InternalServerError) as exc:
        oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 502
    assert exc.value.type == "upstream_error"


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_upstream_500_is_502(anth, mock, route: Route):
    mock.script(upstream_error(route, 500, "Internal server error",
                               openai_kind="server_error", anthropic_kind="api_error"))
    with pytest.raises(anthropic.InternalServerError) as exc:
        anth.messages.create(model=route.alias, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 502
    assert exc.value.body["type"] == "error"
    assert exc.value.body["error"]["type"] == "api_error"


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_upstream_non_json_body_is_502(oai, mock, route: Route):
    mock.script(up.raw(200, "text/html", "<html><body><h1>Welcome to nginx!</h1></body></html>"))
    with pytest.raises(openai.InternalServerError) as exc:
        oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 502
    assert exc.value.type == "upstream_error"


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_upstream_connection_reset_is_502(oai, mock, route: Route):
    mock.script(up.echo(fault=up.RESET_BEFORE_HEADERS))
    with pytest.raises(openai.InternalServerError) as exc:
        oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 502


# --------------------------------------------------------------------------------------------- broken streams


class OpenAiStreamReader:
    """Reads a chat stream, keeping the text and finish reasons received before it ended or raised."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.finish_reasons: list[str] = []
        self.usage = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def read(self, stream) -> None:
        for chunk in stream:
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices:
                self.pieces.append(choice.delta.content or "")
                if choice.finish_reason:
                    self.finish_reasons.append(choice.finish_reason)


def assert_openai_stream_error(err: BaseException) -> None:
    """An error event from keel: an `APIError` carrying keel's error object, not a dropped connection."""
    assert isinstance(err, openai.APIError), repr(err)
    assert not isinstance(err, openai.APIConnectionError), f"the stream was dropped, not ended by an error event: {err!r}"
    assert isinstance(err.body, dict) and err.body.get("message"), err.body


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_stream_cut_mid_answer_raises(oai, mock, route: Route):
    mock.script(up.echo(fault=up.cut_after(CUT_AFTER_TWO_WORDS[route.upstream_kind])))
    stream = oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": PROMPT}], stream=True)
    reader = OpenAiStreamReader()
    with pytest.raises(openai.APIError) as exc:
        reader.read(stream)
    assert_openai_stream_error(exc.value)
    assert reader.text == "echo: Say "
    assert reader.finish_reasons == []


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_stream_without_end_marker_is_finalised(oai, mock, route: Route):
    """The upstream sends the whole answer, finish reason included, but no `[DONE]` / `message_stop`: the answer
    is complete, so keel finalises it at once (with usage) instead of failing it or waiting."""
    mock.script(up.echo(fault=up.NO_DONE))
    stream = oai.chat.completions.create(
        model=route.alias,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    reader = OpenAiStreamReader()
    reader.read(stream)
    assert reader.text == FULL_ANSWER
    assert reader.finish_reasons == ["stop"]
    assert reader.usage is not None and reader.usage.completion_tokens == len(FULL_ANSWER.split())


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_openai_stream_malformed_chunk_raises(oai, mock, route: Route):
    mock.script(up.echo(fault=up.malformed_at(CUT_AFTER_TWO_WORDS[route.upstream_kind])))
    stream = oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": PROMPT}], stream=True)
    reader = OpenAiStreamReader()
    with pytest.raises(openai.APIError) as exc:
        reader.read(stream)
    assert_openai_stream_error(exc.value)
    assert reader.text == "echo: Say "


def assert_anthropic_stream_error(err: BaseException) -> None:
    """An `error` event from keel, in Anthropic's format, not a dropped connection."""
    assert isinstance(err, anthropic.APIStatusError), repr(err)
    assert isinstance(err.body, dict), err.body
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] and err.body["error"]["message"], err.body


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_stream_cut_mid_answer_raises(anth, mock, route: Route):
    mock.script(up.echo(fault=up.cut_after(CUT_AFTER_TWO_WORDS[route.upstream_kind])))
    received: list[str] = []
    with pytest.raises(anthropic.APIError) as exc:
        with anth.messages.stream(model=route.alias, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]) as s:
            for piece in s.text_stream:
                received.append(piece)
    assert_anthropic_stream_error(exc.value)
    assert "".join(received) == "echo: Say "


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_stream_without_end_marker_is_finalised(anth, mock, route: Route):
    mock.script(up.echo(fault=up.NO_DONE))
    with anth.messages.stream(model=route.alias, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]) as s:
        received = "".join(s.text_stream)
        final = s.get_final_message()
    assert received == FULL_ANSWER
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(FULL_ANSWER.split())


@pytest.mark.parametrize("route", CHAT_ROUTES)
def test_anthropic_stream_upstream_error_before_stream(anth, mock, route: Route):
    """An upstream error before any event is an HTTP error, not a stream that starts and then fails."""
    mock.script(upstream_error(route, 429, "slow down", openai_kind="requests", code="rate_limit_exceeded",
                               anthropic_kind="rate_limit_error", headers={"retry-after": "3"}))
    with pytest.raises(anthropic.RateLimitError) as exc:
        with anth.messages.stream(model=route.alias, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    assert exc.value.response.headers["retry-after"] == "3"
