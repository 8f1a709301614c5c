"""The dashboard's pages: each gathers its data from the source and renders one template.

Every page's figures are embedded in the HTML (one response per page load); the browser
script draws the charts from them and then follows the live stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2

from inferno.api.dashboard import DataSource, RequestFilter, Viewer
from inferno.core.errors import InvalidRequest
from inferno.ui.pages_fleet import FleetPages

Page = Callable[[dict[str, str], Viewer], Awaitable[str]]
PAGE_SIZE = 50
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_CURSOR = re.compile(r"(\d+(?:\.\d+)?)_([0-9a-zA-Z-]{1,40})")
_STATUS = ("2xx", "4xx", "5xx", "errors")
_SINCE = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


class Pages:
    def __init__(self, source: DataSource, env: jinja2.Environment) -> None:
        self._s = source
        self._env = env
        self._routes: dict[str, Page] = {
            "/ui": self.overview, "/ui/nodes": self.nodes, "/ui/autoscaler": self.autoscaler,
            "/ui/requests": self.requests, "/ui/usage": self.usage}
        self.fleet = FleetPages(source, self._render)
        self._routes.update({"/ui/models": self.fleet.models, "/ui/batches": self.fleet.batches})

    def route(self, path: str) -> Page | None:
        return self._routes.get(path)

    def _render(self, name: str, **ctx: Any) -> str:
        return self._env.get_template(name).render(page=name.removesuffix(".html"), **ctx)

    def login(self, error: str | None) -> str:
        return self._render("login.html", error=error)

    async def overview(self, q: dict[str, str], viewer: Viewer) -> str:
        s = self._s
        decisions = [{"id": f"g{d['id']}", "ts": d["at"], "kind": f"scale_{d['action']}",
                      "node": d["pool"], "count": 1,
                      "detail": f"{d['current']} → {d['desired']}: {d['reason']}"}
                     for d in await s.decisions(50) if d["action"] != "hold"]
        timeline = sorted(s.events(0, 100) + decisions, key=lambda e: e["ts"], reverse=True)
        return self._render("overview.html", summary=s.summary(60), nodes=s.nodes(),
                            timeline=timeline[:100],
                            data={"series": s.series(3600), "after": s.last_event_id})

    async def nodes(self, q: dict[str, str], viewer: Viewer) -> str:
        nodes = self._s.nodes()
        return self._render("nodes.html", nodes=nodes,
                            data={"nodes": nodes, "after": self._s.last_event_id})

    async def autoscaler(self, q: dict[str, str], viewer: Viewer) -> str:
        scale = await self._s.autoscaler(6 * 3600)
        return self._render("autoscaler.html", pools=sorted(scale["pools"]),
                            decisions=scale["decisions"], data={"pools": scale["pools"]})

    async def requests(self, q: dict[str, str], viewer: Viewer) -> str:
        status = q.get("status") or None
        if status is not None and status not in _STATUS:
            raise InvalidRequest(f"'status' must be one of {', '.join(_STATUS)}.",
                                 param="status")
        since = q.get("since") or None
        if since is not None and since not in _SINCE:
            raise InvalidRequest(f"'since' must be one of {', '.join(_SINCE)}.", param="since")
        before = None
        if q.get("before"):
            m = _CURSOR.fullmatch(q["before"])
            if m is None:
                raise InvalidRequest("'before' is not a valid cursor.", param="before")
            before = (float(m.group(1)), m.group(2))
        f = RequestFilter(key_id=q.get("key_id") or None, model=q.get("model") or None,
                          node=q.get("node") or None, status=status,
                          since=time.time() - _SINCE[since] if since else None)
        rows = await self._s.requests(f, before, PAGE_SIZE + 1)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        cursor = f"{rows[-1]['ts']!r}_{rows[-1]['request_id']}" if more else None
        keep = {k: v for k, v in q.items() if k != "before" and v}
        return self._render("requests.html", rows=rows, cursor=cursor, q=keep,
                            statuses=_STATUS, sinces=list(_SINCE), data={})

    async def usage(self, q: dict[str, str], viewer: Viewer,
                    created: dict[str, Any] | None = None, error: str | None = None) -> str:
        since = q.get("since") or time.strftime("%Y-%m-%d", time.gmtime(time.time() - 6 * 86400))
        if not _DAY.fullmatch(since):
            raise InvalidRequest("'since' must be a date YYYY-MM-DD.", param="since")
        rows = await self._s.usage(since)
        totals = {k: sum(r[k] for r in rows) for k in
                  ("requests", "prompt_tokens", "completion_tokens", "cost", "errors")}
        return self._render("usage.html", rows=rows, totals=totals, since=since,
                            keys=await self._s.keys(), created=created, error=error, data={})

    async def create_key(self, form: dict[str, str]) -> str:
        name = form.get("name", "").strip()
        scope = form.get("scope", "user")
        if not 0 < len(name) <= 200 or scope not in ("user", "admin"):
            return await self.usage({}, Viewer(None, True),
                                    error="A key needs a name (1-200 characters) and a scope.")
        created = await self._s.create_key(name, scope)
        return await self.usage({}, Viewer(None, True), created=created)
