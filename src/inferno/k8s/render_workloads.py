"""The Deployments (and the proxy's Service): proxy, operator, governator.

Every container runs the one image as uid 10001 with a read-only root filesystem; state
goes to ``INFERNO_DATA_DIR`` (an emptyDir here: the proxy keeps nothing there worth
keeping once PostgreSQL is configured).

The operator's environment is its contract with these manifests:
``INFERNO_K8S_NAMESPACE`` (the namespace it watches: its own), ``INFERNO_K8S_IMAGE`` (what
node pods run unless an InfernoDeployment names another), ``INFERNO_K8S_PROXY_OPS``
(host:port where nodes register: the proxy's ops Service) and
``INFERNO_K8S_NODE_TOKEN_SECRET`` / ``INFERNO_K8S_NODE_TOKEN_KEY`` (the Secret whose key
node pods read their registration token from) and ``INFERNO_K8S_NODE_TOKEN`` (the token
itself, for the proxy's ops routes such as ``PUT /standby``; the operator never reads
Secrets through the API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferno.k8s.values import RenderValues, Resources, SecretRef

Meta = Callable[[str], dict[str, Any]]
DATA_DIR = "/var/lib/inferno"
UID = 10001
# The operator's combined policy ConfigMap (inferno.k8s.objects_config.GOVERNATOR), mounted
# into the governator, which reloads it when the kubelet updates the files.
POLICY_CONFIGMAP = "inferno-governator"
POLICY_DIR = "/etc/inferno/governator"
# The operator's routes ConfigMap (objects_config.ROUTES): the proxy starts with its
# routing when it exists (the operator also PUTs it to the running proxy).
ROUTES_CONFIGMAP = "inferno-routes"
ROUTES_DIR = "/etc/inferno/routes"


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, ref: SecretRef | None) -> list[dict[str, Any]]:
    if ref is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _namespace_env(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def _resources(r: Resources) -> dict[str, Any]:
    return {"requests": dict(r.requests), "limits": dict(r.limits)}


def _container(v: RenderValues, name: str, args: list[str], env: list[dict[str, Any]],
               resources: Resources) -> dict[str, Any]:
    return {
        "name": name, "image": v.image, "imagePullPolicy": v.image_pull_policy, "args": args,
        "env": [_env("INFERNO_DATA_DIR", DATA_DIR), *env],
        "resources": _resources(resources),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def _deployment(v: RenderValues, meta: Meta, component: str, replicas: int,
                container: dict[str, Any], *, recreate: bool = False) -> dict[str, Any]:
    m = meta(component)
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": dict(m["labels"])},
        "template": {
            "metadata": {"labels": dict(m["labels"])},
            "spec": {
                "serviceAccountName": m["name"],
                "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                    "fsGroup": UID,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    if recreate:  # one instance at a time (the operator and governator act on the cluster)
        spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": m, "spec": spec}


def _ops_probes(port: str) -> dict[str, Any]:
    get = {"httpGet": {"path": "/health", "port": port}}
    return {"readinessProbe": {**get, "periodSeconds": 5, "failureThreshold": 2},
            "livenessProbe": {**get, "periodSeconds": 10, "failureThreshold": 6,
                              "timeoutSeconds": 5}}


def proxy(v: RenderValues, meta: Meta, refs: dict[str, SecretRef | None]
          ) -> list[dict[str, Any]]:
    p = v.proxy
    env = [_env("INFERNO_PROXY_HOST", "0.0.0.0"), _env("INFERNO_PROXY_PORT", str(p.port)),
           _env("INFERNO_PROXY_OPS_PORT", str(p.ops_port)), _env("INFERNO_PROXY_AUTH", p.auth),
           _env("INFERNO_PROXY_ROUTING_FILE", f"{ROUTES_DIR}/proxy.yaml"),
           *_secret_env("INFERNO_PROXY_NODE_TOKENS", refs["nodeToken"]),
           *_secret_env("INFERNO_DATABASE_URL", refs["database"]),
           *_secret_env("INFERNO_REDIS_URL", refs["redis"]),
           *(_env(e.name, e.value) for e in p.extra_env)]
    container = _container(v, "proxy", ["proxy"], env, p.resources)
    container["ports"] = [{"name": "http", "containerPort": p.port, "protocol": "TCP"},
                          {"name": "ops", "containerPort": p.ops_port, "protocol": "TCP"}]
    container["volumeMounts"].append({"name": "routes", "mountPath": ROUTES_DIR,
                                      "readOnly": True})
    container.update(_ops_probes("ops"))
    dep = _deployment(v, meta, "proxy", p.replicas, container)
    dep["spec"]["template"]["spec"]["volumes"].append(
        {"name": "routes", "configMap": {"name": ROUTES_CONFIGMAP, "optional": True}})
    # Requests in flight finish before the pod goes (the proxy drains on SIGTERM).
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
    pods = meta("proxy")["labels"]
    # The API may be public (serviceType); the ops port (registration, metrics, drains)
    # stays inside the cluster, behind a Service of its own: headless, so its name resolves
    # to every ready proxy pod and nodes (the operator, the governator) reach each replica.
    api = {"apiVersion": "v1", "kind": "Service", "metadata": meta("proxy"),
           "spec": {"type": p.service_type, "selector": dict(pods),
                    "ports": [{"name": "http", "port": p.port, "targetPort": "http",
                               "protocol": "TCP"}]}}
    ops = {"apiVersion": "v1", "kind": "Service", "metadata": meta("proxy-ops"),
           "spec": {"type": "ClusterIP", "clusterIP": "None",
                    "publishNotReadyAddresses": False, "selector": dict(pods),
                    "ports": [{"name": "ops", "port": p.ops_port, "targetPort": "ops",
                               "protocol": "TCP"}]}}
    return [dep, api, ops]


def operator(v: RenderValues, meta: Meta, refs: dict[str, SecretRef | None]
             ) -> list[dict[str, Any]]:
    token = refs["nodeToken"]
    env = [_namespace_env("INFERNO_K8S_NAMESPACE"), _env("INFERNO_K8S_IMAGE", v.image),
           _env("INFERNO_K8S_PROXY_OPS",
                f"{v.name}-proxy-ops.{v.namespace}.svc:{v.proxy.ops_port}")]
    if token is not None:  # the Secret for node pods; the token itself for the proxy's
        env += [_env("INFERNO_K8S_NODE_TOKEN_SECRET", token.name),  # PUT /standby
                _env("INFERNO_K8S_NODE_TOKEN_KEY", token.key),
                *_secret_env("INFERNO_K8S_NODE_TOKEN", token)]
    container = _container(v, "operator", ["k8s", "operator"], env, v.operator.resources)
    return [_deployment(v, meta, "operator", 1, container, recreate=True)]


def governator(v: RenderValues, meta: Meta, refs: dict[str, SecretRef | None]
               ) -> list[dict[str, Any]]:
    g = v.governator
    env = [_env("INFERNO_GOVERNATOR_HOST", "0.0.0.0"),
           _env("INFERNO_GOVERNATOR_OPS_PORT", str(g.ops_port)),
           _env("INFERNO_GOVERNATOR_PROXY_OPS", f"{v.name}-proxy-ops:{v.proxy.ops_port}"),
           _namespace_env("INFERNO_GOVERNATOR_K8S_NAMESPACE"),
           # The InfernoScalingPolicies, as the operator combines them (none yet: no pools).
           _env("INFERNO_GOVERNATOR_POLICY_FILE", f"{POLICY_DIR}/policy.yaml"),
           _env("INFERNO_GOVERNATOR_PRICES_FILE", f"{POLICY_DIR}/prices.yaml"),
           _env("INFERNO_GOVERNATOR_DEPLOYMENTS_FILE", f"{POLICY_DIR}/deployments.yaml"),
           _env("INFERNO_GOVERNATOR_POLICY_OPTIONAL", "true"),
           *_secret_env("INFERNO_DATABASE_URL", refs["database"]),
           *(_env(e.name, e.value) for e in g.extra_env)]
    container = _container(v, "governator", ["governator", "run", "--provider", "kubernetes"],
                           env, g.resources)
    container["ports"] = [{"name": "ops", "containerPort": g.ops_port, "protocol": "TCP"}]
    container["volumeMounts"].append({"name": "policy", "mountPath": POLICY_DIR,
                                      "readOnly": True})
    container.update(_ops_probes("ops"))
    dep = _deployment(v, meta, "governator", 1, container, recreate=True)
    dep["spec"]["template"]["spec"]["volumes"].append(
        {"name": "policy", "configMap": {"name": POLICY_CONFIGMAP, "optional": True}})
    return [dep]
