"""The audit trail: who changed what, append-only, each row chained to the one before it.

A row: ``seq`` (its place in the chain), ``ts``, ``actor`` (a key id, a JWT subject,
``local`` for a caller on a proxy without auth, ``system`` for the proxy and the
governator themselves), ``action`` (``key.create``, ``model.deploy``...), ``target``,
``outcome`` (``ok`` or what went wrong), ``request_id``, ``detail`` (a small JSON object,
never a secret) and ``hash = sha256(prev_hash + the row's canonical JSON)``.

Appending takes the chain's head row (``inferno_audit_head``) first, in the same
transaction: its row lock (PostgreSQL) or the write lock (SQLite) serialises appenders
across processes, so two proxies, the CLI and the governator never fork the chain. Each
event carries a unique ``id`` and an append skips ids already stored, so a batch the
background writer retries after an unclear failure is not written twice.

:meth:`AuditRepo.verify` recomputes the chain: an edited, inserted or deleted row (the head
keeps the last ``seq`` and hash) is reported with its ``seq``. Nothing here stops someone
with write access to the database from rewriting the whole chain: print the head hash
(``inferno audit verify``) and keep it elsewhere to anchor it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inferno.store.models import metadata

if TYPE_CHECKING:
    from inferno.store.engine import Store

GENESIS = "0" * 64

audit_log = Table(
    "inferno_audit", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(36), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    Column("outcome", String(512), nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("detail", JSON, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_inferno_audit_ts", audit_log.c.ts)
Index("ix_inferno_audit_actor", audit_log.c.actor, audit_log.c.seq)
Index("ix_inferno_audit_action", audit_log.c.action, audit_log.c.seq)

audit_head = Table(
    "inferno_audit_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str
    target: str
    actor: str = "system"
    outcome: str = "ok"
    request_id: str | None = None
    detail: dict[str, Any] | None = None
    ts: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def row_hash(prev_hash: str, seq: int, event: dict[str, Any]) -> str:
    fields = {k: event[k] for k in ("id", "ts", "actor", "action", "target", "outcome",
                                    "request_id", "detail")}
    body = orjson.dumps({"seq": seq, **fields}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


@dataclass(frozen=True, slots=True)
class Broken:
    seq: int
    reason: str


class AuditRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, events: Sequence[AuditEvent]) -> int:
        """Chain ``events`` onto the trail in one transaction; returns how many were new."""
        if not events:
            return 0
        async with self._engine.begin() as conn:
            seq, prev = await self._lock_head(conn)
            ids = [e.id for e in events]
            known = set((await conn.execute(
                select(audit_log.c.id).where(audit_log.c.id.in_(ids)))).scalars())
            rows = []
            for e in events:
                if e.id in known:
                    continue
                seq += 1
                row = asdict(e)
                digest = row_hash(prev, seq, row)
                rows.append({**row, "seq": seq, "prev_hash": prev, "hash": digest})
                prev = digest
            if not rows:
                return 0
            await conn.execute(insert(audit_log), rows)
            await conn.execute(update(audit_head).where(audit_head.c.id == 1)
                               .values(seq=seq, hash=prev))
        return len(rows)

    @staticmethod
    async def _lock_head(conn: AsyncConnection) -> tuple[int, str]:
        # The UPDATE comes first: it takes the lock before anything is read.
        result = await conn.execute(update(audit_head).where(audit_head.c.id == 1)
                                    .values(seq=audit_head.c.seq))
        if result.rowcount == 0:
            await conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
        head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                   .where(audit_head.c.id == 1))).one()
        return int(head.seq), str(head.hash)

    async def find(self, *, actor: str | None = None, action: str | None = None,
                   target: str | None = None, since: float | None = None,
                   until: float | None = None, before: int | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """The newest rows first; ``before`` (a ``seq``) pages further back."""
        q = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        for col, value in ((audit_log.c.actor, actor), (audit_log.c.target, target)):
            if value is not None:
                q = q.where(col == value)
        if action is not None:  # "key" matches key.create and key.revoke
            q = q.where((audit_log.c.action == action)
                        | audit_log.c.action.startswith(f"{action}.", autoescape=True))
        if since is not None:
            q = q.where(audit_log.c.ts >= since)
        if until is not None:
            q = q.where(audit_log.c.ts < until)
        if before is not None:
            q = q.where(audit_log.c.seq < before)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(q)).mappings()
            return [{str(k): v for k, v in r.items()} for r in rows]

    async def verify(self, batch: int = 5000) -> tuple[int, str, list[Broken]]:
        """(rows checked, head hash, what is broken): every link and hash recomputed."""
        broken: list[Broken] = []
        prev, expected, checked = GENESIS, 1, 0
        async with self._engine.connect() as conn:
            while True:
                rows = (await conn.execute(
                    select(audit_log).where(audit_log.c.seq >= expected)
                    .order_by(audit_log.c.seq).limit(batch))).mappings().all()
                for r in rows:
                    checked += 1
                    if r["seq"] != expected:
                        broken.append(Broken(expected, f"rows {expected}..{r['seq'] - 1} "
                                                       "are missing"))
                    if r["prev_hash"] != prev:
                        broken.append(Broken(r["seq"], "does not link to the row before it"))
                    if row_hash(r["prev_hash"], r["seq"], dict(r)) != r["hash"]:
                        broken.append(Broken(r["seq"], "its content does not match its hash"))
                    prev, expected = r["hash"], r["seq"] + 1
                if len(rows) < batch:
                    break
            head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                       .where(audit_head.c.id == 1))).one_or_none()
        if head is not None and (head.seq != expected - 1 or head.hash != prev):
            broken.append(Broken(int(head.seq), f"the head names row {head.seq}, the chain "
                                                f"ends at row {expected - 1}: rows removed"))
        return checked, prev, broken


class AuditTrail:
    """Records events off the action's path: :meth:`record` never blocks and never raises;
    one background :class:`~inferno.store.writer.BatchWriter` appends them in batches (the
    request log's writer). Without a store, recording is a no-op."""

    def __init__(self, store: Store | None, *, queue_size: int = 10_000,
                 flush_interval: float = 0.5) -> None:
        from inferno.store.writer import BatchWriter

        self._repo: AuditRepo | None = store.audit if store is not None else None
        self._writer: BatchWriter[AuditEvent] = BatchWriter(
            self._append, name="audit trail", queue_size=queue_size, batch_size=500,
            flush_interval=flush_interval, max_backoff=10.0)

    @property
    def enabled(self) -> bool:
        return self._repo is not None

    def record(self, event: AuditEvent) -> None:
        if self._repo is not None:
            self._writer.put(event)

    async def _append(self, batch: list[AuditEvent]) -> None:
        assert self._repo is not None
        await self._repo.append(batch)

    def start(self) -> None:
        if self._repo is not None:
            self._writer.start()

    async def close(self, within: float = 5.0) -> None:
        if self._repo is not None:
            await self._writer.close(within)
