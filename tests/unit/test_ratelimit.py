"""Rate limits: the GCRA arithmetic, 429s through the proxy, and Redis-shared counters."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx2 as httpx
import pytest

from inferno.api.node import Registration
from inferno.proxy.security.keys import Principal, create_key
from inferno.proxy.security.ratelimit import Limits, LocalLimiter, RedisLimiter
from tests.conftest import start_fake_node, start_gateway

USER = Principal(key_id="k1", scope="user", rpm=600, tpm=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rpm", "offered_per_s", "seconds"),
    [
        pytest.param(600, 50, 10, id="10rps-offered-50"),
        pytest.param(60, 10, 30, id="1rps-offered-10"),
        pytest.param(6000, 200, 5, id="100rps-offered-200"),
        pytest.param(600, 5, 10, id="under-the-limit"),
    ],
)
def test_admissions_match_the_limit(rpm: int, offered_per_s: int, seconds: int) -> None:
    """Admitted = rate x time, plus at most the burst (0.3 s worth, at least 2)."""
    clock = Clock()
    limiter = LocalLimiter(clock)
    plan = Limits(burst_seconds=0.3).plan(Principal("k", "user", rpm=rpm), "m", 1)
    assert plan is not None
    admitted = 0
    for _ in range(offered_per_s * seconds):
        admitted += limiter.admit_now(plan.all) == 0
        clock.now += 1 / offered_per_s
    rate = min(rpm / 60, offered_per_s)
    burst = max(2, rpm / 60 * 0.3) if offered_per_s > rpm / 60 else 0
    assert rate * seconds - 1 <= admitted <= rate * seconds + burst + 1


def test_tokens_are_reserved_then_settled() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    limits = Limits()
    who = Principal("k", "user", tpm=1000)
    big = limits.plan(who, "m", 600)
    assert big is not None and limiter.admit_now(big.all) == 0
    again = limits.plan(who, "m", 600)
    assert again is not None and limiter.admit_now(again.all) > 0  # 1200 > 1000 reserved
    limiter.settle(big.tokens, 100 - 600)  # it used only 100 tokens
    assert limiter.admit_now(again.all) == 0


def test_keys_and_models_have_their_own_buckets() -> None:
    limiter = LocalLimiter(Clock())
    limits = Limits(model_limits={"slow": {"rpm": 60}})
    a, b = Principal("a", "user", rpm=60), Principal("b", "user", rpm=60)
    for _ in range(2):  # the 2-request burst
        assert limiter.admit_now(limits.plan(a, "fast", 1).all) == 0  # type: ignore[union-attr]
    assert limiter.admit_now(limits.plan(a, "fast", 1).all) > 0  # type: ignore[union-attr]
    assert limiter.admit_now(limits.plan(b, "fast", 1).all) == 0  # type: ignore[union-attr]
    assert Limits().plan(Principal("c", "user"), "m", 1) is None  # unlimited: no bucket


async def test_over_the_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, auth="on")
    node = await start_fake_node()
    try:
        gw.pool.upsert(Registration(id="n", address=f"127.0.0.1:{node.server.port}",
                                    metrics_port=6100, models=["fake-model"], lease_seconds=60))
        store = gw.security.store
        assert store is not None
        slow, _ = await create_key(store, name="slow", rpm=30)
        other, _ = await create_key(store, name="other", rpm=30)
        await gw.security.keys.refresh()
        url = f"http://127.0.0.1:{gw.server.port}/v1/completions"
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 1}
        async with httpx.AsyncClient() as http:
            codes = [(await http.post(url, json=body, headers={"authorization": f"Bearer {slow}"}))
                     for _ in range(4)]
            r = await http.post(url, json=body, headers={"authorization": f"Bearer {other}"})
        assert [c.status_code for c in codes] == [200, 200, 429, 429]
        limited = codes[-1]
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert r.status_code == 200  # another key is not affected
    finally:
        await node.drain()
        await gw.drain()


async def test_redis_counters_are_shared_and_atomic(redis: str) -> None:
    prefix = f"inferno-test:{uuid.uuid4().hex}"
    a, b = RedisLimiter(redis, prefix=prefix), RedisLimiter(redis, prefix=prefix)
    try:
        plan = Limits().plan(Principal("k", "user", rpm=60, tpm=100), "m", 40)
        assert plan is not None
        results = [await (a if i % 2 else b).admit(plan.all) for i in range(4)]
        # Burst of 2 requests; tokens: 2 x 40 of 100. Replicas see one counter.
        assert [r == 0 for r in results] == [True, True, False, False]
        assert all(0 < r <= 60 for r in results[2:])
    finally:
        await a.close()
        await b.close()


async def test_redis_down_falls_back_to_local_limits() -> None:
    errors: list[int] = []
    limiter = RedisLimiter("redis://127.0.0.1:1/0", on_error=lambda: errors.append(1))
    try:
        plan = Limits().plan(Principal("k", "user", rpm=60), "m", 1)
        assert plan is not None
        assert [await limiter.admit(plan.all) == 0 for _ in range(3)] == [True, True, False]
        assert errors  # counted, and only one connection attempt per back-off period
    finally:
        await limiter.close()


def test_redis_limits_without_the_package_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from inferno.core.errors import ConfigError

    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r"'redis_url'.*pip install 'inferno\[redis\]'"):
        RedisLimiter("redis://127.0.0.1:1/0")
