"""Stored Responses API responses: one row each, always looked up with its owner.

Database failures surface as :class:`StoreUnavailable` (translated here, at the store's
boundary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
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
            async with self._engine.begin() as conn:
                await conn.execute(insert(responses).values(
                    id=row.id, owner=row.owner, created_at=row.created_at or time.time(),
                    body=row.body, input_items=row.input_items, messages=row.messages))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"storing response failed: {type(exc).__name__}") from exc

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
