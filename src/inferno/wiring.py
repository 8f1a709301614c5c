"""Composition: the only module that turns settings into concrete engines and services.

Engines are registered in one table. Heavy engine modules are imported only when chosen,
so ``inferno proxy`` never loads llama.cpp.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from inferno.backend.engines.base import AnyEngine, Engine
from inferno.batch.types import Answer, Owner
from inferno.core.config import BackendSettings, BatchSettings, ProxySettings
from inferno.core.errors import ConfigError
from inferno.ops import lifeline

if TYPE_CHECKING:
    from inferno.proxy.board import Board
    from inferno.proxy.gateway import Gateway
    from inferno.proxy.security.guard import Limiter
    from inferno.proxy.security.keys import Principal

log = logging.getLogger("inferno")


def _fake(s: BackendSettings, ref: str, served: str | None) -> Engine:
    from inferno.backend.engines.fake import FakeEngine

    return FakeEngine(model_id=served or ref, n_ctx=s.n_ctx, parallel=s.parallel,
                      token_delay=s.fake_token_delay)


def _llamacpp(s: BackendSettings, ref: str, served: str | None) -> Engine:
    from inferno.backend.engines.llamacpp import LlamaCppEngine
    from inferno.models.catalog import resolve_model

    model = resolve_model(ref)
    return LlamaCppEngine(str(model.path), model_id=served or model.id, n_ctx=s.n_ctx,
                          n_threads=s.threads, n_parallel=s.parallel,
                          aliases=() if served else model.aliases,
                          quantize=s.quantize, data_dir=s.data_dir,
                          prefix_cache=s.prefix_cache,
                          prefill_hold_ms=s.prefill_hold_ms, gpu_layers=s.gpu_layers)


def _onnx(s: BackendSettings, ref: str, served: str | None) -> AnyEngine:
    from inferno.backend.engines.onnx import OnnxEngine
    from inferno.models.catalog import resolve_model

    model = resolve_model(ref)
    return OnnxEngine(model.path, model_id=served or model.id, threads=s.threads,
                      batch_size=s.embed_batch_size, batch_wait=s.embed_batch_wait,
                      data_dir=s.data_dir, aliases=() if served else model.aliases)


def _remote_args(s: BackendSettings, ref: str, served: str | None,
                 default_url: str) -> dict[str, Any]:
    """What both remote engines take; the API key is resolved here, never logged."""
    key: str | None = None
    if s.api_key_env:
        key = os.environ.get(s.api_key_env)
        if not key:
            raise ConfigError(f"the environment variable {s.api_key_env} named by "
                              "api_key_env is not set")
    elif s.api_key is not None:
        key = s.api_key.get_secret_value()
    # remote_model names the provider's model for the first ref; the others are their own.
    remote = (s.remote_model or ref) if ref == s.model[0] else ref
    return {"base_url": s.remote_url or default_url, "model_id": served or ref,
            "remote_model": remote, "api_key": key, "parallel": s.parallel,
            "timeout": s.remote_timeout, "context_length": s.n_ctx,
            "price_per_mtok_input": s.price_per_mtok_input,
            "price_per_mtok_output": s.price_per_mtok_output}


def _openai(s: BackendSettings, ref: str, served: str | None) -> AnyEngine:
    from inferno.backend.engines.remote_openai import RemoteOpenAIEngine

    return RemoteOpenAIEngine(**_remote_args(s, ref, served, "https://api.openai.com/v1"))


def _gemini(s: BackendSettings, ref: str, served: str | None) -> AnyEngine:
    from inferno.backend.engines.gemini import GeminiEngine

    return GeminiEngine(**_remote_args(
        s, ref, served, "https://generativelanguage.googleapis.com/v1beta"))


ENGINES: dict[str, Callable[[BackendSettings, str, str | None], AnyEngine]] = {
    "fake": _fake,
    "llamacpp": _llamacpp,
    "onnx": _onnx,
    "openai": _openai,
    "gemini": _gemini,
}


def build_engine(settings: BackendSettings, ref: str | None = None) -> AnyEngine:
    """The engine (not yet loaded) for one model ref of the node; the first model's by
    default. ``served_name`` names the first model only."""
    first = settings.model[0]
    ref = first if ref is None else ref
    return ENGINES[settings.engine](settings, ref,
                                    settings.served_name if ref == first else None)


class Service(Protocol):
    async def start(self) -> None: ...

    async def drain(self) -> None: ...


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def run_service(factory: Callable[[], Service]) -> None:
    """Run a service on uvloop until SIGTERM/SIGINT, then drain it and return."""
    import uvloop

    async def main() -> None:
        service = factory()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Started by `inferno serve` (or the local provider): end when it ends, even by
        # SIGKILL, instead of living on as an orphan that holds ports and a registration.
        lifeline.hold(lambda: loop.call_soon_threadsafe(stop.set))
        started: Awaitable[None] = service.start()
        start_task = asyncio.ensure_future(started)
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if start_task.done():
            start_task.result()  # re-raise a start-up failure
            # Everything built at start-up (modules, settings, SQLAlchemy, pydantic) lives
            # for good: freezing it keeps full GC passes off it, which otherwise stall the
            # event loop for tens of ms every few seconds under load (bench/gateway).
            gc.collect()
            gc.freeze()
            await stop_task
        else:
            start_task.cancel()
            await asyncio.gather(start_task, return_exceptions=True)
        await service.drain()

    uvloop.run(main())


def build_proxy(settings: ProxySettings, batch: BatchSettings | None = None, *,
                log_level: str = "info") -> Service:
    """The proxy as configured: one gateway in this process, or a supervisor of
    ``workers`` gateway processes on one port (proxy/workers.py)."""
    from inferno.proxy.worker import worker_count
    from inferno.proxy.workers import ProxyWorkers

    count = worker_count(settings.workers)
    if count == 1:
        return build_gateway(settings, batch)
    command = [sys.executable, "-c", "from inferno.wiring import proxy_worker_main; "
               "proxy_worker_main()"]
    return ProxyWorkers(settings, batch, count, command=command, log_level=log_level)


def proxy_worker_main() -> None:
    """One worker of ``inferno proxy --workers N``, started by the supervisor with its
    spec on stdin."""
    import pickle

    from inferno.proxy.board import Board
    from inferno.proxy.security.ratelimit_shm import SharedLimiter
    from inferno.proxy.worker import WorkerService, WorkerSpec

    spec = pickle.load(sys.stdin.buffer)  # from our supervisor, through a pipe
    assert isinstance(spec, WorkerSpec)
    configure_logging(spec.log_level)
    limiter = SharedLimiter(spec.limits_fd) if spec.limits_fd is not None else None
    try:
        run_service(lambda: WorkerService(
            spec, build_gateway(spec.settings, spec.batch, limiter=limiter,
                                board=Board(spec.board_fd, spec.index))))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from exc


def build_gateway(settings: ProxySettings, batch: BatchSettings | None = None, *,
                  limiter: Limiter | None = None, board: Board | None = None) -> Gateway:
    """The proxy, with the Batch and Files API mounted on it (when enabled and the proxy
    has a database): its routes on the API port, its workers dispatching through the
    proxy's own pipeline as each batch's owner, at background priority."""
    from inferno.batch.service import BatchService
    from inferno.proxy.gateway import Gateway

    batch = batch if batch is not None else BatchSettings()
    on = batch.enabled
    gw = Gateway(settings, max_upload_size=batch.files_max_size if on else 0,
                 limiter=limiter, board=board)
    store = gw.security.store
    if not on or store is None:
        return gw
    service = BatchService(store, batch, data_dir=settings.data_dir,
                           identify=lambda req: _owner(gw.security.auth.authenticate(req)),
                           lookup=lambda key_id: _lookup(gw, key_id),
                           dispatch=lambda owner, path, body: _dispatch(gw, owner, path, body),
                           registry=gw.metrics.registry, audit=gw.security.audit.record)
    gw.api.mount(service)
    gw.attach(service)
    return gw


def _owner(principal: Principal) -> Owner:
    return Owner(principal.key_id, principal.is_admin, principal.models)


def _lookup(gw: Gateway, key_id: str | None) -> Owner | None:
    if key_id is None:
        return Owner(None, admin=True)
    principal = gw.security.keys.principal(key_id)
    return _owner(principal) if principal is not None else None


async def _dispatch(gw: Gateway, owner: str | None, path: str, body: bytes) -> Answer:
    from inferno.core.errors import AuthenticationError, InfernoError
    from inferno.proxy.security.keys import ANONYMOUS

    principal = ANONYMOUS if owner is None else gw.security.keys.principal(owner)
    try:
        if principal is None:
            raise AuthenticationError("The batch owner's API key no longer exists.")
        resp = await gw.api.dispatch(principal, path, body)
    except InfernoError as exc:
        return Answer(exc.status_code, exc.to_json(), retry_after=exc.retry_after)
    headers = dict(resp.headers or [])
    retry = headers.get("retry-after", "")
    return Answer(resp.status, resp.body, headers.get("x-request-id", ""),
                  float(retry) if retry.isdigit() else None)
