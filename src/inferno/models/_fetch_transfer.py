"""The single-stream resumable transfer: bytes go to ``blobs/<key>.partial`` next to a JSON
sidecar (size, digest, ETag, parts); a restart re-hashes the bytes on disk and asks for the
rest with ``Range``/``If-Range``. Size and sha256 are checked before the atomic rename into
``blobs/``; bytes that do not match go to ``quarantine/``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from typing import Any
from urllib.parse import urljoin

import orjson

from inferno.core.errors import (
    ConfigError,
    ModelIntegrityError,
    ModelNotFound,
    ModelSourceError,
    UpstreamError,
)
from inferno.models._fetch_hash import _BatchHash
from inferno.models._fetch_http import _Clients, _Resp
from inferno.models._fetch_options import FetchOptions, ProgressFn
from inferno.models._fetch_policy import (
    REDIRECTS,
    _GoParallel,
    _origin,
    _reason,
    _Restart,
    _Retry,
    _retry_after,
    where,
)
from inferno.models.remote import Remote
from inferno.models.store import CHUNK, Layer, ModelStore, atomic_write

REPORT_EVERY = 1 << 20  # progress callbacks at most once per this many bytes


class _Transfer:
    """One file's download state (the ``.partial`` file and its sidecar), one request
    (redirects, status, resume checks) and one stream into the file; the end (verify,
    quarantine or commit). :class:`_Parts` adds ranged parts, ``_Download`` the loop."""

    def __init__(
        self, remote: Remote, store: ModelStore, key: str, report: ProgressFn, options: FetchOptions
    ) -> None:
        self.remote, self.store, self.report, self.options = remote, store, report, options
        self.partial = store.blobs / f"{key}.partial"
        self.sidecar = store.blobs / f"{key}.partial.json"
        self.size = remote.size
        self.expected = remote.sha256.lower() if remote.sha256 else None
        self.etag: str | None = None
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.parts: list[list[int]] | None = None  # [start, end (exclusive), bytes done]
        self.ranges_ok = True  # False once a part was answered without its range
        self.reported = 0
        self.retryable: tuple[type[Exception], ...] = (_Retry, UpstreamError)

    def _delay(self, exc: Exception, failures: int, attempts: int) -> float:
        """How long to wait before the next attempt; raise when it is time to give up."""
        o = self.options
        if failures >= o.max_attempts or attempts >= 4 * o.max_attempts:
            raise ModelSourceError(
                f"{where(self.remote.url)}: gave up after {attempts} attempts "
                f"({_reason(exc)}); run the pull again to resume"
            ) from exc
        delay = exc.delay if isinstance(exc, _Retry) else None
        if delay is None:
            delay = min(o.max_backoff, o.backoff * 2 ** (failures - 1))
        return delay

    def _large(self, size: int | None) -> bool:
        o = self.options
        return self.ranges_ok and o.parts > 1 and size is not None and size >= o.parallel_min_size

    # partial state

    def _load_partial(self) -> None:
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = orjson.loads(self.sidecar.read_bytes())
        same = (
            self.partial.exists()
            and state.get("sha256") == self.expected
            and (self.size is None or state.get("size") in (None, self.size))
        )
        if not same:
            self._truncate()
            return
        self.etag = state.get("etag")
        self.size = self.size or state.get("size")
        parts = state.get("parts")
        if parts is not None:  # parts in place; what they fetched is hashed at the end
            if self.size is None or self.partial.stat().st_size != self.size:
                self._truncate()
                return
            self.parts = [[int(a), int(b), int(d)] for a, b, d in parts]
            self.offset = sum(p[2] for p in self.parts)
            return
        with self.partial.open("rb") as f:  # bytes already there: hash them again
            while chunk := f.read(CHUNK):
                self.hasher.update(chunk)
                self.offset += len(chunk)
        if self.size is not None and self.offset > self.size:
            self._truncate()

    def _truncate(self) -> None:
        self.partial.write_bytes(b"")
        self.hasher, self.offset, self.etag, self.parts = hashlib.sha256(), 0, None, None
        self.reported = 0
        self._save_sidecar()

    def _save_sidecar(self, *, durable: bool = True) -> None:
        """``durable=False`` (a part's checkpoint): no fsync. A SIGKILL keeps it (the page
        cache survives the process); a power cut may lose it or the bytes it counts, which
        costs a re-download or a quarantine at the final hash, never a bad blob."""
        data = orjson.dumps(
            {
                "where": where(self.remote.url),
                "size": self.size,
                "sha256": self.expected,
                "etag": self.etag,
                "parts": self.parts,
            }
        )
        if durable:
            atomic_write(self.sidecar, data)
        else:
            tmp = self.sidecar.with_name(f".{self.sidecar.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(self.sidecar)

    def _check_space(self) -> None:
        if self.size is None:
            return
        need = self.size - self.offset
        free = shutil.disk_usage(self.store.blobs).free
        if need > free:
            raise ConfigError(
                f"not enough disk space for {self.remote.filename}: {need} more bytes needed, "
                f"{free} free in {self.store.root} (free some space or use --models-dir)"
            )

    # one request

    async def _open(self, client: _Clients, rng: str | None = None) -> _Resp:
        url, headers = self.remote.url, dict(self.remote.headers)
        if rng is None and self.offset:
            rng = f"bytes={self.offset}-"
        for _ in range(self.options.max_redirects + 1):
            send = {**headers, "Accept-Encoding": "identity"}
            if rng:
                send["Range"] = rng
                if self.etag and not self.etag.startswith("W/"):  # If-Range: strong only
                    send["If-Range"] = self.etag
            resp = await client.get(url, send)
            location = resp.header("location")
            if resp.status not in REDIRECTS or not location:
                return resp
            await resp.aclose()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):  # the credential was for the first host only
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise ModelSourceError(
            f"{where(self.remote.url)}: more than {self.options.max_redirects} redirects"
        )

    async def _attempt(self, client: _Clients) -> bool:
        """One request; True when the whole file is on disk."""
        resp = await self._open(client)
        try:
            if resp.status == 416 and self.size is not None and self.offset == self.size:
                return True
            self._check_status(resp)
            total = self._accept(resp)
            self.etag = resp.header("etag") or self.etag
            if (
                resp.status == 200
                and self.offset == 0
                and self._large(total)
                and (resp.header("accept-ranges") or "").lower() == "bytes"
            ):
                self.size = total
                raise _GoParallel
            if total is not None and self.size is None:
                self.size = total
            elif total is not None and total != self.size:
                self.size = total  # checked against the promise in _finish
            self._save_sidecar()
            self._check_space()
            hashing = _BatchHash(self.hasher)
            fd = os.open(self.partial, os.O_WRONLY | os.O_APPEND)
            try:
                self.report(self.remote.filename, self.offset, self.size)
                while (chunk := await resp.next()) is not None:
                    view = memoryview(chunk)
                    while view:  # the bytes are counted (and hashed) once written
                        written = os.write(fd, view)
                        await hashing.feed(bytes(view[:written]) if written < len(view) else chunk)
                        self.offset += written
                        view = view[written:]
                    self._progress()
            finally:
                os.close(fd)
                await hashing.drain()  # the hash covers exactly the bytes on disk
            return self.size is None or self.offset >= self.size
        finally:
            await resp.aclose()

    def _progress(self) -> None:
        if self.offset - self.reported >= REPORT_EVERY or self.offset == self.size:
            self.reported = self.offset
            self.report(self.remote.filename, self.offset, self.size)

    def _check_status(self, resp: _Resp) -> None:
        status = resp.status
        if status in (429, 503, 408) or status >= 500:
            raise _Retry(
                f"HTTP {status}",
                _retry_after(resp.header("retry-after"), self.options.max_retry_after),
            )
        if status in (404, 410):
            raise ModelNotFound(f"{where(self.remote.url)}: HTTP {status}")
        if status not in (200, 206):
            raise ModelSourceError(f"{where(self.remote.url)}: HTTP {status}")

    def _accept(self, resp: _Resp) -> int | None:
        """Check the answer continues where we stopped; return the file's whole size."""
        if resp.status == 200:
            if self.offset:  # no range support, or the file changed (If-Range): this
                self._truncate()  # answer is the whole file, from byte zero
            length = resp.header("content-length")
            return int(length) if length and length.isdigit() else None
        unit, _, spec = (resp.header("content-range") or "").partition(" ")
        span, _, whole = spec.partition("/")
        start = span.partition("-")[0]
        if unit != "bytes" or not start.isdigit() or int(start) != self.offset:
            raise _Restart
        return int(whole) if whole.isdigit() else None

    # the end

    def _finish(self, digest: str) -> Layer:
        promised = self.remote.size
        if (self.expected and digest != self.expected) or (
            promised is not None and self.offset != promised
        ):
            quarantined = self.store.quarantine_file(self.partial, digest)
            self.sidecar.unlink(missing_ok=True)
            raise ModelIntegrityError(
                f"{self.remote.filename} from {where(self.remote.url)}: expected "
                f"sha256:{self.expected or '?'} ({promised if promised is not None else '?'} "
                f"bytes), received sha256:{digest} ({self.offset} bytes); "
                f"quarantined as {quarantined.name}"
            )
        with self.partial.open("rb+") as f:
            os.fsync(f.fileno())
        if self.store.has_blob(digest):
            self.partial.unlink()
        else:
            self.store.commit_blob(self.partial, digest)
        self.sidecar.unlink(missing_ok=True)
        return Layer(digest, self.offset, self.remote.filename, self.remote.media_type)
