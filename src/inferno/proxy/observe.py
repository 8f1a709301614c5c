"""What each finished request teaches the proxy: vLLM-named metrics and live statistics.

The request log hands every row to :class:`RequestObserver` once the request ends (its
``on_record`` hook), off the byte path. It feeds the Prometheus histograms and
:class:`LiveStats`: ten-second buckets over the last hour (requests, errors, tokens, cost,
cache hits, a TTFT histogram) and per-node minute buckets, which the dashboard and the
alert rules read without any Prometheus.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.tracing import ProxyTracing
from inferno.store import RequestQuery

BUCKET_S = 10
HOUR_BUCKETS = 360
# TTFT histogram edges for percentiles: 5 ms growing by half each step, to ~1 minute.
TTFT_EDGES = tuple(0.005 * 1.5 ** k for k in range(24))
_R, _E, _P, _C, _COST, _HIT = range(6)
log_ = logging.getLogger("inferno.proxy")


def _ttft_slot(seconds: float) -> int:
    if seconds <= TTFT_EDGES[0]:
        return 0
    return min(len(TTFT_EDGES) - 1, math.ceil(math.log(seconds / 0.005, 1.5)))


class LiveStats:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # bucket start -> [requests, errors, prompt, completion, cost, cache hits], ttft counts
        self._buckets: dict[int, tuple[list[float], list[int]]] = {}
        self._order: deque[int] = deque()
        # node id -> minute -> [requests, errors, completion tokens]
        self._nodes: dict[str, dict[int, list[int]]] = {}
        # model -> minute -> [requests, *ttft counts] (the Models page's last hour)
        self._models: dict[str, dict[int, list[int]]] = {}
        self._day = 0  # spend over the current UTC day (the spend-budget alert)
        self._day_cost = 0.0

    def observe(self, row: dict[str, Any], *, spend: bool = True) -> None:
        """Count a finished request; ``spend=False``: not toward today's spend (a row
        replayed from the store, whose cost :meth:`add_spend` already holds)."""
        ts = float(row.get("ts") or self._clock())
        key = int(ts // BUCKET_S) * BUCKET_S
        slot = self._buckets.get(key)
        if slot is None:
            slot = self._buckets[key] = ([0.0] * 6, [0] * len(TTFT_EDGES))
            self._order.append(key)
            while len(self._order) > HOUR_BUCKETS:
                self._buckets.pop(self._order.popleft(), None)
        totals, ttft = slot
        error = int(row.get("status") or 500) >= 400
        completion = int(row.get("completion_tokens") or 0)
        totals[_R] += 1
        totals[_E] += error
        totals[_P] += int(row.get("prompt_tokens") or 0)
        totals[_C] += completion
        cost = float(row.get("cost") or 0.0)
        totals[_COST] += cost
        if cost and spend:
            day = int(ts // 86_400)
            if day != self._day:
                self._day, self._day_cost = day, 0.0
            self._day_cost += cost
        totals[_HIT] += bool(row.get("cache_hit"))
        timed = not error and row.get("ttft_ms") is not None
        ttft_slot = _ttft_slot(float(row["ttft_ms"]) / 1000.0) if timed else -1
        if timed:
            ttft[ttft_slot] += 1
        model = row.get("model")
        if model:
            cell = _minute(self._models.setdefault(str(model), {}), ts, 1 + len(TTFT_EDGES))
            cell[0] += 1
            if timed:
                cell[1 + ttft_slot] += 1
        node = row.get("node")
        if node and node != "cache":
            cell = _minute(self._nodes.setdefault(str(node), {}), ts, 3)
            cell[0] += 1
            cell[1] += error
            cell[2] += completion

    async def backfill(self, log: RequestQuery, until: float, limit: int = 200_000,
                       page: int = 2_000) -> None:
        """Rebuild the last hour before ``until`` (this process's start) from the request
        log, so a restarted proxy's charts, node strips and model figures go on where they
        left off. Run beside live traffic: the rows are replayed into a separate
        :class:`LiveStats` a page at a time and merged in one step."""
        past = LiveStats(self._clock)
        since, n = self._clock() - HOUR_BUCKETS * BUCKET_S, 0
        try:
            while n < limit:
                rows = await log.recent(since, until, min(page, limit - n))
                for row in rows:
                    past.observe(row, spend=False)
                n += len(rows)
                if len(rows) < page:
                    break
                since = rows[-1]["ts"]  # a tie at the page's edge is skipped (rare)
        except Exception as exc:  # the database is away: start from what is here
            log_.warning("live statistics not rebuilt from the request log: %s", exc)
            return
        self._merge(past)

    def _merge(self, past: LiveStats) -> None:
        for t, (totals, ttft) in past._buckets.items():
            slot = self._buckets.get(t)
            if slot is None:
                self._buckets[t] = (totals, ttft)
            else:
                slot[0][:] = [a + b for a, b in zip(slot[0], totals, strict=True)]
                slot[1][:] = [a + b for a, b in zip(slot[1], ttft, strict=True)]
        self._order = deque(sorted(self._buckets))
        while len(self._order) > HOUR_BUCKETS:
            self._buckets.pop(self._order.popleft(), None)
        for mine, theirs in ((self._nodes, past._nodes), (self._models, past._models)):
            for name, minutes in theirs.items():
                into = mine.setdefault(name, {})
                for m, cell in minutes.items():
                    have = into.get(m)
                    into[m] = cell if have is None else [a + b for a, b in
                                                         zip(have, cell, strict=True)]

    def add_spend(self, usd: float) -> None:
        """Spend already recorded today (from the store, at start)."""
        day = int(self._clock() // 86_400)
        if day != self._day:
            self._day, self._day_cost = day, 0.0
        self._day_cost += usd

    def spent_today(self) -> float:
        return self._day_cost if self._day == int(self._clock() // 86_400) else 0.0

    def series(self, window_s: int = 3600) -> list[dict[str, Any]]:
        """One point per ten seconds over the window (empty buckets included)."""
        now = int(self._clock() // BUCKET_S) * BUCKET_S
        return [self._point(t, self._buckets.get(t))
                for t in range(now - window_s + BUCKET_S, now + BUCKET_S, BUCKET_S)]

    def summary(self, window_s: int = 60) -> dict[str, Any]:
        """The last ``window_s`` seconds (complete buckets and the current one) as one point."""
        now = self._clock()
        start = int((now - window_s) // BUCKET_S) * BUCKET_S + BUCKET_S
        totals = [0.0] * 6
        ttft = [0] * len(TTFT_EDGES)
        for t in range(start, int(now // BUCKET_S) * BUCKET_S + BUCKET_S, BUCKET_S):
            slot = self._buckets.get(t)
            if slot is not None:
                totals = [a + b for a, b in zip(totals, slot[0], strict=True)]
                ttft = [a + b for a, b in zip(ttft, slot[1], strict=True)]
        point = _rates(totals, ttft, float(window_s))
        point["t"] = now
        return point

    def node_strip(self, node: str) -> list[dict[str, int]]:
        """The node's last hour, one cell per minute: requests, errors, tokens."""
        minutes = self._nodes.get(node, {})
        now = int(self._clock() // 60) * 60
        return [dict(zip(("t", "requests", "errors", "tokens"),
                         (t, *minutes.get(t, (0, 0, 0))), strict=True))
                for t in range(now - 3540, now + 60, 60)]

    def model_hour(self, model: str) -> tuple[int, float | None]:
        """(requests, TTFT p95 in seconds or None) of ``model`` over the last hour."""
        minutes = self._models.get(model, {})
        now = int(self._clock() // 60) * 60
        total = [0] * (1 + len(TTFT_EDGES))
        for t in range(now - 3540, now + 60, 60):
            cell = minutes.get(t)
            if cell is not None:
                total = [a + b for a, b in zip(total, cell, strict=True)]
        return total[0], quantile(total[1:], 0.95)

    def node_tokens_per_s(self, node: str) -> float:
        minutes = self._nodes.get(node, {})
        now = int(self._clock() // 60) * 60
        return sum(minutes.get(t, (0, 0, 0))[2] for t in (now - 60, now)) / 120.0

    def _point(self, t: int, slot: tuple[list[float], list[int]] | None) -> dict[str, Any]:
        if slot is None:
            point = _rates([0.0] * 6, [0] * len(TTFT_EDGES), BUCKET_S)
        else:
            point = _rates(slot[0], slot[1], BUCKET_S)
        point["t"] = t
        return point


def _minute(minutes: dict[int, list[int]], ts: float, width: int) -> list[int]:
    """The cell of ``ts``'s minute (a new one drops those over an hour older)."""
    m = int(ts // 60) * 60
    cell = minutes.get(m)
    if cell is None:
        cell = minutes[m] = [0] * width
        for old in [k for k in minutes if k <= m - 3600]:
            del minutes[old]
    return cell


def _rates(totals: list[float], ttft: list[int], seconds: float) -> dict[str, Any]:
    requests = totals[_R]
    return {
        "requests": int(requests),
        "rps": requests / seconds,
        "error_rate": totals[_E] / requests if requests else 0.0,
        "tokens_per_s": totals[_C] / seconds,
        "cache_hit_rate": totals[_HIT] / requests if requests else 0.0,
        "cost_per_hour": totals[_COST] * 3600.0 / seconds,
        "ttft_p50": quantile(ttft, 0.5),
        "ttft_p95": quantile(ttft, 0.95),
    }


def quantile(counts: list[int], q: float) -> float | None:
    """The upper edge of the bucket holding quantile ``q`` (None with no samples)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for edge, n in zip(TTFT_EDGES, counts, strict=True):
        seen += n
        if seen >= rank:
            return edge
    return TTFT_EDGES[-1]


class RequestObserver:
    """The request log's ``on_record`` hook: metrics per model, then the live statistics."""

    def __init__(self, metrics: ProxyMetrics, stats: LiveStats) -> None:
        self._m = metrics
        self.stats = stats
        self._children: dict[str, tuple[Any, ...]] = {}
        self.tracing: ProxyTracing | None = None  # ends the request's span with its row

    def __call__(self, row: dict[str, Any]) -> None:
        self.stats.observe(row)
        if self.tracing is not None:
            self.tracing.finish(row)
        model = row.get("model")
        if row.get("status") != 200 or not isinstance(model, str):
            return
        kids = self._children.get(model)
        if kids is None:
            m = self._m
            kids = self._children[model] = tuple(x.labels(model) for x in (
                m.ttft, m.itl, m.e2e, m.prompt_tokens, m.generation_tokens, m.cost))
        ttft, itl, e2e, prompt, generated, cost = kids
        latency = float(row.get("latency_ms") or 0.0) / 1000.0
        e2e.observe(latency)
        first = row.get("ttft_ms")
        completion = int(row.get("completion_tokens") or 0)
        if first is not None:
            ttft.observe(first / 1000.0)
            if row.get("stream") and completion > 1:
                itl.observe(max(0.0, latency - first / 1000.0) / (completion - 1))
        prompt.inc(int(row.get("prompt_tokens") or 0))
        generated.inc(completion)
        if row.get("cost"):
            cost.inc(float(row["cost"]))
