"""Circuit breaker, passive ejection cap, retry budget and admission: fake clocks, no sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest

from inferno.api.node import Registration
from inferno.core.errors import Overloaded
from inferno.proxy.admission import Admission
from inferno.proxy.health.breaker import Breaker, BreakerPolicy
from inferno.proxy.health.passive import PassiveHealth
from inferno.proxy.pool import Pool
from inferno.proxy.retry import RetryBudget
from tests.polling import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_trips_after_n_failures_then_probes_once() -> None:
    b = Breaker(BreakerPolicy(consecutive_failures=3, base_ejection=5, max_ejection=60))
    for _ in range(2):
        assert not b.failure(0.0, may_eject=True)
    assert b.failure(0.0, may_eject=True) and b.state == "open"
    assert not b.available(4.9) and b.available(5.0)
    assert b.acquire(5.0) and b.state == "half_open"
    assert not b.acquire(5.0) and not b.available(5.0)  # one probe at a time
    assert b.success(5.5) and b.state == "closed"


@pytest.mark.parametrize(
    ("repeats", "expected_open_for"),
    [pytest.param(1, 5.0, id="base"), pytest.param(2, 10.0, id="doubled"),
     pytest.param(3, 20.0, id="doubled-again"), pytest.param(6, 60.0, id="capped")],
)
def test_ejection_time_doubles_and_caps(repeats: int, expected_open_for: float) -> None:
    b = Breaker(BreakerPolicy(consecutive_failures=1, base_ejection=5, max_ejection=60))
    now = 0.0
    b.failure(now, may_eject=True)
    for _ in range(repeats - 1):
        now = b.open_until
        assert b.acquire(now)
        b.failure(now, may_eject=True)  # the probe failed
    assert b.open_until - now == expected_open_for


def test_breaker_respects_the_ejection_cap() -> None:
    b = Breaker(BreakerPolicy(consecutive_failures=1))
    assert not b.failure(0.0, may_eject=False) and b.state == "closed"


def reg(i: int) -> Registration:
    return Registration.model_validate({"id": f"n{i}", "address": f"127.0.0.1:{9000 + i}",
                                        "metrics_port": 6100, "models": ["m"]})


@pytest.mark.parametrize(("size", "max_ejected"), [(1, 1), (2, 1), (3, 1), (4, 2), (10, 5)])
def test_passive_health_never_ejects_more_than_half(size: int, max_ejected: int) -> None:
    clock = Clock()
    pool = Pool(default_lease=60, breaker=BreakerPolicy(consecutive_failures=1), clock=clock)
    nodes = [pool.upsert(reg(i)) for i in range(size)]
    health = PassiveHealth(pool, max_ejected_percent=50, clock=clock)
    for n in nodes:
        health.failure(n, "HTTP 500")
    assert sum(n.breaker.state == "open" for n in nodes) == max_ejected
    assert all(n.last_error == "HTTP 500" for n in nodes)


def test_retry_budget_caps_retries_to_ratio_plus_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=1, window=10, clock=clock)
    granted = 0
    for _ in range(20):  # 20 s at 50 requests/s, every one wanting a retry
        for _ in range(50):
            budget.record_request()
            granted += budget.try_retry()
        clock.now += 1
    assert granted <= 0.2 * 1000 + 10 * 2  # ratio of requests, plus the floor per window
    assert granted >= 0.2 * 1000 * 0.9
    assert budget.denied == 1000 - granted


async def test_admission_queue_rejects_fast_when_full() -> None:
    adm = Admission(max_per_node=1, queue_size=1, queue_wait=5)
    deadline = time.monotonic() + 10
    waiter = asyncio.create_task(adm.wait(deadline))
    await eventually(lambda: adm.queued == 1, what="the first request to queue")
    with pytest.raises(Overloaded):  # the queue (size 1) is full: refused at once
        await adm.wait(deadline)
    adm.release()
    await waiter  # woken by a finished request
    assert adm.queued == 0 and adm.rejected == 1


async def test_admission_queue_wait_bounds_the_whole_wait_not_each() -> None:
    adm = Admission(max_per_node=1, queue_size=4, queue_wait=5.0)
    deadline = time.monotonic() + 60
    first = asyncio.create_task(adm.wait(deadline))
    await eventually(lambda: adm.queued == 1, what="the request to queue")
    adm.release()  # woken: but say another request took the slot meanwhile ...
    await first
    # ... so it waits again, counted from when it first queued: once the queue wait has
    # passed since then, it is refused without queueing again.
    queued_since = time.monotonic() - 5.0
    with pytest.raises(Overloaded) as info:
        await adm.wait(deadline, queued_since)
    assert adm.queued == 0 and adm.rejected == 1
    assert info.value.headers() == [("retry-after", "2")]
    again = asyncio.create_task(adm.wait(deadline, time.monotonic() - 1.0))  # 4 s left
    await eventually(lambda: adm.queued == 1, what="a second wait within the bound")
    adm.release()
    await again
    assert adm.rejected == 1


async def test_admission_wait_times_out_with_retry_after() -> None:
    adm = Admission(max_per_node=1, queue_size=4, queue_wait=0.05)
    with pytest.raises(Overloaded) as info:
        await adm.wait(time.monotonic() + 10)
    assert info.value.headers() == [("retry-after", "2")]
