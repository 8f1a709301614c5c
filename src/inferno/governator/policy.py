"""The scale policy: a pure function of (pool spec, node type, signals, state).

``decide()`` does no I/O and reads no clock (time is ``signals.at``), so every branch is
unit-tested with a table of inputs. It returns the new desired replica count with a
reason a person can read, and the state to pass to the next call.

Load is concurrency (requests running + queued). Two moving averages of it are kept:
the *stable* window (long) sizes the fleet; the *panic* window (short) catches bursts.
When the short window wants ``panic_threshold`` times the running nodes, the pool enters
panic: it scales up at once and does not scale down until a stable window has passed.
Load shows only what the nodes already carry, so the pool is also sized from demand
(demand.py: arrival rate x service time, queue growth, burstiness), in one step; the
larger of the two wins, up and down, and scale-down goes no lower than what the recent
arrival rate needs (``Demand.keep``). A missed target adds a node only when none is
starting. Scale-down is slow: not within ``scale_down_delay_s`` of a scale-up, at most
``scale_down_step`` nodes per ``scale_down_cooldown_s``, never while a target is missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from inferno.governator.demand import Sample, demand
from inferno.governator.signals import PoolSignals
from inferno.governator.spec import NodeType, PoolSpec

Action = Literal["up", "down", "hold"]
NEVER = -math.inf


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the policy remembers between ticks (returned, never mutated)."""

    history: tuple[tuple[float, float], ...] = ()  # (at, concurrency)
    last_up: float = NEVER
    last_down: float = NEVER
    panic_until: float = NEVER
    last_busy: float = NEVER
    samples: tuple[Sample, ...] = ()  # for the arrival rate and service time (demand.py)


@dataclass(slots=True)
class Decision:
    pool: str
    at: float
    current: int
    desired: int
    action: Action
    reason: str
    node_type: str
    signals: dict[str, Any] = field(default_factory=dict)
    # What the provider made of it: "pending", "ok", "noop", "error: ...".
    outcome: str = "pending"

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "at": self.at, "current": self.current,
                "desired": self.desired, "action": self.action, "reason": self.reason,
                "node_type": self.node_type, "signals": self.signals, "outcome": self.outcome}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _nodes_for(load: float, per_node: float) -> int:
    return math.ceil(load / per_node - 1e-9) if load > 0 else 0


def decide(spec: PoolSpec, node_type_name: str, node_type: NodeType, sig: PoolSignals,
           state: PoolState) -> tuple[Decision, PoolState]:
    now = sig.at
    per_node = spec.targets.in_flight_per_node or float(node_type.capacity)
    load = float(sig.in_flight + sig.queued)
    history = tuple((t, v) for t, v in (*state.history, (now, load))
                    if now - t <= spec.stable_window_s)
    stable = _mean([v for _, v in history])
    panic_load = _mean([v for t, v in history if now - t <= spec.panic_window_s])
    arrivals = sig.request_rate if sig.arrival_rate is None else sig.arrival_rate
    samples = tuple(s for s in (*state.samples, (now, arrivals, float(sig.in_flight),
                                                 sig.request_rate, float(sig.queued)))
                    if now - s[0] <= spec.stable_window_s)
    busy = load > 0 or sig.request_rate > 0 or sig.unserved_rate > 0
    state = replace(state, history=history, samples=samples,
                    last_busy=now if busy else state.last_busy)
    need = demand(samples, now, per_node=per_node, startup_s=node_type.startup_s,
                  target_wait_s=spec.targets.queue_wait_p95_s,
                  panic_window_s=spec.panic_window_s, stable_window_s=spec.stable_window_s,
                  starting=sig.starting)
    current = sig.running
    want_stable = _nodes_for(stable, per_node)
    want_panic = _nodes_for(panic_load, per_node)
    t = spec.targets
    misses = []
    if sig.queue_wait_p95_s is not None and sig.queue_wait_p95_s > t.queue_wait_p95_s:
        misses.append(f"queue wait p95 {sig.queue_wait_p95_s:.2f}s > {t.queue_wait_p95_s:g}s")
    if sig.ttft_p95_s is not None and sig.ttft_p95_s > t.ttft_p95_s:
        misses.append(f"TTFT p95 {sig.ttft_p95_s:.2f}s > {t.ttft_p95_s:g}s")
    load_txt = (f"load {stable:.1f} over {spec.stable_window_s:g}s, {panic_load:.1f} over "
                f"{spec.panic_window_s:g}s ({per_node:g}/node)")

    floor, floor_txt = _floor(spec, node_type, now, state)

    def out(desired: int, action: Action, reason: str, st: PoolState) -> tuple[Decision,
                                                                                 PoolState]:
        return Decision(pool=spec.name, at=now, current=current, desired=desired,
                        action=action, reason=reason, node_type=node_type_name,
                        signals=sig.to_dict()), st

    def clamp(n: int) -> tuple[int, str]:
        if n > spec.max_replicas:
            return spec.max_replicas, f"; capped at max_replicas {spec.max_replicas}"
        if n < floor:
            return floor, f"; kept at {floor_txt}"
        return n, ""

    # 1. Work arrived at zero, or below the floor (start-up, a node lost): no cooldown.
    if current == 0 and busy:
        n, note = clamp(max(1, want_panic))
        return out(n, "up", f"scale from zero: demand seen ({load_txt}){note}",
                   replace(state, last_up=now, panic_until=now + spec.stable_window_s))
    if current < floor:
        return out(floor, "up", f"{current} running < {floor_txt}", replace(state, last_up=now))

    # 2. Panic: a burst in the short window.
    in_panic = now < state.panic_until
    if want_panic > current and want_panic >= spec.panic_threshold * max(current, 1):
        state = replace(state, panic_until=now + spec.stable_window_s)
        n, note = clamp(max(want_panic, need.nodes))
        if n > current:
            rate_txt = f"; {need.text} wants {need.nodes}" if need.nodes > want_panic else ""
            return out(n, "up", f"panic: {load_txt} wants {want_panic} nodes, "
                       f">= {spec.panic_threshold:g}x the {current} running{rate_txt}{note}",
                       replace(state, last_up=now))
        in_panic = True

    # 3. Targets missed: add a node (or what the load wants), respecting the cooldown.
    want = max(want_stable, want_panic if in_panic else 0)
    # A missed target adds a node only when none is on its way: a node that is starting
    # will already help, and the waits it fixes show up only after it is ready.
    if misses and sig.queued > 0 and sig.starting == 0:
        want = max(want, current + 1)
    by_rate = need.nodes > want
    want = max(want, need.nodes)
    if want > current:
        n, note = clamp(want)
        why = ("; ".join(misses) if misses and not by_rate else f"{need.text} wants {want} nodes"
               if by_rate else f"{load_txt} wants {want} nodes")
        if n <= current:
            return out(current, "hold", f"{why}, but at max_replicas {spec.max_replicas}", state)
        if now - state.last_up < spec.scale_up_cooldown_s:
            return out(current, "hold", f"{why}; scale-up cooldown "
                       f"({spec.scale_up_cooldown_s:g}s) not over", state)
        return out(n, "up", f"{why}{note}", replace(state, last_up=now))

    # 4. Too many nodes: scale down slowly, never while targets are missed or in panic.
    target, note = clamp(want)
    if need.text and need.nodes >= want:
        load_txt = need.text
    if target < current and need.keep > target:
        # The recent rate still needs more than the stable window says (a burst it lags).
        target = min(current, need.keep)
        load_txt = f"{load_txt}; {need.keep_text}"
    if target < current:
        if misses:
            return out(current, "hold", f"{load_txt} wants {target} but {'; '.join(misses)}",
                       state)
        if in_panic:
            return out(current, "hold", f"{load_txt} wants {target}, but in panic mode for "
                       f"{state.panic_until - now:.0f}s more", state)
        if now - state.last_up < spec.scale_down_delay_s:
            return out(current, "hold", f"{load_txt} wants {target}, but scaled up "
                       f"{now - state.last_up:.0f}s ago (delay {spec.scale_down_delay_s:g}s)",
                       state)
        if now - state.last_down < spec.scale_down_cooldown_s:
            return out(current, "hold", f"{load_txt} wants {target}; scale-down cooldown "
                       f"({spec.scale_down_cooldown_s:g}s) not over", state)
        n = max(target, current - spec.scale_down_step)
        return out(n, "down", f"{load_txt} wants {target}{note}; removing "
                   f"{current - n} (slow scale-down)", replace(state, last_down=now))
    return out(current, "hold", f"{load_txt}: {current} node(s) fit{note}"
               + (f"; {'; '.join(misses)}" if misses else ""), state)


def _floor(spec: PoolSpec, node_type: NodeType, now: float, state: PoolState) -> tuple[int, str]:
    if spec.min_replicas > 0:
        return spec.min_replicas, f"min_replicas {spec.min_replicas}"
    if node_type.startup_s > spec.warmup_budget_s:
        return 1, (f"1 (start-up {node_type.startup_s:g}s exceeds the warm-up budget "
                   f"{spec.warmup_budget_s:g}s, so no scale to zero)")
    if now - state.last_busy < spec.idle_before_zero_s:
        return 1, f"1 (idle {max(0.0, now - state.last_busy):.0f}s < {spec.idle_before_zero_s:g}s)"
    return 0, "0 (idle: scaled to zero)"
