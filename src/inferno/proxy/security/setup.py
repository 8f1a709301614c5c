"""Builds the gateway's security and accounting from settings, and runs their tasks.

Auth mode (``auth`` setting): ``on`` always; ``none`` never (a loud warning when the proxy
binds a non-loopback interface); ``auto`` (default) turns auth on as soon as an API key
exists or a JWT key is configured, and otherwise serves unauthenticated only on a
loopback host - on any other interface it refuses to start. Likewise registration without
node tokens is accepted only on loopback (or with ``auth: none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from inferno.core.config import ProxySettings
from inferno.core.errors import ConfigError
from inferno.net import Request, Response, StreamingResponse
from inferno.proxy.accounting import Prices, RequestLog
from inferno.proxy.cache import ResponseCache
from inferno.proxy.security.admin import AdminAPI
from inferno.proxy.security.auth import Authenticator, require_admin
from inferno.proxy.security.guard import Limiter, RequestGuard
from inferno.proxy.security.jwt_tokens import JwtVerifier
from inferno.proxy.security.keys import KeyCache
from inferno.proxy.security.metrics import SecurityMetrics
from inferno.proxy.security.ratelimit import Limits, LocalLimiter, RedisLimiter
from inferno.proxy.security.registration_guard import RegistrationGuard
from inferno.store import Store, default_sqlite_url
from inferno.store.audit import AuditTrail

log = logging.getLogger("inferno.proxy.security")
Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Security:
    def __init__(self, settings: ProxySettings, registry: CollectorRegistry,
                 limiter: Limiter | None = None) -> None:
        """``limiter``: where rate-limit counters live when not Redis (the workers of one
        proxy share theirs); default: this process."""
        s = settings
        self.settings = s
        self.metrics = m = SecurityMetrics(registry)
        url = s.database_url.get_secret_value() if s.database_url else None
        self.store: Store | None = None
        if url != "none":
            self.store = Store(url or default_sqlite_url(s.data_dir), schema=s.database_schema)
        self.keys = KeyCache(self.store, interval=s.keys_refresh_interval)
        self.jwt: JwtVerifier | None = None
        if s.jwt_secret or s.jwt_public_key_file or s.jwt_jwks_file:
            self.jwt = JwtVerifier(
                secret=s.jwt_secret.get_secret_value() if s.jwt_secret else None,
                public_key_file=s.jwt_public_key_file, jwks_file=s.jwt_jwks_file,
                algorithms=list(s.jwt_algorithms), audience=s.jwt_audience,
                issuer=s.jwt_issuer, leeway=s.jwt_leeway)
        self.auth = Authenticator(self.keys, self.jwt, enabled=s.auth == "on",
                                  on_failure=lambda r: m.auth_failures.labels(r).inc())
        self.limiter: Limiter
        if s.redis_url:
            self.limiter = RedisLimiter(s.redis_url.get_secret_value(), prefix=s.redis_prefix,
                                        on_error=m.ratelimit_backend_errors.inc)
        else:
            self.limiter = limiter or LocalLimiter()
        self.cache = ResponseCache(m, max_bytes=s.cache_max_bytes, ttl=s.cache_ttl,
                                   disk_dir=s.data_dir / "cache",
                                   disk_max_bytes=s.cache_disk_max_bytes) if s.cache else None
        self.log = RequestLog(self.store, m, queue_size=s.log_queue_size,
                              batch_size=s.log_batch_size, flush_interval=s.log_flush_interval,
                              log_payloads=s.log_payloads)
        limits = Limits(default_rpm=s.default_rpm, default_tpm=s.default_tpm,
                        model_limits={name: {str(k): n for k, n in v.items()}
                                      for name, v in s.model_limits.items()},
                        burst_seconds=s.limit_burst_seconds)
        self.guard = RequestGuard(self.auth, limits, self.limiter, self.log, m,
                                  prices=Prices({name: {str(k): x for k, x in v.items()}
                                                 for name, v in s.prices.items()}),
                                  cache=self.cache, default_reserve=s.default_reserve_tokens)
        # Who changed what (keys, models, ...): appended off the action's path.
        self.audit = AuditTrail(self.store)
        self.admin = AdminAPI(self.auth, self.store, self.keys, self.audit)
        self.registration = RegistrationGuard(
            [t.get_secret_value() for t in s.node_tokens], list(s.registration_allowlist))
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        s = self.settings
        loopback = is_loopback(s.host)
        if not loopback and s.auth != "none" and not self.registration.requires_token:
            raise ConfigError(f"refusing to accept node registrations on {s.host} without a "
                              "node token: set node_tokens (INFERNO_PROXY_NODE_TOKENS), or "
                              "pass --auth none to run open")
        if self.store is not None:
            await self.store.start()
            await self.keys.refresh()
        self._decide_auth(loopback)
        if s.auth == "none" and not loopback:
            log.warning("!!! AUTH IS OFF on %s: anyone who can reach this port can use every "
                        "model and the admin routes (--auth none) !!!", s.host)
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._refresh_keys(loopback)))
            self._tasks.append(asyncio.create_task(self.log.run()))
            self.audit.start()

    def _decide_auth(self, loopback: bool) -> None:
        mode = self.settings.auth
        if mode != "auto":
            self.auth.enabled = mode == "on"
            return
        has_credentials = len(self.keys) > 0 or self.jwt is not None
        if not has_credentials and not loopback:
            raise ConfigError(f"refusing to serve on {self.settings.host} without "
                              "authentication: create a key (inferno keys create), configure "
                              "JWT, or pass --auth none")
        if has_credentials != self.auth.enabled:
            log.info("API auth %s (%d key(s)%s)", "on" if has_credentials else "off",
                     len(self.keys), ", JWT" if self.jwt else "")
        self.auth.enabled = has_credentials

    async def _refresh_keys(self, loopback: bool) -> None:
        while True:
            await asyncio.sleep(self.settings.keys_refresh_interval)
            await self.keys.refresh()
            if self.settings.auth == "auto" and (loopback or len(self.keys) > 0):
                self._decide_auth(loopback)

    def admin_only(self, handler: Handler) -> Handler:
        """Wrap an ops route (e.g. router state changes) so it needs an admin credential."""
        async def guarded(req: Request) -> Response | StreamingResponse:
            require_admin(self.auth.authenticate(req))
            return await handler(req)
        return guarded

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.log.enabled:
            with contextlib.suppress(Exception):
                await self.log.flush(within=5.0)
        with contextlib.suppress(Exception):
            await self.audit.close(within=5.0)
        if isinstance(self.limiter, RedisLimiter):
            await self.limiter.close()
        if self.cache is not None:
            await self.cache.close()
        if self.store is not None:
            await self.store.close()
