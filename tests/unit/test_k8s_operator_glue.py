"""The operator reaching the running install: InfernoRoutes PUT to a real in-process
proxy's ``/routing`` (and again after the proxy lost them; at every replica behind the
proxy's ops name), InfernoScalingPolicies
combined into the one ConfigMap the governator mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from inferno.governator.spec import load_policy, load_prices
from inferno.proxy.gateway import Gateway
from inferno.proxy.routing_api import build
from tests.conftest import start_gateway
from tests.polling import eventually

pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from tests.k8s_emulator import Cluster, cluster, is_, resource


async def until(cond: Any, what: str) -> Any:
    return await eventually(cond, what=what, timeout=20, interval=0.1)


async def deployment(c: Cluster, name: str, served: str) -> None:
    """An InfernoDeployment ``name`` of a downloaded InfernoModel serving ``served``."""
    await c.create(resource("InfernoModel", name, {"source": "hf://o/r/f.gguf",
                                                   "servedName": served}))
    await until(lambda: c.get("Job", f"inferno-pull-{name}"), what="the pull Job")
    await c.status_patch("Job", f"inferno-pull-{name}", {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})

    async def done() -> bool:
        return is_(await c.get("InfernoModel", name), "Downloaded")
    await until(done, what=f"InfernoModel {name} downloaded")
    await c.create(resource("InfernoDeployment", name, {"modelRef": name,
                                                        "maxReplicas": 3}))


async def test_routes_reach_the_proxy_and_come_back_after_it_lost_them(tmp_path: Path
                                                                       ) -> None:
    gw: Gateway = await start_gateway(tmp_path, node_tokens=["node-secret-token"])
    try:
        async with cluster() as c:
            await c.start_operator(proxy_ops=f"127.0.0.1:{gw.ops.port}",
                                   node_token="node-secret-token")
            await deployment(c, "a", "chat-v1")
            await deployment(c, "b", "chat-v2")
            await c.create(resource("InfernoRoute", "r", {"model": "chat", "backends": [
                {"deployment": "a", "weight": 90}, {"deployment": "b", "weight": 10}]}))
            await until(lambda: gw.router.config.canary == {
                "chat": {"chat-v1": 90.0, "chat-v2": 10.0}}, what="the proxy's canary")
            await c.spec_patch("InfernoRoute", "r", {"backends": [
                {"deployment": "a", "weight": 0}, {"deployment": "b", "weight": 100}]})
            await until(lambda: gw.router.config.canary == {"chat": {"chat-v2": 100.0}},
                        what="the canary moved to chat-v2")
            # The proxy restarted: its routing is the settings' again, no canary.
            gw.set_router(build(gw.settings.routing))
            assert gw.router.config.canary == {}
            await until(lambda: gw.router.config.canary == {"chat": {"chat-v2": 100.0}},
                        what="the routes PUT again")
            await c.delete("InfernoRoute", "r")
            await until(lambda: gw.router.config.canary == {}, what="the canary removed")
    finally:
        await gw.drain()


async def test_routes_reach_every_proxy_replica(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Two replicas behind one name, as a headless Service's name resolves to its pods.
    gws = [await start_gateway(tmp_path / d, node_tokens=["node-secret-token"]) for d in "ab"]
    name = "inferno-proxy-ops.replicas.test"

    async def resolve(host: str, port: int, *, within: float | None = None
                      ) -> list[tuple[str, int]]:
        assert host == name and port == 6100
        return [("127.0.0.1", g.ops.port) for g in gws]
    monkeypatch.setattr("inferno.net.resolve_all", resolve)
    try:
        async with cluster() as c:
            await c.start_operator(proxy_ops=f"{name}:6100", node_token="node-secret-token")
            await deployment(c, "a", "chat-v1")
            await deployment(c, "b", "chat-v2")
            await c.create(resource("InfernoRoute", "r", {"model": "chat", "backends": [
                {"deployment": "a", "weight": 50}, {"deployment": "b", "weight": 50}]}))
            want = {"chat": {"chat-v1": 50.0, "chat-v2": 50.0}}
            await until(lambda: [g.router.config.canary for g in gws] == [want, want],
                        what="the canary at both replicas")
    finally:
        for g in gws:
            await g.drain()


async def test_scaling_policies_combine_into_the_governators_configmap(tmp_path: Path
                                                                       ) -> None:
    async with cluster() as c:
        await c.start_operator()
        await deployment(c, "a", "chat-v1")
        await deployment(c, "b", "chat-v2")
        for name, dep, price in (("pa", "a", 0.5), ("pb", "b", 2.0)):
            await c.create(resource("InfernoScalingPolicy", name, {
                "deployment": dep, "nodePrice": {"usdPerHour": price, "capacity": 4}}))

        async def both() -> dict[str, Any] | None:
            cm = await c.get("ConfigMap", "inferno-governator")
            return cm if cm and "chat-v2" in cm["data"]["policy.yaml"] else None
        cm = await until(both, what="both policies in the combined ConfigMap")
        assert set(cm["data"]) == {"policy.yaml", "prices.yaml", "deployments.yaml"}
        for key, text in cm["data"].items():
            (tmp_path / key).write_text(text)
        prices = load_prices(tmp_path / "prices.yaml")  # the governator's own loaders
        policy = load_policy(tmp_path / "policy.yaml", prices, tmp_path / "prices.yaml")
        assert {(p.model, tuple(p.node_types), p.max_replicas) for p in policy.pools} == {
            ("chat-v1", ("a",), 3), ("chat-v2", ("b",), 3)}
        assert prices.node_types["b"].usd_per_hour == 2.0
        assert yaml.safe_load(cm["data"]["deployments.yaml"]) == {
            "chat-v1": "infernodeployment/a", "chat-v2": "infernodeployment/b"}

        await c.delete("InfernoScalingPolicy", "pa")

        async def one() -> dict[str, Any] | None:
            cm = await c.get("ConfigMap", "inferno-governator")
            return cm if cm and "chat-v1" not in cm["data"]["policy.yaml"] else None
        cm = await until(one, what="pa's pool gone")
        assert yaml.safe_load(cm["data"]["deployments.yaml"]) == {
            "chat-v2": "infernodeployment/b"}
        await c.delete("InfernoScalingPolicy", "pb")

        async def gone() -> bool:
            return await c.get("ConfigMap", "inferno-governator") is None
        await until(gone, what="the combined ConfigMap deleted with the last policy")
