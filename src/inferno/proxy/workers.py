"""``inferno proxy --workers N``: N proxy processes on one API port, one ops port.

Each worker is a whole proxy (:class:`~inferno.proxy.gateway.Gateway`) listening on the API
port through its own ``SO_REUSEPORT`` socket, so the kernel spreads connections over the
workers. The supervisor (this module) owns the ops port and makes the workers look like
one proxy there:

- ``POST /registration`` and ``DELETE /registration/{id}`` (and the run-time ``PUT
  /standby`` and ``PUT /routing``) go to every worker, so a node
  that registers once is routable from all of them (a worker that restarts learns the
  nodes again from their next heartbeat);
- ``/metrics``, ``/telemetry`` and ``/router/state`` merge every worker's answer
  (:mod:`inferno.proxy.workers_merge`); ``/health`` is ready while a worker answers
  its own (probed every second; none for 3 s: 503 ``unresponsive``);
- rate limits without Redis live in one shared-memory table
  (:mod:`inferno.proxy.security.ratelimit_shm`); with ``redis_url`` in Redis as for
  replicas. The request log is written by each worker for the requests it served.

The supervisor reaches each worker's private ops server on a loopback port, which the
worker announces on a pipe once it serves. Workers end with the supervisor
(:mod:`inferno.ops.lifeline`: killed with it); SIGTERM to the supervisor drains them. A worker
that dies is started again, after a back-off that grows while it keeps dying young.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from inferno.core.config import BatchSettings, ProxySettings
from inferno.core.errors import ConfigError, InfernoError, ServiceUnavailable
from inferno.net import HttpClient, Request, Response
from inferno.ops import OpsServer, lifeline
from inferno.proxy.board import create_board
from inferno.proxy.security.ratelimit_shm import create_table
from inferno.proxy.worker import WorkerSpec, free_port, reuseport_socket
from inferno.proxy.workers_merge import merge_metrics, merge_router_state, merge_telemetry

log = logging.getLogger("inferno.proxy.workers")
_PROBE_EVERY = 1.0  # seconds between /health probes of each worker
_STALE = 3.0  # a worker whose /health has not answered for this long is unresponsive
_FORWARDED_SKIP = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ops_port: int = 0      # 0 until it serves
    started: float = 0.0
    failures: int = 0      # deaths in a row, each soon after its start
    restart_at: float = 0.0
    answered: float = 0.0  # when its ops /health last said healthy
    announce: int = -1     # the pipe it announces itself on, until it has
    heard: bytes = b""
    probe: asyncio.Task[None] | None = None
    history: list[int] = field(default_factory=list)  # every pid it has had


class ProxyWorkers:
    def __init__(self, settings: ProxySettings, batch: BatchSettings | None, count: int, *,
                 command: list[str], log_level: str = "info") -> None:
        """``command`` starts one worker process, which reads its :class:`WorkerSpec`
        from stdin (``inferno.wiring.proxy_worker_main``)."""
        self.settings, self._batch, self.count = settings, batch, count
        self._command, self._log_level = command, log_level
        self.id = f"proxy-{socket.gethostname()}-{os.getpid()}"
        self.workers = [_Worker(i) for i in range(count)]
        self._draining = False
        self._client = HttpClient()
        self._reserved: socket.socket | None = None
        self._port = settings.port
        self._table: int | None = None  # the shared rate-limit table's descriptor
        self._board: int | None = None  # the workers' traffic board's descriptor
        self._monitor: asyncio.Task[None] | None = None
        registry = CollectorRegistry()
        self._restarts = Counter("inferno_proxy_worker_restarts", "Proxy workers started "
                                 "again after they died.", registry=registry)
        Gauge("inferno_proxy_workers", "Proxy workers serving now.", registry=registry
              ).set_function(lambda: float(len(self._serving())))
        self._registry = registry
        self.ops = OpsServer(
            health=self._health, telemetry=dict, registry=registry,
            routes={("GET", "/metrics"): self._metrics,
                    ("GET", "/telemetry"): self._telemetry,
                    ("GET", "/router/state"): self._router_state,
                    ("POST", "/registration"): self._fan_out,
                    ("DELETE", "/registration/*"): self._fan_out,
                    # Run-time settings (scale-to-zero standby models, routing): every
                    # worker takes them; a read answers from one.
                    ("GET", "/standby"): self._fan_out,
                    ("PUT", "/standby"): self._fan_out,
                    ("GET", "/routing"): self._fan_out,
                    ("PUT", "/routing"): self._fan_out})

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        s = self.settings
        if not sys.platform.startswith("linux"):
            raise ConfigError("invalid setting 'workers': several proxy workers need Linux "
                              "(SO_REUSEPORT balancing); use --workers 1")
        # Held (bound, never listening) for the supervisor's life: port 0 becomes one port
        # for every worker, and a restarting worker finds its port still ours.
        self._reserved = await self._claim_port()
        self._port = int(self._reserved.getsockname()[1])
        self._table = None if s.redis_url else create_table()
        self._board = create_board(self.count)
        try:
            for w in self.workers:
                self._spawn(w)
            await self._wait_serving(within=120.0)
            await self.ops.start(s.host, s.ops_port)
        except BaseException:
            await self._stop_workers(grace=5.0)
            self._cleanup()
            raise
        self._monitor = asyncio.create_task(self._watch())
        log.info("proxy ready on http://%s:%d/v1 with %d workers (ops %d)", s.host,
                 self._port, self.count, self.ops.port)

    async def _claim_port(self, within: float = 10.0) -> socket.socket:
        """The API port, once no other socket holds it. The workers of a proxy that was
        just killed close theirs within seconds (lifeline), so a prompt restart waits."""
        s = self.settings
        deadline = time.monotonic() + within
        while True:
            try:
                return reuseport_socket(s.host, free_port(s.host, s.port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or s.port == 0 \
                        or time.monotonic() > deadline:
                    raise ConfigError(f"cannot listen on {s.host}:{s.port}: "
                                      f"{exc.strerror}") from exc
            await asyncio.sleep(0.1)

    async def drain(self) -> None:
        if self._draining:
            return
        self._draining = True  # /health says 503 while the workers drain
        if self._monitor is not None:
            self._monitor.cancel()
            probes = [w.probe for w in self.workers if w.probe is not None]
            for task in probes:
                task.cancel()
            await asyncio.gather(self._monitor, *probes, return_exceptions=True)
        await self._stop_workers(grace=self.settings.drain_timeout + 5.0)
        await self._client.aclose()
        await self.ops.stop()
        self._cleanup()

    # ---- processes -----------------------------------------------------------------
    def _spawn(self, w: _Worker) -> None:
        s = self.settings
        update: dict[str, Any] = {"port": self._port, "ops_port": 0, "ops_health": "loop",
                                  "workers": 1}
        if w.index > 0:
            update["alert_webhooks"] = []  # one worker alerts, not N copies of each alert
        self._close_announce(w)
        read, write = os.pipe()
        os.set_blocking(read, False)
        # Worker 0 alone runs batch items (all of them: the configured count is the
        # proxy's), so that it knows every background request in flight on each node;
        # every worker serves the Batch and Files API and supervises batches.
        batch = self._batch
        if batch is not None and w.index > 0:
            batch = batch.model_copy(update={"workers": 0})
        assert self._board is not None
        spec = WorkerSpec(s.model_copy(update=update), batch, w.index, write,
                          self._table, self._log_level, self._board)
        inherited = (write, self._board) if self._table is None else \
            (write, self._board, self._table)
        try:
            # Its own session, as `inferno serve` starts its children: Ctrl-C reaches the
            # supervisor alone, which drains every worker; and where the kernel groups CPU
            # time by session (autogroup), each worker gets its own share, not a slice.
            w.proc = subprocess.Popen(self._command, stdin=subprocess.PIPE,
                                      pass_fds=inherited, env=lifeline.child_env(),
                                      start_new_session=True)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        assert w.proc.stdin is not None
        # The spec holds secrets: through a pipe, never a file. A few KB: the write does
        # not wait for the child to read it.
        with contextlib.suppress(BrokenPipeError), w.proc.stdin:  # dead at once: restarted
            w.proc.stdin.write(pickle.dumps(spec))
        w.announce, w.heard = read, b""
        w.ops_port, w.started = 0, time.monotonic()
        w.history.append(w.proc.pid)

    def _close_announce(self, w: _Worker) -> None:
        if w.announce >= 0:
            os.close(w.announce)
            w.announce = -1

    def _check_serving(self, w: _Worker) -> bool:
        """Whether the worker serves; reads its announcement when it comes."""
        if w.ops_port:
            return True
        if w.announce < 0 or w.proc is None:
            return False
        try:
            data = os.read(w.announce, 4096)
        except BlockingIOError:
            return False
        w.heard += data
        if not data or b"\n" in w.heard:
            self._close_announce(w)  # announced, or gone without a word (exited)
        if b"\n" not in w.heard:
            return False
        info = orjson.loads(w.heard.split(b"\n", 1)[0])
        if info.get("pid") != w.proc.pid:
            return False
        w.ops_port = int(info["ops_port"])
        w.answered = time.monotonic()
        return True

    async def _wait_serving(self, within: float) -> None:
        deadline = time.monotonic() + within
        while not all(self._check_serving(w) for w in self.workers):
            for w in self.workers:
                if w.proc is not None and (rc := w.proc.poll()) is not None:
                    raise ConfigError(f"proxy worker {w.index} exited with code {rc} while "
                                      "starting (its error is above)")
            if time.monotonic() > deadline:
                raise ConfigError(f"the proxy workers did not start within {within:.0f} s")
            await asyncio.sleep(0.05)

    async def _watch(self) -> None:
        probed = 0.0
        while True:
            now = time.monotonic()
            if now - probed >= _PROBE_EVERY:
                probed = now
                for w in self._serving():
                    if w.probe is None or w.probe.done():
                        w.probe = asyncio.create_task(self._probe(w))
            for w in self.workers:
                self._check_serving(w)
                if w.proc is None:
                    if now >= w.restart_at:
                        self._restarts.inc()
                        self._spawn(w)
                    continue
                rc = w.proc.poll()
                if rc is None:
                    continue
                young = now - w.started < 30.0
                w.failures = w.failures + 1 if young else 1
                delay = min(0.5 * 2 ** (w.failures - 1), 10.0)
                log.warning("proxy worker %d (pid %d) exited with code %s; starting it again "
                            "in %.1f s", w.index, w.proc.pid, rc, delay)
                w.proc, w.ops_port, w.restart_at = None, 0, now + delay
            await asyncio.sleep(0.1)

    async def _probe(self, w: _Worker) -> None:
        """Ask a worker's own loop for /health: one stuck in a handler stops answering."""
        try:
            resp = await self._client.request("127.0.0.1", w.ops_port, "GET", "/health",
                                              connect_timeout=1.0, header_timeout=_STALE)
            await resp.read()
        except (InfernoError, OSError):
            return
        if resp.status == 200:
            w.answered = time.monotonic()

    async def _stop_workers(self, grace: float) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while True:
            if all(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                log.warning("proxy worker pid %d did not drain in time; killing it", p.pid)
                p.kill()
                p.wait()

    def _cleanup(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if self._table is not None:
            os.close(self._table)
            self._table = None
        if self._board is not None:
            os.close(self._board)
            self._board = None
        for w in self.workers:
            self._close_announce(w)

    # ---- the ops port ----------------------------------------------------------------
    def _serving(self) -> list[_Worker]:
        return [w for w in self.workers if w.proc is not None and w.ops_port]

    def _health(self) -> str:
        """Ready while a worker answers its own /health: a load balancer keeps sending
        while some worker serves, and moves away when every worker is stuck."""
        if self._draining:
            return "draining"
        serving = self._serving()
        if not serving:
            return "loading"
        now = time.monotonic()
        return "ready" if any(now - w.answered < _STALE for w in serving) else "unresponsive"

    async def _ask_all(self, req: Request) -> list[tuple[_Worker, int, bytes]]:
        """``req`` sent to every serving worker: (worker, status, body) of those that
        answered."""
        headers = [(k, v) for k, v in req.headers if k.lower() not in _FORWARDED_SKIP]
        target = req.path + (f"?{req.query}" if req.query else "")

        async def ask(w: _Worker) -> tuple[_Worker, int, bytes] | None:
            try:
                resp = await self._client.request("127.0.0.1", w.ops_port, req.method, target,
                                                  headers=headers, body=req.body,
                                                  connect_timeout=1.0, header_timeout=_STALE)
                return w, resp.status, await resp.read()
            except (InfernoError, OSError):
                return None  # stopping or restarting: it catches up on its own

        # Not the workers that stopped answering /health: a stuck one would hold every
        # ops answer (and each node's heartbeat) for the whole timeout.
        now = time.monotonic()
        serving = self._serving()
        live = [w for w in serving if now - w.answered < _STALE] or serving
        answers = await asyncio.gather(*(ask(w) for w in live))
        found = [a for a in answers if a is not None]
        if not found:
            raise ServiceUnavailable("No proxy worker is serving.")
        return found

    async def _fan_out(self, req: Request) -> Response:
        """``req`` to every worker; the first refusal if any refused (they validate alike,
        so one refuses what all refuse), else the first answer."""
        answers = await self._ask_all(req)
        _, status, body = next((a for a in answers if a[1] >= 400), answers[0])
        return Response(status, body, content_type="application/json")

    async def _json_all(self, req: Request
                        ) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        ok = [(w, orjson.loads(b)) for w, st, b in await self._ask_all(req) if st == 200]
        if not ok:
            raise ServiceUnavailable("No proxy worker answered.")
        return [d for _, d in ok], [(w.index, w.history[-1]) for w, _ in ok]

    async def _telemetry(self, req: Request) -> Response:
        docs, who = await self._json_all(req)
        return Response.json(merge_telemetry(docs, ident=self.id, state=self._health(),
                                             who=who))

    async def _router_state(self, req: Request) -> Response:
        docs, who = await self._json_all(req)
        return Response.json(merge_router_state(docs, who))

    async def _metrics(self, req: Request) -> Response:
        texts = [(w.index, b.decode()) for w, st, b in await self._ask_all(req) if st == 200]
        body = merge_metrics(texts) + generate_latest(self._registry)
        return Response(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")
