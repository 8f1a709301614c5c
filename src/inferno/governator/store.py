"""Where samples and decisions are kept: a small protocol, in memory or in the shared store.

The governator only talks to :class:`GovernatorStore`; ``open_store(url)`` picks the
implementation: ``memory`` (tests, or nothing kept), else the shared ``inferno.store``
(SQLAlchemy: SQLite in the data directory by default, PostgreSQL by URL). Raw samples
older than ``raw_retention_s`` are rolled up into one row per pool and minute (count,
mean and max of each signal), roll-ups older than ``rollup_retention_s`` are pruned, and
so are "hold" decisions past that age (decisions that changed something are kept).

:class:`SqlStore` never makes the control loop wait on the database: writes go to bounded
in-memory queues and background writers (:class:`inferno.store.writer.BatchWriter`, the
request log's) write them in batches (one transaction each, idempotent, so a retried batch
is not doubled). While the database is slow or down the batch is retried with back-off
and new rows wait (beyond ``queue_size`` they are dropped and counted); errors are logged
once per outage and counted, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from inferno.core.errors import ConfigError
from inferno.governator.policy import Decision
from inferno.store import Store, StoreUnavailable, default_sqlite_url
from inferno.store.audit import AuditEvent
from inferno.store.governator import rollup, sample_row
from inferno.store.writer import BatchWriter

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


def _audit_event(d: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        f"scale.{d['action']}", str(d["pool"])[:512], "system", str(d["outcome"])[:512],
        detail={"from": d["current"], "to": d["desired"], "node_type": d["node_type"],
                "reason": str(d["reason"])[:500], "decision_id": d["id"]},
        ts=float(d["at"]), id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"inferno-decision-{d['id']}")))


def _minute(t: float) -> float:
    """Raw samples are rolled up whole minutes at a time: the cut is aligned down."""
    return t // 60 * 60


class SqlStore:
    """The shared store (``inferno.store``) behind two background writers
    (:class:`~inferno.store.writer.BatchWriter`): samples, and decisions with their
    outcomes, each with its own bound, so a flood of samples never costs a decision."""

    def __init__(self, store: Store, *, raw_retention_s: float = 3600.0,
                 rollup_retention_s: float = 86400.0, queue_size: int = 10_000,
                 batch_size: int = 500, flush_interval: float = 1.0,
                 timeout: float = 10.0) -> None:
        self.store = store
        self._repo = store.governator
        self._raw_s = raw_retention_s
        self._rolled_s = rollup_retention_s
        self._timeout = timeout
        # Sample rows, and a float: "compact as of then", after the samples queued before it.
        self._samples: BatchWriter[dict[str, Any] | float] = BatchWriter(
            self._write_samples, name=f"governator store {store!r} (samples)",
            queue_size=queue_size, batch_size=batch_size, flush_interval=flush_interval,
            max_backoff=30.0, timeout=timeout, log=log)
        # Decision rows, and (decision id, outcome) updates, in the order the loop made them.
        self._decisions: BatchWriter[dict[str, Any] | tuple[int, str]] = BatchWriter(
            self._write_decisions, name=f"governator store {store!r} (decisions)",
            queue_size=queue_size, batch_size=batch_size, flush_interval=flush_interval,
            max_backoff=30.0, timeout=timeout, log=log)
        # The newest decisions as the loop made them: fresh even before they are written,
        # and what ``decisions()`` answers while the database cannot.
        self._recent: deque[dict[str, Any]] = deque(maxlen=200)
        self._last_id = 0
        self._migrated = False
        self._failing = False
        self._migrate_lock = asyncio.Lock()
        self._stats = dict.fromkeys(("samples_written", "decisions_written", "write_errors",
                                     "read_errors"), 0)

    def __repr__(self) -> str:
        return f"<SqlStore {self.store!r}>"

    async def start(self) -> None:
        """Migrate (bounded in time) and start the writers. A database that does not answer
        is logged and retried by the writers; the governator runs on without it."""
        try:
            await asyncio.wait_for(self._migrate(), self._timeout)
        except Exception as exc:
            self._error("write_errors", "cannot open the database", exc)
        self._samples.start()
        self._decisions.start()

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
        self._samples.put(sample_row(at, pool, signals))

    async def add_decision(self, decision: Decision) -> int:
        # Time-ordered ids (microseconds, unique in this process, above any stored one):
        # the loop can refer to a decision before its row is written.
        did = self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        row = {"id": did, **decision.to_dict()}
        self._recent.append(row)
        self._decisions.put(row)
        return did

    async def set_outcome(self, decision_id: int, outcome: str) -> None:
        for d in reversed(self._recent):  # the queued row is this same dict
            if d["id"] == decision_id:
                d["outcome"] = outcome
                break
        self._decisions.put((decision_id, outcome))

    async def compact(self, now: float) -> None:
        self._samples.put(float(now))

    async def _write_samples(self, batch: list[dict[str, Any] | float]) -> None:
        """One transaction of samples; then, if asked in this batch, the roll-up (every
        sample queued before the request is written by then). Both are idempotent."""
        await self._migrate()
        rows = [r for r in batch if isinstance(r, dict)]
        compact_at = max((r for r in batch if isinstance(r, float)), default=None)
        if rows:
            await self._repo.write(rows)
        if compact_at is not None:
            await self._repo.compact(_minute(compact_at - self._raw_s),
                                     compact_at - self._rolled_s,
                                     hold_before=compact_at - self._rolled_s)
        self._stats["samples_written"] += len(rows)

    async def _write_decisions(self, batch: list[dict[str, Any] | tuple[int, str]]) -> None:
        await self._migrate()
        decisions = [d for d in batch if isinstance(d, dict)]
        await self._repo.write((), decisions, [o for o in batch if isinstance(o, tuple)])
        # Starts and stops are administrative actions: the audit trail has them too (its
        # ids come from the decision's, so a retried batch is not recorded twice).
        await self.store.audit.append([_audit_event(d) for d in decisions
                                       if d["action"] != "hold"])
        self._stats["decisions_written"] += len(decisions)

    async def flush(self, within: float = 5.0) -> bool:
        """Write everything queued now (shutdown, tests); False if the deadline passed."""
        deadline = time.monotonic() + within
        samples = await self._samples.flush(within)
        decisions = await self._decisions.flush(max(0.0, deadline - time.monotonic()))
        return samples and decisions

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
            result = await asyncio.wait_for(query, min(self._timeout, 3.0))
        except Exception as exc:
            query.close()  # never awaited when the migration failed
            self._error("read_errors", "cannot read", exc)
            raise StoreUnavailable(f"the governator store cannot be read: "
                                   f"{type(exc).__name__}") from exc
        self._failing = False
        return result

    def _error(self, counter: str, what: str, exc: BaseException) -> None:
        """Start-up and reads (the writers log their own): once per outage."""
        self._stats[counter] += 1
        if not self._failing:
            # Class names only: a driver's message may quote the URL or row values.
            cause = type(getattr(exc, "orig", None) or exc).__name__
            log.warning("governator store %s: %s (%s/%s); backlog %d rows, retrying",
                        self.store, what, type(exc).__name__, cause, self.backlog)
        self._failing = True

    @property
    def backlog(self) -> int:
        return self._samples.backlog + self._decisions.backlog

    def stats(self) -> dict[str, int]:
        return {"samples_written": self._stats["samples_written"],
                "decisions_written": self._stats["decisions_written"],
                "dropped": self._samples.dropped + self._decisions.dropped,
                "write_errors": (self._stats["write_errors"] + self._samples.errors
                                 + self._decisions.errors),
                "read_errors": self._stats["read_errors"], "backlog": self.backlog}

    async def close(self, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        await self._samples.close(within)
        await self._decisions.close(max(0.1, deadline - time.monotonic()))
        await self.store.close()


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
