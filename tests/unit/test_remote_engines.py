"""Remote provider engines against real in-process fake providers (OpenAI and Gemini wire
formats), driven through a real node with the openai client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
import pytest_asyncio

from inferno.backend.engines.gemini import GeminiEngine, to_gemini
from inferno.backend.engines.remote_openai import RemoteEngineBase, RemoteOpenAIEngine
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings
from inferno.core.errors import ConfigError
from inferno.net import HttpServer, Request, Response, StreamingResponse
from inferno.wiring import build_engine
from tests.conftest import free_port
from tests.polling import eventually

CANARY = "sk-canary-0123456789abcdef"  # must never show up in a response body or a log
WORDS = ["Paris", " is", " the", " capital", " of", " France", "."]


@dataclass
class FakeProvider:
    """One fake provider: records requests; ``mode`` picks how it answers."""

    kind: str  # "openai" | "gemini"
    mode: str = "ok"
    status: int = 200
    error_body: bytes = b""
    error_headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    finish: str = ""
    requests: list[Request] = field(default_factory=list)
    server: HttpServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}" + ("/v1" if self.kind == "openai"
                                                         else "/v1beta")

    async def handle(self, req: Request) -> Response | StreamingResponse:
        self.requests.append(req)
        if self.status != 200:
            return Response(self.status, self.error_body, headers=self.error_headers)
        return StreamingResponse(self._events(orjson.loads(req.body)))

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        if self.mode == "tools":
            for event in self._tool_events():
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            return
        for i, word in enumerate(WORDS):
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "garbage" and i == 2:
                yield b"data: {not json\n\n"
                return
            if self.mode == "error-mid-stream" and i == 2:
                yield b'data: {"error": {"message": "overloaded, key ' + CANARY.encode() + \
                    b'"}}\n\n'
                return
            last = i == len(WORDS) - 1
            yield b"data: " + orjson.dumps(self._event(body, word, last)) + b"\n\n"
        if self.kind == "openai":
            yield b"data: " + orjson.dumps({"id": "x", "object": "chat.completion.chunk",
                                            "choices": [], "usage": {
                                                "prompt_tokens": 11, "completion_tokens": 7,
                                                "total_tokens": 18}}) + b"\n\n"
            yield b"data: [DONE]\n\n"

    def _tool_events(self) -> list[dict[str, Any]]:
        if self.kind == "gemini":
            return [{"candidates": [{"index": 0, "finishReason": "STOP", "content": {
                "role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                             "args": {"city": "Paris"}}}]}}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}]
        first = {"index": 0, "id": "call_up1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"ci'}}
        rest = {"index": 0, "function": {"arguments": 'ty": "Paris"}'}}
        return [{"choices": [{"index": 0, "delta": {"tool_calls": [first]},
                              "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"tool_calls": [rest]},
                              "finish_reason": "tool_calls"}]}]

    def _event(self, body: dict[str, Any], word: str, last: bool) -> dict[str, Any]:
        if self.kind == "openai":
            finish = (self.finish or "stop") if last else None
            if "messages" in body:
                choice = {"index": 0, "delta": {"content": word}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": word, "finish_reason": finish}
            return {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": word}]},
                                "index": 0}
        event: dict[str, Any] = {"candidates": [cand]}
        if last:
            cand["finishReason"] = self.finish or "STOP"
            event["usageMetadata"] = {"promptTokenCount": 11, "candidatesTokenCount": 7,
                                      "totalTokenCount": 18}
        return event


@pytest_asyncio.fixture(params=["openai", "gemini"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(kind=request.param)
    fake.server = HttpServer(fake.handle)
    await fake.server.start("127.0.0.1", 0)
    yield fake
    await fake.server.stop(grace=0.5)


def engine_for(fake: FakeProvider, **kw: Any) -> RemoteEngineBase:
    cls = RemoteOpenAIEngine if fake.kind == "openai" else GeminiEngine
    args: dict[str, Any] = {"base_url": fake.base, "model_id": "cloud-model",
                            "remote_model": "upstream-model", "api_key": CANARY,
                            "price_per_mtok_input": 0.15, "price_per_mtok_output": 0.6, **kw}
    return cls(**args)


@pytest_asyncio.fixture
async def node(provider: FakeProvider) -> AsyncIterator[BackendNode]:
    n = await start_node(engine_for(provider))
    yield n
    await n.drain()


async def start_node(engine: RemoteEngineBase) -> BackendNode:
    n = BackendNode(BackendSettings(port=0, ops_port=0, engine="openai", model="cloud-model",
                                    drain_timeout=2), engine)
    await n.start()
    return n


def client_for(node: BackendNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{node.server.port}/v1",
                              api_key="client-key", max_retries=0)


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"},
        {"role": "assistant", "content": "Of what?"}, {"role": "user", "content": "France"}]


async def test_chat_forwards_messages_and_reports_provider_usage(
        node: BackendNode, provider: FakeProvider) -> None:
    resp = await client_for(node).chat.completions.create(
        model="cloud-model", messages=MSGS, max_tokens=20, temperature=0.5)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == "".join(WORDS)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) \
        == (11, 7)
    req = provider.requests[-1]
    sent = orjson.loads(req.body)
    if provider.kind == "openai":
        assert req.path == "/v1/chat/completions"
        assert req.header("authorization") == f"Bearer {CANARY}"
        assert sent["messages"] == MSGS and sent["model"] == "upstream-model"
        assert sent["stream"] is True and sent["max_tokens"] == 20
    else:
        assert req.path == "/v1beta/models/upstream-model:streamGenerateContent"
        assert req.query == "alt=sse" and CANARY not in req.query
        assert req.header("x-goog-api-key") == CANARY
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
        assert sent["generationConfig"] == {"temperature": 0.5, "topP": 1.0,
                                            "maxOutputTokens": 20}


async def test_streaming_is_translated_chunk_by_chunk(node: BackendNode,
                                                      provider: FakeProvider) -> None:
    stream = await client_for(node).chat.completions.create(
        model="cloud-model", messages=MSGS, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert deltas == WORDS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11


async def test_max_tokens_finish_is_length(provider: FakeProvider) -> None:
    provider.finish = "length" if provider.kind == "openai" else "MAX_TOKENS"
    n = await start_node(engine_for(provider))
    try:
        resp = await client_for(n).chat.completions.create(
            model="cloud-model", messages=MSGS, max_tokens=7)  # type: ignore[arg-type]
        assert resp.choices[0].finish_reason == "length"
    finally:
        await n.drain()


async def test_completions_forward_the_prompt(node: BackendNode,
                                              provider: FakeProvider) -> None:
    resp = await client_for(node).completions.create(model="cloud-model", prompt="Say it",
                                                     max_tokens=10)
    assert resp.choices[0].text == "".join(WORDS)
    sent = orjson.loads(provider.requests[-1].body)
    if provider.kind == "openai":
        assert provider.requests[-1].path == "/v1/completions" and sent["prompt"] == "Say it"
    else:
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "Say it"}]}]


def _err(kind: str, status: int, message: str) -> bytes:
    if kind == "openai":
        return orjson.dumps({"error": {"message": message, "type": "x", "code": None}})
    return orjson.dumps({"error": {"code": status, "message": message, "status": "X"}})


@pytest.mark.parametrize("status,message,headers,want_status,want_code", [
    pytest.param(400, "bad temperature", [], 400, "invalid_value", id="400"),
    pytest.param(400, "This model's maximum context length is 8192 tokens", [], 400,
                 "context_length_exceeded", id="400-context"),
    pytest.param(401, f"Incorrect API key provided: {CANARY}", [], 502, "upstream_error",
                 id="401"),
    pytest.param(403, f"key {CANARY[:10]}... denied", [], 502, "upstream_error", id="403"),
    pytest.param(404, "no such model", [], 404, "model_not_found", id="404"),
    pytest.param(429, f"slow down {CANARY}", [("retry-after", "7")], 429,
                 "rate_limit_exceeded", id="429"),
    pytest.param(500, "boom", [], 502, "upstream_error", id="500"),
    pytest.param(503, "<html>down</html>", [], 502, "upstream_error", id="503-html"),
    pytest.param(504, "slow", [], 504, "upstream_timeout", id="504"),
])
async def test_provider_errors_map_to_openai_errors_without_the_key(
        provider: FakeProvider, caplog: pytest.LogCaptureFixture, status: int, message: str,
        headers: list[tuple[str, str]], want_status: int, want_code: str) -> None:
    caplog.set_level(logging.DEBUG)
    provider.status = status
    provider.error_body = (message.encode() if message.startswith("<")
                           else _err(provider.kind, status, message))
    provider.error_headers = headers
    n = await start_node(engine_for(provider))
    try:
        for stream in (False, True):
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{n.server.port}/v1/chat/completions",
                                    json={"model": "cloud-model", "messages": MSGS,
                                          "stream": stream})
            assert r.status_code == want_status, r.text
            assert r.json()["error"]["code"] == want_code
            assert CANARY not in r.text and CANARY[:8] not in r.text
            if status == 429:
                assert r.headers["retry-after"] == "7"
    finally:
        await n.drain()
    assert CANARY not in caplog.text and CANARY[:8] not in caplog.text


@pytest.mark.parametrize("mode", ["garbage", "error-mid-stream"])
async def test_broken_streams_end_with_an_error_event(provider: FakeProvider,
                                                      mode: str) -> None:
    provider.mode = mode
    n = await start_node(engine_for(provider))
    try:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{n.server.port}/v1/chat/completions",
                                json={"model": "cloud-model", "messages": MSGS,
                                      "stream": True})
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1].startswith('data: {"error"') and "[DONE]" not in r.text
        assert CANARY not in r.text
        with pytest.raises(openai.APIError):
            await client_for(n).chat.completions.create(
                model="cloud-model", messages=MSGS)  # type: ignore[arg-type]
    finally:
        await n.drain()


async def test_unreachable_provider_is_a_502() -> None:
    engine = RemoteOpenAIEngine(base_url=f"http://127.0.0.1:{free_port()}/v1",
                                model_id="cloud-model", remote_model="m", api_key=CANARY)
    n = await start_node(engine)
    try:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{n.server.port}/v1/chat/completions",
                                json={"model": "cloud-model", "messages": MSGS})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_connect_error"
        assert CANARY not in r.text
    finally:
        await n.drain()


async def test_queue_depth_capacity_and_prices_are_reported(provider: FakeProvider) -> None:
    provider.delay = 0.05
    n = await start_node(engine_for(provider, parallel=1))
    try:
        c = client_for(n)
        tasks = [asyncio.create_task(c.chat.completions.create(
            model="cloud-model", messages=MSGS)) for _ in range(3)]  # type: ignore[arg-type]
        async with httpx.AsyncClient() as http:

            async def two_queued() -> dict[str, Any] | None:
                vitals = (await http.get(f"http://127.0.0.1:{n.ops.port}/telemetry")).json()
                return vitals if vitals["queue_depth"] == 2 else None

            vitals = await eventually(two_queued, timeout=2.0,
                                      what="queue_depth 2 (one running, two waiting)")
        await asyncio.gather(*tasks)
        assert vitals["capacity"] == 1 and vitals["capabilities"] == ["chat", "completions"]
        assert vitals["price_per_mtok_input"] == 0.15
        assert vitals["price_per_mtok_output"] == 0.6
        reg = n.registration()
        assert reg.price_per_mtok_input == 0.15 and reg.price_per_mtok_output == 0.6
        assert reg.models == ["cloud-model"] and reg.capacity == 1
    finally:
        await n.drain()


async def test_embeddings_on_a_remote_chat_node_are_refused(node: BackendNode) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{node.server.port}/v1/embeddings",
                            json={"model": "cloud-model", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"


# ---- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("engine,cls", [pytest.param("openai", RemoteOpenAIEngine, id="openai"),
                                        pytest.param("gemini", GeminiEngine, id="gemini")])
def test_key_comes_from_the_named_env_var_and_never_shows(
        monkeypatch: pytest.MonkeyPatch, engine: str, cls: type[Any]) -> None:
    monkeypatch.setenv("MY_PROVIDER_KEY", CANARY)
    s = BackendSettings(engine=engine, model="gpt-x",  # type: ignore[arg-type]
                        remote_url="http://127.0.0.1:9/v1", api_key_env="MY_PROVIDER_KEY",
                        price_per_mtok_input=1.0)
    built = build_engine(s)
    assert isinstance(built, cls) and built._key == CANARY
    assert CANARY not in repr(built) and CANARY not in repr(s)
    assert built.info.price_per_mtok_input == 1.0


def test_missing_key_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ConfigError, match="NOPE_KEY"):
        build_engine(BackendSettings(engine="openai", api_key_env="NOPE_KEY"))


@pytest.mark.parametrize("url", ["ftp://x/v1", "not a url"])
def test_bad_remote_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="remote_url"):
        build_engine(BackendSettings(engine="openai", remote_url=url))


@pytest.mark.parametrize("messages,want", [
    pytest.param([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                 {"contents": [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]},
                 id="consecutive-users-merge"),
    pytest.param([{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
                 {"contents": [{"role": "user", "parts": [{"text": "u"}]}],
                  "systemInstruction": {"parts": [{"text": "d"}]}}, id="developer-is-system"),
])
def test_gemini_message_translation(messages: list[dict[str, str]],
                                    want: dict[str, Any]) -> None:
    assert to_gemini(messages) == want




async def test_response_format_is_passed_on_or_translated(
        node: BackendNode, provider: FakeProvider) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema,
                                                  "strict": True}}
    await client_for(node).chat.completions.create(
        model="cloud-model", messages=MSGS, response_format=fmt)  # type: ignore[arg-type]
    sent = orjson.loads(provider.requests[-1].body)
    if provider.kind == "openai":
        assert sent["response_format"] == fmt
    else:
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        assert sent["generationConfig"]["responseJsonSchema"] == schema


TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


async def test_tools_are_passed_on_or_translated_and_calls_come_back(
        node: BackendNode, provider: FakeProvider) -> None:
    provider.mode = "tools"
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [{
                   "id": "call_a", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
               {"role": "tool", "tool_call_id": "call_a", "content": "rain"},
               {"role": "user", "content": "And Paris?"}]
    resp = await client_for(node).chat.completions.create(
        model="cloud-model", messages=history, tools=[TOOL],  # type: ignore[arg-type,list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, orjson.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in calls] == [("get_weather", {"city": "Paris"})]
    sent = orjson.loads(provider.requests[-1].body)
    if provider.kind == "openai":
        assert sent["tools"] == [TOOL] and sent["messages"][1]["tool_calls"][0]["id"] == "call_a"
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert calls[0].id == "call_up1"
    else:
        decl = sent["tools"][0]["functionDeclarations"][0]
        assert decl["name"] == "get_weather" and "parametersJsonSchema" in decl
        assert sent["toolConfig"]["functionCallingConfig"] == {
            "mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        parts = [p for c in sent["contents"] for p in c["parts"]]
        assert {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}} in parts
        assert {"functionResponse": {"name": "get_weather",
                                     "response": {"content": "rain"}}} in parts
