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

The discovery name is resolved again for every round and each registration goes to every
address it stands for (concurrently): behind a headless Service that is every proxy
replica, each of which routes on its own pool. A replica that fails is logged when it
starts and stops failing, never holding up the others.
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
from inferno.net import HttpClient, resolve_all

log = logging.getLogger("inferno.backend.registration")
_FIRST_RETRY = 0.5  # seconds after a failed registration (then 1, 2, 4... up to the interval)


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
        # The addresses of the last round, and those whose failure streak was logged;
        # ``None`` stands for the lookup itself.
        self._addresses: list[tuple[str, int]] = []
        self._failing: set[tuple[str, int] | None] = set()
        self._rng = random.Random()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registration-heartbeat")

    def notify(self) -> None:
        """Register again now (the registration changed), not at the next heartbeat."""
        self._changed.set()

    async def _run(self) -> None:
        retry = _FIRST_RETRY
        while True:
            self._changed.clear()
            reg = self._registration()
            ok = await self._send("POST", "/registration", reg.model_dump_json().encode())
            wait = self.next_wait(reg.lease_seconds)
            if ok:
                retry = _FIRST_RETRY
            else:
                # A proxy not answering yet (starting, restarting): try again soon, backing
                # off to the heartbeat, rather than stay out of rotation a whole interval.
                wait, retry = min(wait, retry), retry * 2
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    def next_wait(self, lease: float | None) -> float:
        """Seconds until the next renewal: the interval (capped at a third of the lease),
        less a random 0-25 % (jitter)."""
        period = self._interval if lease is None else min(self._interval, lease / 3)
        return period * self._rng.uniform(0.75, 1.0)

    async def _send(self, method: str, path: str, body: bytes = b"") -> bool:
        """Send to every address the discovery name stands for; True when all answered."""
        try:
            addresses = await resolve_all(self._host, self._port, within=2.0)
        except InfernoError as exc:
            self._report(None, f"proxy at {self._host}:{self._port} unreachable: "
                               f"{exc.message}")
            return False
        lookup_was_failing = None in self._failing
        self._recovered(None)
        if self._addresses and addresses != self._addresses:
            log.info("proxy at %s:%d now at %s", self._host, self._port,
                     ", ".join(_label(*a) for a in addresses))
        self._addresses = addresses
        self._failing.intersection_update([None, *addresses])  # replicas gone: forgotten
        sent = await asyncio.gather(*(self._send_to(a, method, path, body)
                                      for a in addresses))
        if lookup_was_failing and any(sent):
            log.info("registered with proxy at %s again", _label(self._host, self._port))
        return all(sent)

    async def _send_to(self, address: tuple[str, int], method: str, path: str,
                       body: bytes) -> bool:
        host, port = address
        where = self._where(address)
        try:
            resp = await self._client.request(
                host, port, method, path, body=body, headers=self._headers,
                connect_timeout=2.0, header_timeout=5.0)
            payload = await resp.read()
        except InfernoError as exc:
            self._report(address, f"proxy at {where} unreachable: {exc.message}")
            return False
        if method == "DELETE" and resp.status == 404:
            return True  # already gone (e.g. the governator deregistered us first)
        if resp.status >= 300:
            detail = _error_message(payload)
            self._report(address, f"proxy at {where} refused {method} {path} "
                                  f"({resp.status}): {detail}")
            return False
        if address in self._failing:
            log.info("registered with proxy at %s again", where)
        self._recovered(address)
        return True

    def _where(self, address: tuple[str, int]) -> str:
        # The name as configured, and the replica's address when the name stands for it.
        name = _label(self._host, self._port)
        return name if address == (self._host, self._port) else f"{name} ({_label(*address)})"

    def _report(self, key: tuple[str, int] | None, message: str) -> None:
        # Log the first failure of a streak, not every heartbeat of an outage.
        if key not in self._failing:
            log.warning("%s (will keep retrying)", message)
        self._failing.add(key)

    def _recovered(self, key: tuple[str, int] | None) -> None:
        self._failing.discard(key)

    async def deregister(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._send("DELETE", f"/registration/{self._registration().id}")


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error_message(payload: bytes) -> str:
    try:
        return str(orjson.loads(payload)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")
