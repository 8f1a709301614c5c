"""/v1/responses: the official openai SDK against a real proxy, with a scripted
chat-completions node recording what the proxy sent it.

Bodies are parsed with ``openai.types.responses`` (and checked for keys the type does not
know); stream events are read by the SDK's own stream, which types every event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import pytest_asyncio
from openai.types.responses import Response as OAIResponse
from pydantic import BaseModel

from inferno.proxy.gateway import Gateway
from inferno.proxy.security.keys import create_key
from tests.conftest import start_gateway
from tests.fakes.chat_node import ChatNode, Reply
from tests.polling import eventually

MODEL = "fake-model"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


class Env:
    def __init__(self, gw: Gateway, node: ChatNode, keys: list[str]) -> None:
        self.gw, self.node, self.keys = gw, node, keys
        self.url = f"http://127.0.0.1:{gw.server.port}"
        self.client = self.as_key(keys[0] if keys else "unused")

    def as_key(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    gw = await start_gateway(tmp_path, connect_timeout=5)  # a busy host: no spurious 503
    node = await ChatNode().start(gw)
    yield Env(gw, node, [])
    await node.stop()
    await gw.drain()


@pytest_asyncio.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Env]:
    gw = await start_gateway(tmp_path, auth="on", connect_timeout=5)
    assert gw.security.store is not None
    keys = [(await create_key(gw.security.store, name=n, scope="user"))[0] for n in "ab"]
    await gw.security.keys.refresh()
    node = await ChatNode().start(gw)
    yield Env(gw, node, keys)
    await node.stop()
    await gw.drain()


SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "openai" / "openai-schemas.json"


def assert_published_error(body: dict[str, Any]) -> None:
    """The error body against OpenAI's published ErrorResponse schema (when provided)."""
    if not SCHEMAS.exists():
        pytest.skip(f"OpenAI's published schemas are not at {SCHEMAS}")
    import json

    import jsonschema

    schemas = json.loads(SCHEMAS.read_text())["schemas"]
    root = {"components": {"schemas": schemas}, **schemas["ErrorResponse"]}
    jsonschema.validate(body, root)


def assert_response(body: dict[str, Any]) -> OAIResponse:
    parsed = OAIResponse.model_validate(body)
    # "store" is in OpenAI's live answers though the SDK's type leaves it out.
    known = {f.alias or name for name, f in OAIResponse.model_fields.items()} | {"store"}
    assert set(body) <= known, set(body) - known
    return parsed


async def test_create_text(env: Env) -> None:
    raw = await env.client.responses.with_raw_response.create(
        model=MODEL, input="Hi there", instructions="Be brief.", max_output_tokens=40,
        temperature=0.3, top_p=0.8, metadata={"k": "v"}, user="u-1")
    sent = env.node.last
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi there"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["user"]) == \
        (40, 0.3, 0.8, "u-1")
    resp = assert_response(raw.http_response.json())
    assert resp.output_text == "Hello there!"
    assert (resp.status, resp.metadata, resp.instructions) == ("completed", {"k": "v"},
                                                               "Be brief.")
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (7, 5)
    assert resp.id.startswith("resp_")


async def test_items_function_call_and_output(env: Env) -> None:
    await env.client.responses.create(model=MODEL, tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    assert env.node.last["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


async def test_function_tools_and_tool_choice(env: Env) -> None:
    env.node.replies.append(Reply(text=None, calls=[("call_7", "get_weather",
                                                     {"city": "Oslo"})]))
    raw = await env.client.responses.with_raw_response.create(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
    sent = env.node.last
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER["parameters"], "strict": True}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    resp = assert_response(raw.http_response.json())
    call = resp.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_7", "get_weather",
                                                         '{"city": "Oslo"}')


class City(BaseModel):
    name: str
    population: int


async def test_parse_with_pydantic_model(env: Env) -> None:
    env.node.replies.append(Reply(text='{"name": "Paris", "population": 2100000}'))
    parsed = await env.client.responses.parse(model=MODEL, input="A city?", text_format=City)
    fmt = env.node.last["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["name", "population"]
    assert parsed.output_parsed == City(name="Paris", population=2_100_000)


async def test_json_object_format(env: Env) -> None:
    await env.client.responses.create(model=MODEL, input="JSON please",
                                      text={"format": {"type": "json_object"}})
    assert env.node.last["response_format"] == {"type": "json_object"}


async def test_stream_text_events(env: Env) -> None:
    stream = await env.client.responses.create(model=MODEL, input="Hi", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Hello there!"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "Hello there!"
    assert done.response.usage is not None and done.response.usage.output_tokens == 5
    # Stored before response.completed went out: retrievable at once.
    again = await env.client.responses.retrieve(done.response.id)
    assert again.output_text == "Hello there!"


async def test_stream_function_call_events(env: Env) -> None:
    env.node.replies.append(Reply(text="Checking.", calls=[("call_3", "get_weather",
                                                            {"city": "Rome"})]))
    stream = await env.client.responses.create(model=MODEL, input="Weather in Rome?",
                                               tools=[WEATHER], stream=True)  # type: ignore[list-item]
    events = [e async for e in stream]
    args = "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta")
    assert args == '{"city": "Rome"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == args
    final = events[-1]
    assert final.type == "response.completed"
    assert [o.type for o in final.response.output] == ["message", "function_call"]


async def test_cut_stream_fails(env: Env) -> None:
    env.node.replies.append(Reply(text="Hello there, this is long", cut=True))
    stream = await env.client.responses.create(model=MODEL, input="Hi", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert "response.output_text.delta" in kinds  # the cut came mid-answer
    assert kinds[-2:] == ["error", "response.failed"]
    assert "response.completed" not in kinds
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.error is not None


async def test_previous_response_id_chains_and_store(env: Env) -> None:
    first = await env.client.responses.create(model=MODEL, input="Hi", instructions="Sys.")
    await env.client.responses.create(model=MODEL, input="And again?",
                                      previous_response_id=first.id)
    assert env.node.last["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "And again?"}]
    got = await env.client.responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump()
    items = await env.client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    deleted = await env.client.responses.delete(first.id)
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as info:
        await env.client.responses.create(model=MODEL, input="x",
                                          previous_response_id=first.id)
    assert info.value.param == "previous_response_id"


async def test_store_false_is_not_kept(env: Env) -> None:
    resp = await env.client.responses.create(model=MODEL, input="Hi", store=False)
    assert resp.store is False
    with pytest.raises(openai.NotFoundError):
        await env.client.responses.retrieve(resp.id)


async def test_stored_responses_are_per_key(keyed: Env) -> None:
    a, b = keyed.as_key(keyed.keys[0]), keyed.as_key(keyed.keys[1])
    mine = await a.responses.create(model=MODEL, input="Hi")
    assert (await a.responses.retrieve(mine.id)).id == mine.id
    with pytest.raises(openai.NotFoundError):
        await b.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await b.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await b.responses.create(model=MODEL, input="x", previous_response_id=mine.id)
    assert (await a.responses.retrieve(mine.id)).id == mine.id
    with pytest.raises(openai.AuthenticationError):
        await keyed.as_key("wrong").responses.retrieve(mine.id)


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"model": MODEL}, "input", id="no-input"),
    pytest.param({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]},
                 "tools.0.type", id="builtin-tool"),
    pytest.param({"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input.0.content.0.type", id="image"),
    pytest.param({"model": MODEL, "input": "x", "background": True}, "background",
                 id="background"),
    pytest.param({"model": MODEL, "input": "x", "temperature": "hot"}, "temperature",
                 id="bad-temperature"),
    pytest.param({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema",
                                                                    "name": "n"}}},
                 "text.format.schema", id="schema-missing"),
])
async def test_bad_input_is_400(env: Env, body: dict[str, Any], param: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{env.url}/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert_published_error(r.json())
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert env.node.requests == []


async def test_a_broken_node_answer_is_502(env: Env) -> None:
    env.node.replies.append(Reply(raw=b"[1, 2]"))
    with pytest.raises(openai.APIStatusError) as info:
        await env.client.responses.create(model=MODEL, input="Hi")
    assert info.value.status_code == 502
    assert_published_error(info.value.response.json())


async def test_request_log_records_the_route(env: Env) -> None:
    await env.client.responses.create(model=MODEL, input="Hi")
    store = env.gw.security.store
    assert store is not None

    async def logged() -> list[dict[str, Any]]:
        return [r for r in await store.requests.recent() if r["route"] == "/v1/responses"]

    rows = await eventually(logged, what="a request-log row for /v1/responses")
    assert rows[0]["status"] == 200 and rows[0]["completion_tokens"] == 5


@pytest.mark.parametrize("reply", [
    pytest.param(Reply(text="Checking.", calls=[("call_4", "get_weather", {"city": "Nice"})]),
                 id="text-and-call"),
    pytest.param(Reply(text="Hello there, this is long", cut=True), id="cut"),
])
async def test_stream_events_validate_strictly(env: Env, reply: Reply) -> None:
    """The SDK builds stream events without validating them: validate the raw ones."""
    import json

    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    env.node.replies.append(reply)
    async with httpx.AsyncClient() as http, http.stream(
            "POST", f"{env.url}/v1/responses",
            json={"model": MODEL, "input": "Weather?", "stream": True,
                  "tools": [WEATHER]}) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines() if line.startswith(("data:", "event:"))]
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    names = [line[7:] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [e["type"] for e in events]  # each SSE event is named by its type
    for e in events:
        parsed = adapter.validate_python(e)
        known = {f.alias or n for n, f in type(parsed).model_fields.items()}
        assert set(e) <= known, (e["type"], set(e) - known)
        if "response" in e:
            assert_response(e["response"])
    last = "response.failed" if reply.cut else "response.completed"
    assert events[-1]["type"] == last


async def test_chained_function_call_round_trip(env: Env) -> None:
    env.node.replies.append(Reply(text=None, calls=[("call_5", "get_weather",
                                                     {"city": "Lyon"})]))
    first = await env.client.responses.create(model=MODEL, input="Weather in Lyon?",
                                              tools=[WEATHER])  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call"
    await env.client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert env.node.last["messages"] == [
        {"role": "user", "content": "Weather in Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_5", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_5", "content": "rain"}]
