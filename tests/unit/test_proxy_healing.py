"""Proxy behaviours of the self-healing issue not covered by the chaos scenarios."""

from __future__ import annotations

import asyncio
import time

import httpx2 as httpx

from inferno.api.node import Registration
from inferno.core.config import ProxySettings
from inferno.proxy.gateway import Gateway
from tests.conftest import start_fake_node
from tests.polling import eventually


def add(gw: Gateway, node_id: str, port: int, ops_port: int) -> None:
    gw.pool.upsert(Registration(id=node_id, address=f"127.0.0.1:{port}", metrics_port=ops_port,
                                models=["fake-model"], lease_seconds=30))


async def test_client_disconnect_cancels_generation_on_the_node(gateway: Gateway) -> None:
    node = await start_fake_node(token_delay=0.05)
    try:
        add(gateway, "n", node.server.port, node.ops.port)
        url = f"http://127.0.0.1:{gateway.server.port}/v1/completions"
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 400, "stream": True}
        async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as r:
            async for _ in r.aiter_raw():
                break
        left = time.monotonic()
        await eventually(lambda: node.engine.stats().active == 0, timeout=2.0,
                         what="the node to stop generating")
        assert time.monotonic() - left < 1.0  # the node stopped generating within a second
        assert node.engine.stats().tokens_generated < 100
        await eventually(lambda: gateway.pool.get("n").outstanding == 0,  # type: ignore[union-attr]
                         timeout=2.0, what="the proxy to release the node")
    finally:
        await node.drain()


async def test_route_headers_and_router_state(gateway: Gateway) -> None:
    a, b = await start_fake_node(node_id="a"), await start_fake_node(node_id="b")
    try:
        add(gateway, "a", a.server.port, a.ops.port)
        add(gateway, "b", b.server.port, b.ops.port)
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://127.0.0.1:{gateway.server.port}/v1/completions",
                                json={"model": "fake-model", "prompt": "x", "max_tokens": 2})
            route = r.headers["x-inferno-route"]
            assert route.startswith("least-outstanding max-score ")
            assert r.headers["x-inferno-backend"] in route
            await asyncio.sleep(0.4)  # let an active health check run
            state = (await http.get(f"http://127.0.0.1:{gateway.ops.port}/router/state")).json()
        nodes = {n["id"]: n for n in state["nodes"]}
        assert set(nodes) == {"a", "b"}
        for n in nodes.values():
            assert n["healthy"] and n["breaker"] == "closed" and n["in_flight"] == 0
            assert {"ewma_ttft_ms", "queue_depth", "ejections", "last_error"} <= set(n)
        assert sum(n["requests"] for n in nodes.values()) == 1
        scorers = state["profiles"]["least-outstanding"]["scorers"]
        assert [s["name"] for s in scorers] == [
        "model-loaded", "least-outstanding", "queue-depth", "latency"]
        assert all(s["calls"] == 1 for s in scorers)
        assert state["retry_budget"]["requests"] == 1
    finally:
        await a.drain()
        await b.drain()


async def test_unhealthy_node_leaves_rotation_and_returns() -> None:
    gw = Gateway(ProxySettings(port=0, ops_port=0, health_interval=0.05, healthy_after=2,
                               unhealthy_after=2))
    await gw.start()
    node = await start_fake_node()
    try:
        add(gw, "n", node.server.port, node.ops.port)
        n = gw.pool.get("n")
        assert n is not None
        node.state = "draining"  # its /health now says 503
        await eventually(lambda: not n.healthy, what="the node marked unhealthy")
        node.state = "ready"
        await eventually(lambda: n.healthy, what="the node healthy again")
    finally:
        await node.drain()
        await gw.drain()


async def test_proxy_drain_finishes_in_flight_stream() -> None:
    gw = Gateway(ProxySettings(port=0, ops_port=0, drain_timeout=5))
    await gw.start()
    node = await start_fake_node(token_delay=0.02)
    try:
        add(gw, "n", node.server.port, node.ops.port)
        url = f"http://127.0.0.1:{gw.server.port}/v1/completions"
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 30, "stream": True}
        async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as r:
            drain = None
            chunks = []
            async for chunk in r.aiter_text():
                chunks.append(chunk)
                if drain is None:
                    drain = asyncio.create_task(gw.drain())
            assert "[DONE]" in "".join(chunks)  # the stream completed during the drain
        assert drain is not None
        await drain
    finally:
        await node.drain()
