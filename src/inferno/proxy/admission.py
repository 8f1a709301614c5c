"""Admission: per-node concurrency caps, then a bounded FIFO queue with a maximum wait.

A request goes out at once if one of its candidate nodes is under its cap. Otherwise it
waits in the proxy's queue, woken as soon as any request finishes. A full queue, or a
wait past ``queue_wait``, is answered at once with 503 and ``Retry-After``: overload is
refused fast instead of piling up until clients time out.

Background work (batch items) is admitted at a lower priority: only onto a node's own
slots (its ``capacity``, never the queue beyond it), less a reserve that follows the
interactive traffic seen in the last ``reserve_window`` seconds (one slot per node plus
that peak spread over the nodes), and only while no interactive request waits. A waiting
background request is woken after every interactive one. So a batch at full speed fills
idle capacity, and an interactive request arriving finds a free slot instead of queueing
behind batch work. Beyond that, :class:`BackgroundLimit` caps background requests in
flight while interactive requests get slower than they are without background work.
With several workers (``--workers N``) each also reads what the others publish on a
:class:`~inferno.proxy.board.Board`: their interactive peaks, queues and limits count as
its own, and the background cap is on the proxy's background requests as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Sequence

from inferno.core.errors import Overloaded
from inferno.proxy.background import BackgroundLimit
from inferno.proxy.board import BACKGROUND, LAST_SAMPLE, LIMIT, PEAK, PEAK_AT, WAITING, Board
from inferno.proxy.pool import Node


class Admission:
    def __init__(self, *, max_per_node: int, queue_size: int, queue_wait: float,
                 reserve_window: float = 2.0, board: Board | None = None) -> None:
        """``board``: where this worker and the proxy's other workers publish their
        traffic (None: a proxy of one process)."""
        self._max_per_node = max_per_node
        self._queue_size = queue_size
        self._queue_wait = queue_wait
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self._window = reserve_window
        self._peak = 0  # interactive requests in flight at most, lately
        self._peak_at = 0.0
        self.background = BackgroundLimit(idle=reserve_window)
        self._board = board
        self._background_in_flight = 0
        self.rejected = 0

    @property
    def background_in_flight(self) -> int:
        """Background requests in flight in this process."""
        return self._background_in_flight

    @background_in_flight.setter
    def background_in_flight(self, n: int) -> None:
        self._background_in_flight = n
        if self._board is not None:
            self._board.set(BACKGROUND, n)

    def background_total(self) -> int:
        """Background requests in flight in the whole proxy (every worker)."""
        own = self._background_in_flight
        if self._board is None:
            return own
        return own + int(self._board.others(time.monotonic(), self._window).background)

    def wants_sample(self) -> bool:
        """Whether to time this interactive stream's first chunk (BackgroundLimit)."""
        return self.background.wants_sample(self.background_total())

    def observe_interactive(self, seconds: float) -> None:
        """An interactive request's time to first byte, for the background limit."""
        self.background.observe(seconds, self.background_total())
        if self._board is not None:
            self._board.set(LIMIT, self.background.limit)
            self._board.set(LAST_SAMPLE, time.monotonic())

    def cap(self, node: Node) -> int:
        return self._max_per_node or 4 * max(node.capacity, 1)

    def has_room(self, nodes: Sequence[Node]) -> bool:
        return any(n.outstanding < self.cap(n) for n in nodes)

    def note_interactive(self, in_flight: int) -> None:
        """Interactive requests in flight now (called as each one starts)."""
        now = time.monotonic()
        if in_flight >= self._peak or now - self._peak_at > self._window:
            self._peak, self._peak_at = in_flight, now
            if self._board is not None:
                self._board.set(PEAK, in_flight)
                self._board.set(PEAK_AT, now)

    def background_cap(self, node: Node, n_nodes: int, elsewhere: float = 0.0) -> int:
        """``elsewhere``: the other workers' recent interactive peak."""
        peak = self._peak if time.monotonic() - self._peak_at <= self._window else 0
        peak += math.ceil(elsewhere)
        reserve = 1 + math.ceil(peak / max(1, n_nodes)) if peak else 0
        return min(self.cap(node), max(0, max(node.capacity, 1) - reserve))

    def background_room(self, nodes: Sequence[Node], pool: int = 0) -> list[Node]:
        """The nodes that may take background work now (none while interactive waits);
        ``pool``: how many nodes share the reserve when ``nodes`` is a sample of them."""
        waiting, limit = len(self._waiters), self.background.current()
        in_flight, elsewhere = self._background_in_flight, 0.0
        if self._board is not None:
            others = self._board.others(time.monotonic(), self._window)
            waiting += int(others.waiting)
            limit = min(limit, others.limit)
            in_flight += int(others.background)
            elsewhere = others.peak
        if waiting or in_flight >= limit:
            return []
        n_nodes = max(pool, len(nodes))
        return [n for n in nodes
                if n.outstanding < self.background_cap(n, n_nodes, elsewhere)]

    async def wait_background(self, deadline: float) -> None:
        """Wait until a request finishes with no interactive one waiting, or a short while
        (the interactive reserve decays with time, not only on releases)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Overloaded("Background work found no room in time; retry later.",
                             retry_after=1)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._background.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, min(0.5, remaining))
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._background.remove(waiter)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def wait(self, deadline: float, since: float | None = None) -> None:
        """Wait for any request to finish; raises Overloaded when refused or out of time.

        ``since``: when the request first queued (``time.monotonic``). A waiter woken by a
        finished request may find the slot taken again and wait once more; its time in the
        queue counts from ``since``, so ``queue_wait`` bounds the whole wait, not each."""
        if len(self._waiters) >= self._queue_size:
            self.rejected += 1
            raise Overloaded("Every node is at capacity and the proxy's queue is full; "
                             "retry later.", retry_after=1)
        now = time.monotonic()
        timeout = min((now if since is None else since) + self._queue_wait, deadline) - now
        if timeout <= 0:
            self.rejected += 1
            raise Overloaded(f"No node had capacity within {self._queue_wait:g} s; "
                             "retry later.", retry_after=2)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._publish_waiting()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self.rejected += 1
            raise Overloaded(f"No node had capacity within {self._queue_wait:g} s; "
                             "retry later.", retry_after=2) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):  # already popped by release()
                self._waiters.remove(waiter)
            self._publish_waiting()

    def _publish_waiting(self) -> None:
        if self._board is not None:
            self._board.set(WAITING, len(self._waiters))

    def release(self) -> None:
        """A request finished somewhere: let the longest waiter re-check (interactive
        waiters first, then background ones)."""
        for queue in (self._waiters, self._background):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
