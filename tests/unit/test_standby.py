"""Scale from zero at the proxy: requests for a standby model with no node wait for one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from inferno.backend.node import BackendNode
from inferno.governator.signals import _held_by_proxy
from inferno.proxy.gateway import Gateway
from tests.conftest import start_fake_node, start_gateway
from tests.polling import eventually

MSG = [{"role": "user", "content": "hello"}]
CHAT = {"model": "fake-model", "messages": MSG, "max_tokens": 4}


def api(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.server.port}"


def ops(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.ops.port}"


async def telemetry(http: httpx.AsyncClient, gw: Gateway) -> dict[str, Any]:
    r = await http.get(f"{ops(gw)}/telemetry")
    assert r.status_code == 200
    data: dict[str, Any] = r.json()
    return data


async def held(http: httpx.AsyncClient, gw: Gateway) -> dict[str, int]:
    data = (await telemetry(http, gw))["held"]
    assert isinstance(data, dict)
    return data


async def join(gw: Gateway) -> BackendNode:
    return await start_fake_node(discovery_lb=f"127.0.0.1:{gw.ops.port}")


async def post_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]
                      ) -> tuple[int, str]:
    async with http.stream("POST", url, json=body) as r:
        return r.status_code, (await r.aread()).decode()


async def test_held_requests_proceed_once_a_node_registers(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_models=["fake-model"])
    node: BackendNode | None = None
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{api(gw)}/v1/chat/completions"
            plain = asyncio.create_task(http.post(url, json=CHAT))
            streamed = asyncio.create_task(post_stream(http, url, {**CHAT, "stream": True}))
            # Both wait: no node exists for the model, and neither got an answer yet.
            await eventually(_count(http, gw, 2), what="two requests held")
            assert not gw.pool.snapshot.nodes and not plain.done() and not streamed.done()
            metrics = (await http.get(f"{ops(gw)}/metrics")).text
            assert 'inferno_proxy_held_requests{model="fake-model"} 2.0' in metrics
            assert (await telemetry(http, gw))["unserved"] == {"fake-model": 2}
            node = await join(gw)
            r = await plain
            status, text = await streamed
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert status == 200 and text.rstrip().endswith("data: [DONE]"), text
        assert gw.standby.held == {}
    finally:
        if node is not None:
            await node.drain()
        await gw.drain()


def _count(http: httpx.AsyncClient, gw: Gateway, n: int) -> Any:
    async def check() -> bool:
        return (await held(http, gw)).get("fake-model", 0) == n
    return check


async def test_past_max_held_is_429_with_retry_after(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_models=["fake-model"], max_held=1)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{api(gw)}/v1/chat/completions"
            first = asyncio.create_task(http.post(url, json=CHAT))
            await eventually(_count(http, gw, 1), what="the first request held")
            r = await http.post(url, json=CHAT)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and "fake-model" in error["message"]
            assert not first.done()  # the one held still waits
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    finally:
        await gw.drain()


async def test_hold_timeout_is_503_with_retry_after(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_models=["fake-model"], hold_timeout=0.5)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{api(gw)}/v1/chat/completions", json=CHAT)
            assert gw.standby.unserved == {"fake-model": 1}  # it was held, then gave up
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            error = r.json()["error"]
            assert error["code"] == "no_backend_available" and "became ready" in error["message"]
            assert gw.standby.timeouts == 1 and await held(http, gw) == {}
    finally:
        await gw.drain()


async def test_a_client_that_leaves_frees_its_place(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_models=["fake-model"], max_held=1)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{api(gw)}/v1/chat/completions"
            waiting = asyncio.create_task(http.post(url, json=CHAT))
            await eventually(_count(http, gw, 1), what="the request held")
            waiting.cancel()  # the client closes its connection
            await asyncio.gather(waiting, return_exceptions=True)
            await eventually(_count(http, gw, 0), what="its place freed")
            # The place is free: another request is held rather than refused.
            again = asyncio.create_task(http.post(url, json=CHAT))
            await eventually(_count(http, gw, 1), what="a new request held")
            again.cancel()
            await asyncio.gather(again, return_exceptions=True)
    finally:
        await gw.drain()


async def test_unknown_models_still_fail_at_once(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path)
    node: BackendNode | None = None
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{api(gw)}/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["message"] == "No inference nodes are registered yet."
            node = await join(gw)
            await eventually(lambda: "fake-model" in gw.pool.snapshot.by_model,
                             what="the node ready")
            r = await http.post(f"{api(gw)}/v1/chat/completions",
                                json={**CHAT, "model": "other"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert gw.standby.unserved == {}  # never held
            # Made standby at run time, the same request waits for a node.
            put = await http.put(f"{ops(gw)}/standby", json={"models": ["other"]})
            assert put.status_code == 200 and put.json()["configured"] == ["other"]
            waiting = asyncio.create_task(http.post(f"{api(gw)}/v1/chat/completions",
                                                    json={**CHAT, "model": "other"}))
            await eventually(lambda: gw.standby.held == {"other": 1}, what="it held")
            # Taken off the list, it fails as before.
            await http.put(f"{ops(gw)}/standby", json={"models": []})
            r = await waiting
            assert r.status_code == 404
    finally:
        if node is not None:
            await node.drain()
        await gw.drain()


async def test_a_model_whose_nodes_left_is_remembered(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_ttl=3600)  # no standby models: memory only
    node: BackendNode | None = await join(gw)
    try:
        assert node is not None
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{api(gw)}/v1/chat/completions"
            await eventually(lambda: "fake-model" in gw.pool.snapshot.by_model,
                             what="the node ready")
            await node.drain()  # scaled to zero: its registration is withdrawn
            node = None
            await eventually(lambda: not gw.pool.snapshot.nodes, what="the pool empty")
            listed = (await http.get(f"{api(gw)}/v1/models")).json()["data"]
            assert [m["id"] for m in listed] == ["fake-model"]  # still offered
            waiting = asyncio.create_task(http.post(url, json=CHAT))
            await eventually(_count(http, gw, 1), what="the request held")
            node = await join(gw)
            r = await waiting
            assert r.status_code == 200, r.text
    finally:
        if node is not None:
            await node.drain()
        await gw.drain()


async def test_without_memory_a_model_whose_nodes_left_fails_at_once(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_ttl=0)
    node = await join(gw)
    try:
        await eventually(lambda: "fake-model" in gw.pool.snapshot.by_model,
                         what="the node ready")
        await node.drain()
        await eventually(lambda: not gw.pool.snapshot.nodes, what="the pool empty")
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{api(gw)}/v1/chat/completions", json=CHAT)
            listed = (await http.get(f"{api(gw)}/v1/models")).json()["data"]
        assert r.status_code == 503 and gw.standby.unserved == {} and listed == []
    finally:
        await gw.drain()


async def test_proxy_drain_ends_held_requests(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, standby_models=["fake-model"])
    async with httpx.AsyncClient(timeout=30) as http:
        waiting = asyncio.create_task(http.post(f"{api(gw)}/v1/chat/completions", json=CHAT))
        await eventually(_count(http, gw, 1), what="the request held")
        await gw.drain()
        r = await waiting
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


async def test_setting_standby_models_needs_a_node_token_where_they_are_set(
    tmp_path: Path
) -> None:
    gw = await start_gateway(tmp_path, node_tokens=["node-secret"])
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{ops(gw)}/standby"
            r = await http.put(url, json={"models": ["fake-model"]})
            assert r.status_code == 401 and gw.standby.configured == frozenset()
            auth = {"authorization": "Bearer node-secret"}
            r = await http.put(url, json={"models": "fake-model"}, headers=auth)
            assert r.status_code == 400 and r.json()["error"]["param"] == "models"
            r = await http.put(url, json={"models": ["fake-model"]}, headers=auth)
            assert r.status_code == 200 and gw.standby.configured == {"fake-model"}
            assert (await http.get(url)).json()["configured"] == ["fake-model"]
    finally:
        await gw.drain()


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        pytest.param({"in_flight": 3, "nodes": [], "held": {"a": 3}}, {"a": 3}, id="at-zero"),
        pytest.param({"in_flight": 9, "held": {"b": 3}, "nodes": [
            {"models": ["a"], "outstanding": 4}]}, {"a": 2, "b": 3}, id="fill-and-zero"),
        pytest.param({"in_flight": 3, "nodes": [], "held": {"other": 3}}, {}, id="not-a-pool"),
    ],
)
def test_the_governator_reads_held_requests_as_demand(
    proxy: dict[str, Any], expected: dict[str, int]
) -> None:
    assert _held_by_proxy(proxy, ["a", "b"]) == expected
