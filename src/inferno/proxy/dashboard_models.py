"""The dashboard's models: what the pool knows (which nodes list a model, which have it
loaded, which may load it), the last hour per model from the live statistics (rebuilt
from the request log when the proxy starts), and the newest deploy the audit trail
recorded for it. Nothing is read from the model store itself: the nodes report what they
hold when they register.
"""

from __future__ import annotations

import time
from typing import Any

from inferno.proxy.observe import LiveStats
from inferno.proxy.pool import Node, Pool
from inferno.store import Store

WINDOW_S = 3600
_DEPLOYS = 200  # the newest deploys looked through for each model's last one


def _loaded(n: Node) -> frozenset[str]:
    # A node that does not load models at run time serves every model it lists, loaded.
    return n.loaded if n.loaded or n.available else n.models


class ModelsView:
    def __init__(self, pool: Pool, stats: LiveStats, store: Store | None) -> None:
        self._pool = pool
        self._stats = stats
        self._store = store

    async def rows(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        nodes = self._pool.snapshot.nodes
        names = sorted({m for n in nodes for m in n.models | n.loaded | n.available})
        deploys = await self._deploys()
        out = []
        for name in names:
            serving = [n for n in nodes
                       if name in n.models or name in n.loaded or name in n.available]
            loaded = [n.id for n in serving if name in _loaded(n)]
            requests, p95 = self._stats.model_hour(name)
            out.append({
                "name": name, "nodes": [n.id for n in serving],
                "healthy": sum(1 for n in serving if n.state == "ready" and n.routable(now)),
                "loaded_on": loaded,
                "available_on": [n.id for n in serving if n.id not in loaded],
                "requests": requests, "rps": round(requests / WINDOW_S, 4),
                "ttft_p95_ms": None if p95 is None else round(p95 * 1000, 1),
                "last_deploy": deploys.get(name)})
        return out

    async def _deploys(self) -> dict[str, dict[str, Any]]:
        """Model name -> its newest deploy: as the new version (the target, and the name
        before its tag, the alias a versioned model is served under) or as the one
        replaced."""
        if self._store is None:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for r in await self._store.audit.find(action="model.deploy", limit=_DEPLOYS):
            detail = r["detail"] if isinstance(r["detail"], dict) else {}
            replace = detail.get("replace")
            row = {"ts": r["ts"], "actor": r["actor"], "model": r["target"],
                   "replace": replace if isinstance(replace, str) else None,
                   "outcome": r["outcome"]}
            for name in (r["target"], r["target"].split(":")[0], row["replace"]):
                if name:
                    found.setdefault(name, row)
        return found
