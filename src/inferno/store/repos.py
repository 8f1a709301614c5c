"""Every query the store answers. Keys are matched by id, never by putting a key in SQL."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inferno.store import usage as rollup
from inferno.store.models import api_keys, request_log
from inferno.store.usage import UsageRow

__all__ = ["ApiKeyRow", "KeyRepo", "RequestRepo", "UsageRow"]


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
def _insert_sql(n_rows: int) -> str:
    """SQLite's request-log INSERT for ``n_rows`` rows."""
    row = f"({', '.join(['?'] * len(_LOG_COLUMNS))})"
    names = ", ".join(name for name, _ in _LOG_COLUMNS)
    return (f"INSERT INTO {request_log.name} ({names}) VALUES {', '.join([row] * n_rows)} "
            "ON CONFLICT (request_id) DO NOTHING")


@functools.lru_cache(maxsize=16)
def _stored_sql(n_rows: int) -> str:
    return (f"SELECT request_id FROM {request_log.name} "
            f"WHERE request_id IN ({', '.join(['?'] * n_rows)})")


_POSTGRES_INSERT = rollup.postgres_insert([name for name, _ in _LOG_COLUMNS])


# Stored payload characters per PostgreSQL statement, at most (one row always goes): a
# statement's arrays travel in one message, and PostgreSQL refuses a value over 1 GB.
PG_PAYLOAD_CHARS = 8 << 20


def _by_payload(rows: Sequence[dict[str, Any]]) -> list[Sequence[dict[str, Any]]]:
    """``rows`` in runs whose stored bodies hold at most ``PG_PAYLOAD_CHARS`` in all."""
    out: list[Sequence[dict[str, Any]]] = []
    start = size = 0
    for i, row in enumerate(rows):
        n = len(row.get("request_body") or "") + len(row.get("response_body") or "")
        if size + n > PG_PAYLOAD_CHARS and i > start:
            out.append(rows[start:i])
            start, size = i, 0
        size += n
    out.append(rows[start:])
    return out


class _Overlap(Exception):
    """Some rows of a batch are stored already (a retry of a batch that was written)."""


def _firsts(chunk: Sequence[dict[str, Any]], new: set[str]) -> list[dict[str, Any]]:
    """The rows whose id is in ``new``, each id once (the first row: the one inserted)."""
    left = set(new)
    out = []
    for row in chunk:
        if row["request_id"] in left:
            left.discard(row["request_id"])
            out.append(row)
    return out


class RequestRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """One transaction; rows already stored (a retried batch) are skipped, not doubled.

        Each batch also adds the rows it really inserted to the usage roll-up, in the same
        transaction (store/usage.py).

        The binding happens in the driver's C code (SQLAlchemy's per-row parameter
        processing capped the writer near 2,000 rows/s). PostgreSQL: one statement, the
        rows as one array per column (``unnest``), which also upserts the roll-up. SQLite:
        multi-row ``INSERT ... VALUES (...), (...)`` of up to 256 rows each (sizes from
        :func:`_ladder`), because ``sqlite3`` releases and re-takes the GIL around every
        statement step: with ``executemany`` that is once per row, and while a saturated
        proxy's event loop holds the GIL each re-take waits a switch interval, so the log
        fell behind (~2,000 rows/s) and its backlog grew without bound. The statements still
        run on aiosqlite's thread, so the event loop never waits for the file I/O (nor for
        the WAL checkpoints SQLite makes inside a commit: 5-7 ms).
        """
        if not rows:
            return
        for row in rows:
            if "day" not in row:  # the proxy leaves it to us: derived here, off its hot path
                row["day"] = _utc_day(int(row["ts"] // 86_400))
        if self._engine.dialect.name == "postgresql":
            async with self._engine.begin() as conn:
                for chunk in _by_payload(rows):
                    columns = tuple([row.get(name, default) for row in chunk]
                                    for name, default in _LOG_COLUMNS)
                    await conn.exec_driver_sql(_POSTGRES_INSERT, columns)
            return
        try:
            async with self._engine.begin() as conn:
                await self._insert_sqlite(conn, rows, careful=False)
        except _Overlap:  # rolled back; again, looking up which rows are stored already
            async with self._engine.begin() as conn:
                await self._insert_sqlite(conn, rows, careful=True)

    async def _insert_sqlite(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]], *,
                             careful: bool) -> None:
        """The log rows and their roll-up. A batch none of whose rows is stored yet (every
        first attempt) is tallied as given; a statement that inserts fewer rows than it
        holds raises :class:`_Overlap`, and the batch is written again ``careful``ly: each
        statement's ids looked up first, only the new rows tallied."""
        # Values are gathered one statement at a time, between awaits: this runs on the
        # proxy's event loop, and a whole 4,096-row batch at once held it for ~5 ms.
        counts: rollup.Tally = {}
        i = 0
        for size in _ladder(len(rows)):
            chunk = rows[i:i + size]
            i += size
            flat = tuple(row.get(name, default) for row in chunk
                         for name, default in _LOG_COLUMNS)
            if careful:
                ids = tuple(row["request_id"] for row in chunk)
                stored = {r[0] for r in await conn.exec_driver_sql(_stored_sql(size), ids)}
                await conn.exec_driver_sql(_insert_sql(size), flat)
                rollup.tally(_firsts(chunk, set(ids) - stored), counts)
            elif (await conn.exec_driver_sql(_insert_sql(size), flat)).rowcount == size:
                rollup.tally(chunk, counts)
            else:
                raise _Overlap
        await rollup.add(conn, counts)

    async def usage(self, *, since_day: str | None = None, until_day: str | None = None,
                    key_id: str | None = None) -> list[UsageRow]:
        """Usage per day, key and model, from the roll-up (store/usage.py)."""
        return await rollup.read(self._engine, since_day=since_day, until_day=until_day,
                                 key_id=key_id)

    async def usage_from_log(self, *, since_day: str | None = None,
                             until_day: str | None = None,
                             key_id: str | None = None) -> list[UsageRow]:
        """The same figures by scanning the request-log rows present (slow; a check)."""
        return await rollup.scan(self._engine, since_day=since_day, until_day=until_day,
                                 key_id=key_id)

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
