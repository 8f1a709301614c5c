"""The request log: one row per client request, written by a background writer.

:meth:`RequestLog.record` only appends to a bounded in-memory queue; the writer task
(:class:`inferno.store.writer.BatchWriter`) takes batches of up to ``batch_size`` rows and
inserts each batch in one transaction. While the database is down the batch is retried
with back-off, new rows wait in the queue (up to ``queue_size``; beyond that they are
dropped and counted) and the proxy keeps serving. Inserts skip rows already stored, so a
batch retried after an ambiguous failure is never doubled: every request id is in the
table exactly once.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from inferno.core.errors import InfernoError
from inferno.proxy.security.metrics import SecurityMetrics
from inferno.store import Store
from inferno.store.writer import BatchWriter

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
        self.log_payloads = log_payloads
        # Rows go to the store's RequestRepo.insert_many (statement-size ladder, values
        # bound in the driver, statements on aiosqlite's thread); see store/writer.py.
        self._writer: BatchWriter[dict[str, Any]] = BatchWriter(
            self._insert, name="request log", queue_size=queue_size, batch_size=batch_size,
            flush_interval=flush_interval, max_backoff=5.0, log=log,
            on_written=metrics.log_written.inc, on_dropped=metrics.log_dropped.inc,
            on_error=metrics.log_write_errors.inc, backlog_gauge=metrics.log_backlog)
        # Sees every finished request's row, stored or not (metrics, live statistics).
        self.on_record: Callable[[dict[str, Any]], None] | None = None

    @property
    def enabled(self) -> bool:
        return self._store is not None

    @property
    def backlog(self) -> int:
        return self._writer.backlog

    @property
    def written(self) -> int:
        return self._writer.written

    def record(self, row: dict[str, Any]) -> None:
        """Never blocks and never raises: the request path calls it once per request."""
        if self.on_record is not None:
            try:
                self.on_record(row)
            except Exception:  # an observer's bug must not fail the request
                log.exception("request observer failed")
        if self._store is not None:
            self._writer.put(row)

    def record_rejected(self, err: InfernoError) -> None:
        """A request the wire layer refused before any handler saw it (413, 431, 400):
        its path and key are unknown, but it still gets its one row."""
        now = time.time()
        row = new_row(new_request_id(now), now, "-")
        row["status"] = err.status_code
        row["error_code"] = err.code
        self.record(row)

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        assert self._store is not None
        await self._store.requests.insert_many(batch)

    async def run(self) -> None:
        await self._writer.run()

    async def flush(self, within: float = 5.0) -> bool:
        """Write everything queued now (used on shutdown and by tests)."""
        return await self._writer.flush(within)


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
