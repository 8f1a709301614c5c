"""Synthetic request traces with named shapes, for ``inferno governator plan --synthetic``.

A trace is a Poisson process whose rate follows the shape (drawn by thinning), with
prompt and completion lengths drawn per request. Everything comes from one
``random.Random(seed)``: the same (shape, seed, duration) gives the same rows, byte for
byte. Rates are sized for the example price list's ``local-cpu`` node (2 sequences at
20 tokens/s each, so a 40-token answer holds a slot for 2 s and one node serves about
1 request/s): the quiet base fits one node; the peaks need several.

Shapes:

- ``steps``: a quiet base (0.25 req/s) with step bursts to 5-8x it, 60-120 s long,
  about one per 10 minutes, at random times.
- ``ramps``: the base, then linear ramps up to 5-7x over 2-4 minutes, a short plateau,
  and a ramp back down, about one per 12 minutes.
- ``diurnal``: a compressed day: a quiet night at the base rate, a morning and an
  afternoon peak (about 7x the base), each a Gaussian bump with a little noise.
- ``heavy-tail``: the ``steps`` arrivals at a lower rate with Pareto-distributed answer
  lengths (alpha 1.5, a few answers 10-25x the median) and lognormal prompts.
- ``two-models``: ``steps`` for one model and ``ramps`` for another, at the same time
  (each model is its own pool).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from inferno.core.errors import ConfigError
from inferno.governator.planner import FleetResult, TraceRow

MODEL = "smollm2-135m"
SECOND_MODEL = "smollm2-360m"
BASE_RPS = 0.1

Rate = Callable[[float], float]


def _intervals(rng: random.Random, duration: float, every: float, span: tuple[float, float]
               ) -> list[tuple[float, float]]:
    """Non-overlapping random (start, length) windows, about one per ``every`` seconds."""
    out: list[tuple[float, float]] = []
    slots = max(1, round(duration / every))
    width = duration / slots
    for k in range(slots):
        length = rng.uniform(*span)
        # Somewhere inside its slot, away from the edges so windows never touch.
        lo, hi = k * width + 0.1 * width, (k + 1) * width - length - 0.1 * width
        out.append((rng.uniform(lo, max(lo, hi)), length))
    return out


def _steps(rng: random.Random, duration: float, base: float) -> Rate:
    bursts = [(s, n, base * rng.uniform(14, 18)) for s, n in _intervals(rng, duration, 600,
                                                                          (60, 120))]

    def rate(t: float) -> float:
        return next((r for s, n, r in bursts if s <= t < s + n), base)
    return rate


def _ramps(rng: random.Random, duration: float, base: float) -> Rate:
    ramps = []
    for s, n in _intervals(rng, duration, 720, (300, 480)):
        up = rng.uniform(120, 240)
        hold = max(0.0, n - 2 * up) if n > 2 * up else 0.0
        ramps.append((s, up, hold, base * rng.uniform(24, 30)))

    def rate(t: float) -> float:
        for s, up, hold, peak in ramps:
            x = t - s
            if 0 <= x < up:
                return base + (peak - base) * x / up
            if up <= x < up + hold:
                return peak
            if up + hold <= x < 2 * up + hold:
                return peak - (peak - base) * (x - up - hold) / up
        return base
    return rate


def _diurnal(rng: random.Random, duration: float, base: float) -> Rate:
    peaks = [(duration * rng.uniform(0.3, 0.4), base * rng.uniform(25, 30)),
             (duration * rng.uniform(0.6, 0.7), base * rng.uniform(20, 25))]
    width = duration * 0.06
    noise = [rng.uniform(0.85, 1.15) for _ in range(int(duration // 60) + 1)]

    def rate(t: float) -> float:
        bump = sum((p - base) * math.exp(-(((t - c) / width) ** 2)) for c, p in peaks)
        return (base + bump) * noise[int(t // 60)]
    return rate


SHAPES: dict[str, Callable[[random.Random, float, float], Rate]] = {
    "steps": _steps, "ramps": _ramps, "diurnal": _diurnal,
}
NAMES = ("steps", "ramps", "diurnal", "heavy-tail", "two-models")


def _lengths(rng: random.Random, heavy: bool) -> tuple[int, int]:
    if heavy:
        prompt = min(2000, int(rng.lognormvariate(math.log(60), 0.8)))
        # Pareto(1.5) from 12 tokens: median ~19, mean ~36, a few answers of 300-512.
        completion = min(512, int(12 * rng.paretovariate(1.5)))
        return max(4, prompt), max(1, completion)
    return rng.randint(20, 120), rng.randint(16, 64)


def _arrivals(rng: random.Random, rate: Rate, duration: float, model: str, heavy: bool
              ) -> list[TraceRow]:
    """A non-homogeneous Poisson process by thinning against the rate's maximum."""
    top = max(rate(k * 0.5) for k in range(int(duration * 2) + 1)) * 1.05
    rows: list[TraceRow] = []
    t = 0.0
    while True:
        t += rng.expovariate(top)
        if t >= duration:
            return rows
        if rng.random() * top <= rate(t):
            p, c = _lengths(rng, heavy)
            rows.append(TraceRow(round(t, 3), model, p, c))


def synthetic_trace(shape: str, seed: int = 0, duration_s: float = 1800.0) -> list[TraceRow]:
    """The rows of a named shape, sorted by time; the same arguments give the same rows."""
    if shape not in NAMES:
        raise ConfigError(f"unknown synthetic shape '{shape}' (known: {', '.join(NAMES)})")
    if duration_s < 300:
        raise ConfigError(f"a synthetic trace needs at least 300 s, not {duration_s:g}")
    rng = random.Random(f"{shape}:{seed}")
    if shape == "two-models":
        rows = (_arrivals(rng, _steps(rng, duration_s, BASE_RPS), duration_s, MODEL, False)
                + _arrivals(rng, _ramps(rng, duration_s, BASE_RPS), duration_s,
                            SECOND_MODEL, False))
    elif shape == "heavy-tail":
        rows = _arrivals(rng, _diurnal(rng, duration_s, BASE_RPS), duration_s, MODEL, True)
    else:
        rows = _arrivals(rng, SHAPES[shape](rng, duration_s, BASE_RPS), duration_s, MODEL,
                         False)
    return sorted(rows, key=lambda r: (r.ts, r.model))


def compare(results: list[FleetResult]) -> tuple[FleetResult | None, FleetResult | None]:
    """(the first autoscaled fleet, the smallest static fleet of its node type meeting the
    targets): the pair the autoscaler is judged by."""
    auto = next((r for r in results if r.name.startswith("autoscaled ")), None)
    if auto is None:
        return None, None
    node_type = auto.name.rsplit(" x ", 1)[1]
    static = [r for r in results if r.name.startswith("static ") and r.meets
              and r.name.endswith(f" x {node_type}")]
    return auto, min(static, key=lambda r: r.node_hours, default=None)
