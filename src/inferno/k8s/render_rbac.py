"""Service accounts and least-privilege RBAC, all namespaced (Role, not ClusterRole):
each component sees only the release's namespace and only the verbs it uses.

- proxy: reads pods and EndpointSlices (where the nodes are).
- operator: reconciles Inferno's four custom resources (and writes their status and
  scale) into Deployments, Services, ConfigMaps, PersistentVolumeClaims and model-pull
  Jobs; reads pods and EndpointSlices; records Events.
- governator: scales node Deployments (and InfernoDeployments through their scale
  subresource), reads and annotates pods (the deletion cost of the ones it drains).
"""

from __future__ import annotations

from typing import Any

from inferno.k8s.resources import GROUP, KINDS

READ = ["get", "list", "watch"]
WRITE = [*READ, "create", "update", "patch", "delete"]
_PLURALS = [k.plural for k in KINDS]

PROXY_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
]

OPERATOR_RULES: list[dict[str, Any]] = [
    # kopf patches the resources it handles (finalizers, its progress annotations).
    {"apiGroups": [GROUP], "resources": _PLURALS, "verbs": [*READ, "update", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in _PLURALS],
     "verbs": ["get", "update", "patch"]},
    {"apiGroups": [GROUP], "resources": ["infernodeployments/scale"],
     "verbs": ["get", "update", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": WRITE},
    {"apiGroups": [""], "resources": ["services", "configmaps", "persistentvolumeclaims"],
     "verbs": WRITE},
    {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": WRITE},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
]

GOVERNATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"],
     "verbs": ["get", "update", "patch"]},
    {"apiGroups": [GROUP], "resources": ["infernodeployments"], "verbs": READ},
    {"apiGroups": [GROUP], "resources": ["infernodeployments/scale"],
     "verbs": ["get", "update", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": [*READ, "patch"]},
]


def rbac(meta: Any, component: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of one component (``meta(component)``
    gives each object's metadata)."""
    account = meta(component)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account,
         "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": meta(component), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(component),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": account["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": account["name"],
                       "namespace": account["namespace"]}]},
    ]
