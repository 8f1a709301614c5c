"""Admission: per-node concurrency caps, then a bounded FIFO queue with a maximum wait.

A request goes out at once if one of its candidate nodes is under its cap. Otherwise it
waits in the proxy's queue, woken as soon as any request finishes. A full queue, or a
wait past ``queue_wait``, is answered at once with 503 and ``Retry-After``: overload is
refused fast instead of piling up until clients time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence

from inferno.core.errors import Overloaded
from inferno.proxy.pool import Node


class Admission:
    def __init__(self, *, max_per_node: int, queue_size: int, queue_wait: float) -> None:
        self._max_per_node = max_per_node
        self._queue_size = queue_size
        self._queue_wait = queue_wait
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.rejected = 0

    def cap(self, node: Node) -> int:
        return self._max_per_node or 4 * max(node.capacity, 1)

    def has_room(self, nodes: Sequence[Node]) -> bool:
        return any(n.outstanding < self.cap(n) for n in nodes)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def wait(self, deadline: float) -> None:
        """Wait for any request to finish; raises Overloaded when refused or out of time."""
        if len(self._waiters) >= self._queue_size:
            self.rejected += 1
            raise Overloaded("Every node is at capacity and the proxy's queue is full; "
                             "retry later.", retry_after=1)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timeout = min(self._queue_wait, deadline - time.monotonic())
        try:
            await asyncio.wait_for(waiter, max(0.0, timeout))
        except TimeoutError:
            self.rejected += 1
            raise Overloaded(f"No node had capacity within {self._queue_wait:g} s; "
                             "retry later.", retry_after=2) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):  # already popped by release()
                self._waiters.remove(waiter)

    def release(self) -> None:
        """A request finished somewhere: let the longest waiter re-check."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
