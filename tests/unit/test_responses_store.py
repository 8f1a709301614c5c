"""Stored responses: written, read back and deleted per owner, in SQLite and PostgreSQL
(the migration 0003_responses) and in the in-memory fallback without a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inferno.core.errors import ServiceUnavailable
from inferno.proxy.responses_store import ResponseStore
from inferno.store import Store, StoredResponse
from tests.unit.test_store import BACKENDS, open_store


def row(rid: str, owner: str) -> StoredResponse:
    return StoredResponse(id=rid, owner=owner, body={"id": rid, "output": [{"t": "é"}]},
                          input_items=[{"type": "message", "id": "m1"}],
                          messages=[{"role": "user", "content": "hi"}], created_at=1.5)


@pytest_asyncio.fixture(params=[*BACKENDS, pytest.param("memory", id="memory")])
async def responses(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        yield ResponseStore(None)
        return
    store = await open_store(request.param, tmp_path)
    yield ResponseStore(store)
    await store.drop_schema()
    await store.close()


async def test_put_get_delete_per_owner(responses: ResponseStore) -> None:
    await responses.put(row("resp_1", "key-a"))
    got = await responses.get("key-a", "resp_1")
    assert got == row("resp_1", "key-a")
    assert await responses.get("key-b", "resp_1") is None  # another key sees nothing
    assert await responses.delete("key-b", "resp_1") is False
    assert await responses.delete("key-a", "resp_1") is True
    assert await responses.get("key-a", "resp_1") is None
    assert await responses.delete("key-a", "resp_1") is False


async def test_a_database_outage_is_a_503(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")  # never migrated: no table
    try:
        with pytest.raises(ServiceUnavailable):
            await ResponseStore(store).get("key-a", "resp_1")
    finally:
        await store.close()
