"""Tool calling's pure parts: the fallback prompt, forcing schemas, reading calls."""

from __future__ import annotations

import json

import pytest

from inferno.api.openai import ChatCompletionRequest
from inferno.backend.tools import ToolOutput, call_format, messages_for, tool_mode
from inferno.core.validation import parse_request

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def request(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


@pytest.mark.parametrize(("fields", "mode"), [
    pytest.param({}, None, id="no-tools"),
    pytest.param({"tools": [WEATHER]}, "auto", id="default-auto"),
    pytest.param({"tools": [WEATHER], "tool_choice": "none"}, None, id="none"),
    pytest.param({"tools": [WEATHER], "tool_choice": "required"}, "required", id="required"),
    pytest.param({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {
        "name": "get_weather"}}}, "get_weather", id="named"),
])
def test_tool_mode(fields: dict[str, object], mode: str | None) -> None:
    assert tool_mode(request(**fields)) == mode


def test_call_format_names_only_the_forced_tools() -> None:
    req = request(tools=[WEATHER, TIME])
    both = call_format(req, "required")["json_schema"]["schema"]
    assert [c["properties"]["name"]["const"] for c in both["anyOf"]] == ["get_weather",
                                                                         "get_time"]
    one = call_format(req, "get_time")["json_schema"]["schema"]
    assert one["properties"]["name"] == {"const": "get_time"}


def test_fallback_prompt_and_history() -> None:
    req = request(tools=[WEATHER], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    out = messages_for(req, "auto", template_tools=False)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assert out[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": ' \
        '{"city": "Paris"}}</tool_call>'
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native = messages_for(req, "auto", template_tools=True)
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert native[3]["role"] == "tool" and native[3]["tool_call_id"] == "call_1"


def test_auto_streams_text_and_holds_calls() -> None:
    text = ToolOutput("auto", {"get_weather"}, parallel=True)
    assert text.feed(" <to") == ""  # could still be a call
    assert text.feed("day is fine") == " <today is fine"
    assert text.finish() == ("", None)
    call = ToolOutput("auto", {"get_weather"}, parallel=True)
    parts = ['\n<tool_call>{"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
             '</tool_call><tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}']
    assert [call.feed(p) for p in parts] == ["", "", ""]
    rest, calls = call.finish()
    assert rest == "" and calls is not None and len(calls) == 2
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome"}
    single = ToolOutput("auto", {"get_weather"}, parallel=False)
    single.feed("".join(parts))
    assert len(single.finish()[1] or []) == 1


def test_unknown_names_and_broken_json_stay_text() -> None:
    for raw in ['<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                "<tool_call>{not json</tool_call>"]:
        out = ToolOutput("auto", {"get_weather"}, parallel=True)
        out.feed(raw)
        assert out.finish() == (raw, None)
    forced = ToolOutput("required", {"get_weather"}, parallel=True)
    forced.feed('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    calls = forced.finish()[1]
    assert calls is not None and calls[0]["function"]["name"] == "get_weather"
