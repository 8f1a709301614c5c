"""The background batch writer: rows in a bounded queue, written in batches by one task.

Both the proxy's request log and the governator's store write through it; it is the
request log's writer, generalised (the measurements behind it are in the comments here,
in ``repos.RequestRepo.insert_many`` and beside ``log_batch_size`` in ``core/config.py``).

Contract:
- :meth:`BatchWriter.put` never blocks and never raises: the hot path calls it once per
  row. Beyond ``queue_size`` waiting rows a row is dropped and counted, nothing else;
- the task writes the oldest ``batch_size`` rows in one call of ``write`` (one
  transaction) as soon as a full batch waits, and otherwise what is there one
  ``flush_interval`` after the first row came; with nothing queued it sleeps untimed;
- peek, write, then pop: a write that fails or is cancelled loses nothing. ``write`` must
  therefore be idempotent (the stores skip rows already stored). One write at a time: the
  task and a :meth:`flush` could otherwise both store the same rows and both pop them;
- a failed write is retried with back-off (``flush_interval`` doubling up to
  ``max_backoff``) while new rows wait; one warning per outage, one line when it ends;
- a batch the database *refuses* (bad data, not an outage: :func:`refused_by_database`)
  ``max_refusals`` times in a row is dropped and counted, so the writer never stalls on it;
- :meth:`flush` writes everything queued (shutdown, tests); :meth:`close` stops the task,
  then flushes, each bounded in time;
- counters ``written``, ``dropped``, ``errors`` and the ``backlog``, plus optional
  callbacks and a Prometheus gauge for the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client import Gauge

T = TypeVar("T")
_log = logging.getLogger("inferno.store.writer")


def refused_by_database(exc: BaseException) -> bool:
    """The database answered and refused the rows (bad data), as opposed to an outage."""
    from sqlalchemy.exc import DataError, IntegrityError

    if getattr(exc, "connection_invalidated", False):
        return False
    # PostgreSQL's SQLSTATE classes: 22 data exception, 23 integrity, 42 rule violation.
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return isinstance(exc, DataError | IntegrityError) or state[:2] in ("22", "23", "42")


def _nothing(n: int) -> None:
    return None


class BatchWriter(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[object]],
        *,
        name: str,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        max_backoff: float = 5.0,
        timeout: float | None = None,
        refused: Callable[[BaseException], bool] = refused_by_database,
        max_refusals: int = 5,
        log: logging.Logger = _log,
        on_written: Callable[[int], object] = _nothing,
        on_dropped: Callable[[int], object] = _nothing,
        on_error: Callable[[], object] = lambda: None,
        backlog_gauge: Gauge | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._queue: deque[T] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._refused = refused
        self._max_refusals = max_refusals
        self._refusals = 0  # batches in a row the database refused
        self._log = log
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._on_error = on_error
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.errors = 0
        if backlog_gauge is not None:
            backlog_gauge.set_function(lambda: float(len(self._queue)))

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def put(self, row: T) -> bool:
        """Queue ``row``; ``False`` (and counted) when the queue is full. Never blocks."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            self.dropped += 1
            self._on_dropped(1)
            return False
        queue.append(row)
        # The first row wakes an idle writer (which then gives others one interval to
        # join it); a full batch wakes it at once.
        if len(queue) == 1 or len(queue) >= self._batch_size:
            self._wake.set()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def run(self) -> None:
        """Write until cancelled (:meth:`start` runs it as a task; or await it in one)."""
        backoff = self._interval
        while True:
            if not self._queue:
                # Idle: sleep until a row comes (no timer: an idle process stays asleep),
                # then up to one interval more for a batch to gather.
                self._wake.clear()
                await self._wake.wait()
                if len(self._queue) < self._batch_size:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                        # cancel that lands as the event fires, and the task would never stop.
                        async with asyncio.timeout(self._interval):
                            await self._wake.wait()
            if await self._write_next():
                backoff = self._interval
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _write_next(self) -> bool:
        """Writes the oldest batch. Peek, write, then pop: a cancelled writer loses nothing."""
        async with self._writing:
            n = min(len(self._queue), self._batch_size)
            if n == 0:
                return True
            batch = list(itertools.islice(self._queue, n))
            try:
                if self._timeout is None:
                    await self._write(batch)
                else:
                    await asyncio.wait_for(self._write(batch), self._timeout)
            except Exception as exc:
                self._failed(exc, batch)
                return False
            self._pop(n)
            self._refusals = 0
            if self._failing:
                self._log.info(
                    "%s: database back; flushing the backlog (%d rows)", self.name, self.backlog
                )
            self._failing = False
            self.written += n
            self._on_written(n)
            return True

    def _failed(self, exc: Exception, batch: list[T]) -> None:
        self.errors += 1
        self._on_error()
        if not self._failing:
            # Class names only: a driver's message may quote row values (payloads) or the URL.
            cause = type(getattr(exc, "orig", None) or exc).__name__
            self._log.warning(
                "%s: database unavailable (%s/%s); keeping %d rows and retrying",
                self.name,
                type(exc).__name__,
                cause,
                self.backlog,
            )
        self._failing = True
        self._refusals = self._refusals + 1 if self._refused(exc) else 0
        if self._refusals >= self._max_refusals:  # bad rows, not an outage: never stall
            self._log.error(
                "%s: dropping %d rows the database refuses (%s)",
                self.name,
                len(batch),
                type(exc).__name__,
            )
            self._pop(len(batch))
            self.dropped += len(batch)
            self._on_dropped(len(batch))
            self._refusals = 0

    def _pop(self, n: int) -> None:
        for _ in range(n):
            self._queue.popleft()

    async def flush(self, within: float = 5.0) -> bool:
        """Write everything queued now; ``False`` if rows are left at the deadline."""
        deadline = time.monotonic() + within
        while self._queue and time.monotonic() < deadline:
            if not await self._write_next():
                await asyncio.sleep(0.1)
        return not self._queue

    async def close(self, within: float = 5.0) -> bool:
        """Stop the task, then flush (bounded in total); ``False`` if rows were left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        flushed = False
        with contextlib.suppress(TimeoutError):  # each attempt is bounded, the total too
            flushed = await asyncio.wait_for(self.flush(within), within + 1.0)
        if not flushed:
            self._log.warning("%s: %d rows not written at shutdown", self.name, self.backlog)
        return flushed
