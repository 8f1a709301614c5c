"""Active health checks: a node's ops ``/health`` and ``/telemetry``, when evidence is stale.

A node that renewed its lease or answered a request well recently is known to be alive
(``Node.evidence_at``), so it is not probed: the probes' cost follows the nodes that
carry no evidence, not the size of the pool. Evidence is stale once it is older than one
check interval plus 4/3 of the node's observed renewal gap (renewals are jittered over
75-100 % of their period, so a node renewing on time is never probed between renewals).
A node that stops renewing and answering is then probed every interval, and
``unhealthy_after`` failed checks in a row take it out of rotation, well before its lease
lapses when the lease spans a few heartbeats (the defaults: renewals every 7.5-10 s, a
30 s lease: out of rotation within about 16 s). Until its second renewal shows its
heartbeat, a new node is probed as any node without evidence. An unhealthy node is
probed every interval and must pass ``healthy_after`` checks in a row to come back.

Nodes that carried traffic since the last tick also have their ``/telemetry`` read (their
reported queue depth feeds the queue-depth and offload scorers); an idle node's stays as
last read. Static nodes are watched by their own probe (see discovery), whose ops port we
may not know.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from inferno.core.errors import InfernoError
from inferno.net import HttpClient
from inferno.proxy.pool import Node, Pool

log = logging.getLogger("inferno.proxy.health")


class ActiveHealth:
    def __init__(self, pool: Pool, client: HttpClient, *, interval: float, timeout: float,
                 healthy_after: int, unhealthy_after: int,
                 on_change: Callable[[Node, bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_change = on_change  # (node, healthy now): the self-healing timeline
        self._pool = pool
        self._client = client
        self._interval = interval
        self._timeout = timeout
        self._healthy_after = healthy_after
        self._unhealthy_after = unhealthy_after
        self._clock = clock
        self._fails: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # node id -> its request count at the last tick
        self.probes = 0  # health checks sent (for tests and /router/state readers)

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._interval)

    def stale(self, node: Node, now: float) -> bool:
        """Whether the node has carried no evidence of health lately (so needs a probe)."""
        return now - node.evidence_at > self._interval + node.renew_gap * 4 / 3

    async def tick(self) -> None:
        """One round: probe the nodes without fresh evidence, read the busy ones' load."""
        now = self._clock()
        probe: list[Node] = []
        load: list[Node] = []
        seen = self._seen
        fails = self._fails
        for node in self._pool.snapshot.nodes:
            if node.source == "static":
                continue
            if not node.healthy or self.stale(node, now):
                probe.append(node)
            else:
                if fails:
                    fails.pop(node.id, None)  # fresh evidence ends a streak of failures
                if node.outstanding or seen.get(node.id, 0) != node.requests:
                    load.append(node)
            seen[node.id] = node.requests
        if len(seen) > 2 * len(self._pool.snapshot.nodes) + 16:
            live = {n.id for n in self._pool.snapshot.nodes}
            self._seen = {k: v for k, v in seen.items() if k in live}
        if probe or load:
            await asyncio.gather(*(self.check(n) for n in probe),
                                 *(self._telemetry(n) for n in load))

    async def check(self, node: Node) -> None:
        self.probes += 1
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
        except InfernoError:
            return False
        return await self._telemetry(node)

    async def _telemetry(self, node: Node) -> bool:
        try:
            tele = await self._client.request(node.host, node.ops_port, "GET", "/telemetry",
                                              connect_timeout=self._timeout,
                                              header_timeout=self._timeout)
            data = orjson.loads(await tele.read())
            if isinstance(data, dict):
                node.queue_depth = int(data.get("queue_depth") or 0)
            return True
        except (InfernoError, orjson.JSONDecodeError, ValueError, TypeError):
            return False
