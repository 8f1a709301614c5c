"""Routing changed at run time: ``PUT /routing`` on the proxy's ops port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from inferno.backend.node import BackendNode
from inferno.core.errors import ConfigError
from inferno.k8s.objects_config import routes_configmap
from inferno.proxy.gateway import Gateway
from inferno.proxy.routing_api import load_routing_file
from tests.conftest import start_fake_node, start_gateway
from tests.polling import eventually

MSG = [{"role": "user", "content": "hello"}]


def ops(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.ops.port}"


def routed(gw: Gateway) -> dict[str, int]:
    """Requests each served model's node has taken."""
    return {next(iter(n.models)): n.requests for n in gw.pool.snapshot.nodes}


def split(a: float, b: float) -> dict[str, Any]:
    return {"profiles": {"lo": {"scorers": [{"ref": "least-outstanding"}]}},
            "default_profile": "lo", "canary": {"chat": {"m-a": a, "m-b": b}}}


async def send(http: httpx.AsyncClient, gw: Gateway, n: int) -> None:
    for _ in range(n):
        r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                            json={"model": "chat", "messages": MSG, "max_tokens": 2})
        assert r.status_code == 200, r.text


async def test_a_routing_update_moves_the_next_requests(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="none")
    nodes: list[BackendNode] = []
    try:
        for model in ("m-a", "m-b"):
            nodes.append(await start_fake_node(model=model, node_id=f"node-{model}",
                                               discovery_lb=f"127.0.0.1:{gw.ops.port}"))
        await eventually(lambda: gw.pool.snapshot.models >= {"m-a", "m-b"}, what="two nodes")
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.put(f"{ops(gw)}/routing", json=split(0, 100))
            assert r.status_code == 200, r.text
            assert r.json()["canary"] == {"chat": {"m-a": 0.0, "m-b": 100.0}}
            await send(http, gw, 6)
            assert routed(gw) == {"m-a": 0, "m-b": 6}
            r = await http.put(f"{ops(gw)}/routing", json=split(100, 0))
            assert r.status_code == 200, r.text
            await send(http, gw, 4)
            assert routed(gw) == {"m-a": 4, "m-b": 6}
            got = (await http.get(f"{ops(gw)}/routing")).json()
            assert got["canary"] == {"chat": {"m-a": 100.0, "m-b": 0.0}}
            state = (await http.get(f"{ops(gw)}/router/state")).json()
            assert state["canary"] == got["canary"] and state["default_profile"] == "lo"
            # A preset name, as the settings take it: no canary any more.
            r = await http.put(f"{ops(gw)}/routing", json="round-robin")
            assert r.status_code == 200 and r.json()["canary"] == {}
            r = await http.post(f"http://127.0.0.1:{gw.server.port}/v1/chat/completions",
                                json={"model": "chat", "messages": MSG, "max_tokens": 2})
            assert r.status_code == 404  # "chat" itself is served by no node
    finally:
        for node in nodes:
            await node.drain()
        await gw.drain()


async def test_a_bad_routing_is_refused_naming_the_field(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="none")
    try:
        before = gw.router
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{ops(gw)}/routing"
            cases: list[tuple[Any, str]] = [
                ({**split(1, 1), "canary": {"chat": {"m-a": -1}}}, "canary.chat"),
                ({**split(1, 1), "default_profile": "nope"}, "default_profile"),
                ({**split(1, 1), "model_profiles": {"chat": "nope"}}, "model_profiles.chat"),
                ({**split(1, 1), "surprise": 1}, "surprise"),
                ({"default_profile": "lo"}, "profiles"),
                ({"profiles": {"x": {"picker": "nope"}}, "default_profile": "x"}, "profiles"),
                ("no-such-preset", "routing"),
            ]
            for body, param in cases:
                r = await http.put(url, json=body)
                assert r.status_code == 400, (body, r.text)
                assert r.json()["error"]["param"] == param, (body, r.text)
            r = await http.put(url, content=b"{not json")
            assert r.status_code == 400
        assert gw.router is before  # nothing was swapped
    finally:
        await gw.drain()


async def test_setting_routing_needs_a_node_token_where_they_are_set(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, node_tokens=["node-secret"])
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{ops(gw)}/routing"
            r = await http.put(url, json=split(0, 1))
            assert r.status_code == 401 and gw.router.config.canary == {}
            r = await http.put(url, json=split(0, 1),
                               headers={"authorization": "Bearer wrong-secret"})
            assert r.status_code == 401 and gw.router.config.canary == {}
            r = await http.put(url, json=split(0, 1),
                               headers={"authorization": "Bearer node-secret"})
            assert r.status_code == 200 and gw.router.config.canary == {
                "chat": {"m-a": 0.0, "m-b": 1.0}}
    finally:
        await gw.drain()


async def test_the_proxy_starts_with_the_routes_configmaps_routing(tmp_path: Path) -> None:
    """The operator's ``inferno-routes`` ConfigMap, mounted: the proxy starts with it."""
    route = {"metadata": {"name": "r", "namespace": "ns", "uid": "u1"},
             "apiVersion": "inferno.dev/v1alpha1", "kind": "InfernoRoute",
             "spec": {"model": "chat", "backends": [{"deployment": "a", "weight": 3},
                                                    {"deployment": "b", "weight": 1}]}}
    cm = routes_configmap("ns", [route], {"a": "m-a", "b": "m-b"})
    path = tmp_path / "proxy.yaml"
    path.write_text(cm["data"]["proxy.yaml"])
    gw = await start_gateway(tmp_path, auth="none", routing_file=path)
    try:
        assert gw.router.config.canary == {"chat": {"m-a": 3.0, "m-b": 1.0}}
    finally:
        await gw.drain()
    assert load_routing_file(tmp_path / "absent.yaml") is None  # not mounted (yet)
    path.write_text("routing:\n  default_profile: nope\n  profiles: {}\n")
    with pytest.raises(ConfigError) as err:
        load_routing_file(path)
    assert str(path) in err.value.message and "default_profile" in err.value.message
