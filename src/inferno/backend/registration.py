"""Registers a node with the proxy and keeps its lease alive.

Registration is idempotent: the heartbeat is a ``POST /registration`` sent every
``interval`` seconds (at most a third of the lease, so two lost renewals never lapse it),
which renews the lease on the proxy. Each wait is drawn from 75-100 % of that period, so
nodes started together (a fleet rollout, a proxy restart) spread their renewals over time
instead of arriving in lockstep. Each one is built fresh from
the node (``registration`` may be a callable), and :meth:`RegistrationClient.notify`
sends one at once, e.g. when the node's loaded models change. A proxy that restarts (and
forgot us) therefore learns about the node again within one interval. ``deregister()``
tells the proxy to stop routing here before the node drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import orjson

from inferno.api.node import Registration
from inferno.core.errors import InfernoError
from inferno.net import HttpClient

log = logging.getLogger("inferno.backend.registration")


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    return host.strip("[]"), int(port)


class RegistrationClient:
    def __init__(self, discovery_lb: str,
                 registration: Registration | Callable[[], Registration], *,
                 interval: float, client: HttpClient, token: str | None = None) -> None:
        self._host, self._port = split_host_port(discovery_lb, 6100)
        self._registration = (registration if callable(registration)
                              else lambda: registration)
        self._changed = asyncio.Event()
        self._interval = interval
        self._client = client
        # The proxy's node token, sent as a bearer credential (never logged).
        self._headers = [(b"content-type", b"application/json")]
        if token:
            self._headers.append((b"authorization", b"Bearer " + token.encode()))
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._rng = random.Random()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registration-heartbeat")

    def notify(self) -> None:
        """Register again now (the registration changed), not at the next heartbeat."""
        self._changed.set()

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            reg = self._registration()
            await self._send("POST", "/registration", reg.model_dump_json().encode())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.next_wait(reg.lease_seconds)):
                    await self._changed.wait()

    def next_wait(self, lease: float | None) -> float:
        """Seconds until the next renewal: the interval (capped at a third of the lease),
        less a random 0-25 % (jitter)."""
        period = self._interval if lease is None else min(self._interval, lease / 3)
        return period * self._rng.uniform(0.75, 1.0)

    async def _send(self, method: str, path: str, body: bytes = b"") -> bool:
        try:
            resp = await self._client.request(
                self._host, self._port, method, path, body=body,
                headers=self._headers,
                connect_timeout=2.0, header_timeout=5.0)
            payload = await resp.read()
        except InfernoError as exc:
            self._report(f"proxy at {self._host}:{self._port} unreachable: {exc.message}")
            return False
        if method == "DELETE" and resp.status == 404:
            return True  # already gone (e.g. the governator deregistered us first)
        if resp.status >= 300:
            detail = _error_message(payload)
            self._report(f"proxy refused {method} {path} ({resp.status}): {detail}")
            return False
        if self._failing:
            log.info("registered with proxy at %s:%d again", self._host, self._port)
        self._failing = False
        return True

    def _report(self, message: str) -> None:
        # Log the first failure of a streak, not every heartbeat of an outage.
        if not self._failing:
            log.warning("%s (will keep retrying)", message)
        self._failing = True

    async def deregister(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._send("DELETE", f"/registration/{self._registration().id}")


def _error_message(payload: bytes) -> str:
    try:
        return str(orjson.loads(payload)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")
