"""Where stored Responses API responses live: the proxy's database, or memory without one.

Writes stay off the request path: a stored response is queued for the store's background
:class:`~inferno.store.writer.BatchWriter` (batched inserts) and kept in a pending map
until it is written, so this proxy answers retrieve, ``input_items`` and
``previous_response_id`` for it the moment its create call has answered. Only when the
writer's queue is full is a response written inline. A delete of a response still pending
removes it from the map and from the batch (or right after it, if the batch was already
being written). Other proxy replicas sharing the database see it once written (within the
flush interval). With ``database_url: none`` the most recent :data:`MEMORY_LIMIT`
responses are kept in memory instead (lost on restart).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import TypeVar

from inferno.core.errors import ServiceUnavailable
from inferno.store import BatchWriter, Store, StoredResponse, StoreUnavailable

MEMORY_LIMIT = 10_000
T = TypeVar("T")
Key = tuple[str, str]  # (owner, response id)
log = logging.getLogger("inferno.proxy.responses")


class ResponseStore:
    def __init__(self, store: Store | None, *, flush_interval: float = 0.05,
                 queue_size: int = 10_000, batch_size: int = 256) -> None:
        self._store = store
        self._memory: OrderedDict[Key, StoredResponse] = OrderedDict()
        self._pending: dict[Key, StoredResponse] = {}  # queued, not yet written
        self._deleted: set[Key] = set()  # deleted while pending: never (or no longer) stored
        self._writer: BatchWriter[StoredResponse] | None = None
        if store is not None:
            self._writer = BatchWriter(self._write, name="stored responses",
                                       queue_size=queue_size, batch_size=batch_size,
                                       flush_interval=flush_interval, log=log)

    def start(self) -> None:
        if self._writer is not None:
            self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

    async def put(self, row: StoredResponse) -> None:
        key = (row.owner, row.id)
        if self._store is None:
            self._memory[key] = row
            while len(self._memory) > MEMORY_LIMIT:
                self._memory.popitem(last=False)
            return
        assert self._writer is not None
        self._pending[key] = row
        if not self._writer.put(row):  # the queue is full: write this one now
            del self._pending[key]
            await _call(self._store.responses.put(row))

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        key = (owner, response_id)
        if self._store is None:
            return self._memory.get(key)
        pending = self._pending.get(key)
        if pending is not None or key in self._deleted:
            return pending
        return await _call(self._store.responses.get(owner, response_id))

    async def delete(self, owner: str, response_id: str) -> bool:
        key = (owner, response_id)
        if self._store is None:
            return self._memory.pop(key, None) is not None
        if self._pending.pop(key, None) is not None:
            self._deleted.add(key)
            return True
        if key in self._deleted:  # deleted already; its batch is still being written
            return False
        return await _call(self._store.responses.delete(owner, response_id))

    async def _write(self, rows: list[StoredResponse]) -> None:
        assert self._store is not None
        repo = self._store.responses
        await repo.put_many([r for r in rows if (r.owner, r.id) not in self._deleted])
        for row in rows:
            key = (row.owner, row.id)
            if key in self._deleted:  # deleted before or while this batch was written
                await repo.delete(row.owner, row.id)
                self._deleted.discard(key)
            elif self._pending.get(key) is row:
                del self._pending[key]


async def _call(op: Awaitable[T]) -> T:
    try:
        return await op
    except StoreUnavailable as exc:
        raise ServiceUnavailable("Stored responses are unavailable right now; retry later."
                                 ) from exc
