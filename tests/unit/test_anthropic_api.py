"""/v1/messages and /v1/messages/count_tokens: the official anthropic SDK against a real
proxy, with a scripted chat-completions node recording what the proxy sent it.

Every body and stream is read by the SDK (its types), and raw bodies are checked against
``anthropic.types`` field by field: nothing missing, nothing the type does not know.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
import pytest_asyncio
from pydantic import BaseModel

from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from tests.conftest import start_gateway
from tests.fakes.chat_node import ChatNode, Reply
from tests.polling import eventually

MODEL = "fake-model"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


class Env:
    def __init__(self, gw: Gateway, node: ChatNode, key: str | None) -> None:
        self.gw, self.node, self.key = gw, node, key
        self.url = f"http://127.0.0.1:{gw.server.port}"
        self.client = anthropic.AsyncAnthropic(base_url=self.url, api_key=key or "unused",
                                               max_retries=0)


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    gw = await start_gateway(tmp_path, connect_timeout=5)  # a busy host: no spurious 503
    node = await ChatNode().start(gw)
    yield Env(gw, node, None)
    await node.stop()
    await gw.drain()


@pytest_asyncio.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Env]:
    gw = await start_gateway(tmp_path, auth="on", connect_timeout=5)
    assert gw.security.store is not None
    key, _ = await create_key(gw.security.store, name="u", scope="user")
    await gw.security.keys.refresh()
    node = await ChatNode().start(gw)
    yield Env(gw, node, key)
    await node.stop()
    await gw.drain()


def assert_exact(model: type[BaseModel], body: dict[str, Any]) -> None:
    """``body`` parses as ``model`` and carries no key the type does not define."""
    model.model_validate(body)
    known = {f.alias or name for name, f in model.model_fields.items()}
    assert set(body) <= known, set(body) - known


async def test_text_message_translates_both_ways(env: Env) -> None:
    raw = await env.client.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, system=[{"type": "text", "text": "Be brief."}],
        messages=USER, stop_sequences=["END"], metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.5, "top_p": 0.9},
        extra_headers={"anthropic-version": "2023-06-01"})
    sent = env.node.last
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": USER[0]["content"]}]
    assert (sent["max_tokens"], sent["stop"], sent["temperature"], sent["top_p"],
            sent["user"]) == (50, ["END"], 0.5, 0.9, "u-1")
    body = raw.http_response.json()
    assert_exact(anthropic.types.Message, body)
    assert_exact(anthropic.types.Usage, body["usage"])
    msg = await raw.parse()
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert (msg.stop_reason, msg.stop_sequence, msg.role) == ("end_turn", None, "assistant")
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 5)
    assert msg.id.startswith("msg_")


@pytest.mark.parametrize(("finish", "extra", "reason", "sequence"), [
    pytest.param("length", {}, "max_tokens", None, id="length"),
    pytest.param("stop", {"stop_reason": "END"}, "stop_sequence", "END", id="stop-sequence"),
])
async def test_stop_reasons(env: Env, finish: str, extra: dict[str, Any], reason: str,
                            sequence: str | None) -> None:
    env.node.replies.append(Reply(finish=finish, extra_choice=extra))
    msg = await env.client.messages.create(model=MODEL, max_tokens=5, messages=USER,
                                           stop_sequences=["END"])
    assert (msg.stop_reason, msg.stop_sequence) == (reason, sequence)


async def test_structured_output_becomes_json_schema(env: Env) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    env.node.replies.append(Reply(text='{"city": "Paris"}'))
    msg = await env.client.messages.create(
        model=MODEL, max_tokens=50, messages=USER,
        output_config={"format": {"type": "json_schema", "schema": schema}})
    assert env.node.last["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": schema, "strict": True}}
    assert msg.content[0].text == '{"city": "Paris"}'  # type: ignore[union-attr]


async def test_tool_use_round_trip(env: Env) -> None:
    env.node.replies.append(Reply(text=None, calls=[("call_1", "get_weather",
                                                     {"city": "Paris"})]))
    msg = await env.client.messages.create(
        model=MODEL, max_tokens=50, messages=USER, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True})
    sent = env.node.last
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER["input_schema"]}}]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    assert msg.stop_reason == "tool_use"
    use = msg.content[0]
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("call_1", "get_weather", {"city": "Paris"})

    await env.client.messages.create(
        model=MODEL, max_tokens=50, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[*USER, {"role": "assistant", "content": msg.content},  # type: ignore[list-item]
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                      {"type": "text", "text": "Thanks"}]}])
    sent = env.node.last
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "Thanks"}]


async def test_stream_text(env: Env) -> None:
    async with env.client.messages.stream(model=MODEL, max_tokens=50, messages=USER) as s:
        texts = [t async for t in s.text_stream]
        final = await s.get_final_message()
    assert env.node.last["stream"] is True
    assert len(texts) > 1 and "".join(texts) == "Hello there!"
    assert final.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == \
        ("end_turn", 7, 5)


async def test_stream_events_are_anthropic_types(env: Env) -> None:
    env.node.replies.append(Reply(text="Let me look.", calls=[("call_9", "get_weather",
                                                               {"city": "Oslo"})]))
    async with httpx.AsyncClient() as http, http.stream(
            "POST", f"{env.url}/v1/messages",
            json={"model": MODEL, "max_tokens": 50, "messages": USER, "stream": True,
                  "tools": [WEATHER]}) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    import json

    events = [json.loads(line[6:]) for line in lines]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    union: Any = anthropic.types.RawMessageStreamEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(union)
    for e in events:
        if e["type"] != "ping":
            adapter.validate_python(e)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"]
    assert starts[1]["id"] == "call_9"
    partial = "".join(e["delta"]["partial_json"] for e in events
                      if e["type"] == "content_block_delta"
                      and e["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Oslo"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


async def test_stream_tool_use_final_message(env: Env) -> None:
    env.node.replies.append(Reply(text=None, calls=[("call_2", "get_weather",
                                                     {"city": "Rome"})]))
    async with env.client.messages.stream(model=MODEL, max_tokens=50, messages=USER,
                                          tools=[WEATHER]) as s:  # type: ignore[list-item]
        final = await s.get_final_message()
    assert final.stop_reason == "tool_use"
    use = final.content[0]
    assert use.type == "tool_use" and use.input == {"city": "Rome"}


async def test_cut_stream_is_an_error_event(env: Env) -> None:
    env.node.replies.append(Reply(text="Hello there, this is long", cut=True))
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with env.client.messages.stream(model=MODEL, max_tokens=50,
                                              messages=USER) as s:
            async for text in s.text_stream:
                got.append(text)
    assert got == ["Hell"]  # the cut happened mid-answer, after some text
    assert "incomplete" in str(info.value.message)


@pytest.mark.parametrize(("body", "status", "kind", "needle"), [
    pytest.param({"model": MODEL, "messages": USER}, 400, "invalid_request_error",
                 "max_tokens", id="no-max-tokens"),
    pytest.param({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AAAA"}}]}]},
                 400, "invalid_request_error", "image", id="image"),
    pytest.param({"model": MODEL, "max_tokens": 5, "messages": USER, "top_k": 5}, 400,
                 "invalid_request_error", "top_k", id="top-k"),
    pytest.param({"model": "nope", "max_tokens": 5, "messages": USER}, 404,
                 "not_found_error", "nope", id="unknown-model"),
    pytest.param({"model": MODEL, "max_tokens": 5, "messages": USER,
                  "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400,
                 "invalid_request_error", "tools.0.type", id="server-tool"),
])
async def test_bad_input_is_anthropic_error(env: Env, body: dict[str, Any], status: int,
                                            kind: str, needle: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{env.url}/v1/messages", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert_exact(anthropic.types.ErrorResponse, err)
    assert err["error"]["type"] == kind and needle in err["error"]["message"]


async def test_a_broken_node_answer_is_502(env: Env) -> None:
    env.node.replies.append(Reply(raw=b'{"choices": [ trunc'))
    with pytest.raises(anthropic.APIStatusError) as info:
        await env.client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_wrong_method_is_anthropic_error(env: Env) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{env.url}/v1/messages")
    assert r.status_code == 405
    assert r.json()["type"] == "error"


async def test_count_tokens(env: Env) -> None:
    env.node.replies.append(Reply(prompt_tokens=42))
    count = await env.client.messages.count_tokens(model=MODEL, messages=USER,
                                                   system="Be brief.")
    assert count.input_tokens == 42
    sent = env.node.last
    assert sent["max_tokens"] == 1 and sent["messages"][0]["role"] == "system"


async def test_x_api_key_and_bearer(keyed: Env) -> None:
    msg = await keyed.client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert msg.content[0].text == "Hello there!"  # type: ignore[union-attr]
    bad = anthropic.AsyncAnthropic(base_url=keyed.url, api_key="inf_000000000000_" + "A" * 43,
                                   max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        await bad.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "Incorrect API key provided."}}
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{keyed.url}/v1/messages", headers={
            "authorization": f"Bearer {keyed.key}", "anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 5, "messages": USER})
        assert r.status_code == 200
        r = await http.post(f"{keyed.url}/v1/messages",
                            json={"model": MODEL, "max_tokens": 5, "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


async def test_request_log_records_the_route(env: Env) -> None:
    await env.client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    store = env.gw.security.store
    assert store is not None

    async def logged() -> list[dict[str, Any]]:
        rows = await store.requests.recent()
        return [r for r in rows if r["route"] == "/v1/messages"]

    rows = await eventually(logged, what="a request-log row for /v1/messages")
    assert rows[0]["status"] == 200 and rows[0]["prompt_tokens"] == 7


async def test_limits_and_permissions_in_anthropic_shape(keyed: Env) -> None:
    store = keyed.gw.security.store
    assert store is not None
    slow, _ = await create_key(store, name="slow", scope="user", rpm=1)
    other, _ = await create_key(store, name="other", scope="user", models=["another-model"])
    await keyed.gw.security.keys.refresh()
    client = anthropic.AsyncAnthropic(base_url=keyed.url, api_key=slow, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as limited:
        for _ in range(10):  # past the key's burst allowance
            await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    client = anthropic.AsyncAnthropic(base_url=keyed.url, api_key=other, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
    (504, "timeout_error"), (529, "overloaded_error")])
def test_error_types_by_status(status: int, kind: str) -> None:
    from inferno.api.anthropic import error_body

    assert error_body(status, "m") == {"type": "error", "error": {"type": kind, "message": "m"}}
