"""The node's GPUs, for ``/telemetry`` and ``/metrics``: name, memory, utilisation.

Read from ``nvidia-smi`` (shipped with NVIDIA's driver, so present wherever a CUDA build
can run): no Python binding to install, and a machine without it simply reports no GPU.
One query is ~30 ms of a subprocess, so it runs in a worker thread at most once per
``interval`` seconds and the answers are cached; nothing on the request path waits for it.
Vulkan builds report their device through the same query when it is an NVIDIA card;
others appear as ``gpus: []`` (llama.cpp's own log names the device at load).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

_FIELDS = "index,name,memory.total,memory.used,utilization.gpu"


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization: float  # 0..1 over the driver's last sample period

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(csv: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu
    --format=csv,noheader,nounits`` output (MiB and percent); unreadable lines skipped."""
    gpus = []
    for line in csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            index, total, used = int(parts[0]), float(parts[2]), float(parts[3])
            util = float(parts[4]) if parts[4] not in ("[N/A]", "N/A") else 0.0
        except ValueError:
            continue
        gpus.append(Gpu(index, parts[1], int(total * 2**20), int(used * 2**20), util / 100))
    return gpus


class GpuProbe:
    def __init__(self, command: str = "nvidia-smi", interval: float = 5.0) -> None:
        self._command = shutil.which(command)
        self._interval = interval
        self._at = -float("inf")
        self.gpus: list[Gpu] = []

    @property
    def available(self) -> bool:
        return self._command is not None

    def query(self) -> list[Gpu]:
        """Blocking: run the query now (from a worker thread)."""
        if self._command is None:
            return []
        try:
            out = subprocess.run([self._command, f"--query-gpu={_FIELDS}",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return self.gpus  # keep the last answer: a slow driver is not "no GPU"
        return parse(out.stdout) if out.returncode == 0 else []

    async def refresh(self) -> list[Gpu]:
        """The cached answer, refreshed in a worker thread when older than ``interval``."""
        if self._command is not None and time.monotonic() - self._at >= self._interval:
            self._at = time.monotonic()
            self.gpus = await asyncio.to_thread(self.query)
        return self.gpus
