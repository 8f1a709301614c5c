"""How much background work (batch items) may run beside the interactive traffic.

An AIMD limit on background requests in flight, driven by what interactive requests see:
each interactive request reports its time to first byte (first chunk of a stream). The
reference is a slow average of that time measured while no background work ran; a fast
average above the reference by more than ``tolerance`` cuts the limit (x ``decrease``, at
most once per ``cooldown``), and each interactive sample within it raises the limit by
``1 / limit`` (about one per round of requests). With no interactive request for
``idle`` seconds the limit is lifted: an idle proxy runs batches at full speed.
"""

from __future__ import annotations

import math
import time


class BackgroundLimit:
    def __init__(self, *, tolerance: float = 0.05, decrease: float = 0.5,
                 cooldown: float = 0.1, idle: float = 2.0, floor: float = 1.0) -> None:
        self._tolerance = tolerance
        self._decrease = decrease
        self._cooldown = cooldown
        self._idle = idle
        self._floor = floor
        self.limit = math.inf
        self._reference: float | None = None  # slow average without background work
        self._fast: float | None = None
        self._last_sample = -math.inf
        self._last_cut = -math.inf
        self._streams = 0

    def wants_sample(self, background_in_flight: int) -> bool:
        """Whether to time this interactive stream's first chunk: always while background
        work runs, else one stream in 8 (the reference; timing costs a call per chunk)."""
        self._streams += 1
        return background_in_flight > 0 or self._streams % 8 == 0

    def current(self) -> float:
        if time.monotonic() - self._last_sample > self._idle:
            self.limit = math.inf  # no interactive traffic lately
        return self.limit

    def observe(self, seconds: float, background_in_flight: int) -> None:
        now = time.monotonic()
        if now - self._last_sample > self._idle:
            self._fast = None  # a new episode of interactive traffic
        self._last_sample = now
        if background_in_flight == 0 or self._reference is None:
            ref = self._reference
            self._reference = seconds if ref is None else 0.9 * ref + 0.1 * seconds
            if background_in_flight == 0:
                return
        fast = self._fast
        self._fast = seconds if fast is None else 0.7 * fast + 0.3 * seconds
        reference = self._reference
        assert reference is not None
        if math.isinf(self.limit):
            self.limit = max(self._floor, float(background_in_flight))
        if self._fast > reference * (1 + self._tolerance):
            if now - self._last_cut >= self._cooldown:
                self._last_cut = now
                self.limit = max(self._floor, self.limit * self._decrease)
        else:
            self.limit += 1.0 / self.limit
