"""The Models and Batches pages, and their forms (deploy, cancel).

Like the other pages, each is one HTML response with its rows inside; the Batches page
then follows its open batches' progress on the live stream, and loads a batch's details
on click.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from inferno.api.dashboard import DataSource, Viewer
from inferno.core.errors import InvalidRequest

BATCH_PAGE = 50
BATCH_STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired",
                  "cancelling", "cancelled")
OPEN = ("validating", "in_progress", "finalizing", "cancelling")
OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[^\s/][^\s]{0,255}")  # a model name (may hold one org/ slash)
Render = Callable[..., str]


class FleetPages:
    def __init__(self, source: DataSource, render: Render) -> None:
        self._s = source
        self._render = render

    async def models(self, q: dict[str, str], viewer: Viewer,
                     result: dict[str, Any] | None = None, error: str | None = None) -> str:
        rows = await self._s.models()
        nodes = sorted({n for r in rows for n in r["nodes"]})
        return self._render("models.html", rows=rows, nodes=nodes, result=result,
                            error=error, data={})

    async def deploy(self, form: dict[str, str], viewer: Viewer) -> str:
        model = form.get("model", "").strip()
        replace = form.get("replace", "").strip()
        node = form.get("node", "").strip() or None
        if not (_NAME.fullmatch(model) and _NAME.fullmatch(replace)):
            return await self.models({}, viewer, error="A deploy needs the new model and "
                                                       "the one it replaces.")
        result = await self._s.deploy_model(viewer, model, replace, node)
        return await self.models({}, viewer, result={"model": model, "replace": replace,
                                                     "data": result.get("data", [])})

    async def batches(self, q: dict[str, str], viewer: Viewer,
                      error: str | None = None) -> str:
        status = q.get("status") or None
        if status is not None and status not in BATCH_STATUSES:
            raise InvalidRequest(f"'status' must be one of {', '.join(BATCH_STATUSES)}.",
                                 param="status")
        after = q.get("after") or None
        if after is not None and not OBJECT_ID.fullmatch(after):
            raise InvalidRequest("'after' is not a batch id.", param="after")
        rows = await self._s.batches(status, after, BATCH_PAGE + 1)
        more = len(rows) > BATCH_PAGE
        rows = rows[:BATCH_PAGE]
        return self._render("batches.html", rows=rows, status=status,
                            statuses=BATCH_STATUSES, error=error,
                            older=rows[-1]["id"] if more else None,
                            data={"open": [r["id"] for r in rows if r["status"] in OPEN]})
