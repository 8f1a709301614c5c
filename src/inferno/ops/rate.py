"""A windowed rate of a monotonically growing counter (tokens/s for telemetry)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    def __init__(self, counter: Callable[[], float], window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._counter = counter
        self._window = window
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()

    def sample(self) -> None:
        now = self._clock()
        self._samples.append((now, self._counter()))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
