"""ConfigMaps the operator renders for the proxy (routes) and the governator (policies).

- ``inferno-routes``: one per namespace, key ``proxy.yaml``, the proxy's settings fragment
  ``routing:`` (a routing preset's profiles plus ``canary``: public model -> {served model:
  weight}, and ``model_profiles``), for ``inferno proxy --config``. Every InfernoRoute of
  the namespace owns it (non-controller references): the garbage collector removes it with
  the last of them.
- ``inferno-governator-<policy>``: keys ``policy.yaml`` and ``prices.yaml`` (the
  governator's own file formats) and ``deployment`` (``infernodeployment/<name>``, the
  value for the governator's ``k8s_deployment`` setting: it scales through the
  InfernoDeployment's scale subresource).
- ``inferno-governator``: one per namespace, every policy of it together, for the one
  governator an install runs (it mounts this ConfigMap and reloads it when it changes):
  ``policy.yaml`` (one pool per InfernoScalingPolicy), ``prices.yaml`` (one node type per
  policy) and ``deployments.yaml`` (pool -> ``infernodeployment/<name>``). Every policy
  owns it, as with the routes.

The proxy also gets its routing at run time: the operator PUTs the same ``routing`` to
the proxy's ops route ``/routing``.
"""

from __future__ import annotations

from typing import Any

import yaml

from inferno.core.routing_config import ROUTING_PRESETS
from inferno.k8s.objects import labels, meta, owner_ref
from inferno.k8s.resources import DeploymentSpec, RouteSpec, ScalingPolicySpec

ROUTES = "inferno-routes"
GOVERNATOR = "inferno-governator"
DEFAULT_PRESET = "least-outstanding"


def policy_name(policy: str) -> str:
    return f"inferno-governator-{policy}"


def routing(routes: list[dict[str, Any]], served: dict[str, str],
            preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """The proxy's ``routing`` settings for ``routes``; ``served``: InfernoDeployment name ->
    the model name its nodes serve (deployments not there yet are left out)."""
    base = ROUTING_PRESETS[preset].model_dump(mode="json")
    canary: dict[str, dict[str, float]] = {}
    profiles: dict[str, str] = {}
    for route in sorted(routes, key=lambda r: str(r["metadata"]["name"])):
        spec = RouteSpec.model_validate(route["spec"])
        split: dict[str, float] = {}
        for b in spec.backends:
            if b.deployment in served and b.weight > 0:
                target = served[b.deployment]
                split[target] = split.get(target, 0.0) + float(b.weight)
        if split:
            canary[spec.model] = split
        if spec.profile:
            profiles[spec.model] = spec.profile
            if spec.profile in ROUTING_PRESETS and spec.profile not in base["profiles"]:
                base["profiles"].update(
                    ROUTING_PRESETS[spec.profile].model_dump(mode="json")["profiles"])
    return {**base, "canary": canary, "model_profiles": profiles}


def merge_routing(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One routing for the proxy from several namespaces' (``routing`` results); none: the
    default preset, no canary."""
    out = ROUTING_PRESETS[DEFAULT_PRESET].model_dump(mode="json")
    out.update(canary={}, model_profiles={})
    for part in parts:
        out["profiles"].update(part["profiles"])
        out["canary"].update(part["canary"])
        out["model_profiles"].update(part["model_profiles"])
    return out


def routes_configmap(namespace: str, routes: list[dict[str, Any]],
                     served: dict[str, str]) -> dict[str, Any]:
    owners = [{**owner_ref(r), "controller": False} for r in routes]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROUTES, "namespace": namespace,
                         "labels": labels("routes", ROUTES), "ownerReferences": owners},
            "data": {"proxy.yaml": yaml.safe_dump({"routing": routing(routes, served)},
                                                  sort_keys=False)}}


def policy_configmap(policy: dict[str, Any], dep: dict[str, Any], model: str) -> dict[str, Any]:
    """``model``: the served name of the deployment's model (the governator's pool)."""
    spec = ScalingPolicySpec.model_validate(policy["spec"])
    dspec = DeploymentSpec.model_validate(dep["spec"])
    name = policy["metadata"]["name"]
    pool = spec.pool(model, dspec.min_replicas, dspec.max_replicas)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": meta(policy_name(name), policy, labels("governator-policy", name)),
            "data": {"policy.yaml": yaml.safe_dump({"pools": [pool]}, sort_keys=False),
                     "prices.yaml": yaml.safe_dump(
                         {"node_types": {spec.deployment: spec.node_type()}}, sort_keys=False),
                     "deployment": f"infernodeployment/{spec.deployment}"}}


def governator_configmap(namespace: str, policies: list[tuple[dict[str, Any], dict[str, Any],
                                                             str]]) -> dict[str, Any]:
    """``policies``: (InfernoScalingPolicy, its InfernoDeployment, the deployment's served
    model name), every valid one of the namespace."""
    pools: list[dict[str, Any]] = []
    node_types: dict[str, Any] = {}
    deployments: dict[str, str] = {}
    for policy, dep, model in sorted(policies, key=lambda p: str(p[0]["metadata"]["name"])):
        spec = ScalingPolicySpec.model_validate(policy["spec"])
        dspec = DeploymentSpec.model_validate(dep["spec"])
        if model in deployments:  # one pool per model: the first policy (by name) wins
            continue
        pools.append(spec.pool(model, dspec.min_replicas, dspec.max_replicas))
        node_types[spec.deployment] = spec.node_type()
        deployments[model] = f"infernodeployment/{spec.deployment}"
    owners = [{**owner_ref(p), "controller": False} for p, _, _ in policies]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": GOVERNATOR, "namespace": namespace,
                         "labels": labels("governator-policy", GOVERNATOR),
                         "ownerReferences": owners},
            "data": {"policy.yaml": yaml.safe_dump({"pools": pools}, sort_keys=False),
                     "prices.yaml": yaml.safe_dump({"node_types": node_types},
                                                   sort_keys=False),
                     "deployments.yaml": yaml.safe_dump(deployments, sort_keys=False)}}
