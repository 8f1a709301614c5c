"""The Batch and Files API's tables (migration ``0006_batch``) and their plain queries.

- ``inferno_files``: metadata of uploaded and generated files; content lives on disk,
  content-addressed by SHA-256 (``inferno.batch.files``), so identical uploads share bytes.
- ``inferno_batches``: one row per batch: OpenAI's status and timestamps, counts and usage
  totals (filled at finalisation), a lease for the supervisor step working on it
  (validation, finalisation), and the ``Idempotency-Key`` of its create.
- ``inferno_batch_items``: one row per input line: the work queue (``batch_items.py``). A
  row points at its line in the input file (offset, length) instead of copying it: a
  200 MB input would otherwise be written into the database twice over (WAL, table).
- ``inferno_batch_schedules``: cron schedules that create batches from a template.

Rows are plain dicts of column -> value; the batch component shapes them for clients.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.models import metadata

files = Table(
    "inferno_files", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("filename", Text, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
)
Index("ix_inferno_files_owner_created", files.c.owner, files.c.created_at)
Index("ix_inferno_files_sha256", files.c.sha256)

batches = Table(
    "inferno_batches", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", JSON, nullable=True),
    Column("errors", JSON, nullable=True),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    *(Column(f"{s}_at", Float, nullable=True) for s in (
        "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
        "cancelled")),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("idempotency", String(300), nullable=True, unique=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
)
Index("ix_inferno_batches_owner_created", batches.c.owner, batches.c.created_at)
Index("ix_inferno_batches_status", batches.c.status)

batch_items = Table(
    "inferno_batch_items", metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", Text, nullable=False),
    # Where the line lies in the batch's input file (the body is read from there).
    Column("offset", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    # new (being validated) -> pending <-> running -> done | failed | cancelled | expired
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("result", Text, nullable=True),  # the output or error file's line
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
)
Index("ix_inferno_batch_items_claim", batch_items.c.state, batch_items.c.next_attempt_at)
Index("ix_inferno_batch_items_batch_state", batch_items.c.batch_id, batch_items.c.state)

schedules = Table(
    "inferno_batch_schedules", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("cron", String(100), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("metadata", JSON, nullable=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("next_run_at", Float, nullable=False),
    Column("last_run_at", Float, nullable=True),
    Column("last_batch_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
)

Row = dict[str, Any]


def _rows(result: Any) -> list[Row]:
    return [{str(k): v for k, v in r.items()} for r in result.mappings().all()]


class FileRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, row: Row) -> bool:
        """Insert a file row; ``False`` when its id exists."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(files).values(**row))
        except IntegrityError:
            return False
        return True

    async def put(self, file_id: str, row: Row) -> None:
        """Insert or replace a generated file's row (a finalisation repeated after a crash
        names the content it wrote, whatever an earlier try wrote)."""
        async with self._engine.begin() as conn:
            if not (await conn.execute(update(files).where(files.c.id == file_id)
                                       .values(**row))).rowcount:
                await conn.execute(insert(files).values(id=file_id, **row))

    async def get(self, file_id: str) -> Row | None:
        async with self._engine.connect() as conn:
            rows = _rows(await conn.execute(select(files).where(files.c.id == file_id)))
        return rows[0] if rows else None

    async def find(self, *, owner: str | None, all_owners: bool, purpose: str | None,
                   after: Row | None, limit: int, newest_first: bool) -> list[Row]:
        q = select(files)
        if not all_owners:
            q = q.where(files.c.owner == owner if owner is not None else files.c.owner.is_(None))
        if purpose is not None:
            q = q.where(files.c.purpose == purpose)
        key = (files.c.created_at, files.c.id)
        if after is not None:
            at, fid = after["created_at"], after["id"]
            q = q.where(or_(key[0] < at, (key[0] == at) & (key[1] < fid)) if newest_first
                        else or_(key[0] > at, (key[0] == at) & (key[1] > fid)))
        order = [k.desc() for k in key] if newest_first else list(key)
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(q.order_by(*order).limit(limit)))

    async def delete(self, file_id: str) -> str | None:
        """Delete the row; the content's digest when no other file row uses it any more."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(files.c.sha256).where(files.c.id == file_id))).first()
            if row is None:
                return None
            await conn.execute(delete(files).where(files.c.id == file_id))
            others = (await conn.execute(select(files.c.id).where(files.c.sha256 == row[0])
                                         .limit(1))).first()
        return None if others is not None else str(row[0])

    async def expired(self, now: float, limit: int = 100) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(files.c.id).where(
                files.c.expires_at.is_not(None), files.c.expires_at < now).limit(limit))
            return [str(r[0]) for r in rows]


class BatchRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, row: Row) -> Row:
        """Insert; with an idempotency key already used, the existing batch instead."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(batches).values(**row))
        except IntegrityError:
            if row.get("idempotency") is None:
                raise
            async with self._engine.connect() as conn:
                found = _rows(await conn.execute(
                    select(batches).where(batches.c.idempotency == row["idempotency"])))
            if not found:
                raise
            return found[0]
        return row

    async def get(self, batch_id: str) -> Row | None:
        async with self._engine.connect() as conn:
            rows = _rows(await conn.execute(select(batches).where(batches.c.id == batch_id)))
        return rows[0] if rows else None

    async def find(self, *, owner: str | None, all_owners: bool, after: Row | None,
                   limit: int, status: str | None = None) -> list[Row]:
        """Newest first, a page after ``after``; ``status``: only batches in that status."""
        q = select(batches)
        if not all_owners:
            q = q.where(batches.c.owner == owner if owner is not None
                        else batches.c.owner.is_(None))
        if status is not None:
            q = q.where(batches.c.status == status)
        if after is not None:
            at, bid = after["created_at"], after["id"]
            q = q.where(or_(batches.c.created_at < at,
                            (batches.c.created_at == at) & (batches.c.id < bid)))
        q = q.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(q))

    async def with_status(self, *statuses: str) -> list[Row]:
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(
                select(batches).where(batches.c.status.in_(statuses))))

    async def update(self, batch_id: str, *, when: tuple[str, ...] | None = None,
                     **values: Any) -> bool:
        """Set ``values``; with ``when``, only while the status is one of those (the status
        machine's transitions are compare-and-set, safe between replicas)."""
        q = update(batches).where(batches.c.id == batch_id)
        if when is not None:
            q = q.where(batches.c.status.in_(when))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(q.values(**values))).rowcount)

    async def lease(self, batch_id: str, owner: str, now: float, seconds: float, *,
                    when: tuple[str, ...]) -> bool:
        """Take the batch's supervisor lease if it is free or expired (one replica works on
        a batch's validation or finalisation at a time) and the batch is still in one of
        the statuses ``when``: a caller acting on a row it read earlier must not act on a
        batch that has moved on since (a validation started from a stale row would discard
        the items of a running batch)."""
        q = (update(batches).where(batches.c.id == batch_id, batches.c.status.in_(when), or_(
            batches.c.lease_expires.is_(None), batches.c.lease_expires < now,
            batches.c.lease_owner == owner))
            .values(lease_owner=owner, lease_expires=now + seconds))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)


class ScheduleRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, row: Row) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(schedules).values(**row))

    async def get(self, schedule_id: str) -> Row | None:
        async with self._engine.connect() as conn:
            rows = _rows(await conn.execute(
                select(schedules).where(schedules.c.id == schedule_id)))
        return rows[0] if rows else None

    async def find(self, *, owner: str | None, all_owners: bool) -> list[Row]:
        q = select(schedules).order_by(schedules.c.created_at)
        if not all_owners:
            q = q.where(schedules.c.owner == owner if owner is not None
                        else schedules.c.owner.is_(None))
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(q))

    async def due(self, now: float) -> list[Row]:
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(select(schedules).where(
                schedules.c.paused.is_(False), schedules.c.next_run_at <= now)))

    async def advance(self, schedule_id: str, *, expected_next: float, next_run_at: float,
                      last_run_at: float, last_batch_id: str | None) -> bool:
        """Move a due schedule on; ``False`` if another replica already did (run once)."""
        q = (update(schedules).where(schedules.c.id == schedule_id,
                                     schedules.c.next_run_at == expected_next)
             .values(next_run_at=next_run_at, last_run_at=last_run_at,
                     last_batch_id=last_batch_id))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def update(self, schedule_id: str, **values: Any) -> bool:
        async with self._engine.begin() as conn:
            return bool((await conn.execute(update(schedules).where(
                schedules.c.id == schedule_id).values(**values))).rowcount)

    async def delete(self, schedule_id: str) -> bool:
        async with self._engine.begin() as conn:
            return bool((await conn.execute(delete(schedules).where(
                schedules.c.id == schedule_id))).rowcount)
