"""The dashboard's view of this proxy: the :class:`inferno.api.dashboard.DataSource` it reads.

Live figures come from the proxy's own state (pool, event log, live statistics), history
from the store (request log, usage roll-up, the governator's tables), so the dashboard
works without Prometheus. The gateway builds this and mounts the dashboard over it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson

from inferno.api.dashboard import RequestFilter, Viewer
from inferno.core.errors import PermissionDenied, ServiceUnavailable
from inferno.net import Request, Response, StreamingResponse
from inferno.proxy.admission import Admission
from inferno.proxy.dashboard_batches import BatchesView
from inferno.proxy.dashboard_models import ModelsView
from inferno.proxy.events import EventLog
from inferno.proxy.observe import LiveStats
from inferno.proxy.pool import Node, Pool
from inferno.proxy.security.auth import Authenticator
from inferno.proxy.security.keys import ANONYMOUS, KeyCache, Principal, create_key, display
from inferno.store import LogFilter, RequestQuery, Store

# The proxy's own API handler: the dashboard's actions run through its endpoints.
Api = Callable[[Request], Awaitable[Response | StreamingResponse]]


class ProxyDashboardSource:
    def __init__(self, pool: Pool, events: EventLog, stats: LiveStats, admission: Admission,
                 auth: Authenticator, keys: KeyCache, store: Store | None,
                 serving: Callable[[], bool] = lambda: True, api: Api | None = None) -> None:
        self._serving = serving
        self._api = api
        self._models = ModelsView(pool, stats, store)
        self._batches = BatchesView(store)
        self._pool = pool
        self._events = events
        self._stats = stats
        self._admission = admission
        self._auth = auth
        self._keys = keys
        self._store = store
        self._log = RequestQuery(store.engine) if store is not None else None

    @property
    def serving(self) -> bool:
        return self._serving()

    @property
    def auth_enabled(self) -> bool:
        return self._auth.enabled

    def verify(self, credential: str) -> Viewer | None:
        principal = None
        if credential.startswith("inf_"):
            principal = self._keys.verify(credential)
        elif self._auth.jwt is not None and credential.count(".") == 2:
            principal = self._auth.jwt.verify(credential)
        return None if principal is None else Viewer(principal.key_id, principal.is_admin)

    def summary(self, window_s: int) -> dict[str, Any]:
        return self._stats.summary(window_s)

    def series(self, window_s: int) -> list[dict[str, Any]]:
        return self._stats.series(window_s)

    def nodes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [self._node(n, now) for n in self._pool.snapshot.nodes]

    def _node(self, n: Node, now: float) -> dict[str, Any]:
        strip = self._stats.node_strip(n.id)
        b = n.breaker
        if n.state == "draining":
            status = "draining"
        elif not n.healthy or b.state == "open" or (b.state == "half_open"
                                                     and not n.routable(now)):
            status = "ejected"
        elif b.state != "closed" or b.failures or strip[-1]["errors"]:
            status = "degraded"
        else:
            status = "healthy"
        return {"id": n.id, "address": n.address, "models": sorted(n.models),
                "status": status, "breaker": b.state, "ejections": b.ejections,
                "ejected_for_s": round(max(0.0, b.open_until - now), 1)
                if b.state == "open" else 0.0,
                "in_flight": n.outstanding, "cap": self._admission.cap(n),
                "queue_depth": n.queue_depth,
                "tokens_per_s": round(self._stats.node_tokens_per_s(n.id), 2),
                "ttft_ms": round(n.ewma_ttft * 1000, 1), "requests": n.requests,
                "failures": n.failures, "strip": strip,
                "last_error": n.last_error if n.healthy else "failing its health checks"}

    def events(self, after: int, limit: int) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self._events.since(after, limit)]

    @property
    def last_event_id(self) -> int:
        return self._events.last_id

    async def decisions(self, limit: int) -> list[dict[str, Any]]:
        if self._store is None:
            return []
        return await self._store.governator.decisions(limit=limit)

    async def autoscaler(self, window_s: int) -> dict[str, Any]:
        if self._store is None:
            return {"pools": {}, "decisions": []}
        since = time.time() - window_s
        samples = await self._store.governator.samples(None, since)
        decisions = await self._store.governator.decisions(limit=200)
        pools: dict[str, list[dict[str, Any]]] = {}
        by_pool = sorted(decisions, key=lambda d: d["at"])
        for s in samples:
            desired = next((d["desired"] for d in reversed(by_pool)
                            if d["pool"] == s["pool"] and d["at"] <= s["at"]), None)
            actual = int(s.get("ready") or 0)
            pools.setdefault(s["pool"], []).append(
                {"t": s["at"], "actual": actual,
                 "starting": int(s.get("starting") or 0),
                 "desired": actual if desired is None else desired})
        return {"pools": pools, "decisions": decisions[:50]}

    async def requests(self, f: RequestFilter, before: tuple[float, str] | None,
                       limit: int) -> list[dict[str, Any]]:
        if self._log is None:
            return []
        return await self._log.page(LogFilter(**asdict(f)), before=before, limit=limit)

    async def request(self, request_id: str) -> dict[str, Any] | None:
        return None if self._log is None else await self._log.get(request_id)

    async def usage(self, since_day: str) -> list[dict[str, Any]]:
        """From the store's usage roll-up (an hour per key and model, not every request)."""
        if self._store is None:
            return []
        return [asdict(u) for u in await self._store.requests.usage(since_day=since_day)]

    async def keys(self) -> list[dict[str, Any]]:
        if self._store is None:
            return []
        return [{"id": r.id, "prefix": display(r.id), "name": r.name, "scope": r.scope,
                 "created_at": r.created_at, "revoked": r.revoked_at is not None}
                for r in await self._store.keys.list()]

    async def create_key(self, name: str, scope: str) -> dict[str, Any]:
        if self._store is None:
            raise ServiceUnavailable("This proxy runs without a database (database_url: "
                                     "none): keys cannot be created.", retry_after=None)
        key, row = await create_key(self._store, name=name, scope=scope)
        await self._keys.refresh()
        return {"id": row.id, "key": key, "name": name, "scope": scope}

    async def revoke_key(self, key_id: str) -> bool:
        if self._store is None or not await self._store.keys.revoke(key_id):
            return False
        await self._keys.refresh()
        return True

    async def models(self) -> list[dict[str, Any]]:
        return await self._models.rows()

    async def deploy_model(self, viewer: Viewer, model: str, replace: str,
                           node: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "replace": replace}
        if node:
            body["node"] = node
        return await self._act(viewer, "/v1/models/deploy", body)

    async def batches(self, status: str | None, after: str | None,
                      limit: int) -> list[dict[str, Any]]:
        return await self._batches.page(status, after, limit, await self._key_names())

    async def batch(self, batch_id: str) -> dict[str, Any] | None:
        return await self._batches.detail(batch_id, await self._key_names())

    async def batch_progress(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        return await self._batches.progress(batch_ids)

    async def cancel_batch(self, viewer: Viewer, batch_id: str) -> dict[str, Any]:
        return await self._act(viewer, f"/v1/batches/{batch_id}/cancel", None)

    async def file_content(self, viewer: Viewer, file_id: str) -> Response | StreamingResponse:
        return await self._call(viewer, "GET", f"/v1/files/{file_id}/content", b"")

    async def _key_names(self) -> dict[str, str]:
        return {} if self._store is None else {
            r.id: r.name for r in await self._store.keys.list()}

    async def _act(self, viewer: Viewer, path: str,
                   body: dict[str, Any] | None) -> dict[str, Any]:
        resp = await self._call(viewer, "POST", path,
                                orjson.dumps(body) if body is not None else b"")
        if isinstance(resp, StreamingResponse):  # these endpoints answer in one piece
            resp = Response(resp.status, b"".join([c async for c in resp.chunks]))
        answer = orjson.loads(resp.body) if resp.body else {}
        return answer if isinstance(answer, dict) else {"data": answer}

    async def _call(self, viewer: Viewer, method: str, path: str,
                    body: bytes) -> Response | StreamingResponse:
        """``method path`` on this proxy's API as the viewer: the endpoint checks, acts and
        audits exactly as for a client calling it with the viewer's key."""
        if self._api is None:
            raise ServiceUnavailable("This dashboard cannot act on the proxy's API.",
                                     retry_after=None)
        req = Request(method, path, "", [(b"content-type", b"application/json")], body,
                      None, True, False)
        req.auth = self._principal(viewer)
        return await self._api(req)

    def _principal(self, viewer: Viewer) -> Principal:
        if viewer.key_id is None:
            return ANONYMOUS  # auth is off: the API serves everyone as admin too
        if viewer.key_id.startswith("jwt:"):
            return Principal(key_id=viewer.key_id, scope="admin")  # verified at sign-in
        principal = self._keys.principal(viewer.key_id)
        if principal is None or not principal.is_admin:
            raise PermissionDenied("The key this session signed in with is no longer an "
                                   "active admin key.")
        return principal
