"""Large files in ranged parts at once, written in place (``pwrite``) into a file of the final
size. Each part resumes on its own from the progress the sidecar records; a part answered
without its range sends the download back to one stream (:class:`_NoRanges`)."""

from __future__ import annotations

import asyncio
import os

from inferno.models._fetch_hash import _PrefixHash
from inferno.models._fetch_http import _Clients
from inferno.models._fetch_policy import _NoRanges, _Retry
from inferno.models._fetch_transfer import _Transfer
from inferno.models.store import CHUNK


class _Parts(_Transfer):
    """The ranged parts of a :class:`_Transfer`."""

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
