"""The operations server every component runs beside its main port (default 6100).

``GET /health``     200 ``healthy`` when ready; 503 with the state (``loading``, ``draining``)
``GET /metrics``    Prometheus text format from the component's own registry
``GET /telemetry``  JSON vitals (:class:`inferno.api.node.Vitals`)
Components add routes (the proxy: ``POST /registration``) through ``routes``; a key
ending in ``/*`` matches every path under it.

A load balancer must not mistake busy for dead, so ``/health`` can be answered away from
a saturated main loop:

* ``own_process=True`` (the proxy's default): a small front process
  (:mod:`inferno.ops._sidecar`, standard library only, its own GIL) owns the port,
  answers ``/health`` while the component is ready from a state it publishes every 50 ms
  through a shared memory page (a heartbeat older than ``stale_after`` s reads 503
  ``unresponsive``), and relays everything else (other states included) to this
  server, which then listens on a loopback port.
* ``own_thread=True``: the server runs its own event loop in a thread. Only ``/health``
  is answered there, from a plain state read; every other route is handed to the main
  loop, so component state is never touched from two threads. It still waits for the
  GIL behind a busy loop (p99 6-7 ms saturated, vs ~1 ms for the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from inferno.core.errors import MethodNotAllowed, NotFound
from inferno.net import HttpServer, Request, Response, StreamingResponse
from inferno.ops import _sidecar
from inferno.ops._sidecar import STATE_SIZE, Limits, pack_state

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
Route = tuple[str, str]  # (method, path)


class OpsServer:
    def __init__(self, *, health: Callable[[], str], telemetry: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry,
                 routes: Mapping[Route, Handler] | None = None,
                 own_thread: bool = False, own_process: bool = False,
                 stale_after: float = 2.0, front_limits: Limits | None = None) -> None:
        """``health`` returns the component's state: ``"ready"`` means healthy.

        ``front_limits``: timeouts and caps of the front process (``own_process``).
        """
        self._front_limits = front_limits or Limits()
        self._own_thread = own_thread
        self._own_process = own_process
        self._stale_after = stale_after
        self._sidecar: _SidecarHandle | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._health = health
        self._telemetry = telemetry
        self._registry = registry
        self._routes: dict[Route, Handler] = {
            ("GET", "/health"): self._get_health,
            ("GET", "/metrics"): self._get_metrics,
            ("GET", "/telemetry"): self._get_telemetry,
            **(routes or {}),
        }
        self._prefixes = [(m, p[:-1]) for (m, p) in self._routes if p.endswith("/*")]
        self._server = HttpServer(self._dispatch, max_body_size=256 * 1024)

    async def start(self, host: str, port: int) -> int:
        if self._own_process:
            internal = await self._server.start("127.0.0.1", 0)
            try:
                self._sidecar = await _SidecarHandle.start(
                    host, port, internal, self._health, self._stale_after, self._front_limits)
            except BaseException:
                await self._server.stop(0)
                raise
            return self._sidecar.port
        if not self._own_thread:
            return await self._server.start(host, port)
        self._main = asyncio.get_running_loop()
        loop = _new_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="ops-server",
                                        daemon=True)
        self._thread.start()
        # A thread waiting for the GIL gets it after this interval (default 5 ms).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        started = asyncio.run_coroutine_threadsafe(self._server.start(host, port), loop)
        return await asyncio.wrap_future(started)

    async def stop(self, grace: float = 2.0) -> None:
        if self._sidecar is not None:
            sidecar, self._sidecar = self._sidecar, None
            await sidecar.stop()
        if self._loop is None:
            await self._server.stop(grace)
            return
        loop, self._loop = self._loop, None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._server.stop(grace),
                                                                   loop))
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        loop.close()

    @property
    def port(self) -> int:
        return self._sidecar.port if self._sidecar is not None else self._server.port

    async def _dispatch(self, req: Request) -> Response | StreamingResponse:
        handler = self._routes.get((req.method, req.path))
        if handler is None:
            for method, prefix in self._prefixes:
                if req.method == method and req.path.startswith(prefix):
                    handler = self._routes[(method, prefix + "*")]
                    break
        if handler is None:
            if any(p == req.path for (_, p) in self._routes):
                raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}.")
            raise NotFound(f"No route {req.method} {req.path}.")
        if self._main is None or handler == self._get_health:
            return await handler(req)
        # Everything but /health runs where the component's state lives. (Ops routes
        # answer whole bodies: a stream could not cross from one loop to the other.)
        async def on_main() -> Response | StreamingResponse:
            return await handler(req)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_main(), self._main))

    async def _get_health(self, req: Request) -> Response:
        state = self._health()
        if state == "ready":
            return Response(200, b"healthy\n", content_type="text/plain; charset=utf-8")
        return Response(503, f"{state}\n".encode(), content_type="text/plain; charset=utf-8",
                        headers=[("retry-after", "1")])

    async def _get_metrics(self, req: Request) -> Response:
        return Response(200, generate_latest(self._registry), content_type=CONTENT_TYPE_LATEST)

    async def _get_telemetry(self, req: Request) -> Response:
        return Response(200, orjson.dumps(self._telemetry()))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# The state page lives in memory-backed /dev/shm where there is one (Linux).
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


class _SidecarHandle:
    """The front process of ``own_process`` mode and the state page it reads."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, page: mmap.mmap,
                 path: str, health: Callable[[], str]) -> None:
        self.proc, self.port = proc, port
        self._page, self._path, self._health = page, path, health
        self._beat = asyncio.create_task(self._publish())

    @classmethod
    async def start(cls, host: str, port: int, internal: int, health: Callable[[], str],
                    stale_after: float, limits: Limits) -> _SidecarHandle:
        fd, path = tempfile.mkstemp(prefix="inferno-ops-", dir=_SHM)
        try:
            os.ftruncate(fd, STATE_SIZE)
            page = mmap.mmap(fd, STATE_SIZE)
        finally:
            os.close(fd)
        page[:STATE_SIZE] = pack_state(time.monotonic(), health())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, _sidecar.__file__, "--host", host, "--port", str(port),
            "--upstream", str(internal), "--state", path, "--parent", str(os.getpid()),
            "--stale", str(stale_after), *limits.args(),
            stdout=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            if not line.startswith(b"port "):
                raise OSError(f"the ops front process did not start (bind {host}:{port}?)")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            page.close()
            os.unlink(path)
            raise
        return cls(proc, int(line.split()[1]), page, path, health)

    async def _publish(self) -> None:
        while True:
            self._page[:STATE_SIZE] = pack_state(time.monotonic(), self._health())
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beat
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._page.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
