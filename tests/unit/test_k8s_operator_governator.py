"""The governator's Kubernetes provider scaling an InfernoDeployment through its scale
subresource, with the operator (against kmock's emulator) carrying it to the Deployment."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from inferno.governator.providers.kubernetes import KubernetesProvider
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway
from tests.polling import eventually

pytest.importorskip("kopf")
pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from tests.k8s_emulator import NS, cluster, is_, resource


def pod(name: str, labels: dict[str, str], ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "backend", "image": "inferno"}]},
            "status": {"podIP": "127.0.0.1", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


async def test_scales_an_inferno_deployment_through_its_scale_subresource(
        gateway: Gateway) -> None:
    async with cluster() as c:
        await c.start_operator()
        await c.create(resource("InfernoModel", "m", {"source": "hf://o/r/f.gguf"}))
        await eventually(lambda: c.get("Job", "inferno-pull-m"), what="the pull Job",
                         timeout=15, interval=0.1)
        await c.status_patch("Job", "inferno-pull-m", {"succeeded": 1})
        await c.create(resource("InfernoDeployment", "d", {"modelRef": "m", "replicas": 1,
                                                           "maxReplicas": 4}))

        async def reconciled() -> dict[str, Any] | None:
            d = await c.get("InfernoDeployment", "d")
            node = await c.get("Deployment", "inferno-node-d")
            return d if node is not None and (d or {}).get("status", {}).get("selector") \
                else None
        d = await eventually(reconciled, what="the Deployment and the selector", timeout=15,
                             interval=0.1)
        assert not is_(d, "Ready")
        node = await c.get("Deployment", "inferno-node-d")
        assert node is not None
        labels = node["spec"]["template"]["metadata"]["labels"]
        for p in (pod("d-a", labels, True), pod("d-b", labels, False),
                  pod("other", {"app": "else"}, True)):
            await c.kube.call("POST", f"/api/v1/namespaces/{NS}/pods", p)

        client = HttpClient()
        prov = KubernetesProvider(deployments={"m": "infernodeployment/d"},
                                  max_replicas={"m": 3}, namespace=NS, node_ops_port=6100,
                                  proxy_host="127.0.0.1", proxy_port=gateway.ops.port,
                                  client=client, drain_timeout=2, api_client=c.kube.api)
        try:
            await prov.start()
            await prov.reconcile(0.0)
            assert {e.id: e.state for e in prov.endpoints()} == {"d-a": "ready",
                                                                 "d-b": "starting"}
            outcome = await prov.scale("m", 10)
            assert outcome == "infernodeployment default/d: replicas 1 -> 3"  # capped at max
            dep = await c.get("InfernoDeployment", "d")
            assert dep is not None and dep["spec"]["replicas"] == 3

            async def followed() -> bool:
                n = await c.get("Deployment", "inferno-node-d")
                return n is not None and n["spec"]["replicas"] == 3
            await eventually(followed, what="the Deployment to follow", timeout=15,
                             interval=0.1)
        finally:
            await client.aclose()


async def test_scale_to_zero_deployments_are_the_proxys_standby_models(
        gateway: Gateway) -> None:
    async with cluster() as c:
        await c.start_operator(proxy_ops=f"127.0.0.1:{gateway.ops.port}")
        await c.create(resource("InfernoModel", "m", {"source": "hf://o/r/f.gguf",
                                                      "servedName": "canary-v2"}))
        await eventually(lambda: c.get("Job", "inferno-pull-m"), what="the pull Job",
                         timeout=15, interval=0.1)
        await c.status_patch("Job", "inferno-pull-m", {"succeeded": 1})
        await c.create(resource("InfernoDeployment", "d", {
            "modelRef": "m", "replicas": 0, "minReplicas": 0,
            "scaleToZero": {"enabled": True}}))
        http = HttpClient()

        async def standby() -> list[str]:
            resp = await http.request("127.0.0.1", gateway.ops.port, "GET", "/standby")
            return list(orjson.loads(await resp.read()).get("configured") or [])
        try:
            await eventually(lambda: _has(standby, "canary-v2"),
                             what="the proxy's standby models to name canary-v2",
                             timeout=15, interval=0.2)
            node = await c.get("Deployment", "inferno-node-d")
            assert node is not None and node["spec"]["replicas"] == 0
            await c.delete("InfernoDeployment", "d")
            await eventually(lambda: _has(standby, "canary-v2", present=False),
                             what="canary-v2 no longer standby", timeout=15, interval=0.2)
        finally:
            await http.aclose()


async def _has(models: Any, name: str, present: bool = True) -> bool:
    return (name in await models()) is present
