"""The governator's tables and every query on them.

Three tables (migration ``0002_governator``):

- ``inferno_gov_samples``: one row per pool and tick, one column per signal (a time
  series the database can filter and aggregate); signals without a column go to ``extra``.
  Keyed by ``(pool, at)``, so a batch retried after an ambiguous failure is not doubled.
- ``inferno_gov_rollups``: one row per pool and minute, count, mean and max of each signal;
  raw samples are rolled up here once they are older than the raw retention.
- ``inferno_gov_decisions``: every decision with its reason and the provider's outcome.
  Ids come from the writer (time-ordered, see ``governator/store.py``), so a decision can
  be referred to before its row is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inferno.store.models import metadata

# Signals stored as columns, with their type. Every one of them is rolled up.
SIGNALS: dict[str, type] = {
    "ready": int, "starting": int, "draining": int, "in_flight": int, "queued": int,
    "errors": int, "request_rate": float, "tokens_per_second": float,
    "queue_wait_p95_s": float, "ttft_p95_s": float, "unserved_rate": float,
}
ROLLED = tuple(SIGNALS)
_COLTYPE = {int: BigInteger, float: Float}

gov_samples = Table(
    "inferno_gov_samples", metadata,
    Column("pool", Text, primary_key=True),
    Column("at", Float, primary_key=True),
    *(Column(name, _COLTYPE[kind], nullable=True) for name, kind in SIGNALS.items()),
    Column("extra", JSON, nullable=True),
)
Index("ix_inferno_gov_samples_at", gov_samples.c.at)

gov_rollups = Table(
    "inferno_gov_rollups", metadata,
    Column("pool", Text, primary_key=True),
    Column("minute", Float, primary_key=True),
    Column("n", Integer, nullable=False),
    *(Column(f"{name}_{stat}", Float, nullable=True)
      for name in ROLLED for stat in ("mean", "max")),
)
Index("ix_inferno_gov_rollups_minute", gov_rollups.c.minute)

gov_decisions = Table(
    "inferno_gov_decisions", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("pool", Text, nullable=False),
    Column("current", Integer, nullable=False),
    Column("desired", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("node_type", Text, nullable=False),
    Column("signals", JSON, nullable=False),
    Column("outcome", Text, nullable=False),
)
Index("ix_inferno_gov_decisions_at", gov_decisions.c.at)
Index("ix_inferno_gov_decisions_pool_at", gov_decisions.c.pool, gov_decisions.c.at)

_DECISION_KEYS = tuple(c.name for c in gov_decisions.columns)


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity (PostgreSQL's JSON refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def sample_row(at: float, pool: str, signals: dict[str, Any]) -> dict[str, Any]:
    """Known signals into their columns (when of the right type), the rest into ``extra``."""
    row: dict[str, Any] = {"pool": pool, "at": float(at)}
    extra: dict[str, Any] = {}
    for key, value in signals.items():
        kind = SIGNALS.get(key)
        if key == "at":
            continue
        if kind is not None and value is None:
            row[key] = None
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            row[key] = value
        elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            row[key] = float(value) if math.isfinite(value) else None
        else:
            extra[key] = value
    for key in SIGNALS:
        row.setdefault(key, None)
    row["extra"] = _finite(extra) or None
    return row


def rollup(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Count, and mean and max of each signal (``None`` when no row had it)."""
    items = list(rows)
    out: dict[str, Any] = {"n": len(items)}
    for key in ROLLED:
        vals = [float(r[key]) for r in items if isinstance(r.get(key), int | float)]
        out[key] = {"mean": sum(vals) / len(vals), "max": max(vals)} if vals else None
    return out


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two roll-ups of one minute (a late sample): means weighted by row counts."""
    out: dict[str, Any] = {"n": old["n"] + new["n"]}
    for key in ROLLED:
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            out[key] = a or b
            continue
        w = old["n"] / max(1, out["n"])
        out[key] = {"mean": a["mean"] * w + b["mean"] * (1 - w), "max": max(a["max"], b["max"])}
    return out


def _rollup_from_row(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": r["n"]}
    for key in ROLLED:
        mean, top = r[f"{key}_mean"], r[f"{key}_max"]
        out[key] = None if mean is None else {"mean": mean, "max": top}
    return out


def _rollup_to_row(pool: str, minute: float, stats: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"pool": pool, "minute": minute, "n": stats["n"]}
    for key in ROLLED:
        s = stats.get(key)
        row[f"{key}_mean"] = None if s is None else s["mean"]
        row[f"{key}_max"] = None if s is None else s["max"]
    return row


class GovernatorRepo:
    """Samples, roll-ups and decisions. Every write is one transaction and idempotent."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _insert(self, table: Table) -> Any:
        return (pg_insert(table) if self._engine.dialect.name == "postgresql"
                else sqlite_insert(table))

    async def write(self, samples: Sequence[dict[str, Any]] = (),
                    decisions: Sequence[dict[str, Any]] = (),
                    outcomes: Sequence[tuple[int, str]] = ()) -> None:
        """Samples (rows from :func:`sample_row`), decisions, then outcome updates, in
        one transaction. Rows already stored (a retried batch) are skipped."""
        async with self._engine.begin() as conn:
            if samples:
                stmt = self._insert(gov_samples).on_conflict_do_nothing(
                    index_elements=["pool", "at"])
                await conn.execute(stmt, list(samples))
            if decisions:
                rows = [{k: (_finite(d[k]) if k == "signals" else d[k]) for k in _DECISION_KEYS}
                        for d in decisions]
                stmt = self._insert(gov_decisions).on_conflict_do_nothing(index_elements=["id"])
                await conn.execute(stmt, rows)
            for decision_id, outcome in outcomes:
                await conn.execute(update(gov_decisions).where(gov_decisions.c.id == decision_id)
                                   .values(outcome=outcome))

    async def samples(self, pool: str | None, since: float,
                      limit: int | None = None) -> list[dict[str, Any]]:
        """Raw samples at or after ``since`` (all pools when ``pool`` is None), oldest
        first; with ``limit``, the newest ``limit`` of them."""
        c = gov_samples.c
        query = select(gov_samples).where(c.at >= since)
        if pool is not None:
            query = query.where(c.pool == pool)
        if limit is not None:
            query = query.order_by(c.at.desc(), c.pool).limit(limit)
        else:
            query = query.order_by(c.at, c.pool)
        async with self._engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings().all()]
        if limit is not None:
            rows.reverse()
        out = []
        for r in rows:
            extra = r.pop("extra") or {}
            out.append({**{k: v for k, v in r.items() if v is not None}, **extra})
        return out

    async def rollups(self, pool: str, since: float) -> list[dict[str, Any]]:
        c = gov_rollups.c
        query = (select(gov_rollups).where(c.pool == pool, c.minute >= since)
                 .order_by(c.minute))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [{"minute": r["minute"], **_rollup_from_row(dict(r))} for r in rows]

    async def compact(self, raw_before: float, rollup_before: float,
                      hold_before: float | None = None) -> int:
        """Roll raw samples older than ``raw_before`` up into per-minute rows (merged into
        a minute already rolled), delete them, prune roll-ups older than
        ``rollup_before`` and, with ``hold_before``, "hold" decisions older than it.
        Returns the number of raw samples rolled up."""
        c = gov_samples.c
        async with self._engine.begin() as conn:
            old = [dict(r) for r in (await conn.execute(
                select(gov_samples).where(c.at < raw_before))).mappings().all()]
            groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
            for r in old:
                groups.setdefault((r["pool"], r["at"] // 60 * 60), []).append(r)
            if groups:
                await self._store_rollups(conn, {k: rollup(v) for k, v in groups.items()})
                await conn.execute(delete(gov_samples).where(c.at < raw_before))
            await conn.execute(delete(gov_rollups).where(gov_rollups.c.minute < rollup_before))
            if hold_before is not None:
                d = gov_decisions.c
                await conn.execute(delete(gov_decisions).where(
                    and_(d.action == "hold", d.at < hold_before)))
        return len(old)

    async def _store_rollups(self, conn: AsyncConnection,
                             new: dict[tuple[str, float], dict[str, Any]]) -> None:
        r = gov_rollups.c
        keys = list(new)
        existing: dict[tuple[str, float], dict[str, Any]] = {}
        for i in range(0, len(keys), 200):  # bounded IN lists
            chunk = keys[i:i + 200]
            cond = (tuple_(r.pool, r.minute).in_(chunk) if conn.dialect.name == "postgresql"
                    else or_(*(and_(r.pool == p, r.minute == m) for p, m in chunk)))
            for row in (await conn.execute(select(gov_rollups).where(cond))).mappings().all():
                existing[(row["pool"], row["minute"])] = _rollup_from_row(dict(row))
        merged = {k: _merge(existing[k], v) if k in existing else v for k, v in new.items()}
        if existing:
            for p, m in existing:
                await conn.execute(delete(gov_rollups).where(r.pool == p, r.minute == m))
        await conn.execute(gov_rollups.insert(),
                           [_rollup_to_row(p, m, s) for (p, m), s in merged.items()])

    async def decisions(self, limit: int = 20, pool: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` decisions, newest first."""
        query = select(gov_decisions).order_by(gov_decisions.c.id.desc()).limit(limit)
        if pool is not None:
            query = query.where(gov_decisions.c.pool == pool)
        async with self._engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def max_decision_id(self) -> int:
        async with self._engine.connect() as conn:
            top = await conn.scalar(select(gov_decisions.c.id)
                                    .order_by(gov_decisions.c.id.desc()).limit(1))
        return int(top or 0)
