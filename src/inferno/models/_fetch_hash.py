"""sha256 on a worker thread (hashlib releases the GIL on large updates), so that hashing
overlaps receiving: one stream hands it batches of received chunks (:class:`_BatchHash`, at
most one batch in flight); parts have it follow the file's contiguous finished prefix,
reading it back from the page cache (:class:`_PrefixHash`), so that only the tail is left to
hash when the last byte arrives."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

HASH_BATCH = 4 << 20  # bytes handed to the hashing thread at once


def _hash_batch(hasher: Any, batch: list[bytes]) -> None:
    for chunk in batch:
        hasher.update(chunk)  # releases the GIL for updates over 2 KiB


class _BatchHash:
    """sha256 of one stream on a worker thread: chunks are handed over in batches, with at
    most one batch being hashed while the next fills; ``drain`` waits for all of it."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.batch: list[bytes] = []
        self.size = 0
        self.pending: asyncio.Future[None] | None = None

    async def feed(self, chunk: bytes) -> None:
        self.batch.append(chunk)
        self.size += len(chunk)
        if self.size >= HASH_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending
        batch, self.batch, self.size = self.batch, [], 0
        if batch:
            loop = asyncio.get_running_loop()
            self.pending = loop.run_in_executor(None, _hash_batch, self.hasher, batch)

    async def drain(self) -> None:
        await self._flush()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending


class _PrefixHash(threading.Thread):
    """sha256 of a file filled in parts, on a worker thread that follows the contiguous
    finished prefix (part 0's bytes, then part 1's once part 0 is complete, ...), reading
    it back with ``preadv`` from the page cache. ``finish`` hashes what is left."""

    BLOCK = 4 << 20

    def __init__(self, path: Path, parts: list[list[int]], size: int) -> None:
        super().__init__(name="inferno-pull-hash", daemon=True)
        self.path, self.parts, self.size = path, parts, size
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.final = False
        self.stopped = False
        self.wake = threading.Event()
        self.error: BaseException | None = None

    def _ready(self) -> int:
        if self.final:
            return self.size
        end = 0
        for start, stop, done in list(self.parts):  # sorted, contiguous
            end = start + done
            if end < stop:
                break
        return end

    def run(self) -> None:
        buf = bytearray(self.BLOCK)
        view = memoryview(buf)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.error = exc
            return
        try:
            while not self.stopped:
                ready = self._ready()
                if ready > self.hashed:
                    n = os.preadv(fd, [view[: min(self.BLOCK, ready - self.hashed)]], self.hashed)
                    if n <= 0:
                        raise OSError(f"{self.path}: shorter than {ready} bytes")
                    self.hasher.update(view[:n])
                    self.hashed += n
                elif self.final:
                    return
                else:
                    self.wake.wait(0.02)
                    self.wake.clear()
        except BaseException as exc:  # handed to the event loop by finish()
            self.error = exc
        finally:
            os.close(fd)

    async def finish(self) -> tuple[str, int]:
        self.final = True
        self.wake.set()
        await asyncio.to_thread(self.join)
        if self.error is not None:
            raise self.error
        return self.hasher.hexdigest(), self.hashed

    async def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        await asyncio.to_thread(self.join)
