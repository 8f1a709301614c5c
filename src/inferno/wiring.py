"""Composition: the only module that turns settings into concrete engines and services.

Engines are registered in one table. Heavy engine modules are imported only when chosen,
so ``inferno proxy`` never loads llama.cpp.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

from inferno.backend.engines.base import Engine
from inferno.core.config import BackendSettings

log = logging.getLogger("inferno")


def _fake(s: BackendSettings) -> Engine:
    from inferno.backend.engines.fake import FakeEngine

    return FakeEngine(model_id=s.served_name or s.model, n_ctx=s.n_ctx, parallel=s.parallel,
                      token_delay=s.fake_token_delay)


def _llamacpp(s: BackendSettings) -> Engine:
    from inferno.backend.engines.llamacpp import LlamaCppEngine
    from inferno.models.catalog import resolve_model

    model = resolve_model(s.model)
    return LlamaCppEngine(str(model.path), model_id=s.served_name or model.id, n_ctx=s.n_ctx,
                          n_threads=s.threads, n_parallel=s.parallel,
                          aliases=() if s.served_name else model.aliases)


ENGINES: dict[str, Callable[[BackendSettings], Engine]] = {
    "fake": _fake,
    "llamacpp": _llamacpp,
}


def build_engine(settings: BackendSettings) -> Engine:
    return ENGINES[settings.engine](settings)


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
        started: Awaitable[None] = service.start()
        start_task = asyncio.ensure_future(started)
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if start_task.done():
            start_task.result()  # re-raise a start-up failure
            await stop_task
        else:
            start_task.cancel()
            await asyncio.gather(start_task, return_exceptions=True)
        await service.drain()

    uvloop.run(main())
