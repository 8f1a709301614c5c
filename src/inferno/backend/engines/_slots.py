"""FIFO admission to a fixed number of generation slots, with the counts stats() reports.

Engines without a scheduler of their own (the fake engine, remote providers) hold a slot
for the whole generation; asyncio.Semaphore wakes waiters in arrival order, so the queue
is fair.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0  # holding a slot
        self.queued = 0  # waiting for one
        self._sem = asyncio.Semaphore(capacity)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self.queued += 1
        try:
            await self._sem.acquire()
        finally:
            self.queued -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()
