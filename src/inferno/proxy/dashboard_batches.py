"""The dashboard's batches, read through the store (``store.batches``,
``store.batch_items``) without the batch component: a page of rows, one batch's details,
live progress; a cancel runs ``POST /v1/batches/{id}/cancel`` as the signed-in admin.

An open batch's counts come from its items (the row's totals are written when it is
finalised), as the Batch API itself reports them.
"""

from __future__ import annotations

from typing import Any

from inferno.core.errors import InvalidRequest
from inferno.store import Store

OPEN = ("validating", "in_progress", "finalizing", "cancelling")
_STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
           "cancelled")


class BatchesView:
    def __init__(self, store: Store | None) -> None:
        self._store = store

    async def page(self, status: str | None, after: str | None, limit: int,
                   names: dict[str, str]) -> list[dict[str, Any]]:
        """Newest first; ``names``: key id -> key name, for the owner column."""
        if self._store is None:
            return []
        anchor = None
        if after is not None:
            anchor = await self._store.batches.get(after)
            if anchor is None:
                raise InvalidRequest("'after' names no batch.", param="after")
        rows = await self._store.batches.find(owner=None, all_owners=True, after=anchor,
                                              limit=limit, status=status)
        return await self._shaped(rows, names)

    async def detail(self, batch_id: str, names: dict[str, str]) -> dict[str, Any] | None:
        if self._store is None:
            return None
        row = await self._store.batches.get(batch_id)
        if row is None:
            return None
        [out] = await self._shaped([row], names)
        errors = (row["errors"] or {}).get("data") if isinstance(row["errors"], dict) else None
        return {**out, "input_file_id": row["input_file_id"],
                "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
                "completion_window": row["completion_window"], "metadata": row["metadata"],
                "errors": errors or [], "prompt_tokens": int(row["prompt_tokens"]),
                "completion_tokens": int(row["completion_tokens"]),
                **{f"{s}_at": row[f"{s}_at"] for s in _STAMPS}}

    async def progress(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        if self._store is None:
            return []
        rows = [r for r in [await self._store.batches.get(b) for b in batch_ids]
                if r is not None]
        return [{k: r[k] for k in ("id", "status", "total", "completed", "failed")}
                for r in await self._shaped(rows, {})]

    async def _shaped(self, rows: list[dict[str, Any]],
                      names: dict[str, str]) -> list[dict[str, Any]]:
        assert self._store is not None
        live = await self._store.batch_items.counts_by_batch(
            [r["id"] for r in rows if r["status"] in OPEN])
        out = []
        for r in rows:
            items = live.get(r["id"])
            if items is not None:
                total, done, failed = (sum(items.values()), items.get("done", 0),
                                       items.get("failed", 0))
            else:
                total, done, failed = r["total"], r["completed"], r["failed"]
            out.append({"id": r["id"], "status": r["status"], "endpoint": r["endpoint"],
                        "created_at": r["created_at"], "expires_at": r["expires_at"],
                        "total": int(total), "completed": int(done), "failed": int(failed),
                        "owner": r["owner"], "owner_name": names.get(r["owner"] or "")})
        return out
