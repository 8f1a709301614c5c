"""The proxy's lifecycle: wire the pool, routing and forwarding; serve; drain on stop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry

from inferno import __version__
from inferno.api.node import Vitals
from inferno.core.config import ProxySettings
from inferno.net import HttpClient, HttpServer
from inferno.ops import OpsServer
from inferno.proxy.app import ProxyAPI
from inferno.proxy.discovery import RegistrationAPI, probe_static, sweep_leases
from inferno.proxy.forward import Forwarder
from inferno.proxy.metrics import ProxyMetrics
from inferno.proxy.pool import Pool
from inferno.proxy.routing import make_picker

log = logging.getLogger("inferno.proxy")


class Gateway:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.state = "loading"
        self.id = f"proxy-{socket.gethostname()}-{os.getpid()}"
        self._started = time.monotonic()
        registry = CollectorRegistry()
        self.metrics = ProxyMetrics(registry)
        self.pool = Pool(default_lease=settings.default_lease)
        self.metrics.bind_pool(
            lambda s: sum(1 for n in self.pool.snapshot.nodes if n.state == s))
        self.client = HttpClient()
        forwarder = Forwarder(
            self.client, self.metrics, connect_timeout=settings.connect_timeout,
            response_timeout=settings.response_timeout,
            stream_idle_timeout=settings.stream_idle_timeout, max_attempts=settings.max_attempts)
        self.api = ProxyAPI(self.pool, make_picker(settings.routing), forwarder, self.metrics)
        self.server = HttpServer(self.api.handle, max_body_size=settings.max_body_size)
        registration = RegistrationAPI(self.pool, self.metrics)
        self.ops = OpsServer(
            health=lambda: self.state, telemetry=self.vitals, registry=registry,
            routes={("POST", "/registration"): registration.post,
                    ("DELETE", "/registration/*"): registration.delete})
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        await self.ops.start(s.host, s.ops_port)
        await self.server.start(s.host, s.port)
        self._tasks.append(asyncio.create_task(sweep_leases(self.pool, self.metrics)))
        if s.backends:
            self._tasks.append(asyncio.create_task(probe_static(self.pool, self.client,
                                                                list(s.backends))))
        self.state = "ready"
        log.info("proxy ready on http://%s:%d/v1 (ops %d)", s.host, self.server.port,
                 self.ops.port)

    async def drain(self) -> None:
        if self.state == "draining":
            return
        self.state = "draining"  # /health says 503 first, so a load balancer moves away
        self.api.accepting = False
        await self.server.stop(grace=self.settings.drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
        await self.ops.stop()

    def vitals(self) -> dict[str, Any]:
        snap = self.pool.snapshot
        return Vitals(
            id=self.id, component="proxy", version=__version__,
            state=self.state,  # type: ignore[arg-type]
            uptime_s=round(time.monotonic() - self._started, 3), models=sorted(snap.models),
            capacity=sum(n.capacity for n in snap.nodes), in_flight=self.api.in_flight,
            requests_total=self.api.requests_total,
            nodes=[{"id": n.id, "address": n.address, "state": n.state,
                    "models": sorted(n.models), "outstanding": n.outstanding,
                    "requests": n.requests, "failures": n.failures,
                    "last_error": n.last_error} for n in snap.nodes],
        ).model_dump()
