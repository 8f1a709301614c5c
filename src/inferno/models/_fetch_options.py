"""What a download may be told: its limits and timeouts (:class:`FetchOptions`), and the
shape of its progress callback (:data:`ProgressFn`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ProgressFn = Callable[[str, int, int | None], None]  # filename, bytes done, total (or None)


@dataclass(frozen=True, slots=True)
class FetchOptions:
    max_attempts: int = 8  # consecutive failures without a new byte
    stall_timeout: float = 30.0
    connect_timeout: float = 15.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 300.0
    lock_wait: float = 24 * 3600.0  # how long to wait for another process's download
    max_redirects: int = 10
    parallel_min_size: int = 64 << 20  # files this large come in ranged parts at once
    parts: int = 4
    checkpoint: int = 8 << 20  # a part records its progress in the sidecar this often
    own_http: bool = True  # http:// through inferno.net.client; False: httpx2 for all
