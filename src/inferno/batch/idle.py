"""The batch loops' poll interval when there is nothing to do.

The runner claims items and the supervisor looks for batches to validate, expire or
finish by polling the store (other processes and workers create batches; no store here
can notify). Twice a second is what keeps a new batch's start prompt, but it is also
most of an idle proxy's CPU. So each loop waits ``base`` while its looks find work and
twice as long after each look that finds none, up to ``most``; anything that shows work
(a batch created on this process, items claimed) starts again from ``base``.
"""

from __future__ import annotations

IDLE_STRETCH = 8  # most = base x this: 0.5 s -> 4 s


class IdleBackoff:
    def __init__(self, base: float, most: float | None = None) -> None:
        self.base = base
        self.most = max(base, most if most is not None else base * IDLE_STRETCH)
        self._wait = base

    def next(self, found: bool) -> float:
        """The wait before the next look, given whether the last one found work."""
        self._wait = self.base if found else min(self.most, self._wait * 2)
        return self._wait

    def reset(self) -> None:
        self._wait = self.base
