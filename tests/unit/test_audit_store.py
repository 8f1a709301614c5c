"""The audit trail in the store: chained rows, idempotent appends, tampering found, and
appenders in parallel (several connections at once) never forking the chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import delete, insert, update

from inferno.store import Store
from inferno.store.audit import GENESIS, AuditEvent, audit_log
from tests.unit.test_store import BACKENDS, open_store


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.drop_schema()
    await s.close()


def events(n: int, actor: str = "k1") -> list[AuditEvent]:
    return [AuditEvent(action="key.create", target=f"key-{i}", actor=actor,
                       detail={"scope": "user"}) for i in range(n)]


async def test_rows_chain_and_verify(store: Store) -> None:
    assert await store.audit.append(events(3)) == 3
    assert await store.audit.append([AuditEvent("model.deploy", "m:v2", outcome="ok")]) == 1
    rows = await store.audit.find()
    assert [r["seq"] for r in rows] == [4, 3, 2, 1]  # newest first
    assert rows[-1]["prev_hash"] == GENESIS
    assert all(rows[i]["prev_hash"] == rows[i + 1]["hash"] for i in range(3))
    checked, head, broken = await store.audit.verify()
    assert (checked, head, broken) == (4, rows[0]["hash"], [])


async def test_a_retried_batch_is_not_written_twice(store: Store) -> None:
    batch = events(2)
    assert await store.audit.append(batch) == 2
    assert await store.audit.append(batch) == 0  # the writer retried after an unclear failure
    assert len(await store.audit.find()) == 2
    assert (await store.audit.verify())[2] == []


async def test_filters_and_paging(store: Store) -> None:
    await store.audit.append(events(5, actor="alice") + events(2, actor="bob"))
    await store.audit.append([AuditEvent("model.load", "m", actor="alice")])
    assert len(await store.audit.find(actor="bob")) == 2
    assert [r["action"] for r in await store.audit.find(action="model")] == ["model.load"]
    assert len(await store.audit.find(action="key")) == 7
    page1 = await store.audit.find(limit=3)
    page2 = await store.audit.find(limit=3, before=page1[-1]["seq"])
    assert [r["seq"] for r in page1 + page2] == [8, 7, 6, 5, 4, 3]


@pytest.mark.parametrize("tamper", ["edit", "delete-middle", "delete-last", "insert"])
async def test_tampering_is_found(store: Store, tamper: str) -> None:
    await store.audit.append(events(4))
    async with store.engine.begin() as conn:
        if tamper == "edit":  # someone makes a revocation look like someone else's
            await conn.execute(update(audit_log).where(audit_log.c.seq == 2)
                               .values(actor="someone-else"))
        elif tamper == "delete-middle":
            await conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
        elif tamper == "delete-last":
            await conn.execute(delete(audit_log).where(audit_log.c.seq == 4))
        else:
            await conn.execute(insert(audit_log).values(
                seq=5, id="forged", ts=0.0, actor="x", action="key.revoke", target="t",
                outcome="ok", prev_hash=GENESIS, hash=GENESIS))
    _checked, _head, broken = await store.audit.verify()
    assert broken, tamper
    where = {"edit": 2, "delete-middle": 2, "delete-last": 4, "insert": 5}[tamper]
    assert where in {b.seq for b in broken}


async def test_parallel_appenders_never_fork_the_chain(store: Store) -> None:
    # A second Store on the same database stands for another process (its own pool).
    second = Store(store.url, schema=store.schema)
    await second.start()
    try:
        await asyncio.gather(*(s.audit.append(events(3, actor=f"w{i}"))
                               for i, s in enumerate([store, second] * 10)))
    finally:
        await second.close()
    rows = await store.audit.find(limit=1000)
    assert len(rows) == 60 and sorted(r["seq"] for r in rows) == list(range(1, 61))
    assert (await store.audit.verify())[2] == []
