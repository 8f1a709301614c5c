"""Scale from zero: requests for a model with no ready node wait for one instead of failing.

A *standby* model may have no node now but can be started: one named in the
``standby_models`` setting (or set at run time, ``PUT /standby`` on the ops port), or one
the pool served within the last ``standby_ttl`` seconds (its nodes left, e.g. scaled to
zero). A request for a standby model with no ready node is *held*: it waits until a node
for the model is ready, then goes through routing and admission as any other. Holding is
bounded: at most ``max_held`` requests per model (beyond: 429) for at most
``hold_timeout`` seconds (then: 503), both with Retry-After. A client that goes away while
held is cancelled, which frees its place.

Held requests are woken by the pool's snapshot changes (:meth:`Standby.notify`), never by
polling. The number held per model is published (``/telemetry`` ``held``, the gauge
``inferno_proxy_held_requests``), so the governator sees demand for a pool at zero at its
next look, without waiting for a rate to build up over two samples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inferno.core.errors import InvalidRequest, NoBackendAvailable, NotReady, RateLimited
from inferno.net import Request, Response
from inferno.proxy.pool import Pool, PoolSnapshot

RETRY_AFTER_S = 5.0  # a node is starting: a retry within a second would only be refused


class Standby:
    def __init__(self, pool: Pool, *, models: Iterable[str] = (), ttl: float = 3600.0,
                 hold_timeout: float = 120.0, max_held: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self.configured: frozenset[str] = frozenset(models)
        self._ttl = ttl
        self._timeout = hold_timeout
        self._max_held = max_held
        self._clock = clock
        self._seen: dict[str, float] = {}  # model -> last time a node of it was in the pool
        self._last_models: frozenset[str] = frozenset()
        self._changed = asyncio.Event()  # replaced on every change: one generation each
        self._closed = False
        self.held: dict[str, int] = {}
        self.unserved: dict[str, int] = {}  # requests that found no ready node, per model
        self.timeouts = 0
        self.rejected = 0
        self.notify(pool.snapshot)

    def notify(self, snapshot: PoolSnapshot) -> None:
        """The pool published ``snapshot``: remember its models, wake every held request."""
        if self._ttl > 0:
            now = self._clock()
            # Models of the previous snapshot too: one whose last node just left was served
            # until now (a model present for hours is otherwise only stamped when it came).
            for model in self._last_models | snapshot.models:
                self._seen[model] = now
            self._last_models = snapshot.models
            if len(self._seen) > len(snapshot.models):
                self._seen = {m: t for m, t in self._seen.items() if now - t <= self._ttl}
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def is_standby(self, model: str) -> bool:
        if model in self.configured:
            return True
        seen = self._seen.get(model)
        return seen is not None and self._clock() - seen <= self._ttl

    def models(self) -> frozenset[str]:
        """Every standby model now (configured, or served within the ttl)."""
        now = self._clock()
        return self.configured | {m for m, t in self._seen.items() if now - t <= self._ttl}

    def holds(self, model: str, snapshot: PoolSnapshot) -> bool:
        """Whether a request for ``model`` waits for a node rather than failing now."""
        return not self._closed and not snapshot.by_model.get(model) and self.is_standby(model)

    async def hold(self, model: str) -> None:
        """Wait until ``model`` has a ready node (or is no longer standby); raise when the
        bound is reached (429), the wait times out (503) or the proxy drains (503)."""
        self.unserved[model] = self.unserved.get(model, 0) + 1
        held = self.held.get(model, 0)
        if held >= self._max_held:
            self.rejected += 1
            raise RateLimited(f"Too many requests are waiting for a node of '{model}' to "
                              "start; retry later.", retry_after=RETRY_AFTER_S)
        self.held[model] = held + 1
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    changed = self._changed  # taken before the check: no wake-up is lost
                    if not self.holds(model, self._pool.snapshot):
                        break
                    await changed.wait()
        except TimeoutError:
            self.timeouts += 1
            raise NoBackendAvailable(
                f"No node for '{model}' became ready within {self._timeout:g} s; it is still "
                "starting, retry later.", retry_after=RETRY_AFTER_S) from None
        finally:
            left = self.held[model] - 1
            if left:
                self.held[model] = left
            else:
                del self.held[model]
        if self._closed:
            raise NotReady("The proxy is shutting down; retry on another replica.")

    def close(self) -> None:
        """The proxy drains: held requests end now (503) instead of at the drain deadline."""
        self._closed = True
        self.notify(self._pool.snapshot)

    def set_models(self, models: Iterable[str]) -> None:
        self.configured = frozenset(models)
        self.notify(self._pool.snapshot)  # a model no longer standby: its held requests fail

    def state(self) -> dict[str, Any]:
        return {
            "configured": sorted(self.configured),
            "standby": sorted(self.models()),
            "held": dict(self.held), "unserved": dict(self.unserved),
            "timeouts": self.timeouts, "rejected": self.rejected,
        }


class StandbyAPI:
    """``GET /standby`` and ``PUT /standby`` (ops port; body ``{"models": [...]}``): the
    configured standby models at run time, e.g. for an operator that scales to zero.
    ``authorize`` raises for a caller without a node token, where node tokens are set."""

    def __init__(self, standby: Standby, authorize: Callable[[Request], object]) -> None:
        self._standby = standby
        self._authorize = authorize

    async def get(self, req: Request) -> Response:
        return Response.json(self._standby.state())

    async def put(self, req: Request) -> Response:
        self._authorize(req)
        try:
            data = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            data = None
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise InvalidRequest("Expected {\"models\": [model names]}.", param="models")
        self._standby.set_models(models)
        return Response.json(self._standby.state())


class StandbyCollector(Collector):
    """Held requests and requests that found no ready node, per standby model (a bounded
    label set: only standby models are ever held or counted)."""

    def __init__(self, standby: Standby) -> None:
        self._standby = standby

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._standby
        held = GaugeMetricFamily("inferno_proxy_held_requests",
                                 "Requests waiting for a node of a model with none ready "
                                 "(scale from zero)", labels=["model"])
        unserved = CounterMetricFamily("inferno_proxy_unserved_requests",
                                       "Requests for a standby model that found no ready "
                                       "node", labels=["model"])
        for model in sorted(s.configured | s.held.keys() | s.unserved.keys()):
            held.add_metric([model], float(s.held.get(model, 0)))
        for model, n in sorted(s.unserved.items()):
            unserved.add_metric([model], float(n))
        yield held
        yield unserved
