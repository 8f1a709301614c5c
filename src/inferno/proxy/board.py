"""What each worker of ``inferno proxy --workers N`` tells the others about its traffic, so
that background work (batch items) yields to interactive requests whichever worker they
land on.

Only worker 0 runs batch items; every worker serves interactive requests. Each worker
writes its own row of a small table in shared memory (a file in ``/dev/shm``, unlinked at
once, the descriptor inherited as the rate-limit table's is) and reads the others' rows:
the interactive peak it saw lately and when, its background limit and when it last timed
an interactive request, its background requests in flight, and its interactive requests
waiting in its queue. A row has one writer, and an aligned 8-byte store is never seen
half-written, so no lock is needed; a reader may see a row a moment old, which is what
the decisions made from it (a reserve, a cap) tolerate anyway. ``time.monotonic`` is the
system-wide ``CLOCK_MONOTONIC`` on Linux: one clock for every row.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from dataclasses import dataclass

PEAK, PEAK_AT, LIMIT, LAST_SAMPLE, BACKGROUND, WAITING = range(6)
_WIDTH = 6
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


def create_board(workers: int) -> int:
    """A descriptor of a new, zeroed table with a row per worker (already unlinked) for
    the workers to inherit; the caller closes it."""
    fd, path = tempfile.mkstemp(prefix="inferno-board-", dir=_SHM)
    os.unlink(path)
    try:
        os.ftruncate(fd, workers * _WIDTH * 8)
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Others:
    """The other workers' rows, summed for what admission asks."""
    peak: float         # interactive requests in flight at most lately, over them all
    limit: float        # the smallest background limit among those with recent traffic
    background: float   # background requests in flight
    waiting: float      # interactive requests waiting in their queues


class Board:
    def __init__(self, fd: int, index: int) -> None:
        """``fd``: from :func:`create_board` (inherited); ``index``: this worker's row."""
        size = os.fstat(fd).st_size
        self._page = mmap.mmap(fd, size)
        self._cells = memoryview(self._page).cast("d")
        self._rows = size // (_WIDTH * 8)
        if not 0 <= index < self._rows:
            raise ValueError(f"worker {index} has no row on a board of {self._rows}")
        self._base = index * _WIDTH
        self._index = index
        for i in range(_WIDTH):  # a restarted worker's row starts afresh
            self._cells[self._base + i] = 0.0
        self.set(LIMIT, math.inf)

    def set(self, field: int, value: float) -> None:
        self._cells[self._base + field] = value

    def others(self, now: float, window: float) -> Others:
        """The other rows as of ``now``: a peak older than ``window`` and a limit from a
        worker that timed no interactive request within ``window`` no longer count."""
        cells = self._cells
        peak = background = waiting = 0.0
        limit = math.inf
        for row in range(self._rows):
            if row == self._index:
                continue
            b = row * _WIDTH
            if now - cells[b + PEAK_AT] <= window:
                peak += cells[b + PEAK]
            if now - cells[b + LAST_SAMPLE] <= window:
                limit = min(limit, cells[b + LIMIT])
            background += cells[b + BACKGROUND]
            waiting += cells[b + WAITING]
        return Others(peak, limit, background, waiting)
