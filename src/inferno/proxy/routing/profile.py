"""A routing profile: filters, then weighted scorers, then a picker.

The profile owns the rules a plugin should not have to know: scores are clamped to
[0, 1] and weighted here; each scorer's time is accumulated for /router/state; if the
panic-tolerant filters (health) would leave no node, they are ignored so the request is
still tried rather than refused untried.

Above ``2 * sample`` candidates the profile ranks a random sample of ``sample`` of them
(power of d choices, as Envoy's least-request balancer does): routing time stays flat in
the pool's size, and the least loaded node of a random handful is, with high probability,
among the least loaded of the pool. The sample still holds enough nodes for the retries'
fallbacks. Profiles whose plugins must see every candidate (``needs_all``: rendezvous
hashing for affinity, the pool's cheapest or local nodes, a round-robin ring) rank them
all.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from inferno.proxy.pool import Node
from inferno.proxy.routing.base import (
    Filter,
    Observer,
    Picker,
    Preferrer,
    RouteContext,
    Scorer,
)


@dataclass(slots=True)
class ScorerStats:
    calls: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    order: list[Node]
    # "profile n1=0.91 n0=0.40": the top scores, for the x-inferno-route header.
    explain: str
    panic: bool = False
    # Candidates the profile chose from (more than ``order`` holds when it sampled).
    candidates: int = 0


@dataclass
class Profile:
    name: str
    filters: Sequence[Filter]
    scorers: Sequence[tuple[Scorer, float]]
    picker: Picker
    observers: Sequence[Observer] = ()
    needs_prefix: bool = False
    # Candidates ranked per request when there are more than twice as many (0: all).
    sample: int = 0
    stats: dict[str, ScorerStats] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    # Plugins with ``prefer(node, model)``: a sample is drawn from their nodes first.
    preferrers: Sequence[Preferrer] = ()
    # model -> (the candidates it was computed for, the preferred ones among them).
    _tiers: dict[str, tuple[Sequence[Node], list[Node]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = {s.name: ScorerStats() for s, _ in self.scorers}

    # This runs once per request: plain loops and local names (no generators, no
    # min/max calls), about half the time of the comprehension form (bench/gateway).
    def route(self, nodes: Sequence[Node], ctx: RouteContext) -> Decision:
        sample = self.sample
        if sample and len(nodes) > 2 * sample:
            kept = _keep(self._draw(nodes, ctx.model), self.filters, ctx)
            if not kept:  # the sample held no usable node: look at them all
                kept = _keep(nodes, self.filters, ctx)
                if len(kept) > sample:
                    kept = self.rng.sample(kept, sample)
        else:
            kept = _keep(nodes, self.filters, ctx)
        panic = False
        if not kept:
            # Ignore only panic-tolerant filters (health), never draining or the like.
            strict = [f for f in self.filters if not getattr(f, "panic_ok", False)]
            kept = _keep(nodes, strict, ctx)
            panic = bool(kept)
        if not kept:
            return Decision([], f"{self.name} no-candidates")
        if len(kept) == 1:
            # Nothing to rank: scores cannot change a one-node order (scorer stats count
            # rankings, not requests). Observers still learn where the request went.
            for observer in self.observers:
                observer.observe(kept[0], ctx)
            return Decision(kept, f"{self.name}{' panic' if panic else ''} "
                                  f"{self.picker.name} {kept[0].id}", panic, len(nodes))
        totals = [0.0] * len(kept)
        stats = self.stats
        clock = time.perf_counter
        for scorer, weight in self.scorers:
            started = clock()
            scores = scorer.score(kept, ctx)
            st = stats[scorer.name]
            st.seconds += clock() - started
            st.calls += 1
            for i, s in enumerate(scores):
                if s == s:  # NaN counts as 0; the rest is clamped into [0, 1]
                    totals[i] += weight * (1.0 if s > 1.0 else 0.0 if s < 0.0 else s)
        order = self.picker.order(kept, totals, ctx)
        for observer in self.observers:
            observer.observe(order[0], ctx)
        return Decision(order, self._explain(kept, totals, panic), panic, len(nodes))

    def _draw(self, nodes: Sequence[Node], model: str) -> list[Node]:
        """``sample`` random candidates: from the nodes a plugin prefers (model loaded)
        first, with at least two others as fallbacks (a preferred node at its admission
        cap yields to one that would load the model, as without sampling)."""
        sample, rng = self.sample, self.rng
        if not self.preferrers:
            return rng.sample(nodes, sample)
        cached = self._tiers.get(model)
        if cached is None or cached[0] is not nodes:  # a new snapshot: split it once
            preferred = [n for n in nodes if all(p.prefer(n, model) for p in self.preferrers)]
            cached = (nodes, preferred)
            self._tiers[model] = cached
        preferred = cached[1]
        if len(preferred) == len(nodes):
            return rng.sample(nodes, sample)
        take = min(len(preferred), sample - 2)
        chosen = rng.sample(preferred, take) if take < len(preferred) else list(preferred)
        seen = {id(n) for n in chosen}
        while len(chosen) < sample:  # nodes > 2 * sample > preferred: ends quickly
            n = nodes[rng.randrange(len(nodes))]
            if id(n) not in seen:
                seen.add(id(n))
                chosen.append(n)
        return chosen

    def _explain(self, nodes: Sequence[Node], totals: Sequence[float], panic: bool) -> str:
        # Highest first; ties keep the candidates' order (the sort is stable).
        top = sorted(range(len(nodes)), key=totals.__getitem__, reverse=True)[:3]
        scores = " ".join(f"{nodes[i].id}={totals[i]:.2f}" for i in top)
        return f"{self.name}{' panic' if panic else ''} {self.picker.name} {scores}"


def _keep(nodes: Sequence[Node], filters: Sequence[Filter], ctx: RouteContext) -> list[Node]:
    kept = []
    for n in nodes:
        for f in filters:
            if not f.keep(n, ctx):
                break
        else:
            kept.append(n)
    return kept
