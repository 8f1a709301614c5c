"""Stored Responses API responses: one row each, always looked up with its owner.

Single reads, writes and deletes surface database failures as :class:`StoreUnavailable`
(translated here, at the store's boundary); :meth:`ResponseRepo.put_many` is the
:class:`~inferno.store.writer.BatchWriter`'s write and leaves SQLAlchemy's errors to it (it
tells outages from refused rows by them). Rows already stored are skipped, never doubled,
so a batch retried after an ambiguous failure is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.engine import StoreUnavailable
from inferno.store.models import responses


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    created_at: float = 0.0


class ResponseRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, row: StoredResponse) -> None:
        try:
            await self.put_many([row])
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"storing response failed: {type(exc).__name__}") from exc

    async def put_many(self, rows: Sequence[StoredResponse]) -> None:
        if not rows:
            return
        dialect = self._engine.dialect.name
        stmt = (pg_insert(responses) if dialect == "postgresql" else sqlite_insert(responses)
                ).on_conflict_do_nothing(index_elements=["id"])
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [
                {"id": r.id, "owner": r.owner, "created_at": r.created_at or time.time(),
                 "body": r.body, "input_items": r.input_items, "messages": r.messages}
                for r in rows])

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        c = responses.c
        query = select(responses).where(c.id == response_id, c.owner == owner)
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).mappings().first()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"reading response failed: {type(exc).__name__}") from exc
        return None if row is None else StoredResponse(**{str(k): v for k, v in row.items()})

    async def delete(self, owner: str, response_id: str) -> bool:
        c = responses.c
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    delete(responses).where(c.id == response_id, c.owner == owner))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"deleting response failed: {type(exc).__name__}") from exc
        return bool(result.rowcount)
