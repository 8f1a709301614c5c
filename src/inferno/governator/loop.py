"""The governator's cycle, every ``interval`` seconds:

1. the provider reconciles (nodes that became ready, crashed, finished draining);
2. signals are read (proxy + node telemetry) and stored as samples;
3. per pool, the cheapest suitable node type is chosen and the pure policy decides;
4. a decision that changes the count goes to the provider; its outcome (or error) is
   stored with the decision. A provider failure backs off (1, 2, 4 ... 60 s) and is
   retried; nothing here lets an exception end the loop.

The governator serves the shared ops server, plus ``GET /governator/state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from inferno import __version__
from inferno.api.node import NodeState, Vitals
from inferno.core.errors import InfernoError
from inferno.governator.cost import choose_node_type
from inferno.governator.policy import Decision, PoolState, decide
from inferno.governator.providers.base import Provider
from inferno.governator.signals import PoolSignals, SignalCollector
from inferno.governator.spec import Policy, PriceList
from inferno.governator.store import GovernatorStore, StoreMetrics
from inferno.net import HttpClient, Request, Response
from inferno.ops import OpsServer

log = logging.getLogger("inferno.governator")


class Governator:
    def __init__(self, policy: Policy, prices: PriceList, provider: Provider,
                 store: GovernatorStore, client: HttpClient, *, proxy_host: str,
                 proxy_port: int, interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.prices = prices
        self.provider = provider
        self.store = store
        self.interval = interval
        self.state: NodeState = "loading"
        self.id = f"governator-{socket.gethostname()}-{os.getpid()}"
        self._client = client
        self._clock = clock
        self._started = time.monotonic()
        self.collector = SignalCollector(client, proxy_host, proxy_port)
        self.pool_state: dict[str, PoolState] = {p.name: PoolState() for p in policy.pools}
        self.signals: dict[str, PoolSignals] = {}
        self.last: dict[str, Decision] = {}
        self.events: deque[tuple[float, str]] = deque(maxlen=50)
        # Recent decisions in memory (the store has them all): for reports and tests.
        self.store_decisions: deque[Decision] = deque(maxlen=5000)
        self.measured_tps: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._last_compact = 0.0
        self._task: asyncio.Task[None] | None = None
        # Called before each tick: a reloaded policy comes in here (see wiring).
        self.reload: Callable[[], None] | None = None
        registry = CollectorRegistry()
        self._decisions = Counter("inferno_governator_decisions", "Decisions by pool and action",
                                  ["pool", "action"], registry=registry)
        self._replicas = Gauge("inferno_governator_desired_replicas", "Desired nodes per pool",
                               ["pool"], registry=registry)
        self._provider_errors = Counter("inferno_governator_provider_errors",
                                        "Provider failures", ["pool"], registry=registry)
        registry.register(StoreMetrics(store))
        self.ops = OpsServer(health=lambda: self.state, telemetry=self.vitals,
                             registry=registry,
                             routes={("GET", "/governator/state"): self._get_state})

    async def start_ops(self, host: str, port: int) -> int:
        return await self.ops.start(host, port)

    async def start(self) -> None:
        await self.store.start()  # bounded: a database that does not answer is retried later
        await self.provider.start()
        self.state = "ready"
        self._task = asyncio.create_task(self._run(), name="governator")

    async def drain(self) -> None:
        """Stop deciding, then drain and stop every node the provider runs."""
        if self.state == "draining":
            return
        self.state = "draining"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.provider.close()
        await self.store.close()
        await self.ops.stop()
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                if self.reload is not None:
                    self.reload()
                await self.tick()
            except Exception:  # the loop must outlive any bug in one tick
                log.exception("governator tick failed; continuing")
            await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - started)))

    async def tick(self) -> list[Decision]:
        now = self._clock()
        for event in await self.provider.reconcile(now):
            self._event(now, event)
        pools = [p.name for p in self.policy.pools]
        self.signals, _nodes = await self.collector.collect(now, pools,
                                                            self.provider.endpoints())
        for pool, sig in self.signals.items():
            await self.store.add_sample(now, pool, sig.to_dict())
        decisions = []
        for spec in self.policy.pools:
            sig = self.signals[spec.name]
            self._measure(spec.name, sig)
            choice = choose_node_type(spec, self.prices, self.measured_tps)
            decision, self.pool_state[spec.name] = decide(
                spec, choice.name, choice.node_type, sig, self.pool_state[spec.name])
            if decision.action != "hold":
                decision.reason = f"{decision.reason} [{choice.reason}]"
            decision.outcome = await self._act(now, decision)
            decision_id = await self.store.add_decision(decision)
            if decision.action != "hold":
                log.info("pool %s: %s %d -> %d: %s => %s", spec.name, decision.action,
                         decision.current, decision.desired, decision.reason, decision.outcome)
                self._event(now, f"{spec.name}: {decision.action} {decision.current} -> "
                            f"{decision.desired} ({decision.outcome}) #{decision_id}")
            self._decisions.labels(spec.name, decision.action).inc()
            self._replicas.labels(spec.name).set(decision.desired)
            self.last[spec.name] = decision
            self.store_decisions.append(decision)
            decisions.append(decision)
        if now - self._last_compact > 60:
            self._last_compact = now
            await self.store.compact(now)
        return decisions

    def set_policy(self, policy: Policy, prices: PriceList) -> None:
        """A reloaded policy: pools it keeps keep their state (cooldowns, panic); new ones
        start fresh; removed ones are forgotten (their nodes are left as they are)."""
        names = {p.name for p in policy.pools}
        for gone in set(self.pool_state) - names:
            with contextlib.suppress(KeyError):  # never decided on: no series to remove
                self._replicas.remove(gone)
            self.last.pop(gone, None)
            self.signals.pop(gone, None)
            self._failures.pop(gone, None)
            self._retry_at.pop(gone, None)
        self.pool_state = {n: self.pool_state.get(n) or PoolState() for n in names}
        self.policy, self.prices = policy, prices
        self._event(self._clock(), "policy reloaded: pools " + (", ".join(sorted(names))
                                                                  or "(none)"))

    async def _act(self, now: float, decision: Decision) -> str:
        if decision.desired == decision.current:
            return "noop"
        pool = decision.pool
        if now < self._retry_at.get(pool, 0.0):
            return f"deferred: provider back-off, retry in {self._retry_at[pool] - now:.0f}s"
        try:
            outcome = await self.provider.scale(pool, decision.desired)
        except Exception as exc:  # ProviderError or a bug in a provider: never fatal
            message = exc.message if isinstance(exc, InfernoError) else repr(exc)
            failures = self._failures.get(pool, 0) + 1
            self._failures[pool] = failures
            delay = min(60.0, 2.0 ** (failures - 1))
            self._retry_at[pool] = now + delay
            self._provider_errors.labels(pool).inc()
            log.warning("pool %s: provider failed (%s); retrying in %.0fs", pool, message, delay)
            return f"error: {message} (retry in {delay:.0f}s)"
        self._failures.pop(pool, None)
        self._retry_at.pop(pool, None)
        return f"ok: {outcome}"

    def _measure(self, pool: str, sig: PoolSignals) -> None:
        """Best tokens/s per busy node, per node type (feeds the cost model)."""
        spec = next(p for p in self.policy.pools if p.name == pool)
        if sig.ready and sig.queued > 0 and sig.tokens_per_second > 0:
            name = (self.last[pool].node_type if pool in self.last else spec.node_types[0])
            per_node = sig.tokens_per_second / sig.ready
            self.measured_tps[name] = max(self.measured_tps.get(name, 0.0), per_node)

    def _event(self, now: float, text: str) -> None:
        log.info("%s", text)
        self.events.append((now, text))

    def vitals(self) -> dict[str, Any]:
        return Vitals(id=self.id, component="governator", version=__version__,
                      state=self.state, uptime_s=round(time.monotonic() - self._started, 3),
                      models=[p.model for p in self.policy.pools]).model_dump()

    async def snapshot(self) -> dict[str, Any]:
        pools = []
        endpoints = self.provider.endpoints()
        for spec in self.policy.pools:
            sig = self.signals.get(spec.name)
            choice = choose_node_type(spec, self.prices, self.measured_tps)
            st = self.pool_state[spec.name]
            pools.append({
                "pool": spec.name, "model": spec.model, "node_type": choice.name,
                "usd_per_1m_tokens": round(choice.usd_per_1m, 4),
                "usd_per_hour": choice.node_type.usd_per_hour,
                "gpu": choice.node_type.gpu, "gpus": choice.node_type.gpus,
                "min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
                "targets": spec.targets.model_dump(),
                "signals": sig.to_dict() if sig else None,
                "panic": st.panic_until > self._clock(),
                "nodes": [{"id": e.id, "state": e.state, "address": f"{e.host}:{e.ops_port}"}
                          for e in endpoints if e.pool == spec.name],
                "last_decision": self.last[spec.name].to_dict() if spec.name in self.last
                else None,
            })
        return {"id": self.id, "state": self.state, "at": self._clock(), "pools": pools,
                "decisions": await self.store.decisions(20),
                "store": self.store.stats(),
                "events": [{"at": t, "text": e} for t, e in self.events]}

    async def _get_state(self, req: Request) -> Response:
        return Response(200, orjson.dumps(await self.snapshot()))
