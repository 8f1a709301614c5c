"""A backend node's lifecycle: load, serve, register, drain.

States: ``loading`` (ops /health 503, API 503) -> ``ready`` -> ``draining`` (deregistered
from the proxy first, so no new requests arrive, then in-flight work finishes, then exit).

A node serves several models (:class:`~inferno.backend.models.LoadedModels`): those of
``model`` load at start; those of ``models_available`` when asked. Engines come from the
factory the caller passes (``wiring.build_engine``); whenever the loaded set changes the
node registers again, so the proxy's pool follows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry

from inferno import __version__
from inferno.api.node import NodeState, Registration, Vitals
from inferno.backend.api import BackendAPI
from inferno.backend.engines.base import AnyEngine
from inferno.backend.gpu import GpuProbe
from inferno.backend.metrics import BackendMetrics
from inferno.backend.model_admin import ModelAdmin
from inferno.backend.models import EngineFactory, LoadedModels
from inferno.backend.registration import RegistrationClient
from inferno.core.config import BackendSettings
from inferno.core.errors import EngineError
from inferno.net import HttpClient, HttpServer
from inferno.ops import OpsServer, RateMeter
from inferno.ops.tracing import tracing_from_env

log = logging.getLogger("inferno.backend")


class BackendNode:
    def __init__(self, settings: BackendSettings, engine: AnyEngine | None = None, *,
                 build_engine: EngineFactory | None = None, sweep_interval: float = 1.0,
                 load_wait: float = 300.0) -> None:
        """``engine``: the first model's engine, already built (optional); ``build_engine``
        builds one for a model ref, for the other models and for every reload."""
        self.settings = settings
        self.state: NodeState = "loading"
        self.node_id = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self._started = time.monotonic()
        self.models = LoadedModels(
            build_engine or _only(engine), list(settings.model),
            list(settings.models_available), keep_alive=settings.keep_alive,
            memory_budget=settings.memory_budget, sweep_interval=sweep_interval,
            first=engine, on_change=self._models_changed)
        registry = CollectorRegistry()
        self.metrics = BackendMetrics(registry)
        self.metrics.tracing = tracing_from_env("inferno-node")  # None unless OTEL_* say so
        token = settings.node_token.get_secret_value() if settings.node_token else None
        self.api = BackendAPI(self.models, self.metrics, lambda: self.state,
                              admin=ModelAdmin(self.models, token=token), load_wait=load_wait)
        self._tokens = RateMeter(lambda: float(self.models.stats().tokens_generated))
        self._gpu = GpuProbe()  # reports nothing on a machine without nvidia-smi
        self.server = HttpServer(self.api.handle)
        self.ops = OpsServer(health=lambda: self.state, telemetry=self.vitals, registry=registry)
        self._client = HttpClient()
        self._registration: RegistrationClient | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        # Ops first: a supervisor can watch /health say "loading" while the model loads.
        await self.ops.start(s.host, s.ops_port)
        await self.models.start()
        self.metrics.bind_engine(self.models.stats)
        self.metrics.model_loaded.set(1)
        await self.server.start(s.host, s.port)
        self.state = "ready"
        self._sampler = asyncio.create_task(self._sample_rates(), name="rate-sampler")
        if s.discovery_lb:
            self._registration = RegistrationClient(
                s.discovery_lb, self.registration, interval=s.heartbeat_interval,
                client=self._client,
                token=s.node_token.get_secret_value() if s.node_token else None)
            self._registration.start()
        log.info("node %s ready: model %s on %s:%d (ops %d)", self.node_id,
                 ", ".join(e.name for e in self.models.loaded()), s.host, self.server.port,
                 self.ops.port)

    @property
    def engine(self) -> AnyEngine:
        """The first model's engine (the one a single-model node serves)."""
        engine = self.models.first.engine
        if engine is None:
            raise EngineError(f"The model '{self.models.first.name}' is not loaded.")
        return engine

    def _models_changed(self) -> None:
        if self._registration is not None:
            self._registration.notify()

    def registration(self) -> Registration:
        """Built fresh for each heartbeat: the loaded models change at run time."""
        s = self.settings
        host = s.advertise_host or s.host
        info = self.models.first.info
        loaded = [n for e in self.models.loaded() for n in e.names]
        return Registration(
            id=self.node_id, address=f"{host}:{self.server.port}", metrics_port=self.ops.port,
            models=self.models.names(), loaded=loaded,
            available=[n for e in self.models.entries if e.state != "loaded"
                       for n in e.names],
            capacity=self.models.stats().capacity, lease_seconds=s.lease_seconds,
            price_per_mtok_input=info.price_per_mtok_input,
            price_per_mtok_output=info.price_per_mtok_output)

    async def drain(self) -> None:
        """Leave rotation first, then finish in-flight work, then stop."""
        if self.state == "draining":
            return
        self.state = "draining"
        log.info("node %s draining (%d in flight)", self.node_id, self.api.in_flight)
        if self._registration is not None:
            await self._registration.deregister()
        await self.server.stop(grace=self.settings.drain_timeout)
        if self._sampler is not None:
            self._sampler.cancel()
        await self.models.close()
        await self.ops.stop()
        await self._client.aclose()
        if self.metrics.tracing is not None:
            await asyncio.to_thread(self.metrics.tracing.shutdown)  # export what is batched
        log.info("node %s stopped", self.node_id)

    async def _sample_rates(self) -> None:
        while True:
            self._tokens.sample()
            if self._gpu.available:  # a subprocess every few seconds, in a worker thread
                self.metrics.set_gpus(await self._gpu.refresh())
            await asyncio.sleep(1.0)

    def vitals(self) -> dict[str, Any]:
        stats = self.models.stats()
        info = self.models.first.info
        # Extra vitals (Vitals allows them): what the model can do and what it costs.
        extra: dict[str, Any] = {
            "capabilities": sorted(info.capabilities), "engine": self.settings.engine,
            "price_per_mtok_input": info.price_per_mtok_input,
            "price_per_mtok_output": info.price_per_mtok_output,
            "gpus": [g.to_dict() for g in self._gpu.gpus],
            "gpu_layers": self.settings.gpu_layers}
        return Vitals(
            id=self.node_id, component="backend", version=__version__,
            state=self.state,
            uptime_s=round(time.monotonic() - self._started, 3),
            models=[e.name for e in self.models.loaded()], capacity=stats.capacity,
            in_flight=self.api.in_flight,
            queue_depth=stats.queued, tokens_per_second=round(self._tokens.rate(), 2),
            requests_total=self.api.requests_total, active_sequences=stats.active,
            context_length=info.context_length, tokens_generated=stats.tokens_generated,
            prompt_tokens_reused=stats.prompt_tokens_reused,
            prompt_tokens_computed=stats.prompt_tokens_computed,
            **extra,
        ).model_dump()


def _only(engine: AnyEngine | None) -> EngineFactory:
    """Without a factory the node serves the one engine it was given, and cannot reload."""
    def build(ref: str) -> AnyEngine:
        if engine is None:
            raise EngineError(f"This node cannot build an engine for '{ref}'.")
        return engine
    return build
