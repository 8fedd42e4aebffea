"""The official `anthropic` SDK against keel's Messages API, served by an Anthropic upstream (claude-test) and,
translated, by an OpenAI upstream (gpt-test)."""

from __future__ import annotations

import json

import pytest

import upstream as up
from upstream import CHAT_ROUTES, UPSTREAM_KEY, Route

pytestmark = pytest.mark.parametrize("route", CHAT_ROUTES)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Current local time of a time zone.",
    "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
}
WEATHER_ARGS = '{"city":"Paris","unit":"celsius"}'
TIME_ARGS = '{"timezone":"Europe/Paris"}'
TWO_CALLS = up.tool_calls(("toolu_w1", "get_weather", WEATHER_ARGS), ("toolu_t2", "get_time", TIME_ARGS))
TWO_CALLS_TOKENS = (up.words(WEATHER_ARGS) + 1) + (up.words(TIME_ARGS) + 1)
TOOL_PROMPT = "What is the weather and time in Paris?"


def openai_tool(tool: dict) -> dict:
    """The OpenAI form of an Anthropic tool."""
    return {"type": "function", "function": {
        "name": tool["name"], "description": tool["description"], "parameters": tool["input_schema"]}}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------------------------- text


def test_create_text(anth, mock, route: Route):
    raw = anth.messages.with_raw_response.create(
        model=route.alias, max_tokens=64, messages=[user("Say hello to the world")])
    message = raw.parse()

    assert raw.headers["x-keel-served-by"] == route.served_by
    assert raw.headers["x-request-id"]
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == route.upstream_model
    assert [(b.type, b.text) for b in message.content] == [("text", "echo: Say hello to the world")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 6)

    attempt = mock.only_attempt()
    assert attempt.path == route.upstream_path
    assert attempt.body["model"] == route.upstream_model
    assert attempt.body["max_tokens"] == 64
    assert attempt.body["messages"] == [user("Say hello to the world")]
    assert attempt.body.get("stream", False) is False


def test_request_id_is_echoed(anth, mock, route: Route):
    raw = anth.messages.with_raw_response.create(
        model=route.alias, max_tokens=16, messages=[user("ping")],
        extra_headers={"x-request-id": "anthropic-sdk-req-7"})
    assert raw.headers["x-request-id"] == "anthropic-sdk-req-7"
    assert raw.parse().content[0].text == "echo: ping"


def test_upstream_gets_keel_credentials_not_the_clients(anth, mock, route: Route):
    anth.messages.create(model=route.alias, max_tokens=16, messages=[user("hi")])
    attempt = mock.only_attempt()
    if route.openai_upstream:
        assert attempt.header("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert attempt.header("x-api-key") is None
    else:
        assert attempt.header("x-api-key") == UPSTREAM_KEY
        assert attempt.header("anthropic-version") == "2023-06-01"
    assert not any("client-key" in v for v in attempt.header_values()), attempt.headers


def test_stream_text_and_final_message(anth, mock, route: Route):
    with anth.messages.stream(model=route.alias, max_tokens=64, messages=[user("Say hello to the world")]) as stream:
        assert stream.response.headers["x-keel-served-by"] == route.served_by
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert pieces == ["echo: ", "Say ", "hello ", "to ", "the ", "world"]
    assert [(b.type, b.text) for b in final.content] == [("text", "echo: Say hello to the world")]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 6)

    attempt = mock.only_attempt()
    assert attempt.body["stream"] is True
    assert attempt.body["messages"] == [user("Say hello to the world")]
    if route.openai_upstream:
        assert attempt.body["stream_options"] == {"include_usage": True}


def test_stream_reports_the_same_model_as_non_stream(anth, mock, route: Route):
    """`message_start` names the model that answers, as the non-streamed answer does: the upstream's."""
    message = anth.messages.create(model=route.alias, max_tokens=16, messages=[user("hi")])
    with anth.messages.stream(model=route.alias, max_tokens=16, messages=[user("hi")]) as stream:
        final = stream.get_final_message()
    assert message.model == route.upstream_model
    assert final.model == message.model


def test_stream_event_sequence(anth, mock, route: Route):
    """The raw event sequence (`stream=True`) is a well-formed Messages stream."""
    events = list(anth.messages.create(model=route.alias, max_tokens=64, messages=[user("one two")], stream=True))

    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "echo: one two"
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == 3


def test_system_prompt(anth, mock, route: Route):
    message = anth.messages.create(
        model=route.alias, max_tokens=64, system="You are terse.", messages=[user("hi there")])

    assert message.content[0].text == "echo: hi there"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 3)  # system words count as input
    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["messages"] == [{"role": "system", "content": "You are terse."}, user("hi there")]
    else:
        assert body["system"] == "You are terse."
        assert body["messages"] == [user("hi there")]


def test_sampling_fields_are_forwarded(anth, mock, route: Route):
    # anthropic 2.x no longer has `temperature`/`top_p` arguments; the Messages API still takes them.
    anth.messages.create(model=route.alias, max_tokens=100, messages=[user("hi")], stop_sequences=["END"],
                         extra_body={"temperature": 0.25, "top_p": 0.5})
    body = mock.only_attempt().body
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.5
    assert body["max_tokens"] == 100
    if route.openai_upstream:
        assert body["stop"] == ["END"]
    else:
        assert body["stop_sequences"] == ["END"]


# --------------------------------------------------------------------------------------------- tools


def test_tool_use_non_stream(anth, mock, route: Route):
    mock.script(TWO_CALLS)
    message = anth.messages.create(
        model=route.alias, max_tokens=256, tools=[WEATHER_TOOL, TIME_TOOL], messages=[user(TOOL_PROMPT)])

    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [
        ("tool_use", "toolu_w1", "get_weather", json.loads(WEATHER_ARGS)),
        ("tool_use", "toolu_t2", "get_time", json.loads(TIME_ARGS)),
    ]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, TWO_CALLS_TOKENS)

    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["tools"] == [openai_tool(WEATHER_TOOL), openai_tool(TIME_TOOL)]
    else:
        assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]


def test_tool_use_stream(anth, mock, route: Route):
    mock.script(TWO_CALLS)
    with anth.messages.stream(model=route.alias, max_tokens=256, tools=[WEATHER_TOOL, TIME_TOOL],
                              messages=[user(TOOL_PROMPT)]) as stream:
        partial_json: dict[int, str] = {}
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial_json[event.index] = partial_json.get(event.index, "") + event.delta.partial_json
        final = stream.get_final_message()

    # The streamed input JSON is exactly the arguments the upstream produced.
    assert partial_json == {0: WEATHER_ARGS, 1: TIME_ARGS}
    assert [(b.type, b.id, b.name, b.input) for b in final.content] == [
        ("tool_use", "toolu_w1", "get_weather", json.loads(WEATHER_ARGS)),
        ("tool_use", "toolu_t2", "get_time", json.loads(TIME_ARGS)),
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, TWO_CALLS_TOKENS)


def test_tool_result_round_trip(anth, mock, route: Route):
    mock.script(up.text("It is sunny in Paris."))
    messages = [
        user("What is the weather in Paris?"),
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_w1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_w1", "content": "sunny, 21 C"},
        ]},
    ]
    message = anth.messages.create(model=route.alias, max_tokens=64, tools=[WEATHER_TOOL], messages=messages)

    assert [(b.type, b.text) for b in message.content] == [("text", "It is sunny in Paris.")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 5)  # question 6 + tool result 3

    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["messages"] == [
            user("What is the weather in Paris?"),
            {"role": "assistant", "tool_calls": [
                {"id": "toolu_w1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_w1", "content": "sunny, 21 C"},
        ]
    else:
        assert body["messages"] == messages
