"""The Kubernetes provider against an in-process emulator of the Kubernetes API (kmock),
and, only when KUBECONFIG is set, against a real cluster."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from inferno.core.errors import ProviderError
from inferno.governator.providers.kubernetes import DELETION_COST, KubernetesProvider
from inferno.net import HttpClient
from inferno.proxy.gateway import Gateway
from tests.conftest import start_fake_node
from tests.polling import eventually

kubernetes = pytest.importorskip("kubernetes")
kmock = pytest.importorskip("kmock")

NS = "default"
LABELS = {"app": "inferno-backend"}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": LABELS},
                     "template": {"metadata": {"labels": LABELS},
                                  "spec": {"containers": [{"name": "backend",
                                                           "image": "inferno:latest"}]}}}}


def pod(name: str, ready: bool, labels: dict[str, str] = LABELS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "backend", "image": "inferno:latest"}]},
            "status": {"podIP": "127.0.0.1", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest_asyncio.fixture
async def k8s() -> AsyncIterator[Any]:
    """An ApiClient talking to a fresh emulator on 127.0.0.1."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/pods"] = {}
        cfg = kubernetes.client.Configuration()
        cfg.host = str(server.url)
        api = kubernetes.client.ApiClient(cfg)
        yield api
        await asyncio.to_thread(api.close)


async def seed(api: Any, replicas: int, pods: list[dict[str, Any]]) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    await asyncio.to_thread(apps.create_namespaced_deployment, NS, deployment("inf", replicas))
    for p in pods:
        await asyncio.to_thread(core.create_namespaced_pod, NS, p)


def provider(api: Any, gw: Gateway, ops_port: int, client: HttpClient,
             deployment_name: str = "inf") -> KubernetesProvider:
    return KubernetesProvider(deployments={"m": deployment_name}, max_replicas={"m": 3},
                              namespace=NS, node_ops_port=ops_port, proxy_host="127.0.0.1",
                              proxy_port=gw.ops.port, client=client, drain_timeout=5,
                              api_client=api)


async def test_reads_pod_readiness_and_scales_up_within_max(k8s: Any, gateway: Gateway) -> None:
    await seed(k8s, 1, [pod("inf-a", True), pod("inf-b", False),
                        pod("other", True, {"app": "something-else"})])
    client = HttpClient()
    prov = provider(k8s, gateway, 6100, client)
    await prov.start()
    events = await prov.reconcile(0.0)
    states = {e.id: e.state for e in prov.endpoints()}
    assert states == {"inf-a": "ready", "inf-b": "starting"}  # "other" is not ours
    assert any("inf-a ready" in e for e in events)
    outcome = await prov.scale("m", 10)
    assert "replicas 1 -> 3" in outcome  # capped at max_replicas
    apps = kubernetes.client.AppsV1Api(k8s)
    dep = await asyncio.to_thread(apps.read_namespaced_deployment, "inf", NS)
    assert dep.spec.replicas == 3
    await client.aclose()


async def test_scale_down_drains_through_the_proxy_first(k8s: Any, gateway: Gateway) -> None:
    node = await start_fake_node(discovery_lb=f"127.0.0.1:{gateway.ops.port}", node_id="inf-a")
    try:
        await eventually(lambda: gateway.pool.get("inf-a") is not None,
                         what="inf-a to register")
        await seed(k8s, 1, [pod("inf-a", True)])
        client = HttpClient()
        prov = provider(k8s, gateway, node.ops.port, client)
        await prov.start()
        await prov.reconcile(0.0)
        outcome = await prov.scale("m", 0)
        assert "replicas 1 -> 0" in outcome
        core = kubernetes.client.CoreV1Api(k8s)
        p = await asyncio.to_thread(core.read_namespaced_pod, "inf-a", NS)
        assert p.metadata.annotations[DELETION_COST] == "-1000"
        apps = kubernetes.client.AppsV1Api(k8s)
        dep = await asyncio.to_thread(apps.read_namespaced_deployment, "inf", NS)
        assert dep.spec.replicas == 0
        assert [e.state for e in prov.endpoints()] == ["draining"]
        await client.aclose()
    finally:
        await node.drain()


async def test_api_error_is_a_provider_error(k8s: Any, gateway: Gateway) -> None:
    client = HttpClient()
    prov = provider(k8s, gateway, 6100, client, deployment_name="missing")
    await prov.start()
    with pytest.raises(ProviderError, match="Kubernetes API read scale failed"):
        await prov.scale("m", 2)
    events = await prov.reconcile(0.0)
    assert events and "read deployment failed" in events[0]
    await client.aclose()


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a real cluster (KUBECONFIG)")
async def test_real_cluster_scales_a_deployment(gateway: Gateway) -> None:
    kubernetes.config.load_kube_config()
    api = kubernetes.client.ApiClient()
    apps = kubernetes.client.AppsV1Api(api)
    name = f"inferno-gov-test-{uuid.uuid4().hex[:6]}"
    body = deployment(name, 0)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.k8s.io/pause:3.9"
    body["spec"]["selector"]["matchLabels"] = body["spec"]["template"]["metadata"]["labels"] = {
        "app": name}
    await asyncio.to_thread(apps.create_namespaced_deployment, NS, body)
    client = HttpClient()
    try:
        prov = provider(api, gateway, 6100, client, deployment_name=name)
        await prov.start()
        assert "replicas 0 -> 1" in await prov.scale("m", 1)
        dep = await asyncio.to_thread(apps.read_namespaced_deployment, name, NS)
        assert dep.spec.replicas == 1
        await prov.reconcile(0.0)
    finally:
        await asyncio.to_thread(apps.delete_namespaced_deployment, name, NS)
        await client.aclose()
