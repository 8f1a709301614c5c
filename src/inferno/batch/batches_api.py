"""``/v1/batches``: create, retrieve, list, cancel; ``/v1/batches/schedules``: cron schedules.

A key sees only its own batches (others' are "not found"); an admin key sees all.
``Idempotency-Key`` on create: a retried create with the same key returns the same batch.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from inferno.batch.files_api import FilesAPI, page_limit, query
from inferno.batch.lifecycle import (
    batch_object,
    check_endpoint,
    check_metadata,
    create_batch,
    window_seconds,
)
from inferno.batch.supervisor import next_run
from inferno.batch.types import Owner
from inferno.core.errors import InvalidRequest, MethodNotAllowed, NotFound
from inferno.core.validation import json_object
from inferno.net import Request, Response
from inferno.store import Store
from inferno.store.audit import AuditEvent


class BatchesAPI:
    def __init__(self, store: Store, files: FilesAPI, wake: Callable[[], None],
                 audit: Callable[[AuditEvent], None] = lambda event: None) -> None:
        self._store = store
        self._files = files
        self._wake = wake  # the supervisor: a new batch or a cancel needs it
        self._audit = audit  # creates and cancels go to the audit trail, off this path

    async def handle(self, req: Request, owner: Owner) -> Response:
        parts = req.path.rstrip("/").split("/")[3:]  # after /v1/batches
        if parts[:1] == ["schedules"]:
            return await self._schedules(req, owner, parts[1:])
        if not parts:
            if req.method == "POST":
                return await self._create(req, owner)
            if req.method == "GET":
                return await self._list(req, owner)
            raise MethodNotAllowed(f"{req.method} is not allowed on /v1/batches.")
        row = await self._visible(parts[0], owner)
        if len(parts) == 1 and req.method == "GET":
            return Response.json(await self._object(row))
        if parts[1:] == ["cancel"] and req.method == "POST":
            self._audit(AuditEvent("batch.cancel", row["id"], owner.key_id or "local",
                                   "ok" if row["status"] in ("validating", "in_progress",
                                                             "cancelling")
                                   else f"refused: {row['status']}", req.header("x-request-id")))
            return await self._cancel(row)
        raise NotFound(f"Unknown route {req.method} {req.path}.")

    async def _visible(self, batch_id: str, owner: Owner) -> dict[str, Any]:
        row = await self._store.batches.get(batch_id)
        if row is None or not owner.sees(row["owner"]):
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return row

    async def _object(self, row: dict[str, Any]) -> dict[str, Any]:
        return batch_object(row, await self._store.batch_items.counts(row["id"]))

    async def _template(self, data: dict[str, Any], owner: Owner) -> dict[str, Any]:
        file_id = data.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequest("Missing required parameter: 'input_file_id'.",
                                 param="input_file_id")
        file = await self._files.visible(file_id, owner)
        if file["purpose"] != "batch":
            raise InvalidRequest("The input file must have been uploaded with purpose 'batch'.",
                                 param="input_file_id")
        window = data.get("completion_window", "24h")
        window_seconds(window)
        return {"input_file_id": file_id, "endpoint": check_endpoint(data.get("endpoint")),
                "completion_window": window, "metadata": check_metadata(data.get("metadata"))}

    async def _create(self, req: Request, owner: Owner) -> Response:
        template = await self._template(json_object(req.body), owner)
        key = req.header("idempotency-key")
        if key is not None and not 0 < len(key) <= 200:
            raise InvalidRequest("'Idempotency-Key' must be 1-200 characters.",
                                 param="Idempotency-Key")
        row = await create_batch(self._store, owner=owner.key_id, **template,
                                 idempotency=f"{owner.key_id}:{key}" if key else None)
        self._audit(AuditEvent("batch.create", row["id"], owner.key_id or "local", "ok",
                               req.header("x-request-id"),
                               {"endpoint": template["endpoint"],
                                "input_file_id": template["input_file_id"],
                                "completion_window": template["completion_window"]}))
        self._wake()
        return Response.json(await self._object(row))

    async def _list(self, req: Request, owner: Owner) -> Response:
        q = query(req)
        limit = page_limit(q, 20, 100)
        after = await self._visible(q["after"], owner) if q.get("after") else None
        rows = await self._store.batches.find(owner=owner.key_id, all_owners=owner.admin,
                                              after=after, limit=limit + 1)
        counts = await self._store.batch_items.counts_by_batch([r["id"] for r in rows[:limit]])
        data = [batch_object(r, counts.get(r["id"])) for r in rows[:limit]]
        return Response.json({"object": "list", "data": data,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None,
                              "has_more": len(rows) > limit})

    async def _cancel(self, row: dict[str, Any]) -> Response:
        store = self._store
        if row["status"] not in ("validating", "in_progress", "cancelling"):
            raise InvalidRequest(f"Cannot cancel a batch with status {row['status']}.")
        await store.batches.update(row["id"], when=("validating", "in_progress"),
                                   status="cancelling", cancelling_at=time.time())
        await store.batch_items.close_open(row["id"], "cancelled")
        self._wake()
        fresh = await store.batches.get(row["id"])
        return Response.json(await self._object(fresh or row))

    async def _schedules(self, req: Request, owner: Owner, parts: list[str]) -> Response:
        store = self._store.schedules
        if not parts:
            if req.method == "GET":
                rows = await store.find(owner=owner.key_id, all_owners=owner.admin)
                return Response.json({"object": "list", "data": [_schedule(r) for r in rows]})
            if req.method != "POST":
                raise MethodNotAllowed(f"{req.method} is not allowed here.")
            data = json_object(req.body)
            cron = data.get("cron")
            try:
                first = next_run(str(cron), time.time())
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidRequest("'cron' must be a cron expression such as '0 2 * * *'.",
                                     param="cron") from exc
            new = {"id": f"bsched_{secrets.token_hex(8)}", "owner": owner.key_id,
                   "cron": cron, **await self._template(data, owner), "paused": False,
                   "next_run_at": first, "last_run_at": None, "last_batch_id": None,
                   "created_at": time.time()}
            await store.create(new)
            return Response.json(_schedule(new))
        row = await store.get(parts[0])
        if row is None or not owner.sees(row["owner"]):
            raise NotFound(f"No such schedule: {parts[0]}", param="schedule_id")
        if len(parts) == 1 and req.method == "DELETE":
            await store.delete(row["id"])
            return Response.json({"id": row["id"], "object": "batch.schedule", "deleted": True})
        if len(parts) == 2 and parts[1] in ("pause", "resume") and req.method == "POST":
            paused = parts[1] == "pause"
            values: dict[str, Any] = {"paused": paused}
            if not paused:  # resumed: the next run from now, not the runs missed meanwhile
                values["next_run_at"] = next_run(row["cron"], time.time())
            await store.update(row["id"], **values)
            return Response.json(_schedule({**row, **values}))
        if len(parts) == 1 and req.method == "GET":
            return Response.json(_schedule(row))
        raise NotFound(f"Unknown route {req.method} {req.path}.")


def _schedule(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "batch.schedule", "cron": row["cron"],
            "endpoint": row["endpoint"], "input_file_id": row["input_file_id"],
            "completion_window": row["completion_window"], "metadata": row["metadata"],
            "paused": bool(row["paused"]), "next_run_at": int(row["next_run_at"]),
            "last_run_at": int(row["last_run_at"]) if row["last_run_at"] else None,
            "last_batch_id": row["last_batch_id"], "created_at": int(row["created_at"])}
