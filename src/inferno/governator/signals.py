"""What the governator knows about a pool at one instant, and how it reads it over HTTP.

Sources: the proxy's ``GET /telemetry`` (every registered node with its outstanding
requests and failures; total requests) and each node's ``GET /telemetry`` (queue depth,
in flight, tokens/s, capacity, state) and ``GET /metrics`` (the time-to-first-token
histogram). Node addresses come from the provider, which started the nodes.

Requests the proxy holds (because every node of a model is full, or, for a pool at zero,
while a node starts) count as queued for the pool, and their growth as arrivals
(``arrival_rate``: requests reaching the nodes per second plus that growth). Queue wait
is estimated per pool with Little's law (queued / rate of leaving the queue), and its p95
is taken over the estimates of the last few ticks; TTFT p95 comes from the bucket deltas
of the nodes' histograms since the previous tick.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from inferno.core.errors import InfernoError
from inferno.net import HttpClient

TTFT_METRIC = "inferno_backend_time_to_first_token_seconds"


@dataclass(frozen=True, slots=True)
class NodeSample:
    id: str
    pool: str
    state: str  # starting | loading | ready | draining | down
    in_flight: int = 0
    queued: int = 0
    capacity: int = 0
    tokens_per_second: float = 0.0
    requests_total: int = 0


@dataclass(frozen=True, slots=True)
class PoolSignals:
    """The pure policy's input for one pool (numbers only, no I/O)."""

    at: float
    ready: int = 0
    starting: int = 0
    draining: int = 0
    in_flight: int = 0  # generating now, on the pool's nodes
    queued: int = 0  # waiting for a slot on the pool's nodes
    request_rate: float = 0.0  # requests handed to the pool's nodes per second
    tokens_per_second: float = 0.0
    queue_wait_p95_s: float | None = None
    ttft_p95_s: float | None = None
    # Requests the proxy saw while the pool had no node (what wakes a pool at zero).
    unserved_rate: float = 0.0
    errors: int = 0
    # Requests arriving for the pool per second (handed to nodes + the growth of what waits
    # for one); None where unknown, and the policy then reads ``request_rate``.
    arrival_rate: float | None = None

    @property
    def running(self) -> int:
        return self.ready + self.starting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative ``(upper_bound, count)`` buckets, Prometheus style."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound


def parse_ttft_buckets(text: str) -> dict[float, float]:
    """Cumulative TTFT bucket counts summed over endpoints, from Prometheus text."""
    out: dict[float, float] = {}
    prefix = TTFT_METRIC + "_bucket{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix):].partition("} ")
        le = next((p.split("=", 1)[1].strip('"') for p in labels.split(",")
                   if p.startswith("le=")), None)
        if le is None:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0.0) + float(value)
    return out


@dataclass
class _PoolMemory:
    """Counters from the previous tick, to turn totals into rates and deltas."""

    at: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    ttft: dict[str, dict[float, float]] = field(default_factory=dict)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=10))
    queued_since: float | None = None
    held: int = 0  # requests the proxy held for the pool at the previous tick


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a node's ops server answers (given by the provider)."""

    id: str
    pool: str
    host: str
    ops_port: int
    state: str  # the provider's view: starting | ready | draining


class SignalCollector:
    def __init__(self, client: HttpClient, proxy_host: str, proxy_port: int,
                 timeout: float = 1.0) -> None:
        self._client = client
        self._proxy = (proxy_host, proxy_port)
        self._timeout = timeout
        self._memory: dict[str, _PoolMemory] = {}
        self._proxy_requests: tuple[float, int] | None = None
        self.proxy: dict[str, Any] | None = None

    async def _get(self, host: str, port: int, path: str) -> bytes | None:
        try:
            resp = await self._client.request(host, port, "GET", path,
                                              connect_timeout=self._timeout,
                                              header_timeout=self._timeout)
            body = await resp.read()
        except InfernoError:
            return None
        return body if resp.status == 200 else None

    async def _json(self, host: str, port: int, path: str) -> dict[str, Any] | None:
        body = await self._get(host, port, path)
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def collect(self, now: float, pools: Sequence[str], endpoints: Sequence[Endpoint]
                      ) -> tuple[dict[str, PoolSignals], list[NodeSample]]:
        proxy_task = self._json(*self._proxy, "/telemetry")
        vitals = [self._json(e.host, e.ops_port, "/telemetry") for e in endpoints]
        metrics = [self._get(e.host, e.ops_port, "/metrics") for e in endpoints]
        results = await asyncio.gather(proxy_task, *vitals, *metrics)
        self.proxy = results[0]
        n = len(endpoints)
        node_vitals: list[dict[str, Any] | None] = list(results[1:1 + n])
        node_metrics: list[bytes | None] = list(results[1 + n:])
        unserved = self._unserved_rate(now)
        held = _held_by_proxy(self.proxy, pools)
        served_models = set(self.proxy.get("models", [])) if self.proxy else set()
        samples: list[NodeSample] = []
        out: dict[str, PoolSignals] = {}
        for pool in pools:
            idx = [i for i, e in enumerate(endpoints) if e.pool == pool]
            pool_samples = [_sample(endpoints[i], node_vitals[i]) for i in idx]
            samples.extend(pool_samples)
            out[pool] = self._pool_signals(
                now, pool, pool_samples, [node_metrics[i] for i in idx],
                unserved if pool not in served_models else 0.0, held.get(pool, 0))
        return out, samples

    def _unserved_rate(self, now: float) -> float:
        if not self.proxy:
            return 0.0
        total = int(self.proxy.get("requests_total", 0))
        prev, self._proxy_requests = self._proxy_requests, (now, total)
        if prev is None or now <= prev[0]:
            return 0.0
        return max(0, total - prev[1]) / (now - prev[0])

    def _pool_signals(self, now: float, pool: str, samples: list[NodeSample],
                      metrics: list[bytes | None], unserved: float, held: int = 0
                      ) -> PoolSignals:
        mem = self._memory.setdefault(pool, _PoolMemory())
        dt = now - mem.at if mem.at else 0.0
        started = 0  # a node counts a request when it arrives (queued there or running)
        for s in samples:
            before = mem.requests.get(s.id)
            if before is not None and s.requests_total >= before:
                started += s.requests_total - before
        mem.requests = {s.id: s.requests_total for s in samples}
        rate = started / dt if dt > 0 else 0.0
        # Arrivals: requests that reached a node, plus the growth of those the proxy holds.
        arrivals = max(0.0, rate + (held - mem.held) / dt) if dt > 0 else 0.0
        mem.held = held
        queued = sum(s.queued for s in samples) + held
        # Little's law: time in queue = queue length / rate of leaving it.
        if queued == 0:
            mem.queued_since = None
        elif mem.queued_since is None:
            mem.queued_since = now
        if queued == 0:
            wait = 0.0
        elif rate > 0:
            wait = queued / rate
        else:  # nothing left the queue: its head has waited at least this long
            wait = now - (mem.queued_since or now)
        mem.waits.append(wait)
        ttft = self._ttft(mem, samples, metrics)
        mem.at = now
        return PoolSignals(
            at=now,
            ready=sum(1 for s in samples if s.state == "ready"),
            # A node that stopped answering is the provider's to restart: still counted.
            starting=sum(1 for s in samples if s.state in ("starting", "loading", "down")),
            draining=sum(1 for s in samples if s.state == "draining"),
            in_flight=max(0, sum(s.in_flight for s in samples) - queued),
            queued=queued, request_rate=round(rate, 3), arrival_rate=round(arrivals, 3),
            tokens_per_second=round(sum(s.tokens_per_second for s in samples), 2),
            queue_wait_p95_s=_round(percentile(list(mem.waits), 0.95)),
            ttft_p95_s=_round(ttft), unserved_rate=round(unserved, 3))

    @staticmethod
    def _ttft(mem: _PoolMemory, samples: list[NodeSample],
              metrics: list[bytes | None]) -> float | None:
        delta: dict[float, float] = {}
        current: dict[str, dict[float, float]] = {}
        for s, text in zip(samples, metrics, strict=True):
            if text is None:
                continue
            now_b = parse_ttft_buckets(text.decode("utf-8", "replace"))
            current[s.id] = now_b
            before = mem.ttft.get(s.id, {})
            for bound, count in now_b.items():
                delta[bound] = delta.get(bound, 0.0) + max(0.0, count - before.get(bound, 0.0))
        mem.ttft = current
        return histogram_quantile(sorted(delta.items()), 0.95)


def _held_by_proxy(proxy: dict[str, Any] | None, pools: Sequence[str]) -> dict[str, int]:
    """Requests in the proxy not yet on a node, per pool.

    Two kinds. Requests for a model with no ready node, which the proxy holds while one
    starts (scale from zero), come counted per model (``held``): the demand of a pool at
    zero, seen at the first look. The rest of its ``in_flight`` less the outstanding
    requests of its nodes waits because every node of the model has its fill; the proxy
    does not say which model each one is for, so they are shared among pools by their
    nodes' outstanding requests (exact with one pool)."""
    if not proxy or not pools:
        return {}
    raw = proxy.get("held")
    standby = {str(m): int(n) for m, n in raw.items()} if isinstance(raw, dict) else {}
    nodes = [n for n in proxy.get("nodes", []) if isinstance(n, dict)]
    outstanding = {p: sum(int(n.get("outstanding", 0)) for n in nodes
                          if p in n.get("models", [])) for p in pools}
    held = (int(proxy.get("in_flight", 0)) - sum(int(n.get("outstanding", 0)) for n in nodes)
            - sum(standby.values()))
    total = sum(outstanding.values())
    out: dict[str, int] = {}
    if held > 0 and total > 0:
        out = {p: round(held * o / total) for p, o in outstanding.items()}
    for p in pools:
        if standby.get(p, 0) > 0:
            out[p] = out.get(p, 0) + standby[p]
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _sample(e: Endpoint, v: dict[str, Any] | None) -> NodeSample:
    if v is None:
        # Not answering: still starting (the provider says so) or gone.
        return NodeSample(e.id, e.pool, "starting" if e.state == "starting" else "down")
    state = "draining" if e.state == "draining" else str(v.get("state", "loading"))
    return NodeSample(
        id=e.id, pool=e.pool, state=state, in_flight=int(v.get("in_flight", 0)),
        queued=int(v.get("queue_depth", 0)), capacity=int(v.get("capacity", 0)),
        tokens_per_second=float(v.get("tokens_per_second", 0.0)),
        requests_total=int(v.get("requests_total", 0)))
