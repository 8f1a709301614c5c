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
