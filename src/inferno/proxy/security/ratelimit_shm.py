"""Rate limits shared by the worker processes of one proxy (``--workers N``), without Redis.

The same GCRA as :class:`~inferno.proxy.security.ratelimit.LocalLimiter`, with the TATs in
a table in shared memory (a file in ``/dev/shm``) that every worker maps, so a key's limit
holds for the proxy as a whole, whichever worker a connection lands on. The file is
unlinked as soon as it is made: the workers inherit a descriptor, so nothing is left
behind however the proxy ends. Every decision takes an exclusive ``flock`` on the file for
a few microseconds: the lock belongs to an open file, so each worker opens the table anew
(``/proc/self/fd``, Linux). ``time.monotonic`` is the system-wide ``CLOCK_MONOTONIC`` on
Linux, one clock for every worker.

The table is open addressing over 64-bit key hashes (one array of hashes, one of TATs;
a stable hash: Python's ``hash`` of a string differs between processes). A slot whose TAT
has passed is free to reuse; a key is only ever looked for in the ``_PROBE`` slots after its
home, so a full neighbourhood evicts its oldest entry (that key then starts afresh: a
lenient, never a stricter, limit).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Callable

from inferno.proxy.security.ratelimit import Bucket

_SLOTS = 1 << 16  # 1 MiB: far more keys than are inside their window at once
_SIZE = _SLOTS * 16  # a key hash per slot (0: never used), then a TAT per slot
_PROBE = 32
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


def create_table() -> int:
    """A descriptor of a new, empty table (already unlinked) for the workers to inherit;
    the caller closes it."""
    fd, path = tempfile.mkstemp(prefix="inferno-limits-", dir=_SHM)
    os.unlink(path)
    try:
        os.ftruncate(fd, _SIZE)
    except OSError:
        os.close(fd)
        raise
    return fd


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") | 1


class SharedLimiter:
    def __init__(self, table: int, clock: Callable[[], float] = time.monotonic) -> None:
        """``table``: a descriptor from :func:`create_table` (inherited)."""
        self._fd = os.open(f"/proc/self/fd/{table}", os.O_RDWR)  # our own open file
        self._page = mmap.mmap(self._fd, _SIZE)
        view = memoryview(self._page)
        self._keys = view[:_SLOTS * 8].cast("Q")
        self._tats = view[_SLOTS * 8:].cast("d")
        self._clock = clock
        self._hashes: dict[str, int] = {}

    async def admit(self, buckets: list[Bucket]) -> float:
        return self.admit_now(buckets)

    def admit_now(self, buckets: list[Bucket]) -> float:
        """0.0 when admitted (every bucket charged), else seconds until it could be."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # a plain try: this runs on every request
        try:
            now = self._clock()
            wait = 0.0
            found = []
            for b in buckets:
                slot, tat = self._find(b.key, now)
                new = max(tat, now) + b.cost * b.period
                wait = max(wait, new - b.window - now)
                found.append((slot, new))
            if wait > 0:
                return wait
            for b, (slot, new) in zip(buckets, found, strict=True):
                self._keys[slot] = self._key_hash(b.key)
                self._tats[slot] = new
            return 0.0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def settle(self, buckets: list[Bucket], delta: float) -> None:
        """Give back (or charge) ``delta`` units once the real token count is known."""
        if not buckets or delta == 0:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self._clock()
            for b in buckets:
                slot, tat = self._find(b.key, now, insert=False)
                if slot >= 0:
                    self._tats[slot] = tat + delta * b.period
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._keys.release()
        self._tats.release()
        self._page.close()
        os.close(self._fd)

    def _key_hash(self, key: str) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            h = self._hashes[key] = _hash(key)
        return h

    def _find(self, key: str, now: float, *, insert: bool = True) -> tuple[int, float]:
        """The key's slot and TAT (0.0 when new: the slot to take). Without ``insert``,
        (-1, 0.0) when the key has no slot."""
        h = self._key_hash(key)
        keys, tats = self._keys, self._tats
        home = h & (_SLOTS - 1)
        free = -1
        oldest, oldest_tat = home, float("inf")
        for i in range(_PROBE):
            slot = (home + i) & (_SLOTS - 1)
            kh = keys[slot]
            if kh == h:
                return slot, tats[slot]
            if kh == 0:
                free = slot if free < 0 else free
                break
            tat = tats[slot]
            if tat <= now and free < 0:
                free = slot
            if tat < oldest_tat:
                oldest, oldest_tat = slot, tat
        if not insert:
            return -1, 0.0
        return (free if free >= 0 else oldest), 0.0
