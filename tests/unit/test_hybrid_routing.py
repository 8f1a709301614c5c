"""Hybrid routing: local node first, the priced cloud node takes the excess only while the
local queue wait is over the threshold, and traffic returns to local after the burst."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx2 as httpx
import pytest

from inferno.api.node import Registration
from inferno.backend.node import BackendNode
from inferno.core.config import BackendSettings, ProxySettings
from inferno.proxy.gateway import Gateway
from inferno.proxy.pool import Node
from inferno.proxy.routing import SCORERS, RouteContext
from inferno.wiring import build_engine
from tests.chaos.node import ChaosNode
from tests.conftest import start_fake_node
from tests.polling import eventually


def n(node_id: str, **kw: object) -> Node:
    node = Node(id=node_id, host="h", port=1, ops_port=2, models=frozenset({"m"}), capacity=1,
                source="registered")
    for k, v in kw.items():
        setattr(node, k, v)
    return node


@pytest.mark.parametrize(
    ("local", "winner"),
    [
        pytest.param(n("local"), "local", id="idle-local"),
        pytest.param(n("local", ewma_ttft=0.5, queue_depth=1, outstanding=2), "local",
                     id="local-short-wait"),
        pytest.param(n("local", ewma_ttft=1.5, queue_depth=3, outstanding=4), "cloud",
                     id="local-long-wait"),
        pytest.param(n("local", ewma_ttft=9.0, queue_depth=0, outstanding=0), "local",
                     id="stale-ewma-but-idle"),
    ],
)
def test_offload_scorer(local: Node, winner: str) -> None:
    cloud = n("cloud", price_per_mtok=2.0)
    scores = SCORERS["offload"](max_queue_wait=2.0).score([local, cloud], RouteContext("m", False))
    assert [local, cloud][scores.index(max(scores))].id == winner


def idle(gw: Gateway, node_id: str) -> bool:
    node = gw.pool.get(node_id)
    return node is not None and node.queue_depth == 0 and node.outstanding == 0


async def test_burst_overflows_to_the_cloud_then_returns_local() -> None:
    provider = ChaosNode("provider", model="cloud-gpt", chunks=4)
    await provider.start()
    cloud = BackendNode(BackendSettings(
        port=0, ops_port=0, engine="openai", served_name="m", remote_model="cloud-gpt",
        remote_url=f"http://127.0.0.1:{provider.port}/v1", parallel=64,
        price_per_mtok_input=1.0, price_per_mtok_output=3.0), build_engine(BackendSettings(
            engine="openai", served_name="m", remote_model="cloud-gpt",
            remote_url=f"http://127.0.0.1:{provider.port}/v1", parallel=64,
            price_per_mtok_input=1.0, price_per_mtok_output=3.0)))
    await cloud.start()
    local = await start_fake_node(model="m", token_delay=0.05, parallel=1)
    gw = Gateway(ProxySettings(port=0, ops_port=0, routing="hybrid", health_interval=0.1,
                               max_per_node=64))
    await gw.start()
    try:
        for node in (local, cloud):
            gw.pool.upsert(Registration.model_validate(node.registration().model_dump()))
        url = f"http://127.0.0.1:{gw.server.port}/v1/chat/completions"
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=30) as http:
            quiet = [(await http.post(url, json=body)).headers["x-inferno-backend"]
                     for _ in range(3)]
            burst = await asyncio.gather(*(http.post(url, json=body) for _ in range(24)))
            served = Counter(r.headers["x-inferno-backend"] for r in burst)
            assert all(r.status_code == 200 for r in burst)
            # The local node drains; the proxy's telemetry polls see it idle again.
            await eventually(lambda: idle(gw, local.node_id), what="the local node idle")
            after = [(await http.post(url, json=body)).headers["x-inferno-backend"]
                     for _ in range(3)]
        assert set(quiet) == {local.node_id}
        assert served[cloud.node_id] > 0 and served[local.node_id] > 0
        assert set(after) == {local.node_id}
        assert provider.requests >= served[cloud.node_id]  # the offload really reached it
    finally:
        await gw.drain()
        await local.drain()
        await cloud.drain()
        await provider.stop()
