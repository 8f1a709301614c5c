"""Requests- and tokens-per-minute per key (and per key and model), GCRA-style.

Each limit is one number per bucket, its "theoretical arrival time" (TAT): admitting a
request of cost ``n`` moves it ``n * T`` ahead (``T`` = 60 s / limit), and a request is
admitted while the TAT stays within the bucket's burst window of now. That spaces requests
evenly (no minute-boundary stampedes) and needs no timers. Requests-per-minute buckets
allow a short burst (``burst_seconds`` worth, at least 2 requests); tokens-per-minute
buckets allow a full minute's tokens at once. Tokens are reserved at admission (the
request's ``max_tokens`` plus a prompt estimate) and settled with the real count.

:class:`LocalLimiter` keeps the TATs in this process. :class:`RedisLimiter` keeps them in
Redis and checks every bucket of a request in one atomic Lua script using Redis' clock, so
the limit holds across proxy replicas; if Redis fails it falls back to the local limiter
(availability first) and counts the fallback in a metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from inferno.core.errors import ConfigError
from inferno.proxy.security.keys import Principal

log = logging.getLogger("inferno.proxy.security")


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    period: float    # seconds per unit
    window: float    # burst window in seconds (capacity = window / period units)
    cost: float


@dataclass(slots=True)
class Plan:
    requests: list[Bucket]
    tokens: list[Bucket]
    reserved: int

    @property
    def all(self) -> list[Bucket]:
        return self.requests + self.tokens


class Limits:
    """Which buckets a request touches: its key's limits, defaults, per-model limits."""

    def __init__(self, *, default_rpm: int = 0, default_tpm: int = 0,
                 model_limits: Mapping[str, Mapping[str, int]] | None = None,
                 burst_seconds: float = 0.3) -> None:
        self._rpm = default_rpm
        self._tpm = default_tpm
        self._models = {m: dict(v) for m, v in (model_limits or {}).items()}
        self._burst = burst_seconds

    def plan(self, principal: Principal, model: str, reserve: int) -> Plan | None:
        who = principal.key_id or "anonymous"
        rpm = principal.rpm or self._rpm
        tpm = principal.tpm or self._tpm
        reqs: list[Bucket] = []
        toks: list[Bucket] = []
        if rpm:
            reqs.append(self._req_bucket(f"{{{who}}}:r", rpm))
        if tpm:
            toks.append(Bucket(f"{{{who}}}:t", 60.0 / tpm, 60.0, reserve))
        per_model = self._models.get(model)
        if per_model:
            if per_model.get("rpm"):
                reqs.append(self._req_bucket(f"{{{who}}}:m:{model}:r", per_model["rpm"]))
            if per_model.get("tpm"):
                toks.append(Bucket(f"{{{who}}}:m:{model}:t", 60.0 / per_model["tpm"], 60.0,
                                   reserve))
        if not reqs and not toks:
            return None
        return Plan(reqs, toks, reserve)

    def _req_bucket(self, key: str, rpm: int) -> Bucket:
        period = 60.0 / rpm
        return Bucket(key, period, max(2 * period, self._burst), 1.0)


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._clock = clock

    async def admit(self, buckets: list[Bucket]) -> float:
        return self.admit_now(buckets)

    def admit_now(self, buckets: list[Bucket]) -> float:
        """0.0 when admitted (every bucket charged), else seconds until it could be."""
        now = self._clock()
        tat = self._tat
        wait = 0.0
        news = []
        for b in buckets:
            new = max(tat.get(b.key, now), now) + b.cost * b.period
            wait = max(wait, new - b.window - now)
            news.append(new)
        if wait > 0:
            return wait
        for b, new in zip(buckets, news, strict=True):
            tat[b.key] = new
        if len(tat) > 100_000:
            self._tat = {k: v for k, v in tat.items() if v > now}
        return 0.0

    def settle(self, buckets: list[Bucket], delta: float) -> None:
        """Give back (or charge) ``delta`` units once the real token count is known."""
        for b in buckets:
            if b.key in self._tat:
                self._tat[b.key] += delta * b.period


_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait = 0
local news = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local period = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + cost * period
  if new - window - now > wait then wait = new - window - now end
  news[i] = new
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(news[i]), 'PX', math.ceil((news[i] - now) * 1000) + 1000)
end
return '0'
"""

_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat > now then
    local new = tat + tonumber(ARGV[1]) * tonumber(ARGV[i + 1])
    if new > now then
      redis.call('SET', key, tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
    else
      redis.call('DEL', key)
    end
  end
end
return 0
"""


class RedisLimiter:
    """One shared set of counters for every replica, under ``prefix`` in Redis."""

    def __init__(self, url: str, *, prefix: str = "inferno:rl",
                 on_error: Callable[[], None] | None = None) -> None:
        try:  # the optional `redis` extra: only replicas that share limits need it
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise ConfigError("invalid setting 'redis_url': shared rate limits need the redis "
                              "package: pip install 'inferno[redis]'") from exc

        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0,
                                              socket_connect_timeout=1.0,
                                              health_check_interval=30)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._prefix = prefix
        self._fallback = LocalLimiter()
        self._on_error = on_error or (lambda: None)
        self._failing = False
        self._retry_at = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, buckets: list[Bucket]) -> float:
        if self._failing and time.monotonic() < self._retry_at:
            return self._fallback.admit_now(buckets)  # don't pay a timeout per request
        keys = [f"{self._prefix}:{b.key}" for b in buckets]
        args: list[float] = []
        for b in buckets:
            args += (b.period, b.window, b.cost)
        try:
            result = await self._admit(keys=keys, args=args)
        except Exception as exc:  # Redis down: keep serving with per-replica limits
            self._note_error(exc)
            return self._fallback.admit_now(buckets)
        if self._failing:
            log.info("rate limits: Redis answers again")
            self._failing = False
        return float(result)

    def settle(self, buckets: list[Bucket], delta: float) -> None:
        if not buckets or delta == 0:
            return
        task = asyncio.get_running_loop().create_task(self._send_settle(buckets, delta))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_settle(self, buckets: list[Bucket], delta: float) -> None:
        try:
            await self._settle(keys=[f"{self._prefix}:{b.key}" for b in buckets],
                               args=[delta, *(b.period for b in buckets)])
        except Exception as exc:
            self._note_error(exc)

    def _note_error(self, exc: BaseException) -> None:
        self._on_error()
        self._retry_at = time.monotonic() + 2.0
        if not self._failing:
            log.warning("rate limits: Redis unavailable (%s); using per-replica limits",
                        type(exc).__name__)
        self._failing = True

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        await self._redis.aclose()
