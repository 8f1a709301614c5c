"""The worker side of ``inferno proxy --workers N`` (the supervisor: :mod:`.workers`): how
many workers, the shared API port, and the service each worker process runs.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson

from inferno.core.config import BatchSettings, ProxySettings
from inferno.ops import lifeline
from inferno.proxy.gateway import Gateway


def worker_count(configured: int, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """``workers`` as configured; 0 means one per core this process may run on, and no
    more than its CPU quota (a container limited to 2 CPUs on a 64-core host: 2)."""
    if configured > 0:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup CPU limit (v2 ``cpu.max``, v1 CFS quota); None: none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other ``SO_REUSEPORT`` sockets of this user
    may share (not yet listening)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str, port: int) -> int:
    """``port`` (or a free one for 0) after checking that no socket holds it, SO_REUSEPORT
    or not: another proxy of this user must not silently share our port."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told, pickled on its stdin (a pipe: it holds secrets)."""
    settings: ProxySettings
    batch: BatchSettings | None
    index: int
    announce_fd: int              # where it writes its pid and ops port once it serves
    limits_fd: int | None         # the shared rate-limit table (None: Redis)
    log_level: str
    board_fd: int                 # where the workers publish their traffic (proxy/board.py)


class WorkerService:
    """The service a worker process runs: its gateway on the shared port."""

    def __init__(self, spec: WorkerSpec, gateway: Gateway) -> None:
        self.spec = spec
        self.gateway = gateway

    async def start(self) -> None:
        s = self.spec.settings
        # A killed supervisor takes its workers with it, as a killed single proxy would
        # its requests; a drain is what SIGTERM to the supervisor is for.
        lifeline.die_with_parent()
        self.gateway.listen_sock = reuseport_socket(s.host, s.port)
        self.gateway.ops_host = "127.0.0.1"
        await self.gateway.start()
        line = orjson.dumps({"pid": os.getpid(), "ops_port": self.gateway.ops.port}) + b"\n"
        os.write(self.spec.announce_fd, line)  # one small write: the reader gets it whole
        os.close(self.spec.announce_fd)

    async def drain(self) -> None:
        await self.gateway.drain()
