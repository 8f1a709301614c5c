"""Active health checks: every node's ops ``/health`` and ``/telemetry``, on a timer.

``unhealthy_after`` failed checks in a row take a node out of rotation; it must then pass
``healthy_after`` checks in a row to come back. The same poll reads the node's reported
queue depth for the queue-depth scorer. Static nodes are watched by their own probe
(see discovery), whose ops port we may not know.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from inferno.core.errors import InfernoError
from inferno.net import HttpClient
from inferno.proxy.pool import Node, Pool

log = logging.getLogger("inferno.proxy.health")


class ActiveHealth:
    def __init__(self, pool: Pool, client: HttpClient, *, interval: float, timeout: float,
                 healthy_after: int, unhealthy_after: int,
                 on_change: Callable[[Node, bool], None] | None = None) -> None:
        self._on_change = on_change  # (node, healthy now): the self-healing timeline
        self._pool = pool
        self._client = client
        self._interval = interval
        self._timeout = timeout
        self._healthy_after = healthy_after
        self._unhealthy_after = unhealthy_after
        self._fails: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            nodes = [n for n in self._pool.snapshot.nodes if n.source != "static"]
            await asyncio.gather(*(self.check(n) for n in nodes))
            await asyncio.sleep(self._interval)

    async def check(self, node: Node) -> None:
        ok = await self._probe(node)
        if ok:
            self._fails.pop(node.id, None)
            if not node.healthy:
                node.passes += 1
                if node.passes >= self._healthy_after:
                    node.healthy = True
                    node.passes = 0
                    log.info("node %s back in rotation after %d passing checks", node.id,
                             self._healthy_after)
                    if self._on_change is not None:
                        self._on_change(node, True)
            return
        node.passes = 0
        fails = self._fails.get(node.id, 0) + 1
        self._fails[node.id] = fails
        if node.healthy and fails >= self._unhealthy_after:
            node.healthy = False
            log.warning("node %s out of rotation: %d failed health checks", node.id, fails)
            if self._on_change is not None:
                self._on_change(node, False)

    async def _probe(self, node: Node) -> bool:
        try:
            resp = await self._client.request(node.host, node.ops_port, "GET", "/health",
                                              connect_timeout=self._timeout,
                                              header_timeout=self._timeout)
            await resp.read()
            if resp.status != 200:
                return False
            tele = await self._client.request(node.host, node.ops_port, "GET", "/telemetry",
                                              connect_timeout=self._timeout,
                                              header_timeout=self._timeout)
            data = orjson.loads(await tele.read())
            if isinstance(data, dict):
                node.queue_depth = int(data.get("queue_depth") or 0)
            return True
        except (InfernoError, orjson.JSONDecodeError, ValueError, TypeError):
            return False
