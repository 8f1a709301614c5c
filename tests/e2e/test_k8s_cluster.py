"""Kubernetes mode against a real cluster (kind, or any cluster ``KUBECONFIG`` names).

Installs Inferno's CRDs (server-side apply: idempotent, the one change this makes to the
cluster), then asks the API server, with server-side dry runs, whether it accepts every
example resource and every manifest ``inferno k8s render`` gives, and whether it refuses
a resource that breaks its CRD's schema. Without a reachable cluster the module is
skipped, saying why: the offline tests (tests/unit/test_k8s_render*.py) cover the rest.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferno.k8s.crds import all_crds
from inferno.k8s.render import render
from inferno.k8s.values import RenderValues

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("INFERNO_E2E_NAMESPACE", "default")
MANAGER = "inferno-e2e"


@functools.cache
def _connect() -> tuple[Any, str]:
    """(a connected ``kubernetes.client.ApiClient``, "") or (None, why not); asked once."""
    if not os.environ.get("KUBECONFIG"):
        return None, "no Kubernetes cluster: KUBECONFIG is not set (kind, or any cluster)"
    import kubernetes

    try:
        kubernetes.config.load_kube_config()
        api = kubernetes.client.ApiClient()
        api.configuration.retries = 0  # one try, bounded by the 3 s timeout
        kubernetes.client.CoreV1Api(api).list_namespace(limit=1, _request_timeout=3)
    except Exception as exc:  # no server, no credentials, a bad file: all mean no cluster
        return None, f"no reachable Kubernetes cluster at KUBECONFIG: {exc}"[:300]
    return api, ""


def _cluster() -> Any:
    api, why = _connect()
    if api is None:
        pytest.skip(why)
    return api


@pytest.fixture(scope="module")
def dynamic() -> Any:
    from kubernetes.dynamic import DynamicClient

    client = DynamicClient(_cluster())
    crds = client.resources.get(api_version="apiextensions.k8s.io/v1",
                                kind="CustomResourceDefinition")
    for crd in all_crds():
        crds.server_side_apply(body=crd, name=crd["metadata"]["name"],
                               field_manager=MANAGER, force_conflicts=True)
    deadline = time.monotonic() + 60
    for crd in all_crds():
        while True:
            conditions = crds.get(name=crd["metadata"]["name"]).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"{crd['metadata']['name']} not Established"
            time.sleep(0.5)
    client.invalidate_cache()  # discovery learns the new kinds
    return client


def _dry_run(client: Any, obj: dict[str, Any]) -> Any:
    resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = NAMESPACE if resource.namespaced else None
    return resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                      namespace=namespace, field_manager=MANAGER,
                                      dry_run="All", force_conflicts=True)


EXAMPLES = sorted((ROOT / "examples/k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_cluster_accepts_example(dynamic: Any, path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    accepted = _dry_run(dynamic, obj)
    assert accepted.kind == obj["kind"] and accepted.metadata.name == obj["metadata"]["name"]
    # The API server kept every field (a field its schema does not know would be pruned).
    assert accepted.to_dict()["spec"].keys() >= obj["spec"].keys()


def test_cluster_refuses_a_resource_its_crd_forbids(dynamic: Any) -> None:
    from kubernetes.dynamic.exceptions import UnprocessableEntityError

    obj = yaml.safe_load((ROOT / "examples/k8s/deployment.yaml").read_text())
    obj["spec"]["replicas"] = -1
    with pytest.raises(UnprocessableEntityError):
        _dry_run(dynamic, obj)


def test_cluster_accepts_the_rendered_manifests(dynamic: Any) -> None:
    values = RenderValues.model_validate({
        "namespace": NAMESPACE, "createNamespace": False, "governator": {"enabled": True},
        "nodeToken": {"value": "e2e-node-token-0123456789"}})
    objects = [o for o in render(values, crds=False) if o["kind"] != "ServiceMonitor"]
    for obj in objects:
        accepted = _dry_run(dynamic, obj)
        assert accepted.kind == obj["kind"]
