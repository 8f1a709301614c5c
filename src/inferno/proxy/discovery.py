"""How nodes enter and leave the pool: registration with leases, and static backends.

``POST /registration`` (ops port) adds a node or renews its lease; ``DELETE
/registration/{id}`` removes it at once (a draining node calls it before it stops taking
work). A node whose lease lapses is removed by the sweeper. Static backends from config
are probed with ``GET /v1/models`` and enter the pool through the same lease mechanism,
so a static node that stops answering also leaves rotation, and returns when it answers.

Most requests are renewals that repeat the node's last registration byte for byte (every
~10 s from each node: 100 a second from 1,000 nodes). Such a body, accepted within the last
``RECHECK`` seconds from a node still in the pool, skips parsing and the address checks
(a host name is resolved and checked again at least that often); the token and the id's
owner are checked on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import orjson
from pydantic import ValidationError

from inferno.api.node import Registration
from inferno.core.errors import InfernoError, NotFound
from inferno.core.validation import invalid_request
from inferno.net import HttpClient, Request, Response
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Pool
from inferno.proxy.security.registration_guard import (
    STATIC_PREFIX,
    RegistrationGuard,
    refuse_static,
)

log = logging.getLogger("inferno.proxy.discovery")
RECHECK = 60.0  # seconds an accepted registration body is trusted again unparsed


class RegistrationAPI:
    def __init__(self, pool: Pool, metrics: ProxyMetrics,
                 guard: RegistrationGuard | None = None) -> None:
        self._pool = pool
        self._metrics = metrics
        self._guard = guard  # node token, address allowlist, id ownership
        # Accepted bodies -> (registration, when checked); and each node id's last body.
        self._accepted: dict[bytes, tuple[Registration, float]] = {}
        self._body_of: dict[str, bytes] = {}

    async def post(self, req: Request) -> Response:
        now = time.monotonic()
        hit = self._accepted.get(req.body)
        if hit is not None and now - hit[1] < RECHECK \
                and self._pool.get(hit[0].id) is not None:
            reg = hit[0]
            if self._guard is not None:
                self._guard.check_unchanged(req, reg.id)
        else:
            reg = await self._check(req)
            self._remember(req.body, reg, now)
        current = self._pool.get(reg.id)
        # Static backends are the operator's (the guard refuses their ids before ownership).
        refuse_static(reg.id, static=current is not None and current.source == "static")
        known = current is not None
        node = self._pool.upsert(reg)
        if not known:
            self._metrics.registrations.labels("registered").inc()
            log.info("node %s registered at %s serving %s", reg.id, reg.address,
                     ", ".join(reg.models))
        return Response.json({"id": node.id, "lease_seconds": node.expires_at and
                              (reg.lease_seconds or 0), "state": node.state})

    async def _check(self, req: Request) -> Registration:
        try:
            reg = Registration.model_validate_json(req.body)
        except ValidationError as exc:
            raise invalid_request(exc) from exc
        if self._guard is not None:
            await self._guard.check(req, reg)
        return reg

    def _remember(self, body: bytes, reg: Registration, now: float) -> None:
        old = self._body_of.pop(reg.id, None)
        if old is not None:
            self._accepted.pop(old, None)
        if len(self._body_of) > 2 * len(self._pool.nodes()) + 1024:  # ids long gone
            live = {n.id for n in self._pool.nodes()}
            for gone in [i for i in self._body_of if i not in live]:
                self._accepted.pop(self._body_of.pop(gone), None)
        self._accepted[body] = (reg, now)
        self._body_of[reg.id] = body

    async def delete(self, req: Request) -> Response:
        node_id = req.path.rsplit("/", 1)[-1]
        if self._guard is not None:
            self._guard.check_delete(req, node_id)
        current = self._pool.get(node_id)
        refuse_static(node_id, static=current is not None and current.source == "static")
        if not self._pool.remove(node_id):
            raise NotFound(f"No node '{node_id}' is registered.")
        self._metrics.registrations.labels("deregistered").inc()
        log.info("node %s deregistered", node_id)
        return Response.json({"id": node_id, "deleted": True})


async def sweep_leases(pool: Pool, metrics: ProxyMetrics, interval: float = 0.25) -> None:
    while True:
        for node_id in pool.expire():
            metrics.registrations.labels("expired").inc()
            log.warning("node %s removed: its lease expired (no heartbeat)", node_id)
        await asyncio.sleep(interval)


async def probe_static(pool: Pool, client: HttpClient, backends: list[str],
                       interval: float = 1.0) -> None:
    """Keep static backends' leases alive while they answer ``GET /v1/models``."""
    while True:
        await asyncio.gather(*(_probe_one(pool, client, spec, interval * 3) for spec in backends))
        await asyncio.sleep(interval)


async def _probe_one(pool: Pool, client: HttpClient, spec: str, lease: float) -> None:
    address, _, ops = spec.partition("/")
    host, _, port = address.rpartition(":")
    try:
        resp = await client.request(host, int(port), "GET", "/v1/models",
                                    connect_timeout=1.0, header_timeout=2.0)
        body = await resp.read()
        models = [m["id"] for m in orjson.loads(body)["data"]] if resp.status == 200 else []
    except (InfernoError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return
    if not models:
        return
    pool.upsert(Registration(id=static_id(address), address=address,
                             metrics_port=int(ops or 6100), models=models,
                             lease_seconds=lease), source="static")


def static_id(address: str) -> str:
    """A static backend's node id: stable for its address, without revealing it (ids reach
    clients in ``x-inferno-backend``; addresses stay with operators, in ``/telemetry``)."""
    return STATIC_PREFIX + hashlib.blake2s(address.encode(), digest_size=4).hexdigest()
