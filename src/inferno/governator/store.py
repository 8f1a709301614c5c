"""Where samples and decisions are kept: a small protocol, in memory or in SQLite.

The governator only talks to :class:`GovernatorStore`; ``open_store(url)`` picks the
implementation, so moving to the shared ``inferno.store`` (SQLAlchemy, PostgreSQL) is one
wiring change. Raw samples older than ``raw_retention_s`` are rolled up into one row
per pool and minute (mean and max of each signal), and roll-ups older than
``rollup_retention_s`` are pruned.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import orjson

from inferno.core.errors import ConfigError
from inferno.governator.policy import Decision

_ROLLED = ("in_flight", "queued", "ready", "starting", "request_rate", "tokens_per_second",
           "queue_wait_p95_s", "ttft_p95_s")


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
    async def close(self) -> None: ...


def _rollup(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for key in _ROLLED:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        out[key] = {"mean": sum(vals) / len(vals), "max": max(vals)} if vals else None
    return out


class MemoryStore:
    def __init__(self, raw_retention_s: float = 3600.0, rollup_retention_s: float = 86400.0,
                 max_decisions: int = 10_000) -> None:
        self._raw: list[tuple[float, str, dict[str, Any]]] = []
        self._rolled: list[tuple[float, str, dict[str, Any]]] = []
        self._decisions: deque[dict[str, Any]] = deque(maxlen=max_decisions)
        self._next_id = 1
        self._raw_s = raw_retention_s
        self._rolled_s = rollup_retention_s

    async def add_sample(self, at: float, pool: str, signals: dict[str, Any]) -> None:
        self._raw.append((at, pool, dict(signals)))

    async def samples(self, pool: str, since: float) -> list[dict[str, Any]]:
        return [{"at": t, **s} for t, p, s in self._raw if p == pool and t >= since]

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]:
        return [{"minute": t, **s} for t, p, s in self._rolled if p == pool and t >= since]

    async def compact(self, now: float) -> None:
        cut = now - self._raw_s
        old = [r for r in self._raw if r[0] < cut]
        self._raw = [r for r in self._raw if r[0] >= cut]
        groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
        for t, pool, s in old:
            groups.setdefault((t // 60 * 60, pool), []).append(s)
        self._rolled.extend((m, p, _rollup(rows)) for (m, p), rows in sorted(groups.items()))
        self._rolled = [r for r in self._rolled if r[0] >= now - self._rolled_s]

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

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS governator_samples (
    at REAL NOT NULL, pool TEXT NOT NULL, signals TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS governator_samples_pool_at ON governator_samples (pool, at);
CREATE TABLE IF NOT EXISTS governator_rollups (
    minute REAL NOT NULL, pool TEXT NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY (pool, minute));
CREATE TABLE IF NOT EXISTS governator_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, pool TEXT NOT NULL,
    current INTEGER NOT NULL, desired INTEGER NOT NULL, action TEXT NOT NULL,
    reason TEXT NOT NULL, node_type TEXT NOT NULL, signals TEXT NOT NULL,
    outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS governator_decisions_at ON governator_decisions (at);
"""


class SqliteStore:
    """Standard-library sqlite3 on one worker thread (SQLite objects stay on one thread)."""

    def __init__(self, path: Path, raw_retention_s: float = 3600.0,
                 rollup_retention_s: float = 86400.0) -> None:
        self._raw_s = raw_retention_s
        self._rolled_s = rollup_retention_s
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the governator store {path}: {exc}") from exc

    async def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def work() -> list[tuple[Any, ...]]:
            with self._lock, self._db:
                cur = self._db.execute(sql, args)
                rows = cur.fetchall()
                if sql.lstrip().upper().startswith("INSERT"):
                    return [(cur.lastrowid,)]
                return rows
        return await asyncio.to_thread(work)

    async def add_sample(self, at: float, pool: str, signals: dict[str, Any]) -> None:
        await self._run("INSERT INTO governator_samples VALUES (?, ?, ?)",
                        (at, pool, orjson.dumps(signals).decode()))

    async def samples(self, pool: str, since: float) -> list[dict[str, Any]]:
        rows = await self._run("SELECT at, signals FROM governator_samples WHERE pool = ? "
                               "AND at >= ? ORDER BY at", (pool, since))
        return [{"at": at, **orjson.loads(s)} for at, s in rows]

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]:
        rows = await self._run("SELECT minute, stats FROM governator_rollups WHERE pool = ? "
                               "AND minute >= ? ORDER BY minute", (pool, since))
        return [{"minute": m, **orjson.loads(s)} for m, s in rows]

    async def compact(self, now: float) -> None:
        cut = now - self._raw_s
        rows = await self._run("SELECT at, pool, signals FROM governator_samples WHERE at < ?",
                               (cut,))
        groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
        for at, pool, s in rows:
            groups.setdefault((at // 60 * 60, pool), []).append(orjson.loads(s))
        for (minute, pool), items in groups.items():
            await self._run("INSERT OR REPLACE INTO governator_rollups VALUES (?, ?, ?)",
                            (minute, pool, orjson.dumps(_rollup(items)).decode()))
        await self._run("DELETE FROM governator_samples WHERE at < ?", (cut,))
        await self._run("DELETE FROM governator_rollups WHERE minute < ?",
                        (now - self._rolled_s,))

    async def add_decision(self, decision: Decision) -> int:
        d = decision
        rows = await self._run(
            "INSERT INTO governator_decisions (at, pool, current, desired, action, reason, "
            "node_type, signals, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.at, d.pool, d.current, d.desired, d.action, d.reason, d.node_type,
             orjson.dumps(d.signals).decode(), d.outcome))
        return int(rows[0][0])

    async def set_outcome(self, decision_id: int, outcome: str) -> None:
        await self._run("UPDATE governator_decisions SET outcome = ? WHERE id = ?",
                        (outcome, decision_id))

    async def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self._run(
            "SELECT id, at, pool, current, desired, action, reason, node_type, signals, "
            "outcome FROM governator_decisions ORDER BY id DESC LIMIT ?", (limit,))
        keys = ("id", "at", "pool", "current", "desired", "action", "reason", "node_type",
                "signals", "outcome")
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        for d in out:
            d["signals"] = orjson.loads(d["signals"])
        return out

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)


def open_store(url: str, raw_retention_s: float = 3600.0,
               rollup_retention_s: float = 86400.0) -> GovernatorStore:
    if url == "memory":
        return MemoryStore(raw_retention_s, rollup_retention_s)
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite:///")), raw_retention_s,
                           rollup_retention_s)
    raise ConfigError(f"invalid setting 'store_url': {url.split('://')[0]}:// is not supported "
                      "yet (use 'memory' or 'sqlite:///path.db')")
