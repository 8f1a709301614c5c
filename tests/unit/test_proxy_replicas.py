"""Several proxy replicas behind one name (a headless Service): the name resolves to each,
nodes register with all of them, drains reach all of them."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from inferno.api.node import Registration
from inferno.core.errors import UpstreamConnectError
from inferno.governator.providers import ProxyDrainer
from inferno.net import HttpClient, resolve_all
from inferno.proxy.gateway import Gateway
from tests.conftest import free_port, start_fake_node, start_gateway
from tests.polling import eventually

NAME = "proxy-ops.replicas.test"


def behind_name(monkeypatch: pytest.MonkeyPatch, module: str,
                replicas: list[tuple[str, int]]) -> None:
    """``NAME`` resolves, for ``module``, to ``replicas`` (as a headless Service's name
    resolves to its pods); any other name as usual."""
    async def resolve(host: str, port: int, *, within: float | None = None
                      ) -> list[tuple[str, int]]:
        return list(replicas) if host == NAME else await resolve_all(host, port, within=within)
    monkeypatch.setattr(f"{module}.resolve_all", resolve)


def ops(gw: Gateway) -> tuple[str, int]:
    return ("127.0.0.1", gw.ops.port)


async def test_resolve_all_dedupes_sorts_and_keeps_one_family(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[str]] = {
        "dual.test": ["fd00::2", "10.0.0.9", "fd00::1", "10.0.0.10", "10.0.0.9"],
        "v6.test": ["fd00::b", "fd00::a", "fd00::b"],
        "loop.test": ["::1", "127.0.0.1"]}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers[host]]
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    assert await resolve_all("dual.test", 6100) == [("10.0.0.9", 6100), ("10.0.0.10", 6100)]
    assert await resolve_all("v6.test", 6100) == [("fd00::a", 6100), ("fd00::b", 6100)]
    assert await resolve_all("loop.test", 6100) == [("loop.test", 6100)]  # one machine
    assert await resolve_all("10.1.2.3", 80) == [("10.1.2.3", 80)]  # no lookup for an IP
    assert await resolve_all("fd00::7", 80) == [("fd00::7", 80)]
    with pytest.raises(UpstreamConnectError, match=r"Cannot resolve gone\.test"):
        await resolve_all("gone.test", 6100)


async def test_a_node_registers_with_every_replica_and_outlives_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferno.backend.registration")
    gw1 = await start_gateway(tmp_path / "a")
    gw2 = await start_gateway(tmp_path / "b")
    behind_name(monkeypatch, "inferno.backend.registration", [ops(gw1), ops(gw2)])
    node = await start_fake_node(discovery_lb=f"{NAME}:6100", node_id="n1")
    try:
        await eventually(lambda: gw1.pool.get("n1") and gw2.pool.get("n1"),
                         what="n1 registered with both replicas")
        gone = f"127.0.0.1:{gw2.ops.port})"
        await gw2.drain()  # one replica goes away; the other keeps hearing from the node
        for _ in range(2):
            assert gw1.pool.remove("n1")
            await eventually(lambda: gw1.pool.get("n1"), what="n1 renewed at the live replica")
        dead = [r for r in caplog.records if gone in r.getMessage()]
        assert len(dead) == 1, [r.getMessage() for r in dead]  # a streak is logged once
        assert dead[0].levelno == logging.WARNING and "unreachable" in dead[0].getMessage()
    finally:
        await node.drain()
    assert gw1.pool.get("n1") is None  # deregistered where it could be
    await gw1.drain()


async def test_deregistration_reaches_every_replica(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gws = [await start_gateway(tmp_path / d) for d in "ab"]
    behind_name(monkeypatch, "inferno.backend.registration", [ops(g) for g in gws])
    node = await start_fake_node(discovery_lb=f"{NAME}:6100", node_id="n1")
    await eventually(lambda: all(g.pool.get("n1") for g in gws), what="n1 at both replicas")
    await node.drain()
    try:
        assert [g.pool.get("n1") for g in gws] == [None, None]
    finally:
        for g in gws:
            await g.drain()


async def test_the_governators_drain_reaches_every_replica(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gws = [await start_gateway(tmp_path / d) for d in "ab"]
    dead = ("127.0.0.1", free_port())
    client = HttpClient()
    try:
        for g in gws:
            g.pool.upsert(Registration(id="n1", address="127.0.0.1:8001", metrics_port=6100,
                                       models=["m"], lease_seconds=60))
        behind_name(monkeypatch, "inferno.governator.providers.base",
                    [ops(gws[0]), dead, ops(gws[1])])
        drainer = ProxyDrainer(client, NAME, 6100)
        assert not await drainer.deregister("n1")  # one replica did not answer
        assert [g.pool.get("n1") for g in gws] == [None, None]  # the others still did
        behind_name(monkeypatch, "inferno.governator.providers.base", [ops(g) for g in gws])
        assert await drainer.deregister("n1")  # already gone everywhere: done
    finally:
        await client.aclose()
        for g in gws:
            await g.drain()


async def test_the_operators_put_is_done_only_when_every_replica_took_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kopf = pytest.importorskip("kopf")
    from inferno.k8s.objects_config import merge_routing
    from inferno.k8s.operator import OperatorConfig, put_proxy

    gws = [await start_gateway(tmp_path / d) for d in "ab"]
    cfg = OperatorConfig(proxy_ops=f"{NAME}:6100", retry_delay=0.1)
    routes = {**merge_routing([]), "canary": {"chat": {"chat-v1": 100.0}}}
    try:
        behind_name(monkeypatch, "inferno.net", [ops(gws[0]), ("127.0.0.1", free_port())])
        with pytest.raises(kopf.TemporaryError, match="Cannot connect"):
            await put_proxy(cfg, "/routing", routes)  # kopf retries the handler
        assert gws[0].router.config.canary == routes["canary"]  # the live one took it
        behind_name(monkeypatch, "inferno.net", [ops(g) for g in gws])
        await put_proxy(cfg, "/routing", routes)
        assert [g.router.config.canary for g in gws] == [routes["canary"]] * 2
    finally:
        for g in gws:
            await g.drain()
