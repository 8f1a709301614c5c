"""Nodes a pool needs from its arrival rate and service time (Little's law), pure.

Utilisation alone lags a burst: a pool's load only shows what its nodes already carry,
and a queue that has begun to grow will keep growing while new nodes start. So:

- concurrency needed = arrival rate x mean service time (Little's law), the rate taken
  from the long (stable) window, or from the short (panic) window when that one is
  higher by more than Poisson noise: the pool goes up on the short one and comes down
  only on the long one;
- headroom in proportion to recent burstiness: the spread of 5 s arrival counts over the
  stable window beyond Poisson noise, relative to their mean, adds that fraction (up to
  ``MAX_HEADROOM``);
- a backlog is drained within the start-up time (or the queue-wait target if longer):
  the requests queued now plus those the queue will gain while a new node starts (its
  growth rate x start-up time) need ``backlog x service time / drain time`` more
  concurrency;
- nodes = the fewest whose slots keep the steady load's queue wait within target for
  ``WAIT_QUANTILE`` of requests by Erlang C (the M/M/c queue, which overstates the waits
  of LLM requests, whose service times vary less than exponential ones: so 90 % there
  keeps a minute's p95 within target in the planner), plus the backlog's concurrency /
  per-node concurrency, in one step.

Scale-down reads the recent rate too (``RECENT_WINDOWS`` panic windows): the stable
window lags a burst's onset as much as its end, so early in a burst it reads a rate far
below the one the nodes serve, and a pool sized on it drops nodes mid-burst and has to
start them again (a queue meanwhile). ``keep`` is what the higher of the two rates needs;
the policy scales down no lower. Burstiness needs ``MIN_BUCKETS`` buckets: from fewer
(a pool's first seconds) the spread of a handful of requests is noise, not bursts.

Service time is measured too: mean running requests / mean requests started per second
over the stable window (Little's law again, on the nodes' slots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (at, arrivals/s, running, started/s, queued) per tick.
Sample = tuple[float, float, float, float, float]

WAIT_QUANTILE = 0.9  # the fleet is sized so this share of requests waits within target
MAX_HEADROOM = 0.5
BUCKET_S = 5.0
MIN_BUCKETS = 4
RECENT_WINDOWS = 4.0


@dataclass(frozen=True, slots=True)
class Demand:
    nodes: int  # what the rate and the backlog need (0: no estimate yet)
    text: str  # why, for the decision's reason
    keep: int = 0  # what the recent rate still needs: scale-down goes no lower
    keep_text: str = ""


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits (M/M/c, ``load`` = arrival rate x service time)."""
    if load <= 0:
        return 0.0
    if load >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):  # Erlang B by its recurrence, stable for large c
        b = load * b / (k + load * b)
    return servers * b / (servers - load * (1 - b))


def nodes_for_wait(load: float, service_s: float, per_node: float, target_s: float,
                   limit: int = 256) -> int:
    """Fewest nodes whose slots keep P(wait > target) <= 1 - ``WAIT_QUANTILE``."""
    for n in range(1, limit + 1):
        slots = max(1, int(n * per_node))
        if slots <= load:
            continue
        tail = erlang_c(slots, load) * math.exp(-(slots - load) * target_s / service_s)
        if tail <= 1 - WAIT_QUANTILE:
            return n
    return limit


def service_time(samples: tuple[Sample, ...]) -> float | None:
    started = sum(s[3] for s in samples)
    if started <= 0:
        return None
    return sum(s[2] for s in samples) / started


def _mean_rate(samples: tuple[Sample, ...], now: float, window: float) -> float:
    rates = [s[1] for s in samples if now - s[0] < window]
    return sum(rates) / len(rates) if rates else 0.0


def burstiness(samples: tuple[Sample, ...], now: float, window: float) -> float:
    """Spread of the arrival rate over ``BUCKET_S`` buckets beyond what Poisson arrivals
    at the same mean would show (their coefficient of variation is 1/sqrt(count)), so
    a quiet pool's noise does not read as bursts."""
    buckets: dict[int, list[float]] = {}
    for at, rate, *_ in samples:
        if now - at < window:
            buckets.setdefault(int((now - at) // BUCKET_S), []).append(rate)
    means = [sum(b) / len(b) for b in buckets.values()]
    if len(means) < MIN_BUCKETS:
        return 0.0
    mu = sum(means) / len(means)
    if mu <= 0:
        return 0.0
    var = sum((m - mu) ** 2 for m in means) / (len(means) - 1)
    return math.sqrt(max(0.0, var / mu**2 - 1 / (mu * BUCKET_S)))


def _significant(fast: float, slow: float, window: float) -> bool:
    """Whether the short window's count is above the long window's rate by more than
    Poisson noise (3 sigma): a few requests close together are not a burst."""
    expected = slow * window
    return fast * window > expected + 3 * math.sqrt(max(expected, 1.0))


def demand(samples: tuple[Sample, ...], now: float, *, per_node: float, startup_s: float,
           target_wait_s: float, panic_window_s: float, stable_window_s: float,
           starting: int = 0) -> Demand:
    service = service_time(samples)
    if service is None:
        return Demand(0, "")
    fast = _mean_rate(samples, now, panic_window_s)
    slow = _mean_rate(samples, now, stable_window_s)
    rate = fast if fast > slow and _significant(fast, slow, panic_window_s) else slow
    headroom = min(MAX_HEADROOM, burstiness(samples, now, stable_window_s))
    queued = samples[-1][4]
    # Queue growth over the short window: requests/s the queue gains now.
    recent = [s for s in samples if now - s[0] < panic_window_s]
    span = recent[-1][0] - recent[0][0] if len(recent) > 1 else 0.0
    growth = max(0.0, (recent[-1][4] - recent[0][4]) / span) if span > 0 else 0.0
    # Nodes already starting will take the growth on: project it only when none is.
    backlog = queued + (growth * startup_s if starting == 0 else 0.0)
    steady = rate * service * (1 + headroom)
    # New nodes take start-up time to help, so the backlog is drained over the longer of
    # that and the target: a short queue one node clears by itself buys no node.
    drain_s = max(target_wait_s, startup_s)
    extra = backlog * service / drain_s
    concurrency = steady + extra
    nodes = (nodes_for_wait(steady, service, per_node, target_wait_s) if steady > 0 else 0)
    nodes += math.ceil(extra / per_node - 1e-9) if extra > 0 else 0
    text = (f"arrivals {rate:.2f}/s x service {service:.1f}s (+{headroom:.0%} burst headroom)"
            + (f" + backlog {backlog:.0f} drained in {drain_s:g}s" if backlog >= 0.5
               else "") + f" = {concurrency:.1f} running")
    # The higher of the stable and the recent rate, without a significance test: it only
    # holds nodes the pool already has.
    recent_s = RECENT_WINDOWS * panic_window_s
    held = max(slow, _mean_rate(samples, now, recent_s))
    held_load = held * service * (1 + headroom)
    keep = nodes_for_wait(held_load, service, per_node, target_wait_s) if held_load > 0 else 0
    keep_text = f"arrivals {held:.2f}/s over the last {recent_s:g}s keep {keep} node(s)"
    return Demand(nodes, text, keep, keep_text)
