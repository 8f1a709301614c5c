"""Start real Inferno processes on free loopback ports, and wait on them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests import polling
from tests.conftest import free_port


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    port: int = 0
    ops_port: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str] | None = None) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          env={**os.environ, **(env or {})},
                                          start_new_session=True)
        return self

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def inferno(*args: str) -> list[str]:
    return [sys.executable, "-m", "inferno", *args]


def proxy(tmp: Path, *extra: str) -> Proc:
    port, ops = free_port(), free_port()
    return Proc("proxy", inferno("proxy", "--port", str(port), "--ops-port", str(ops), *extra),
                tmp / "proxy.log", port, ops)


def backend(tmp: Path, name: str, lb_ops: int, *extra: str) -> Proc:
    port, ops = free_port(), free_port()
    argv = inferno("backend", "--port", str(port), "--ops-port", str(ops), "--node-id", name,
                   "--discovery-lb", f"127.0.0.1:{lb_ops}", "--threads", "1", "--n-ctx", "2048",
                   *extra)
    return Proc(name, argv, tmp / f"{name}.log", port, ops)


def get_json(port: int, path: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def node_ids(proxy_ops: int) -> set[str]:
    vitals = get_json(proxy_ops, "/telemetry") or {}
    return {n["id"] for n in vitals.get("nodes", [])}  # type: ignore[attr-defined]


def wait_until(cond: Callable[[], object], timeout: float, what: str, *procs: Proc) -> float:
    """Poll ``cond()`` (via tests.polling) until true; returns the seconds it took.

    Fails with the logs of ``procs``.
    """
    start = time.monotonic()
    try:
        polling.wait_until(cond, timeout=timeout, what=what)
    except AssertionError as exc:
        logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
        raise AssertionError(f"{exc}\n{logs}") from None
    return time.monotonic() - start
