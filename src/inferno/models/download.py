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

httpx2 (TLS to remote hosts) is imported here only, when a download starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import orjson

from inferno.core.errors import ConfigError, ModelIntegrityError, ModelNotFound, ModelSourceError
from inferno.models.remote import Remote
from inferno.models.store import CHUNK, Layer, ModelStore, atomic_write, hash_file

if TYPE_CHECKING:
    import httpx2

ProgressFn = Callable[[str, int, int | None], None]  # filename, bytes done, total (or None)
REDIRECTS = (301, 302, 303, 307, 308)


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

    async def run(self) -> Layer:
        await asyncio.to_thread(self._load_partial)
        self._check_space()
        try:
            import httpx2
        except ImportError as exc:  # a core dependency; only a broken install lacks it
            raise ModelSourceError("downloads need httpx2: pip install httpx2") from exc
        o = self.options
        timeout = httpx2.Timeout(o.stall_timeout, connect=o.connect_timeout)
        failures, total_attempts = 0, 0
        if self.parts is None and self.offset == 0 and self._large(self.size):
            self._plan_parts()
        limits = httpx2.Limits(max_connections=o.parts + 1, max_keepalive_connections=o.parts)
        async with httpx2.AsyncClient(
            timeout=timeout, follow_redirects=False, limits=limits
        ) as client:
            while True:
                if self.parts is not None:
                    try:
                        await self._parallel(client)
                    except _NoRanges:
                        self.ranges_ok = False
                        self._truncate()
                        continue
                    digest, self.offset = await asyncio.to_thread(hash_file, self.partial)
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
                except (_Retry, httpx2.TransportError) as exc:
                    failures = 1 if self.offset > before else failures + 1
                    await asyncio.sleep(self._delay(exc, failures, total_attempts))
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

    async def _parallel(self, client: httpx2.AsyncClient) -> None:
        assert self.parts is not None and self.size is not None
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
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            os.close(fd)
            if self.parts is not None:
                self._save_sidecar()

    async def _part(self, client: httpx2.AsyncClient, fd: int, part: list[int]) -> None:
        import httpx2

        failures, attempts = 0, 0
        while part[2] < part[1] - part[0]:
            attempts += 1
            before = part[2]
            try:
                await self._part_attempt(client, fd, part)
                if part[2] < part[1] - part[0]:
                    raise _Retry("the body ended early")
            except (_Retry, httpx2.TransportError) as exc:
                failures = 1 if part[2] > before else failures + 1
                await asyncio.sleep(self._delay(exc, failures, attempts))

    async def _part_attempt(self, client: httpx2.AsyncClient, fd: int, part: list[int]) -> None:
        start, end, _ = part
        pos = start + part[2]
        resp = await self._open(client, f"bytes={pos}-{end - 1}")
        try:
            self._check_status(resp)
            if resp.status_code != 206:
                raise _NoRanges
            unit, _, spec = resp.headers.get("content-range", "").partition(" ")
            span, _, whole = spec.partition("/")
            first = span.partition("-")[0]
            if unit != "bytes" or first != str(pos) or whole != str(self.size):
                raise _NoRanges
            etag = resp.headers.get("etag")
            if etag and self.etag and etag != self.etag:
                raise _NoRanges  # the file changed between parts
            if etag and not self.etag:
                self.etag = etag
            unsaved, every = 0, min(self.options.checkpoint, max(CHUNK, (end - start) // 16))
            async for chunk in resp.aiter_raw():
                piece = chunk[: end - pos]
                os.pwrite(fd, piece, pos)
                pos += len(piece)
                part[2] += len(piece)
                self.offset += len(piece)
                unsaved += len(piece)
                self.report(self.remote.filename, self.offset, self.size)
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

    async def _open(self, client: httpx2.AsyncClient, rng: str | None = None) -> httpx2.Response:
        url, headers = self.remote.url, dict(self.remote.headers)
        if rng is None and self.offset:
            rng = f"bytes={self.offset}-"
        for _ in range(self.options.max_redirects + 1):
            send = {**headers, "Accept-Encoding": "identity"}
            if rng:
                send["Range"] = rng
                if self.etag and not self.etag.startswith("W/"):  # If-Range: strong only
                    send["If-Range"] = self.etag
            resp = await client.send(client.build_request("GET", url, headers=send), stream=True)
            location = resp.headers.get("location")
            if resp.status_code not in REDIRECTS or not location:
                return resp
            await resp.aclose()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):  # the credential was for the first host only
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise ModelSourceError(
            f"{where(self.remote.url)}: more than {self.options.max_redirects} redirects"
        )

    async def _attempt(self, client: httpx2.AsyncClient) -> bool:
        """One request; True when the whole file is on disk."""
        resp = await self._open(client)
        try:
            if resp.status_code == 416 and self.size is not None and self.offset == self.size:
                return True
            self._check_status(resp)
            total = self._accept(resp)
            self.etag = resp.headers.get("etag") or self.etag
            if (
                resp.status_code == 200
                and self.offset == 0
                and self._large(total)
                and resp.headers.get("accept-ranges", "").lower() == "bytes"
            ):
                self.size = total
                raise _GoParallel
            if total is not None and self.size is None:
                self.size = total
            elif total is not None and total != self.size:
                self.size = total  # checked against the promise in _finish
            self._save_sidecar()
            self._check_space()
            with self.partial.open("ab") as f:
                self.report(self.remote.filename, self.offset, self.size)
                async for chunk in resp.aiter_raw():
                    f.write(chunk)
                    self.hasher.update(chunk)
                    self.offset += len(chunk)
                    self.report(self.remote.filename, self.offset, self.size)
            return self.size is None or self.offset >= self.size
        finally:
            await resp.aclose()

    def _check_status(self, resp: httpx2.Response) -> None:
        status = resp.status_code
        if status in (429, 503, 408) or status >= 500:
            raise _Retry(
                f"HTTP {status}",
                _retry_after(resp.headers.get("retry-after"), self.options.max_retry_after),
            )
        if status in (404, 410):
            raise ModelNotFound(f"{where(self.remote.url)}: HTTP {status}")
        if status not in (200, 206):
            raise ModelSourceError(f"{where(self.remote.url)}: HTTP {status}")

    def _accept(self, resp: httpx2.Response) -> int | None:
        """Check the answer continues where we stopped; return the file's whole size."""
        if resp.status_code == 200:
            if self.offset:  # no range support, or the file changed (If-Range): this
                self._truncate()  # answer is the whole file, from byte zero
            length = resp.headers.get("content-length")
            return int(length) if length and length.isdigit() else None
        unit, _, spec = resp.headers.get("content-range", "").partition(" ")
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
