"""Download one :class:`Remote` into the store: resumable, verified, at most once at a time.

- Bytes go to ``blobs/<key>.partial`` (key: ``sha256-<hex>``, or ``url-<hash of the URL>``
  when the source states no digest) next to a JSON sidecar (size, digest, ETag). A restart,
  even after SIGKILL, re-hashes the bytes on disk and asks for the rest with
  ``Range: bytes=N-`` and ``If-Range: <ETag>``; a 200 answer means "start again".
- An exclusive flock on ``blobs/<key>.lock`` makes a second process wait for the first and
  then find the blob.
- Retries (bounded) with exponential back-off that honours ``Retry-After`` (429/503), for
  connection errors and stalls (no byte for ``stall_timeout`` s: reconnect and resume).
- Redirects are followed, to other hosts too (Hugging Face sends files to a CDN), but
  ``Authorization`` never leaves the host it was given for.
- Large files (``parallel_min_size``, 64 MiB, and up) come in ``parts`` (4) ranged requests
  at once, written in place (``pwrite``) into a file of the final size. Each part resumes on
  its own: the sidecar records every part's progress (every ``checkpoint`` bytes, at most
  1/16 of a part), so a
  cut, a stall or a SIGKILL costs at most what a part fetched since its last checkpoint.
  The assembled file is hashed once, then verified like any other. A plain URL states no
  size: the first answer tells it, and with ``Accept-Ranges: bytes`` the download switches
  to parts. A part answered 200 (no range support, or the file changed under ``If-Range``)
  sends the download back to one stream from byte zero.
- Size and sha256 are checked before the atomic rename into ``blobs/``; bytes that do not
  match go to ``quarantine/`` and :class:`ModelIntegrityError` names both digests and the
  URL's host and path (never its query string: signed URLs carry tokens there).

Throughput: ``http://`` goes through the project's own client (``inferno.net.client``,
asyncio.Protocol + httptools, ~5x httpx2's receive rate on loopback); ``https://`` (and a
redirect to it) through httpx2, imported here only, when such a download starts. Both sit
behind one small response face (:class:`_Resp`), so every rule below holds for both. sha256
runs on a worker thread (hashlib releases the GIL on large updates): one stream hands it
batches of received chunks (at most one batch in flight); parts have it follow the file's
contiguous finished prefix, reading it back from the page cache, so that hashing overlaps
receiving and only the tail is left to hash when the last byte arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import orjson

from inferno.core.errors import (
    ConfigError,
    ModelIntegrityError,
    ModelNotFound,
    ModelSourceError,
    UpstreamError,
)
from inferno.models.remote import Remote
from inferno.models.store import CHUNK, Layer, ModelStore, atomic_write

if TYPE_CHECKING:
    import httpx2

    from inferno.net.client import HttpClient, UpstreamResponse

ProgressFn = Callable[[str, int, int | None], None]  # filename, bytes done, total (or None)
REDIRECTS = (301, 302, 303, 307, 308)
HASH_BATCH = 4 << 20  # bytes handed to the hashing thread at once
REPORT_EVERY = 1 << 20  # progress callbacks at most once per this many bytes


@dataclass(frozen=True, slots=True)
class FetchOptions:
    max_attempts: int = 8  # consecutive failures without a new byte
    stall_timeout: float = 30.0
    connect_timeout: float = 15.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 300.0
    lock_wait: float = 24 * 3600.0  # how long to wait for another process's download
    max_redirects: int = 10
    parallel_min_size: int = 64 << 20  # files this large come in ranged parts at once
    parts: int = 4
    checkpoint: int = 8 << 20  # a part records its progress in the sidecar this often
    own_http: bool = True  # http:// through inferno.net.client; False: httpx2 for all


def where(url: str) -> str:
    """The URL as messages show it: scheme, host and path; no query, fragment or userinfo."""
    u = urlsplit(url)
    host = u.hostname or ""
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def _retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(cap, seconds))


@contextlib.asynccontextmanager
async def _hold(store: ModelStore, key: str, wait: float) -> AsyncIterator[None]:
    deadline = time.monotonic() + wait
    while True:
        with store.try_lock(key) as held:
            if held:
                yield
                return
        if time.monotonic() > deadline:
            raise ModelSourceError(f"{key} stayed locked by another download for {wait:g} s")
        await asyncio.sleep(0.1)  # another process is downloading it: wait, then reuse it


async def fetch(
    remote: Remote,
    store: ModelStore,
    progress: ProgressFn | None = None,
    options: FetchOptions | None = None,
) -> Layer:
    """Bring ``remote`` into the store (once) and return its layer."""
    report = progress or (lambda _f, _d, _t: None)
    options = options or FetchOptions()
    if remote.url.startswith("file://"):
        path = Path(unquote(urlsplit(remote.url).path))
        layer = await asyncio.to_thread(store.import_blob, path, remote.sha256)
        report(remote.filename, layer.size, layer.size)
        return replace(layer, filename=remote.filename, media_type=remote.media_type)
    if remote.sha256:
        key = f"sha256-{remote.sha256.lower()}"
    else:
        key = "url-" + hashlib.sha256(remote.url.encode()).hexdigest()[:32]
    found = _existing(store, remote)
    if found is None:
        async with _hold(store, key, options.lock_wait):
            found = (
                _existing(store, remote)
                or await _Download(remote, store, key, report, options).run()
            )
    layer = found
    report(remote.filename, layer.size, layer.size)
    return layer


def _existing(store: ModelStore, remote: Remote) -> Layer | None:
    if remote.sha256 and store.has_blob(remote.sha256.lower()):
        size = store.blob_path(remote.sha256.lower()).stat().st_size
        return Layer(remote.sha256.lower(), size, remote.filename, remote.media_type)
    return None


class _Restart(Exception):
    """The server will not continue where we stopped: start the file again."""


class _NoRanges(Exception):
    """A part was not answered with the range it asked for: back to one stream."""


class _GoParallel(Exception):
    """The first answer showed a large file and range support: fetch it in parts."""


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class _Resp:
    """One answer, whichever client fetched it: status, headers, body chunks, close."""

    __slots__ = ("_httpx", "_it", "_own", "_stall", "status")

    def __init__(
        self,
        *,
        own: UpstreamResponse | None = None,
        httpx: httpx2.Response | None = None,
        stall: float = 30.0,
    ) -> None:
        self._own, self._httpx, self._stall = own, httpx, stall
        self._it = httpx.aiter_raw() if httpx is not None else None
        self.status = own.status if own is not None else httpx.status_code if httpx else 0

    def header(self, name: str) -> str | None:
        if self._own is not None:
            return self._own.header(name)
        assert self._httpx is not None
        return self._httpx.headers.get(name)

    async def next(self) -> bytes | None:
        """The next body bytes (as they arrived); None at the end of the body."""
        if self._own is not None:
            return await self._own.next_chunk(self._stall)
        assert self._it is not None
        return await anext(self._it, None)

    async def aclose(self) -> None:
        if self._own is not None:
            self._own.close()  # an unfinished body closes the socket
        elif self._httpx is not None:
            await self._httpx.aclose()


class _Clients:
    """``http://`` through the project's own client, anything else through httpx2."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.own: HttpClient | None = None
        self.httpx: httpx2.AsyncClient | None = None

    async def get(self, url: str, headers: dict[str, str]) -> _Resp:
        o = self.options
        u = urlsplit(url)
        if o.own_http and u.scheme == "http" and u.hostname:
            if self.own is None:
                from inferno.net.client import HttpClient

                self.own = HttpClient(max_idle_per_host=o.parts + 1)
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            own = await self.own.request(
                u.hostname,
                u.port or 80,
                "GET",
                target,
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                connect_timeout=o.connect_timeout,
                header_timeout=o.stall_timeout,
            )
            return _Resp(own=own, stall=o.stall_timeout)
        if self.httpx is None:
            try:
                import httpx2
            except ImportError as exc:  # a core dependency; only a broken install lacks it
                raise ModelSourceError("downloads need httpx2: pip install httpx2") from exc
            self.httpx = httpx2.AsyncClient(
                timeout=httpx2.Timeout(o.stall_timeout, connect=o.connect_timeout),
                follow_redirects=False,
                limits=httpx2.Limits(
                    max_connections=o.parts + 1, max_keepalive_connections=o.parts
                ),
            )
        client = self.httpx
        resp = await client.send(client.build_request("GET", url, headers=headers), stream=True)
        return _Resp(httpx=resp)

    async def aclose(self) -> None:
        if self.own is not None:
            await self.own.aclose()
        if self.httpx is not None:
            await self.httpx.aclose()


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a broken connection raises, from either client: retried, then resumed."""
    try:
        import httpx2
    except ImportError:
        return (UpstreamError,)
    return (UpstreamError, httpx2.TransportError)


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


class _Download:
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

    async def run(self) -> Layer:
        await asyncio.to_thread(self._load_partial)
        self._check_space()
        self.retryable = (_Retry, *_transport_errors())
        failures, total_attempts = 0, 0
        if self.parts is None and self.offset == 0 and self._large(self.size):
            self._plan_parts()
        client = _Clients(self.options)
        try:
            while True:
                if self.parts is not None:
                    try:
                        digest, self.offset = await self._parallel(client)
                    except _NoRanges:
                        self.ranges_ok = False
                        self._truncate()
                        continue
                    break
                total_attempts += 1
                before = self.offset
                try:
                    if await self._attempt(client):
                        digest = self.hasher.hexdigest()
                        break
                    raise _Retry("the body ended early")
                except _GoParallel:
                    self._plan_parts()
                    continue
                except _Restart:
                    self._truncate()
                    continue
                except self.retryable as exc:
                    failures = 1 if self.offset > before else failures + 1
                    await asyncio.sleep(self._delay(exc, failures, total_attempts))
        finally:
            await client.aclose()
        return await asyncio.to_thread(self._finish, digest)

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

    # parts

    def _large(self, size: int | None) -> bool:
        o = self.options
        return self.ranges_ok and o.parts > 1 and size is not None and size >= o.parallel_min_size

    def _plan_parts(self) -> None:
        assert self.size is not None
        step = -(-self.size // self.options.parts)
        self.parts = [
            [start, min(self.size, start + step), 0] for start in range(0, self.size, step)
        ]
        self.offset = 0
        os.truncate(self.partial, self.size)  # sparse; each part writes its own range
        self._save_sidecar()

    async def _parallel(self, client: _Clients) -> tuple[str, int]:
        """Fetch the missing parts; return the file's sha256 and size."""
        assert self.parts is not None and self.size is not None
        hasher = _PrefixHash(self.partial, self.parts, self.size)
        hasher.start()
        fd = os.open(self.partial, os.O_WRONLY)
        tasks = [
            asyncio.create_task(self._part(client, fd, part))
            for part in self.parts
            if part[2] < part[1] - part[0]
        ]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if (exc := task.exception()) is not None:
                        raise exc
        except BaseException:
            await hasher.stop()
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            os.close(fd)
            if self.parts is not None:
                self._save_sidecar()
        return await hasher.finish()

    async def _part(self, client: _Clients, fd: int, part: list[int]) -> None:
        failures, attempts = 0, 0
        while part[2] < part[1] - part[0]:
            attempts += 1
            before = part[2]
            try:
                await self._part_attempt(client, fd, part)
                if part[2] < part[1] - part[0]:
                    raise _Retry("the body ended early")
            except self.retryable as exc:
                failures = 1 if part[2] > before else failures + 1
                await asyncio.sleep(self._delay(exc, failures, attempts))

    async def _part_attempt(self, client: _Clients, fd: int, part: list[int]) -> None:
        start, end, _ = part
        pos = start + part[2]
        resp = await self._open(client, f"bytes={pos}-{end - 1}")
        try:
            self._check_status(resp)
            if resp.status != 206:
                raise _NoRanges
            unit, _, spec = (resp.header("content-range") or "").partition(" ")
            span, _, whole = spec.partition("/")
            first = span.partition("-")[0]
            if unit != "bytes" or first != str(pos) or whole != str(self.size):
                raise _NoRanges
            etag = resp.header("etag")
            if etag and self.etag and etag != self.etag:
                raise _NoRanges  # the file changed between parts
            if etag and not self.etag:
                self.etag = etag
            unsaved, every = 0, min(self.options.checkpoint, max(CHUNK, (end - start) // 16))
            while (chunk := await resp.next()) is not None:
                piece = chunk[: end - pos] if len(chunk) > end - pos else chunk
                written = os.pwrite(fd, piece, pos)
                if written != len(piece):  # a short write: the rest is fetched again
                    piece = piece[:written]
                pos += len(piece)
                part[2] += len(piece)
                self.offset += len(piece)
                unsaved += len(piece)
                self._progress()
                if unsaved >= every:
                    unsaved = 0
                    self._save_sidecar(durable=False)
                if pos >= end:
                    break
        finally:
            await resp.aclose()

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


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
