"""Stored responses: written in the background yet readable at once, read back and deleted
per owner, in SQLite and PostgreSQL (migration 0003_responses) and in the in-memory
fallback without a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inferno.core.errors import ServiceUnavailable
from inferno.proxy.responses_store import ResponseStore
from inferno.store import Store, StoredResponse
from tests.polling import eventually
from tests.unit.test_store import BACKENDS, open_store


def row(rid: str, owner: str) -> StoredResponse:
    return StoredResponse(id=rid, owner=owner, body={"id": rid, "output": [{"t": "é"}]},
                          input_items=[{"type": "message", "id": "m1"}],
                          messages=[{"role": "user", "content": "hi"}], created_at=1.5)


@pytest_asyncio.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(request.param, tmp_path)
    yield store
    await store.drop_schema()
    await store.close()


@pytest.mark.parametrize("kind", ["database", "memory"])
async def test_put_get_delete_per_owner(db: Store, kind: str) -> None:
    responses = ResponseStore(db if kind == "database" else None, flush_interval=0.01)
    responses.start()
    try:
        for pending in (True, False):  # still queued, then written
            await responses.put(row("resp_1", "key-a"))
            if not pending and kind == "database":
                await eventually(lambda: db.responses.get("key-a", "resp_1"),
                                 what="the response written to the database")
            assert await responses.get("key-a", "resp_1") == row("resp_1", "key-a")
            assert await responses.get("key-b", "resp_1") is None  # another key sees nothing
            assert await responses.delete("key-b", "resp_1") is False
            assert await responses.delete("key-a", "resp_1") is True
            assert await responses.get("key-a", "resp_1") is None
            assert await responses.delete("key-a", "resp_1") is False
    finally:
        await responses.close()
    assert await db.responses.get("key-a", "resp_1") is None  # the delete won


async def test_written_in_batches_and_kept_across_restarts(db: Store) -> None:
    responses = ResponseStore(db, flush_interval=3600)  # writes only when flushed
    await responses.put(row("resp_1", "key-a"))
    await responses.put(row("resp_2", "key-a"))
    assert await db.responses.get("key-a", "resp_1") is None  # not written yet...
    assert await responses.get("key-a", "resp_1") is not None  # ...but readable
    await responses.delete("key-a", "resp_2")  # deleted while queued: never written
    await responses.close()  # flushes
    again = ResponseStore(db)
    assert await again.get("key-a", "resp_1") == row("resp_1", "key-a")
    assert await again.get("key-a", "resp_2") is None
    await db.responses.put_many([row("resp_1", "key-a")])  # a retried batch: no duplicate


async def test_a_database_outage_is_a_503(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")  # never migrated: no table
    try:
        with pytest.raises(ServiceUnavailable):
            await ResponseStore(store).get("key-a", "resp_1")
    finally:
        await store.close()
