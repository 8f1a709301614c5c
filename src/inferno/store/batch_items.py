"""The batch work queue: one row per input line, claimed by workers under a lease.

A worker claims due items in one atomic statement (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so concurrent claimers skip each other's rows instead of waiting; on SQLite
the ``UPDATE ... RETURNING`` runs under SQLite's single writer lock). A claim stamps the
item ``running`` with the worker's id and a lease expiry; an item whose lease ran out (its
worker died) is due again. The outcome is written *with* the state change, in one
conditional ``UPDATE`` that still requires the worker's lease: a result is durable before
its item is done, and a worker that lost its lease can never record a second outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.batch import batch_items as items

OPEN = ("new", "pending", "running")
FINISHED = ("done", "failed", "cancelled", "expired")


@dataclass(frozen=True, slots=True)
class Claimed:
    batch_id: str
    line: int
    custom_id: str
    body: str
    attempts: int


class ItemRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        pg = engine.dialect.name == "postgresql"
        t = items.name
        due = ("(state = 'pending' AND next_attempt_at <= :now) OR "
               "(state = 'running' AND lease_expires < :now)")
        self._claim_sql = text(
            f"UPDATE {t} SET state = 'running', lease_owner = :owner, lease_expires = :until, "
            f"attempts = attempts + 1 WHERE (batch_id, line) IN (SELECT batch_id, line FROM {t} "
            f"WHERE {due} ORDER BY next_attempt_at, batch_id, line LIMIT :n"
            f"{' FOR UPDATE SKIP LOCKED' if pg else ''}) "
            "RETURNING batch_id, line, custom_id, body, attempts")

    async def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            async with self._engine.begin() as conn:
                await conn.execute(insert(items), list(rows))

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

    async def claim(self, owner: str, now: float, lease: float, n: int) -> list[Claimed]:
        async with self._engine.begin() as conn:
            rows = await conn.execute(self._claim_sql, {"owner": owner, "until": now + lease,
                                                        "now": now, "n": n})
            got = [Claimed(str(r[0]), int(r[1]), str(r[2]), str(r[3]), int(r[4]))
                   for r in rows.all()]
        return sorted(got, key=lambda c: (c.batch_id, c.line))  # RETURNING has no order

    async def renew(self, owner: str, keys: Sequence[tuple[str, int]], until: float) -> None:
        if not keys:
            return
        q = (update(items).where(items.c.batch_id == bindparam("b"),
                                 items.c.line == bindparam("l"), items.c.state == "running",
                                 items.c.lease_owner == owner)
             .values(lease_expires=until))
        async with self._engine.begin() as conn:
            await conn.execute(q, [{"b": b, "l": ln} for b, ln in keys])

    async def finish(self, batch_id: str, line: int, owner: str, *, state: str,
                     status_code: int | None, result: str, prompt_tokens: int = 0,
                     completion_tokens: int = 0) -> bool:
        """Record the outcome and end the item; ``False`` if the lease was lost meanwhile."""
        q = (update(items).where(items.c.batch_id == batch_id, items.c.line == line,
                                 items.c.state == "running", items.c.lease_owner == owner)
             .values(state=state, status_code=status_code, result=result, lease_owner=None,
                     lease_expires=None, prompt_tokens=prompt_tokens,
                     completion_tokens=completion_tokens))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def retry_later(self, batch_id: str, line: int, owner: str, at: float) -> bool:
        q = (update(items).where(items.c.batch_id == batch_id, items.c.line == line,
                                 items.c.state == "running", items.c.lease_owner == owner)
             .values(state="pending", next_attempt_at=at, lease_owner=None,
                     lease_expires=None))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def close_open(self, batch_id: str, state: str, running_too: bool = False) -> int:
        """End the items not yet started (``running_too``: also those in flight) as
        ``state`` (cancelled / expired); finished items keep their outcome."""
        open_states = ("new", "pending", "running") if running_too else ("new", "pending")
        async with self._engine.begin() as conn:
            r = await conn.execute(update(items).where(
                items.c.batch_id == batch_id, items.c.state.in_(open_states))
                .values(state=state, lease_owner=None, lease_expires=None))
        return int(r.rowcount)

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
