"""The contract between the governator loop and whatever runs nodes.

A provider owns node lifecycle for the pools it is given: ``scale(pool, desired)``
converges the pool's node count (starting nodes, or draining them through the proxy
before stopping), ``reconcile()`` is called every tick to notice readiness and crashes,
and ``endpoints()`` says where each node's ops server answers so signals can be read.
A failure raises :class:`~inferno.core.errors.ProviderError`; the loop records it as the
decision's outcome and retries later with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from inferno.core.errors import InfernoError
from inferno.governator.signals import Endpoint
from inferno.net import HttpClient, resolve_all

log = logging.getLogger("inferno.governator")


@dataclass(frozen=True, slots=True)
class NodeTemplate:
    """How to run one node of a pool (model and engine settings)."""

    model: str
    engine: str = "llamacpp"
    threads: int = 1
    parallel: int = 4
    n_ctx: int = 4096
    max_replicas: int = 4


class Provider(Protocol):
    async def start(self) -> None: ...

    def endpoints(self) -> list[Endpoint]: ...

    async def reconcile(self, now: float) -> list[str]:
        """Notice ready, crashed and stopped nodes; returns events worth logging."""
        ...

    async def scale(self, pool: str, desired: int) -> str:
        """Converge ``pool`` towards ``desired`` nodes; returns what was done."""
        ...

    async def close(self) -> None:
        """Drain and stop every node this provider started."""
        ...


class ProxyDrainer:
    """Removes a node from the proxy's rotation (``DELETE /registration/{id}``) at every
    proxy replica the ops name resolves to (a headless Service); done only when all did."""

    def __init__(self, client: HttpClient, host: str, port: int) -> None:
        self._client = client
        self._host = host
        self._port = port

    async def deregister(self, node_id: str) -> bool:
        try:
            addresses = await resolve_all(self._host, self._port, within=1.0)
        except InfernoError as exc:
            log.warning("could not deregister %s at the proxy: %s", node_id, exc.message)
            return False
        done = await asyncio.gather(*(self._delete(a, node_id) for a in addresses))
        return all(done)

    async def _delete(self, address: tuple[str, int], node_id: str) -> bool:
        try:
            resp = await self._client.request(*address, "DELETE", f"/registration/{node_id}",
                                              connect_timeout=1.0, header_timeout=2.0)
            await resp.read()
        except InfernoError as exc:
            log.warning("could not deregister %s at the proxy (%s:%d): %s", node_id,
                        *address, exc.message)
            return False
        return resp.status in (200, 404)  # 404: already gone, which is what we wanted
