"""The Kubernetes provider: scales a Deployment per pool with the official client.

Readiness comes from the pods (the Deployment's ``spec.selector.matchLabels``, condition
``Ready``); each pod's ops server is ``pod_ip:node_ops_port``. Before a scale-down the
pods to remove are drained through the proxy (their registrations, matched by pod IP,
are deleted; then we wait, bounded, for their in-flight work) and marked with
``controller.kubernetes.io/pod-deletion-cost`` so the ReplicaSet removes exactly those.
A pool's target may instead be ``infernodeployment/NAME``: an InfernoDeployment (Inferno's
custom resource), scaled through its scale subresource; its pods are those its
``status.selector`` selects, and Inferno's operator keeps its Deployment in step.
The client is synchronous: calls run in a worker thread. ``kubernetes`` is imported here
only, lazily, so nothing else needs it installed. Its own HTTP stack (urllib3) is kept on
purpose: the API server's auth (kubeconfig, service account, TLS) is that client's job;
Inferno's own HTTP (the proxy's drains) goes through :class:`~inferno.net.HttpClient`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from inferno.core.errors import ConfigError, InfernoError, ProviderError
from inferno.governator.providers.base import ProxyDrainer
from inferno.governator.signals import Endpoint
from inferno.net import HttpClient

log = logging.getLogger("inferno.governator.kubernetes")
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
CUSTOM_PREFIX = "infernodeployment/"
# InfernoDeployment's API (inferno.k8s.resources; not imported: components stay apart).
CUSTOM = ("inferno.dev", "v1alpha1", "infernodeployments")


def _selector(text: str) -> dict[str, str]:
    """An equality-based label selector string (``a=b,c=d``) as a mapping."""
    pairs = (p.split("=", 1) for p in text.split(",") if "=" in p)
    return {k.strip(): v.strip() for k, v in pairs}


def _client_module() -> Any:
    try:
        import kubernetes
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the kubernetes provider needs the 'kubernetes' package: "
                          "pip install 'inferno[kubernetes]'") from exc
    return kubernetes


class KubernetesProvider:
    def __init__(self, *, deployments: dict[str, str], max_replicas: dict[str, int],
                 namespace: str, node_ops_port: int, proxy_host: str, proxy_port: int,
                 client: HttpClient, drain_timeout: float = 30.0,
                 api_client: Any = None) -> None:
        """``api_client``: a ready ``kubernetes.client.ApiClient`` (tests point one at an
        emulator); by default the kubeconfig, or the in-cluster service account."""
        self._deployments = deployments
        self._max = max_replicas
        self._ns = namespace
        self._ops_port = node_ops_port
        self._proxy = (proxy_host, proxy_port)
        self._http = client
        self._drainer = ProxyDrainer(client, proxy_host, proxy_port)
        self._drain_timeout = drain_timeout
        self._api_client = api_client
        self._apps: Any = None
        self._core: Any = None
        self._custom: Any = None
        self._pods: dict[str, list[dict[str, Any]]] = {}

    def set_pools(self, deployments: dict[str, str], max_replicas: dict[str, int]) -> None:
        """The pools changed (a reloaded policy): what scales each, and its bound."""
        self._deployments = deployments
        self._max = max_replicas
        self._pods = {p: v for p, v in self._pods.items() if p in deployments}

    async def start(self) -> None:
        k8s = _client_module()
        if self._api_client is None:
            def load() -> Any:
                try:
                    k8s.config.load_kube_config()
                except Exception:  # no kubeconfig: maybe we run inside the cluster
                    k8s.config.load_incluster_config()
                return k8s.client.ApiClient()
            try:
                self._api_client = await asyncio.to_thread(load)
            except Exception as exc:
                raise ConfigError(f"no Kubernetes configuration found: {exc}") from exc
        self._apps = k8s.client.AppsV1Api(self._api_client)
        self._core = k8s.client.CoreV1Api(self._api_client)
        self._custom = k8s.client.CustomObjectsApi(self._api_client)

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:  # ApiException, urllib3 errors: all mean "not now"
            status = getattr(exc, "status", None)
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ProviderError(f"Kubernetes API {what} failed"
                                + (f" ({status} {reason})" if status else f" ({reason})")
                                ) from exc

    def endpoints(self) -> list[Endpoint]:
        out = []
        for pool, pods in self._pods.items():
            for p in pods:
                if p["ip"]:
                    out.append(Endpoint(p["name"], pool, p["ip"], self._ops_port, p["state"]))
        return out

    async def _pod_labels(self, target: str) -> dict[str, str]:
        if target.startswith(CUSTOM_PREFIX):
            obj = await self._call("read infernodeployment",
                                   self._custom.get_namespaced_custom_object, *CUSTOM[:2],
                                   self._ns, CUSTOM[2], target[len(CUSTOM_PREFIX):])
            return _selector(str((obj.get("status") or {}).get("selector") or ""))
        dep = await self._call("read deployment", self._apps.read_namespaced_deployment,
                               target, self._ns)
        return dict(dep.spec.selector.match_labels or {}) if dep.spec.selector else {}

    async def _list_pods(self, pool: str) -> list[dict[str, Any]]:
        labels = await self._pod_labels(self._deployments[pool])
        if not labels:  # an InfernoDeployment the operator has not reconciled yet
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = await self._call("list pods", self._core.list_namespaced_pod, self._ns,
                                label_selector=selector)
        out = []
        for pod in pods.items or []:
            meta_labels = pod.metadata.labels or {}
            if any(meta_labels.get(k) != v for k, v in labels.items()):
                continue  # a server that ignores label selectors must not fool us
            status = pod.status
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in (status.conditions or [])) if status else False
            deleting = pod.metadata.deletion_timestamp is not None
            out.append({"name": pod.metadata.name, "ip": status.pod_ip if status else None,
                        "state": "draining" if deleting else ("ready" if ready else "starting")})
        return out

    async def reconcile(self, now: float) -> list[str]:
        events = []
        for pool in self._deployments:
            try:
                pods = await self._list_pods(pool)
            except ProviderError as exc:
                events.append(f"{pool}: {exc.message}")
                continue
            before = {p["name"]: p["state"] for p in self._pods.get(pool, [])}
            for p in pods:
                if before.get(p["name"]) != p["state"]:
                    events.append(f"pod {p['name']} {p['state']}")
            self._pods[pool] = pods
        return events

    async def scale(self, pool: str, desired: int) -> str:
        name = self._deployments.get(pool)
        if name is None:
            raise ProviderError(f"no Deployment configured for pool '{pool}'")
        desired = max(0, min(desired, self._max.get(pool, desired)))
        custom = name.startswith(CUSTOM_PREFIX)
        if custom:
            name = name[len(CUSTOM_PREFIX):]
            scale = await self._call("read scale",
                                     self._custom.get_namespaced_custom_object_scale,
                                     *CUSTOM[:2], self._ns, CUSTOM[2], name)
            current = int(((scale or {}).get("spec") or {}).get("replicas") or 0)
        else:
            scale = await self._call("read scale", self._apps.read_namespaced_deployment_scale,
                                     name, self._ns)
            current = int(scale.spec.replicas or 0)
        if desired < current:
            pods = [p for p in self._pods.get(pool, []) if p["state"] != "draining"]
            order = {"starting": 0, "ready": 1}
            victims = sorted(pods, key=lambda p: order.get(p["state"], 0))[:current - desired]
            await self._drain([p for p in victims if p["ip"]])
            for p in victims:
                await self._call("annotate pod", self._core.patch_namespaced_pod, p["name"],
                                 self._ns, {"metadata": {"annotations": {DELETION_COST: "-1000"}}})
                p["state"] = "draining"
        body = {"spec": {"replicas": desired}}
        if desired != current and custom:
            await self._call("patch scale", self._custom.patch_namespaced_custom_object_scale,
                             *CUSTOM[:2], self._ns, CUSTOM[2], name, body)
        elif desired != current:
            await self._call("patch scale", self._apps.patch_namespaced_deployment_scale,
                             name, self._ns, body)
        kind = "infernodeployment" if custom else "deployment"
        return f"{kind} {self._ns}/{name}: replicas {current} -> {desired}"

    async def _drain(self, pods: list[dict[str, Any]]) -> None:
        if not pods:
            return
        ips = {p["ip"] for p in pods}
        nodes = [n for n in await self._proxy_nodes()
                 if str(n.get("address", "")).rsplit(":", 1)[0].strip("[]") in ips]
        for n in nodes:
            await self._drainer.deregister(str(n["id"]))
        deadline = asyncio.get_running_loop().time() + self._drain_timeout
        # Deregistered nodes no longer appear in the proxy; wait on their own vitals.
        while asyncio.get_running_loop().time() < deadline:
            busy = 0
            for p in pods:
                v = await self._vitals(p["ip"])
                busy += int(v.get("in_flight", 0)) if v else 0
            if busy == 0:
                return
            await asyncio.sleep(0.5)
        log.warning("pods %s still busy after %.0fs; scaling down anyway",
                    ", ".join(p["name"] for p in pods), self._drain_timeout)

    async def _proxy_nodes(self) -> list[dict[str, Any]]:
        body = await self._get(*self._proxy, "/telemetry")
        data = orjson.loads(body) if body else {}
        return list(data.get("nodes") or []) if isinstance(data, dict) else []

    async def _vitals(self, ip: str) -> dict[str, Any] | None:
        body = await self._get(ip, self._ops_port, "/telemetry")
        data = orjson.loads(body) if body else None
        return data if isinstance(data, dict) else None

    async def _get(self, host: str, port: int, path: str) -> bytes | None:
        try:
            resp = await self._http.request(host, port, "GET", path, connect_timeout=1.0,
                                            header_timeout=2.0)
            body = await resp.read()
        except InfernoError:
            return None
        return body if resp.status == 200 else None

    async def close(self) -> None:
        """The Deployment outlives the governator: nothing is stopped on exit."""
        if self._api_client is not None:
            await asyncio.to_thread(self._api_client.close)
