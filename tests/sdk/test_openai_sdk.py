"""The official `openai` SDK against keel's OpenAI API, served by an OpenAI upstream (gpt-test) and, translated,
by an Anthropic upstream (claude-test)."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import BaseModel

import upstream as up
from upstream import CHAT_ROUTES, UPSTREAM_KEY, Route

pytestmark = pytest.mark.parametrize("route", CHAT_ROUTES)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time of a time zone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}
# Compact JSON with sorted keys: the exact text survives the Anthropic upstream, where it travels as an object.
WEATHER_ARGS = '{"city":"Paris","unit":"celsius"}'
TIME_ARGS = '{"timezone":"Europe/Paris"}'
TWO_CALLS = up.tool_calls(("call_w1", "get_weather", WEATHER_ARGS), ("call_t2", "get_time", TIME_ARGS))
# completion tokens of a tool-call answer: words of the arguments plus one per call.
TWO_CALLS_TOKENS = (up.words(WEATHER_ARGS) + 1) + (up.words(TIME_ARGS) + 1)


def anthropic_tool(tool: dict) -> dict:
    """The Anthropic form of an OpenAI function tool."""
    f = tool["function"]
    return {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}


def assert_forwarded_text_request(route: Route, attempt: up.Attempt, messages: list[dict]) -> None:
    """The upstream got the upstream model name and the conversation in its own format."""
    assert attempt.method == "POST"
    assert attempt.path == route.upstream_path
    assert attempt.body["model"] == route.upstream_model
    assert attempt.body["messages"] == messages


# --------------------------------------------------------------------------------------------- text


def test_chat_non_stream(oai, mock, route: Route):
    prompt = "Say hello to the world"
    raw = oai.chat.completions.with_raw_response.create(
        model=route.alias, messages=[{"role": "user", "content": prompt}], max_tokens=64)
    completion = raw.parse()

    assert raw.headers["x-keel-served-by"] == route.served_by
    assert raw.headers["x-request-id"]
    assert completion.model == route.upstream_model
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: Say hello to the world"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (5, 6, 11)

    attempt = mock.only_attempt()
    assert_forwarded_text_request(route, attempt, [{"role": "user", "content": prompt}])
    assert attempt.body["max_tokens"] == 64
    assert attempt.body.get("stream", False) is False


def test_created_is_a_unix_timestamp(oai, mock, route: Route):
    """`created` is the Unix time of the answer, whichever upstream served it (Anthropic answers carry none)."""
    completion = oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    chunks = list(oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": "hi"}], stream=True))
    now = time.time()
    assert abs(completion.created - now) < 600, completion.created
    assert all(abs(c.created - now) < 600 for c in chunks), [c.created for c in chunks]


def test_request_id_is_echoed(oai, mock, route: Route):
    raw = oai.chat.completions.with_raw_response.create(
        model=route.alias, messages=[{"role": "user", "content": "ping"}],
        extra_headers={"x-request-id": "sdk-test-request-42"})
    assert raw.headers["x-request-id"] == "sdk-test-request-42"
    assert raw.parse().choices[0].message.content == "echo: ping"


def test_upstream_gets_keel_credentials_not_the_clients(oai, mock, route: Route):
    oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": "hi"}])
    attempt = mock.only_attempt()
    if route.openai_upstream:
        assert attempt.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    else:
        assert attempt.header("x-api-key") == UPSTREAM_KEY
        assert attempt.header("anthropic-version") == "2023-06-01"
        assert attempt.header("authorization") is None
    assert not any("client-key" in v for v in attempt.header_values()), attempt.headers


def test_chat_stream_without_usage(oai, mock, route: Route):
    prompt = "Say hello to the world"
    raw = oai.chat.completions.with_raw_response.create(
        model=route.alias, messages=[{"role": "user", "content": prompt}], stream=True)
    assert raw.headers["x-keel-served-by"] == route.served_by
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())

    assert chunks, "empty stream"
    assert all(c.usage is None for c in chunks), "usage chunk sent although the client did not ask for it"
    assert all(len(c.choices) == 1 for c in chunks)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["echo: ", "Say ", "hello ", "to ", "the ", "world"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {route.upstream_model}

    attempt = mock.only_attempt()
    assert_forwarded_text_request(route, attempt, [{"role": "user", "content": prompt}])
    assert attempt.body["stream"] is True
    if route.openai_upstream:
        # keel always asks an OpenAI upstream for usage, whatever the client asked.
        assert attempt.body["stream_options"] == {"include_usage": True}


def test_chat_stream_with_usage(oai, mock, route: Route):
    stream = oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": "Say hello to the world"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    *answer, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in answer) == "echo: Say hello to the world"
    assert all(c.usage is None for c in answer)
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (5, 6, 11)
    if route.openai_upstream:
        assert mock.only_attempt().body["stream_options"] == {"include_usage": True}


def test_stream_helper_final_completion(oai, mock, route: Route):
    with oai.chat.completions.stream(
            model=route.alias, messages=[{"role": "user", "content": "stream helper test"}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "echo: stream helper test"
    assert final.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------------------------- content


def test_multi_part_content(oai, mock, route: Route):
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": " second part"}]
    completion = oai.chat.completions.create(model=route.alias, messages=[{"role": "user", "content": parts}])

    assert completion.choices[0].message.content == "echo: first part second part"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 5)
    assert_forwarded_text_request(route, mock.only_attempt(), [{"role": "user", "content": parts}])


def test_system_message(oai, mock, route: Route):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi there"}]
    completion = oai.chat.completions.create(model=route.alias, messages=messages)

    assert completion.choices[0].message.content == "echo: hi there"
    # The system words count as prompt tokens on both upstreams: 3 + 2.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    attempt = mock.only_attempt()
    if route.openai_upstream:
        assert attempt.body["messages"] == messages
    else:
        assert attempt.body["system"] == "You are terse."
        assert attempt.body["messages"] == [{"role": "user", "content": "hi there"}]


def test_sampling_fields_are_forwarded(oai, mock, route: Route):
    oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": "hi"}],
        temperature=0.25, top_p=0.5, seed=7, stop=["END"], max_tokens=100,
        extra_body={"reasoning_effort": "low"})
    body = mock.only_attempt().body
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.5
    assert body["max_tokens"] == 100
    if route.openai_upstream:
        assert body["seed"] == 7
        assert body["stop"] == ["END"]
        assert body["reasoning_effort"] == "low"  # unknown to keel: passed through as it is
    else:
        assert body["stop_sequences"] == ["END"]
        # Anthropic has no seed and would reject unknown fields: keel documents dropping them.
        assert "seed" not in body
        assert "reasoning_effort" not in body


# --------------------------------------------------------------------------------------------- tools

TOOL_PROMPT = "What is the weather and time in Paris?"


def test_tool_calls_non_stream(oai, mock, route: Route):
    mock.script(TWO_CALLS)
    completion = oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": TOOL_PROMPT}],
        tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="auto")

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert calls == [("call_w1", "function", "get_weather", WEATHER_ARGS),
                     ("call_t2", "function", "get_time", TIME_ARGS)]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, TWO_CALLS_TOKENS)

    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]
        assert body["tool_choice"] == "auto"
    else:
        assert body["tools"] == [anthropic_tool(WEATHER_TOOL), anthropic_tool(TIME_TOOL)]
        assert body["tool_choice"] == {"type": "auto"}


def test_tool_calls_stream(oai, mock, route: Route):
    mock.script(TWO_CALLS)
    stream = oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": TOOL_PROMPT}],
        tools=[WEATHER_TOOL, TIME_TOOL], stream=True, stream_options={"include_usage": True})

    calls: dict[int, dict[str, str]] = {}
    finish_reasons = []
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""

    assert calls == {
        0: {"id": "call_w1", "name": "get_weather", "arguments": WEATHER_ARGS},
        1: {"id": "call_t2", "name": "get_time", "arguments": TIME_ARGS},
    }
    assert finish_reasons == ["tool_calls"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (8, TWO_CALLS_TOKENS)


def test_tool_result_round(oai, mock, route: Route):
    mock.script(up.text("It is sunny in Paris."))
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"},
    ]
    completion = oai.chat.completions.create(model=route.alias, messages=messages, tools=[WEATHER_TOOL])

    assert completion.choices[0].message.content == "It is sunny in Paris."
    assert completion.choices[0].finish_reason == "stop"
    # user question (6 words) + tool result (3 words) on both upstreams.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 5)

    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["messages"] == messages
    else:
        assert body["messages"] == [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_w1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_w1", "content": "sunny, 21 C"},
            ]},
        ]


# --------------------------------------------------------------------------------------------- JSON


def test_json_object_mode(oai, mock, route: Route):
    answer = '{"answer": 42, "unit": "none"}'
    mock.script(up.text(answer))
    completion = oai.chat.completions.create(
        model=route.alias, messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"})

    assert completion.choices[0].message.content == answer
    assert json.loads(completion.choices[0].message.content) == {"answer": 42, "unit": "none"}
    body = mock.only_attempt().body
    if route.openai_upstream:
        assert body["response_format"] == {"type": "json_object"}
    else:
        # Anthropic has no response_format: keel asks for JSON in the system prompt instead.
        assert "response_format" not in body
        assert "JSON object" in body["system"]


class Weather(BaseModel):
    city: str
    temperature_c: int
    conditions: list[str]


def test_parse_into_pydantic_model(oai, mock, route: Route):
    mock.script(up.text('{"city":"Paris","temperature_c":21,"conditions":["sunny","dry"]}'))
    completion = oai.chat.completions.parse(
        model=route.alias, messages=[{"role": "user", "content": "Weather in Paris?"}], response_format=Weather)

    message = completion.choices[0].message
    assert message.parsed == Weather(city="Paris", temperature_c=21, conditions=["sunny", "dry"])
    assert message.refusal is None
    body = mock.only_attempt().body
    if route.openai_upstream:
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["name"] == "Weather"
        assert fmt["json_schema"]["strict"] is True
        assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "temperature_c", "conditions"}
    else:
        assert "response_format" not in body
        assert "Weather" in body["system"]
        assert '"temperature_c"' in body["system"]
