"""An idle proxy's CPU: `inferno proxy` with its SQLite store and default workers, no
traffic, no nodes; optionally against another checkout's sources, interleaved.

    .venv/bin/python bench/idle_cpu.py                                  # ~1 min
    git worktree add /tmp/base <commit>
    .venv/bin/python bench/idle_cpu.py --baseline-src /tmp/base/src --rounds 3

Per round and version: start the proxy in a fresh data directory, wait for /health, let
it settle, then read the CPU time (utime + stime from /proc) of its whole process tree
over ``--seconds``; report % of one core per round and the median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gateway"))

from load import cpu_seconds  # noqa: E402  (the process tree's utime + stime)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(src: Path, seconds: float, settle: float) -> float:
    data = Path(tempfile.mkdtemp(prefix="inferno-idle-"))
    port, ops = _free_port(), _free_port()
    env = {**os.environ, "INFERNO_DATA_DIR": str(data), "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-m", "inferno", "proxy", "--port", str(port),
                             "--ops-port", str(ops)], env=env, cwd=data,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ops}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the proxy from {src} did not start") from None
                time.sleep(0.2)
        time.sleep(settle)
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        return 100 * (cpu_seconds(proc.pid) - before) / seconds
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0)
    a = ap.parse_args()
    versions = {"this": ROOT / "src"}
    if a.baseline_src is not None:
        versions = {"base": a.baseline_src, **versions}
    got: dict[str, list[float]] = {v: [] for v in versions}
    for r in range(a.rounds):
        for name, src in versions.items():
            got[name].append(measure(src, a.seconds, a.settle))
            print(f"round {r + 1} {name}: {got[name][-1]:.2f} % of a core", flush=True)
    for name, values in got.items():
        print(f"{name}: median {statistics.median(values):.2f} % of a core "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
