"""The few Kubernetes API calls the operator makes, over the official client.

The client is synchronous; calls run in worker threads. Writes are idempotent: ``ensure``
reads the object by its deterministic name, creates it only when missing (a 409 from the
create means another attempt made it first: it is patched instead) and otherwise
merge-patches it to the desired state, so a reconcile repeated after a crash converges
instead of duplicating. ``kubernetes`` is imported lazily, when the operator starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from inferno.k8s.resources import API_VERSION

# kind -> (API prefix, plural)
PATHS = {"PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
         "Service": ("/api/v1", "services"), "ConfigMap": ("/api/v1", "configmaps"),
         "Deployment": ("/apis/apps/v1", "deployments"), "Job": ("/apis/batch/v1", "jobs"),
         "InfernoModel": (f"/apis/{API_VERSION}", "infernomodels"),
         "InfernoDeployment": (f"/apis/{API_VERSION}", "infernodeployments"),
         "InfernoRoute": (f"/apis/{API_VERSION}", "infernoroutes"),
         "InfernoScalingPolicy": (f"/apis/{API_VERSION}", "infernoscalingpolicies")}
MERGE = "application/merge-patch+json"
_OBJECT = {200: "object", 201: "object", 202: "object"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube:
    def __init__(self, api_client: Any) -> None:
        """``api_client``: a ``kubernetes.client.ApiClient`` (kubeconfig, in-cluster, or
        pointed at an emulator by tests)."""
        self.api = api_client

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        p = f"{prefix}/namespaces/{namespace}/{plural}"
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def call(self, method: str, path: str, body: Any = None,
                   query: list[tuple[str, str]] | None = None) -> Any:
        headers = {"Accept": "application/json",
                   "Content-Type": MERGE if method == "PATCH" else "application/json"}

        def go() -> Any:
            return self.api.call_api(path, method, query_params=query or [],
                                     header_params=headers, body=body,
                                     response_types_map=_OBJECT,
                                     auth_settings=["BearerToken"],
                                     _return_http_data_only=True)
        try:
            return await asyncio.to_thread(go)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status is None:  # connection refused/reset: the API server is away, for now
                raise ApiError(503, f"{type(exc).__name__}: {exc}") from exc
            raise ApiError(int(status), str(getattr(exc, "reason", "") or exc)) from exc

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.call("GET", self.path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        out = await self.call("GET", self.path(kind, namespace))
        return [i for i in (out or {}).get("items", []) if i]

    async def ensure(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if await self.get(kind, ns, name) is None:
            try:
                created: dict[str, Any] = await self.call("POST", self.path(kind, ns), obj)
                return created
            except ApiError as exc:
                if exc.status != 409:
                    raise
        patched: dict[str, Any] = await self.call("PATCH", self.path(kind, ns, name), obj)
        return patched

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Whether it was there; a missing object is not an error (deletes repeat)."""
        try:
            await self.call("DELETE", self.path(kind, namespace, name),
                            {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        try:
            await self.call("PATCH", self.path(kind, namespace, name, "status"),
                            {"status": status})
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)
