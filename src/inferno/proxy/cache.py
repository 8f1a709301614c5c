"""Exact-match response cache: the same request, by the same key, gets the stored answer.

Eligible: ``temperature == 0`` (or the ``x-inferno-cache: on`` header), complete 200
answers only (a stream must have ended with ``[DONE]`` and carried no error event).
The cache key is BLAKE3 over the route, the caller's key id and the canonical request
(orjson with sorted keys, ``user`` left out), so callers never see each other's entries.
``Cache-Control: no-cache`` skips the lookup; ``no-store`` also skips storing.

L1 is an in-memory LRU bounded by bytes, with a TTL. L2 (optional) is a directory of
zstd-compressed files named by the key; reads and writes run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from inferno.proxy.security.metrics import SecurityMetrics

log = logging.getLogger("inferno.proxy.cache")
_MAGIC = b"IFC1"


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    content_type: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    created: float

    @property
    def size(self) -> int:
        return len(self.body) + 128

    def encode(self) -> bytes:
        head = orjson.dumps({"ct": self.content_type, "s": self.stream, "p": self.prompt_tokens,
                             "c": self.completion_tokens, "t": self.created})
        return _MAGIC + len(head).to_bytes(4, "big") + head + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        if not raw.startswith(_MAGIC):
            return None
        n = int.from_bytes(raw[4:8], "big")
        head = orjson.loads(raw[8:8 + n])
        return cls(raw[8 + n:], head["ct"], head["s"], head["p"], head["c"], head["t"])


def wants_cache(data: dict[str, Any], opt_in: str | None) -> bool:
    if opt_in is not None and opt_in.strip().lower() in ("on", "1", "true", "yes"):
        return True
    temperature = data.get("temperature")
    return (temperature == 0 and not isinstance(temperature, bool)) and data.get("n", 1) == 1


def cache_key(route: str, key_id: str | None, data: dict[str, Any]) -> bytes:
    import blake3

    canonical = {k: v for k, v in data.items() if k != "user"}
    h = blake3.blake3(route.encode())
    h.update(b"\0" + (key_id or "-").encode() + b"\0")
    h.update(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return h.digest()


class ResponseCache:
    def __init__(self, metrics: SecurityMetrics, *, max_bytes: int, ttl: float,
                 disk_dir: Path | None = None, disk_max_bytes: int = 0) -> None:
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._l1: OrderedDict[bytes, Entry] = OrderedDict()
        self._bytes = 0
        self._dir = disk_dir if disk_dir is not None and disk_max_bytes > 0 else None
        self._disk_max = disk_max_bytes
        self._pending: set[asyncio.Task[None]] = set()
        self._writes = 0
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        metrics.cache_bytes.set_function(lambda: float(self._bytes))

    async def get(self, key: bytes) -> Entry | None:
        now = time.time()
        entry = self._l1.get(key)
        if entry is not None:
            if now - entry.created <= self._ttl:
                self._l1.move_to_end(key)
                self._metrics.cache.labels("hit").inc()
                return entry
            self._drop(key)
        if self._dir is not None:
            path = self._dir / key.hex()
            if path.exists():
                entry = await asyncio.to_thread(_read, path)
                if entry is not None and now - entry.created <= self._ttl:
                    self._put_l1(key, entry)
                    self._metrics.cache.labels("hit_disk").inc()
                    return entry
        self._metrics.cache.labels("miss").inc()
        return None

    def put(self, key: bytes, entry: Entry) -> None:
        self._put_l1(key, entry)
        if self._dir is not None:
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._write_disk, self._dir / key.hex(), entry))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _put_l1(self, key: bytes, entry: Entry) -> None:
        if entry.size > self._max_bytes:
            return
        if key in self._l1:
            self._drop(key)
        self._l1[key] = entry
        self._bytes += entry.size
        while self._bytes > self._max_bytes and self._l1:
            self._drop(next(iter(self._l1)))

    def _drop(self, key: bytes) -> None:
        old = self._l1.pop(key, None)
        if old is not None:
            self._bytes -= old.size

    def _write_disk(self, path: Path, entry: Entry) -> None:
        import zstandard

        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(zstandard.ZstdCompressor(level=3).compress(entry.encode()))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("response cache: cannot write to disk: %s", exc.strerror)
            return
        self._writes += 1
        if self._writes % 100 == 1:
            self._trim_disk()

    def _trim_disk(self) -> None:
        """Drop expired files, then the oldest until the directory fits its budget."""
        assert self._dir is not None
        now = time.time()
        files = []
        for p in self._dir.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            if now - st.st_mtime > self._ttl:
                p.unlink(missing_ok=True)
            else:
                files.append((st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self._disk_max:
                break
            p.unlink(missing_ok=True)
            total -= size

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=2.0)


def _read(path: Path) -> Entry | None:
    import zstandard

    try:
        return Entry.decode(zstandard.ZstdDecompressor().decompress(path.read_bytes()))
    except (OSError, zstandard.ZstdError, ValueError, KeyError):
        return None
