"""Demand sizing around a burst: the stable window lags it, and a pool's first seconds
are too few to tell bursts from noise (demand.py, through the policy)."""

from __future__ import annotations

from inferno.governator.demand import Demand, Sample, demand
from inferno.governator.policy import PoolState, decide
from inferno.governator.signals import PoolSignals
from inferno.governator.spec import NodeType, PoolSpec, Targets

NT = NodeType(usd_per_hour=1.0, capacity=2, startup_s=5)
SPEC = PoolSpec(model="m", node_types=["cpu"], min_replicas=1, max_replicas=8,
                stable_window_s=60, panic_window_s=6, scale_up_cooldown_s=2,
                scale_down_cooldown_s=10, scale_down_delay_s=15, scale_down_step=3,
                targets=Targets(queue_wait_p95_s=2.0, ttft_p95_s=5.0))
T = 1000.0


def tick(at: float, arrivals: float) -> Sample:
    # Requests of 2 s each: as many running as arrive in 2 s, none queued.
    return (at, arrivals, 2 * arrivals, arrivals, 0.0)


def sizing(samples: tuple[Sample, ...]) -> Demand:
    return demand(samples, T, per_node=2, startup_s=5, target_wait_s=2.0, panic_window_s=6,
                  stable_window_s=60)


def state_of(samples: tuple[Sample, ...]) -> PoolState:
    return PoolState(history=tuple((s[0], s[2]) for s in samples), samples=samples)


def test_a_burst_the_stable_window_lags_keeps_its_nodes() -> None:
    # 40 s at 0.1/s, then 20 s of a burst at 2/s whose last 6 s drew 1.5/s (Poisson
    # noise): the stable rate (0.73/s) wants 2 nodes, the burst needs more.
    trace = (*(tick(T - i, 0.1) for i in range(60, 20, -1)),
             *(tick(T - i, 2.0) for i in range(20, 6, -1)),
             *(tick(T - i, 1.5) for i in range(6, 0, -1)))
    assert sizing(trace).nodes <= 2  # the scenario: the stable rate alone drops nodes
    decision, _ = decide(SPEC, "cpu", NT, PoolSignals(at=T, ready=4, in_flight=3,
                                                      request_rate=1.5, arrival_rate=1.5),
                         state_of(trace))
    assert (decision.desired, decision.action) == (4, "hold"), decision.reason
    assert "over the last 24s keep 4" in decision.reason


def test_the_pool_comes_down_once_the_recent_rate_has() -> None:
    # The burst ended 30 s ago: the recent rate no longer holds the nodes.
    trace = (*(tick(T - i, 2.0) for i in range(60, 30, -1)),
             *(tick(T - i, 0.1) for i in range(30, 0, -1)))
    need = sizing(trace)
    assert need.keep <= need.nodes < 4
    decision, _ = decide(SPEC, "cpu", NT, PoolSignals(at=T, ready=4, in_flight=0),
                         state_of(trace))
    assert decision.action == "down" and decision.desired < 4, decision.reason


def test_a_pools_first_seconds_are_not_read_as_bursts() -> None:
    # Started 5 s ago: a request on the first tick and one on the last (0.33/s). Two
    # 5 s buckets of 1 request each would read as +50 % burst headroom (2 nodes).
    first = (tick(T - 5, 1.0), *(tick(T - i, 0.0) for i in range(4, 1, -1)),
             tick(T - 1, 1.0))
    decision, _ = decide(SPEC, "cpu", NT, PoolSignals(at=T, ready=1, in_flight=1,
                                                      request_rate=0.0, arrival_rate=0.0),
                         state_of(first))
    assert "arrivals" in decision.reason  # the scenario: the rate sized the pool
    assert (decision.desired, decision.action) == (1, "hold"), decision.reason
    assert "+0% burst headroom" in decision.reason
