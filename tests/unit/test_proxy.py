"""The proxy in front of fake nodes: routing, failover, streaming, registration, leases."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2 as httpx
import openai
import orjson
import pytest

from inferno.api.node import Registration
from inferno.proxy.gateway import Gateway
from tests.conftest import free_port, start_fake_node
from tests.polling import eventually

MSG = [{"role": "user", "content": "hello"}]


def api(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.server.port}"


def ops(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.ops.port}"


def add(gw: Gateway, node_id: str, port: int, models: tuple[str, ...] = ("fake-model",),
        lease: float = 30.0) -> None:
    gw.pool.upsert(Registration(id=node_id, address=f"127.0.0.1:{port}", metrics_port=6100,
                                models=list(models), lease_seconds=lease))


async def test_routes_across_nodes_and_says_which(gateway: Gateway) -> None:
    a, b = await start_fake_node(node_id="a"), await start_fake_node(node_id="b")
    try:
        add(gateway, "a", a.server.port)
        add(gateway, "b", b.server.port)
        served: Counter[str] = Counter()
        async with httpx.AsyncClient() as http:
            for _ in range(10):
                r = await http.post(f"{api(gateway)}/v1/completions",
                                    json={"model": "fake-model", "prompt": "x", "max_tokens": 2})
                assert r.status_code == 200
                assert r.headers["x-inferno-attempts"] == "1"
                served[r.headers["x-inferno-backend"]] += 1
        assert set(served) == {"a", "b"}
    finally:
        await a.drain()
        await b.drain()


async def test_fails_over_from_a_dead_node(gateway: Gateway) -> None:
    live = await start_fake_node()
    try:
        add(gateway, "dead", free_port())
        add(gateway, "live", live.server.port)
        client = openai.AsyncOpenAI(base_url=f"{api(gateway)}/v1", api_key="x", max_retries=0)
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(
                model="fake-model", messages=MSG, max_tokens=3)  # type: ignore[arg-type]
            assert raw.headers["x-inferno-backend"] == "live"
            assert raw.parse().choices[0].finish_reason == "length"
        assert gateway.pool.get("dead") is not None and gateway.pool.get("dead").failures >= 1  # type: ignore[union-attr]
    finally:
        await live.drain()


async def test_all_nodes_down_is_a_fast_503_with_retry_after(gateway: Gateway) -> None:
    add(gateway, "d1", free_port())
    add(gateway, "d2", free_port())
    async with httpx.AsyncClient() as http:
        started = time.perf_counter()
        r = await http.post(f"{api(gateway)}/v1/completions",
                            json={"model": "fake-model", "prompt": "x"})
        elapsed = time.perf_counter() - started
    assert r.status_code == 503 and "retry-after" in r.headers
    assert r.json()["error"]["code"] == "no_backend_available"
    assert elapsed < 5  # bounded by connect refusals, never a hang


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"{bad", 400, "invalid_value", id="malformed"),
        pytest.param(b'{"prompt": "x"}', 400, "invalid_value", id="no-model"),
        pytest.param(b'{"model": 5}', 400, "invalid_value", id="model-type"),
        pytest.param(b'{"model": "m", "stream": "yes"}', 400, "invalid_value", id="stream-type"),
        pytest.param(b'{"model": "nope", "prompt": "x"}', 404, "model_not_found",
                     id="unknown-model"),
    ],
)
async def test_proxy_rejects_bad_input_itself(gateway: Gateway, body: bytes, status: int,
                                              code: str) -> None:
    add(gateway, "n", free_port(), models=("m",))
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{api(gateway)}/v1/completions", content=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_no_nodes_registered_is_503(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{api(gateway)}/v1/completions", json={"model": "m", "prompt": "x"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


async def test_node_4xx_is_relayed_not_retried(gateway: Gateway) -> None:
    a, b = await start_fake_node(), await start_fake_node()
    try:
        add(gateway, "a", a.server.port)
        add(gateway, "b", b.server.port)
        async with httpx.AsyncClient() as http:
            # Only the node checks stop strings; the proxy's own range checks pass this.
            r = await http.post(f"{api(gateway)}/v1/completions",
                                json={"model": "fake-model", "prompt": "x", "stop": [""]})
        assert r.status_code == 400 and r.headers["x-inferno-attempts"] == "1"
        assert r.json()["error"]["param"] == "stop"
    finally:
        await a.drain()
        await b.drain()


async def test_streams_pass_through_chunk_by_chunk(gateway: Gateway) -> None:
    node = await start_fake_node(token_delay=0.1)
    try:
        add(gateway, "n", node.server.port)
        arrivals: list[float] = []
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 5, "stream": True}
        async with httpx.AsyncClient() as http, \
                http.stream("POST", f"{api(gateway)}/v1/completions", json=body) as r:
            async for _ in r.aiter_raw():
                arrivals.append(time.perf_counter())
        # Five tokens 100 ms apart must arrive spread out, not in one buffered lump.
        assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] > 0.25
    finally:
        await node.drain()


async def _in_flight(http: httpx.AsyncClient, gw: Gateway) -> tuple[float, int]:
    """(the in-flight gauge from /metrics, in_flight from /telemetry) on the ops port."""
    text = (await http.get(f"{ops(gw)}/metrics")).text
    gauge = next(float(line.split()[1]) for line in text.splitlines()
                 if line.startswith("inferno_proxy_in_flight "))
    return gauge, int((await http.get(f"{ops(gw)}/telemetry")).json()["in_flight"])


async def test_a_stream_is_in_flight_until_it_ends(gateway: Gateway) -> None:
    node = await start_fake_node(token_delay=0.05)
    try:
        # Its real ops port: failed health checks would take it out of rotation mid-test.
        gateway.pool.upsert(Registration(id="n", address=f"127.0.0.1:{node.server.port}",
                                         metrics_port=node.ops.port, models=["fake-model"],
                                         lease_seconds=30))
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 30, "stream": True}
        async with httpx.AsyncClient() as http, httpx.AsyncClient() as probe:
            assert await _in_flight(probe, gateway) == (0.0, 0)
            # Read to the end: in flight while it runs, not after.
            async with http.stream("POST", f"{api(gateway)}/v1/completions", json=body) as r:
                chunks = r.aiter_raw()
                assert await anext(chunks)  # the handler has returned; the stream runs
                assert await _in_flight(probe, gateway) == (1.0, 1)
                rest = b"".join([c async for c in chunks])
            assert b"[DONE]" in rest  # the stream ran to its end
            assert await eventually(lambda: _is_idle(probe, gateway), what="in_flight 0")
            # The client goes away mid-stream: no longer in flight either (another prompt:
            # the same one would be answered from the response cache at once).
            # 200 tokens take 10 s: idle within 2 s means the cut ended it, not its end.
            body.update(prompt="y", max_tokens=200)
            async with http.stream("POST", f"{api(gateway)}/v1/completions", json=body) as r:
                chunks = r.aiter_raw()  # held: a dropped iterator closes the response
                assert await anext(chunks)
                assert await _in_flight(probe, gateway) == (1.0, 1)
            assert await eventually(lambda: _is_idle(probe, gateway), timeout=2,
                                    what="in_flight 0 after the client left")
        assert gateway.api.in_flight == 0
    finally:
        await node.drain()


async def _is_idle(http: httpx.AsyncClient, gw: Gateway) -> bool:
    return await _in_flight(http, gw) == (0.0, 0)


async def _serve_raw(script: Callable[[asyncio.StreamWriter], Awaitable[None]]
                     ) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await script(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _cut_mid_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    event = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"fake-model",' \
            b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)  # the scenario: the node dies mid-stream, shortly after


async def test_stream_cut_after_first_byte_ends_with_error_event(gateway: Gateway) -> None:
    server, port = await _serve_raw(_cut_mid_stream)
    try:
        add(gateway, "flaky", port)
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{api(gateway)}/v1/chat/completions",
                                json={"model": "fake-model", "messages": MSG, "stream": True})
        events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
        assert "[DONE]" not in events
        assert orjson.loads(events[-1])["error"]["type"] == "server_error"
        client = openai.AsyncOpenAI(base_url=f"{api(gateway)}/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="fake-model", messages=MSG,  # type: ignore[arg-type]
                                                      stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        # Streams cut by the node are no longer in flight once they end.
        await eventually(lambda: gateway.api.in_flight == 0, what="in_flight 0 after the cut")
    finally:
        server.close()


async def test_registration_lease_and_deregistration(gateway: Gateway) -> None:
    node = await start_fake_node(discovery_lb=f"127.0.0.1:{gateway.ops.port}", node_id="reg-1",
                                 lease=1.0)
    try:
        await eventually(lambda: gateway.pool.get("reg-1") is not None, what="reg-1 registered")
        async with httpx.AsyncClient() as http:
            models = (await http.get(f"{api(gateway)}/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["fake-model"]
            vitals = (await http.get(f"{ops(gateway)}/telemetry")).json()
            assert [n["id"] for n in vitals["nodes"]] == ["reg-1"]
        await node.drain()  # deregisters first
        assert gateway.pool.get("reg-1") is None
    finally:
        await node.drain()


async def test_lapsed_lease_removes_node(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{ops(gateway)}/registration",
                            json={"id": "silent", "address": "127.0.0.1:9", "metrics_port": 6100,
                                  "models": ["m"], "lease_seconds": 0.3})
        assert r.status_code == 200
        assert gateway.pool.get("silent") is not None
        await eventually(lambda: gateway.pool.get("silent") is None, timeout=3.0,
                         what="the lapsed lease to remove the node")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id": "x"}', id="missing-fields"),
        pytest.param(b'{"id": "x", "address": "nohost", "metrics_port": 1, "models": ["m"]}',
                     id="address-without-port"),
        pytest.param(b'{"id": "x y", "address": "h:1", "metrics_port": 1, "models": ["m"]}',
                     id="bad-id"),
        pytest.param(b'{"id": "x", "address": "h:1", "metrics_port": 1, "models": []}',
                     id="no-models"),
        pytest.param(b"nope", id="not-json"),
    ],
)
async def test_bad_registrations_are_400(gateway: Gateway, body: bytes) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{ops(gateway)}/registration", content=body)
    assert r.status_code == 400 and "error" in r.json()


async def test_proxy_drain_refuses_new_work(gateway: Gateway) -> None:
    gateway.api.accepting = False
    gateway.state = "draining"
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{ops(gateway)}/health")
        r = await http.post(f"{api(gateway)}/v1/completions", json={"model": "m", "prompt": "x"})
    assert health.status_code == 503 and r.status_code == 503


async def stream_all(resp: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in resp])
