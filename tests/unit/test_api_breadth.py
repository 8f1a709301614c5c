"""OpenAI API breadth on the node and proxy, over the fake engine: nullable parameters,
unsupported ones refused by name, ``n`` choices, model ids with '/', schema-valid bodies."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from tests.conftest import start_fake_node, start_plain_gateway
from tests.openai_schema import check

MSG = [{"role": "user", "content": "hello there"}]


def url(node: BackendNode) -> str:
    return f"http://127.0.0.1:{node.server.port}"


async def post(node: BackendNode, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(url(node) + path, json=body)


def sse(text: str) -> list[dict[str, Any]]:
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


NULLS = {"temperature": None, "top_p": None, "n": None, "stop": None, "seed": None,
         "max_tokens": None, "presence_penalty": None, "frequency_penalty": None,
         "logprobs": None, "top_logprobs": None, "response_format": None, "tools": None,
         "tool_choice": None, "user": None, "stream_options": None, "logit_bias": None,
         "parallel_tool_calls": None, "max_completion_tokens": None, "stream": None}


async def test_null_optional_params_are_absent_and_refusal_is_null(
        fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, **NULLS, "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["refusal"] is None
    check(body, "CreateChatCompletionResponse")
    # The SDK sends what it is given, None included.
    client = openai.AsyncOpenAI(base_url=url(fake_node) + "/v1", api_key="x", max_retries=0)
    resp = await client.chat.completions.create(
        model="fake-model", messages=MSG, temperature=None, seed=None,  # type: ignore[arg-type]
        max_tokens=2)
    assert resp.choices[0].message.refusal is None
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "max_tokens": 2, "stream": True,
                    "stream_options": {"include_usage": None}})
    assert r.status_code == 200 and "usage" not in sse(r.text)[-1]


async def test_null_model_reads_as_missing(fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions", {"model": None, "messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


@pytest.mark.parametrize("param, value", [
    pytest.param("audio", {"voice": "alloy", "format": "wav"}, id="audio"),
    pytest.param("modalities", ["text", "audio"], id="modalities"),
    pytest.param("prediction", {"type": "content", "content": "x"}, id="prediction"),
    pytest.param("web_search_options", {}, id="web-search"),
    pytest.param("functions", [{"name": "f"}], id="functions"),
    # The fake engine has no grammar, logit bias nor logprobs: refused, not ignored.
    pytest.param("response_format", {"type": "json_object"}, id="response-format"),
    pytest.param("logit_bias", {"5": 10}, id="logit-bias"),
    pytest.param("logprobs", True, id="logprobs"),
    pytest.param("tools", [{"type": "function", "function": {"name": "f"}}], id="tools"),
])
async def test_unsupported_params_are_refused_by_name(fake_node: BackendNode, param: str,
                                                      value: Any) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, param: value})
    assert r.status_code == 400, r.text
    err = r.json()
    check(err, "ErrorResponse")
    assert err["error"]["code"] == "unsupported_parameter"
    assert err["error"]["param"] == param


async def test_text_modality_and_plain_response_format_are_fine(fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "modalities": ["text"],
                    "response_format": {"type": "text"}, "max_tokens": 2})
    assert r.status_code == 200, r.text


async def test_n_choices(fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "n": 3, "max_tokens": 4})
    body = r.json()
    check(body, "CreateChatCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12
    r = await post(fake_node, "/v1/completions",
                   {"model": "fake-model", "prompt": "go", "n": 2, "max_tokens": 4})
    body = r.json()
    check(body, "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1]


async def test_n_choices_stream_with_indexes(fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "n": 2, "max_tokens": 3,
                    "stream": True, "stream_options": {"include_usage": True}})
    events = sse(r.text)
    for event in events:
        check(event, "CreateChatCompletionStreamResponse")
    finishes = {e["choices"][0]["index"]: e["choices"][0]["finish_reason"]
                for e in events if e["choices"] and e["choices"][0]["finish_reason"]}
    assert finishes == {0: "length", 1: "length"}
    assert events[-1]["usage"]["completion_tokens"] == 6
    r = await post(fake_node, "/v1/completions",
                   {"model": "fake-model", "prompt": "go", "n": 2, "max_tokens": 3,
                    "stream": True})
    events = sse(r.text)
    for event in events:
        check(event, "CompletionChunk")
    assert {e["choices"][0]["index"] for e in events} == {0, 1}


async def test_model_ids_with_a_slash_are_retrievable() -> None:
    node = await start_fake_node(model="org/tiny")
    gw = await start_plain_gateway()
    try:
        gw.pool.upsert(Registration(id="n1", address=f"127.0.0.1:{node.server.port}",
                                    metrics_port=6100, models=["org/tiny"], lease_seconds=30))
        for base in (url(node), f"http://127.0.0.1:{gw.server.port}"):
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
            model = await client.models.retrieve("org/tiny")
            assert model.id == "org/tiny"
            check(model.model_dump(), "Model")
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("org/other")
            async with httpx.AsyncClient() as http:
                r = await http.get(base + "/v1/models/org%2Ftiny")
            assert r.status_code == 200 and r.json()["id"] == "org/tiny"
    finally:
        await gw.drain()
        await node.drain()


async def test_n_choices_that_fail_at_admission_free_everything(fake_node: BackendNode) -> None:
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "n": 3, "max_tokens": 100_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    engine = fake_node.engine
    assert engine.stats().active == 0  # type: ignore[union-attr]
    r = await post(fake_node, "/v1/chat/completions",
                   {"model": "fake-model", "messages": MSG, "n": 4, "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4


@pytest.mark.parametrize(("data", "completion"), [
    pytest.param({"max_tokens": 10}, 10, id="one"),
    pytest.param({"max_tokens": 10, "n": 3}, 30, id="n-choices"),
    pytest.param({"n": None}, 256, id="null-n"),
])
def test_rate_limit_reservation_counts_every_choice(data: dict[str, Any],
                                                    completion: int) -> None:
    from inferno.proxy.security.validate import reserve_tokens

    reserve, prompt = reserve_tokens(data, b"x" * 40, 256)
    assert reserve - prompt == completion
