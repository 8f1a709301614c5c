"""Every query the store answers. Keys are matched by id, never by putting a key in SQL."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.models import api_keys, request_log


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    id: str
    name: str
    key_hash: str
    scope: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    key_id: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    errors: int
    cache_hits: int


class KeyRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, row: ApiKeyRow) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(api_keys).values(
                id=row.id, name=row.name, key_hash=row.key_hash, scope=row.scope,
                models=row.models, rpm=row.rpm, tpm=row.tpm, created_at=row.created_at,
                revoked_at=row.revoked_at))

    async def list(self, *, include_revoked: bool = True) -> list[ApiKeyRow]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [ApiKeyRow(**dict(r)) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time()))
        return bool(result.rowcount)

    async def count_active(self) -> int:
        async with self._engine.connect() as conn:
            n = await conn.scalar(select(func.count()).select_from(api_keys)
                                  .where(api_keys.c.revoked_at.is_(None)))
        return int(n or 0)


# (column, value when a row leaves it out), in table order.
_LOG_COLUMNS: tuple[tuple[str, Any], ...] = tuple(
    (c.name, getattr(c.default, "arg", None)) for c in request_log.columns)


# Rows per SQLite statement: at most what its bound-variable limit allows (32,766 since
# SQLite 3.32, 999 before), and never more than 256. Every distinct statement text stays
# prepared in the connection's statement cache, with one bound value per placeholder:
# statements of any size up to ~1,700 rows took ~2.5 MB each (measured at ~1,500 rows) and
# grew the proxy by ~13 MB/s under load. Sizes are therefore taken from a fixed ladder
# (256, 128, ..., 1): at most nine statements ever, ~1 MB in all (measured).
_SQLITE_ROWS = 1 << min(8, ((32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999)
                            // len(_LOG_COLUMNS)).bit_length() - 1)


def _ladder(n: int, top: int = _SQLITE_ROWS) -> list[int]:
    """``n`` rows as statement sizes from the ladder: whole ``top``s, then powers of two."""
    sizes = [top] * (n // top)
    rest = n % top
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


@functools.lru_cache(maxsize=4)
def _utc_day(days_since_epoch: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days_since_epoch * 86_400))


@functools.lru_cache(maxsize=32)
def _insert_sql(paramstyle: str, n_rows: int = 1) -> str:
    """The request-log INSERT for ``n_rows`` rows (numbered placeholders: one row only)."""
    n = len(_LOG_COLUMNS)
    marks = [f"${i}" for i in range(1, n + 1)] if paramstyle == "numeric_dollar" else (
        ["%s"] * n if paramstyle == "format" else ["?"] * n)
    row = f"({', '.join(marks)})"
    names = ", ".join(name for name, _ in _LOG_COLUMNS)
    return (f"INSERT INTO {request_log.name} ({names}) VALUES {', '.join([row] * n_rows)} "
            "ON CONFLICT (request_id) DO NOTHING")


class RequestRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """One transaction; rows already stored (a retried batch) are skipped, not doubled.

        The binding happens in the driver's C code (SQLAlchemy's per-row parameter
        processing capped the writer near 2,000 rows/s). PostgreSQL: one ``executemany``
        (asyncpg pipelines it). SQLite: multi-row ``INSERT ... VALUES (...), (...)`` of up
        to 256 rows each (sizes from :func:`_ladder`), because ``sqlite3`` releases and
        re-takes the GIL around every statement step: with ``executemany`` that is once per
        row, and while a saturated proxy's event loop holds the GIL each re-take waits a
        switch interval, so the log fell behind (~2,000 rows/s) and its backlog grew without
        bound. The statements still run on aiosqlite's thread, so the event loop never waits
        for the file I/O (nor for the WAL checkpoints SQLite makes inside a commit: 5-7 ms).
        """
        if not rows:
            return
        for row in rows:
            if "day" not in row:  # the proxy leaves it to us: derived here, off its hot path
                row["day"] = _utc_day(int(row["ts"] // 86_400))
        paramstyle = str(self._engine.dialect.paramstyle)
        async with self._engine.begin() as conn:
            if paramstyle != "qmark":
                params = [tuple(row.get(name, default) for name, default in _LOG_COLUMNS)
                          for row in rows]
                await conn.exec_driver_sql(_insert_sql(paramstyle), params)
                return
            # Values are gathered one statement at a time, between awaits: this runs on the
            # proxy's event loop, and a whole 4,096-row batch at once held it for ~5 ms.
            i = 0
            for size in _ladder(len(rows)):
                flat = tuple(row.get(name, default) for row in rows[i:i + size]
                             for name, default in _LOG_COLUMNS)
                await conn.exec_driver_sql(_insert_sql(paramstyle, size), flat)
                i += size

    async def usage(self, *, since_day: str | None = None, until_day: str | None = None,
                    key_id: str | None = None) -> list[UsageRow]:
        c = request_log.c
        query = (select(c.day, c.key_id, c.model, func.count().label("requests"),
                        func.coalesce(func.sum(c.prompt_tokens), 0),
                        func.coalesce(func.sum(c.completion_tokens), 0),
                        func.coalesce(func.sum(c.cost), 0.0),
                        func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0),
                        func.coalesce(func.sum(case((c.cache_hit, 1), else_=0)), 0))
                 .group_by(c.day, c.key_id, c.model).order_by(c.day, c.key_id, c.model))
        if since_day:
            query = query.where(c.day >= since_day)
        if until_day:
            query = query.where(c.day <= until_day)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [UsageRow(day=r[0], key_id=r[1], model=r[2], requests=int(r[3]),
                         prompt_tokens=int(r[4]), completion_tokens=int(r[5]),
                         cost=float(r[6]), errors=int(r[7]), cache_hits=int(r[8]))
                for r in rows]

    async def recent(self, *, key_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(request_log).order_by(request_log.c.ts.desc()).limit(limit)
        if key_id is not None:
            query = query.where(request_log.c.key_id == key_id)
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            # Plain str keys: SQLAlchemy names columns with ``quoted_name`` (a str subclass)
            # and orjson refuses any dict key that is not exactly str.
            names = [str(c.name) for c in query.selected_columns]
            return [dict(zip(names, r, strict=True)) for r in result.all()]

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(request_log)) or 0)
