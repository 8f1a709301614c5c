"""What the dashboard (inferno.ui) reads and does: the interface the proxy implements.

Here, in api, so neither component imports the other: the gateway hands the dashboard a
:class:`DataSource` (``inferno.proxy.dashboard``) built over its pool, event log, live
statistics and store. Everything crossing this line is plain data (dicts, lists,
numbers), ready for templates and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Viewer:
    key_id: str | None  # None: auth is off (a trusted local caller)
    admin: bool


@dataclass(frozen=True, slots=True)
class RequestFilter:
    key_id: str | None = None
    model: str | None = None
    node: str | None = None
    status: str | None = None  # 2xx, 4xx, 5xx, errors
    since: float | None = None


class DataSource(Protocol):
    @property
    def auth_enabled(self) -> bool: ...

    @property
    def serving(self) -> bool:
        """False once the host drains: live streams end so they do not hold it up."""

    def verify(self, credential: str) -> Viewer | None:
        """The viewer an API key or token stands for; None if it is not valid."""

    def summary(self, window_s: int) -> dict[str, Any]:
        """Rates over the last window: rps, error_rate, ttft_p50/p95 (s), tokens_per_s,
        cache_hit_rate, cost_per_hour."""

    def series(self, window_s: int) -> list[dict[str, Any]]:
        """The same figures per ten seconds, oldest first."""

    def nodes(self) -> list[dict[str, Any]]:
        """Every node: id, address, models, status (healthy/degraded/ejected/draining),
        breaker, in_flight, cap, queue_depth, tokens_per_s, last_error, strip (per minute)."""

    def events(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Timeline events with an id above ``after``, oldest first."""

    @property
    def last_event_id(self) -> int: ...

    async def decisions(self, limit: int) -> list[dict[str, Any]]:
        """The governator's newest decisions (empty without a store)."""

    async def autoscaler(self, window_s: int) -> dict[str, Any]:
        """Per pool: samples (t, actual, desired) over the window; and the decision log."""

    async def requests(self, f: RequestFilter, before: tuple[float, str] | None,
                       limit: int) -> list[dict[str, Any]]: ...

    async def request(self, request_id: str) -> dict[str, Any] | None: ...

    async def usage(self, since_day: str) -> list[dict[str, Any]]: ...

    async def keys(self) -> list[dict[str, Any]]: ...

    async def create_key(self, name: str, scope: str) -> dict[str, Any]:
        """A new key; the answer holds the secret once, under ``key``."""

    async def revoke_key(self, key_id: str) -> bool: ...

    # Models and batches (the Models and Batches pages). Actions run as the signed-in
    # viewer through the proxy's own endpoints (POST /v1/models/deploy,
    # POST /v1/batches/{id}/cancel), so they are checked and audited as those are.

    async def models(self) -> list[dict[str, Any]]:
        """One row per model a node lists: name, nodes, healthy (how many of them route),
        loaded_on, available_on (node ids), requests and rps and ttft_p95_ms over the last
        hour, last_deploy (the newest audited deploy naming it)."""

    async def deploy_model(self, viewer: Viewer, model: str, replace: str,
                           node: str | None) -> dict[str, Any]:
        """The deploy endpoint's answer: one result per node."""

    async def batches(self, status: str | None, after: str | None,
                      limit: int) -> list[dict[str, Any]]:
        """Batches newest first (``after``: a batch id, the page before it): id, status,
        endpoint, created_at, expires_at, total/completed/failed, owner, owner_name."""

    async def batch(self, batch_id: str) -> dict[str, Any] | None:
        """One batch with its errors and its output and error file ids."""

    async def batch_progress(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        """id, status and counts of these batches, for the live stream."""

    async def cancel_batch(self, viewer: Viewer, batch_id: str) -> dict[str, Any]: ...

    async def file_content(self, viewer: Viewer, file_id: str) -> Any:
        """The proxy's answer to GET /v1/files/{id}/content, as the viewer (a response
        the dashboard passes on: a batch's output or error file)."""
