"""Where samples and decisions are kept: a small protocol, in memory or in the shared store.

The governator only talks to :class:`GovernatorStore`; ``open_store(url)`` picks the
implementation: ``memory`` (tests, or nothing kept), else the shared ``inferno.store``
(SQLAlchemy: SQLite in the data directory by default, PostgreSQL by URL). Raw samples
older than ``raw_retention_s`` are rolled up into one row per pool and minute (count,
mean and max of each signal), roll-ups older than ``rollup_retention_s`` are pruned, and
so are "hold" decisions past that age (decisions that changed something are kept).

:class:`SqlStore` never makes the control loop wait on the database: writes go to bounded
in-memory queues and a background task writes them in batches (one transaction each,
idempotent, so a retried batch is not doubled). While the database is slow or down the
batch is retried with back-off and new rows wait (beyond ``queue_size`` they are dropped
and counted); errors are logged once per outage and counted, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from inferno.core.errors import ConfigError
from inferno.governator.policy import Decision
from inferno.store import Store, StoreUnavailable, default_sqlite_url
from inferno.store.governator import rollup, sample_row

log = logging.getLogger("inferno.governator.store")
T = TypeVar("T")


class TelemetryStore(Protocol):
    async def add_sample(self, at: float, pool: str, signals: dict[str, Any]) -> None: ...

    async def samples(self, pool: str, since: float) -> list[dict[str, Any]]: ...

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]: ...

    async def compact(self, now: float) -> None: ...


class DecisionStore(Protocol):
    async def add_decision(self, decision: Decision) -> int: ...

    async def set_outcome(self, decision_id: int, outcome: str) -> None: ...

    async def decisions(self, limit: int = 20) -> list[dict[str, Any]]: ...


class GovernatorStore(TelemetryStore, DecisionStore, Protocol):
    async def start(self) -> None: ...

    async def flush(self, within: float = 5.0) -> bool: ...

    def stats(self) -> dict[str, int]: ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self, raw_retention_s: float = 3600.0, rollup_retention_s: float = 86400.0,
                 max_decisions: int = 10_000) -> None:
        self._raw: list[tuple[float, str, dict[str, Any]]] = []
        self._rolled: dict[tuple[float, str], dict[str, Any]] = {}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self._next_id = 1
        self._raw_s = raw_retention_s
        self._rolled_s = rollup_retention_s

    async def start(self) -> None:
        return None

    async def add_sample(self, at: float, pool: str, signals: dict[str, Any]) -> None:
        self._raw.append((at, pool, dict(signals)))

    async def samples(self, pool: str, since: float) -> list[dict[str, Any]]:
        return [{**s, "at": t} for t, p, s in self._raw if p == pool and t >= since]

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]:
        return [{"minute": m, **s} for (m, p), s in sorted(self._rolled.items())
                if p == pool and m >= since]

    async def compact(self, now: float) -> None:
        cut = _minute(now - self._raw_s)
        groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
        for t, pool, s in self._raw:
            if t < cut:
                groups.setdefault((_minute(t), pool), []).append(s)
        self._raw = [r for r in self._raw if r[0] >= cut]
        for key, rows in groups.items():  # a minute is only rolled once (cut is aligned)
            self._rolled[key] = rollup(rows)
        self._rolled = {k: v for k, v in self._rolled.items() if k[0] >= now - self._rolled_s}

    async def add_decision(self, decision: Decision) -> int:
        did = self._next_id
        self._next_id += 1
        self._decisions.append({"id": did, **decision.to_dict()})
        return did

    async def set_outcome(self, decision_id: int, outcome: str) -> None:
        for d in reversed(self._decisions):
            if d["id"] == decision_id:
                d["outcome"] = outcome
                return

    async def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._decisions)[-limit:][::-1]

    async def flush(self, within: float = 5.0) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {"samples_written": 0, "decisions_written": 0, "dropped": 0,
                "write_errors": 0, "read_errors": 0, "backlog": 0}

    async def close(self) -> None:
        return None


def _minute(t: float) -> float:
    """Raw samples are rolled up whole minutes at a time: the cut is aligned down."""
    return t // 60 * 60


class SqlStore:
    """The shared store (``inferno.store``) behind a bounded background writer."""

    def __init__(self, store: Store, *, raw_retention_s: float = 3600.0,
                 rollup_retention_s: float = 86400.0, queue_size: int = 10_000,
                 batch_size: int = 500, flush_interval: float = 1.0,
                 timeout: float = 10.0) -> None:
        self.store = store
        self._repo = store.governator
        self._raw_s = raw_retention_s
        self._rolled_s = rollup_retention_s
        self._queue_size = queue_size
        self._batch = batch_size
        self._interval = flush_interval
        self._timeout = timeout
        self._samples: deque[dict[str, Any]] = deque()
        self._decisions: deque[dict[str, Any]] = deque()
        self._outcomes: dict[int, str] = {}
        self._compact_at: float | None = None
        # The newest decisions as the loop made them: fresh even before they are written,
        # and what ``decisions()`` answers while the database cannot.
        self._recent: deque[dict[str, Any]] = deque(maxlen=200)
        self._last_id = 0
        self._migrated = False
        self._refusals = 0  # batches in a row the database refused (not an outage)
        self._failing = False
        self._lock = asyncio.Lock()
        self._migrate_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats = dict.fromkeys(("samples_written", "decisions_written", "dropped",
                                     "write_errors", "read_errors"), 0)

    def __repr__(self) -> str:
        return f"<SqlStore {self.store!r}>"

    async def start(self) -> None:
        """Migrate (bounded in time) and start the writer. A database that does not answer
        is logged and retried by the writer; the governator runs on without it."""
        try:
            await asyncio.wait_for(self._migrate(), self._timeout)
        except Exception as exc:
            self._error("write_errors", "cannot open the database", exc)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="governator-store")

    async def _migrate(self) -> None:
        """Apply the migrations once (serialised: SQLite's migration lock is a file lock)."""
        async with self._migrate_lock:
            if self._migrated:
                return
            await self.store.start()
            self._last_id = max(self._last_id, await self._repo.max_decision_id())
            self._migrated = True

    # --- writes: never wait on the database --------------------------------------------

    async def add_sample(self, at: float, pool: str, signals: dict[str, Any]) -> None:
        if len(self._samples) >= self._queue_size:
            self._stats["dropped"] += 1
            return
        self._samples.append(sample_row(at, pool, signals))
        self._poke()

    async def add_decision(self, decision: Decision) -> int:
        # Time-ordered ids (microseconds, unique in this process, above any stored one):
        # the loop can refer to a decision before its row is written.
        did = self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        row = {"id": did, **decision.to_dict()}
        self._recent.append(row)
        if len(self._decisions) >= self._queue_size:
            self._stats["dropped"] += 1
        else:
            self._decisions.append(row)
            self._poke()
        return did

    async def set_outcome(self, decision_id: int, outcome: str) -> None:
        for d in reversed(self._recent):  # the queued row is this same dict
            if d["id"] == decision_id:
                d["outcome"] = outcome
                break
        if len(self._outcomes) < self._queue_size:
            self._outcomes[decision_id] = outcome
            self._poke()
        else:
            self._stats["dropped"] += 1

    async def compact(self, now: float) -> None:
        self._compact_at = now
        self._poke()

    def _poke(self) -> None:
        if len(self._samples) + len(self._decisions) >= self._batch:
            self._wake.set()

    def _pending(self) -> bool:
        return bool(self._samples or self._decisions or self._outcomes
                    or self._compact_at is not None)

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            while self._pending():
                if not await self._write_once():
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    break
                backoff = self._interval

    async def _write_once(self) -> bool:
        """One batch: peek, write, then pop (a write cut short loses nothing)."""
        async with self._lock:
            try:
                await asyncio.wait_for(self._migrate(), self._timeout)
                samples = [self._samples[i] for i in range(min(len(self._samples), self._batch))]
                decisions = [self._decisions[i]
                             for i in range(min(len(self._decisions), self._batch))]
                outcomes = dict(self._outcomes)
                await asyncio.wait_for(self._repo.write(samples, decisions,
                                                        list(outcomes.items())), self._timeout)
            except Exception as exc:
                self._error("write_errors", "cannot write samples and decisions"
                            if self._migrated else "cannot open the database", exc)
                self._refusals = self._refusals + 1 if _refused(exc) else 0
                if self._refusals >= 5:  # the database refuses these rows: never stall on them
                    log.error("governator store: dropping a batch the database refuses (%s)",
                              type(exc).__name__)
                    self._drop(len(samples), len(decisions), outcomes)
                    self._refusals = 0
                return False
            self._refusals = 0
            self._pop(len(samples), len(decisions), outcomes)
            self._stats["samples_written"] += len(samples)
            self._stats["decisions_written"] += len(decisions)
            if self._compact_at is not None and not self._samples:
                now = self._compact_at
                try:
                    await asyncio.wait_for(self._repo.compact(
                        _minute(now - self._raw_s), now - self._rolled_s,
                        hold_before=now - self._rolled_s), self._timeout)
                except Exception as exc:
                    self._error("write_errors", "cannot roll up old samples", exc)
                    return False
                if self._compact_at == now:
                    self._compact_at = None
            self._recovered()
            return True

    def _pop(self, samples: int, decisions: int, outcomes: dict[int, str]) -> None:
        for _ in range(samples):
            self._samples.popleft()
        for _ in range(decisions):
            self._decisions.popleft()
        for did, outcome in outcomes.items():
            if self._outcomes.get(did) == outcome:
                del self._outcomes[did]

    def _drop(self, samples: int, decisions: int, outcomes: dict[int, str]) -> None:
        self._pop(samples, decisions, outcomes)
        self._stats["dropped"] += samples + decisions + len(outcomes)

    async def flush(self, within: float = 5.0) -> bool:
        """Write everything queued now (shutdown, tests); False if the deadline passed."""
        deadline = time.monotonic() + within
        while self._pending() and time.monotonic() < deadline:
            if not await self._write_once():
                await asyncio.sleep(0.1)
        return not self._pending()

    # --- reads -------------------------------------------------------------------------

    async def samples(self, pool: str, since: float) -> list[dict[str, Any]]:
        return await self._read(self._repo.samples(pool, since))

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]:
        return await self._read(self._repo.rollups(pool, since))

    async def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first: stored ones merged with those not written yet. Never raises
        (``inferno governator status`` must answer while the database is down)."""
        try:
            stored = await self._read(self._repo.decisions(limit))
        except StoreUnavailable:
            stored = []
        merged = {d["id"]: d for d in stored}
        merged.update((d["id"], dict(d)) for d in self._recent)
        return sorted(merged.values(), key=lambda d: d["id"], reverse=True)[:limit]

    async def _read(self, query: Coroutine[Any, Any, T]) -> T:
        try:
            await asyncio.wait_for(self._migrate(), self._timeout)
            # Reads answer a person (status): shorter than the writer's patience.
            return await asyncio.wait_for(query, min(self._timeout, 3.0))
        except Exception as exc:
            query.close()  # never awaited when the migration failed
            self._error("read_errors", "cannot read", exc)
            raise StoreUnavailable(f"the governator store cannot be read: "
                                   f"{type(exc).__name__}") from exc

    def _error(self, counter: str, what: str, exc: BaseException) -> None:
        self._stats[counter] += 1
        if not self._failing:
            # Class names only: a driver's message may quote the URL or row values.
            cause = type(getattr(exc, "orig", None) or exc).__name__
            log.warning("governator store %s: %s (%s/%s); backlog %d rows, retrying",
                        self.store, what, type(exc).__name__, cause, self.backlog)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("governator store %s: database back; backlog %d rows", self.store,
                     self.backlog)
        self._failing = False

    @property
    def backlog(self) -> int:
        return len(self._samples) + len(self._decisions) + len(self._outcomes)

    def stats(self) -> dict[str, int]:
        return {**self._stats, "backlog": self.backlog}

    async def close(self, within: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        flushed = False
        with contextlib.suppress(TimeoutError):  # each attempt is bounded, the total too
            flushed = await asyncio.wait_for(self.flush(within), within + 1.0)
        if not flushed:
            log.warning("governator store: %d rows not written at shutdown", self.backlog)
        await self.store.close()


def _refused(exc: BaseException) -> bool:
    """The database answered and refused the rows (bad data), as opposed to an outage."""
    from sqlalchemy.exc import DataError, IntegrityError

    if getattr(exc, "connection_invalidated", False):
        return False
    # PostgreSQL's SQLSTATE classes: 22 data exception, 23 integrity, 42 rule violation.
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    return isinstance(exc, DataError | IntegrityError) or state[:2] in ("22", "23", "42")


class StoreMetrics:
    """Prometheus view of :meth:`GovernatorStore.stats` (registered by the loop)."""

    def __init__(self, store: GovernatorStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        s = self._store.stats()
        for key in ("samples_written", "decisions_written", "dropped", "write_errors",
                    "read_errors"):
            yield CounterMetricFamily(f"inferno_governator_store_{key}",
                                      f"Governator store: {key.replace('_', ' ')}", s[key])
        yield GaugeMetricFamily("inferno_governator_store_backlog",
                                "Rows waiting to be written", s["backlog"])


def open_store(url: str | None, *, data_dir: Path | None = None, schema: str | None = None,
               raw_retention_s: float = 3600.0, rollup_retention_s: float = 86400.0,
               queue_size: int = 10_000, batch_size: int = 500,
               flush_interval: float = 1.0) -> GovernatorStore:
    """``memory``/``none``: nothing kept; unset: SQLite in ``data_dir`` (the proxy's file
    when they share it); else a SQLAlchemy URL (``sqlite:///``, ``postgresql://``)."""
    if url in ("memory", "none"):
        return MemoryStore(raw_retention_s, rollup_retention_s)
    if not url:
        if data_dir is None:
            raise ConfigError("invalid setting 'database_url': unset, and no data_dir")
        url = default_sqlite_url(data_dir)
    try:
        store = Store(url, schema=schema)  # a bad URL: ConfigError, never echoing the URL
    except OSError as exc:  # the SQLite file's directory cannot be created
        raise ConfigError(f"invalid setting 'data_dir': cannot create {exc.filename}: "
                          f"{exc.strerror}") from exc
    return SqlStore(store, raw_retention_s=raw_retention_s,
                    rollup_retention_s=rollup_retention_s, queue_size=queue_size,
                    batch_size=batch_size, flush_interval=flush_interval)
