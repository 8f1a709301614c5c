"""Usage per day, key and model, read from the roll-up instead of the request log.

``inferno_usage_rollup`` holds one row per UTC hour, key and model (requests, errors,
cache hits, tokens, cost). :meth:`RequestRepo.insert_many` adds to it in the transaction
that writes the log rows, and only the rows that transaction really inserted: a retried
batch's rows already stored are skipped by the log (``ON CONFLICT DO NOTHING``) and not
counted twice. The additions are upserts (``ON CONFLICT DO UPDATE SET n = n + excluded.n``),
one per hour, key and model of the batch, in key order, so writers sharing a PostgreSQL
database lock roll-up rows in one order and never deadlock each other.

- PostgreSQL: one statement per batch: the log rows go in as column arrays (``unnest``);
  the insert returns what it inserted, which is grouped and upserted in the same statement.
- SQLite: the rows are tallied here and upserted after the log's multi-row inserts. A
  statement that inserts fewer rows than it holds (a retry of a batch that was written)
  rolls the batch back, and it is written again with each statement's ids looked up first.

A page of usage then reads a few rows per hour instead of every request (1,000,000 log
rows: bench/ui.py). Migration 0007 rolls up the rows logged before it.

Retention: the roll-up outlives the log. Deleting request-log rows (to save space, or for
privacy) leaves the usage totals as they were: usage is what was served and billed, not
what is still in the log. :func:`scan` gives the same figures from the log rows present.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, case, func, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inferno.core.errors import InvalidRequest
from inferno.store.models import request_log, usage_rollup

_FIGURES = ("requests", "errors", "cache_hits", "prompt_tokens", "completion_tokens", "cost")
# (hour, key_id, model) -> [requests, errors, cache_hits, prompt, completion, cost]
Tally = dict[tuple[int, str, str], list[Any]]


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


def hour_of(ts: float) -> int:
    """``floor(ts) // 3600`` in integers, as the SQL does: the day is ``hour // 24``."""
    return math.floor(ts) // 3600


def tally(rows: Iterable[dict[str, Any]], into: Tally) -> None:
    for row in rows:
        k = (hour_of(row["ts"]), row.get("key_id") or "", row.get("model") or "")
        t = into.get(k)
        if t is None:
            t = into[k] = [0, 0, 0, 0, 0, 0.0]
        t[0] += 1
        if row["status"] >= 400:
            t[1] += 1
        if row.get("cache_hit"):
            t[2] += 1
        t[3] += row.get("prompt_tokens", 0)
        t[4] += row.get("completion_tokens", 0)
        t[5] += row.get("cost", 0.0)


_T = usage_rollup.name
_ADD = ", ".join(f"{n} = {_T}.{n} + excluded.{n}" for n in _FIGURES)
_UPSERT = (f"INSERT INTO {_T} (hour, key_id, model, {', '.join(_FIGURES)}) "
           f"VALUES ({', '.join(['?'] * (3 + len(_FIGURES)))}) "
           f"ON CONFLICT (hour, key_id, model) DO UPDATE SET {_ADD}")


async def add(conn: AsyncConnection, counts: Tally) -> None:
    """Upsert-add a tally (SQLite), in key order."""
    if counts:
        await conn.exec_driver_sql(_UPSERT, [(*k, *v) for k, v in sorted(counts.items())])


def postgres_insert(columns: Sequence[str]) -> str:
    """The log rows as one array per column (``$1`` .. ``$n``, in ``columns`` order),
    inserted and rolled up in one statement."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    casts = ", ".join(f"${i}::{request_log.c[name].type.compile(dialect=dialect)}[]"
                      for i, name in enumerate(columns, 1))
    hour = "floor(ts)::bigint / 3600"
    return (
        f"WITH ins AS (INSERT INTO {request_log.name} ({', '.join(columns)}) "
        f"SELECT * FROM unnest({casts}) ON CONFLICT (request_id) DO NOTHING "
        "RETURNING ts, key_id, model, status, prompt_tokens, completion_tokens, cost, cache_hit) "
        f"INSERT INTO {_T} (hour, key_id, model, {', '.join(_FIGURES)}) "
        f"SELECT {hour}, COALESCE(key_id, ''), COALESCE(model, ''), COUNT(*), "
        "COUNT(*) FILTER (WHERE status >= 400), COUNT(*) FILTER (WHERE cache_hit), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) FROM ins "
        f"GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 ON CONFLICT (hour, key_id, model) DO UPDATE SET {_ADD}")


def _day_number(day: str, name: str) -> int:
    try:
        return calendar.timegm(time.strptime(day, "%Y-%m-%d")) // 86_400
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date YYYY-MM-DD.", param=name) from None


def _day(n: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(n * 86_400))


async def read(engine: AsyncEngine, *, since_day: str | None = None,
               until_day: str | None = None, key_id: str | None = None) -> list[UsageRow]:
    """Usage per day (UTC), key and model from the roll-up, oldest day first."""
    r = usage_rollup.c
    day = literal_column("hour / 24", Integer)  # integer division on both engines
    query = (select(day, r.key_id, r.model, *(func.sum(r[n]) for n in _FIGURES))
             .group_by(day, r.key_id, r.model).order_by(day, r.key_id, r.model))
    if since_day:
        query = query.where(r.hour >= 24 * _day_number(since_day, "since"))
    if until_day:
        query = query.where(r.hour < 24 * (_day_number(until_day, "until") + 1))
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [UsageRow(day=_day(int(x[0])), key_id=x[1] or None, model=x[2] or None,
                     requests=int(x[3]), errors=int(x[4]), cache_hits=int(x[5]),
                     prompt_tokens=int(x[6]), completion_tokens=int(x[7]), cost=float(x[8]))
            for x in rows]


async def scan(engine: AsyncEngine, *, since_day: str | None = None,
               until_day: str | None = None, key_id: str | None = None) -> list[UsageRow]:
    """The same figures from the request-log rows still present (a check; it reads them all)."""
    c = request_log.c
    query = (select(c.day, c.key_id, c.model, func.count(),
                    func.coalesce(func.sum(case((c.status >= 400, 1), else_=0)), 0),
                    func.coalesce(func.sum(case((c.cache_hit, 1), else_=0)), 0),
                    func.coalesce(func.sum(c.prompt_tokens), 0),
                    func.coalesce(func.sum(c.completion_tokens), 0),
                    func.coalesce(func.sum(c.cost), 0.0))
             .group_by(c.day, c.key_id, c.model).order_by(c.day, c.key_id, c.model))
    if since_day:
        query = query.where(c.day >= since_day)
    if until_day:
        query = query.where(c.day <= until_day)
    if key_id is not None:
        query = query.where(c.key_id == key_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [UsageRow(day=x[0], key_id=x[1], model=x[2], requests=int(x[3]), errors=int(x[4]),
                     cache_hits=int(x[5]), prompt_tokens=int(x[6]),
                     completion_tokens=int(x[7]), cost=float(x[8])) for x in rows]
