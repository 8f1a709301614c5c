"""The scale policy is a pure function: tables of (spec, signals, state) -> decision."""

from __future__ import annotations

import itertools

import pytest

from inferno.governator.policy import NEVER, PoolState, decide
from inferno.governator.signals import PoolSignals
from inferno.governator.spec import NodeType, PoolSpec, Targets

NT = NodeType(usd_per_hour=1.0, capacity=2, startup_s=5)
SLOW = NodeType(usd_per_hour=1.0, capacity=2, startup_s=120)
SPEC = PoolSpec(model="m", node_types=["cpu"], min_replicas=1, max_replicas=4,
                stable_window_s=60, panic_window_s=6, scale_up_cooldown_s=2,
                scale_down_cooldown_s=20, scale_down_delay_s=30,
                targets=Targets(queue_wait_p95_s=2.0, ttft_p95_s=5.0))
T = 1000.0  # the fake clock: decide() reads time only from signals.at


def spec_with(**changes: object) -> PoolSpec:
    return SPEC.model_copy(update=changes)


def sig(ready: int = 1, *, load: int = 0, queued: int = 0, starting: int = 0, at: float = T,
        wait: float | None = None, ttft: float | None = None, rate: float = 0.0,
        unserved: float = 0.0) -> PoolSignals:
    return PoolSignals(at=at, ready=ready, starting=starting, in_flight=load - queued,
                       queued=queued, queue_wait_p95_s=wait, ttft_p95_s=ttft,
                       request_rate=rate, unserved_rate=unserved)


def steady(load: float, seconds: int = 60) -> tuple[tuple[float, float], ...]:
    return tuple((T - i, load) for i in range(seconds, 0, -1))


CASES = [
    pytest.param(SPEC, sig(0), PoolState(), 1, "up", "min_replicas 1", id="below-min-no-cooldown"),
    pytest.param(SPEC, sig(1, load=2), PoolState(history=steady(2)), 1, "hold", "fit",
                 id="steady-load-fits"),
    # The short window averages 6 s: a 4x step wants 2 nodes on its first tick (then 4).
    pytest.param(SPEC, sig(1, load=8, queued=6), PoolState(history=steady(2)), 2, "up",
                 "panic", id="burst-4x-panics-up-at-once"),
    pytest.param(SPEC, sig(1, load=100, queued=98), PoolState(history=steady(2)), 4, "up",
                 "capped at max_replicas 4", id="panic-capped-at-max"),
    pytest.param(SPEC, sig(2, load=5, queued=1), PoolState(history=steady(5)), 3, "up",
                 "wants 3", id="stable-load-grows"),
    pytest.param(SPEC, sig(2, load=5, queued=1),
                 PoolState(history=steady(5), last_up=T - 1), 2, "hold", "cooldown",
                 id="scale-up-cooldown"),
    pytest.param(SPEC, sig(4, load=9, queued=1), PoolState(history=steady(9)), 4, "hold",
                 "at max_replicas", id="at-max-holds"),
    pytest.param(SPEC, sig(2, load=4, queued=2, wait=3.5), PoolState(history=steady(4)), 3,
                 "up", "queue wait p95 3.50s > 2s", id="queue-wait-miss-adds-a-node"),
    pytest.param(SPEC, sig(3, load=0), PoolState(history=steady(0)), 2, "down",
                 "slow scale-down", id="idle-scales-down-one-step"),
    pytest.param(SPEC, sig(3, load=0), PoolState(history=steady(0), last_up=T - 10), 3,
                 "hold", "scaled up 10s ago", id="no-scale-down-right-after-up"),
    pytest.param(SPEC, sig(3, load=0), PoolState(history=steady(0), last_down=T - 5), 3,
                 "hold", "scale-down cooldown", id="scale-down-cooldown"),
    pytest.param(SPEC, sig(3, load=0), PoolState(history=steady(0), panic_until=T + 30), 3,
                 "hold", "panic mode", id="no-scale-down-in-panic"),
    pytest.param(SPEC, sig(3, load=1, ttft=9.0), PoolState(history=steady(1)), 3, "hold",
                 "TTFT p95 9.00s > 5s", id="no-scale-down-while-target-missed"),
    pytest.param(SPEC, sig(1, load=0), PoolState(history=steady(0)), 1, "hold", "fit",
                 id="never-below-min"),
    pytest.param(spec_with(min_replicas=0), sig(1, load=0),
                 PoolState(history=steady(0), last_busy=T - 400), 0, "down", "wants 0",
                 id="scale-to-zero-after-idle"),
    pytest.param(spec_with(min_replicas=0), sig(1, load=0),
                 PoolState(history=steady(0), last_busy=T - 100), 1, "hold", "fit",
                 id="not-idle-long-enough-for-zero"),
    pytest.param(spec_with(min_replicas=0), sig(0, unserved=0.5), PoolState(), 1, "up",
                 "scale from zero", id="wake-from-zero-on-demand"),
    pytest.param(spec_with(min_replicas=0), sig(0), PoolState(), 0, "hold", "fit",
                 id="stays-at-zero-without-demand"),
    pytest.param(spec_with(min_replicas=0, max_replicas=2), sig(0, load=9, queued=9),
                 PoolState(), 2, "up", "scale from zero", id="from-zero-straight-to-load"),
    pytest.param(spec_with(targets=Targets(in_flight_per_node=4)),
                 sig(1, load=8, queued=4), PoolState(history=steady(8)), 2, "up",
                 "(4/node)", id="in-flight-per-node-target"),
    pytest.param(SPEC, sig(1, load=8, queued=6, starting=3), PoolState(history=steady(8)),
                 4, "hold", "fit", id="starting-nodes-count"),
]


@pytest.mark.parametrize(("spec", "signals", "state", "desired", "action", "reason"), CASES)
def test_decide(spec: PoolSpec, signals: PoolSignals, state: PoolState, desired: int,
                action: str, reason: str) -> None:
    decision, _ = decide(spec, "cpu", NT, signals, state)
    assert (decision.desired, decision.action) == (desired, action), decision.reason
    assert reason in decision.reason
    assert decision.node_type == "cpu" and decision.signals["at"] == signals.at


def test_slow_node_type_is_never_scaled_to_zero() -> None:
    spec = spec_with(min_replicas=0, warmup_budget_s=30)
    state = PoolState(history=steady(0), last_busy=T - 10_000)
    decision, _ = decide(spec, "gpu", SLOW, sig(1), state)
    assert decision.desired == 1
    assert "exceeds the warm-up budget" in decision.reason


def test_burst_then_quiet_returns_to_minimum_over_time() -> None:
    """Drive the policy through a burst with a fake clock and a perfect provider."""
    state, ready, t = PoolState(), 1, 0.0
    trail: list[tuple[float, int]] = []
    load_at = lambda t: 8 if 60 <= t < 120 else 2  # noqa: E731 - a 4x burst for a minute
    while t < 400:
        load = load_at(t)
        queued = max(0, load - 2 * ready)
        decision, state = decide(SPEC, "cpu", NT, sig(ready, load=load, queued=queued, at=t),
                                 state)
        if decision.desired != ready:
            trail.append((t, decision.desired))
        ready = decision.desired
        t += 1.0
    first_up = next(at for at, n in trail if n > 1)
    assert 60 <= first_up <= 62  # the panic window reacts within a couple of ticks
    assert max(n for _, n in trail) == 4
    assert ready == 1  # back to the minimum after the burst
    downs = [at for at, n in trail if at > 120]
    assert all(b - a >= SPEC.scale_down_cooldown_s for a, b in itertools.pairwise(downs))


def test_state_history_is_bounded_by_the_stable_window() -> None:
    state = PoolState(history=steady(3, seconds=500))
    _, new = decide(SPEC, "cpu", NT, sig(2, load=3), state)
    assert all(T - at <= SPEC.stable_window_s for at, _ in new.history)
    assert new.last_busy == T and state.last_busy == NEVER  # input never mutated


# Demand: arrival rate x service time (demand.py), read from the samples in the state.

def samples(arrivals: float, in_flight: float, seconds: int = 60, queued: float = 0.0
            ) -> tuple[tuple[float, float, float, float, float], ...]:
    return tuple((T - i, arrivals, in_flight, arrivals, queued) for i in range(seconds, 0, -1))


def test_rate_sizes_the_pool_in_one_step_with_a_reason() -> None:
    # 2 req/s of 2 s each: 4 running on average; Erlang C wants 6 slots (3 nodes) for
    # the queue wait, though the load (2 running, 2 per node) fits the one node there is.
    state = PoolState(history=steady(2), samples=samples(2.0, 4.0))
    decision, new = decide(SPEC, "cpu", NT, PoolSignals(at=T, ready=1, in_flight=4,
                                                        request_rate=2.0, arrival_rate=2.0),
                           state)
    assert (decision.desired, decision.action) == (3, "up"), decision.reason
    assert "arrivals 2.00/s x service 2.0s" in decision.reason
    assert new.samples[-1] == (T, 2.0, 4.0, 2.0, 0.0) and len(new.samples) <= 61


def test_a_few_requests_close_together_are_not_a_burst() -> None:
    # A quiet base (0.1/s), then 2 requests in the last seconds: within Poisson noise.
    quiet = (*((T - i, 0.1, 0.2, 0.1, 0.0) for i in range(60, 2, -1)),
             (T - 2, 1.0, 1.0, 1.0, 0.0), (T - 1, 0.0, 1.0, 0.0, 0.0))
    state = PoolState(history=steady(0.2), samples=quiet)
    decision, _ = decide(SPEC, "cpu", NT, PoolSignals(at=T, ready=1, in_flight=2,
                                                      request_rate=1.0, arrival_rate=1.0),
                         state)
    assert (decision.desired, decision.action) == (1, "hold"), decision.reason


def test_a_growing_queue_is_projected_over_the_start_up_time() -> None:
    # The queue grew by 1/s over the short window: 5 s of start-up adds 5 more to drain.
    before = tuple((T - i, 0.5, 2.0, 0.5, 0.0) for i in range(60, 6, -1))
    growing = before + tuple((T - 6 + i, 0.5, 2.0, 0.5, float(i)) for i in range(6))
    state = PoolState(history=steady(2), samples=growing)
    decision, _ = decide(SPEC, "cpu", NT, sig(1, load=8, queued=6, rate=0.5), state)
    assert decision.action == "up" and decision.desired >= 3, decision.reason
    assert "backlog 11 drained in 5s" in decision.reason


def test_no_extra_node_for_a_missed_target_while_one_is_starting() -> None:
    decision, _ = decide(SPEC, "cpu", NT, sig(2, load=4, queued=2, wait=3.5, starting=1),
                         PoolState(history=steady(4)))
    assert decision.desired == 3 and decision.action == "hold", decision.reason
