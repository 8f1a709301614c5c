"""An input file, line by line, into queue items, or OpenAI's ``errors`` list.

Lines are read and checked in a worker thread, ``_LINES`` at a time, and stored as they
go (the next chunk is checked while the last one is written), so a 200 MB file never sits
in memory and the event loop keeps serving. An item records where its line lies in the
input file, not the line itself (workers read it from there). Every problem is reported
with its (1-based) line, up to ``_MAX_ERRORS``; any problem fails the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from inferno.batch.types import Owner
from inferno.store import Store

_LINES = 2000
_MAX_ERRORS = 100


@dataclass
class Checked:
    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None


def _error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


class _Lines:
    """Checks lines one at a time; keeps the custom_ids seen (duplicates are errors)."""

    def __init__(self, endpoint: str, owner: Owner, max_lines: int) -> None:
        self.endpoint = endpoint
        self.owner = owner
        self.max_lines = max_lines
        self.seen: set[str] = set()
        self.result = Checked()
        self.offset = 0  # of the next line in the file

    def check(self, n: int, raw: bytes) -> tuple[int, str] | None:
        """The item for line ``n``, or None (an error was noted, or the line is blank)."""
        errors = self.result.errors
        if not raw.strip():
            return None
        self.result.total += 1
        if self.result.total > self.max_lines:
            if self.result.total == self.max_lines + 1:
                errors.append(_error(n, "too_many_requests",
                                     f"A batch may hold at most {self.max_lines} requests."))
            return None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append(_error(n, "invalid_json_line",
                                 "This line is not parseable as valid JSON."))
            return None
        if not isinstance(obj, dict):
            errors.append(_error(n, "invalid_json_line", "Each line must be a JSON object."))
            return None
        custom_id = obj.get("custom_id")
        body = obj.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(_error(n, "missing_required_parameter",
                                 "Each line needs a non-empty string 'custom_id'.", "custom_id"))
            return None
        if custom_id in self.seen:
            errors.append(_error(n, "duplicate_custom_id",
                                 f"The custom_id '{custom_id[:100]}' appears more than once.",
                                 "custom_id"))
            return None
        self.seen.add(custom_id)
        if obj.get("method", "POST") != "POST":
            errors.append(_error(n, "invalid_method", "'method' must be POST.", "method"))
            return None
        if obj.get("url") != self.endpoint:
            errors.append(_error(n, "invalid_url", f"'url' must be {self.endpoint}, the "
                                 "batch's endpoint.", "url"))
            return None
        if not isinstance(body, dict):
            errors.append(_error(n, "invalid_request", "'body' must be a JSON object.", "body"))
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            errors.append(_error(n, "missing_required_parameter",
                                 "The body needs a 'model'.", "body.model"))
            return None
        if not self.owner.may_use(model):
            errors.append(_error(n, "model_not_allowed",
                                 f"This API key may not use the model '{model}'.",
                                 "body.model"))
            return None
        if body.get("stream") not in (None, False):
            errors.append(_error(n, "stream_not_supported",
                                 "Batch requests cannot stream: remove 'stream'.", "body.stream"))
            return None
        self.result.model = self.result.model or model
        return n, custom_id

    def chunk(self, lines: Iterator[tuple[int, bytes]]) -> list[tuple[int, str, int, int]]:
        """Up to ``_LINES`` checked items: (line, custom_id, offset, length) (runs in a
        thread)."""
        out = []
        for n, raw in lines:
            item = self.check(n, raw)
            offset = self.offset
            self.offset += len(raw)
            if item is not None and not self.result.errors:
                out.append((n, item[1], offset, len(raw)))
            if n % _LINES == 0:
                break
        return out


def _numbered(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    return enumerate(f, start=1)


async def validate_into(store: Store, batch_id: str, path: Path, endpoint: str,
                        owner: Owner, *, max_lines: int) -> Checked:
    """Check every line of ``path``; store the items (state ``new``) while none failed."""
    lines = _Lines(endpoint, owner, max_lines)
    await store.batch_items.discard(batch_id)  # a validation retried after a crash
    writing: asyncio.Task[None] | None = None
    try:
        with await asyncio.to_thread(path.open, "rb") as f:
            numbered = _numbered(f)
            while True:
                items = await asyncio.to_thread(lines.chunk, numbered)
                if writing is not None:
                    await writing
                    writing = None
                if items and not lines.result.errors:
                    writing = asyncio.create_task(store.batch_items.insert_many(
                        [(batch_id, *item) for item in items]))
                if len(lines.result.errors) >= _MAX_ERRORS:
                    break
                if not items and _exhausted(f):
                    break
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
    result = lines.result
    if result.total == 0 and not result.errors:
        result.errors.append(_error(1, "empty_file", "The input file has no requests."))
    if result.errors:
        del result.errors[_MAX_ERRORS:]
        await store.batch_items.discard(batch_id)
    return result


def _exhausted(f: IO[bytes]) -> bool:
    return f.peek(1) == b"" if hasattr(f, "peek") else True
