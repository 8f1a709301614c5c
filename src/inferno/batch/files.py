"""File content on disk, content-addressed, and uploads streamed there as they arrive.

Layout under the data directory: ``files/<sha256[:2]>/<sha256>`` for content, ``files/tmp``
for uploads and generated files being written (emptied at start). Identical content is
stored once; a row in ``inferno_files`` names it. Content is written to a temporary file,
fsynced, then renamed into place, so a crash never leaves a partial file under its digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from inferno.core.errors import InvalidRequest

_FIELD_MAX = 64 * 1024  # a form field other than the file (purpose, expires_after[...])
CHUNK = 256 * 1024


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def start(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # uploads cut short by a crash
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def temp(self) -> Path:
        return self.tmp / secrets.token_hex(12)

    def adopt(self, tmp: Path, sha256: str) -> None:
        """Move a finished temporary file into place (blocking: run it in a thread)."""
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    async def write(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Store generated content; returns (sha256, size)."""
        with self.generated() as out:
            async for chunk in chunks:
                out.write(chunk)
            return await out.store()

    def generated(self) -> GeneratedFile:
        """A file to write piece by piece (several at once, from one pass over the data),
        then :meth:`GeneratedFile.store` under its digest."""
        return GeneratedFile(self)

    async def read(self, sha256: str, start: int = 0, end: int | None = None, *,
                   chunk: int = CHUNK) -> AsyncIterator[bytes]:
        """The content from ``start`` to ``end`` (exclusive), a chunk at a time (read in a
        thread: the loop never waits on disk)."""
        f = await asyncio.to_thread(self.path(sha256).open, "rb")
        try:
            if start:
                f.seek(start)
            left = -1 if end is None else end - start
            while left:
                data = await asyncio.to_thread(f.read, chunk if left < 0 else min(chunk, left))
                if not data:
                    break
                left -= len(data) if left > 0 else 0
                yield data
        finally:
            f.close()

    async def pread(self, sha256: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(_pread, self.path(sha256), offset, length)

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class GeneratedFile:
    """Content being generated into a temporary file, hashed on the way; removed if left
    unstored (a context manager)."""

    def __init__(self, files: FileStore) -> None:
        self._files = files
        self._tmp = files.temp()
        self._f = self._tmp.open("wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._f.write(chunk)

    async def store(self) -> tuple[str, int]:
        """Move it into place; returns (sha256, size)."""
        self._f.close()
        sha = self._digest.hexdigest()
        await asyncio.to_thread(self._files.adopt, self._tmp, sha)
        return sha, self.size

    def __enter__(self) -> GeneratedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class LocalLines:
    """Reads a batch's input lines from this host's file store (workers in the proxy)."""

    def __init__(self, files: FileStore, digest_of: Callable[[str], Awaitable[str | None]]
                 ) -> None:
        self._files = files
        self._digest_of = digest_of
        self._digests: dict[str, str] = {}

    async def __call__(self, file_id: str, offset: int, length: int) -> bytes:
        sha = self._digests.get(file_id)
        if sha is None:
            found = await self._digest_of(file_id)
            if found is None:
                raise FileNotFoundError(file_id)
            if len(self._digests) > 1000:
                self._digests.clear()
            sha = self._digests[file_id] = found
        return await self._files.pread(sha, offset, length)


class MultipartUpload:
    """A ``multipart/form-data`` body parsed as it streams in (a :class:`BodySink`): the
    ``file`` part goes to a temporary file, hashed on the way; other parts are kept as
    small text fields. Writes are plain ``os.write`` calls of the chunk just read: they
    land in the page cache in microseconds; the fsync happens once, off the loop."""

    def __init__(self, store: FileStore, content_type: str | None, limit: int) -> None:
        kind, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest("Upload the file as multipart/form-data with a 'file' part.",
                                 param="file")
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.sha256 = ""
        self.path = store.temp()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._digest = hashlib.sha256()
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._field = bytearray()
        self._done = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished})

    # ---- BodySink ----
    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest("Malformed multipart/form-data body.", param="file") from exc

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest("Malformed multipart/form-data body.", param="file") from exc
        self._close_fd()
        if self.filename is None:
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        self.sha256 = self._digest.hexdigest()
        self._done = True

    def abort(self) -> None:
        self._close_fd()
        self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self.abort()

    # ---- parser callbacks ----
    def _part_begin(self) -> None:
        self._disposition = b""
        self._name = None
        self._is_file = False
        self._field = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        if self._name == "file":
            if self.filename is not None:
                raise InvalidRequest("Send exactly one 'file' part.", param="file")
            raw = params.get(b"filename") or b"upload.jsonl"
            self.filename = raw.decode("utf-8", "replace")[:255]
            self._is_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            view = memoryview(data)[start:end]
            self._digest.update(view)
            self.size += end - start
            while view:
                view = view[os.write(self._fd, view):]
        else:
            self._field += data[start:end]
            if len(self._field) > _FIELD_MAX:
                raise InvalidRequest(f"The form field '{self._name}' is too long.",
                                     param=self._name)

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._field.decode("utf-8", "replace")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
