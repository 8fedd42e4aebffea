"""Prompt templates as the official SDKs call them (`keel_template` through `extra_body`): the template's
messages, model and parameters go upstream, its version comes back in `x-keel-template` and is logged with the
request; bad calls get a 400 in each API's format and send nothing upstream."""

from __future__ import annotations

import anthropic
import openai
import pytest

from test_request_log import row_of, rows
from upstream import text


def template(name: str, **variables) -> dict:
    return {"keel_template": {"name": name, "variables": variables}}


def test_a_template_called_with_the_openai_sdk_sends_its_messages_and_parameters(oai, mock):
    raw = oai.chat.completions.with_raw_response.create(
        model="capital", messages=[], extra_body=template("capital", country="France"))
    answer = raw.parse()
    sent = mock.only_attempt().body
    assert sent["model"] == "mock-gpt"
    assert sent["messages"] == [
        {"role": "system", "content": "Answer with the city only."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 20
    assert "keel_template" not in sent, "the field never reaches a provider"
    assert answer.choices[0].message.content == "echo: What is the capital of France?"
    name, version = raw.headers["x-keel-template"].split("@")
    assert name == "capital" and len(version) == 12


def test_optional_variables_and_the_clients_own_parameters(oai, mock):
    oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "And of Spain?"}], max_tokens=7,
        extra_body=template("capital", country="Peru", hint="on the coast"))
    sent = mock.only_attempt().body
    assert [m["content"] for m in sent["messages"]] == [
        "Answer with the city only.",
        "What is the capital of Peru? Hint: on the coast.",
        "And of Spain?",
    ], "the template's messages first, then the client's"
    assert sent["max_tokens"] == 7, "the client's own value wins over the template's"


def test_a_template_with_a_schema_through_the_anthropic_sdk(anth, mock):
    mock.script(text('{"label": "billing"}'))
    raw = anth.messages.with_raw_response.create(
        model="label", max_tokens=50, messages=[], extra_body=template("label", ticket="I was charged twice"))
    msg = raw.parse()
    sent = mock.only_attempt().body
    assert sent["model"] == "mock-claude"
    assert sent["messages"] == [{"role": "user", "content": "Label this ticket: I was charged twice"}]
    assert "keel_template" not in sent
    assert msg.content[0].text == '{"label": "billing"}'
    assert raw.headers["x-keel-template"].startswith("label@")


def test_an_answer_off_the_templates_schema_is_not_served_as_valid(oai, mock):
    mock.set_default(text("not json at all"))
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model="label", messages=[], extra_body=template("label", ticket="hello"))
    assert e.value.status_code in (422, 502), e.value


@pytest.mark.parametrize("call, param", [
    ({"name": "nope"}, "keel_template.name"),
    ({"name": "capital", "variables": {}}, "keel_template.variables"),
    ({"name": "capital", "version": "000000000000", "variables": {"country": "Chile"}}, "keel_template.version"),
    ({"name": "capital", "variables": {"country": "Chile"}, "colour": 1}, "keel_template"),
])
def test_bad_template_calls_are_refused_and_nothing_goes_upstream(oai, mock, call, param):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="capital", messages=[], extra_body={"keel_template": call})
    assert e.value.body["param"] == param, e.value.body
    assert mock.attempts() == []


def test_a_template_on_another_model_is_refused_with_the_anthropic_sdk(anth, mock):
    with pytest.raises(anthropic.BadRequestError) as e:
        anth.messages.create(model="claude-test", max_tokens=10, messages=[],
                             extra_body=template("capital", country="Chile"))
    assert "runs on model" in str(e.value)
    assert mock.attempts() == []


def test_the_template_and_its_version_are_in_the_request_log(oai, http, mock):
    raw = oai.chat.completions.with_raw_response.create(
        model="capital", messages=[], extra_body=template("capital", country="Japan"),
        extra_headers={"x-request-id": "tmpl-log-1"})
    version = raw.headers["x-keel-template"].split("@")[1]
    row = row_of(http, "tmpl-log-1")
    assert (row["template"], row["template_version"]) == ("capital", version)
    assert any(r["client_request_id"] == "tmpl-log-1" for r in rows(http, template="capital", limit=1000))
    assert not any(r["template"] != "capital" for r in rows(http, template="capital", limit=1000))
