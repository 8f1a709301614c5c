"""The request log: one row per client request, written by a background writer.

:meth:`RequestLog.record` only appends to a bounded in-memory queue; the writer task takes
batches of up to ``batch_size`` rows and inserts each batch in one transaction. While the
database is down the batch is retried with back-off, new rows wait in the queue (up to
``queue_size``; beyond that they are dropped and counted) and the proxy keeps serving.
Inserts skip rows already stored, so a batch retried after an ambiguous failure is never
doubled: every request id is in the table exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from inferno.core.errors import InfernoError
from inferno.proxy.security.metrics import SecurityMetrics
from inferno.store import Store

log = logging.getLogger("inferno.proxy.accounting")
_PAYLOAD_LIMIT = 64 * 1024


class Prices:
    """USD per million prompt / completion tokens, per model."""

    def __init__(self, table: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._table = {m: (float(p.get("prompt", 0)) / 1e6, float(p.get("completion", 0)) / 1e6)
                       for m, p in (table or {}).items()}

    def cost(self, model: str | None, prompt: int, completion: int) -> float:
        per = self._table.get(model or "")
        return prompt * per[0] + completion * per[1] if per else 0.0


def payload_text(data: bytes) -> str:
    return data[:_PAYLOAD_LIMIT].decode("utf-8", "replace")


class RequestLog:
    def __init__(self, store: Store | None, metrics: SecurityMetrics, *,
                 queue_size: int = 100_000, batch_size: int = 4096,
                 flush_interval: float = 0.5, log_payloads: bool = False) -> None:
        self._store = store
        self._metrics = metrics
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval
        self.log_payloads = log_payloads
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._failing = False
        self.written = 0
        metrics.log_backlog.set_function(lambda: float(len(self._queue)))

    @property
    def enabled(self) -> bool:
        return self._store is not None

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def record(self, row: dict[str, Any]) -> None:
        """Never blocks and never raises: the request path calls it once per request."""
        if self._store is None:
            return
        if len(self._queue) >= self._queue_size:
            self._metrics.log_dropped.inc()
            return
        self._queue.append(row)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def record_rejected(self, err: InfernoError) -> None:
        """A request the wire layer refused before any handler saw it (413, 431, 400):
        its path and key are unknown, but it still gets its one row."""
        now = time.time()
        row = new_row(new_request_id(now), now, "-")
        row["status"] = err.status_code
        row["error_code"] = err.code
        self.record(row)

    async def run(self) -> None:
        backoff = self._interval
        while True:
            if not self._queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                continue
            if await self._write_next():
                backoff = self._interval
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _write_next(self) -> bool:
        """Writes the oldest batch. Peek, write, then pop: a cancelled writer loses nothing.
        One writer at a time: run() and a flush() could otherwise both store the same
        rows (skipped as duplicates) and then both pop them."""
        async with self._writing:
            n = min(len(self._queue), self._batch_size)
            if n == 0:
                return True
            if not await self._write(list(itertools.islice(self._queue, n))):
                return False
            for _ in range(n):
                self._queue.popleft()
            return True

    async def _write(self, batch: list[dict[str, Any]]) -> bool:
        assert self._store is not None
        try:
            await self._store.requests.insert_many(batch)
        except Exception as exc:
            self._metrics.log_write_errors.inc()
            if not self._failing:
                # Class names only: a driver's message may quote row values (payloads).
                cause = type(getattr(exc, "orig", None) or exc).__name__
                log.warning("request log: database unavailable (%s/%s); keeping %d rows and "
                            "retrying", type(exc).__name__, cause, self.backlog)
            self._failing = True
            return False
        if self._failing:
            log.info("request log: database back; flushing the backlog (%d rows)", self.backlog)
        self._failing = False
        self.written += len(batch)
        self._metrics.log_written.inc(len(batch))
        return True

    async def flush(self, within: float = 5.0) -> bool:
        """Write everything queued now (used on shutdown and by tests)."""
        deadline = time.monotonic() + within
        while self._queue and time.monotonic() < deadline:
            if not await self._write_next():
                await asyncio.sleep(0.1)
        return not self._queue


# Request ids: the time in ms (44 bits) then 52 random bits, as hex, like a UUIDv7: rows
# arrive in id order, so the request log's unique index grows at its end instead of
# splitting pages all over (SQLite insert CPU per row 12.3 -> 6.7 us: bench/request_log_ids.py).
# The random part comes from a generator seeded by the OS once per process (and again in a
# forked child), not a getrandom() system call per request: ids name a request, they
# authorise nothing, so they must be unique, not unpredictable.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id(ts: float | None = None) -> str:
    ms = int((time.time() if ts is None else ts) * 1000)
    return f"{ms & 0xFFF_FFFF_FFFF:011x}{_ids.getrandbits(52):013x}"


def new_row(request_id: str, ts: float, route: str) -> dict[str, Any]:
    # No "day" here: the store derives it from ts when it writes the row, off the hot path.
    return {"request_id": request_id, "ts": ts, "key_id": None,
            "route": route, "model": None, "node": None, "status": 500, "error_code": None,
            "attempts": 0, "stream": False, "prompt_tokens": 0, "completion_tokens": 0,
            "latency_ms": 0.0, "ttft_ms": None, "cost": 0.0, "cache_hit": False,
            "request_body": None, "response_body": None}
