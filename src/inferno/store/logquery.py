"""The request log read a page at a time, filtered in the database (the dashboard).

Pages are keyset-paginated on ``(ts, request_id)`` newest first: the cursor is the last
row's pair, so page 1,000 costs what page 1 costs (no OFFSET). A key or model filter walks
its ``(key_id, ts)`` / ``(model, ts)`` index; other filters walk the ``ts`` index. Bodies
stay out of list pages and come with :meth:`RequestQuery.get`. :meth:`RequestQuery.recent`
reads the last hour back for the proxy's live statistics after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from inferno.store.models import request_log

_LIST_COLUMNS = tuple(c for c in request_log.columns
                      if c.name not in ("request_body", "response_body", "day"))
STATUS_CLASSES = ("2xx", "4xx", "5xx", "errors")


@dataclass(frozen=True, slots=True)
class LogFilter:
    key_id: str | None = None
    model: str | None = None
    node: str | None = None
    status: str | None = None  # one of STATUS_CLASSES
    since: float | None = None  # unix seconds


class RequestQuery:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def page(self, f: LogFilter, *, before: tuple[float, str] | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        c = request_log.c
        query = select(*_LIST_COLUMNS).order_by(c.ts.desc(), c.request_id.desc()).limit(limit)
        conds = []
        if f.key_id is not None:
            conds.append(c.key_id == f.key_id)
        if f.model is not None:
            conds.append(c.model == f.model)
        if f.node is not None:
            conds.append(c.node == f.node)
        if f.status == "2xx":
            conds.append(and_(c.status >= 200, c.status < 300))
        elif f.status == "4xx":
            conds.append(and_(c.status >= 400, c.status < 500))
        elif f.status == "5xx":
            conds.append(c.status >= 500)
        elif f.status == "errors":
            conds.append(c.status >= 400)
        if f.since is not None:
            conds.append(c.ts >= f.since)
        if before is not None:
            ts, rid = before
            conds.append(or_(c.ts < ts, and_(c.ts == ts, c.request_id < rid)))
        if conds:
            query = query.where(*conds)
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            names = [str(col.name) for col in _LIST_COLUMNS]
            return [dict(zip(names, r, strict=True)) for r in result.all()]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        query = select(request_log).where(request_log.c.request_id == request_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return {str(k): v for k, v in row.items()} if row is not None else None

    async def recent(self, since: float, until: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows with ``since < ts < until``, oldest first, without bodies:
        what the proxy's live statistics are rebuilt from after a restart."""
        c = request_log.c
        cols = (c.ts, c.model, c.node, c.status, c.prompt_tokens, c.completion_tokens,
                c.cost, c.cache_hit, c.ttft_ms)
        query = (select(*cols).where(c.ts > since, c.ts < until).order_by(c.ts)
                 .limit(limit))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        names = [str(col.name) for col in cols]
        return [dict(zip(names, r, strict=True)) for r in rows]
