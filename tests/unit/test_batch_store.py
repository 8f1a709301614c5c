"""The batch queue in the store, on SQLite and PostgreSQL: claims, leases, outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inferno.store import Store
from tests.unit.test_store import BACKENDS, open_store


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.drop_schema()
    await s.close()


async def _items(store: Store, batch_id: str, n: int, state: str = "pending") -> None:
    await store.batch_items.insert_many([(batch_id, i, f"c{i}", 10 * i, 10) for i in range(n)])
    if state == "pending":
        await store.batch_items.activate(batch_id)


async def test_new_items_wait_for_activation_and_claims_are_leased(store: Store) -> None:
    q = store.batch_items
    await _items(store, "b1", 3, state="new")
    now = time.time()
    assert await q.claim("w1", now, 30, 10) == []  # still being validated
    assert await q.activate("b1") == 3
    got = await q.claim("w1", now, 30, 2)
    assert [c.line for c in got] == [0, 1] and all(c.attempts == 1 for c in got)
    assert [(c.custom_id, c.offset, c.length) for c in got] == [("c0", 0, 10), ("c1", 10, 10)]
    assert [c.line for c in await q.claim("w2", now, 30, 10)] == [2]
    assert await q.claim("w3", now, 30, 10) == []  # every item is leased
    # w1 dies: its leases expire and another worker takes the items over.
    later = now + 31
    taken = await q.claim("w3", later, 300, 10)
    assert sorted(c.line for c in taken) == [0, 1, 2]
    # The stale worker can no longer record an outcome; the new owner can, once.
    def done(line: int, owner: str, result: str, **kw: int) -> dict[str, object]:
        return {"batch_id": "b1", "line": line, "owner": owner, "state": "done",
                "status_code": 200, "result": result, **kw}
    assert await q.record([done(0, "w1", "x")]) == 0
    assert await q.record([done(0, "w3", "ok", prompt_tokens=3, completion_tokens=4)]) == 1
    assert await q.record([done(0, "w3", "again")]) == 0
    assert await q.record([{"batch_id": "b1", "line": 1, "owner": "w3",
                            "retry_at": later + 100}]) == 1
    assert await q.claim("w4", later + 50, 30, 10) == []  # backing off
    assert [c.line for c in await q.claim("w4", later + 101, 300, 10)] == [1]
    assert await q.counts("b1") == {"done": 1, "running": 2}
    assert await q.token_totals("b1") == (3, 4)
    assert await q.close_open("b1", "cancelled") == 0  # both in flight: they finish
    assert await q.close_open("b1", "cancelled", running_too=True) == 2
    rows = [r async for r in q.outcomes("b1", page=2)]
    assert [(r[0], r[2], r[3]) for r in rows] == [(0, "done", "ok"), (1, "cancelled", None),
                                                  (2, "cancelled", None)]


async def test_concurrent_claimers_never_share_an_item(store: Store) -> None:
    q = store.batch_items
    await _items(store, "b2", 200)
    now = time.time()

    async def worker(name: str) -> list[int]:
        mine: list[int] = []
        while True:
            got = await q.claim(name, now, 60, 7)
            if not got:
                return mine
            mine += [c.line for c in got]

    results = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    seen = [line for r in results for line in r]
    assert len(seen) == 200  # every item claimed...
    assert sorted(seen) == list(range(200))  # ...by exactly one worker
    assert (await q.counts("b2")) == {"running": 200}


async def test_batches_idempotency_and_compare_and_set(store: Store) -> None:
    row = {"id": "batch_1", "owner": "k1", "endpoint": "/v1/completions",
           "input_file_id": "file-1", "completion_window": "24h", "status": "validating",
           "created_at": 1.0, "expires_at": 2.0, "total": 0, "completed": 0, "failed": 0,
           "prompt_tokens": 0, "completion_tokens": 0, "idempotency": "k1:abc"}
    assert (await store.batches.create(row))["id"] == "batch_1"
    again = await store.batches.create({**row, "id": "batch_2"})
    assert again["id"] == "batch_1"  # the same key returns the first batch
    assert await store.batches.update("batch_1", when=("validating",), status="in_progress")
    assert not await store.batches.update("batch_1", when=("validating",), status="failed")
    lease = store.batches.lease
    # A lease is taken only while the batch is in the status the caller acts on: a row
    # read before the batch moved on never starts a second validation.
    assert not await lease("batch_1", "p1", 10.0, 5, when=("validating",))
    assert await lease("batch_1", "p1", 10.0, 5, when=("in_progress",))
    assert not await lease("batch_1", "p2", 11.0, 5, when=("in_progress",))
    assert await lease("batch_1", "p2", 16.0, 5, when=("in_progress",))
