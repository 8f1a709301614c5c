"""Where stored Responses API responses live: the proxy's database, or memory without one.

A response is written before its create call answers (one INSERT, off the event loop's
thread for SQLite), so it can be retrieved or chained the moment the client has its id.
With ``database_url: none`` the most recent :data:`MEMORY_LIMIT` responses are kept in
memory instead (lost on restart).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable
from typing import TypeVar

from inferno.core.errors import ServiceUnavailable
from inferno.store import Store, StoredResponse, StoreUnavailable

MEMORY_LIMIT = 10_000
T = TypeVar("T")


class ResponseStore:
    def __init__(self, store: Store | None) -> None:
        self._store = store
        self._memory: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()

    async def put(self, row: StoredResponse) -> None:
        if self._store is None:
            self._memory[(row.owner, row.id)] = row
            while len(self._memory) > MEMORY_LIMIT:
                self._memory.popitem(last=False)
            return
        await _call(self._store.responses.put(row))

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        if self._store is None:
            return self._memory.get((owner, response_id))
        return await _call(self._store.responses.get(owner, response_id))

    async def delete(self, owner: str, response_id: str) -> bool:
        if self._store is None:
            return self._memory.pop((owner, response_id), None) is not None
        return await _call(self._store.responses.delete(owner, response_id))



async def _call(op: Awaitable[T]) -> T:
    try:
        return await op
    except StoreUnavailable as exc:
        raise ServiceUnavailable("Stored responses are unavailable right now; retry later."
                                 ) from exc
