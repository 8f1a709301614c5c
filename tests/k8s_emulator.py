"""The operator against kmock's Kubernetes emulator, run by kopf's test runner.

The emulator stores objects and streams watch events, and no more: it assigns no uid,
resourceVersion or generation (the bodies made here carry them, as the API server would
set them), garbage-collects nothing (the operator deletes children itself), and cannot
list ``/api/v1/namespaces`` (kmock 0.8 parses that path as a namespace prefix), so kopf's
namespace scanning is disabled and the operator watches the one namespace it is given.
It applies every write it receives even when a reaction answers it with an injected
error, so an injected error on a create or patch is "done, but the reply was lost"; one
on a read changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import kopf
import kubernetes
from kopf.testing import KopfRunner

from inferno.k8s.operator import OperatorConfig, build_registry
from inferno.k8s.operator_api import Kube
from inferno.k8s.resources import API_VERSION

NS = "default"
_VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
RESOURCES = {
    "v1/events": ("Event", set()),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", {"status"}),
    "v1/configmaps": ("ConfigMap", set()), "v1/services": ("Service", {"status"}),
    "v1/pods": ("Pod", {"status"}),
    "apps/v1/deployments": ("Deployment", {"status", "scale"}),
    "batch/v1/jobs": ("Job", {"status"}),
    f"{API_VERSION}/infernomodels": ("InfernoModel", {"status"}),
    f"{API_VERSION}/infernodeployments": ("InfernoDeployment", {"status", "scale"}),
    f"{API_VERSION}/infernoroutes": ("InfernoRoute", {"status"}),
    f"{API_VERSION}/infernoscalingpolicies": ("InfernoScalingPolicy", {"status"}),
}
_uids = itertools.count(1)


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource as the API server would store it (uid, resourceVersion, generation)."""
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{next(_uids)}",
                         "resourceVersion": "1", "generation": 1},
            "spec": spec}


class Cluster:
    def __init__(self, emulator: Any, server: Any) -> None:
        self.em = emulator
        self.server = server
        conf = kubernetes.client.Configuration()
        conf.host = str(server.url)
        self.conf = conf
        self.kube = Kube(kubernetes.client.ApiClient(conf))
        self.runner: KopfRunner | None = None
        self._op_api: Any = None

    async def start_operator(self, **overrides: Any) -> None:
        self._op_api = kubernetes.client.ApiClient(self.conf)
        cfg = OperatorConfig(**{"proxy_ops": "inferno-proxy:6100", "retry_delay": 0.3,
                                "refresh_interval": 1.0, "api_client": self._op_api,
                                **overrides})
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        settings.watching.reconnect_backoff = 0.2
        self.runner = KopfRunner(["run", "--standalone", "-n", NS], registry=build_registry(cfg),
                                 settings=settings, timeout=30)
        self.runner.__enter__()

    async def stop_operator(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await asyncio.to_thread(runner.__exit__, None, None, None)
            await asyncio.to_thread(self._op_api.close)

    async def create(self, body: dict[str, Any]) -> None:
        await self.kube.call("POST", self.kube.path(body["kind"], NS), body)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get(kind, NS, name)

    async def spec_patch(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        """A spec change, with the generation bump the API server would make."""
        obj = await self.get(kind, name)
        assert obj is not None
        gen = int(obj["metadata"].get("generation", 1)) + 1
        await self.kube.call("PATCH", self.kube.path(kind, NS, name),
                             {"metadata": {"generation": gen}, "spec": spec})

    async def status_patch(self, kind: str, name: str, status: dict[str, Any]) -> None:
        await self.kube.call("PATCH", self.kube.path(kind, NS, name, "status"),
                             {"status": status})

    async def delete(self, kind: str, name: str) -> None:
        await self.kube.call("DELETE", self.kube.path(kind, NS, name))

    async def drop_connections(self) -> int:
        """Every open connection to the API, watch streams included, cut (as a restarting
        API server or a load balancer would); returns how many."""
        web = self.server._managed_server.runner.server  # aiohttp's web_server.Server
        transports = list(web._connections.values())
        for t in transports:
            t.close()
        return len(transports)

    def history(self, group_version_plural: str, name: str) -> list[Any]:
        """Every stored version of one object (None where it was deleted)."""
        try:
            return list(self.em.objects[group_version_plural, NS, name].history)
        except KeyError:
            return []

    def inject(self, when: Callable[[Any], bool], status: int,
               times: int = 1) -> Injection:
        """Answer the next ``times`` requests matching ``when`` with ``status`` (a
        Kubernetes ``Status`` body). The emulator still applies a write it answers so: the
        server did it, the reply was lost."""
        inj = Injection(when, times)
        self.em[inj.match] << status << {"kind": "Status", "apiVersion": "v1", "code": status,
                                         "status": "Failure", "reason": "Injected",
                                         "message": f"injected {status}"}
        return inj


class Injection:
    def __init__(self, when: Callable[[Any], bool], times: int) -> None:
        self.when = when
        self.left = times
        self.hits = 0

    def match(self, req: Any) -> bool:
        if self.left > 0 and self.when(req):
            self.left -= 1
            self.hits += 1
            return True
        return False

    def off(self) -> None:
        self.left = 0


def request(action: str, plural: str, subresource: str | None = None) -> Callable[[Any], bool]:
    """A request matcher: ``action`` is kmock's (create, update, fetch, list, watch, delete)."""
    def when(req: Any) -> bool:
        return (req.resource is not None and req.resource.plural == plural
                and req.action is not None and req.action.value == action.upper()
                and req.subresource == subresource)
    return when


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_(obj: dict[str, Any] | None, type_: str, value: str = "True") -> bool:
    c = condition(obj, type_)
    return c is not None and c.get("status") == value


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as em:
        server = kmock.Server(em)
        await server.__aenter__()
        for key, (kind, subs) in RESOURCES.items():
            em.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True,
                                                   subresources=subs, verbs=_VERBS)
        em.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                                           verbs={"list", "watch", "get"})
        c = Cluster(em, server)
        try:
            yield c
        finally:
            await c.stop_operator()
            await asyncio.to_thread(c.kube.api.close)
            await c.server.__aexit__(None, None, None)
