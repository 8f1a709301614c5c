"""A retry budget, so an outage cannot turn into a retry storm.

Retries may add at most ``ratio`` of the requests seen in the last ``window`` seconds,
plus ``min_per_s`` per second so a quiet proxy can still retry (Envoy's and Finagle's
budgets work the same way). Counts live in one-second buckets: O(1) per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RetryBudget:
    def __init__(self, ratio: float = 0.2, min_per_s: float = 3.0, window: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = ratio
        self._floor = min_per_s * window
        self._window = window
        self._clock = clock
        self._requests = [0] * window
        self._retries = [0] * window
        self._stamp = [0] * window
        self.denied = 0

    def _slot(self) -> int:
        second = int(self._clock())
        i = second % self._window
        if self._stamp[i] != second:
            self._stamp[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def _live(self, counts: list[int]) -> int:
        now = int(self._clock())
        return sum(c for c, s in zip(counts, self._stamp, strict=True)
                   if now - s < self._window)

    def record_request(self) -> None:
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget if there is one left."""
        i = self._slot()
        allowed = self._ratio * self._live(self._requests) + self._floor
        if self._live(self._retries) + 1 > allowed:
            self.denied += 1
            return False
        self._retries[i] += 1
        return True

    def state(self) -> dict[str, float]:
        return {"requests": self._live(self._requests), "retries": self._live(self._retries),
                "denied": self.denied, "ratio": self._ratio}
