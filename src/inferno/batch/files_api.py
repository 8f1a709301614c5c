"""``/v1/files``: upload (streamed to disk), list, retrieve, content, delete.

A key sees only its own files (others' are "not found"); an admin key sees every file.
A file past its ``expires_at`` is gone for every caller; the supervisor deletes it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from inferno.batch.files import FileStore, MultipartUpload
from inferno.batch.types import Owner
from inferno.core.errors import InvalidRequest, MethodNotAllowed, NotFound
from inferno.net import Request, Response, StreamingResponse
from inferno.store import Store

PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals")
_UPLOADABLE = tuple(p for p in PURPOSES if p != "batch_output")
_EXPIRY = (3600, 30 * 86400)  # expires_after[seconds]: OpenAI's bounds


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": int(row["bytes"]),
            "created_at": int(row["created_at"]), "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed",
            "expires_at": int(row["expires_at"]) if row["expires_at"] else None,
            "status_details": None}


def query(req: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(req.query or "").items()}


def page_limit(q: dict[str, str], default: int, most: int) -> int:
    raw = q.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {most}.", param="limit")
    return int(raw)


class FilesAPI:
    def __init__(self, store: Store, files: FileStore, *, max_size: int) -> None:
        self._store = store
        self._files = files
        self.max_size = max_size

    def sink(self, req: Request) -> MultipartUpload | None:
        if req.method == "POST" and req.path.rstrip("/") == "/v1/files":
            return MultipartUpload(self._files, req.header("content-type"), self.max_size)
        return None

    async def handle(self, req: Request, owner: Owner) -> Response | StreamingResponse:
        parts = req.path.rstrip("/").split("/")[3:]  # after /v1/files
        if not parts:
            if req.method == "POST":
                return await self._upload(req, owner)
            if req.method == "GET":
                return await self._list(req, owner)
            raise MethodNotAllowed(f"{req.method} is not allowed on /v1/files.")
        row = await self.visible(parts[0], owner)
        if len(parts) == 1:
            if req.method == "GET":
                return Response.json(file_object(row))
            if req.method == "DELETE":
                await self._check_unused(row["id"])
                await self.delete(row["id"])
                return Response.json({"id": row["id"], "object": "file", "deleted": True})
            raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}.")
        if parts[1:] == ["content"] and req.method == "GET":
            span = _range(req.header("range"), int(row["bytes"]))
            if span is None:
                return StreamingResponse(self._files.read(row["sha256"]),
                                         content_type="application/octet-stream")
            start, end = span
            return StreamingResponse(
                self._files.read(row["sha256"], start, end), status=206,
                headers=[("content-range", f"bytes {start}-{end - 1}/{row['bytes']}")],
                content_type="application/octet-stream")
        raise NotFound(f"Unknown route {req.method} {req.path}.")

    async def visible(self, file_id: str, owner: Owner) -> dict[str, Any]:
        row = await self._store.files.get(file_id)
        if row is None or not owner.sees(row["owner"]) or (
                row["expires_at"] is not None and row["expires_at"] < time.time()):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return row

    async def _check_unused(self, file_id: str) -> None:
        """An open batch's or a schedule's input file stays: workers read its lines."""
        store = self._store
        for b in await store.batches.with_status("validating", "in_progress", "finalizing",
                                                 "cancelling"):
            if b["input_file_id"] == file_id:
                raise InvalidRequest(f"The file is the input of {b['id']}, which is still "
                                     "running; cancel it or wait for it to end.",
                                     param="file_id")
        for s in await store.schedules.find(owner=None, all_owners=True):
            if s["input_file_id"] == file_id:
                raise InvalidRequest(f"The file is the input of the schedule {s['id']}; "
                                     "delete the schedule first.", param="file_id")

    async def delete(self, file_id: str) -> None:
        orphan = await self._store.files.delete(file_id)
        if orphan is not None:
            await asyncio.to_thread(self._files.remove, orphan)

    async def _upload(self, req: Request, owner: Owner) -> Response:
        upload = req.sink
        if not isinstance(upload, MultipartUpload):
            raise InvalidRequest("Upload the file as multipart/form-data.", param="file")
        try:
            purpose = upload.fields.get("purpose")
            if purpose not in _UPLOADABLE:
                raise InvalidRequest(f"'purpose' must be one of {', '.join(_UPLOADABLE)}.",
                                     param="purpose")
            now = time.time()
            expires = _expiry(upload.fields, now)
            await asyncio.to_thread(self._files.adopt, upload.path, upload.sha256)
        except BaseException:
            upload.discard()
            raise
        row = {"id": new_file_id(), "owner": owner.key_id, "filename": upload.filename or "",
               "purpose": purpose, "bytes": upload.size, "sha256": upload.sha256,
               "created_at": now, "expires_at": expires}
        await self._store.files.create(row)
        return Response.json(file_object(row))

    async def _list(self, req: Request, owner: Owner) -> Response:
        q = query(req)
        limit = page_limit(q, 10_000, 10_000)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be asc or desc.", param="order")
        after = None
        if q.get("after"):
            after = await self.visible(q["after"], owner)
        purpose = q.get("purpose")
        rows = await self._store.files.find(owner=owner.key_id, all_owners=owner.admin,
                                            purpose=purpose, after=after, limit=limit + 1,
                                            newest_first=order == "desc")
        now = time.time()
        data = [file_object(r) for r in rows[:limit]
                if r["expires_at"] is None or r["expires_at"] >= now]
        return Response.json({"object": "list", "data": data,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None,
                              "has_more": len(rows) > limit})


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=A-B`` (one range) as [start, end); None for no or another kind of range."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start, end = int(first), min(size, int(last) + 1) if last else size
    if start >= end:
        raise InvalidRequest("The requested range is outside the file.", param="range")
    return start, end


def _expiry(fields: dict[str, str], now: float) -> float | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("'expires_after[anchor]' must be created_at.",
                             param="expires_after.anchor")
    lo, hi = _EXPIRY
    if seconds is None or not seconds.isdigit() or not lo <= int(seconds) <= hi:
        raise InvalidRequest(f"'expires_after[seconds]' must be an integer from {lo} to {hi}.",
                             param="expires_after.seconds")
    return now + int(seconds)
