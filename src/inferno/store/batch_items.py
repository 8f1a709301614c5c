"""The batch work queue: one row per input line, claimed by workers under a lease.

A worker claims due items in one atomic statement (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent claimers skip each other's rows instead of waiting; on SQLite
the ``UPDATE ... RETURNING`` runs under SQLite's single writer lock). A claim stamps the
item ``running`` with the worker's id and a lease expiry; an item whose lease ran out (its
worker died) is due again. The outcome is written *with* the state change, in one
conditional ``UPDATE`` that still requires the worker's lease: a result is durable before
its item is done, and a worker that lost its lease can never record a second outcome.
Outcomes are written many to a transaction (:meth:`ItemRepo.record`, fed by the store's
background writer), and on SQLite this process's writes to the queue take turns on one
lock: SQLite has one writer at a time, and a writer that finds the file locked sleeps in
its busy handler (1, 2, 5, 10... ms), which capped a 16-worker runner at ~30 items/s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.batch import batch_items as items

OPEN = ("new", "pending", "running")
FINISHED = ("done", "failed", "cancelled", "expired")


@dataclass(frozen=True, slots=True)
class Claimed:
    batch_id: str
    line: int
    custom_id: str
    offset: int  # the line in the batch's input file
    length: int
    attempts: int


class ItemRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        pg = engine.dialect.name == "postgresql"
        self._write_lock = None if pg else asyncio.Lock()
        t = items.name
        due = ("(state = 'pending' AND next_attempt_at <= :now) OR "
               "(state = 'running' AND lease_expires < :now)")
        self._claim_sql = text(
            f"UPDATE {t} SET state = 'running', lease_owner = :owner, lease_expires = :until, "
            f"attempts = attempts + 1 WHERE (batch_id, line) IN (SELECT batch_id, line FROM {t} "
            f"WHERE {due} ORDER BY next_attempt_at, batch_id, line LIMIT :n"
            f"{' FOR UPDATE SKIP LOCKED' if pg else ''}) "
            "RETURNING batch_id, line, custom_id, \"offset\", length, attempts")

    async def insert_many(self, rows: Sequence[tuple[str, int, str, int, int]]) -> None:
        """New items (state ``new``): (batch_id, line, custom_id, offset, length). Bound in
        the driver (SQLAlchemy's per-row parameter handling cost more than the insert)."""
        if not rows:
            return
        style = str(self._engine.dialect.paramstyle)
        marks = ", ".join(f"${i}" if style == "numeric_dollar" else
                          "%s" if style == "format" else "?" for i in range(1, 6))
        sql = (f"INSERT INTO {items.name} (batch_id, line, custom_id, \"offset\", length, "
               "state, attempts, "
               "next_attempt_at, prompt_tokens, completion_tokens) "
               f"VALUES ({marks}, 'new', 0, 0, 0, 0)")
        async with self._turn(), self._engine.begin() as conn:
            await conn.exec_driver_sql(sql, list(rows))

    async def activate(self, batch_id: str) -> int:
        """A validated batch's items become claimable."""
        async with self._engine.begin() as conn:
            r = await conn.execute(update(items).where(
                items.c.batch_id == batch_id, items.c.state == "new").values(state="pending"))
        return int(r.rowcount)

    async def discard(self, batch_id: str) -> None:
        """Drop a batch's items (its validation failed, or a retried validation restarts)."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(items).where(items.c.batch_id == batch_id))

    def _turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._write_lock if self._write_lock is not None else contextlib.nullcontext()

    async def claim(self, owner: str, now: float, lease: float, n: int) -> list[Claimed]:
        async with self._turn(), self._engine.begin() as conn:
            rows = await conn.execute(self._claim_sql, {"owner": owner, "until": now + lease,
                                                        "now": now, "n": n})
            got = [Claimed(str(r[0]), int(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))
                   for r in rows.all()]
        return sorted(got, key=lambda c: (c.batch_id, c.line))  # RETURNING has no order

    async def renew(self, owner: str, keys: Sequence[tuple[str, int]], until: float) -> None:
        if not keys:
            return
        q = (update(items).where(items.c.batch_id == bindparam("b"),
                                 items.c.line == bindparam("l"), items.c.state == "running",
                                 items.c.lease_owner == owner)
             .values(lease_expires=until))
        async with self._turn(), self._engine.begin() as conn:
            await conn.execute(q, [{"b": b, "l": ln} for b, ln in keys])

    async def record(self, outcomes: Sequence[dict[str, Any]]) -> int:
        """Record many outcomes in one transaction; each needs its worker's lease still
        (rows a stale worker sends, or sent twice, change nothing). An outcome is
        ``batch_id, line, owner`` plus either ``state`` (done / failed), ``status_code``,
        ``result`` and token counts, or ``retry_at`` (back to pending until then)."""
        if not outcomes:
            return 0
        c = items.c
        where = (c.batch_id == bindparam("b"), c.line == bindparam("l"),
                 c.state == "running", c.lease_owner == bindparam("o"))
        ended = [{"b": o["batch_id"], "l": o["line"], "o": o["owner"], "s": o["state"],
                  "sc": o["status_code"], "r": o["result"], "pt": o.get("prompt_tokens", 0),
                  "ct": o.get("completion_tokens", 0)} for o in outcomes if "state" in o]
        later = [{"b": o["batch_id"], "l": o["line"], "o": o["owner"], "at": o["retry_at"]}
                 for o in outcomes if "retry_at" in o]
        n = 0
        async with self._turn(), self._engine.begin() as conn:
            if ended:
                n += (await conn.execute(update(items).where(*where).values(
                    state=bindparam("s"), status_code=bindparam("sc"), result=bindparam("r"),
                    prompt_tokens=bindparam("pt"), completion_tokens=bindparam("ct"),
                    lease_owner=None, lease_expires=None), ended)).rowcount
            if later:
                n += (await conn.execute(update(items).where(*where).values(
                    state="pending", next_attempt_at=bindparam("at"), lease_owner=None,
                    lease_expires=None), later)).rowcount
        return n

    async def close_open(self, batch_id: str, state: str, running_too: bool = False) -> int:
        """End the items not yet started (``running_too``: also those in flight) as
        ``state`` (cancelled / expired); finished items keep their outcome."""
        open_states = ("new", "pending", "running") if running_too else ("new", "pending")
        async with self._engine.begin() as conn:
            r = await conn.execute(update(items).where(
                items.c.batch_id == batch_id, items.c.state.in_(open_states))
                .values(state=state, lease_owner=None, lease_expires=None))
        return int(r.rowcount)

    async def open_states(self, batch_id: str) -> set[str]:
        """Which open states (new, pending, running) the batch still has: one indexed
        probe each, whatever the batch's size."""
        found = set()
        async with self._engine.connect() as conn:
            for state in OPEN:
                q = select(items.c.line).where(items.c.batch_id == batch_id,
                                               items.c.state == state).limit(1)
                if (await conn.execute(q)).first() is not None:
                    found.add(state)
        return found

    async def counts(self, batch_id: str) -> dict[str, int]:
        q = (select(items.c.state, func.count()).where(items.c.batch_id == batch_id)
             .group_by(items.c.state))
        async with self._engine.connect() as conn:
            return {str(s): int(n) for s, n in (await conn.execute(q)).all()}

    async def counts_by_batch(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
        if not batch_ids:
            return out
        q = (select(items.c.batch_id, items.c.state, func.count())
             .where(items.c.batch_id.in_(list(batch_ids)))
             .group_by(items.c.batch_id, items.c.state))
        async with self._engine.connect() as conn:
            for b, s, n in (await conn.execute(q)).all():
                out[str(b)][str(s)] = int(n)
        return out

    async def token_totals(self, batch_id: str) -> tuple[int, int]:
        q = select(func.coalesce(func.sum(items.c.prompt_tokens), 0),
                   func.coalesce(func.sum(items.c.completion_tokens), 0)).where(
            items.c.batch_id == batch_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(q)).one()
        return int(row[0]), int(row[1])

    async def outcomes(self, batch_id: str, page: int = 1000
                       ) -> AsyncIterator[tuple[int, str, str, str | None]]:
        """(line, custom_id, state, result) in line order, a page at a time."""
        last = -1
        while True:
            q = (select(items.c.line, items.c.custom_id, items.c.state, items.c.result)
                 .where(items.c.batch_id == batch_id, items.c.line > last)
                 .order_by(items.c.line).limit(page))
            async with self._engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            for r in rows:
                yield int(r[0]), str(r[1]), str(r[2]), r[3]
            if len(rows) < page:
                return
            last = int(rows[-1][0])
