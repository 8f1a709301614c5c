"""The node's OpenAI API over the fake engine, through real sockets and the openai client."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from inferno.backend.node import BackendNode
from tests.conftest import start_fake_node
from tests.polling import eventually


def client_for(node: BackendNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{node.server.port}/v1",
                              api_key="unused", max_retries=0)


MSG = [{"role": "user", "content": "hello there"}]


async def test_chat_non_streaming_has_usage_and_length_finish(fake_node: BackendNode) -> None:
    resp = await client_for(fake_node).chat.completions.create(
        model="fake-model", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and len(choice.message.content.split()) == 5
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


async def test_chat_eos_finishes_with_stop() -> None:
    node = await start_fake_node(eos_after=3)
    try:
        resp = await client_for(node).chat.completions.create(
            model="fake-model", messages=MSG, max_tokens=50)  # type: ignore[arg-type]
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage is not None and resp.usage.completion_tokens == 3
    finally:
        await node.drain()


async def test_streaming_chunks_usage_and_done(fake_node: BackendNode) -> None:
    stream = await client_for(fake_node).chat.completions.create(
        model="fake-model", messages=MSG, max_tokens=6, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


async def test_stream_wire_format_ends_with_done(fake_node: BackendNode) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{fake_node.server.port}/v1/chat/completions",
                            json={"model": "fake-model", "messages": MSG, "max_tokens": 2,
                                  "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


async def test_stop_string_cuts_text_and_reports_stop(fake_node: BackendNode) -> None:
    first = await client_for(fake_node).completions.create(model="fake-model", prompt="go",
                                                           max_tokens=8)
    words = first.choices[0].text.split()
    resp = await client_for(fake_node).completions.create(
        model="fake-model", prompt="go", max_tokens=8, stop=[" " + words[3]])
    assert resp.choices[0].text.split() == words[:3]
    assert resp.choices[0].finish_reason == "stop"


async def test_completions_and_models(fake_node: BackendNode) -> None:
    c = client_for(fake_node)
    resp = await c.completions.create(model="fake-model", prompt="Once upon")
    assert resp.object == "text_completion" and resp.usage is not None
    assert resp.usage.completion_tokens == 16  # the legacy default
    models = await c.models.list()
    assert [m.id for m in models.data] == ["fake-model"]


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "code"),
    [
        pytest.param("/v1/chat/completions", "POST", b"{nope", 400, "invalid_value",
                     id="malformed-json"),
        pytest.param("/v1/chat/completions", "POST",
                     b'{"model":"nope","messages":[{"role":"user","content":"x"}]}', 404,
                     "model_not_found", id="unknown-model"),
        pytest.param("/v1/chat/completions", "POST",
                     b'{"messages":[{"role":"user","content":"x"}]}', 400, "invalid_value",
                     id="missing-model"),
        pytest.param("/v1/chat/completions", "POST",
                     b'{"model":"fake-model","max_tokens":100000,'
                     b'"messages":[{"role":"user","content":"x"}]}', 400,
                     "invalid_value", id="max-tokens-over-limit-or-context"),
        pytest.param("/v1/chat/completions", "POST",
                     b'{"model":"fake-model","max_tokens":255,'
                     b'"messages":[{"role":"user","content":"x"}]}', 400,
                     "context_length_exceeded", id="max-tokens-beyond-context"),
        pytest.param("/v1/completions", "POST",
                     b'{"model":"fake-model","prompt":"' + b"word " * 300 + b'"}', 400,
                     "context_length_exceeded", id="prompt-too-long"),
        pytest.param("/v1/completions", "POST", b'{"model":"fake-model","prompt":""}', 400,
                     "invalid_value", id="empty-prompt"),
        pytest.param("/v1/chat/completions", "GET", b"", 405, "method_not_allowed",
                     id="wrong-method"),
        pytest.param("/v2/whatever", "GET", b"", 404, "not_found", id="unknown-route"),
    ],
)
async def test_bad_input_gets_openai_errors(fake_node: BackendNode, path: str, method: str,
                                            body: bytes, status: int, code: str) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.request(method, f"http://127.0.0.1:{fake_node.server.port}{path}",
                               content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code != "invalid_value" or status != 400:
        assert err["code"] == code
    assert "Traceback" not in r.text


async def test_client_disconnect_cancels_generation() -> None:
    node = await start_fake_node(token_delay=0.05)
    try:
        url = f"http://127.0.0.1:{node.server.port}/v1/completions"
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 200, "stream": True}
        async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as r:
            async for _ in r.aiter_bytes():
                break
        await eventually(lambda: node.engine.stats().active == 0, timeout=2.0,
                         what="the node to stop generating")
        assert node.engine.stats().tokens_generated < 100
    finally:
        await node.drain()


async def test_ops_health_metrics_telemetry(fake_node: BackendNode) -> None:
    base = f"http://127.0.0.1:{fake_node.ops.port}"
    async with httpx.AsyncClient() as http:
        await client_for(fake_node).completions.create(model="fake-model", prompt="a",
                                                       max_tokens=3)
        health = await http.get(f"{base}/health")
        metrics = await http.get(f"{base}/metrics")
        vitals = (await http.get(f"{base}/telemetry")).json()
    assert health.status_code == 200 and health.text.strip() == "healthy"
    assert "inferno_backend_generated_tokens_total 3.0" in metrics.text
    assert 'inferno_backend_requests_total{endpoint="completions",status="200"} 1.0' in metrics.text
    assert vitals["state"] == "ready" and vitals["models"] == ["fake-model"]
    assert vitals["capacity"] == 4 and vitals["requests_total"] == 1
    for key in ("id", "uptime_s", "in_flight", "queue_depth", "tokens_per_second", "version"):
        assert key in vitals


async def test_draining_node_reports_503() -> None:
    node = await start_fake_node()
    ops = node.ops.port
    node.state = "draining"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{ops}/health")
        c = await http.post(f"http://127.0.0.1:{node.server.port}/v1/completions",
                            json={"model": "fake-model", "prompt": "x"})
    assert r.status_code == 503 and "draining" in r.text
    assert c.status_code == 503 and c.json()["error"]["code"] == "not_ready"
    assert "retry-after" in c.headers
    node.state = "ready"
    await node.drain()
