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

Where the pieces live: :mod:`._fetch_options` (options, progress callback),
:mod:`._fetch_policy` (retries, back-off, redirects, how a URL shows in messages),
:mod:`._fetch_http` (the response face over both clients), :mod:`._fetch_hash` (the hashing
threads), :mod:`._fetch_transfer` (the ``.partial`` file, its sidecar and one stream),
:mod:`._fetch_parts` (ranged parts). This module holds the entry point, the lock and the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from inferno.core.errors import ModelSourceError
from inferno.models._fetch_http import _Clients, _transport_errors, tls_refusal
from inferno.models._fetch_options import FetchOptions, ProgressFn
from inferno.models._fetch_parts import _Parts
from inferno.models._fetch_policy import _GoParallel, _NoRanges, _Restart, _Retry, where
from inferno.models.remote import Remote
from inferno.models.store import Layer, ModelStore

__all__ = ["FetchOptions", "ProgressFn", "fetch", "where"]


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


class _Download(_Parts):
    """The whole download: parts while they work, else one stream; retries between."""

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
                    if (refused := tls_refusal(exc)) is not None:
                        raise ModelSourceError(
                            f"{self.remote.url}: the server's TLS certificate is not trusted "
                            f"({refused.verify_message}); to trust a private CA, point "
                            "SSL_CERT_FILE at its certificate"
                        ) from exc
                    failures = 1 if self.offset > before else failures + 1
                    await asyncio.sleep(self._delay(exc, failures, total_attempts))
        finally:
            await client.aclose()
        return await asyncio.to_thread(self._finish, digest)
